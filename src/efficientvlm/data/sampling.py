"""Training order that keeps the questions of one image together, so that a batch encodes each image once.

``VQACollator(group_images=True)`` puts each distinct image of a batch once in ``pixel_values`` (with an
``image_index`` per question); that saves work only if the rows of one image land in the same batch. The Trainer's
default sampler shuffles *rows* and scatters them; :class:`ImageGroupedSampler` shuffles *images* and yields each
image's rows one after another, so that with ``k`` questions per image and a batch size that is a multiple of
``k``, every batch holds ``batch / k`` whole images.

The library's trainers (``DistillationTrainer``, ``ModalAdaptivePruningTrainer``) pick it by themselves when their
collator groups images; :class:`ImageGroupedTrainer` is a plain ``transformers.Trainer`` that does the same (task
fine-tuning without a teacher). The order is a function of the seed (``args.data_seed``, else ``args.seed``) and
the epoch, so resuming from a checkpoint skips exactly the batches already trained on. Under several processes,
Accelerate hands whole batches to each process, so an image's questions still meet in one batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Sampler
from transformers import Trainer

__all__ = ["ImageGroupedSampler", "ImageGroupedSamplingMixin", "ImageGroupedTrainer", "image_grouped_sampler"]


class ImageGroupedSampler(Sampler[int]):
    """Row indices, images in a random order per epoch, each image's rows consecutive (in dataset order).

    Args:
        image_ids: one id per row of the dataset; rows with equal ids show the same image.
        seed: the shuffle of epoch ``e`` is seeded with ``seed + e`` (``set_epoch``, which the Trainer calls).
    """

    def __init__(self, image_ids: Sequence[Any], seed: int = 0):
        groups: dict[Any, list[int]] = {}
        for row, image_id in enumerate(image_ids):
            groups.setdefault(image_id, []).append(row)
        self.groups = list(groups.values())
        self.num_rows = len(image_ids)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_rows

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        for group in torch.randperm(len(self.groups), generator=generator).tolist():
            yield from self.groups[group]


def image_grouped_sampler(dataset, collator, args) -> ImageGroupedSampler | None:
    """The sampler a trainer should train with when ``collator`` groups images (``group_images=True``), else None.

    Reads the collator's ``image_id_column`` from ``dataset`` (a column read for a ``datasets.Dataset``; other map-style
    datasets are read row by row once). None too when ``args.train_sampling_strategy`` is ``"sequential"`` (the
    dataset's own order, where ``make_vqa_dataset`` already keeps an image's rows together) or the dataset has no
    length (a stream: its own order). Raises ``ValueError`` when the column is missing or the strategy groups by
    length, which would scatter an image's rows.
    """
    if not getattr(collator, "group_images", False) or dataset is None or not hasattr(dataset, "__len__"):
        return None
    strategy = getattr(args, "train_sampling_strategy", "random")
    if strategy == "sequential":
        return None
    if strategy != "random":
        raise ValueError(
            f"train_sampling_strategy={strategy!r} orders rows by length, which scatters the questions of one image "
            "over batches, but the collator groups images (group_images=True): use the default 'random' (images are "
            "then shuffled, each image's questions kept together) or set group_images=False."
        )
    column = collator.image_id_column
    names = getattr(dataset, "column_names", None)
    if names is not None:
        if column not in names:
            raise ValueError(
                f"The collator groups rows by image (group_images=True) but the training set has no {column!r} column "
                f"(columns: {', '.join(names)}). Keep it (TrainingArguments(remove_unused_columns=False)), name "
                "another column with image_id_column=..., or set group_images=False."
            )
        image_ids = dataset[column]
    else:
        image_ids = [dataset[i][column] for i in range(len(dataset))]
    seed = args.data_seed if getattr(args, "data_seed", None) is not None else args.seed
    return ImageGroupedSampler(image_ids, seed=seed)


class ImageGroupedSamplingMixin:
    """For ``transformers.Trainer`` subclasses: train in :class:`ImageGroupedSampler` order when the collator groups
    images (``VQACollator(group_images=True)``); otherwise the Trainer's own sampler."""

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        sampler = image_grouped_sampler(dataset, self.data_collator, self.args)
        return sampler if sampler is not None else super()._get_train_sampler(train_dataset)


class ImageGroupedTrainer(ImageGroupedSamplingMixin, Trainer):
    """``transformers.Trainer`` that keeps each image's questions in one batch when its collator groups images
    (``VQACollator(group_images=True)``); with any other collator it is the plain Trainer."""
