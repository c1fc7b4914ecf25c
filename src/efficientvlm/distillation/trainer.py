"""``DistillationTrainer``: a ``transformers.Trainer`` that distils a frozen EfficientVLM teacher into the student.

Each step runs the student, then the teacher (frozen, eval mode, ``torch.no_grad``) on the same batch; heads that
mine ITM hard negatives pass the student's negatives to the teacher, so that both score the very same pairs (under
multi-process training both gather the batch from every process, see ``EfficientVLMContrastiveMixin``). The
loss is the weighted sum of the student's task loss and the KD terms of ``losses.py`` (weights and layer maps from
``DistillationConfig``). Every term is logged on its own, in training and in evaluation.

Mixed precision (``bf16`` / ``fp16``): the student runs under Accelerate's autocast, the teacher (cast to the half
dtype to halve its memory) under the same autocast, and every KD term is computed in float32 from the outputs.

Numerics (``numerics.py``): every optimizer step is checked before it updates anything; a NaN or infinite loss or
gradient stops the run with ``NonFiniteError`` naming the step, the terms, the inputs and the example ids, or, with
``skip_nonfinite_batches``, drops the step and counts it. A checkpoint holding a non-finite tensor is never written.

The training loop is the stock one. The trainer overrides only ``compute_loss`` (the loss), ``training_step`` /
``prediction_step`` (drop id columns, record each micro-batch's loss for the check), ``log`` (the extra terms),
``create_optimizer`` (adds the projections), ``_clip_grad_norm`` (clips the projections together with the student),
``save_model`` / ``_save_checkpoint`` (the finiteness check; the position of a streamed training set),
``get_train_dataloader`` (a streamed training set is read per process), ``_get_train_sampler`` (with a collator that
groups images, ``VQACollator(group_images=True)``, images are shuffled and each image's questions kept in one batch:
``efficientvlm.data.ImageGroupedSampler``) and ``train`` (restores the trainer's own state and a stream's position on
resume, see below), and adds callbacks that clear the projections' gradients after each optimizer step, check each
step before ``optimizer.step()``, count skipped steps and save the trainer's own state.

State outside the model - here the projections' weights, in the pruning trainer also the gates, multipliers and
their optimizer - is registered with ``checkpointed_state`` (``checkpointing.CheckpointedState``): saved into every
checkpoint by a callback's ``on_save`` and restored by ``train(resume_from_checkpoint=...)`` before the stock loop
starts, so resuming works the same under one process, DDP, FSDP and DeepSpeed (where transformers never calls
``_load_from_checkpoint``).
"""

from __future__ import annotations

import json
import logging
import os
from collections import deque
from collections.abc import Iterator, Sequence

import torch
from accelerate.data_loader import IterableDatasetShard
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from ..data.sampling import ImageGroupedSamplingMixin
from ..data.streaming import ImageTextStream
from ..models.configuration_efficientvlm import CROSS_ATTENTION_MODALITIES
from ..models.modeling_efficientvlm import EfficientVLMForVisualQuestionAnswering, EfficientVLMPreTrainedModel
from ..tasks import KDStream, TaskHead, task_head, task_of
from .checkpointing import CheckpointedState
from .config import DistillationConfig, LayerPairs, resolve_layer_map
from .losses import attention_map_mse, hidden_state_mse, logits_kd_loss, multilabel_logits_kd_loss
from .numerics import (
    ID_COLUMNS,
    ID_ONLY_COLUMNS,
    MicroBatchRecord,
    NonFiniteBatchCounter,
    NonFiniteError,
    NumericsGuard,
    all_finite,
    describe_nonfinite_step,
    local_tensor,
    nonfinite_names,
    save_refusal_message,
    stop_message,
)

logger = logging.getLogger(__name__)

#: File, in a checkpoint folder, holding the weights of the hidden-state projections.
PROJECTIONS_NAME = "distillation_projections.safetensors"
#: File, in a checkpoint folder, holding the position of an ``ImageTextStream`` training set.
STREAM_STATE_NAME = "stream_state.json"

def _term_name(kind: str, stream: KDStream) -> str:
    """Logged name of a per-layer term: ``kd_hidden_<stream>``, ``kd_attn_<stream>``, ``kd_attn_<stream>_cross``."""
    return {"hidden": f"kd_hidden_{stream.name}", "attention": f"kd_attn_{stream.name}",
            "cross_attention": f"kd_attn_{stream.name}_cross"}[kind]


