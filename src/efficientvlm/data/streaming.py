"""Image-text pairs streamed for pre-training at scale: tar shards or a ``datasets`` stream, split over processes and
DataLoader workers, resumable mid-epoch without re-reading what was consumed.

Sources:

* **Tar shards**, the layout img2dataset writes: ``ImageTextStream.from_tar_shards("shards/{00000..00099}.tar")``
  (brace ranges, ``{a,b}`` lists and globs; several patterns joined by ``::``). A sample is a run of consecutive
  members sharing a key, the member name up to the first dot of its file name: ``<key>.jpg`` (or ``.jpeg``,
  ``.png``, ``.webp``, ...), ``<key>.txt`` (the caption) and anything else (img2dataset's ``.json``), which is
  ignored, as are the ``.parquet`` / ``_stats.json`` files beside the shards. Read with the standard library's
  ``tarfile``; uncompressed tars only (what img2dataset writes).
* **A ``datasets`` stream**: ``ImageTextStream.from_datasets("org/name" | "local/folder" | IterableDataset,
  image_column="image", caption_column="caption")``. Its data sources (``IterableDataset.num_shards``, e.g. one per
  parquet file) are the shards.

Examples are the dicts ``ImageTextPretrainingCollator`` takes: ``image`` (an RGB PIL image, decoded in the DataLoader
worker), ``caption``, ``image_id`` (an int unique to the pair; see below), plus ``key`` and ``shard`` (where the pair
came from).

**Sharding.** Shards are divided over ``world_size x num_workers`` *slots*, slot ``rank * num_workers + worker``:
slot ``g`` of ``G`` takes every ``G``-th shard from position ``g`` of the shard list (permuted once with ``seed`` when
``shuffle``), and reads them, each epoch, in a new order drawn from ``(seed, epoch, g)`` (a ``datasets`` stream:
``IterableDataset.shard(G, g, contiguous=False)``, reordered by datasets' ``set_epoch``). A slot yields a shard's
pairs in file order (img2dataset's shards are as mixed as the URL list they were downloaded from). In one epoch every
slot reads each of its shards once, so every pair is yielded exactly once across all processes and workers. There
must be at least as many shards as slots. The stream repeats epochs without end by default (``num_epochs=None``):
DDP needs the same number of batches on every process, and a slot whose shards hold fewer pairs simply starts its
next epoch earlier; training stops at ``max_steps``.

**Resuming.** The stream is a deterministic function of its shards, ``seed``, ``shuffle``, the world size, the
number of DataLoader workers and the batch size; its position is the number of batches a process has consumed (an
endless stream gives full batches, and a DataLoader takes them from its workers in turn). DataLoader workers read
ahead, so the stream cannot see how far training got: the caller says it, in
``state_dict(batches, batch_size, num_workers)``, and ``load_state_dict(state)`` makes the next iteration continue
with the very next pair. Each worker then fast-forwards to its own position: for tar shards it reads only the
headers and captions (never the image bytes) of the shards before the position, once per shard, and seeks into the
shard it stopped in; for a ``datasets`` stream it reads, without decoding images, the examples before the position
in the epoch it stopped in (plus one epoch, to count it, when that is not the first). The batch size may change on
resume (each worker continues after the pairs it had delivered); the shards, seed, shuffling, number of processes and
of workers may not (``load_state_dict`` and the first iteration say what changed). ``DistillationTrainer`` saves
this state in its checkpoints and restores it on ``resume_from_checkpoint`` (with ``ignore_data_skip=True``; the
Trainer's default resume would instead re-read, decode and collate every batch since the start of training).

**Bad samples.** A sample without an image member, without a caption or with an empty one, or whose image does not
decode, raises a ``BadSampleError`` naming the shard and the key. With ``on_error="skip"`` it is skipped, logged with
the shard, key and reason, and counted (each warning gives the worker's running count, also in ``skipped`` on the
worker's copy of the stream). Skipped samples that the fast-forward can recognise without decoding (no image member,
no or empty caption) are skipped identically there; an image that fails to *decode* cannot be recognised that way, so
a resume that passes one repeats one pair per such image (with the default ``on_error="raise"`` resuming is exact).

``image_id``: for tar shards ``shard index * 2**32 + sample index in the shard`` (the same pair has the same id in
every epoch); for a ``datasets`` stream the ``image_id_column`` when given, else an id unique to the example's slot,
epoch and position. Captions of the same image in one batch are positives of each other in the contrastive loss only
when they share an ``image_id``.
"""

