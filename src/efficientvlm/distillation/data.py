"""Pre-training data for distillation: image-text pairs and a collator that tokenises, masks and batches them.

Pairs come from the official X-VLM JSON format (a list of ``{"image": path, "caption": str | list[str]}``) or from
a ``datasets`` imagefolder (images plus a ``metadata.jsonl`` with a caption column). Each caption becomes one
example; all captions of an image share its ``image_id``, which the model uses to treat them as positives of each
other in the contrastive loss and never as hard negatives. These loaders hold the annotation list in memory; at the
paper's scale, stream the pairs from tar shards or a ``datasets`` stream with ``efficientvlm.data.ImageTextStream``,
which yields the same examples (with decoded images) to the same collator.

Masked language modelling follows the paper's code (X-VLM's text masking): per caption, ``round(p * n)`` of its
``n`` maskable tokens (at least 1, at most ``max_masks``) are chosen, with ``p = 0.25`` and ``max_masks = 8`` by
default; ``mlm_probability=0.15, max_masks=None`` approximates BERT's 15%. Chosen tokens become ``[MASK]`` 80% of
the time, a random token 10% and stay unchanged 10% (BERT). Unlike X-VLM there is no whole-word or skip-gram
masking. Masking happens here, so that the student and the teacher see the very same masks.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset, Image, load_dataset
from PIL import Image as PILImage


def load_image_text_pairs(path: str, image_root: str | None = None, caption_column: str = "caption") -> Dataset:
    """Image-text pairs as a ``Dataset`` with columns ``image``, ``caption`` (one string) and ``image_id``.

    Args:
        path: a JSON file in the X-VLM format, or a folder that ``load_dataset("imagefolder", data_dir=path)``
            reads (images + ``metadata.jsonl`` with a ``file_name`` and a caption column).
        image_root: folder that relative image paths of a JSON file are resolved against (default: the JSON
            file's folder).
        caption_column: the imagefolder's caption column: a string or a list of strings per image (the same type
            on every line of ``metadata.jsonl``, which Arrow requires).

    Images stay undecoded (paths, or ``{"path", "bytes"}`` dicts for an imagefolder) until the collator loads them.
    """
    if os.path.isdir(path):
        folder = load_dataset("imagefolder", data_dir=path, split="train").cast_column("image", Image(decode=False))
        if caption_column not in folder.column_names:
            raise ValueError(f"{path}/metadata.jsonl has no {caption_column!r} column (columns: "
                             f"{folder.column_names}); pass caption_column=...")
        records = [{"image": row["image"], "caption": row[caption_column]} for row in folder]
    else:
        with open(path, encoding="utf-8") as handle:
            records = json.load(handle)
        if not isinstance(records, list):
            raise ValueError(f"{path} must hold a JSON list of {{'image': path, 'caption': str | list[str]}}.")
        root = image_root if image_root is not None else os.path.dirname(os.path.abspath(path))
        for record in records:
            record["image"] = os.path.join(root, record["image"])
    columns: dict[str, list] = {"image": [], "caption": [], "image_id": []}
    for image_id, record in enumerate(records):
        captions = record["caption"]
        for caption in [captions] if isinstance(captions, str) else captions:
            columns["image"].append(record["image"])
            columns["caption"].append(caption)
            columns["image_id"].append(image_id)
    return Dataset.from_dict(columns)


def load_image(image: Any) -> PILImage.Image:
    """An RGB PIL image from a PIL image, a path, or a ``{"path", "bytes"}`` dict (an undecoded ``datasets`` image)."""
    if isinstance(image, dict):
        image = io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"]
    if not isinstance(image, PILImage.Image):
        image = PILImage.open(image)
    return image.convert("RGB")


def masked_positions(mlm_labels: torch.Tensor) -> torch.Tensor:
    """Per row, the positions whose label is not -100, in order, padded with 0 to the longest row.

    ``(batch, seq)`` labels give ``(batch, max masked tokens per row)`` indices. Position 0 holds ``[CLS]``, which is
    never masked, so padding slots are recognisable by their label (-100).
    """
    chosen = mlm_labels != -100
    counts = chosen.sum(dim=1)
    width = int(counts.max()) if counts.numel() else 0
    order = torch.argsort((~chosen).to(torch.int8), dim=1, stable=True)[:, :width]
    slots = torch.arange(width)[None, :]
    return torch.where(slots < counts[:, None], order, torch.zeros_like(order))


@dataclass
class ImageTextPretrainingCollator:
    """Turn examples ``{"image", "caption", "image_id"?, "bbox"?}`` into a pre-training batch.

    Output: ``pixel_values``, ``input_ids``, ``attention_mask`` (from the processor), ``mlm_input_ids``,
    ``mlm_labels`` (original ids at masked positions, -100 elsewhere), ``mlm_positions`` (see
    ``masked_positions``; ``DistillationTrainer`` distils the MLM logits there only, the model ignores it) and
    ``image_ids`` (the examples' ``image_id``, which must name images across the dataset, since the model compares
    them over the batch gathered from every process). When an example has no ``image_id`` the batch has no
    ``image_ids`` and every example counts as its own image. When the examples have a ``bbox`` key (a region text's
    box ``(cx, cy, w, h)`` as fractions of the image side, or ``None`` for a caption of the whole image):
    ``target_bbox`` ``(batch, 4)`` and ``bbox_mask`` (which rows have a box), also for a batch without any box, so
    that every process of a distributed run uses the box head at every step.

    Args:
        processor: an ``EfficientVLMProcessor`` (anything with the same call signature and a ``tokenizer``).
        max_length: longest caption in tokens, ``[CLS]`` and ``[SEP]`` included (the paper: 40).
        mlm_probability: share of a caption's maskable tokens to mask.
        max_masks: most masked tokens per caption (``None``: no cap).
        image_loader: turns an example's ``image`` into a PIL image.

    Masks are drawn from torch's global random generator, as in ``DataCollatorForLanguageModeling``; the Trainer
    seeds it, but restores its checkpointed state only after fetching the first batch of a resumed run, so that
    batch's masks (and the later ones) differ from an uninterrupted run's.
    """

    processor: Any
    max_length: int = 40
    mlm_probability: float = 0.25
    max_masks: int | None = 8
    image_loader: Callable[[Any], PILImage.Image] = load_image

    def __post_init__(self):
        if not 0 < self.mlm_probability <= 1:
            raise ValueError(f"mlm_probability must be in (0, 1], got {self.mlm_probability}.")
        if self.max_masks is not None and self.max_masks < 1:
            raise ValueError(f"max_masks must be >= 1 or None, got {self.max_masks}.")

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.processor(
            images=[self.image_loader(example["image"]) for example in examples],
            text=[example["caption"] for example in examples],
            padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt",
        )
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        mlm_input_ids, mlm_labels = self.mask_tokens(input_ids, attention_mask)
        output = {"pixel_values": batch["pixel_values"], "input_ids": input_ids, "attention_mask": attention_mask,
                  "mlm_input_ids": mlm_input_ids, "mlm_labels": mlm_labels,
                  "mlm_positions": masked_positions(mlm_labels)}
        if all("image_id" in example for example in examples):
            # not numbered per batch: ids are compared across the batches of all processes
            output["image_ids"] = torch.tensor([int(example["image_id"]) for example in examples])
        if any("bbox" in example for example in examples):
            boxed = [example.get("bbox") is not None for example in examples]
            output["target_bbox"] = torch.tensor([example["bbox"] if has else [0.5, 0.5, 1.0, 1.0]
                                                  for example, has in zip(examples, boxed)], dtype=torch.float32)
            output["bbox_mask"] = torch.tensor(boxed)
        return output

    def mask_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mlm_input_ids, mlm_labels)`` for a padded batch of token ids (see the module docstring)."""
        tokenizer = self.processor.tokenizer
        special = torch.tensor(sorted(tokenizer.all_special_ids))
        maskable = attention_mask.bool() & ~torch.isin(input_ids, special)
        counts = maskable.sum(dim=1)
        n_masks = torch.clamp((counts.float() * self.mlm_probability).round().long(), min=1)
        if self.max_masks is not None:
            n_masks = n_masks.clamp(max=self.max_masks)
        n_masks = torch.minimum(n_masks, counts)
        # Random order of each row's maskable tokens; the first n_masks of that order are chosen.
        scores = torch.rand(input_ids.shape).masked_fill(~maskable, 2.0)
        ranks = scores.argsort(dim=1).argsort(dim=1)
        chosen = ranks < n_masks[:, None]

        labels = input_ids.masked_fill(~chosen, -100)
        masked = input_ids.clone()
        action = torch.rand(input_ids.shape)
        masked[chosen & (action < 0.8)] = tokenizer.mask_token_id
        randomise = chosen & (action >= 0.8) & (action < 0.9)
        masked[randomise] = torch.randint(len(tokenizer), input_ids.shape)[randomise]
        return masked, labels


__all__ = ["ImageTextPretrainingCollator", "load_image_text_pairs", "load_image", "masked_positions"]
