"""The four downstream tasks as a registry: head class, collator, evaluation, and where the data comes from.

Example scripts, the demo and user code look tasks up here instead of branching on the task name::

    task = TASKS["vqa"]
    data = load_task_data("vqa", dataset="shapes")           # or dataset="files", train_files=[...], image_root=...
    collator = task.collator(processor, data.labels)
    metrics = task.evaluate(model, processor, data.eval)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import data as evlm_data
from . import evaluation
from .models.configuration_efficientvlm import EfficientVLMConfig
from .models.modeling_efficientvlm import (
    EfficientVLMForCaptioning,
    EfficientVLMForImageTextRetrieval,
    EfficientVLMForNLVR2,
    EfficientVLMForVisualQuestionAnswering,
)

__all__ = ["Task", "TASKS", "TaskData", "TaskDataArguments", "load_task_data", "small_config"]


@dataclass(frozen=True)
class Task:
    """One downstream task.

    Attributes:
        name: registry key.
        model_class: the EfficientVLM head.
        main_metric: the key of ``evaluate``'s result that model cards and the demo report.
        make_collator: ``(processor, labels, max_length) -> collator`` (labels: the VQA answer list, else ignored).
        evaluate: ``(model, processor, dataset) -> metrics``.
        shapes_train / shapes_eval: ``(n, split, shapes_config) -> Dataset`` of the synthetic benchmark.
        load_train / load_eval: ``(annotation files, image_root) -> Dataset`` of the official X-VLM JSON format.
    """

    name: str
    model_class: type
    main_metric: str
    make_collator: Callable[..., Any]
    evaluate: Callable[..., dict]
    shapes_train: Callable[..., Any]
    shapes_eval: Callable[..., Any]
    load_train: Callable[..., Any]
    load_eval: Callable[..., Any]

    def collator(self, processor, labels: Sequence[str] | None = None, max_length: int = 40):
        return self.make_collator(processor, labels, max_length)


def _vqa_collator(processor, labels, max_length):
    if not labels:
        raise ValueError("The VQA collator needs the answer vocabulary (labels).")
    return evlm_data.VQACollator(processor, {answer: i for i, answer in enumerate(labels)}, max_length=max_length)


def _plain(collator_class):
    return lambda processor, labels, max_length: collator_class(processor, max_length=max_length)


def _captions(one_row_per_caption: bool):
    def make(n, split, config):
        return evlm_data.make_caption_dataset(n, split_seed=split, config=config,
                                              one_row_per_caption=one_row_per_caption)
    return make


def _shapes(maker):
    return lambda n, split, config: maker(n, split_seed=split, config=config)


TASKS: dict[str, Task] = {
    "vqa": Task("vqa", EfficientVLMForVisualQuestionAnswering, "vqa_accuracy", _vqa_collator,
                evaluation.evaluate_vqa, _shapes(evlm_data.make_vqa_dataset), _shapes(evlm_data.make_vqa_dataset),
                evlm_data.load_xvlm_vqa, evlm_data.load_xvlm_vqa),
    "nlvr2": Task("nlvr2", EfficientVLMForNLVR2, "nlvr2_accuracy", _plain(evlm_data.NLVR2Collator),
                  evaluation.evaluate_nlvr2, _shapes(evlm_data.make_nlvr2_dataset),
                  _shapes(evlm_data.make_nlvr2_dataset), evlm_data.load_xvlm_nlvr2, evlm_data.load_xvlm_nlvr2),
    "retrieval": Task("retrieval", EfficientVLMForImageTextRetrieval, "r_mean", _plain(evlm_data.RetrievalCollator),
                      evaluation.evaluate_retrieval, _captions(True), _captions(False),
                      evlm_data.load_xvlm_caption_pairs, evlm_data.load_xvlm_caption_groups),
    "captioning": Task("captioning", EfficientVLMForCaptioning, "cider", _plain(evlm_data.CaptioningCollator),
                       evaluation.evaluate_captioning, _captions(True), _captions(False),
                       evlm_data.load_xvlm_caption_pairs, evlm_data.load_xvlm_caption_groups),
}


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
        raise ValueError(f"Unknown task {task!r}; choose one of {sorted(TASKS)}.")
    spec = TASKS[task]
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
