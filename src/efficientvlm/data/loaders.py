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
"""

from __future__ import annotations

import json
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


class MissingImageError(FileNotFoundError):
    """An image referenced by an annotation file does not exist (the message names the path and example id)."""


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


def _read_json_files(files: PathLike | Sequence[PathLike]) -> list[dict]:
    """Concatenate the top-level lists of one or several JSON files (X-VLM passes lists of files)."""
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    entries: list[dict] = []
    for file in files:
        with open(file, encoding="utf-8") as handle:
            data = json.load(handle)
        if not isinstance(data, list):
            raise ValueError(f"{file}: expected a JSON list of examples, got {type(data).__name__}")
        entries.extend(data)
    return entries


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


def load_xvlm_vqa(
    ann_files: PathLike | Sequence[PathLike],
    vqa_root: PathLike | None,
    vg_root: PathLike | None = None,
    gqa_root: PathLike | None = None,
    check_files: bool = True,
    decode_images: bool = True,
) -> datasets.Dataset:
    """X-VLM VQA files: ``[{"image", "question", "question_id", "answer", "dataset"}, ...]``.

    ``answer`` is a list of annotator answers for VQA entries, a single string for Visual Genome entries
    (``"dataset": "vg"``), and absent in test files. Image paths are joined to ``vqa_root``, ``vg_root`` or
    ``gqa_root`` according to ``dataset`` (default ``"vqa"``); GQA paths are used as they are when
    ``gqa_root`` is None (as X-VLM does).

    Columns: ``image``, ``question`` (raw text), ``answers`` (list, empty for test entries),
    ``question_id`` (int64 when all ids are integers, else string), ``dataset``.
    """
    roots = {"vqa": vqa_root, "vg": vg_root, "gqa": gqa_root}
    rows = []
    for index, entry in enumerate(_read_json_files(ann_files)):
        source = entry.get("dataset", "vqa")
        if source not in roots:
            raise ValueError(f"entry {index}: unknown dataset {source!r} (expected vqa, vg or gqa)")
        if source == "vg" and vg_root is None:
            raise ValueError("the annotations contain Visual Genome entries; pass vg_root")
        answers = entry.get("answer", [])
        rows.append(
            {
                "image": _join(roots[source], entry["image"]),
                "question": entry["question"],
                "answers": [answers] if isinstance(answers, str) else list(answers),
                "question_id": entry.get("question_id", index),
                "dataset": source,
            }
        )
    ids, id_feature = _id_column_values([r["question_id"] for r in rows])
    for row, qid in zip(rows, ids):
        row["question_id"] = qid
    features = datasets.Features(
        {"image": _STR, "question": _STR, "answers": _STR_LIST, "question_id": id_feature, "dataset": _STR}
    )
    return _finish(rows, features, ["image"], "question_id", check_files, decode_images)


def load_xvlm_caption_pairs(
    ann_files: PathLike | Sequence[PathLike],
    image_root: PathLike | None,
    check_files: bool = True,
    decode_images: bool = True,
) -> datasets.Dataset:
    """X-VLM image-caption pairs (``coco_train.json``, ``flickr30k_train.json``, captioning train files).

    Format: ``[{"image": path, "caption": str, "image_id": any}, ...]``, one entry per caption.
    Columns: ``image``, ``caption``, ``image_id`` (string), ``image_idx`` (0, 1, ... per distinct ``image_id``
    in order of appearance: the positives key for contrastive training), ``example_id`` (row index).
    """
    rows = []
    entries = _read_json_files(ann_files)
    for index, (entry, idx) in enumerate(zip(entries, _dense_ids(str(e["image_id"]) for e in entries))):
        if not isinstance(entry["caption"], str):
            raise ValueError(f"entry {index}: 'caption' must be a string (grouped files: load_xvlm_caption_groups)")
        rows.append(
            {
                "image": _join(image_root, entry["image"]),
                "caption": entry["caption"],
                "image_id": str(entry["image_id"]),
                "image_idx": idx,
                "example_id": index,
            }
        )
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
) -> datasets.Dataset:
    """X-VLM evaluation files with all captions of an image (``coco_test.json``, ``coco_val.json``, ...).

    Format: ``[{"image": path, "caption": [str, ...]}, ...]`` (an ``image_id`` key is used when present,
    otherwise the number at the end of a COCO file name, otherwise the file stem).
    Columns: ``image``, ``captions``, ``image_id`` (string), ``image_idx`` (row index). Use
    :func:`retrieval_targets` for the flattened texts and gold indices.
    """
    rows = []
    for index, entry in enumerate(_read_json_files(ann_files)):
        captions = entry["caption"]
        if isinstance(captions, str):
            captions = [captions]
        image_id = entry.get("image_id")
        if image_id is None:
            match = _COCO_ID.search(entry["image"])
            image_id = str(int(match.group(1))) if match else Path(entry["image"]).stem
        rows.append(
            {
                "image": _join(image_root, entry["image"]),
                "captions": list(captions),
                "image_id": str(image_id),
                "image_idx": index,
            }
        )
    features = datasets.Features({"image": _STR, "captions": _STR_LIST, "image_id": _STR, "image_idx": _INT})
    return _finish(rows, features, ["image"], "image_id", check_files, decode_images)


def load_xvlm_nlvr2(
    ann_files: PathLike | Sequence[PathLike],
    image_root: PathLike | None,
    check_files: bool = True,
    decode_images: bool = True,
) -> datasets.Dataset:
    """X-VLM NLVR2 files: ``[{"images": [left, right], "sentence": str, "label": "True" | "False"}, ...]``.

    Columns: ``image_left``, ``image_right``, ``sentence``, ``label`` (1 true / 0 false), ``id`` (the
    ``identifier`` when present, otherwise the left file name without ``-img0.<ext>``, otherwise the index).
    """
    rows = []
    for index, entry in enumerate(_read_json_files(ann_files)):
        left, right = entry["images"]
        example_id = entry.get("identifier")
        if example_id is None:
            stem = Path(left).name
            example_id = re.sub(r"-img0\.\w+$", "", stem) if re.search(r"-img0\.\w+$", stem) else str(index)
        rows.append(
            {
                "image_left": _join(image_root, left),
                "image_right": _join(image_root, right),
                "sentence": entry["sentence"],
                "label": to_binary_label(entry["label"]),
                "id": str(example_id),
            }
        )
    features = datasets.Features({"image_left": _STR, "image_right": _STR, "sentence": _STR, "label": _INT, "id": _STR})
    return _finish(rows, features, ["image_left", "image_right"], "id", check_files, decode_images)


# ------------------------------------------------------------------------------------------------ VQAv2


def coco_image_filename(image_id: int, split: str) -> str:
    """COCO 2014/2015 file name, e.g. ``COCO_val2014_000000391895.jpg`` for ``(391895, "val2014")``."""
    return f"COCO_{split}_{int(image_id):012d}.jpg"


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

    Columns: ``image``, ``question``, ``question_id``, ``image_id``, ``answers`` (the 10 raw annotator
    answers; empty without annotations), ``multiple_choice_answer``, ``answer_type``, ``question_type``.
    """
    with open(questions_file, encoding="utf-8") as handle:
        questions = json.load(handle)
    split = split or questions.get("data_subtype")
    if not split:
        raise ValueError("the questions file has no data_subtype; pass split (e.g. 'val2014')")
    annotations: dict[int, dict] = {}
    if annotations_file is not None:
        with open(annotations_file, encoding="utf-8") as handle:
            annotations = {a["question_id"]: a for a in json.load(handle)["annotations"]}
    rows = []
    for q in questions["questions"]:
        ann = annotations.get(q["question_id"])
        if annotations_file is not None and ann is None:
            raise ValueError(f"question_id {q['question_id']} has no annotation in {annotations_file}")
        rows.append(
            {
                "image": str(Path(image_dir) / coco_image_filename(q["image_id"], split)),
                "question": q["question"],
                "question_id": int(q["question_id"]),
                "image_id": int(q["image_id"]),
                "answers": [a["answer"] for a in ann["answers"]] if ann else [],
                "multiple_choice_answer": ann.get("multiple_choice_answer", "") if ann else "",
                "answer_type": ann.get("answer_type", "") if ann else "",
                "question_type": ann.get("question_type", "") if ann else "",
            }
        )
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
) -> datasets.Dataset:
    """Karpathy split files (``dataset_coco.json``, ``dataset_flickr30k.json``).

    Format: ``{"images": [{"filepath", "filename", "split", "sentences": [{"raw", "tokens", ...}], "cocoid" |
    "imgid", ...}]}``. The image path is ``image_root / filepath / filename`` (``filepath`` is absent for
    Flickr30k). ``splits`` selects ``"train"``, ``"restval"``, ``"val"``, ``"test"`` (the usual training set is
    ``("train", "restval")``).

    Columns: ``image``, ``captions`` (raw sentences), ``image_id`` (``cocoid``, else ``imgid``),
    ``image_idx`` (0.. in file order of the selected images), ``split``; with ``one_row_per_caption`` also
    ``caption`` and ``sentid``, one row per sentence.
    """
    wanted = {splits} if isinstance(splits, str) else set(splits)
    with open(dataset_json, encoding="utf-8") as handle:
        images = json.load(handle)["images"]
    rows = []
    image_idx = 0
    for entry in images:
        if entry["split"] not in wanted:
            continue
        path = Path(image_root) / entry.get("filepath", "") / entry["filename"]
        image_id = int(entry.get("cocoid", entry.get("imgid")))
        captions = [s["raw"].strip() for s in entry["sentences"]]
        base = {
            "image": str(path),
            "captions": captions,
            "image_id": image_id,
            "image_idx": image_idx,
            "split": entry["split"],
        }
        if one_row_per_caption:
            for k, sentence in enumerate(entry["sentences"]):
                rows.append({**base, "caption": captions[k], "sentid": int(sentence.get("sentid", k))})
        else:
            rows.append(base)
        image_idx += 1
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
) -> datasets.Dataset:
    """Official NLVR2 JSON-lines files (``train.json``, ``dev.json``, ``test1.json``).

    Each line holds ``identifier`` (``split-set_id-pair_id-sentence_id``), ``sentence``, ``label``
    (``"True"``/``"False"``), ``left_url``, ``right_url``, ``directory`` (train only) and more. The images are
    ``<split>-<set_id>-<pair_id>-img0.png`` (left) and ``-img1.png`` (right), looked up in
    ``image_root/<directory>/`` first (the layout of the released train images) and then in ``image_root/``.

    Columns: ``image_left``, ``image_right``, ``sentence``, ``label`` (1/0), ``id`` (the identifier).
    """
    rows = []
    root = Path(image_root)
    with open(jsonl_file, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{jsonl_file}:{line_number}: not a JSON object ({err})") from err
            identifier = entry["identifier"]
            stem = identifier.rsplit("-", 1)[0]
            folders = [root / str(entry["directory"]), root] if "directory" in entry else [root]
            paths = []
            for side in ("img0", "img1"):
                candidates = [folder / f"{stem}-{side}.png" for folder in folders]
                paths.append(str(next((c for c in candidates if c.is_file()), candidates[-1])))
            rows.append(
                {
                    "image_left": paths[0],
                    "image_right": paths[1],
                    "sentence": entry["sentence"],
                    "label": to_binary_label(entry["label"]),
                    "id": identifier,
                }
            )
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