from __future__ import annotations

import glob
import hashlib
import io
import logging
import os
import re
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image as PILImage
from torch.utils.data import IterableDataset, get_worker_info

__all__ = ["BadSampleError", "ImageTextStream", "expand_shards", "IMAGE_EXTENSIONS"]

logger = logging.getLogger(__name__)

#: Member extensions read as the image of a tar sample, in order of preference.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")

#: Version of the dictionary ``ImageTextStream.state_dict`` returns.
STATE_VERSION = 1


class BadSampleError(ValueError):
    """A sample of a shard cannot be used (no image, no caption, an image that does not decode); the message names
    the shard, the key and the reason."""


# ------------------------------------------------------------------------------------------------ shard lists

_BRACE = re.compile(r"\{([^{}]*)\}")


def _brace_items(body: str) -> list[str] | None:
    """``"00..03"`` -> ``["00", "01", "02", "03"]``; ``"a,b"`` -> ``["a", "b"]``; anything else: None (literal)."""
    numbers = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numbers:
        first, last = numbers.groups()
        padded = any(len(n) > 1 and n.startswith("0") for n in (first, last))
        width = max(len(first), len(last)) if padded else 0
        step = 1 if int(last) >= int(first) else -1
        return [f"{i:0{width}d}" for i in range(int(first), int(last) + step, step)]
    if "," in body:
        return body.split(",")
    return None


def _expand_braces(pattern: str) -> list[str]:
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end():]
    items = _brace_items(match.group(1))
    if items is None:
        return [head + match.group(0) + rest for rest in _expand_braces(tail)]
    return [head + item + rest for item in items for rest in _expand_braces(tail)]


def expand_shards(patterns: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """The shard files a pattern names, in order.

    ``patterns``: a path, a brace pattern (``shards/{00000..00099}.tar``: numeric ranges keep the zero padding;
    ``{train,extra}`` lists), a glob (``shards/*.tar``, sorted), several of these joined by ``::``, or a list of them.
    Raises ``FileNotFoundError`` naming the files that do not exist (or the globs that match nothing) and
    ``ValueError`` for a file listed twice.
    """
    if isinstance(patterns, (str, os.PathLike)):
        patterns = str(patterns).split("::")
    paths: list[str] = []
    for pattern in patterns:
        for expanded in _expand_braces(str(pattern)):
            if glob.has_magic(expanded):
                matches = sorted(glob.glob(expanded))
                if not matches:
                    raise FileNotFoundError(f"No file matches {expanded!r} (from the shard pattern {str(pattern)!r}).")
                paths.extend(matches)
            else:
                paths.append(expanded)
    if not paths:
        raise FileNotFoundError(f"The shard pattern {patterns!r} names no file.")
    missing = [path for path in paths if not os.path.isfile(path)]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise FileNotFoundError(f"{len(missing)} of the {len(paths)} shards do not exist: {shown}.")
    seen: set[str] = set()
    twice = [path for path in paths if path in seen or seen.add(path)]
    if twice:
        raise ValueError(f"Shards listed more than once: {', '.join(sorted(set(twice))[:5])}; each pair must be "
                         "read once per epoch.")
    return paths


# ------------------------------------------------------------------------------------------------ decoding


def _decode_image(value: Any) -> PILImage.Image:
    """An RGB PIL image from raw bytes, a path, a PIL image or an undecoded ``datasets`` image dict."""
    if isinstance(value, PILImage.Image):
        return value.convert("RGB")
    if isinstance(value, dict):
        if value.get("bytes"):
            value = value["bytes"]
        else:
            import datasets  # a path (local or remote) that datasets knows how to open

            return datasets.Image().decode_example(value).convert("RGB")
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = io.BytesIO(value)
    with PILImage.open(value) as image:
        return image.convert("RGB")


@dataclass
class _Candidate:
    """A sample before decoding: where it is, its caption, and what is wrong with it without decoding (if anything)."""

    shard: str
    key: str
    image_id: int
    caption: str | None
    problem: str | None
    image: Any = None  # raw bytes, a path, a PIL image or an undecoded datasets image dict


# ------------------------------------------------------------------------------------------------ tar shards


def _split_member_name(name: str) -> tuple[str, str]:
    """``"dir/000123.jpg"`` -> ``("dir/000123", "jpg")``; the key stops at the first dot of the file name."""
    folder, _, base = name.rpartition("/")
    stem, _, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), extension.lower()


