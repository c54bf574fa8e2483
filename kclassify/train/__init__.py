"""Training: the engine (one loop for fit and finetune), its compiled steps, schedules, optimizers, weight
averaging, distillation, the time budget."""
