"""Knowledge distillation of an EfficientVLM teacher into a student (general and task-specific).

Public API: ``DistillationConfig`` (training arguments and loss weights), ``DistillationTrainer`` and the loss terms
in ``losses``.
"""

from .config import TASK_DEFAULT_WEIGHTS, DistillationConfig, LayerPairs, LossWeights, resolve_layer_map
from .losses import attention_map_mse, hidden_state_mse, logits_kd_loss, multilabel_logits_kd_loss
from .trainer import DistillationTrainer, HiddenStateProjections, check_teacher_fits

__all__ = [
    "DistillationConfig",
    "DistillationTrainer",
    "HiddenStateProjections",
    "LayerPairs",
    "LossWeights",
    "TASK_DEFAULT_WEIGHTS",
    "attention_map_mse",
    "check_teacher_fits",
    "hidden_state_mse",
    "logits_kd_loss",
    "multilabel_logits_kd_loss",
    "resolve_layer_map",
]
