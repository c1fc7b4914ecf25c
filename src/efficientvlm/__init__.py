"""efficientvlm: EfficientVLM (distillation + modal-adaptive pruning) as native Hugging Face classes."""

__version__ = "0.1.0.dev0"