@dataclass
class _TarSample:
    key: str
    ordinal: int  # index of the sample in its shard (every sample counts, good or bad)
    offset: int  # byte offset of its first member's header: where to seek to start at it
    members: dict[str, tarfile.TarInfo]


class _TarShards:
    """Tar shards as a source: per slot, per epoch, the samples in order, and a fast-forward that reads no image."""

    def __init__(self, paths: list[str], image_extensions: Sequence[str], caption_extension: str):
        self.paths = paths
        self.image_extensions = tuple(e.lower().lstrip(".") for e in image_extensions)
        self.caption_extension = caption_extension.lower().lstrip(".")
        self._counts: dict[int, int] = {}  # shard index -> good samples (filled while fast-forwarding)

    @property
    def num_shards(self) -> int:
        return len(self.paths)

    def layout(self) -> dict:
        digest = hashlib.sha256("\n".join(os.path.basename(p) for p in self.paths).encode()).hexdigest()[:16]
        return {"source": "tar", "num_shards": len(self.paths), "shard_names_sha256": digest}

    def describe(self) -> str:
        return f"{len(self.paths)} tar shards ({self.paths[0]} ...)"

    # -- reading

    def _open(self, index: int, offset: int) -> tuple[Any, tarfile.TarFile]:
        path = self.paths[index]
        handle = open(path, "rb")
        try:
            handle.seek(offset)
            return handle, tarfile.open(fileobj=handle, mode="r:")
        except tarfile.TarError as error:
            handle.close()
            raise ValueError(f"Cannot read the shard {path} at byte {offset} as an uncompressed tar archive "
                             f"({error}); re-create or remove the shard.") from error

    def _samples(self, index: int, offset: int = 0, ordinal: int = 0) -> Iterator[tuple[tarfile.TarFile, _TarSample]]:
        """The samples of shard ``index`` from the one at ``offset`` (whose index in the shard is ``ordinal``). Only
        headers are read here; member data is read on demand with the yielded ``TarFile``."""
        handle, tar = self._open(index, offset)
        try:
            current: _TarSample | None = None
            try:
                for member in tar:
                    if not member.isfile():
                        continue
                    key, extension = _split_member_name(member.name)
                    if current is None or key != current.key:
                        if current is not None:
                            yield tar, current
                            ordinal += 1
                        current = _TarSample(key, ordinal, member.offset, {})
                    current.members.setdefault(extension, member)
            except tarfile.TarError as error:
                last = repr(current.key) if current else "(none)"
                raise ValueError(f"The shard {self.paths[index]} is damaged after sample {last} ({error}); re-create "
                                 "or remove it.") from error
            if current is not None:
                yield tar, current
        finally:
            tar.close()
            handle.close()

    def _candidate(self, tar: tarfile.TarFile, index: int, sample: _TarSample, read_image: bool) -> _Candidate:
        """Check a sample without decoding it (reads its caption, and its image bytes when ``read_image``)."""
        image = next((sample.members[e] for e in self.image_extensions if e in sample.members), None)
        caption_member = sample.members.get(self.caption_extension)
        found = ", ".join(f".{e}" for e in sample.members)
        problem, caption = None, None
        if image is None or image.size == 0:
            problem = (f"no image (an empty {image.name})" if image is not None else
                       f"no image member (looked for .{', .'.join(self.image_extensions)}; found {found})")
        elif caption_member is None:
            problem = f"no caption (no .{self.caption_extension} member; found {found})"
        else:
            raw = tar.extractfile(caption_member).read()
            try:
                caption = raw.decode("utf-8").strip()
            except UnicodeDecodeError as error:
                problem = f"the caption {caption_member.name} is not UTF-8 ({error})"
            else:
                if not caption:
                    problem = f"an empty caption ({caption_member.name})"
        data = tar.extractfile(image).read() if read_image and problem is None else None
        return _Candidate(self.paths[index], sample.key, index * 2**32 + sample.ordinal, caption, problem, data)

    # -- order and positions

    def slot_shards(self, slot: int, num_slots: int, seed: int, shuffle: bool) -> list[int]:
        order = np.random.default_rng(seed).permutation(len(self.paths)) if shuffle else np.arange(len(self.paths))
        return [int(i) for i in order[slot::num_slots]]

    @staticmethod
    def epoch_order(shards: list[int], epoch: int, slot: int, seed: int, shuffle: bool) -> list[int]:
        if not shuffle:
            return list(shards)
        return [shards[i] for i in np.random.default_rng([seed, epoch, slot]).permutation(len(shards))]

    def _scan(self, index: int, skip: int) -> tuple[int, tuple[int, int] | None]:
        """Pass over up to ``skip`` good samples of shard ``index`` (``skip`` > 0), reading headers and captions only:
        ``(skip, (offset, ordinal))`` of the sample after them if the shard has more, else ``(good samples in the
        shard, None)`` (remembered, so that a shard is scanned whole at most once)."""
        if self._counts.get(index, skip + 1) <= skip:
            return self._counts[index], None
        good = 0
        for tar, sample in self._samples(index):
            if good == skip:
                return skip, (sample.offset, sample.ordinal)
            good += self._candidate(tar, index, sample, False).problem is None
        self._counts[index] = good
        return good, None

    def locate(self, shards: list[int], slot: int, skip: int, seed: int, shuffle: bool):
        """``(epoch, start)`` after ``skip`` good samples of this slot; ``start`` = (position in the epoch's shard
        order, byte offset, sample ordinal), None for the start of the epoch."""
        epoch = 0
        while True:
            if skip and all(index in self._counts for index in shards):
                length = sum(self._counts[index] for index in shards)
                if length:
                    epoch, skip = epoch + skip // length, skip % length
            for position, index in enumerate(self.epoch_order(shards, epoch, slot, seed, shuffle)):
                if not skip:
                    return epoch, (position, 0, 0) if position else None
                passed, start = self._scan(index, skip)
                if start is not None:
                    return epoch, (position, *start)
                skip -= passed
            epoch += 1
            if all(self._counts.get(index) == 0 for index in shards):
                raise BadSampleError(f"The shards of this slot hold no usable pair: "
                                     f"{', '.join(self.paths[i] for i in shards)}.")

    def epoch_candidates(self, shards: list[int], slot: int, epoch: int, start, seed: int,
                         shuffle: bool) -> Iterator[_Candidate]:
        position, offset, ordinal = start if start is not None else (0, 0, 0)
        order = self.epoch_order(shards, epoch, slot, seed, shuffle)
        for index in order[position:]:
            for tar, sample in self._samples(index, offset, ordinal):
                yield self._candidate(tar, index, sample, True)
            offset, ordinal = 0, 0


