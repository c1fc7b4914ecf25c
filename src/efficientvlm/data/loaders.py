"""Loaders for the real annotation formats, returning ``datasets.Dataset`` objects with lazily decoded images.

Supported formats:

* the X-VLM / EfficientVLM fine-tuning JSON files (``vqa_train.json``, ``coco_train.json``, ``coco_test.json``,
  ``nlvr_train.json``, ...): :func:`load_xvlm_vqa`, :func:`load_xvlm_caption_pairs`,
  :func:`load_xvlm_caption_groups`, :func:`load_xvlm_nlvr2`;
* the official VQAv2 question/annotation files: :func:`load_vqav2`, plus :func:`build_answer_vocabulary`;
* the Karpathy split ``dataset_coco.json`` (also ``dataset_flickr30k.json``): :func:`load_karpathy`;
* the official NLVR2 JSON-lines files: :func:`load_nlvr2`.

Images: the datasets store image *paths* (string columns). Unless ``decode_images=False``, a transform
(:class:`LazyImageDecoder`) opens them as RGB PIL images when rows are read, so nothing is decoded up front.
A missing file is an error, never skipped: with ``check_files=True`` (default) every path is checked at load
time and :class:`MissingImageError` lists the missing paths with their example ids; a file that disappears
later raises the same error, with path and id, when the row is read.

The transform sees whole rows, so reading a text column of a decoding dataset (``ds["captions"]``) opens
the images too; read text columns from ``ds.with_format(None)`` (paths only) instead, as
:func:`retrieval_targets` does.

Validation: every entry is checked when the file is loaded, and a malformed one raises :class:`AnnotationError`
(a ``ValueError``) naming the file, the entry (index in its file, and its id when it has one), the field and
how to fix it: a file that is not JSON (or, for NLVR2, a line that is not), an entry that is not an object, a
missing, null, non-string or blank ``question`` / ``caption`` / ``sentence``, a missing or null image path, an
empty answer or caption list, a label that is not true/false. Specific decisions:

* **Empty files** (no bytes, ``[]``, no lines, or a Karpathy file with none of the asked splits) are errors,
  never an empty dataset: an empty annotation file is almost always a failed download or a wrong path.
* **Answers must be strings.** The official VQA data has only strings; a number (``2`` instead of ``"2"``) or a
  null in an answer list is an error naming the entry and the position, since it usually means a
  preprocessing tool converted the answers, and guessing its spelling (``2``, ``2.0``) would silently change
  which vocabulary entry it counts for.
* **Duplicate ids** (``question_id`` of VQA files, ``identifier`` of NLVR2 files, ``image_id`` of one-row-per-image
  caption and Karpathy files) are kept, with a ``logger.warning`` naming them.
* **Image paths stay inside the image root.** An absolute path or one whose ``..`` leaves the root is refused
  unless ``allow_outside_root=True``; the check is on the path as written (symbolic links inside the root are
  followed as usual). Paths are not checked when the root is None (used as written, as X-VLM does for GQA).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import datasets
from PIL import Image, UnidentifiedImageError

from ..metrics.nlvr2 import to_binary_label
from ..metrics.vqa import normalize_answer

__all__ = [
    "AnnotationError",
    "MissingImageError",
    "LazyImageDecoder",
    "load_xvlm_vqa",
    "load_xvlm_caption_pairs",
    "load_xvlm_caption_groups",
    "load_xvlm_nlvr2",
    "load_vqav2",
    "coco_image_filename",
    "build_answer_vocabulary",
    "load_karpathy",
    "load_nlvr2",
    "retrieval_targets",
]

PathLike = str | os.PathLike

logger = logging.getLogger(__name__)


class MissingImageError(FileNotFoundError):
    """An image referenced by an annotation file does not exist (the message names the path and example id)."""


class AnnotationError(ValueError):
    """An annotation file or one of its entries is malformed; the message names the file, entry, field and fix."""


class LazyImageDecoder:
    """``Dataset.with_transform`` callable that opens image-path columns as RGB PIL images.

    Args:
        image_columns: columns holding image paths.
        id_column: column whose value identifies the example in error messages.
    """

    def __init__(self, image_columns: Sequence[str], id_column: str):
        self.image_columns = tuple(image_columns)
        self.id_column = id_column

    def _open(self, path: str, example_id: Any, column: str) -> Image.Image:
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except FileNotFoundError as err:
            raise MissingImageError(
                f"image file not found: {path} (example {self.id_column}={example_id!r}, column {column!r})"
            ) from err
        except (UnidentifiedImageError, OSError) as err:
            raise OSError(
                f"cannot read image {path} (example {self.id_column}={example_id!r}, column {column!r}): {err}"
            ) from err

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        out = dict(batch)
        ids = batch.get(self.id_column)
        for column in self.image_columns:
            if column in batch:
                out[column] = [
                    self._open(path, ids[i] if ids is not None else "?", column) for i, path in enumerate(batch[column])
                ]
        return out


# -------------------------------------------------------------------------------------------------- helpers


_NOT_JSON_FIX = "the file may be truncated or not be JSON; download or write it again"


def _read_text(file: PathLike) -> str:
    try:
        with open(file, encoding="utf-8") as handle:
            return handle.read()
    except UnicodeDecodeError as err:
        raise AnnotationError(f"{file}: not UTF-8 text ({err}); {_NOT_JSON_FIX}") from err


def _load_json(file: PathLike) -> Any:
    """Parse a JSON file; an empty or malformed file raises :class:`AnnotationError` naming it and the position."""
    text = _read_text(file)
    if not text.strip():
        raise AnnotationError(f"{file}: the file is empty; {_NOT_JSON_FIX}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise AnnotationError(
            f"{file}: not valid JSON at line {err.lineno}, column {err.colno} ({err.msg}); {_NOT_JSON_FIX}"
        ) from err


def _json_list(file: PathLike, data: Any, key: str | None, layout: str) -> list:
    """``data`` (or ``data[key]``) as a non-empty list, else :class:`AnnotationError` describing ``layout``."""
    if key is not None:
        if not isinstance(data, dict) or key not in data:
            found = f"an object with keys {sorted(data)[:8]}" if isinstance(data, dict) else type(data).__name__
            raise AnnotationError(f"{file}: expected {layout}, got {found}; is this the right file?")
        data = data[key]
    if not isinstance(data, list):
        raise AnnotationError(f"{file}: expected {layout}, got {type(data).__name__}; is this the right file?")
    if not data:
        where = f"its {key!r} list" if key is not None else "the file"
        raise AnnotationError(f"{file}: {where} has no entries; an empty annotation file is not loaded "
                              "(check the path, or that the download finished)")
    return data


class _Entry:
    """One annotation entry with where it came from, and typed field access that reports problems precisely."""

    def __init__(self, file: PathLike, index: int, data: Any, id_key: str | None = None, what: str = "entry"):
        self.file, self.index, self.what = file, index, what
        self.id_key = id_key
        if not isinstance(data, dict):
            raise AnnotationError(f"{self.where()} is {type(data).__name__} {_short(data)}, not a JSON object; "
                                  "every entry must be an object with the fields documented by the loader")
        self.data = data

    def where(self) -> str:
        place = f"{self.file}: {self.what} {self.index}"
        data = getattr(self, "data", None)
        if data is not None and self.id_key and data.get(self.id_key) is not None:
            place += f" ({self.id_key}={data[self.id_key]!r})"
        return place

    def error(self, field: str, problem: str, fix: str) -> AnnotationError:
        return AnnotationError(f"{self.where()}: {field!r} {problem}; {fix}")

    def get(self, field: str, default: Any = None) -> Any:
        return self.data.get(field, default)

    def has(self, field: str) -> bool:
        return field in self.data

    def require(self, field: str, fix: str) -> Any:
        if field not in self.data:
            raise self.error(field, f"is missing (the entry has {sorted(self.data)})", fix)
        if self.data[field] is None:
            raise self.error(field, "is null", fix)
        return self.data[field]

    def text(self, field: str, fix: str) -> str:
        """A required, non-blank string."""
        value = self.require(field, fix)
        if not isinstance(value, str):
            raise self.error(field, f"is {type(value).__name__} {_short(value)}, not a string", fix)
        if not value.strip():
            raise self.error(field, "is blank", fix)
        return value

    def identifier(self, field: str, default: Any) -> Any:
        """An optional id: an int or a non-blank string; ``default`` when absent."""
        if field not in self.data:
            return default
        value = self.data[field]
        if not _is_id(value):
            raise self.error(field, f"is {_short(value)}, not an integer or a non-blank string",
                             f"give every entry a unique {field}, or leave the key out")
        return value

    def strings(self, field: str, fix: str, allow_single: bool = False, empty_fix: str | None = None) -> list[str]:
        """A required non-empty list of strings (a single string too when ``allow_single``)."""
        value = self.require(field, fix)
        if allow_single and isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise self.error(field, f"is {type(value).__name__} {_short(value)}, not a list of strings", fix)
        if not value:
            raise self.error(field, "is an empty list", empty_fix or fix)
        for position, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(field, f"item {position} is {type(item).__name__} {_short(item)}, not a string",
                                 fix)
        return value


def _is_id(value: Any) -> bool:
    """An id is an integer (not a bool) or a non-blank string."""
    if isinstance(value, str):
        return bool(value.strip())
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _ImagePaths:
    """Joins annotation image paths to a root and refuses paths that leave it (unless ``allow_outside_root``)."""

    def __init__(self, root: PathLike | None, allow_outside_root: bool, root_name: str = "image_root"):
        self.root = root
        self.root_name = root_name
        self.allow = allow_outside_root or root is None
        self.prefix = os.path.join(os.path.abspath(root), "") if root is not None else ""

    def join(self, entry: _Entry, field: str, path: Any = None) -> str:
        """The joined path of ``entry[field]`` (or of ``path``, built from ``field`` and other fields)."""
        shown = f"has image path {path!r}"
        if path is None:
            path = entry.text(field, "give the image's path relative to the image root")
            shown = f"is {path!r}"
        joined = _join(self.root, path)
        if not self.allow and not os.path.normpath(os.path.abspath(joined)).startswith(self.prefix):
            raise entry.error(
                field, f"{shown}, which points outside {self.root_name} {str(self.root)!r}",
                "image paths must be relative to the image root; move the images under it, fix the path, or pass "
                "allow_outside_root=True if the file is trusted",
            )
        return joined


def _warn_duplicates(file_label: str, id_name: str, ids: Iterable[Any]) -> None:
    counts = Counter(ids)
    duplicates = [i for i, c in counts.items() if c > 1]
    if duplicates:
        shown = ", ".join(repr(d) for d in duplicates[:10]) + (" ..." if len(duplicates) > 10 else "")
        logger.warning("%s: %d %s value(s) occur more than once: %s (all entries are kept; ids should be unique)",
                       file_label, len(duplicates), id_name, shown)


def _read_json_files(files: PathLike | Sequence[PathLike], layout: str) -> list[tuple[PathLike, int, Any]]:
    """``(file, index in file, entry)`` for the top-level lists of one or several JSON files (X-VLM passes lists)."""
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    entries: list[tuple[PathLike, int, Any]] = []
    for file in files:
        data = _json_list(file, _load_json(file), None, layout)
        entries.extend((file, index, entry) for index, entry in enumerate(data))
    return entries


def _files_label(files: PathLike | Sequence[PathLike]) -> str:
    if isinstance(files, (str, os.PathLike)):
        return str(files)
    return ", ".join(str(f) for f in files)


def _join(root: PathLike | None, path: str) -> str:
    return str(Path(root) / path) if root is not None else str(path)


def _check_files(rows: list[dict], image_columns: Sequence[str], id_column: str) -> None:
    """Raise :class:`MissingImageError` naming every missing image (first 10 shown) with its example id."""
    exists: dict[str, bool] = {}
    missing: list[str] = []
    for row in rows:
        for column in image_columns:
            path = row[column]
            if path not in exists:
                exists[path] = os.path.isfile(path)
            if not exists[path]:
                missing.append(f"{path} (example {id_column}={row[id_column]!r}, column {column!r})")
    if missing:
        shown = "\n  ".join(missing[:10])
        more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise MissingImageError(f"{len(missing)} image file(s) not found:\n  {shown}{more}")


def _finish(
    rows: list[dict],
    features: datasets.Features,
    image_columns: Sequence[str],
    id_column: str,
    check_files: bool,
    decode_images: bool,
) -> datasets.Dataset:
    if check_files:
        _check_files(rows, image_columns, id_column)
    dataset = datasets.Dataset.from_list(rows, features=features)
    if decode_images:
        dataset = dataset.with_transform(LazyImageDecoder(image_columns, id_column))
    return dataset


def _id_column_values(values: list[Any]) -> tuple[list[Any], datasets.Value]:
    """Keep integer ids as int64; otherwise store every id as a string."""
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return values, datasets.Value("int64")
    return [None if v is None else str(v) for v in values], datasets.Value("string")


def _dense_ids(keys: Iterable[Any]) -> list[int]:
    """0, 1, 2, ... in order of first appearance (X-VLM's ``img_ids``)."""
    mapping: dict[Any, int] = {}
    return [mapping.setdefault(k, len(mapping)) for k in keys]


_STR = datasets.Value("string")
_INT = datasets.Value("int64")
_STR_LIST = datasets.List(datasets.Value("string"))


# ------------------------------------------------------------------------------------------- X-VLM formats


_ANSWER_FIX = ('write every answer as a string ("2", not 2): the official VQA files have only strings, so a number '
               "or null usually means a preprocessing tool converted the answers")
_QUESTION_FIX = "every entry needs its question text; fix or drop the entry"


def load_xvlm_vqa(
    ann_files: PathLike | Sequence[PathLike],
    vqa_root: PathLike | None,
    vg_root: PathLike | None = None,
    gqa_root: PathLike | None = None,
    check_files: bool = True,
    decode_images: bool = True,
    allow_outside_root: bool = False,
) -> datasets.Dataset:
    """X-VLM VQA files: ``[{"image", "question", "question_id", "answer", "dataset"}, ...]``.

    ``answer`` is a non-empty list of annotator answers (strings) for VQA entries, a single string for Visual
    Genome entries (``"dataset": "vg"``), and absent in test files. Image paths are joined to ``vqa_root``,
    ``vg_root`` or ``gqa_root`` according to ``dataset`` (default ``"vqa"``) and must stay inside it unless
    ``allow_outside_root``; GQA paths are used as they are when ``gqa_root`` is None (as X-VLM does). Entries
    are validated as the module docstring says (:class:`AnnotationError`); repeated ``question_id`` values
    are logged as a warning.

    Columns: ``image``, ``question`` (raw text), ``answers`` (list, empty for test entries),
    ``question_id`` (the entry's index when absent; int64 when all ids are integers, else string),
    ``dataset``.
    """
    roots = {"vqa": vqa_root, "vg": vg_root, "gqa": gqa_root}
    paths = {name: _ImagePaths(root, allow_outside_root, f"{name}_root") for name, root in roots.items()}
    rows = []
    for position, (file, index, data) in enumerate(_read_json_files(ann_files, "a JSON list of VQA questions")):
        entry = _Entry(file, index, data, id_key="question_id")
        source = entry.get("dataset", "vqa")
        if source not in roots:
            raise entry.error("dataset", f"is {_short(source)}", "use 'vqa', 'vg' or 'gqa' (or leave it out: 'vqa')")
        if source == "vg" and vg_root is None:
            raise entry.error("dataset", "is 'vg' (a Visual Genome entry)",
                              "pass vg_root, the Visual Genome image folder")
        answers = entry.strings(
            "answer", _ANSWER_FIX, allow_single=True,
            empty_fix="give the annotators' answers, or leave the key out for test questions",
        ) if entry.has("answer") else []
        rows.append(
            {
                "image": paths[source].join(entry, "image"),
                "question": entry.text("question", _QUESTION_FIX),
                "answers": answers,
                "question_id": entry.identifier("question_id", position),
                "dataset": source,
            }
        )
    _warn_duplicates(_files_label(ann_files), "question_id", (r["question_id"] for r in rows))
    ids, id_feature = _id_column_values([r["question_id"] for r in rows])
    for row, qid in zip(rows, ids):
        row["question_id"] = qid
    features = datasets.Features(
        {"image": _STR, "question": _STR, "answers": _STR_LIST, "question_id": id_feature, "dataset": _STR}
    )
    return _finish(rows, features, ["image"], "question_id", check_files, decode_images)


def _image_id(entry: _Entry, required: bool) -> Any:
    if required:
        value = entry.require("image_id", "pair files give every caption its image's id (e.g. 'coco_391895')")
    else:
        value = entry.get("image_id")
        if value is None:
            return None
    if not _is_id(value):
        raise entry.error("image_id", f"is {_short(value)}, not an integer or a non-blank string",
                          "give the image's id (e.g. 'coco_391895' or 391895)")
    return value


def load_xvlm_caption_pairs(
    ann_files: PathLike | Sequence[PathLike],
    image_root: PathLike | None,
    check_files: bool = True,
    decode_images: bool = True,
    allow_outside_root: bool = False,
) -> datasets.Dataset:
    """X-VLM image-caption pairs (``coco_train.json``, ``flickr30k_train.json``, captioning train files).

    Format: ``[{"image": path, "caption": str, "image_id": any}, ...]``, one entry per caption (``image_id``
    repeats by design). Entries are validated as the module docstring says; image paths must stay inside
    ``image_root`` unless ``allow_outside_root``.
    Columns: ``image``, ``caption``, ``image_id`` (string), ``image_idx`` (0, 1, ... per distinct ``image_id``
    in order of appearance: the positives key for contrastive training), ``example_id`` (row index).
    """
    paths = _ImagePaths(image_root, allow_outside_root)
    rows = []
    for position, (file, index, data) in enumerate(_read_json_files(ann_files, "a JSON list of image-caption pairs")):
        entry = _Entry(file, index, data)
        if isinstance(entry.get("caption"), list):
            raise entry.error("caption", "is a list", "pair files have one caption per entry; files with every "
                                                      "caption of an image load with load_xvlm_caption_groups")
        rows.append(
            {
                "image": paths.join(entry, "image"),
                "caption": entry.text("caption", "every entry needs its caption text; fix or drop the entry"),
                "image_id": str(_image_id(entry, required=True)),
                "example_id": position,
            }
        )
    for row, idx in zip(rows, _dense_ids(r["image_id"] for r in rows)):
        row["image_idx"] = idx
    features = datasets.Features(
        {"image": _STR, "caption": _STR, "image_id": _STR, "image_idx": _INT, "example_id": _INT}
    )
    return _finish(rows, features, ["image"], "example_id", check_files, decode_images)


_COCO_ID = re.compile(r"_(\d+)\.\w+$")


def load_xvlm_caption_groups(
    ann_files: PathLike | Sequence[PathLike],
    image_root: PathLike | None,
    check_files: bool = True,
    decode_images: bool = True,
    allow_outside_root: bool = False,
) -> datasets.Dataset:
    """X-VLM evaluation files with all captions of an image (``coco_test.json``, ``coco_val.json``, ...).

    Format: ``[{"image": path, "caption": [str, ...]}, ...]`` (an ``image_id`` key is used when present,
    otherwise the number at the end of a COCO file name, otherwise the file stem). Entries are validated as
    the module docstring says; image paths must stay inside ``image_root`` unless ``allow_outside_root``; a
    repeated ``image_id`` is logged as a warning.
    Columns: ``image``, ``captions``, ``image_id`` (string), ``image_idx`` (row index). Use
    :func:`retrieval_targets` for the flattened texts and gold indices.
    """
    paths = _ImagePaths(image_root, allow_outside_root)
    rows = []
    for position, (file, index, data) in enumerate(_read_json_files(ann_files, "a JSON list of images")):
        entry = _Entry(file, index, data, id_key="image_id")
        image = paths.join(entry, "image")
        captions = entry.strings("caption", "give the image's captions as a list of strings", allow_single=True)
        for k, caption in enumerate(captions):
            if not caption.strip():
                raise entry.error("caption", f"item {k} is blank", "remove empty captions from the list")
        image_id = _image_id(entry, required=False)
        if image_id is None:
            match = _COCO_ID.search(entry.get("image"))
            image_id = str(int(match.group(1))) if match else Path(entry.get("image")).stem
        rows.append({"image": image, "captions": list(captions), "image_id": str(image_id), "image_idx": position})
    _warn_duplicates(_files_label(ann_files), "image_id", (r["image_id"] for r in rows))
    features = datasets.Features({"image": _STR, "captions": _STR_LIST, "image_id": _STR, "image_idx": _INT})
    return _finish(rows, features, ["image"], "image_id", check_files, decode_images)


def _label(entry: _Entry) -> int:
    value = entry.require("label", 'give the statement\'s truth value: "True" or "False"')
    try:
        return to_binary_label(value)
    except ValueError as err:
        raise entry.error("label", f"is {_short(value)}", 'use "True" or "False" (or true/false, 1/0)') from err


def load_xvlm_nlvr2(
    ann_files: PathLike | Sequence[PathLike],
    image_root: PathLike | None,
    check_files: bool = True,
    decode_images: bool = True,
    allow_outside_root: bool = False,
) -> datasets.Dataset:
    """X-VLM NLVR2 files: ``[{"images": [left, right], "sentence": str, "label": "True" | "False"}, ...]``.

    Entries are validated as the module docstring says; image paths must stay inside ``image_root`` unless
    ``allow_outside_root``; a repeated ``identifier`` is logged as a warning (ids derived from the file names
    repeat by design: one image pair has several statements).
    Columns: ``image_left``, ``image_right``, ``sentence``, ``label`` (1 true / 0 false), ``id`` (the
    ``identifier`` when present, otherwise the left file name without ``-img0.<ext>``, otherwise the index).
    """
    paths = _ImagePaths(image_root, allow_outside_root)
    rows = []
    explicit_ids = []
    for position, (file, index, data) in enumerate(_read_json_files(ann_files, "a JSON list of NLVR2 statements")):
        entry = _Entry(file, index, data, id_key="identifier")
        images = entry.strings("images", "give the two image paths: [left, right]")
        if len(images) != 2:
            raise entry.error("images", f"has {len(images)} paths", "give exactly two image paths: [left, right]")
        left, right = (paths.join(entry, "images", path) for path in images)
        example_id = entry.identifier("identifier", None)
        if example_id is None:
            stem = Path(images[0]).name
            example_id = re.sub(r"-img0\.\w+$", "", stem) if re.search(r"-img0\.\w+$", stem) else str(position)
        else:
            explicit_ids.append(str(example_id))
        rows.append(
            {
                "image_left": left,
                "image_right": right,
                "sentence": entry.text("sentence", "every entry needs its statement; fix or drop the entry"),
                "label": _label(entry),
                "id": str(example_id),
            }
        )
    _warn_duplicates(_files_label(ann_files), "identifier", explicit_ids)
    features = datasets.Features({"image_left": _STR, "image_right": _STR, "sentence": _STR, "label": _INT, "id": _STR})
    return _finish(rows, features, ["image_left", "image_right"], "id", check_files, decode_images)


# ------------------------------------------------------------------------------------------------ VQAv2


def coco_image_filename(image_id: int, split: str) -> str:
    """COCO 2014/2015 file name, e.g. ``COCO_val2014_000000391895.jpg`` for ``(391895, "val2014")``."""
    return f"COCO_{split}_{int(image_id):012d}.jpg"


def _integer(entry: _Entry, field: str, fix: str) -> int:
    value = entry.require(field, fix)
    if isinstance(value, bool) or not isinstance(value, int):
        raise entry.error(field, f"is {type(value).__name__} {_short(value)}, not an integer", fix)
    return value


def load_vqav2(
    questions_file: PathLike,
    annotations_file: PathLike | None,
    image_dir: PathLike,
    split: str | None = None,
    check_files: bool = True,
    decode_images: bool = True,
) -> datasets.Dataset:
    """Official VQAv2 files (``v2_OpenEnded_mscoco_<split>_questions.json`` + ``v2_mscoco_<split>_annotations.json``).

    Args:
        questions_file: ``{"questions": [{"image_id", "question", "question_id"}, ...], "data_subtype": ...}``.
        annotations_file: ``{"annotations": [{"question_id", "image_id", "answers": [{"answer", ...}] * 10,
            "multiple_choice_answer", "answer_type", "question_type"}, ...]}``; None for test questions.
        image_dir: the folder holding the COCO images of this split (``COCO_<split>_<image_id:012d>.jpg``).
        split: COCO image split such as ``"val2014"``; defaults to the questions file's ``data_subtype``.

    Entries are validated as the module docstring says (ids must be integers, answers strings); a
    ``question_id`` repeated in either file is logged as a warning (the last annotation of a repeated id wins).

    Columns: ``image``, ``question``, ``question_id``, ``image_id``, ``answers`` (the 10 raw annotator
    answers; empty without annotations), ``multiple_choice_answer``, ``answer_type``, ``question_type``.
    """
    questions_data = _load_json(questions_file)
    questions = _json_list(questions_file, questions_data, "questions",
                           'a VQAv2 questions file: {"questions": [...], "data_subtype": ...}')
    split = split or questions_data.get("data_subtype")
    if not split:
        raise ValueError(f"{questions_file} has no data_subtype; pass split (e.g. 'val2014')")
    annotations: dict[int, _Entry] = {}
    if annotations_file is not None:
        data = _json_list(annotations_file, _load_json(annotations_file), "annotations",
                          'a VQAv2 annotations file: {"annotations": [...]}')
        entries = [_Entry(annotations_file, i, a, id_key="question_id", what="annotation") for i, a in enumerate(data)]
        ids = [_integer(e, "question_id", "give the annotation its question's integer id") for e in entries]
        _warn_duplicates(str(annotations_file), "question_id", ids)
        annotations = dict(zip(ids, entries))
    rows = []
    for index, data in enumerate(questions):
        question = _Entry(questions_file, index, data, id_key="question_id", what="question")
        question_id = _integer(question, "question_id", "give every question its integer id")
        image_id = _integer(question, "image_id", "give the COCO image id of the question (an integer)")
        text = question.text("question", _QUESTION_FIX)
        ann = annotations.get(question_id)
        if annotations_file is not None and ann is None:
            raise AnnotationError(f"{question.where()} has no annotation in {annotations_file}; use the "
                                  "annotations file of the same split (or None for test questions)")
        answers: list[str] = []
        extra = {"multiple_choice_answer": "", "answer_type": "", "question_type": ""}
        if ann is not None:
            answer_dicts = ann.require("answers", "give the annotators' answers: [{\"answer\": ...}, ...]")
            if not isinstance(answer_dicts, list) or not answer_dicts:
                raise ann.error("answers", f"is {_short(answer_dicts)}",
                                'give a non-empty list of the annotators\' answers: [{"answer": ...}, ...]')
            for k, answer in enumerate(answer_dicts):
                value = answer.get("answer") if isinstance(answer, dict) else answer
                if not isinstance(value, str):
                    raise ann.error("answers", f"item {k} has answer {_short(value)}, not a string",
                                    _ANSWER_FIX + ' (each item is {"answer": "...", ...})')
                answers.append(value)
            for field in extra:
                value = ann.get(field, "")
                if not isinstance(value, str):
                    raise ann.error(field, f"is {_short(value)}, not a string", "give it as a string or leave it out")
                extra[field] = value
        rows.append(
            {
                "image": str(Path(image_dir) / coco_image_filename(image_id, split)),
                "question": text,
                "question_id": question_id,
                "image_id": image_id,
                "answers": answers,
                **extra,
            }
        )
    _warn_duplicates(str(questions_file), "question_id", (r["question_id"] for r in rows))
    features = datasets.Features(
        {
            "image": _STR,
            "question": _STR,
            "question_id": _INT,
            "image_id": _INT,
            "answers": _STR_LIST,
            "multiple_choice_answer": _STR,
            "answer_type": _STR,
            "question_type": _STR,
        }
    )
    return _finish(rows, features, ["image"], "question_id", check_files, decode_images)


def build_answer_vocabulary(answers: Iterable[str], size: int | None = 3129, min_count: int = 1) -> list[str]:
    """The ``size`` most frequent answers after VQA normalisation (ties: alphabetical), most frequent first.

    Pass the ``multiple_choice_answer`` column of the training questions (the usual 3,129-answer VQAv2
    vocabulary is built this way from train+val). ``size=None`` keeps every answer seen ``min_count`` times.
    Use ``label2id = {a: i for i, a in enumerate(vocab)}``; the keys are normalised answers.
    """
    counts = Counter(normalize_answer(a) for a in answers)
    counts.pop("", None)
    ranked = sorted((a for a, c in counts.items() if c >= min_count), key=lambda a: (-counts[a], a))
    return ranked if size is None else ranked[:size]


# ----------------------------------------------------------------------------------------------- Karpathy


def load_karpathy(
    dataset_json: PathLike,
    image_root: PathLike,
    splits: str | Sequence[str] = "test",
    one_row_per_caption: bool = False,
    check_files: bool = True,
    decode_images: bool = True,
    allow_outside_root: bool = False,
) -> datasets.Dataset:
    """Karpathy split files (``dataset_coco.json``, ``dataset_flickr30k.json``).

    Format: ``{"images": [{"filepath", "filename", "split", "sentences": [{"raw", "tokens", ...}], "cocoid" |
    "imgid", ...}]}``. The image path is ``image_root / filepath / filename`` (``filepath`` is absent for
    Flickr30k) and must stay inside ``image_root`` unless ``allow_outside_root``. ``splits`` selects
    ``"train"``, ``"restval"``, ``"val"``, ``"test"`` (the usual training set is ``("train", "restval")``);
    selecting no image is an error that lists the file's splits. The selected images are validated as the
    module docstring says; a repeated image id is logged as a warning.

    Columns: ``image``, ``captions`` (raw sentences), ``image_id`` (``cocoid``, else ``imgid``),
    ``image_idx`` (0.. in file order of the selected images), ``split``; with ``one_row_per_caption`` also
    ``caption`` and ``sentid``, one row per sentence.
    """
    wanted = {splits} if isinstance(splits, str) else set(splits)
    images = _json_list(dataset_json, _load_json(dataset_json), "images", 'a Karpathy split file: {"images": [...]}')
    paths = _ImagePaths(image_root, allow_outside_root)
    rows = []
    image_ids = []
    present: set[str] = set()
    image_idx = 0
    for index, data in enumerate(images):
        entry = _Entry(dataset_json, index, data, id_key="cocoid" if isinstance(data, dict) and "cocoid" in data
                       else "imgid", what="image")
        split = entry.text("split", "give the image's split: train, restval, val or test")
        present.add(split)
        if split not in wanted:
            continue
        filename = entry.text("filename", "give the image's file name")
        filepath = entry.get("filepath", "")
        if not isinstance(filepath, str):
            raise entry.error("filepath", f"is {_short(filepath)}, not a string",
                              "give the image's folder or leave it out")
        path = paths.join(entry, "filename", os.path.join(filepath, filename))
        id_field = "cocoid" if entry.has("cocoid") else "imgid"
        image_id = _integer(entry, id_field, "give the image's integer id (cocoid for COCO, imgid for Flickr30k)")
        sentences = entry.require("sentences", "give the image's captions: [{\"raw\": ...}, ...]")
        if not isinstance(sentences, list) or not sentences:
            raise entry.error("sentences", f"is {_short(sentences)}",
                              'give a non-empty list of captions: [{"raw": "...", "sentid": ...}, ...]')
        captions = []
        for k, sentence in enumerate(sentences):
            raw = sentence.get("raw") if isinstance(sentence, dict) else None
            if not isinstance(raw, str) or not raw.strip():
                raise entry.error("sentences", f"item {k} has no caption text ('raw' is {_short(raw)})",
                                  'each item is {"raw": "the caption", ...}')
            captions.append(raw.strip())
        image_ids.append(image_id)
        base = {"image": path, "captions": captions, "image_id": image_id, "image_idx": image_idx, "split": split}
        if one_row_per_caption:
            for k, sentence in enumerate(sentences):
                rows.append({**base, "caption": captions[k], "sentid": int(sentence.get("sentid", k))})
        else:
            rows.append(base)
        image_idx += 1
    if not rows:
        raise AnnotationError(f"{dataset_json}: no image of split(s) {sorted(wanted)}; the file has splits "
                              f"{sorted(present)} (the usual training set is ('train', 'restval'))")
    _warn_duplicates(str(dataset_json), "image id", image_ids)
    spec = {"image": _STR, "captions": _STR_LIST, "image_id": _INT, "image_idx": _INT, "split": _STR}
    if one_row_per_caption:
        spec.update({"caption": _STR, "sentid": _INT})
    return _finish(rows, datasets.Features(spec), ["image"], "image_id", check_files, decode_images)


# ---------------------------------------------------------------------------------------------- NLVR2


def load_nlvr2(
    jsonl_file: PathLike,
    image_root: PathLike,
    check_files: bool = True,
    decode_images: bool = True,
    allow_outside_root: bool = False,
) -> datasets.Dataset:
    """Official NLVR2 JSON-lines files (``train.json``, ``dev.json``, ``test1.json``).

    Each line holds ``identifier`` (``split-set_id-pair_id-sentence_id``), ``sentence``, ``label``
    (``"True"``/``"False"``), ``left_url``, ``right_url``, ``directory`` (train only) and more. The images are
    ``<split>-<set_id>-<pair_id>-img0.png`` (left) and ``-img1.png`` (right), looked up in
    ``image_root/<directory>/`` first (the layout of the released train images) and then in ``image_root/``;
    they must stay inside ``image_root`` unless ``allow_outside_root``. Lines are validated as the module
    docstring says (errors name ``file:line``); a repeated ``identifier`` is logged as a warning.

    Columns: ``image_left``, ``image_right``, ``sentence``, ``label`` (1/0), ``id`` (the identifier).
    """
    rows = []
    root = Path(image_root)
    paths = _ImagePaths(image_root, allow_outside_root)
    for line_number, line in enumerate(_read_text(jsonl_file).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as err:
            raise AnnotationError(f"{jsonl_file}:{line_number}: not a JSON object ({err.msg} at column {err.colno}); "
                                  "NLVR2 files hold one JSON object per line") from err
        entry = _Entry(jsonl_file, line_number, data, id_key="identifier", what="line")
        identifier = entry.text("identifier", "give the statement's identifier: split-set_id-pair_id-sentence_id")
        if identifier.count("-") < 3:
            raise entry.error("identifier", f"is {identifier!r}", "use the form split-set_id-pair_id-sentence_id "
                                                                  "(e.g. 'dev-850-0-1'): it names the image files")
        stem = identifier.rsplit("-", 1)[0]
        directory = entry.get("directory")
        if directory is not None and (isinstance(directory, bool) or not isinstance(directory, (int, str))):
            raise entry.error("directory", f"is {_short(directory)}", "give the image folder's name or number")
        folders = [root / str(directory), root] if directory is not None else [root]
        image_paths = []
        for side in ("img0", "img1"):
            candidates = [folder / f"{stem}-{side}.png" for folder in folders]
            chosen = next((c for c in candidates if c.is_file()), candidates[-1])
            field = "identifier" if directory is None else "directory"
            image_paths.append(paths.join(entry, field, os.path.relpath(chosen, root)))
        rows.append(
            {
                "image_left": image_paths[0],
                "image_right": image_paths[1],
                "sentence": entry.text("sentence", "every line needs its statement; fix or drop the line"),
                "label": _label(entry),
                "id": identifier,
            }
        )
    if not rows:
        raise AnnotationError(f"{jsonl_file}: the file has no statements; an empty annotation file is not loaded "
                              "(check the path, or that the download finished)")
    _warn_duplicates(str(jsonl_file), "identifier", (r["id"] for r in rows))
    features = datasets.Features({"image_left": _STR, "image_right": _STR, "sentence": _STR, "label": _INT, "id": _STR})
    return _finish(rows, features, ["image_left", "image_right"], "id", check_files, decode_images)


# ------------------------------------------------------------------------------------------ retrieval eval


def retrieval_targets(
    dataset: datasets.Dataset, captions_column: str = "captions"
) -> tuple[list[str], list[int], list[list[int]]]:
    """Flatten a one-row-per-image dataset into ``(texts, txt2img, img2txt)`` for :func:`retrieval_recall`.

    Text ``j`` is the ``k``-th caption of row ``i`` in row order; images are never decoded.
    """
    texts: list[str] = []
    txt2img: list[int] = []
    img2txt: list[list[int]] = []
    for i, captions in enumerate(dataset.with_format(None)[captions_column]):
        img2txt.append(list(range(len(texts), len(texts) + len(captions))))
        texts.extend(captions)
        txt2img.extend([i] * len(captions))
    return texts, txt2img, img2txt
