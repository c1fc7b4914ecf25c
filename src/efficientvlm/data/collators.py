"""Batch collators: run a processor on raw rows and build the labels each task head expects.

A *processor* is any callable with the signature of ``EfficientVLMProcessor.__call__``::

    processor(images=..., text=..., padding=..., truncation=..., max_length=..., return_tensors="pt")

returning a mapping with ``input_ids``, ``attention_mask`` and ``pixel_values`` (for NLVR2, ``images`` is a
list of ``(left, right)`` pairs and ``pixel_values`` has shape ``(B, 2, 3, H, W)``). The collators take rows as
produced by :mod:`efficientvlm.data.shapes` and :mod:`efficientvlm.data.loaders` (PIL images, raw text) and
are meant for ``Trainer(data_collator=..., args=TrainingArguments(remove_unused_columns=False, ...))``.

Labels:

* :class:`VQACollator` -> ``labels``: float ``(B, num_labels)`` VQA soft scores (see
  :func:`efficientvlm.metrics.answer_soft_scores`); answers outside ``label2id`` are dropped; with
  ``group_images=True`` also ``image_index``: long ``(B,)``, each question's row of ``pixel_values``, which holds
  every distinct image of the batch once;
* :class:`GenerativeVQACollator` -> ``answer_input_ids`` / ``answer_attention_mask``: long ``(B, A, L)``, each
  question's distinct (normalised) answers as ``[CLS] answer [SEP]``, and ``answer_weights``: float ``(B, A)``, their
  weights (the official code's answer frequencies, or VQA soft scores); from the same ``answers`` as the classifier;
* :class:`NLVR2Collator` -> ``labels``: long ``(B,)``, 1 = true;
* :class:`CaptioningCollator` -> ``labels``: ``input_ids`` with padding and prompt positions set to -100 (every
  caption starts with the paper's prompt ``"a picture of "`` by default); the model shifts them internally;
* :class:`RetrievalCollator` -> ``image_ids``: long ``(B,)``; captions of the same image share an id and
  count as positives for the contrastive / matching losses, also across the batches of different processes (the
  model compares ids over the batch gathered from every process).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..metrics.nlvr2 import to_binary_label
from ..metrics.vqa import answer_soft_scores, normalize_answer
from ..models.processing_efficientvlm import DEFAULT_CAPTION_PROMPT

__all__ = ["VQACollator", "GenerativeVQACollator", "NLVR2Collator", "CaptioningCollator", "RetrievalCollator",
           "answer_weights", "vqa_soft_labels"]


def vqa_soft_labels(
    answers_per_example: Sequence[Sequence[str]], label2id: Mapping[str, int], rule: str = "official"
) -> torch.Tensor:
    """``(B, len(label2id))`` float tensor of soft scores of the (normalised) annotator answers.

    ``label2id`` keys must be normalised answers (as returned by ``build_answer_vocabulary`` or the shapes
    ``answer_vocabulary``). Rows with no answer in the vocabulary stay all-zero.
    """
    num_labels = max(label2id.values()) + 1 if label2id else 0
    labels = torch.zeros(len(answers_per_example), num_labels, dtype=torch.float32)
    for i, answers in enumerate(answers_per_example):
        if not answers:
            continue
        for answer, score in answer_soft_scores(answers, rule=rule).items():
            index = label2id.get(answer)
            if index is not None:
                labels[i, index] = score
    return labels


class _ProcessorCollator:
    """Shared processor call."""

    def __init__(self, processor: Any, max_length: int = 40, padding: bool | str = "longest", truncation: bool = True):
        self.processor = processor
        self.max_length = max_length
        self.padding = padding
        self.truncation = truncation

    def _process(self, images: list, texts: list[str]):
        return self.processor(
            images=images,
            text=texts,
            padding=self.padding,
            truncation=self.truncation,
            max_length=self.max_length,
            return_tensors="pt",
        )


class VQACollator(_ProcessorCollator):
    """Question + image batches with VQA soft-score ``labels``.

    Args:
        processor: see the module docstring.
        label2id: normalised answer -> class index.
        score_rule: ``"official"`` (default: 0.3/0.6/0.9/1 for 1/2/3/4+ of 10 annotators, the score the VQA
            metric would give) or ``"min3"`` (``min(1, count / 3)``).
        image_column, question_column, answers_column: row keys. Rows whose ``answers`` are missing or empty
            (test questions) get no labels; if no row has answers, ``labels`` is omitted.
        group_images: put each distinct image of the batch (rows with the same ``image_id_column`` value) once in
            ``pixel_values`` and add ``image_index`` (long ``(B,)``: each question's row of ``pixel_values``), so that
            the model encodes each image once for all its questions (``EfficientVLMForVisualQuestionAnswering``
            takes ``image_index``). Rows sharing an id must show the same image (``make_vqa_dataset(...,
            questions_per_image=k)`` writes such rows). The library's trainers then keep an image's questions
            together in the training order (:class:`~efficientvlm.data.ImageGroupedSampler`); with a plain
            ``Trainer`` use :class:`~efficientvlm.data.ImageGroupedTrainer`, else rows are shuffled apart and
            little is shared.
        image_id_column: the row key naming a row's image, with ``group_images``.
    """

    def __init__(
        self,
        processor: Any,
        label2id: Mapping[str, int],
        max_length: int = 40,
        padding: bool | str = "longest",
        score_rule: str = "official",
        image_column: str = "image",
        question_column: str = "question",
        answers_column: str = "answers",
        group_images: bool = False,
        image_id_column: str = "image_id",
    ):
        super().__init__(processor, max_length, padding)
        self.label2id = dict(label2id)
        self.score_rule = score_rule
        self.image_column = image_column
        self.question_column = question_column
        self.answers_column = answers_column
        self.group_images = group_images
        self.image_id_column = image_id_column

    def __call__(self, features: list[dict[str, Any]]):
        questions = [f[self.question_column] for f in features]
        if self.group_images:
            batch = self._process_grouped(features, questions)
        else:
            batch = self._process([f[self.image_column] for f in features], questions)
        answers = [f.get(self.answers_column) or [] for f in features]
        if any(answers):
            batch["labels"] = vqa_soft_labels(answers, self.label2id, self.score_rule)
        return batch


    def _process_grouped(self, features: list[dict[str, Any]], questions: list[str]):
        """Tokenise every question, preprocess each distinct image once; ``image_index`` links them."""
        missing = [i for i, f in enumerate(features) if f.get(self.image_id_column) is None]
        if missing:
            raise ValueError(
                f"VQACollator(group_images=True) groups rows by {self.image_id_column!r}, but row {missing[0]} of the "
                f"batch has none ({len(missing)} of {len(features)} rows lack it). Add the column (make_vqa_dataset "
                "writes image_id), name another one with image_id_column=..., or set group_images=False."
            )
        rows: dict[Any, int] = {}  # image id -> row of pixel_values, in order of first appearance
        images, image_index = [], []
        for f in features:
            key = f[self.image_id_column]
            if key not in rows:
                rows[key] = len(images)
                images.append(f[self.image_column])
            image_index.append(rows[key])
        batch = self.processor(text=questions, padding=self.padding, truncation=self.truncation,
                               max_length=self.max_length, return_tensors="pt")
        batch["pixel_values"] = self.processor(images=images, return_tensors="pt")["pixel_values"]
        batch["image_index"] = torch.tensor(image_index, dtype=torch.long)
        return batch


def answer_weights(answers: Sequence[str], rule: str = "frequency") -> dict[str, float]:
    """``{normalised answer: weight}`` of one question's annotator answers, for generative VQA training.

    ``rule``: ``"frequency"`` (the official EfficientVLM / X-VLM code: each distinct answer's share of the answers,
    so a question's weights sum to 1), or a VQA soft-score rule of :func:`efficientvlm.metrics.answer_soft_scores`
    (``"official"``: 0.3 / 0.6 / 0.9 / 1 for 1 / 2 / 3 / 4+ of 10 annotators; ``"min3"``).
    """
    if rule == "frequency":
        normalised = [normalize_answer(a) for a in answers]
        return {answer: count / len(normalised) for answer, count in Counter(normalised).items()}
    return answer_soft_scores(answers, rule=rule)


class GenerativeVQACollator(_ProcessorCollator):
    """Question + image batches with the weighted answers ``EfficientVLMForGenerativeVQA`` is trained on.

    The answers come from the rows' ``answers`` (the annotators' answers, as for :class:`VQACollator`); each question
    gets its distinct normalised answers with weights (:func:`answer_weights`), tokenised as ``[CLS] answer [SEP]``
    (at most ``max_answer_length`` tokens) and padded to ``(batch, most answers, longest answer)``; padding answers
    have an all-zero mask and weight 0. Unlike the classifier's labels, answers outside any answer list are kept:
    the decoder learns to generate them.

    Args:
        processor: see the module docstring; its ``tokenizer`` tokenises the answers.
        max_answer_length: most tokens of an answer sequence (``config.max_answer_length``).
        weight_rule: ``"frequency"`` (default: the official code's), ``"official"`` or ``"min3"`` (VQA scores).
        image_column, question_column, answers_column: row keys. Rows without answers get none (weights 0); if no
            row has answers, the answer tensors are omitted (inference batches).
    """

    def __init__(
        self,
        processor: Any,
        max_length: int = 40,
        padding: bool | str = "longest",
        max_answer_length: int = 10,
        weight_rule: str = "frequency",
        image_column: str = "image",
        question_column: str = "question",
        answers_column: str = "answers",
    ):
        super().__init__(processor, max_length, padding)
        if weight_rule not in ("frequency", "official", "min3"):
            raise ValueError(f"weight_rule must be 'frequency', 'official' or 'min3', got {weight_rule!r}.")
        self.max_answer_length = max_answer_length
        self.weight_rule = weight_rule
        self.image_column = image_column
        self.question_column = question_column
        self.answers_column = answers_column

    def __call__(self, features: list[dict[str, Any]]):
        batch = self._process([f[self.image_column] for f in features], [f[self.question_column] for f in features])
        weighted = [answer_weights(f.get(self.answers_column) or [], self.weight_rule) if f.get(self.answers_column)
                    else {} for f in features]
        texts = [answer for answers in weighted for answer in answers]
        if not texts:
            return batch
        tokens = self.processor.tokenizer(texts, padding="longest", truncation=True,
                                          max_length=self.max_answer_length, return_tensors="pt")
        most = max(len(answers) for answers in weighted)
        length = tokens["input_ids"].shape[1]
        ids = torch.full((len(features), most, length), self.processor.tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros((len(features), most, length), dtype=torch.long)
        weights = torch.zeros((len(features), most), dtype=torch.float32)
        row = 0
        for i, answers in enumerate(weighted):
            for j, weight in enumerate(answers.values()):
                ids[i, j], mask[i, j], weights[i, j] = tokens["input_ids"][row], tokens["attention_mask"][row], weight
                row += 1
        batch["answer_input_ids"], batch["answer_attention_mask"], batch["answer_weights"] = ids, mask, weights
        return batch


class NLVR2Collator(_ProcessorCollator):
    """Image-pair + statement batches with long ``labels`` (1 = true); ``images`` go in as ``(left, right)`` pairs."""

    def __init__(
        self,
        processor: Any,
        max_length: int = 40,
        padding: bool | str = "longest",
        left_column: str = "image_left",
        right_column: str = "image_right",
        sentence_column: str = "sentence",
        label_column: str = "label",
    ):
        super().__init__(processor, max_length, padding)
        self.left_column = left_column
        self.right_column = right_column
        self.sentence_column = sentence_column
        self.label_column = label_column

    def __call__(self, features: list[dict[str, Any]]):
        pairs = [(f[self.left_column], f[self.right_column]) for f in features]
        batch = self._process(pairs, [f[self.sentence_column] for f in features])
        if all(self.label_column in f for f in features):
            batch["labels"] = torch.tensor([to_binary_label(f[self.label_column]) for f in features], dtype=torch.long)
        return batch


def _first_caption(value: str | Sequence[str]) -> str:
    return value if isinstance(value, str) else value[0]


class CaptioningCollator(_ProcessorCollator):
    """Image + caption batches for language-model training: ``labels`` = ``input_ids`` with ignored positions -100.

    Every caption is put after ``prompt``, and the loss skips ``[CLS]`` and the prompt's tokens, as the paper's code
    does; ``EfficientVLMProcessor.caption_inputs`` / ``decode_captions`` generate from and strip the same prompt.

    Args:
        prompt: text put in front of every caption; default: the paper's ``"a picture of "``; ``""`` for none.
        prompt_length: number of leading label positions to ignore; default (``None``): ``[CLS]`` + the prompt's
            tokens, counted with the processor's ``caption_prompt_ids`` (an ``EfficientVLMProcessor``; other
            processors need it given), and every batch is checked to start with them. 0 keeps every position.
        caption_column: row key; a list value uses its first caption.
    """

    def __init__(
        self,
        processor: Any,
        max_length: int = 40,
        padding: bool | str = "longest",
        prompt: str = DEFAULT_CAPTION_PROMPT,
        prompt_length: int | None = None,
        image_column: str = "image",
        caption_column: str = "caption",
    ):
        super().__init__(processor, max_length, padding)
        self.prompt = prompt
        self.prompt_length = prompt_length
        self.image_column = image_column
        self.caption_column = caption_column
        self._prompt_ids: list[int] | None = None

    def _prompt_positions(self) -> int:
        if self.prompt_length is not None:
            return self.prompt_length
        if not self.prompt:
            return 0
        if self._prompt_ids is None:
            prompt_ids = getattr(self.processor, "caption_prompt_ids", None)
            if prompt_ids is None:
                raise ValueError(
                    f"CaptioningCollator cannot count the tokens of prompt={self.prompt!r}: the processor has no "
                    "caption_prompt_ids (an EfficientVLMProcessor has). Pass prompt_length=1 + its token count, or "
                    "prompt='' for none."
                )
            self._prompt_ids = list(prompt_ids(self.prompt))
        return len(self._prompt_ids)

    def __call__(self, features: list[dict[str, Any]]):
        texts = [self.prompt + _first_caption(f[self.caption_column]) for f in features]
        batch = self._process([f[self.image_column] for f in features], texts)
        labels = batch["input_ids"].clone()
        labels[batch["attention_mask"] == 0] = -100
        prompt_length = self._prompt_positions()
        if self._prompt_ids is not None and self.prompt_length is None:
            head = batch["input_ids"][:, :prompt_length]
            if head.shape[1] != prompt_length or (head != torch.tensor(self._prompt_ids)).any():
                raise ValueError(
                    f"A caption does not start with the tokens of prompt={self.prompt!r} {self._prompt_ids}: end the "
                    "prompt with a space (or let max_length cover it), or pass prompt_length explicitly."
                )
        if prompt_length:
            labels[:, :prompt_length] = -100
        batch["labels"] = labels
        return batch


class RetrievalCollator(_ProcessorCollator):
    """Image + caption batches with ``image_ids`` (long ``(B,)``) marking which rows show the same image.

    ``image_ids`` come from ``image_id_column`` (default ``image_idx``, the dense id of the loaders, else
    ``image_id``): integer ids are used as they are; other ids (e.g. COCO strings) become a 63-bit hash of their
    text, the same in every batch and process, so that captions of one image are positives of each other wherever
    they land in the batch gathered from every process.
    """

    def __init__(
        self,
        processor: Any,
        max_length: int = 40,
        padding: bool | str = "longest",
        image_column: str = "image",
        caption_column: str = "caption",
        image_id_column: str | None = None,
    ):
        super().__init__(processor, max_length, padding)
        self.image_column = image_column
        self.caption_column = caption_column
        self.image_id_column = image_id_column

    def __call__(self, features: list[dict[str, Any]]):
        texts = [_first_caption(f[self.caption_column]) for f in features]
        batch = self._process([f[self.image_column] for f in features], texts)
        column = self.image_id_column or ("image_idx" if "image_idx" in features[0] else "image_id")
        ids = [f[column] for f in features]
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            ids = [_stable_id(i) for i in ids]
        batch["image_ids"] = torch.tensor(ids, dtype=torch.long)
        return batch


def _stable_id(value: Any) -> int:
    """A non-negative int64 naming ``value`` (by its ``str``) identically in every batch, process and run."""
    return int.from_bytes(hashlib.blake2b(str(value).encode(), digest_size=8).digest(), "big") >> 1