# ------------------------------------------------------------------------------------------------ datasets


class _DatasetsShards:
    """A ``datasets.IterableDataset`` as a source: its data sources are the shards."""

    def __init__(self, dataset, name: str, image_column: str, caption_column: str, image_id_column: str | None,
                 key_column: str | None):
        import datasets

        features = dataset.features or {}
        if isinstance(features.get(image_column), datasets.Image):  # decode in the worker, with a useful error
            dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
        for column in (image_column, caption_column, image_id_column, key_column):
            if column is not None and features and column not in features:
                raise ValueError(f"The dataset {name} has no column {column!r} (columns: {list(features)}).")
        self.dataset = dataset
        self.name = name
        self.image_column, self.caption_column = image_column, caption_column
        self.image_id_column, self.key_column = image_id_column, key_column
        self._lengths: dict[int, int] = {}  # slot -> good examples per epoch (filled while fast-forwarding)

    @property
    def num_shards(self) -> int:
        return self.dataset.num_shards

    def layout(self) -> dict:
        return {"source": "datasets", "name": self.name, "num_shards": self.dataset.num_shards}

    def describe(self) -> str:
        return f"the datasets stream {self.name} ({self.dataset.num_shards} data sources)"

    def slot_shards(self, slot: int, num_slots: int, seed: int, shuffle: bool):
        return self.dataset.shard(num_shards=num_slots, index=slot, contiguous=False)

    def _rows(self, shard_dataset, epoch: int, shuffle: bool) -> Iterator[dict]:
        if shuffle:
            shard_dataset.set_epoch(epoch)  # datasets reorders the data sources of every epoch but the first
        for batch in shard_dataset.iter(batch_size=64):  # .iter() does not split again by DataLoader worker
            columns = list(batch)
            for values in zip(*(batch[c] for c in columns)):
                yield dict(zip(columns, values))

    def _candidate(self, row: dict, slot: int, epoch: int, ordinal: int) -> _Candidate:
        caption, image = row.get(self.caption_column), row.get(self.image_column)
        key = str(row[self.key_column]) if self.key_column else f"example {ordinal} of slot {slot}, epoch {epoch}"
        problem = None
        if image is None or (isinstance(image, dict) and not image.get("bytes") and not image.get("path")):
            problem = f"no image (column {self.image_column!r})"
        elif not isinstance(caption, str) or not caption.strip():
            problem = f"no caption (column {self.caption_column!r} holds {caption!r}, not a non-empty string)"
        if self.image_id_column:
            image_id = int(row[self.image_id_column])
        else:
            image_id = (slot << 48) | ((epoch & 0xFFFF) << 32) | ordinal
        return _Candidate(self.name, key, image_id, caption.strip() if problem is None else None, problem, image)

    def locate(self, shard_dataset, slot: int, skip: int, seed: int, shuffle: bool):
        """``(epoch, start)``: ``start`` = good examples to pass over in that epoch (None: none)."""
        epoch = 0
        while skip:
            length = self._lengths.get(slot)
            if length:
                return epoch + skip // length, (skip % length) or None
            good = 0
            for ordinal, row in enumerate(self._rows(shard_dataset, epoch, shuffle)):
                if good == skip:
                    return epoch, skip
                good += self._candidate(row, slot, epoch, ordinal).problem is None
            if good == 0:
                raise BadSampleError(f"Slot {slot} of {self.describe()} holds no usable pair.")
            self._lengths[slot] = good
            skip -= min(skip, good)
            epoch += 1
        return epoch, None

    def epoch_candidates(self, shard_dataset, slot: int, epoch: int, start, seed: int,
                         shuffle: bool) -> Iterator[_Candidate]:
        to_pass = start or 0
        for ordinal, row in enumerate(self._rows(shard_dataset, epoch, shuffle)):
            candidate = self._candidate(row, slot, epoch, ordinal)
            if to_pass:
                to_pass -= candidate.problem is None
                continue
            yield candidate


