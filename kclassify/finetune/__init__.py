"""Fine-tuning pretrained backbones in phases: head first, then deeper blocks."""
