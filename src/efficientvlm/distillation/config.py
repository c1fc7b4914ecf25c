"""``DistillationConfig``: the training arguments of ``DistillationTrainer``.

The distillation loss of one step is

    loss = task_loss_weight * L_task
         + kd_logits_weight    * sum(KD on logits)
         + kd_hidden_weight    * sum_m <m>_hidden_weight    * (hidden-state KD of modality m)
         + kd_attention_weight * sum_m <m>_attention_weight * (attention-map KD of modality m)
         + kd_attention_weight * fusion_cross_attention_weight * (fusion cross-attention-map KD)
         + kd_attention_weight * decoder_cross_attention_weight * (decoder cross-attention-map KD)

with the modalities ``m`` in vision, text, fusion and, for generative VQA (``EfficientVLMForGenerativeVQA``), the
answer decoder; its logits KD is on the decoder's next-token distributions over the answer tokens. Every weight left
at ``None`` takes the default of the task, read off the official EfficientVLM code (``GeneralDistill.py`` for
pre-training, ``Eff_*.py`` for the tasks; each task's ``kd_weights`` in ``efficientvlm.tasks.TASKS``).

Layer mapping. By default student hidden state ``i`` (index 0 = the embedding output) is compared with teacher
hidden state ``round(i * L_t / L_s)`` and student attention map ``i`` with teacher layer
``round((i + 1) * L_t / L_s) - 1``: for a half-depth student, hidden ``i <-> 2i`` and attention ``i <-> 2i + 1``,
as in the paper. ``layer_map`` replaces any part of that per modality (see ``resolve_layer_map``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from transformers import TrainingArguments

from ..models.configuration_efficientvlm import (  # noqa: F401 - MODALITIES re-exported: its home is the config
    ALL_MODALITIES,
    CROSS_ATTENTION_MODALITIES,
    MODALITIES,
    EfficientVLMConfig,
)
from ..student import uniform_layer_choice
from ..tasks import TASKS as _TASK_REGISTRY

#: The tasks that can be distilled (the keys of ``efficientvlm.tasks.TASKS``, the one registry).
TASKS: tuple[str, ...] = tuple(_TASK_REGISTRY)
#: The modalities a layer map or a KD weight can name: the encoders and the answer decoder of generative VQA.
LAYER_MODALITIES = ALL_MODALITIES
#: Kinds of per-layer maps: hidden states, self-attention maps, cross-attention maps (fusion and decoder only).
MAP_KINDS = ("hidden", "attention", "cross_attention")


@dataclass(frozen=True)
class LossWeights:
    """Resolved weights of every term of the distillation loss (see the module docstring for the formula)."""

    task: float
    logits: float
    hidden: float
    attention: float
    vision_hidden: float
    vision_attention: float
    text_hidden: float
    text_attention: float
    fusion_hidden: float
    fusion_attention: float
    fusion_cross_attention: float
    decoder_hidden: float = 0.0
    decoder_attention: float = 0.0
    decoder_cross_attention: float = 0.0

    def layer_term(self, kind: str, modality: str) -> float:
        """Total weight of one per-layer term: ``kind`` in ``MAP_KINDS``, ``modality`` in ``LAYER_MODALITIES``."""
        if kind == "cross_attention":
            if modality not in CROSS_ATTENTION_MODALITIES:
                raise ValueError(f"Only the fusion encoder and the answer decoder have cross-attention, not "
                                 f"{modality!r}.")
            return self.attention * getattr(self, f"{modality}_cross_attention")
        overall = {"hidden": self.hidden, "attention": self.attention}[kind]
        return overall * getattr(self, f"{modality}_{kind}")


#: Per-task defaults: each task's ``kd_weights`` in the task registry (``efficientvlm.tasks.TASKS``, where the
#: official code's formulas are given), as ``LossWeights``.
TASK_DEFAULT_WEIGHTS: dict[str, LossWeights] = {name: LossWeights(**task.kd_weights)
                                                for name, task in _TASK_REGISTRY.items()}

#: ``DistillationConfig`` field -> ``LossWeights`` field
_WEIGHT_FIELDS = {
    "task_loss_weight": "task", "kd_logits_weight": "logits", "kd_hidden_weight": "hidden",
    "kd_attention_weight": "attention", "vision_hidden_weight": "vision_hidden",
    "vision_attention_weight": "vision_attention", "text_hidden_weight": "text_hidden",
    "text_attention_weight": "text_attention", "fusion_hidden_weight": "fusion_hidden",
    "fusion_attention_weight": "fusion_attention", "fusion_cross_attention_weight": "fusion_cross_attention",
    "decoder_hidden_weight": "decoder_hidden", "decoder_attention_weight": "decoder_attention",
    "decoder_cross_attention_weight": "decoder_cross_attention",
}


def _weight_field(help_text: str) -> Any:
    return field(default=None, metadata={"help": help_text + " Default (None): the task's default."})


@dataclass
class DistillationConfig(TrainingArguments):
    """``TrainingArguments`` plus the knobs of EfficientVLM knowledge distillation.

    Example:

    ```python
    >>> args = DistillationConfig(output_dir="out", task="vqa", temperature=2.0, kd_hidden_weight=0.0)
    >>> args.loss_weights().hidden, args.loss_weights().task
    (0.0, 0.6)
    ```
    """

    task: str | None = field(
        default=None,
        metadata={
            "help": "Which task is distilled; it selects the default loss weights. Default (None): inferred from the "
                    "student's class (EfficientVLMForPreTraining -> pretraining, ...ForVisualQuestionAnswering and "
                    "...ForGenerativeVQA -> vqa, ...ForImageTextRetrieval -> retrieval, ...ForNLVR2 -> nlvr2, "
                    "...ForCaptioning -> captioning).",
            "choices": list(TASKS),
        },
    )
    temperature: float = field(
        default=1.0,
        metadata={"help": "Softmax temperature tau of logits KD. The KL term is multiplied by tau^2 (Hinton et al.), "
                          "so gradient sizes do not depend on tau; at the paper's tau = 1 this is the plain KL."},
    )
    task_loss_weight: float | None = _weight_field("Weight of the student's own task loss.")
    kd_logits_weight: float | None = _weight_field("Weight of the KD terms on logits.")
    kd_hidden_weight: float | None = _weight_field("Overall weight of the hidden-state KD terms.")
    kd_attention_weight: float | None = _weight_field(
        "Overall weight of the attention-map KD terms (self- and cross-attention).")
    vision_hidden_weight: float | None = _weight_field("Per-modality factor of the vision hidden-state KD.")
    vision_attention_weight: float | None = _weight_field("Per-modality factor of the vision attention-map KD.")
    text_hidden_weight: float | None = _weight_field("Per-modality factor of the text hidden-state KD.")
    text_attention_weight: float | None = _weight_field("Per-modality factor of the text attention-map KD.")
    fusion_hidden_weight: float | None = _weight_field("Per-modality factor of the fusion hidden-state KD.")
    fusion_attention_weight: float | None = _weight_field(
        "Per-modality factor of the fusion self-attention-map KD.")
    fusion_cross_attention_weight: float | None = _weight_field(
        "Per-modality factor of the fusion cross-attention-map KD (text queries over image keys).")
    decoder_hidden_weight: float | None = _weight_field(
        "Per-modality factor of the answer decoder's hidden-state KD (generative VQA).")
    decoder_attention_weight: float | None = _weight_field(
        "Per-modality factor of the answer decoder's self-attention-map KD (generative VQA).")
    decoder_cross_attention_weight: float | None = _weight_field(
        "Per-modality factor of the answer decoder's cross-attention-map KD (answer queries over question keys).")
    distill_logits: bool = field(default=True, metadata={"help": "Distil logits. False sets their weight to 0."})
    distill_hidden_states: bool = field(
        default=True,
        metadata={"help": "Distil hidden states. False sets their weight to 0 and stops requesting hidden states."},
    )
    distill_attentions: bool = field(
        default=True,
        metadata={"help": "Distil attention maps. False sets their weight to 0 and keeps the student and teacher on "
                          "their fast attention kernel (requesting attention maps switches a forward to eager "
                          "attention)."},
    )
    layer_map: dict | str | None = field(
        default=None,
        metadata={"help": "Explicit student<->teacher layer pairs, as a dict, a JSON string or a path to a JSON file: "
                          '{"vision": {"hidden": {"0": 0, "1": 4}, "attention": [[0, 3]]}, "fusion": '
                          '{"cross_attention": {"0": 1}}}. Per modality (vision, text, fusion, and decoder: the '
                          "answer decoder of generative VQA) and kind (hidden = hidden-state indices, 0 = embedding "
                          "output; attention / cross_attention = layer indices), "
                          "a {student: teacher} dict or a list of [student, teacher] pairs; what is left out keeps "
                          "the uniform default. An empty dict or list turns that term off."},
    )
    skip_nonfinite_batches: bool = field(
        default=False,
        metadata={"help": "When a micro-batch's loss or a gradient is NaN or infinite, drop that optimizer step (no "
                          "update of the student, projections, pruning gates or multipliers from any of its "
                          "micro-batches; the LR schedule still advances), log a warning naming the step and the "
                          "example ids, and count it (logged as nonfinite_skipped_steps / nonfinite_skipped_batches, "
                          "saved with the trainer state). Default (False): stop with a NonFiniteError naming the step "
                          "and the example ids, before anything is updated or saved. Under fp16, gradient overflow "
                          "is the GradScaler's to handle (it skips the step and lowers the scale) and is neither."},
    )
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "As in TrainingArguments, but off by default: distillation batches come from a collator "
                          "(images + captions -> tensors), and removing 'unused' raw columns would empty them."},
    )

    def __post_init__(self):
        if self.task is not None and self.task not in TASKS:
            raise ValueError(f"task={self.task!r} is unknown; choose one of {TASKS} (or None to infer it).")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}.")
        for name in _WEIGHT_FIELDS:
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}.")
        if isinstance(self.layer_map, str):
            text = self.layer_map
            if os.path.isfile(text):
                with open(text, encoding="utf-8") as handle:
                    text = handle.read()
            try:
                self.layer_map = json.loads(text)
            except json.JSONDecodeError as error:
                raise ValueError(f"layer_map is neither a JSON object nor a path to a JSON file: {error}") from error
        if self.layer_map is not None:
            _check_layer_map_shape(self.layer_map)
        super().__post_init__()

    def loss_weights(self, task: str | None = None) -> LossWeights:
        """The weights for ``task`` (default: ``self.task``): the task defaults, overridden by every field that is
        set, with switched-off kinds at 0."""
        task = task or self.task
        if task not in TASK_DEFAULT_WEIGHTS:
            raise ValueError(f"Unknown task {task!r}; choose one of {TASKS}.")
        overrides = {target: getattr(self, name) for name, target in _WEIGHT_FIELDS.items()
                     if getattr(self, name) is not None}
        for switch, target in (("distill_logits", "logits"), ("distill_hidden_states", "hidden"),
                               ("distill_attentions", "attention")):
            if not getattr(self, switch):
                overrides[target] = 0.0
        return replace(TASK_DEFAULT_WEIGHTS[task], **overrides)


@dataclass(frozen=True)
class LayerPairs:
    """Student/teacher index pairs of one modality: hidden-state indices and (cross-)attention layer indices."""

    hidden: tuple[tuple[int, int], ...]
    attention: tuple[tuple[int, int], ...]
    cross_attention: tuple[tuple[int, int], ...] = ()


def default_layer_pairs(num_teacher_layers: int, num_student_layers: int, cross_attention: bool = False) -> LayerPairs:
    """The paper's uniform map: hidden ``i <-> round(i * L_t / L_s)`` (0 = embeddings), attention
    ``i <-> round((i + 1) * L_t / L_s) - 1``, i.e. ``i <-> 2i`` and ``i <-> 2i + 1`` for a half-depth student."""
    if num_student_layers == 0:
        return LayerPairs(hidden=((0, 0),), attention=())
    chosen = uniform_layer_choice(num_teacher_layers, num_student_layers)
    attention = tuple(enumerate(chosen))
    hidden = ((0, 0),) + tuple((i + 1, t + 1) for i, t in attention)
    return LayerPairs(hidden=hidden, attention=attention, cross_attention=attention if cross_attention else ())


def resolve_layer_map(layer_map: Mapping | None, teacher_config: EfficientVLMConfig,
                      student_config: EfficientVLMConfig) -> dict[str, LayerPairs]:
    """Per modality, the student/teacher pairs to distil: the uniform default, replaced by what ``layer_map`` gives.

    Raises:
        ValueError: an index outside the student's or the teacher's layers.
    """
    resolved = {}
    for modality in LAYER_MODALITIES:
        teacher_sub = getattr(teacher_config, f"{modality}_config", None)
        student_sub = getattr(student_config, f"{modality}_config", None)
        if teacher_sub is None or student_sub is None:  # no answer decoder
            if (layer_map or {}).get(modality):
                raise ValueError(f"layer_map names the {modality}, but the teacher or the student has none.")
            continue
        n_teacher, n_student = teacher_sub.num_hidden_layers, student_sub.num_hidden_layers
        pairs = default_layer_pairs(n_teacher, n_student, cross_attention=modality in CROSS_ATTENTION_MODALITIES)
        given = (layer_map or {}).get(modality, {})
        updates = {}
        for kind, value in given.items():
            limit_s, limit_t = (n_student + 1, n_teacher + 1) if kind == "hidden" else (n_student, n_teacher)
            items = value.items() if isinstance(value, Mapping) else value
            kind_pairs = []
            for student_index, teacher_index in items:
                s, t = int(student_index), int(teacher_index)
                if not (0 <= s < limit_s and 0 <= t < limit_t):
                    what = "hidden states" if kind == "hidden" else "layers"
                    raise ValueError(
                        f"layer_map[{modality!r}][{kind!r}] pairs student {s} with teacher {t}, but the student has "
                        f"{limit_s} {modality} {what} and the teacher {limit_t} (indices start at 0)."
                    )
                kind_pairs.append((s, t))
            updates[kind] = tuple(kind_pairs)
        resolved[modality] = replace(pairs, **updates)
    return resolved


def _check_layer_map_shape(layer_map: Any) -> None:
    """Reject a malformed ``layer_map`` early, with the path of the offending entry."""
    if not isinstance(layer_map, Mapping):
        raise ValueError(f"layer_map must be a dict keyed by modality {LAYER_MODALITIES}, got "
                         f"{type(layer_map).__name__}.")
    for modality, kinds in layer_map.items():
        if modality not in LAYER_MODALITIES:
            raise ValueError(f"layer_map has unknown modality {modality!r}; use {LAYER_MODALITIES}.")
        if not isinstance(kinds, Mapping):
            raise ValueError(f"layer_map[{modality!r}] must be a dict keyed by {MAP_KINDS}.")
        for kind, value in kinds.items():
            if kind not in MAP_KINDS or (kind == "cross_attention" and modality not in CROSS_ATTENTION_MODALITIES):
                allowed = MAP_KINDS if modality in CROSS_ATTENTION_MODALITIES else MAP_KINDS[:2]
                raise ValueError(f"layer_map[{modality!r}] has unknown kind {kind!r}; use {allowed}.")
            items = value.items() if isinstance(value, Mapping) else value
            try:
                for student_index, teacher_index in items:
                    int(student_index), int(teacher_index)
            except (TypeError, ValueError) as error:
                raise ValueError(
                    f"layer_map[{modality!r}][{kind!r}] must be a {{student: teacher}} dict or a list of "
                    f"[student, teacher] pairs of ints, got {value!r}."
                ) from error


__all__ = ["DistillationConfig", "LossWeights", "LayerPairs", "TASK_DEFAULT_WEIGHTS", "TASKS",
           "default_layer_pairs", "resolve_layer_map"]
