"""Training: schedules, optimizers, callbacks and the fit loop."""