# ------------------------------------------------------------------------------------------------ the stream


def _process_layout(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """This process's rank and the number of processes: as given, else from torch.distributed, else from the
    ``RANK`` / ``WORLD_SIZE`` variables that ``accelerate launch`` and ``torchrun`` set, else a single process."""
    initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
    if world_size is None:
        world_size = torch.distributed.get_world_size() if initialised else int(os.environ.get("WORLD_SIZE", 1))
    if rank is None:
        rank = torch.distributed.get_rank() if initialised else int(os.environ.get("RANK", 0))
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must be in [0, world_size={world_size}).")
    return rank, world_size


class ImageTextStream(IterableDataset):
    """Image-text pairs streamed from tar shards or a ``datasets`` stream (see the module docstring).

    Build it with :meth:`from_tar_shards` or :meth:`from_datasets`. Keyword arguments of both:

    Args:
        rank, world_size: this process and the number of processes (default: from torch.distributed, else the
            ``RANK`` / ``WORLD_SIZE`` environment variables, else 0 and 1).
        shuffle: tar shards: permute the shards over the slots once, and each slot's shard order every epoch;
            a ``datasets`` stream: let datasets reorder each slot's data sources every epoch after the first
            (``set_epoch``). Off: file order, every epoch.
        seed: the seed of the tar shards' permutations (shuffle a ``datasets`` stream itself, before passing it, to
            mix its examples).
        num_epochs: epochs to yield; ``None`` (default) repeats without end, for training with ``max_steps``.
        on_error: ``"raise"`` (default) a ``BadSampleError`` naming the shard and key of a bad sample, or
            ``"skip"`` it (logged and counted).

    Attributes:
        rank, world_size: as resolved.
        skipped: samples skipped by ``on_error="skip"`` (counted on each DataLoader worker's copy).
    """

    def __init__(self, source, *, rank: int | None = None, world_size: int | None = None, shuffle: bool = True,
                 seed: int = 0, num_epochs: int | None = None, on_error: str = "raise"):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}.")
        if num_epochs is not None and num_epochs < 1:
            raise ValueError(f"num_epochs must be >= 1 or None (endless), got {num_epochs}.")
        self.source = source
        self.rank, self.world_size = _process_layout(rank, world_size)
        self.shuffle, self.seed, self.num_epochs, self.on_error = shuffle, seed, num_epochs, on_error
        self.skipped = 0
        self._resume: dict | None = None

    @classmethod
    def from_tar_shards(cls, shards: str | os.PathLike | Sequence[str | os.PathLike], *,
                        image_extensions: Sequence[str] = IMAGE_EXTENSIONS, caption_extension: str = "txt",
                        **kwargs) -> ImageTextStream:
        """Pairs from tar shards: ``shards`` is a pattern or list (see :func:`expand_shards`); the image is the
        first member found among ``image_extensions``, the caption the ``caption_extension`` member (UTF-8)."""
        return cls(_TarShards(expand_shards(shards), image_extensions, caption_extension), **kwargs)

    @classmethod
    def from_datasets(cls, dataset, *, split: str = "train", image_column: str = "image",
                      caption_column: str = "caption", image_id_column: str | None = None,
                      key_column: str | None = None, **kwargs) -> ImageTextStream:
        """Pairs from a ``datasets.IterableDataset``, or from a Hub id or local folder that
        ``load_dataset(dataset, split=split, streaming=True)`` opens (e.g. a folder of parquet files).

        ``image_column`` holds images (a ``datasets.Image`` column is decoded in the DataLoader worker, not by
        datasets), ``caption_column`` one caption per row; ``image_id_column`` (optional) ints shared by the rows of
        the same image; ``key_column`` (optional) names rows in error messages.
        """
        import datasets

        name = str(dataset) if isinstance(dataset, (str, os.PathLike)) else f"a {type(dataset).__name__}"
        if isinstance(dataset, (str, os.PathLike)):
            dataset = datasets.load_dataset(str(dataset), split=split, streaming=True)
        if isinstance(dataset, datasets.Dataset):
            dataset = dataset.to_iterable_dataset(num_shards=max(1, min(len(dataset), 64)))
        if not isinstance(dataset, datasets.IterableDataset):
            raise TypeError(f"from_datasets needs a datasets.IterableDataset, Dataset, Hub id or folder; got "
                            f"{type(dataset).__name__}.")
        return cls(_DatasetsShards(dataset, name, image_column, caption_column, image_id_column, key_column),
                   **kwargs)

    # ---- layout and resume -------------------------------------------------------------------------------------

    def layout(self) -> dict:
        """What fixes the order of the stream (apart from DataLoader workers and batch size)."""
        return {**self.source.layout(), "seed": self.seed, "shuffle": self.shuffle, "world_size": self.world_size}

    def check_workers(self, num_workers: int) -> None:
        """Raise a ``ValueError`` if ``world_size x num_workers`` slots cannot each get a shard."""
        slots = self.world_size * max(1, num_workers)
        if self.source.num_shards < slots:
            raise ValueError(
                f"{self.source.describe()} cannot feed {self.world_size} process(es) x {max(1, num_workers)} "
                f"DataLoader worker(s) = {slots} slots: every slot needs at least one shard. Use fewer workers "
                f"(dataloader_num_workers <= {max(1, self.source.num_shards // self.world_size)}) or more shards."
            )

    def state_dict(self, batches: int, batch_size: int, num_workers: int) -> dict:
        """The position after this process consumed ``batches`` batches of ``batch_size`` pairs from a DataLoader
        with ``num_workers`` workers (0: none), with the layout it must be resumed with (JSON-serialisable)."""
        return {"version": STATE_VERSION, "layout": self.layout(), "batches": int(batches),
                "batch_size": int(batch_size), "num_workers": int(num_workers)}

    def load_state_dict(self, state: dict) -> None:
        """Make the next iteration continue where ``state`` (from :meth:`state_dict`) stopped; raises a
        ``ValueError`` naming what differs if the shards, seed, shuffling or number of processes changed."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"Stream state version {state.get('version')!r} is not {STATE_VERSION}.")
        saved, current = state["layout"], self.layout()
        changed = [f"{key}: {saved.get(key)!r} then, {current.get(key)!r} now"
                   for key in sorted(set(saved) | set(current)) if saved.get(key) != current.get(key)]
        if changed:
            raise ValueError("The stream cannot resume where it stopped, its layout changed (" + "; ".join(changed)
                             + "). Resume with the same shards, seed, shuffle and number of processes.")
        self._resume = {key: int(state[key]) for key in ("batches", "batch_size", "num_workers")}

    # ---- iteration ---------------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = get_worker_info()
        num_workers, physical = (worker.num_workers, worker.id) if worker is not None else (1, 0)
        batches = batch_size = 0
        if self._resume is not None:
            if max(1, self._resume["num_workers"]) != num_workers:
                raise ValueError(
                    f"The stream stopped with {self._resume['num_workers']} DataLoader workers per process and "
                    f"resumes with {num_workers if worker is not None else 0}: the slots, and so the order, would "
                    "change. Resume with the same dataloader_num_workers."
                )
            batches, batch_size = self._resume["batches"], self._resume["batch_size"]
        self.check_workers(num_workers)
        # The DataLoader takes batch i from worker i % num_workers. After `batches` batches the next one is due
        # from worker `batches % num_workers`, while a new DataLoader starts with worker 0: shift the roles.
        logical = (physical + batches) % num_workers
        consumed = (batches // num_workers + (logical < batches % num_workers)) * batch_size
        slot, num_slots = self.rank * num_workers + logical, self.world_size * num_workers
        yield from self._slot_stream(slot, num_slots, consumed)

    def _slot_stream(self, slot: int, num_slots: int, skip: int) -> Iterator[dict[str, Any]]:
        source = self.source
        shards = source.slot_shards(slot, num_slots, self.seed, self.shuffle)
        epoch, start = source.locate(shards, slot, skip, self.seed, self.shuffle)
        while self.num_epochs is None or epoch < self.num_epochs:
            yielded = 0
            for candidate in source.epoch_candidates(shards, slot, epoch, start, self.seed, self.shuffle):
                problem, image = candidate.problem, None
                if problem is None:
                    try:
                        image = _decode_image(candidate.image)
                    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBomb...
                        problem = f"the image does not decode ({type(error).__name__}: {error})"
                if problem is not None:
                    self._bad(candidate, problem)
                    continue
                yielded += 1
                yield {"image": image, "caption": candidate.caption, "image_id": candidate.image_id,
                       "key": candidate.key, "shard": candidate.shard}
            if start is None and yielded == 0:
                raise BadSampleError(f"Slot {slot} of {num_slots} read a whole epoch of {source.describe()} "
                                     "without one usable pair.")
            epoch, start = epoch + 1, None

    def _bad(self, candidate: _Candidate, problem: str) -> None:
        where = f"shard {candidate.shard}, sample {candidate.key!r}"
        if self.on_error == "raise":
            raise BadSampleError(f"{where}: {problem}. Fix or remove the sample, or skip bad samples with "
                                 "on_error='skip' (--skip_bad_samples in examples/pretrain_distill.py).")
        self.skipped += 1
        logger.warning("Skipped %s: %s (%d skipped so far by this DataLoader worker).", where, problem, self.skipped)
