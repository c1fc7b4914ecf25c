"""The task registry: everything the library knows per task, in one place.

A ``Task`` holds what fine-tuning, evaluation, distillation and pruning need of one task: its heads (the model
classes, and per head what knowledge distillation reads off their outputs), its default distillation loss weights,
and, for the four downstream tasks, the collator, the evaluation and where the data comes from. Example scripts, the
demo, the trainers and user code look tasks up here instead of branching on the task name::

    task = TASKS["vqa"]
    data = load_task_data("vqa", dataset="shapes")           # or dataset="files", train_files=[...], image_root=...
    collator = task.collator(processor, data.labels)
    metrics = task.evaluate(model, processor, data.eval)
    task_of(model), task_head(model).kd_streams              # the task of a model, and what KD distils of it
    head = task.head("generative", checkpoint="path/to/student")  # a named head (VQA: classifier, generative)
    model = head.build(data.labels, processor.tokenizer, checkpoint="path/to/student")
    collator = task.collator(processor, data.labels, model=model)  # the collator of the model's head

``TASKS`` holds pre-training (general distillation: ``EfficientVLMForPreTraining``) and the four downstream tasks,
``DOWNSTREAM_TASKS`` names the latter (those with data, a collator and an evaluation here). Adding a task means one
entry here (see CONTRIBUTING.md, "Adding a task head").
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from torch import nn
from transformers import AutoConfig

from . import data as evlm_data
from . import evaluation
from .lora import unwrap_lora
from .models.configuration_efficientvlm import EfficientVLMConfig, EfficientVLMGenerativeVQAConfig
from .models.modeling_efficientvlm import (
    EfficientVLMForCaptioning,
    EfficientVLMForGenerativeVQA,
    EfficientVLMForImageTextRetrieval,
    EfficientVLMForNLVR2,
    EfficientVLMForPreTraining,
    EfficientVLMForVisualQuestionAnswering,
    EfficientVLMModel,
)

__all__ = ["DOWNSTREAM_TASKS", "HEAD_NAMES", "KDLogits", "KDStream", "Task", "TaskHead", "TaskHeadArguments", "TASKS",
           "TaskData", "TaskDataArguments", "load_task_data", "small_config", "task_head", "task_of"]


@dataclass(frozen=True)
class KDStream:
    """One forward pass of one encoder whose per-layer states are distilled.

    Attributes:
        name: the suffix of its logged terms (``kd_hidden_<name>``, ``kd_attn_<name>``, ``kd_attn_<name>_cross``).
        output: the head output's field holding the pass's ``EfficientVLMEncoderOutput`` (``vision_model_output``,
            ...; set when hidden states or attention maps are requested).
        modality: selects the layer map, the loss weights and the hidden-state projection (``MODALITIES`` or
            ``"decoder"``).
        rows: which padding mask the rows follow: ``"image"`` (no padding), ``"text"`` (the batch's texts),
            ``"itm_pairs"`` (the ITM pairs: positives, then negatives, each group averaged on its own as in the
            paper), ``"image_pairs"`` (NLVR2: every text twice, once per image) or ``"answers"`` (generative VQA's
            decoder: every answer sequence, ``batch * answers`` rows masked by ``answer_attention_mask``).
    """

    name: str
    output: str
    modality: str
    rows: str


@dataclass(frozen=True)
class KDLogits:
    """One logits KD term of a head.

    Attributes:
        name: the logged term (``kd_logits``; pre-training: ``kd_logits_itm``, ``kd_logits_mlm``).
        output: the head output's field holding the logits.
        multilabel: the head can score each label on its own (sigmoid: VQA's classifier), not one softmax; whether
            a given model does is ``scores_each_label(config)``.
        rows: ``"all"`` (one per example or pair), ``"text"`` (every non-padding token), ``"masked_tokens"`` (MLM:
            the masked tokens only, where X-VLM's MLM head predicts) or ``"answers"`` (generative VQA: every token of
            every given answer, the decoder's next-token distributions).
    """

    name: str
    output: str
    multilabel: bool
    rows: str

    def scores_each_label(self, config) -> bool:
        """Whether a model with ``config`` scores each label with its own sigmoid (distil per-label Bernoulli
        distributions) rather than one softmax: a multi-label head, unless its ``config.problem_type`` is
        ``"single_label_classification"`` (the VQA classifier trained with softmax cross-entropy)."""
        return self.multilabel and getattr(config, "problem_type", None) != "single_label_classification"


@dataclass(frozen=True)
class TaskHead:
    """One model class of a task: what distillation reads off its outputs, and how fine-tuning builds and feeds it.

    Attributes:
        model_class: the head's model class.
        kd_streams / kd_logits: what distillation reads off its outputs.
        name: its name where the task has several heads (VQA: ``"classifier"``, ``"generative"``; the example
            scripts' ``--vqa_head``); None for a task's only head.
        make_collator: ``(processor, labels, max_length, config) -> collator`` of this head (``config``: the model's,
            or None); None: the task's ``make_collator``.
        adapt: ``(model, labels, tokenizer) -> model``: makes a model of this head out of any EfficientVLM model (the
            generative VQA head keeps a generative model, with ``labels`` as its answer list, and builds one around
            the encoders of any other); None: the class loads any checkpoint of its task itself (``from_pretrained``,
            a fresh head where the checkpoint has none) and takes ``labels`` as ``id2label``.
    """

    model_class: type
    kd_streams: tuple[KDStream, ...]
    kd_logits: tuple[KDLogits, ...]
    name: str | None = None
    make_collator: Callable[..., Any] | None = None
    adapt: Callable[..., Any] | None = None

    def build(self, labels: Sequence[str] | None = None, tokenizer=None, *, checkpoint: str | os.PathLike | None = None,
              vision_model: str | None = None, text_model: str | None = None,
              config: EfficientVLMConfig | None = None):
        """A model of this head from ``checkpoint`` (any EfficientVLM checkpoint: its encoders, and its head when
        it is this one), from a CLIP ``vision_model`` and a BERT ``text_model``, or at random from ``config``.
        ``labels`` (VQA: the answer list) become ``id2label`` (generative VQA: the ranked answer list, tokenised
        with ``tokenizer``)."""
        if sum(source is not None for source in (checkpoint, vision_model or text_model, config)) != 1:
            raise ValueError("TaskHead.build needs exactly one source: checkpoint, vision_model + text_model, or "
                             "config.")
        if (vision_model is None) != (text_model is None):
            raise ValueError("TaskHead.build: give vision_model and text_model together (a CLIP and a BERT "
                             "checkpoint).")
        id2label = {"id2label": dict(enumerate(labels))} if labels is not None else {}
        if self.adapt is None:
            if checkpoint is not None:
                return self.model_class.from_pretrained(checkpoint, **id2label)
            if vision_model is not None:
                return self.model_class.from_vision_text_pretrained(vision_model, text_model, config_kwargs=id2label)
            if labels is not None:
                config = copy.deepcopy(config)
                config.id2label = dict(enumerate(labels))
                config.label2id = {label: i for i, label in enumerate(labels)}
            return self.model_class(config)
        if checkpoint is not None:
            source = _load_checkpoint(checkpoint)
        elif vision_model is not None:
            source = EfficientVLMModel.from_vision_text_pretrained(vision_model, text_model)
        else:
            source = EfficientVLMModel(config)
        return self.adapt(source, labels, tokenizer)


@dataclass(frozen=True)
class Task:
    """One task.

    Attributes:
        name: registry key.
        heads: the task's model classes; the first is the one fine-tuning builds by default (``model_class``);
            ``head(name, checkpoint)`` chooses one.
        kd_weights: default weights of the distillation loss (the fields of
            ``efficientvlm.distillation.LossWeights``), read off the official EfficientVLM code.
        main_metric: the key of ``evaluate``'s result that model cards and the demo report (downstream tasks).
        make_collator: ``(processor, labels, max_length) -> collator`` (labels: the VQA answer list, else ignored).
        evaluate: ``(model, processor, dataset) -> metrics`` (downstream tasks; for every head of the task: VQA
            takes the arg-max of ``logits``, the classifier's scores or the generative head's answer ranking).
        shapes_train / shapes_eval: ``(n, split, shapes_config) -> Dataset`` of the synthetic benchmark.
        load_train / load_eval: ``(annotation files, image_root) -> Dataset`` of the official X-VLM JSON format.
    """

    name: str
    heads: tuple[TaskHead, ...]
    kd_weights: Mapping[str, float]
    make_collator: Callable[..., Any]
    main_metric: str | None = None
    evaluate: Callable[..., dict] | None = None
    shapes_train: Callable[..., Any] | None = None
    shapes_eval: Callable[..., Any] | None = None
    load_train: Callable[..., Any] | None = None
    load_eval: Callable[..., Any] | None = None

    @property
    def model_class(self) -> type:
        """The head fine-tuning builds for this task (the first of ``heads``)."""
        return self.heads[0].model_class

    @property
    def downstream(self) -> bool:
        """Whether the task has data, a collator and an evaluation here (not pre-training)."""
        return self.evaluate is not None

    def collator(self, processor, labels: Sequence[str] | None = None, max_length: int = 40, model=None):
        """The training collator of ``model``'s head (without ``model``: of the task's first head)."""
        head = task_head(model) if model is not None else self.heads[0]
        if head not in self.heads:
            raise ValueError(f"A {type(unwrap_lora(model)).__name__} is not a head of the {self.name!r} task.")
        if head.make_collator is not None:
            return head.make_collator(processor, labels, max_length, unwrap_lora(model).config if model else None)
        return self.make_collator(processor, labels, max_length)

    def checkpoint_head(self, checkpoint: str | os.PathLike | EfficientVLMConfig) -> TaskHead | None:
        """The head of this task a checkpoint (or its config) was saved from: the class its config's
        ``architectures`` names or, without them, a head with its own config class (generative VQA); None for any
        other checkpoint (a base, pre-training or other task's one)."""
        config = checkpoint if isinstance(checkpoint, EfficientVLMConfig) else AutoConfig.from_pretrained(checkpoint)
        saved_as = set(getattr(config, "architectures", None) or ())
        for head in self.heads:
            if head.model_class.__name__ in saved_as:
                return head
        if saved_as:
            return None
        return next((head for head in self.heads if head.model_class.config_class is not EfficientVLMConfig
                     and isinstance(config, head.model_class.config_class)), None)

    def head(self, name: str | None = None, checkpoint: str | os.PathLike | None = None, *, trained: bool = False,
             option: str = "head") -> TaskHead:
        """The head called ``name``; without a name, the head ``checkpoint`` was saved with (a generative VQA
        checkpoint keeps its answer decoder), else the task's first head.

        Args:
            trained: the checkpoint must already have this head (a teacher: distilling from a head built now would
                distil a random one); otherwise a head that builds itself around any model's encoders (``adapt``:
                generative VQA) may start from a checkpoint of another head.
            option: what the messages call the head's name (the example scripts: ``"--vqa_head"``).

        Raises:
            ValueError: a name this task has no head of, or a checkpoint the asked head cannot be built from (one
                line naming both and the fix).
        """
        named = {head.name: head for head in self.heads if head.name}
        if name is not None and name not in named:
            if named:
                raise ValueError(f"{option} {name!r}: the {self.name} task has no such head; choose one of "
                                 f"{', '.join(named)}.")
            owners = [task.name for task in TASKS.values() if any(head.name == name for head in task.heads)]
            where = f" ({name!r} is a head of the {' and '.join(owners)} task)" if owners else ""
            raise ValueError(f"{option} {name}: the {self.name} task has one head ({self.model_class.__name__})"
                             f"{where}; leave {option} out.")
        saved = self.checkpoint_head(checkpoint) if checkpoint is not None else None
        if name is None:
            return saved or self.heads[0]
        head = named[name]
        if saved is not None and saved is not head and trained:
            raise ValueError(f"{option} {name}: {checkpoint} is an {saved.model_class.__name__} ({saved.name}) "
                             f"checkpoint, not a trained {head.model_class.__name__}; give a teacher fine-tuned with "
                             f"{option} {name}, or leave {option} out to use its head.")
        if saved is not None and saved is not head and head.adapt is None:
            raise ValueError(f"{option} {name}: {checkpoint} is an {saved.model_class.__name__} ({saved.name}) "
                             f"checkpoint and an {head.model_class.__name__} is not built from one (its "
                             f"{saved.name} head would be dropped); leave {option} out to keep that head, or start "
                             "from a checkpoint without it.")
        if saved is None and trained and head.adapt is not None:
            raise ValueError(f"{option} {name}: {checkpoint} has no trained {head.model_class.__name__} head to "
                             f"distil from; fine-tune one first (examples/finetune.py {option} {name}) and give "
                             "that checkpoint.")
        return head


def _vqa_collator(processor, labels, max_length):
    if not labels:
        raise ValueError("The VQA collator needs the answer vocabulary (labels).")
    return evlm_data.VQACollator(processor, {answer: i for i, answer in enumerate(labels)}, max_length=max_length)


def _generative_vqa_collator(processor, labels, max_length, config):
    """Question + image with the weighted annotated answers (the answer list is not needed: every answer is
    trained); answers as long as the model's ``max_answer_length``."""
    answer_length = {"max_answer_length": config.max_answer_length} if config is not None else {}
    return evlm_data.GenerativeVQACollator(processor, max_length=max_length, **answer_length)


def _generative_vqa(model, labels, tokenizer):
    """``model`` as an ``EfficientVLMForGenerativeVQA`` ranking ``labels``.

    A generative model is kept (``labels`` become its answer list when they differ). Any other EfficientVLM model
    gives its encoders to a new one whose answer decoder is shaped like, and initialised from, its fusion layers (the
    official initialisation, as the demo does); a pre-training model also gives its MLM head as the decoder's LM
    head."""
    if isinstance(model, EfficientVLMForGenerativeVQA):
        if labels is not None and list(labels) != model.config.answer_list:
            model.set_answer_list(labels, tokenizer)
        return model
    if not labels or tokenizer is None:
        raise ValueError("A generative VQA model built from the encoders of another model needs its answer list "
                         "(labels) and the tokenizer to tokenise it.")
    generative = EfficientVLMForGenerativeVQA(EfficientVLMGenerativeVQAConfig.from_encoder_config(model.config))
    generative.efficientvlm.load_state_dict(model.base_model.state_dict())
    if isinstance(model, EfficientVLMForPreTraining):
        generative.lm_head.load_state_dict(model.lm_head.state_dict())
    generative.init_decoder_from_fusion()
    generative.set_answer_list(labels, tokenizer)
    return generative


def _load_checkpoint(checkpoint):
    """Any EfficientVLM checkpoint as the model class it was saved from (its config's ``architectures``: a task
    head of the registry), else as the base model."""
    saved_as = set(AutoConfig.from_pretrained(checkpoint).architectures or ())
    classes = [head.model_class for task in TASKS.values() for head in task.heads]
    model_class = next((c for c in classes if c.__name__ in saved_as), EfficientVLMModel)
    return model_class.from_pretrained(checkpoint)


def _pretraining_collator(processor, labels, max_length):
    from .distillation.data import ImageTextPretrainingCollator  # imported here: distillation imports this module

    return ImageTextPretrainingCollator(processor, max_length=max_length)


def _plain(collator_class):
    return lambda processor, labels, max_length: collator_class(processor, max_length=max_length)


def _captions(one_row_per_caption: bool):
    def make(n, split, config):
        return evlm_data.make_caption_dataset(n, split_seed=split, config=config,
                                              one_row_per_caption=one_row_per_caption)
    return make


def _shapes(maker):
    return lambda n, split, config: maker(n, split_seed=split, config=config)


def _weights(task: float, logits: float, hidden: float, attention: float, vision: tuple[float, float],
             text: tuple[float, float], fusion: tuple[float, float, float],
             decoder: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> Mapping[str, float]:
    """Loss weights: ``(hidden, attention)`` factors of vision and text, ``(hidden, attention, cross_attention)``
    of fusion and decoder."""
    return MappingProxyType({
        "task": task, "logits": logits, "hidden": hidden, "attention": attention,
        "vision_hidden": vision[0], "vision_attention": vision[1], "text_hidden": text[0], "text_attention": text[1],
        "fusion_hidden": fusion[0], "fusion_attention": fusion[1], "fusion_cross_attention": fusion[2],
        "decoder_hidden": decoder[0], "decoder_attention": decoder[1], "decoder_cross_attention": decoder[2],
    })


# KD streams: every head distils the vision and text passes and its fusion pass (whose rows differ per head)
_VISION = KDStream("vision", "vision_model_output", "vision", "image")
_TEXT = KDStream("text", "text_model_output", "text", "text")


def _fusion(rows: str) -> KDStream:
    return KDStream("fusion", "fusion_model_output", "fusion", rows)


def _logits(multilabel: bool = False, rows: str = "all", name: str = "kd_logits", output: str = "logits"
            ) -> KDLogits:
    return KDLogits(name, output, multilabel, rows)


# Default loss weights, from the official code (the paper's Sec. 3 table; its code calls them "totally heuristic"):
#
# * pretraining: 0.6 L_small + 0.4 [KL_itm + KL_mlm + text(A+H) + img(A + 0.1H) + fusion(A+H) of the ITM positives
#   and negatives + text/fusion(A+H) of the MLM pass]; cross-attention is not distilled.
# * vqa: 0.6 L_ans + 0.4 [KL + text(A+H) + img(A + 0.2H) + 0.5 (fusion H + self-A + cross-A)
#   + dec(self-A + H + cross-A)]. With the generative head (EfficientVLMForGenerativeVQA, the paper's) KL is on the
#   answer decoder's token distributions and dec its per-layer terms; with the classifier head KL is on the
#   classifier's logits and the decoder terms have no counterpart.
# * retrieval: 0.5 {L_itc + L_itm + KL_itm + 0.33 [text + img(A + 0.2H) + 0.5 fusion(H, A, cross-A)]}.
# * nlvr2: 0.8 L_ce + 0.2 {KL + text + 0.33 [img(A + 0.1H) + 0.5 fusion(H, A, cross-A)]}.
# * captioning: 0.7 L_lm + 0.3 [KL + img(A + 0.1H) + dec(A + H + cross-A)]; the decoder is our text + fusion stack
#   run causally, so "dec" is text(A+H) + fusion(A+H+cross-A).
TASKS: dict[str, Task] = {
    "pretraining": Task(
        "pretraining",
        heads=(TaskHead(EfficientVLMForPreTraining,
                        (_VISION, _TEXT, _fusion("itm_pairs"),  # the ITM pass, then the MLM pass
                         KDStream("mlm_text", "mlm_text_model_output", "text", "text"),
                         KDStream("mlm_fusion", "mlm_fusion_model_output", "fusion", "text")),
                        (_logits(name="kd_logits_itm"),
                         _logits(rows="masked_tokens", name="kd_logits_mlm", output="mlm_logits"))),),
        kd_weights=_weights(0.6, 0.4, 0.4, 0.4, vision=(0.1, 1.0), text=(1.0, 1.0), fusion=(1.0, 1.0, 0.0)),
        make_collator=_pretraining_collator),
    "vqa": Task(
        "vqa",
        heads=(TaskHead(EfficientVLMForVisualQuestionAnswering, (_VISION, _TEXT, _fusion("text")),
                        (_logits(multilabel=True),), name="classifier"),
               TaskHead(EfficientVLMForGenerativeVQA,
                        (_VISION, _TEXT, _fusion("text"),
                         KDStream("decoder", "decoder_model_output", "decoder", "answers")),
                        (_logits(rows="answers", output="answer_logits"),), name="generative",
                        make_collator=_generative_vqa_collator, adapt=_generative_vqa)),
        kd_weights=_weights(0.6, 0.4, 0.4, 0.4, vision=(0.2, 1.0), text=(1.0, 1.0), fusion=(0.5, 0.5, 0.5),
                            decoder=(1.0, 1.0, 1.0)),
        make_collator=_vqa_collator, main_metric="vqa_accuracy", evaluate=evaluation.evaluate_vqa,
        shapes_train=_shapes(evlm_data.make_vqa_dataset), shapes_eval=_shapes(evlm_data.make_vqa_dataset),
        load_train=evlm_data.load_xvlm_vqa, load_eval=evlm_data.load_xvlm_vqa),
    "nlvr2": Task(
        "nlvr2",
        heads=(TaskHead(EfficientVLMForNLVR2, (_VISION, _TEXT, _fusion("image_pairs")), (_logits(),)),),
        kd_weights=_weights(0.8, 0.2, 0.2, 0.2, vision=(0.033, 0.33), text=(1.0, 1.0), fusion=(0.165, 0.165, 0.165)),
        make_collator=_plain(evlm_data.NLVR2Collator), main_metric="nlvr2_accuracy", evaluate=evaluation.evaluate_nlvr2,
        shapes_train=_shapes(evlm_data.make_nlvr2_dataset), shapes_eval=_shapes(evlm_data.make_nlvr2_dataset),
        load_train=evlm_data.load_xvlm_nlvr2, load_eval=evlm_data.load_xvlm_nlvr2),
    "retrieval": Task(
        "retrieval",
        heads=(TaskHead(EfficientVLMForImageTextRetrieval, (_VISION, _TEXT, _fusion("itm_pairs")), (_logits(),)),),
        kd_weights=_weights(0.5, 0.5, 0.165, 0.165, vision=(0.2, 1.0), text=(1.0, 1.0), fusion=(0.5, 0.5, 0.5)),
        make_collator=_plain(evlm_data.RetrievalCollator), main_metric="r_mean",
        evaluate=evaluation.evaluate_retrieval, shapes_train=_captions(True), shapes_eval=_captions(False),
        load_train=evlm_data.load_xvlm_caption_pairs, load_eval=evlm_data.load_xvlm_caption_groups),
    "captioning": Task(
        "captioning",
        heads=(TaskHead(EfficientVLMForCaptioning, (_VISION, _TEXT, _fusion("text")), (_logits(rows="text"),)),),
        kd_weights=_weights(0.7, 0.3, 0.3, 0.3, vision=(0.1, 1.0), text=(1.0, 1.0), fusion=(1.0, 1.0, 1.0)),
        make_collator=_plain(evlm_data.CaptioningCollator), main_metric="cider",
        evaluate=evaluation.evaluate_captioning, shapes_train=_captions(True), shapes_eval=_captions(False),
        load_train=evlm_data.load_xvlm_caption_pairs, load_eval=evlm_data.load_xvlm_caption_groups),
}

#: The tasks with data, a collator and an evaluation here: what ``examples/finetune.py`` and ``prune.py`` take.
DOWNSTREAM_TASKS: tuple[str, ...] = tuple(name for name, task in TASKS.items() if task.downstream)


def task_head(model: nn.Module) -> TaskHead:
    """The registry entry of an EfficientVLM head (also inside a PEFT wrapper: a LoRA student or teacher)."""
    model = unwrap_lora(model)
    for task in TASKS.values():
        for head in task.heads:
            if isinstance(model, head.model_class):
                return head
    names = ", ".join(head.model_class.__name__ for task in TASKS.values() for head in task.heads)
    raise ValueError(f"A {type(model).__name__} is not a task head (efficientvlm.tasks.TASKS), so it cannot be "
                     f"distilled or pruned: use one of {names}.")


def task_of(model: nn.Module) -> str:
    """The task (``"pretraining"``, ``"vqa"``, ...) of an EfficientVLM head, also inside a PEFT wrapper."""
    head = task_head(model)
    return next(task.name for task in TASKS.values() if head in task.heads)


@dataclass
class TaskData:
    """Training and evaluation data of a task; ``labels`` is the VQA answer list, ``tokenizer`` is set for shapes."""

    train: Any
    eval: Any | None
    labels: list[str] | None = None
    tokenizer: Any | None = None


def load_task_data(task: str, dataset: str = "shapes", *, train_files: Sequence[str] | None = None,
                   eval_files: Sequence[str] | None = None, image_root: str | None = None,
                   answer_list: str | None = None, num_answers: int = 3129, shapes_train_size: int = 4000,
                   shapes_eval_size: int = 500, shapes_config: evlm_data.ShapesConfig | None = None,
                   tokenizer_dir: str | Path | None = None) -> TaskData:
    """Load a task's data from the synthetic shapes benchmark (``dataset="shapes"``, offline, with a tokenizer
    written to ``tokenizer_dir``) or from annotation files in the official X-VLM format (``dataset="files"``)."""
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; choose one of {sorted(DOWNSTREAM_TASKS)}.")
    spec = TASKS[task]
    if not spec.downstream:
        raise ValueError(f"{task!r} has no task data here: pre-training reads image-text pairs "
                         "(efficientvlm.distillation.load_image_text_pairs, examples/pretrain_distill.py); choose one "
                         f"of {sorted(DOWNSTREAM_TASKS)}.")
    if dataset == "shapes":
        shapes = shapes_config or evlm_data.ShapesConfig()
        tokenizer = evlm_data.build_tokenizer(tokenizer_dir, shapes) if tokenizer_dir is not None else None
        return TaskData(train=spec.shapes_train(shapes_train_size, "train", shapes),
                        eval=spec.shapes_eval(shapes_eval_size, "validation", shapes),
                        labels=evlm_data.answer_vocabulary(shapes) if task == "vqa" else None, tokenizer=tokenizer)
    if dataset != "files":
        raise ValueError(f"dataset must be 'shapes' or 'files', got {dataset!r}.")
    if not train_files or not image_root:
        raise ValueError("dataset='files' needs train_files and image_root (or use dataset='shapes').")
    train = spec.load_train(list(train_files), image_root)
    evaluation_set = spec.load_eval(list(eval_files), image_root) if eval_files else None
    labels = None
    if task == "vqa":
        if answer_list:
            labels = json.loads(Path(answer_list).read_text())
        else:
            every_answer = [a for answers in train.with_format(None)["answers"] for a in answers]
            labels = evlm_data.build_answer_vocabulary(every_answer, size=num_answers)
    return TaskData(train=train, eval=evaluation_set, labels=labels)


@dataclass
class TaskDataArguments:
    """Command-line arguments (``HfArgumentParser``) that choose a task's data; ``load(task, ...)`` reads it.

    (The task itself is not a field here: ``DistillationConfig`` / ``PruningConfig`` already have ``--task``.)
    """

    dataset: str = field(default="files", metadata={"help": "'shapes' (the synthetic benchmark, offline) or 'files' "
                                                            "(annotation JSON in the official X-VLM format)"})
    train_file: list[str] | None = field(default=None, metadata={"help": "X-VLM-format annotation JSON file(s)"})
    eval_file: list[str] | None = field(default=None, metadata={"help": "X-VLM-format annotation JSON file(s)"})
    image_root: str | None = field(default=None, metadata={"help": "folder the annotations' image paths start in"})
    answer_list: str | None = field(
        default=None, metadata={"help": "VQA: JSON list of answers (the answer vocabulary); default: the most "
                                        "frequent training answers"})
    num_answers: int = field(default=3129, metadata={"help": "VQA: answer vocabulary size when it is built"})
    shapes_train_size: int = field(default=4000, metadata={"help": "shapes: training examples"})
    shapes_eval_size: int = field(default=500, metadata={"help": "shapes: evaluation examples"})
    shapes_image_size: int = field(default=64, metadata={"help": "shapes: image side in pixels"})
    max_length: int = field(default=40, metadata={"help": "maximum text length in tokens"})

    def load(self, task: str, output_dir: str | Path) -> TaskData:
        """The task's data; for shapes the tokenizer's vocabulary is written to ``output_dir/shapes_vocab``.

        Raises:
            ValueError: ``--dataset files`` without ``--train_file`` or ``--image_root`` (named as flags).
        """
        if self.dataset == "files" and (not self.train_file or not self.image_root):
            missing = " and ".join(flag for flag, value in (("--train_file", self.train_file),
                                                           ("--image_root", self.image_root)) if not value)
            raise ValueError(f"--dataset files needs {missing} (annotation JSON files in the official X-VLM format and "
                             "the folder their image paths start in); or use --dataset shapes (offline, synthetic).")
        return load_task_data(
            task, self.dataset, train_files=self.train_file, eval_files=self.eval_file,
            image_root=self.image_root, answer_list=self.answer_list, num_answers=self.num_answers,
            shapes_train_size=self.shapes_train_size, shapes_eval_size=self.shapes_eval_size,
            shapes_config=evlm_data.ShapesConfig(image_size=self.shapes_image_size),
            tokenizer_dir=Path(output_dir) / "shapes_vocab" if self.dataset == "shapes" else None,
        )


#: The heads that have a name (the choices of ``--vqa_head``): ``"classifier"`` and ``"generative"``.
HEAD_NAMES: tuple[str, ...] = tuple(dict.fromkeys(head.name for task in TASKS.values() for head in task.heads
                                                  if head.name))


@dataclass
class TaskHeadArguments:
    """The command-line choice of a task's head (``HfArgumentParser``); ``head(task, checkpoint)`` resolves it."""

    vqa_head: str | None = field(
        default=None, metadata={"help": "VQA head: 'classifier' (scores over the answer vocabulary) or 'generative' "
                                        "(the paper's answer decoder, ranking the answer list); default: the head of "
                                        "the given checkpoint (teacher), else the classifier",
                                "choices": HEAD_NAMES})

    def head(self, task: str, checkpoint: str | os.PathLike | None = None, trained: bool = False) -> TaskHead:
        """``TASKS[task].head(self.vqa_head, checkpoint, trained=trained)``, its messages naming ``--vqa_head``."""
        return TASKS[task].head(self.vqa_head, checkpoint, trained=trained, option="--vqa_head")


def small_config(tokenizer, layers: tuple[int, int, int], hidden_size: int = 128, head_dim: int = 32,
                 image_size: int = 64, patch_size: int = 8, labels: Sequence[str] | None = None,
                 max_text_length: int = 40) -> EfficientVLMConfig:
    """A scaled-down EfficientVLM config for training from scratch on a small vocabulary (e.g. the shapes one).

    Every encoder has width ``hidden_size`` with ``hidden_size // head_dim`` heads and FFNs of 4x the width;
    ``layers`` is (vision, text, fusion); the text config takes the vocabulary size and special tokens of
    ``tokenizer``; ``labels`` (VQA answers) become ``id2label``.
    """
    heads = max(1, hidden_size // head_dim)
    common = {"hidden_size": hidden_size, "num_attention_heads": heads, "head_dim": head_dim,
              "intermediate_size": 4 * hidden_size}
    vision_layers, text_layers, fusion_layers = layers
    return EfficientVLMConfig(
        vision_config={**common, "num_hidden_layers": vision_layers, "image_size": image_size,
                       "patch_size": patch_size},
        text_config={**common, "num_hidden_layers": text_layers, "vocab_size": len(tokenizer),
                     "max_position_embeddings": max_text_length, "pad_token_id": tokenizer.pad_token_id,
                     "bos_token_id": tokenizer.cls_token_id, "eos_token_id": tokenizer.sep_token_id,
                     "mask_token_id": tokenizer.mask_token_id},
        fusion_config={**common, "num_hidden_layers": fusion_layers, "num_cross_attention_heads": heads},
        projection_dim=min(256, hidden_size),
        **({"id2label": dict(enumerate(labels))} if labels is not None else {}),
    )
