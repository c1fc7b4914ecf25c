"""Knowledge distillation of an EfficientVLM teacher into a student (general and task-specific).

Public API: ``DistillationConfig`` (training arguments and loss weights), ``DistillationTrainer``, the teacher checks
``check_teacher_fits`` and ``check_teacher_trained``, the loss terms in ``losses`` and, for pre-training data,
``ImageTextPretrainingCollator`` and ``load_image_text_pairs`` (streamed data: ``efficientvlm.data.ImageTextStream``).
Non-finite losses, gradients and checkpoints raise ``NonFiniteError`` (see ``numerics``); ``NonFiniteBatchCounter``
counts the steps that ``skip_nonfinite_batches`` drops.
"""

from .config import TASK_DEFAULT_WEIGHTS, DistillationConfig, LayerPairs, LossWeights, resolve_layer_map
from .data import ImageTextPretrainingCollator, load_image_text_pairs, masked_positions
from .losses import attention_map_mse, hidden_state_mse, logits_kd_loss, multilabel_logits_kd_loss
from .numerics import ID_COLUMNS, NonFiniteBatchCounter, NonFiniteError
from .trainer import DistillationTrainer, HiddenStateProjections, check_teacher_fits, check_teacher_trained

__all__ = [
    "DistillationConfig",
    "DistillationTrainer",
    "HiddenStateProjections",
    "ID_COLUMNS",
    "ImageTextPretrainingCollator",
    "LayerPairs",
    "LossWeights",
    "NonFiniteBatchCounter",
    "NonFiniteError",
    "TASK_DEFAULT_WEIGHTS",
    "attention_map_mse",
    "check_teacher_fits",
    "check_teacher_trained",
    "hidden_state_mse",
    "load_image_text_pairs",
    "logits_kd_loss",
    "masked_positions",
    "multilabel_logits_kd_loss",
    "resolve_layer_map",
]