def _logit_rows(rows: str, inputs: dict[str, torch.Tensor], student_logits: torch.Tensor,
                teacher_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(student logits, teacher logits, row mask)`` restricted to the rows that a logits term distils.

    For the masked tokens of MLM, a batch from ``ImageTextPretrainingCollator`` carries ``mlm_positions`` (per
    caption, the masked positions, padded with position 0): the logits are gathered there first, which shrinks the
    ``(batch, seq, vocab)`` tensors to ``(batch, max masks, vocab)`` with static shapes (no host sync). Without it,
    every position is kept and the non-masked ones are masked out of the mean.
    """
    if rows == "all":
        return student_logits, teacher_logits, None
    if rows == "answers":
        return student_logits, teacher_logits, inputs.get("answer_attention_mask")
    mask = inputs.get("attention_mask")
    if rows == "masked_tokens" and "mlm_labels" in inputs:
        labels = inputs["mlm_labels"]
        positions = inputs.get("mlm_positions")
        if positions is not None:
            batch = torch.arange(positions.shape[0], device=positions.device)[:, None]
            student_logits, teacher_logits = student_logits[batch, positions], teacher_logits[batch, positions]
            labels = labels.gather(1, positions)
        mask = labels != -100
    return student_logits, teacher_logits, mask


def check_teacher_fits(teacher: EfficientVLMPreTrainedModel, student: EfficientVLMPreTrainedModel) -> None:
    """Raise a ``ValueError`` that names both values and the fix when ``teacher`` cannot teach ``student``.

    The two must be the same task head, share the vocabulary (logits KD compares distributions over the same
    tokens), cut images into the same patch grid (vision states and attention maps are compared token by token)
    and, for VQA, have the same answer set.
    """
    if task_head(teacher) is not task_head(student):
        raise ValueError(f"The teacher is a {type(teacher).__name__} but the student a {type(student).__name__}: "
                         "distillation needs the same task head on both.")
    t_text, s_text = teacher.config.text_config, student.config.text_config
    if t_text.vocab_size != s_text.vocab_size:
        raise ValueError(
            f"The teacher's vocabulary has {t_text.vocab_size} tokens (text_config.vocab_size) but the student's "
            f"{s_text.vocab_size}: logits distillation compares distributions over the same tokens. Create the "
            "student from this teacher (efficientvlm.create_student) or give both the same tokenizer."
        )
    t_vis, s_vis = teacher.config.vision_config, student.config.vision_config
    if (t_vis.image_size, t_vis.patch_size) != (s_vis.image_size, s_vis.patch_size):
        raise ValueError(
            f"The teacher sees images at image_size={t_vis.image_size} with patch_size={t_vis.patch_size} (a "
            f"{t_vis.image_size // t_vis.patch_size}x{t_vis.image_size // t_vis.patch_size} position grid) but the "
            f"student at image_size={s_vis.image_size} with patch_size={s_vis.patch_size} (a "
            f"{s_vis.image_size // s_vis.patch_size}x{s_vis.image_size // s_vis.patch_size} grid): vision states and "
            "attention maps are compared patch by patch. Use a teacher with the student's patch size and bring both "
            "to one resolution with model.resize_position_embeddings(image_size)."
        )
    if isinstance(student, EfficientVLMForVisualQuestionAnswering) and \
            teacher.config.id2label != student.config.id2label:
        raise ValueError(
            f"The teacher answers over {teacher.config.num_labels} labels and the student over "
            f"{student.config.num_labels} (or in another order): VQA logits KD needs the same config.id2label."
        )
    if isinstance(student, EfficientVLMForVisualQuestionAnswering) and \
            (teacher.config.problem_type or "multi_label_classification") != \
            (student.config.problem_type or "multi_label_classification"):
        raise ValueError(
            f"The teacher was trained with problem_type={teacher.config.problem_type!r} and the student is set to "
            f"{student.config.problem_type!r}: VQA logits KD compares the sigmoid scores of a multi-label head or the "
            "softmax of a single-label one, so both need one config.problem_type. Create the student from this "
            "teacher (efficientvlm.create_student copies it) or set student.config.problem_type to the teacher's."
        )


def check_teacher_trained(teacher: nn.Module) -> None:
    """Raise a ``ValueError`` when ``teacher`` has weights that loading did not fill and that are still random.

    ``from_pretrained`` initialises what a checkpoint lacks (the VQA, retrieval or NLVR2 head of a base or pre-training
    checkpoint) and only logs it, and ``from_vision_text_pretrained`` leaves everything but the CLIP and BERT weights
    random, so a task teacher could silently be random where it matters - the library's version of the official
    code's random retrieval teacher. The message names the tensors and the fix. A teacher built in memory, or trained
    since it was loaded, passes (see ``EfficientVLMPreTrainedModel.weights_not_loaded``).
    """
    untrained = teacher.weights_not_loaded() if hasattr(teacher, "weights_not_loaded") else []
    if not untrained:
        return
    shown = ", ".join(untrained[:8]) + (f", ... ({len(untrained)} tensors)" if len(untrained) > 8 else "")
    source = getattr(teacher, "loaded_from", None)
    origin = f" loaded from {source!r}" if source else ""
    raise ValueError(
        f"The teacher ({type(teacher).__name__}{origin}) has weights that were not in its checkpoint, still at "
        f"their random initialisation: {shown}. Distilling from it would teach the student a random head. Fine-tune "
        "the teacher on the task first (examples/finetune.py) and pass that checkpoint, or load a checkpoint saved "
        "with this head."
    )


class HiddenStateProjections(nn.ModuleDict):
    """Learned linear maps from the student's hidden width to the teacher's, one per modality whose widths differ.

    Owned by the trainer, optimised with the student and saved with the trainer state; never part of the exported
    student. ``forward`` projects a whole step's states in one call, so that under DDP the projections' gradients are
    all-reduced like the student's.
    """

    def __init__(self, widths: dict[str, tuple[int, int]]):
        super().__init__({modality: nn.Linear(student, teacher) for modality, (student, teacher) in widths.items()})

    def forward(self, states: Sequence[tuple[str, torch.Tensor]]) -> list[torch.Tensor]:
        """Project each ``(modality, student_states)`` pair with that modality's projection."""
        return [self[modality](hidden) for modality, hidden in states]


class _ClearProjectionGradients(TrainerCallback):
    """The training loop zeroes the student's gradients only; do the same for the projections."""

    def __init__(self, projections: nn.Module):
        self.projections = projections

    def on_step_end(self, args, state, control, **kwargs):
        self.projections.zero_grad(set_to_none=True)


class DistillationTrainer(ImageGroupedSamplingMixin, Trainer):
    """Distil ``teacher_model`` into ``model`` (the student) with the EfficientVLM loss.

    Args:
        model: the student, any EfficientVLM task head (``EfficientVLMForPreTraining`` for general distillation),
            or one wrapped by ``peft.get_peft_model`` to train LoRA adapters only (``efficientvlm.lora_config``;
            ``model.merge_and_unload()`` after training gives a plain student).
        args: a ``DistillationConfig``.
        teacher_model: a model of the same head class: frozen here (``requires_grad_(False)``, eval mode), moved to
            the training device, and cast to bf16 / fp16 when ``args.bf16`` / ``args.fp16`` is set; it runs under
            the student's autocast. A teacher loaded from a checkpoint that lacks its task head (still random) is
            refused (``check_teacher_trained``).
        **kwargs: everything else ``transformers.Trainer`` takes (datasets, ``data_collator``, callbacks, ...).

    Attributes:
        teacher_model: the frozen teacher.
        task: the task being distilled (``args.task`` or inferred from the student's class).
        loss_weights: the resolved ``LossWeights``.
        layer_pairs: per modality, the resolved student/teacher ``LayerPairs``.
        term_weights: the weight of every loss term, by logged name.
        kd_projections: the ``HiddenStateProjections`` (empty when the widths agree).
        checkpointed_state: the ``CheckpointedState`` that saves and restores state outside the model (the
            projections; subclasses register more).

    Streamed training data (``efficientvlm.data.ImageTextStream``, endless, with ``max_steps``): every process reads
    its own shards (Accelerate neither dispatches the main process's batches nor splits the stream again), checkpoints
    hold the stream's position (``STREAM_STATE_NAME``), and ``resume_from_checkpoint`` with ``ignore_data_skip=True``
    continues with the very pair after the last one trained on, without re-reading the consumed data.

    Logged per term (prefixed ``eval_`` in evaluation): ``task_loss``; ``kd_logits`` (pre-training:
    ``kd_logits_itm``, ``kd_logits_mlm``; generative VQA: on the answer decoder's token distributions);
    ``kd_hidden_<stream>`` and ``kd_attn_<stream>`` for the streams vision, text, fusion (and mlm_text, mlm_fusion in
    pre-training, decoder in generative VQA); ``kd_attn_<stream>_cross`` for fusion and decoder cross-attention;
    and ``kd_loss``, the weighted sum of the KD terms. Values are unweighted, averaged over the micro-batches since
    the last log and over processes (non-finite values left out when ``logging_nan_inf_filter`` is on, as the
    Trainer does for ``loss``). With ``skip_nonfinite_batches``: ``nonfinite_skipped_steps`` and
    ``nonfinite_skipped_batches`` (see ``NonFiniteBatchCounter``).
    """

    # Every term is a per-batch mean, so the Trainer must divide by the gradient-accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, model: EfficientVLMPreTrainedModel | None = None, args: DistillationConfig | None = None,
                 teacher_model: EfficientVLMPreTrainedModel | None = None, **kwargs):
        if model is None or teacher_model is None:
            raise ValueError("DistillationTrainer needs a student (model=...) and a teacher (teacher_model=...).")
        if not isinstance(args, DistillationConfig):
            raise TypeError(f"DistillationTrainer needs args=DistillationConfig(...), got {type(args).__name__}.")
        check_teacher_fits(teacher_model, model)
        check_teacher_trained(teacher_model)
        self.task = args.task or task_of(model)
        if self.task != task_of(model):
            raise ValueError(f"args.task={args.task!r} but the student is a {type(model).__name__} "
                             f"(task {task_of(model)!r}).")
        super().__init__(model=model, args=args, **kwargs)

        self.loss_weights = args.loss_weights(self.task)
        self.layer_pairs: dict[str, LayerPairs] = resolve_layer_map(args.layer_map, teacher_model.config, model.config)
        self.task_head: TaskHead = task_head(model)  # the registry's streams and logits terms of this head
        self._student_config = model.config  # its problem_type picks the VQA logits' KD distribution
        self.term_weights = self._term_weights()
        self._output_flags = {
            "output_hidden_states": any(name.startswith("kd_hidden_") for name in self.term_weights),
            "output_attentions": any(name.startswith("kd_attn_") for name in self.term_weights),
        }
        self._label_keys = {"labels", "mlm_labels", "answer_weights", *self.label_names}
        if not self.label_names:
            # Retrieval has no label input but always returns a loss: let evaluation call compute_loss.
            self.can_return_loss = True

        dtype = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else None
        self.teacher_model = teacher_model.eval().requires_grad_(False).to(device=self.args.device, dtype=dtype)

        widths = {}
        for modality in self.layer_pairs:
            student_width = getattr(model.config, f"{modality}_config").hidden_size
            teacher_width = getattr(teacher_model.config, f"{modality}_config").hidden_size
            if student_width != teacher_width and f"kd_hidden_{modality}" in self.term_weights:
                widths[modality] = (student_width, teacher_width)
        self.kd_projections = HiddenStateProjections(widths).to(self.args.device)
        self._projections_for_training: nn.Module | None = None  # DDP-wrapped when distributed
        self.checkpointed_state = CheckpointedState(self)
        self.add_callback(self.checkpointed_state)
        if widths:
            self._check_projections_supported(widths)
            self.add_callback(_ClearProjectionGradients(self.kd_projections))
            self.checkpointed_state.register(
                PROJECTIONS_NAME, self.kd_projections,
                missing=f"this teacher/student pair needs hidden-state projections ({', '.join(widths)}): resume "
                        "from a checkpoint that DistillationTrainer wrote for the same pair.")

        self._term_sums: dict[str, dict[str, torch.Tensor]] = {"train": {}, "eval": {}}
        self._term_counts: dict[str, dict[str, torch.Tensor]] = {"train": {}, "eval": {}}

        self._last_train_terms: dict[str, torch.Tensor] = {}  # of the latest training compute_loss
        # the micro-batches of the optimizer step under way (bounded for callers of training_step outside train())
        self._step_records: deque[MicroBatchRecord] = deque(maxlen=args.gradient_accumulation_steps)
        self._step_discarded = False  # the step under way was dropped by skip_nonfinite_batches
        self.add_callback(NumericsGuard(self))
        self.add_callback(NonFiniteBatchCounter())

    # ---- loss --------------------------------------------------------------------------------------------------

    def _term_weights(self) -> dict[str, float]:
        """Name -> weight of the task loss and of every KD term with a non-zero weight."""
        weights = {"task_loss": self.loss_weights.task}
        if self.loss_weights.logits > 0:
            weights.update((term.name, self.loss_weights.logits) for term in self.task_head.kd_logits)
        for stream in self.task_head.kd_streams:
            pairs = self.layer_pairs[stream.modality]
            for kind in ("hidden", "attention", "cross_attention"):
                if kind == "cross_attention" and stream.modality not in CROSS_ATTENTION_MODALITIES:
                    continue
                weight = self.loss_weights.layer_term(kind, stream.modality)
                if weight > 0 and getattr(pairs, kind):
                    weights[_term_name(kind, stream)] = weight
        return weights

    def compute_loss(self, model: nn.Module, inputs: dict[str, torch.Tensor], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None):
        """Student forward, teacher forward, weighted sum of the task loss and the KD terms.

        ``num_items_in_batch`` is not used: every term is a mean over its own batch (``loss_is_scaled_for_ga`` is
        False, so the Trainer divides by the number of accumulation steps).
        """
        student_outputs = model(**inputs, **self._output_flags)
        teacher_inputs = {key: value for key, value in inputs.items() if key not in self._label_keys}
        if hasattr(self.teacher_model, "gather_across_processes"):
            # the student's negatives index the batch it gathered (or not) from every process: so must the teacher's
            self.teacher_model.gather_across_processes = self.accelerator.unwrap_model(model).gather_across_processes
        if getattr(student_outputs, "itm_negative_text_index", None) is not None:
            teacher_inputs["itm_negative_text_index"] = student_outputs.itm_negative_text_index
            teacher_inputs["itm_negative_image_index"] = student_outputs.itm_negative_image_index
        with torch.no_grad(), self.accelerator.autocast():  # the student's autocast (bf16 / fp16), else nothing
            teacher_outputs = self.teacher_model(**teacher_inputs, **self._output_flags)

        terms = self.distillation_terms(inputs, student_outputs, teacher_outputs)
        kd_loss = sum((self.term_weights[name] * value for name, value in terms.items()),
                      torch.zeros((), device=self.args.device))
        loss = kd_loss
        if student_outputs.loss is not None:
            terms["task_loss"] = student_outputs.loss
            loss = loss + self.term_weights["task_loss"] * student_outputs.loss
        extra = self.extra_loss_terms(model)
        for value in extra.values():
            loss = loss + value
        recorded = {**terms, **extra, "kd_loss": kd_loss}
        if model.training:
            self._last_train_terms = {name: value.detach() for name, value in recorded.items()}
        self._record(recorded, "train" if model.training else "eval")
        if not return_outputs:
            return loss
        # Evaluation gathers every output tensor: drop the per-encoder outputs (and captioning's image-tower output).
        return loss, type(student_outputs)(**{key: value for key, value in student_outputs.items()
                                              if not key.endswith(("_model_output", "image_outputs"))})

    def training_step(self, model: nn.Module, inputs: dict[str, torch.Tensor], num_items_in_batch=None
                      ) -> torch.Tensor:
        """The Trainer's step (forward, backward) on ``inputs`` without their id columns, recording for the check
        before the optimizer step whether the loss is finite, its terms, the batch's floating-point inputs and its
        example ids (no host synchronisation, no copies)."""
        ids = {key: inputs[key] for key in ID_COLUMNS if key in inputs}  # read (host sync) only on failure
        floats = {key: value for key, value in inputs.items()
                  if isinstance(value, torch.Tensor) and value.is_floating_point()}
        inputs = {key: value for key, value in inputs.items() if key not in ID_ONLY_COLUMNS}
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._step_records.append(MicroBatchRecord(loss_finite=torch.isfinite(loss).all(),
                                                   terms=self._last_train_terms, inputs=floats, ids=ids))
        return loss

    def prediction_step(self, model: nn.Module, inputs: dict[str, torch.Tensor], prediction_loss_only: bool,
                        ignore_keys=None):
        """The Trainer's evaluation step on ``inputs`` without their id columns."""
        inputs = {key: value for key, value in inputs.items() if key not in ID_ONLY_COLUMNS}
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

    def extra_loss_terms(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Further terms (name -> scalar tensor) added to the loss with weight 1 and logged like the others; none
        here. Subclasses use it for regularisers, e.g. the pruning trainer's Lagrangian."""
        return {}

    def distillation_terms(self, inputs: dict[str, torch.Tensor], student_outputs, teacher_outputs
                           ) -> dict[str, torch.Tensor]:
        """Unweighted KD terms (name -> scalar tensor) of one batch; ``term_weights`` holds their weights."""
        terms = {}
        for term in self.task_head.kd_logits:
            student_logits = getattr(student_outputs, term.output, None)
            if term.name in self.term_weights and student_logits is not None:
                kd = multilabel_logits_kd_loss if term.scores_each_label(self._student_config) else logits_kd_loss
                terms[term.name] = kd(*_logit_rows(term.rows, inputs, student_logits,
                                                   getattr(teacher_outputs, term.output)),
                                      temperature=self.args.temperature)

        hidden = {}  # term name -> (modality, row groups, [(student states, teacher states) per layer pair])
        for stream in self.task_head.kd_streams:
            student_pass = getattr(student_outputs, stream.output)  # an EfficientVLMEncoderOutput, or None
            if student_pass is None:  # this forward did not run the stream (e.g. no MLM pass)
                continue
            groups = self._row_groups(stream, inputs, student_outputs)
            pairs = self.layer_pairs[stream.modality]
            for kind, field in (("attention", "attentions"), ("cross_attention", "cross_attentions")):
                name = _term_name(kind, stream)
                if name not in self.term_weights:
                    continue
                student_maps = getattr(student_pass, field)
                teacher_maps = getattr(getattr(teacher_outputs, stream.output), field)
                losses = [
                    attention_map_mse(student_maps[s][rows], teacher_maps[t][rows], mask,
                                      mask if kind == "attention" else None)  # cross-attention keys: image
                    # (fusion) or question (decoder) tokens; padded question keys have probability 0 in both
                    for s, t in getattr(pairs, kind)
                    if student_maps[s] is not None and teacher_maps[t] is not None  # pruned attention blocks
                    for rows, mask in groups
                ]
                if losses:
                    terms[name] = sum(losses)
            name = _term_name("hidden", stream)
            if name in self.term_weights:
                student_states = student_pass.hidden_states
                teacher_states = getattr(teacher_outputs, stream.output).hidden_states
                hidden[name] = (stream.modality, groups,
                                [(student_states[s], teacher_states[t]) for s, t in pairs.hidden])

        # Every projected state goes through the projections in one call (one DDP forward per step).
        to_project = [(modality, student) for modality, _, layer_pairs in hidden.values()
                      if modality in self.kd_projections for student, _ in layer_pairs]
        projections = self._projections_for_training if self._projections_for_training is not None \
            else self.kd_projections
        projected = iter(projections(to_project) if to_project else ())
        for name, (modality, groups, layer_pairs) in hidden.items():
            losses = []
            for student, teacher in layer_pairs:
                if modality in self.kd_projections:
                    student = next(projected)
                losses += [hidden_state_mse(student[rows], teacher[rows], mask) for rows, mask in groups]
            terms[name] = sum(losses)
        return terms

    @staticmethod
    def _row_groups(stream: KDStream, inputs: dict[str, torch.Tensor], outputs
                    ) -> list[tuple[slice, torch.Tensor | None]]:
        """``(rows, padding mask)`` groups of a stream's states, each averaged on its own."""
        everything = slice(None)
        mask = inputs.get("attention_mask")
        if stream.rows == "image":
            return [(everything, None)]
        if stream.rows == "image_pairs":
            return [(everything, None if mask is None else mask.repeat_interleave(2, dim=0))]
        if stream.rows == "answers":
            answer_mask = inputs.get("answer_attention_mask")
            return [(everything, None if answer_mask is None else answer_mask.flatten(0, 1))]
        negatives = getattr(outputs, "itm_negative_text_index", None)
        if stream.rows == "text" or negatives is None:
            return [(everything, mask)]
        batch = negatives.shape[0]
        pair_mask = outputs.itm_attention_mask  # negatives may come from other processes' batches
        return [(slice(0, batch), None if pair_mask is None else pair_mask[:batch]),
                (slice(batch, None), None if pair_mask is None else pair_mask[batch:])]

    # ---- logging -----------------------------------------------------------------------------------------------

    def _record(self, terms: dict[str, torch.Tensor], split: str) -> None:
        """Accumulate detached terms on the device (no host sync) until the next ``log``; with
        ``logging_nan_inf_filter``, non-finite values are left out (as the Trainer does for ``loss``)."""
        sums, counts = self._term_sums[split], self._term_counts[split]
        for name, value in terms.items():
            value = value.detach().float()
            count = torch.ones_like(value)
            if self.args.logging_nan_inf_filter:
                count = torch.isfinite(value).float()
                value = torch.where(count > 0, value, torch.zeros_like(value))
            sums[name] = sums[name] + value if name in sums else value
            counts[name] = counts[name] + count if name in counts else count

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the averaged loss terms to a training log (``loss`` in ``logs``) or an evaluation log
        (``<prefix>_runtime`` in ``logs``, the terms named ``<prefix>_<term>``), then log as usual."""
        prefix = next((key[: -len("_runtime")] for key in logs if key.endswith("_runtime")), None)
        if prefix is None and "loss" in logs:
            logs.update(self._drain("train"))
            if self.args.skip_nonfinite_batches:
                counter = self.nonfinite_counter
                logs["nonfinite_skipped_steps"] = counter.skipped_steps
                logs["nonfinite_skipped_batches"] = counter.skipped_batches
        elif prefix == "train":  # the end-of-training summary: drop the terms of steps after the last log
            self._term_sums["train"], self._term_counts["train"] = {}, {}
            if self.args.skip_nonfinite_batches:
                logs["train_nonfinite_skipped_steps"] = self.nonfinite_counter.skipped_steps
        elif prefix is not None:
            logs.update({f"{prefix}_{name}": value for name, value in self._drain("eval").items()})
        super().log(logs, start_time)

    def _drain(self, split: str) -> dict[str, float]:
        """Mean of each recorded term over micro-batches and processes; resets the accumulators.

        Every process calls ``log`` at the same points with the same term names, so the gather lines up.
        """
        sums, counts = self._term_sums[split], self._term_counts[split]
        self._term_sums[split], self._term_counts[split] = {}, {}
        if not sums:
            return {}
        names = sorted(sums)
        means = torch.stack([sums[name] for name in names]) / torch.stack([counts[name] for name in names])
        means = self.accelerator.gather(means).view(-1, len(names)).mean(0)
        return dict(zip(names, means.tolist()))

    # ---- numerics: the check of each optimizer step ------------------------------------------------------------

    @property
    def nonfinite_counter(self) -> NonFiniteBatchCounter:
        """The ``NonFiniteBatchCounter`` of this trainer (looked up: resuming may replace the instance)."""
        return next(cb for cb in self.callback_handler.callbacks if isinstance(cb, NonFiniteBatchCounter))

    def _loss_scaler(self) -> torch.amp.GradScaler | None:
        """Accelerate's ``GradScaler`` when fp16 loss scaling is on, else None."""
        scaler = getattr(self.accelerator, "scaler", None)
        return scaler if scaler is not None and scaler.is_enabled() else None

    def _step_gradients(self) -> Iterator[tuple[str, torch.Tensor | None]]:
        """``(name, gradient)`` of everything the optimizer step updates: the student and the projections."""
        for name, parameter in self.model.named_parameters():
            yield name, parameter.grad
        for name, parameter in self.kd_projections.named_parameters():
            yield f"kd_projections.{name}", parameter.grad

    def _prepare_auxiliary_gradients(self) -> None:
        """Bring the gradients of parameters outside ``self.optimizer`` to their final values before the check
        (the pruning trainer: averaged over processes and unscaled); nothing here."""

    def _discard_step_gradients(self) -> None:
        """Drop this step's gradients so that ``optimizer.step()`` updates nothing (AdamW skips parameters without
        a gradient: no decay, no momentum step)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.kd_projections.zero_grad(set_to_none=True)

    def _check_step_is_finite(self) -> None:
        """Between gradient clipping and ``optimizer.step()``: stop (``NonFiniteError``) or, with
        ``skip_nonfinite_batches``, drop the step when a micro-batch's loss or (without fp16 loss scaling, where the
        GradScaler skips overflowing steps itself) a gradient is NaN or infinite. One host sync per optimizer step;
        under several processes the counts are summed, so that every process stops or skips together."""
        self._step_discarded = False
        self._prepare_auxiliary_gradients()
        records = list(self._step_records)
        self._step_records.clear()
        device = self.args.device
        bad_losses = torch.stack([~record.loss_finite.to(device) for record in records]).sum() if records \
            else torch.zeros((), dtype=torch.long, device=device)
        check_gradients = self._loss_scaler() is None
        gradients_finite = all_finite((g for _, g in self._step_gradients()), device) if check_gradients \
            else torch.ones((), dtype=torch.bool, device=device)
        flags = torch.stack([bad_losses.float(), (~gradients_finite).float()])
        if self.accelerator.num_processes > 1:
            flags = self.accelerator.reduce(flags, reduction="sum")
        bad_loss_count, bad_gradient_count = (int(value) for value in flags.tolist())
        if not bad_loss_count and not bad_gradient_count:
            return

        step = self.state.global_step + 1
        names, checked = nonfinite_names(self._step_gradients()) if bad_gradient_count else ([], 0)
        description = describe_nonfinite_step(step, records, bad_loss_count, bad_gradient_count, names, checked)
        if not self.args.skip_nonfinite_batches:
            raise NonFiniteError(stop_message(description))
        self._discard_step_gradients()
        self._step_discarded = True
        counter = self.nonfinite_counter
        counter.skipped_steps += 1
        counter.skipped_batches += bad_loss_count
        counter.last_skipped_step = step
        logger.warning("%s\nskip_nonfinite_batches is set: this optimizer step is dropped (nothing is updated from "
                       "its %d micro-batch(es)); %d step(s) dropped so far.", description, len(records),
                       counter.skipped_steps)

    def _checkpoint_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """``(name, tensor)`` of the trainer state a checkpoint saves besides the model: the projections and the
        optimizer's state (moments)."""
        for name, value in self.kd_projections.state_dict().items():
            yield f"kd_projections.{name}", value
        if self.optimizer is not None and not self.is_deepspeed_enabled:
            for index, state in enumerate(self.optimizer.state.values()):
                for key, value in state.items():
                    if isinstance(value, torch.Tensor):
                        yield f"optimizer.state.{index}.{key}", value

    def _check_finite_before_save(self, what: str, include_trainer_state: bool) -> None:
        """Raise ``NonFiniteError`` (on every process) when the model - and, for a checkpoint, the trainer state -
        holds a NaN or infinite tensor, before anything is written."""
        model = self.accelerator.unwrap_model(self.model)  # the process's parameters and buffers (shards, no gather)
        named = [(f"model.{name}", value) for name, value in (*model.named_parameters(), *model.named_buffers())]
        if include_trainer_state:
            named += list(self._checkpoint_tensors())
        tensors = [local_tensor(value) for _, value in named if value.is_floating_point()]
        finite = all_finite(tensors, self.args.device).to(self.args.device)
        bad = (~finite).float().reshape(1)
        if self.accelerator.num_processes > 1:
            bad = self.accelerator.reduce(bad, reduction="sum")
        if bad.item():
            names, checked = nonfinite_names(named)
            raise NonFiniteError(save_refusal_message(what, names or ["on another process"], checked))

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The Trainer's ``save_model``, refused (``NonFiniteError``, nothing written) when a weight is NaN or
        infinite. Checkpoints are checked as a whole in ``_save_checkpoint``."""
        if not _internal_call:
            self._check_finite_before_save(f"the model to {output_dir or self.args.output_dir}",
                                           include_trainer_state=False)
        super().save_model(output_dir, _internal_call)

    # ---- projections: optimiser, clipping, checkpoints ---------------------------------------------------------

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """The Trainer's optimizer, plus the projections (weights decayed, biases not) at the same learning rate.

        The projections are also prepared by Accelerate here (DDP-wrapped when distributed), so that their
        gradients are averaged across processes like the student's.
        """
        optimizer = super().create_optimizer(model)
        if len(self.kd_projections):
            present = {id(p) for group in optimizer.param_groups for p in group["params"]}
            if not any(id(p) in present for p in self.kd_projections.parameters()):
                weights = [p for name, p in self.kd_projections.named_parameters() if name.endswith("weight")]
                biases = [p for name, p in self.kd_projections.named_parameters() if name.endswith("bias")]
                optimizer.add_param_group({"params": weights, "weight_decay": self.args.weight_decay})
                optimizer.add_param_group({"params": biases, "weight_decay": 0.0})
            if self._projections_for_training is None:
                self._projections_for_training = self.accelerator.prepare_model(self.kd_projections)
        return optimizer

    def _clip_grad_norm(self, model: nn.Module):
        """Clip the student's and the projections' gradients together to ``max_grad_norm``."""
        if not len(self.kd_projections):
            return super()._clip_grad_norm(model)
        parameters = [*model.parameters(), *self.kd_projections.parameters()]
        return self.accelerator.clip_grad_norm_(parameters, self.args.max_grad_norm)

    def _save_checkpoint(self, model: nn.Module, trial) -> None:
        """The Trainer's checkpoint, refused (``NonFiniteError``, nothing written) when the model or the trainer's
        own state holds a NaN or infinite tensor, plus a streamed training set's position (``STREAM_STATE_NAME``).
        The trainer's own state is added to the folder by ``checkpointed_state.on_save`` right after."""
        checkpoint = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        self._check_finite_before_save(checkpoint, include_trainer_state=True)
        super()._save_checkpoint(model, trial)
        stream = self._train_stream()
        folder = os.path.join(self._get_output_dir(trial=trial), checkpoint)
        if stream is not None and self.args.should_save and os.path.isdir(folder):
            # every optimizer step took gradient_accumulation_steps full batches
            position = stream.state_dict(self.state.global_step * self.args.gradient_accumulation_steps,
                                         self._train_batch_size, self.args.dataloader_num_workers)
            with open(os.path.join(folder, STREAM_STATE_NAME), "w", encoding="utf-8") as handle:
                json.dump(position, handle, indent=2)

    def _check_projections_supported(self, widths: dict) -> None:
        """The projections train beside the student as extra parameter groups of its optimizer, their gradients
        averaged by DDP. FSDP shards the optimizer over the model's parameters only, and DeepSpeed's ZeRO optimizers
        (every stage) map each parameter to a name in the engine's model (a projection raises ``KeyError`` in
        ``_create_param_mapping``): refuse both early, with the fix."""
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            backend = "FSDP" if self.is_fsdp_enabled else "DeepSpeed"
            sizes = ", ".join(f"{modality} {student} vs {teacher}" for modality, (student, teacher) in widths.items())
            raise ValueError(
                f"The student's hidden sizes differ from the teacher's ({sizes}), so distillation trains hidden-state "
                f"projections outside the student, which {backend} cannot optimise (it only takes the model's own "
                "parameters). Launch with DDP (examples/accelerate_configs/ddp.yaml), or create the student with the "
                "teacher's widths (efficientvlm.create_student), or set the hidden-state KD weights to 0."
            )

    # ---- resume ------------------------------------------------------------------------------------------------

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, ignore_keys_for_eval=None,
              **kwargs):
        """``Trainer.train``; when resuming, the state registered with ``checkpointed_state`` and a streamed training
        set's position are restored from the checkpoint first (under every backend, DeepSpeed included)."""
        folder = resume_from_checkpoint
        if folder is True:
            folder = get_last_checkpoint(self.args.output_dir)  # None: Trainer.train raises its own error
        if isinstance(folder, str):
            self.checkpointed_state.load(folder)
            self._load_stream_position(folder)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial,
                             ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)

    # ---- streamed training data --------------------------------------------------------------------------------

    def _train_stream(self) -> ImageTextStream | None:
        return self.train_dataset if isinstance(self.train_dataset, ImageTextStream) else None

    def get_train_dataloader(self):
        """The Trainer's training DataLoader; for an ``ImageTextStream``, one that reads this process's shards.

        By default Accelerate gives an ``IterableDataset`` to the main process alone and sends slices of its batches
        to the others (``dispatch_batches``), or, with that off, makes every process read the whole stream and keep
        every ``world_size``-th batch; the stream already splits its shards by process and worker, so neither is done.
        """
        stream = self._train_stream()
        if stream is None:
            return super().get_train_dataloader()
        args = self.args
        if (stream.rank, stream.world_size) != (args.process_index, args.world_size):
            raise ValueError(
                f"The ImageTextStream was built for rank {stream.rank} of {stream.world_size} processes, but this is "
                f"process {args.process_index} of {args.world_size}: build it after the training arguments (or pass "
                "rank=args.process_index, world_size=args.world_size)."
            )
        if stream.num_epochs is not None:
            raise ValueError(
                f"The ImageTextStream yields {stream.num_epochs} epoch(s) and then stops, at a different step on each "
                "process (DDP would wait forever) and unresumably: build it with num_epochs=None (endless) and set "
                "max_steps."
            )
        if not args.dataloader_in_order:
            raise ValueError("dataloader_in_order=False takes batches from the workers in any order, so the "
                             "stream's position could not be saved: leave it True.")
        if self.accelerator.split_batches:
            raise ValueError("accelerator_config split_batches=True splits one batch over the processes; an "
                             "ImageTextStream gives each process its own batches: leave it False.")
        stream.check_workers(args.dataloader_num_workers)
        config = self.accelerator.dataloader_config
        dispatch = config.dispatch_batches
        config.dispatch_batches = False
        try:
            dataloader = super().get_train_dataloader()
        finally:
            config.dispatch_batches = dispatch
        if isinstance(dataloader.dataset, IterableDatasetShard):  # a pass-through: the stream is split already
            dataloader.dataset.num_processes, dataloader.dataset.process_index = 1, 0
        return dataloader

    def _load_stream_position(self, checkpoint: str) -> None:
        """Make a streamed training set continue after the last batch that ``checkpoint`` trained on."""
        stream = self._train_stream()
        if stream is None:
            return
        path = os.path.join(checkpoint, STREAM_STATE_NAME)
        if not os.path.isfile(path):
            raise ValueError(f"{checkpoint} has no {STREAM_STATE_NAME}: it was not written by a DistillationTrainer "
                             "training on an ImageTextStream, so the stream's position is unknown.")
        if not self.args.ignore_data_skip:
            raise ValueError(
                "Resuming on an ImageTextStream needs ignore_data_skip=True (--ignore_data_skip): the stream continues "
                f"from its saved position ({STREAM_STATE_NAME}) itself, while the Trainer's own resume would also "
                "re-read, decode and collate every batch since the start of training and skip them."
            )
        with open(path, encoding="utf-8") as handle:
            stream.load_state_dict(json.load(handle))


__all__ = ["DistillationTrainer", "HiddenStateProjections", "PROJECTIONS_NAME", "STREAM_STATE_NAME",
           "check_teacher_fits", "check_teacher_trained", "task_of"]
