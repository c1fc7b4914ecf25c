"""``DistillationConfig``: the training arguments of ``DistillationTrainer``.

The distillation loss of one step is

    loss = task_loss_weight * L_task
         + kd_logits_weight    * sum(KD on logits)
         + kd_hidden_weight    * sum_m <m>_hidden_weight    * (hidden-state KD of modality m)
         + kd_attention_weight * sum_m <m>_attention_weight * (attention-map KD of modality m)
         + kd_attention_weight * fusion_cross_attention_weight * (fusion cross-attention-map KD)

with the modalities ``m`` in vision, text, fusion. Every weight left at ``None`` takes the default of the task,
read off the official EfficientVLM code (``GeneralDistill.py`` for pre-training, ``Eff_*.py`` for the tasks;
see ``TASK_DEFAULT_WEIGHTS``).

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

from ..models.configuration_efficientvlm import EfficientVLMConfig
from ..student import uniform_layer_choice

TASKS = ("pretraining", "vqa", "retrieval", "nlvr2", "captioning")
MODALITIES = ("vision", "text", "fusion")
#: Kinds of per-layer maps: hidden states, self-attention maps, cross-attention maps (fusion only).
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

    def layer_term(self, kind: str, modality: str) -> float:
        """Total weight of one per-layer term: ``kind`` in ``MAP_KINDS``, ``modality`` in ``MODALITIES``."""
        if kind == "cross_attention":
            if modality != "fusion":
                raise ValueError(f"Only the fusion encoder has cross-attention, not {modality!r}.")
            return self.attention * self.fusion_cross_attention
        overall = {"hidden": self.hidden, "attention": self.attention}[kind]
        return overall * getattr(self, f"{modality}_{kind}")


#: Per-task defaults, from the official code (the paper's Sec. 3 table; its code calls them "totally heuristic").
#:
#: * pretraining: ``0.6 L_small + 0.4 [KL_itm + KL_mlm + text(A+H) + img(A + 0.1H) + fusion(A+H) of the ITM
#:   positives and negatives + text/fusion(A+H) of the MLM pass]``; cross-attention is not distilled.
#: * vqa: ``0.6 L_ans + 0.4 [KL + text(A+H) + img(A + 0.2H) + 0.5 (fusion H + self-A + cross-A) + dec(...)]``.
#:   The paper answers with a generative decoder; our VQA head is a classifier, so the decoder's logits KD is
#:   the classifier-logits KD and the decoder's per-layer terms have no counterpart.
#: * retrieval: ``0.5 {L_itc + L_itm + KL_itm + 0.33 [text + img(A + 0.2H) + 0.5 fusion(H, A, cross-A)]}``.
#: * nlvr2: ``0.8 L_ce + 0.2 {KL + text + 0.33 [img(A + 0.1H) + 0.5 fusion(H, A, cross-A)]}``.
#: * captioning: ``0.7 L_lm + 0.3 [KL + img(A + 0.1H) + dec(A + H + cross-A)]``; the decoder is our text + fusion
#:   stack run causally, so "dec" is text(A+H) + fusion(A+H+cross-A).
TASK_DEFAULT_WEIGHTS: dict[str, LossWeights] = {
    "pretraining": LossWeights(task=0.6, logits=0.4, hidden=0.4, attention=0.4, vision_hidden=0.1,
                               vision_attention=1.0, text_hidden=1.0, text_attention=1.0, fusion_hidden=1.0,
                               fusion_attention=1.0, fusion_cross_attention=0.0),
    "vqa": LossWeights(task=0.6, logits=0.4, hidden=0.4, attention=0.4, vision_hidden=0.2, vision_attention=1.0,
                       text_hidden=1.0, text_attention=1.0, fusion_hidden=0.5, fusion_attention=0.5,
                       fusion_cross_attention=0.5),
    "retrieval": LossWeights(task=0.5, logits=0.5, hidden=0.165, attention=0.165, vision_hidden=0.2,
                             vision_attention=1.0, text_hidden=1.0, text_attention=1.0, fusion_hidden=0.5,
                             fusion_attention=0.5, fusion_cross_attention=0.5),
    "nlvr2": LossWeights(task=0.8, logits=0.2, hidden=0.2, attention=0.2, vision_hidden=0.033,
                         vision_attention=0.33, text_hidden=1.0, text_attention=1.0, fusion_hidden=0.165,
                         fusion_attention=0.165, fusion_cross_attention=0.165),
    "captioning": LossWeights(task=0.7, logits=0.3, hidden=0.3, attention=0.3, vision_hidden=0.1,
                              vision_attention=1.0, text_hidden=1.0, text_attention=1.0, fusion_hidden=1.0,
                              fusion_attention=1.0, fusion_cross_attention=1.0),
}

#: ``DistillationConfig`` field -> ``LossWeights`` field
_WEIGHT_FIELDS = {
    "task_loss_weight": "task", "kd_logits_weight": "logits", "kd_hidden_weight": "hidden",
    "kd_attention_weight": "attention", "vision_hidden_weight": "vision_hidden",
    "vision_attention_weight": "vision_attention", "text_hidden_weight": "text_hidden",
    "text_attention_weight": "text_attention", "fusion_hidden_weight": "fusion_hidden",
    "fusion_attention_weight": "fusion_attention", "fusion_cross_attention_weight": "fusion_cross_attention",
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
                    "student's class (EfficientVLMForPreTraining -> pretraining, ...ForVisualQuestionAnswering -> "
                    "vqa, ...ForImageTextRetrieval -> retrieval, ...ForNLVR2 -> nlvr2, ...ForCaptioning -> "
                    "captioning).",
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
                          '{"cross_attention": {"0": 1}}}. Per modality (vision, text, fusion) and kind (hidden = '
                          "hidden-state indices, 0 = embedding output; attention / cross_attention = layer indices), "
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
    for modality in MODALITIES:
        n_teacher = getattr(teacher_config, f"{modality}_config").num_hidden_layers
        n_student = getattr(student_config, f"{modality}_config").num_hidden_layers
        pairs = default_layer_pairs(n_teacher, n_student, cross_attention=modality == "fusion")
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
        raise ValueError(f"layer_map must be a dict keyed by modality {MODALITIES}, got {type(layer_map).__name__}.")
    for modality, kinds in layer_map.items():
        if modality not in MODALITIES:
            raise ValueError(f"layer_map has unknown modality {modality!r}; use {MODALITIES}.")
        if not isinstance(kinds, Mapping):
            raise ValueError(f"layer_map[{modality!r}] must be a dict keyed by {MAP_KINDS}.")
        for kind, value in kinds.items():
            if kind not in MAP_KINDS or (kind == "cross_attention" and modality != "fusion"):
                allowed = MAP_KINDS if modality == "fusion" else MAP_KINDS[:2]
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
