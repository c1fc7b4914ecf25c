"""Tests of efficientvlm.data: the shapes benchmark, the annotation loaders and the collators."""

import json
import logging
import re
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from efficientvlm.data import (
    AnnotationError,
    CaptioningCollator,
    MissingImageError,
    NLVR2Collator,
    RetrievalCollator,
    ShapesConfig,
    VQACollator,
    answer_vocabulary,
    build_answer_vocabulary,
    coco_image_filename,
    load_karpathy,
    load_nlvr2,
    load_vqav2,
    load_xvlm_caption_groups,
    load_xvlm_caption_pairs,
    load_xvlm_nlvr2,
    load_xvlm_vqa,
    make_caption_dataset,
    make_nlvr2_dataset,
    make_vqa_dataset,
    retrieval_targets,
    vqa_soft_labels,
)
from efficientvlm.data.shapes import Scene, render_scene
from efficientvlm.metrics import retrieval_recall

# ------------------------------------------------------------------------------------------------ shapes

CONFIG = ShapesConfig(image_size=32)


@pytest.fixture(scope="module")
def vqa_data():
    return make_vqa_dataset(300, split_seed="train", config=CONFIG)


def _raw_rows(dataset, image_columns):
    """Rows with images as PNG bytes (no decoding), for exact comparisons."""
    from datasets import Image as ImageFeature

    for column in image_columns:
        dataset = dataset.cast_column(column, ImageFeature(decode=False))
    return dataset.to_list()


def test_shapes_same_seed_identical_other_seed_different():
    a = _raw_rows(make_vqa_dataset(12, 0, CONFIG), ["image"])
    b = _raw_rows(make_vqa_dataset(12, 0, CONFIG), ["image"])
    assert a == b
    other_split = _raw_rows(make_vqa_dataset(12, 1, CONFIG), ["image"])
    other_seed = _raw_rows(make_vqa_dataset(12, 0, ShapesConfig(image_size=32, seed=1)), ["image"])
    assert [r["image"] for r in a] != [r["image"] for r in other_split]
    assert [r["scene"] for r in a] != [r["scene"] for r in other_seed]
    # Examples are independent of n: a prefix is the same data.
    assert _raw_rows(make_vqa_dataset(5, 0, CONFIG), ["image"]) == a[:5]
    n1 = _raw_rows(make_nlvr2_dataset(6, 3, CONFIG), ["image_left", "image_right"])
    assert n1 == _raw_rows(make_nlvr2_dataset(6, 3, CONFIG), ["image_left", "image_right"])
    c1 = make_caption_dataset(6, 3, CONFIG)
    assert c1["captions"] == make_caption_dataset(6, 3, CONFIG)["captions"]
    assert c1["captions"] != make_caption_dataset(6, 4, CONFIG)["captions"]


def test_shapes_vqa_schema_and_vocabulary(vqa_data):
    row = vqa_data[0]
    assert isinstance(row["image"], Image.Image) and row["image"].size == (32, 32)
    assert set(vqa_data.column_names) >= {"image", "question", "answers", "answer", "question_type"}
    vocab = set(answer_vocabulary(CONFIG))
    assert len(vocab) == len(answer_vocabulary(CONFIG))
    for answer, answers in zip(vqa_data["answer"], vqa_data["answers"]):
        assert answer in vocab
        assert answers == [answer] * 10
    assert set(vqa_data["question_type"]) == {"color", "shape", "count", "exist", "position"}
    shared = make_vqa_dataset(7, 0, CONFIG, questions_per_image=3)
    assert shared["image_id"] == [0, 0, 0, 1, 1, 1, 2] and shared["question_id"] == list(range(7))
    assert len(set(shared["question"][:3])) == 3 and len(set(shared["scene"][:3])) == 1
    yes_no = Counter(a for a in vqa_data["answer"] if a in ("yes", "no"))
    assert 0.35 < yes_no["yes"] / sum(yes_no.values()) < 0.65


def _matches(o, color=None, shape=None, size=None):
    return (
        (color is None or o.color == color) and (shape is None or o.shape == shape) and (size is None or o.size == size)
    )


def _resolve(scene, description):
    """Objects matching a description such as 'red object', 'circle', 'red circle', 'large square'."""
    words = description.replace(" object", "").split()
    kwargs = {}
    for w in words:
        key = (
            "color"
            if w in ("red", "green", "blue", "yellow", "purple", "orange")
            else "size"
            if w in ("small", "large")
            else "shape"
        )
        kwargs[key] = w
    return [o for o in scene.objects if _matches(o, **kwargs)]


def test_shapes_vqa_answers_follow_the_scene_graph(vqa_data):
    """Re-derive every answer from the stored scene graph with independent parsing."""
    checked = Counter()
    for row in vqa_data.select_columns(["question", "answer", "question_type", "scene"]).to_list():
        scene = Scene.from_json(row["scene"])
        q, a = row["question"], row["answer"]
        if m := re.fullmatch(r"how many (?:(\w+) )?(\w+?)s are there\?", q):
            color, noun = m.groups()
            shape = None if noun == "object" else noun
            assert a == str(sum(_matches(o, color=color, shape=shape) for o in scene.objects)), q
        elif m := re.fullmatch(r"is there an? (.+)\?", q):
            assert a == ("yes" if _resolve(scene, m.group(1)) else "no"), q
        elif m := re.fullmatch(r"what (color|shape) is the (\w+most) object\?", q):
            attr, word = m.groups()
            coord, sign = {"leftmost": ("x", -1), "rightmost": ("x", 1), "topmost": ("y", -1), "bottommost": ("y", 1)}[
                word
            ]
            ordered = sorted(scene.objects, key=lambda o: sign * getattr(o, coord), reverse=True)
            assert abs(getattr(ordered[0], coord) - getattr(ordered[1], coord)) >= CONFIG.margin
            assert a == getattr(ordered[0], attr), q
        elif m := re.fullmatch(r"what (color|shape) is the (.+?)\?", q):
            attr, description = m.groups()
            targets = _resolve(scene, description)
            assert len(targets) == 1, q  # only asked when unambiguous
            assert a == getattr(targets[0], attr), q
        elif m := re.fullmatch(r"is the (.+) (left of|right of|above|below) the (.+)\?", q):
            da, relation, db = m.groups()
            (oa,), (ob,) = _resolve(scene, da), _resolve(scene, db)
            coord = "x" if relation in ("left of", "right of") else "y"
            delta = getattr(oa, coord) - getattr(ob, coord)
            assert abs(delta) >= CONFIG.margin
            truth = delta < 0 if relation in ("left of", "above") else delta > 0
            assert a == ("yes" if truth else "no"), q
        else:
            pytest.fail(f"unparsed question {q!r}")
        checked[row["question_type"]] += 1
    assert min(checked.values()) > 20


def test_shapes_render_matches_scene():
    """The last-drawn object (never occluded) shows its colour at its centre."""
    config = ShapesConfig(image_size=64, noise_prob=0.0)
    data = make_vqa_dataset(20, 5, config)
    for row in data:
        scene = Scene.from_json(row["scene"])
        top = scene.objects[-1]
        pixel = np.asarray(row["image"])[int(top.y * 64), int(top.x * 64)].astype(int)
        assert np.abs(pixel - np.array(top.rgb)).max() <= 10
        assert np.asarray(render_scene(scene, config)).tobytes() == np.asarray(row["image"]).tobytes()


def test_shapes_captions_describe_the_scene():
    data = make_caption_dataset(40, "validation", CONFIG, captions_per_image=5)
    words = ["zero", "one", "two", "three", "four", "five"]
    for row in data.select_columns(["caption", "captions", "scene", "image_id"]).to_list():
        scene = Scene.from_json(row["scene"])
        assert row["caption"] == row["captions"][0]
        assert len(set(row["captions"])) == len(row["captions"]) >= 3
        groups = Counter((o.color, o.shape) for o in scene.objects)
        for (color, shape), count in groups.items():
            phrase = f"{color} {shape}" if count == 1 else f"{words[count]} {color} {shape}s"
            assert phrase in row["caption"], (row["caption"], groups)
        assert sum(groups.values()) == len(scene.objects)
    flat = make_caption_dataset(10, "validation", CONFIG, captions_per_image=5, one_row_per_caption=True)
    assert len(flat) == sum(len(c) for c in data.select(range(10))["captions"])
    assert flat["caption"][:5] == data[0]["captions"]
    assert set(flat["image_id"][:5]) == {0}


def test_shapes_region_texts_name_one_object_and_its_box():
    config = ShapesConfig(image_size=128, max_objects=4, noise_prob=0.0, color_jitter=0)
    data = make_caption_dataset(30, "train", config, one_row_per_caption=True, regions_per_image=2)
    rows = data.to_list()
    regions = [row for row in rows if row["bbox"] is not None]
    assert len(regions) >= 30 and all(row["caption"].startswith("the ") for row in regions)
    plain = make_caption_dataset(30, "train", config, one_row_per_caption=True)
    assert "bbox" not in plain.column_names  # without region rows, no box column
    assert [{k: v for k, v in row.items() if k != "bbox"} for row in rows if row["bbox"] is None] == plain.to_list()
    for row in regions:
        scene = Scene.from_json(row["scene"])
        words = row["caption"][len("the "):].split()
        named = [o for o in scene.objects
                 if all(w in (o.color, o.shape, o.size) or (w == "object" and len(words) == 2) for w in words)]
        assert len(named) == 1, (row["caption"], scene)
        assert row["bbox"] == pytest.approx(named[0].bbox(), abs=1e-4)
    # the box is the shape's drawn extent: rendered alone, its pixels fill exactly that box (to a pixel)
    for shape in ("circle", "square", "triangle"):
        obj = next(o for row in regions for o in Scene.from_json(row["scene"]).objects if o.shape == shape)
        alone = Scene(objects=[obj], background=(255, 255, 255))
        pixels = np.abs(np.asarray(render_scene(alone, config)).astype(int) - 255).sum(-1) > 60
        ys, xs = np.nonzero(pixels)
        drawn = ((xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2, xs.max() - xs.min() + 1,
                 ys.max() - ys.min() + 1)
        assert np.abs(np.array(drawn) / 128 - np.array(obj.bbox())).max() <= 1.5 / 128, shape


def test_shapes_nlvr2_balanced_and_correct():
    data = make_nlvr2_dataset(120, "train", CONFIG)
    labels = data["label"]
    assert sum(labels) == 60
    assert all(labels[i] != labels[i + 1] for i in range(0, 120, 2))
    for row in data.select_columns(["sentence", "label", "scene_left", "scene_right"]).to_list():
        left, right = Scene.from_json(row["scene_left"]), Scene.from_json(row["scene_right"])
        s = row["sentence"]
        if s == "the two images contain the same number of objects":
            assert row["label"] == int(len(left.objects) == len(right.objects))
        elif m := re.fullmatch(r"both images contain an? (\w+) object", s):
            truth = bool(_resolve(left, m.group(1))) and bool(_resolve(right, m.group(1)))
            assert row["label"] == int(truth), s
        elif m := re.fullmatch(r"the left image has more (\w+)s than the right image", s):
            assert row["label"] == int(len(_resolve(left, m.group(1))) > len(_resolve(right, m.group(1)))), s
    assert isinstance(data[0]["image_left"], Image.Image)


def test_shapes_are_not_trivial():
    """Several objects, duplicates and overlaps occur, so counting is not a single-object task."""
    data = make_vqa_dataset(200, 7, CONFIG)
    scenes = [Scene.from_json(s) for s in data["scene"]]
    sizes = Counter(len(s.objects) for s in scenes)
    assert set(sizes) == {1, 2, 3, 4, 5}
    overlaps = sum(
        any(
            np.hypot(a.x - b.x, a.y - b.y) < a.radius + b.radius
            for i, a in enumerate(s.objects)
            for b in s.objects[i + 1 :]
        )
        for s in scenes
    )
    assert overlaps > 5


# ------------------------------------------------------------------------------------------------ loaders


def _image(path, color=(255, 0, 0), size=(8, 6)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _write_json(path, data):
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_load_xvlm_vqa(tmp_path):
    _image(tmp_path / "coco/train2014/COCO_train2014_000000000001.jpg")
    _image(tmp_path / "vg/1.png", (0, 255, 0))
    train = _write_json(
        tmp_path / "vqa_train.json",
        [
            {
                "image": "train2014/COCO_train2014_000000000001.jpg",
                "question": "What color?",
                "answer": ["red"] * 9 + ["pink"],
                "question_id": 11,
                "dataset": "vqa",
            },
            {"image": "1.png", "question": "Is it green?", "answer": "yes", "question_id": 12, "dataset": "vg"},
        ],
    )
    test = _write_json(
        tmp_path / "vqa_test.json",
        [{"image": "train2014/COCO_train2014_000000000001.jpg", "question": "Why?", "question_id": 99}],
    )
    ds = load_xvlm_vqa([train], tmp_path / "coco", vg_root=tmp_path / "vg")
    assert len(ds) == 2
    assert ds[0]["answers"] == ["red"] * 9 + ["pink"] and ds[1]["answers"] == ["yes"]
    assert ds[1]["dataset"] == "vg" and ds[0]["question_id"] == 11
    assert ds[1]["image"].getpixel((0, 0)) == (0, 255, 0)
    ds_test = load_xvlm_vqa(test, tmp_path / "coco")
    assert ds_test[0]["answers"] == [] and ds_test[0]["image"].mode == "RGB"
    with pytest.raises(ValueError, match="vg_root"):
        load_xvlm_vqa(train, tmp_path / "coco")


def test_load_xvlm_captions_and_retrieval_targets(tmp_path):
    for i in range(3):
        _image(tmp_path / f"val2014/COCO_val2014_00000000000{i}.jpg", (i * 50, 0, 0))
    pairs = _write_json(
        tmp_path / "coco_train.json",
        [
            {"image": "val2014/COCO_val2014_000000000000.jpg", "caption": "a black square", "image_id": "coco_0"},
            {"image": "val2014/COCO_val2014_000000000001.jpg", "caption": "a dark square", "image_id": "coco_1"},
            {"image": "val2014/COCO_val2014_000000000000.jpg", "caption": "black", "image_id": "coco_0"},
        ],
    )
    ds = load_xvlm_caption_pairs(pairs, tmp_path)
    assert ds["image_idx"] == [0, 1, 0] and ds["image_id"] == ["coco_0", "coco_1", "coco_0"]
    assert ds[2]["caption"] == "black" and ds[2]["image"].size == (8, 6)

    groups = _write_json(
        tmp_path / "coco_test.json",
        [
            {"image": f"val2014/COCO_val2014_00000000000{i}.jpg", "caption": [f"caption {i}.{k}" for k in range(2)]}
            for i in range(3)
        ],
    )
    ds = load_xvlm_caption_groups(groups, tmp_path)
    assert ds["image_id"] == ["0", "1", "2"]
    texts, txt2img, img2txt = retrieval_targets(ds)
    assert texts[3] == "caption 1.1" and txt2img == [0, 0, 1, 1, 2, 2] and img2txt[2] == [4, 5]
    perfect = np.array([[1.0 if txt2img[t] == i else 0.0 for t in range(6)] for i in range(3)])
    assert retrieval_recall(perfect, txt2img, img2txt)["r_mean"] == 100.0


def test_load_xvlm_nlvr2(tmp_path):
    _image(tmp_path / "dev/dev-1-0-img0.png", (1, 2, 3))
    _image(tmp_path / "dev/dev-1-0-img1.png", (4, 5, 6))
    ann = _write_json(
        tmp_path / "nlvr_dev.json",
        [
            {"images": ["dev/dev-1-0-img0.png", "dev/dev-1-0-img1.png"], "sentence": "One dog.", "label": "True"},
            {"images": ["dev/dev-1-0-img0.png", "dev/dev-1-0-img1.png"], "sentence": "Two dogs.", "label": "False"},
        ],
    )
    ds = load_xvlm_nlvr2(ann, tmp_path)
    assert ds["label"] == [1, 0] and ds["id"] == ["dev-1-0", "dev-1-0"]
    assert ds[0]["image_left"].getpixel((0, 0)) == (1, 2, 3) and ds[0]["image_right"].getpixel((0, 0)) == (4, 5, 6)


def test_load_vqav2_and_answer_vocabulary(tmp_path):
    for image_id in (7, 42):
        _image(tmp_path / "val2014" / coco_image_filename(image_id, "val2014"))
    assert coco_image_filename(42, "val2014") == "COCO_val2014_000000000042.jpg"
    questions = _write_json(
        tmp_path / "q.json",
        {
            "data_subtype": "val2014",
            "questions": [
                {"image_id": 7, "question": "How many?", "question_id": 70},
                {"image_id": 42, "question": "What is it?", "question_id": 420},
            ],
        },
    )

    def answers(values):
        return [{"answer": v, "answer_confidence": "yes", "answer_id": i + 1} for i, v in enumerate(values)]

    annotations = _write_json(
        tmp_path / "a.json",
        {
            "annotations": [
                {
                    "question_id": 70,
                    "image_id": 7,
                    "answers": answers(["2"] * 6 + ["two"] * 2 + ["3"] * 2),
                    "multiple_choice_answer": "2",
                    "answer_type": "number",
                    "question_type": "how many",
                },
                {
                    "question_id": 420,
                    "image_id": 42,
                    "answers": answers(["dog"] * 10),
                    "multiple_choice_answer": "a dog",
                    "answer_type": "other",
                    "question_type": "what is",
                },
            ]
        },
    )
    ds = load_vqav2(questions, annotations, tmp_path / "val2014")
    assert ds["question_id"] == [70, 420] and ds["image_id"] == [7, 42]
    assert len(ds[0]["answers"]) == 10 and ds[1]["multiple_choice_answer"] == "a dog"
    assert ds[0]["image"].size == (8, 6)
    test = load_vqav2(questions, None, tmp_path / "val2014")
    assert test[0]["answers"] == [] and test[0]["multiple_choice_answer"] == ""

    vocab = build_answer_vocabulary(["yes", "Yes", "no", "a dog", "dog", "two", "2", "cat"], size=3)
    assert vocab == ["2", "dog", "yes"]  # counts 2, 2, 2 -> alphabetical; "no" and "cat" (1) are cut
    assert build_answer_vocabulary(["y", "x", "y"], size=None) == ["y", "x"]
    assert build_answer_vocabulary(["y", "x", "y"], size=None, min_count=2) == ["y"]


def test_load_karpathy(tmp_path):
    for name in ("COCO_val2014_000000000001.jpg", "COCO_val2014_000000000002.jpg"):
        _image(tmp_path / "val2014" / name)
    data = {
        "images": [
            {
                "filepath": "val2014",
                "filename": "COCO_val2014_000000000001.jpg",
                "imgid": 0,
                "split": "test",
                "cocoid": 1,
                "sentences": [
                    {"raw": "A cat. ", "tokens": ["a", "cat"], "sentid": 10},
                    {"raw": "A kitten.", "tokens": ["a", "kitten"], "sentid": 11},
                ],
            },
            {
                "filepath": "val2014",
                "filename": "COCO_val2014_000000000002.jpg",
                "imgid": 1,
                "split": "restval",
                "cocoid": 2,
                "sentences": [{"raw": "A dog.", "tokens": ["a", "dog"], "sentid": 12}],
            },
            {
                "filepath": "train2014",
                "filename": "missing_but_not_selected.jpg",
                "imgid": 2,
                "split": "train",
                "cocoid": 3,
                "sentences": [{"raw": "x", "tokens": ["x"], "sentid": 13}],
            },
        ]
    }
    path = _write_json(tmp_path / "dataset_coco.json", data)
    test = load_karpathy(path, tmp_path, "test")
    assert len(test) == 1 and test[0]["captions"] == ["A cat.", "A kitten."] and test[0]["image_id"] == 1
    flat = load_karpathy(path, tmp_path, ("test", "restval"), one_row_per_caption=True)
    assert flat["caption"] == ["A cat.", "A kitten.", "A dog."]
    assert flat["image_idx"] == [0, 0, 1] and flat["sentid"] == [10, 11, 12]
    with pytest.raises(MissingImageError, match="missing_but_not_selected.jpg"):
        load_karpathy(path, tmp_path, "train")


def test_load_nlvr2_official_jsonl(tmp_path):
    _image(tmp_path / "train/71/train-10171-0-img0.png", (10, 0, 0))
    _image(tmp_path / "train/71/train-10171-0-img1.png", (20, 0, 0))
    _image(tmp_path / "dev/dev-850-0-img0.png", (30, 0, 0))
    _image(tmp_path / "dev/dev-850-0-img1.png", (40, 0, 0))
    lines = [
        {
            "identifier": "train-10171-0-0",
            "sentence": "A bird.",
            "label": "True",
            "directory": "71",
            "left_url": "http://x/l.jpg",
            "right_url": "http://x/r.jpg",
        },
        {"identifier": "train-10171-0-1", "sentence": "No bird.", "label": "False", "directory": "71"},
    ]
    train = tmp_path / "train.json"
    train.write_text("\n".join(json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    ds = load_nlvr2(train, tmp_path / "train")
    assert ds["label"] == [1, 0] and ds["id"] == ["train-10171-0-0", "train-10171-0-1"]
    assert ds[0]["image_left"].getpixel((0, 0)) == (10, 0, 0) and ds[1]["image_right"].getpixel((0, 0)) == (20, 0, 0)
    dev = tmp_path / "dev.json"
    dev.write_text(
        json.dumps({"identifier": "dev-850-0-1", "sentence": "s", "label": "False"}) + "\n", encoding="utf-8"
    )
    assert load_nlvr2(dev, tmp_path / "dev")[0]["image_right"].getpixel((0, 0)) == (40, 0, 0)


def test_missing_image_is_reported_with_path_and_id(tmp_path):
    _image(tmp_path / "ok.jpg")
    ann = _write_json(
        tmp_path / "vqa.json",
        [
            {"image": "ok.jpg", "question": "q", "answer": ["a"], "question_id": 1},
            {"image": "gone.jpg", "question": "q", "answer": ["a"], "question_id": 2},
        ],
    )
    with pytest.raises(MissingImageError) as err:
        load_xvlm_vqa(ann, tmp_path)
    message = str(err.value)
    assert str(tmp_path / "gone.jpg") in message and "question_id=2" in message and "ok.jpg" not in message

    ds = load_xvlm_vqa(ann, tmp_path, check_files=False)
    assert ds[0]["question_id"] == 1  # the good row still reads
    with pytest.raises(MissingImageError) as err:
        ds[1]
    assert str(tmp_path / "gone.jpg") in str(err.value) and "question_id=2" in str(err.value)
    with pytest.raises(FileNotFoundError):  # MissingImageError is a FileNotFoundError
        ds[0:2]

    raw = load_xvlm_vqa(ann, tmp_path, check_files=False, decode_images=False)
    assert raw[1]["image"] == str(tmp_path / "gone.jpg")

    nlvr = _write_json(
        tmp_path / "nlvr.json",
        [{"images": ["ok.jpg", "nope-img1.png"], "sentence": "s", "label": "True", "identifier": "dev-1-1-0"}],
    )
    with pytest.raises(MissingImageError, match=r"nope-img1\.png.*id='dev-1-1-0'.*image_right"):
        load_xvlm_nlvr2(nlvr, tmp_path)


# --------------------------------------------------------------------------------- annotation validation

# One good entry per X-VLM format (image "a.png" under the root), and how to load a file of such entries.
_GOOD = {
    "vqa": {"image": "a.png", "question": "What color?", "answer": ["red"] * 10, "question_id": 1},
    "pairs": {"image": "a.png", "caption": "a red square", "image_id": "coco_1"},
    "groups": {"image": "a.png", "caption": ["a red square", "red"], "image_id": "1"},
    "nlvr2": {"images": ["a.png", "a.png"], "sentence": "Two squares.", "label": "True", "identifier": "dev-1-0-0"},
}
_LOADERS = {
    "vqa": load_xvlm_vqa,
    "pairs": load_xvlm_caption_pairs,
    "groups": load_xvlm_caption_groups,
    "nlvr2": load_xvlm_nlvr2,
}


@pytest.fixture
def image_root(tmp_path):
    _image(tmp_path / "root" / "a.png")
    (tmp_path / "root" / "sub").mkdir()
    _image(tmp_path / "outside.png")
    return tmp_path / "root"


def _load(kind, tmp_path, image_root, entries, **kwargs):
    return _LOADERS[kind](_write_json(tmp_path / f"{kind}.json", entries), image_root, **kwargs)


@pytest.mark.parametrize("kind", list(_LOADERS))
@pytest.mark.parametrize(
    "text, position", [('[{"image": "a.png",', "line 1, column 20"), ("[1, 2,\n]", "line 2, column 1")]
)
def test_malformed_json_names_the_file_and_position(kind, text, position, tmp_path, image_root):
    path = tmp_path / f"{kind}.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(AnnotationError, match=rf"{re.escape(str(path))}: not valid JSON at {position}.*truncated"):
        _LOADERS[kind](path, image_root)


@pytest.mark.parametrize("kind", list(_LOADERS))
@pytest.mark.parametrize("content", ["", "  \n", "[]"])
def test_empty_annotation_files_are_an_error(kind, content, tmp_path, image_root):
    path = tmp_path / f"{kind}.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(AnnotationError, match=rf"{re.escape(str(path))}: .*(empty|no entries)"):
        _LOADERS[kind](path, image_root)


@pytest.mark.parametrize("kind", list(_LOADERS))
def test_an_entry_that_is_not_an_object_is_named(kind, tmp_path, image_root):
    with pytest.raises(AnnotationError, match=r"\.json: entry 1 is str 'oops', not a JSON object"):
        _load(kind, tmp_path, image_root, [_GOOD[kind], "oops"])


@pytest.mark.parametrize(
    "kind, field, value, problem",
    [
        ("vqa", "question", None, "is null"),
        ("vqa", "question", "   ", "is blank"),
        ("vqa", "question", 7, "is int 7, not a string"),
        ("vqa", "image", None, "is null"),
        ("vqa", "answer", [], "is an empty list; give the annotators' answers, or leave the key out"),
        ("vqa", "answer", ["red"] * 9 + [2], "item 9 is int 2, not a string"),
        ("vqa", "answer", ["red", None], "item 1 is NoneType None, not a string"),
        ("vqa", "answer", 2, "is int 2, not a list of strings"),
        ("vqa", "question_id", None, "is None, not an integer or a non-blank string"),
        ("vqa", "dataset", "coco", "is 'coco'"),
        ("pairs", "caption", "", "is blank"),
        ("pairs", "caption", ["a", "b"], "is a list"),
        ("pairs", "image_id", None, "is null"),
        ("pairs", "image", None, "is null"),
        ("groups", "caption", [], "is an empty list"),
        ("groups", "caption", ["fine", " "], "item 1 is blank"),
        ("groups", "image", None, "is null"),
        ("nlvr2", "images", [], "is an empty list"),
        ("nlvr2", "images", ["a.png"], "has 1 paths"),
        ("nlvr2", "images", ["a.png", None], "item 1 is NoneType None, not a string"),
        ("nlvr2", "sentence", None, "is null"),
        ("nlvr2", "label", "maybe", "is 'maybe'"),
    ],
)
def test_bad_fields_name_the_file_entry_field_and_fix(kind, field, value, problem, tmp_path, image_root):
    bad = {**_GOOD[kind], field: value}
    with pytest.raises(AnnotationError) as err:
        _load(kind, tmp_path, image_root, [_GOOD[kind], bad])
    message = str(err.value)
    assert message.startswith(f"{tmp_path / f'{kind}.json'}: entry 1")
    assert f"{field!r} {problem}" in message
    assert message.split("; ")[-1].strip()  # the fix follows the problem
    if kind == "vqa" and field == "answer" and "string" in problem:
        assert "(question_id=1)" in message and 'as a string ("2", not 2)' in message


@pytest.mark.parametrize("kind, field", [("vqa", "question"), ("vqa", "image"), ("pairs", "caption"),
                                         ("pairs", "image_id"), ("nlvr2", "sentence"), ("nlvr2", "label")])
def test_missing_fields_are_named(kind, field, tmp_path, image_root):
    bad = {k: v for k, v in _GOOD[kind].items() if k != field}
    with pytest.raises(AnnotationError, match=rf"entry 0.*'{field}' is missing \(the entry has \["):
        _load(kind, tmp_path, image_root, [bad])


def test_vqa_test_entries_and_visual_genome_answers_still_load(tmp_path, image_root):
    test_entry = {k: v for k, v in _GOOD["vqa"].items() if k != "answer"}
    ds = _load("vqa", tmp_path, image_root, [test_entry, {**_GOOD["vqa"], "answer": "red", "question_id": 2}],
               decode_images=False)
    assert ds["answers"] == [[], ["red"]]


@pytest.mark.parametrize("kind", list(_LOADERS))
@pytest.mark.parametrize("outside", ["../outside.png", "sub/../../outside.png", "ABSOLUTE"])
def test_image_paths_outside_the_root_are_refused(kind, outside, tmp_path, image_root):
    outside = str(tmp_path / "outside.png") if outside == "ABSOLUTE" else outside
    field = "images" if kind == "nlvr2" else "image"
    bad = {**_GOOD[kind], field: ["a.png", outside] if kind == "nlvr2" else outside}
    root_name = "vqa_root" if kind == "vqa" else "image_root"
    verb = "has image path" if kind == "nlvr2" else "is"
    expected = (rf"entry 1.*'{field}' {verb} '{re.escape(outside)}', which points outside {root_name} "
                rf"'{re.escape(str(image_root))}'.*allow_outside_root")
    with pytest.raises(AnnotationError, match=expected):
        _load(kind, tmp_path, image_root, [_GOOD[kind], bad])
    ds = _load(kind, tmp_path, image_root, [_GOOD[kind], bad], allow_outside_root=True)
    image = ds[1]["image_right" if kind == "nlvr2" else "image"]
    assert image.getpixel((0, 0)) == (255, 0, 0)  # opened from outside the root, as asked
    inside = {**_GOOD[kind], field: ["a.png", "sub/../a.png"] if kind == "nlvr2" else "sub/../a.png"}
    assert len(_load(kind, tmp_path, image_root, [inside], decode_images=False)) == 1  # ".." that stays inside


@pytest.mark.parametrize("kind, field, id_name", [("vqa", "question_id", "question_id"),
                                                  ("groups", "image_id", "image_id"),
                                                  ("nlvr2", "identifier", "identifier")])
def test_duplicate_ids_are_kept_with_a_warning(kind, field, id_name, tmp_path, image_root, caplog):
    entries = [{**_GOOD[kind], field: i} for i in ("x1", "x2", "x1", "x3", "x2")]
    with caplog.at_level(logging.WARNING, logger="efficientvlm.data.loaders"):
        ds = _load(kind, tmp_path, image_root, entries, decode_images=False)
    assert len(ds) == 5
    assert f"2 {id_name} value(s) occur more than once: 'x1', 'x2'" in caplog.text
    assert str(tmp_path / f"{kind}.json") in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="efficientvlm.data.loaders"):
        _load(kind, tmp_path, image_root, entries[:2], decode_images=False)
    assert caplog.text == ""


def test_pair_files_repeat_image_ids_and_derived_nlvr2_ids_without_warning(tmp_path, image_root, caplog):
    with caplog.at_level(logging.WARNING, logger="efficientvlm.data.loaders"):
        _load("pairs", tmp_path, image_root, [_GOOD["pairs"]] * 3, decode_images=False)
        no_id = {k: v for k, v in _GOOD["nlvr2"].items() if k != "identifier"}
        _load("nlvr2", tmp_path, image_root, [no_id] * 2, decode_images=False)
    assert caplog.text == ""


def test_errors_in_later_files_name_that_file_and_its_own_index(tmp_path, image_root):
    first = _write_json(tmp_path / "one.json", [_GOOD["vqa"]] * 3)
    second = _write_json(tmp_path / "two.json", [_GOOD["vqa"], {**_GOOD["vqa"], "question": None, "question_id": 9}])
    with pytest.raises(AnnotationError, match=rf"{re.escape(str(second))}: entry 1 \(question_id=9\): 'question' is"):
        load_xvlm_vqa([first, second], image_root)


def _vqav2_files(tmp_path, questions, annotations):
    _image(tmp_path / "val2014" / coco_image_filename(7, "val2014"))
    q = _write_json(tmp_path / "q.json", {"data_subtype": "val2014", "questions": questions})
    a = _write_json(tmp_path / "a.json", {"annotations": annotations})
    return q, a


def _vqav2_annotation(question_id, answers):
    return {"question_id": question_id, "image_id": 7, "answer_type": "other", "question_type": "what",
            "answers": [{"answer": v, "answer_id": i + 1} for i, v in enumerate(answers)]}


def test_load_vqav2_validates_entries(tmp_path, caplog):
    question = {"image_id": 7, "question": "What?", "question_id": 70}
    q, a = _vqav2_files(tmp_path, [question], [_vqav2_annotation(70, ["2"] * 9 + [2])])
    with pytest.raises(AnnotationError, match=r"a\.json: annotation 0 \(question_id=70\): 'answers' item 9 has answer "
                                              r"2, not a string; write every answer as a string"):
        load_vqav2(q, a, tmp_path / "val2014")
    q, a = _vqav2_files(tmp_path, [{**question, "question": None}], [_vqav2_annotation(70, ["2"])])
    with pytest.raises(AnnotationError, match=r"q\.json: question 0 \(question_id=70\): 'question' is null"):
        load_vqav2(q, a, tmp_path / "val2014")
    q, a = _vqav2_files(tmp_path, [{**question, "question_id": "70"}], [_vqav2_annotation(70, ["2"])])
    with pytest.raises(AnnotationError, match=r"'question_id' is str '70', not an integer"):
        load_vqav2(q, a, tmp_path / "val2014")
    q, a = _vqav2_files(tmp_path, [question], [_vqav2_annotation(70, [])])
    with pytest.raises(AnnotationError, match=r"annotation 0 \(question_id=70\): 'answers' is \[\]"):
        load_vqav2(q, a, tmp_path / "val2014")
    q, a = _vqav2_files(tmp_path, [question], [_vqav2_annotation(71, ["2"])])
    with pytest.raises(AnnotationError, match=r"question 0 \(question_id=70\) has no annotation in .*a\.json"):
        load_vqav2(q, a, tmp_path / "val2014")
    q, a = _vqav2_files(tmp_path, [], [_vqav2_annotation(70, ["2"])])
    with pytest.raises(AnnotationError, match=r"q\.json: its 'questions' list has no entries"):
        load_vqav2(q, a, tmp_path / "val2014")
    q, _ = _vqav2_files(tmp_path, [question], [])
    (tmp_path / "broken.json").write_text('{"annotations": [', encoding="utf-8")
    with pytest.raises(AnnotationError, match=r"broken\.json: not valid JSON at line 1"):
        load_vqav2(q, tmp_path / "broken.json", tmp_path / "val2014")
    with pytest.raises(AnnotationError, match=r"expected a VQAv2 annotations file.*got list"):
        load_vqav2(q, _write_json(tmp_path / "list.json", []), tmp_path / "val2014")
    q, a = _vqav2_files(tmp_path, [question, question], [_vqav2_annotation(70, ["2"] * 10)])
    with caplog.at_level(logging.WARNING, logger="efficientvlm.data.loaders"):
        assert len(load_vqav2(q, a, tmp_path / "val2014", decode_images=False)) == 2
    assert "1 question_id value(s) occur more than once: 70" in caplog.text


def _karpathy_image(filename="COCO_val2014_000000000001.jpg", split="test", cocoid=1, filepath="val2014"):
    return {"filepath": filepath, "filename": filename, "split": split, "cocoid": cocoid,
            "sentences": [{"raw": "A cat.", "sentid": 1}]}


def test_load_karpathy_validates_entries(tmp_path, caplog):
    _image(tmp_path / "val2014" / "COCO_val2014_000000000001.jpg")
    _image(tmp_path / "elsewhere.jpg")

    def load(images, **kwargs):
        return load_karpathy(_write_json(tmp_path / "k.json", {"images": images}), tmp_path / "val2014/..", **kwargs)

    with pytest.raises(AnnotationError, match=r"no image of split\(s\) \['tset'\]; the file has splits \['test'\]"):
        load([_karpathy_image()], splits="tset")
    with pytest.raises(AnnotationError, match=r"image 1 \(cocoid=2\): 'sentences' item 0 has no caption text"):
        load([_karpathy_image(), {**_karpathy_image(cocoid=2), "sentences": [{"raw": None}]}])
    with pytest.raises(AnnotationError, match=r"image 0 \(cocoid=1\): 'filename' is null"):
        load([{**_karpathy_image(), "filename": None}])
    with pytest.raises(AnnotationError, match=r"'filename' has image path '\.\./elsewhere\.jpg', which points outside"):
        load([_karpathy_image(filename="../elsewhere.jpg", filepath="")], check_files=False)
    with pytest.raises(AnnotationError, match=r"its 'images' list has no entries"):
        load([])
    with caplog.at_level(logging.WARNING, logger="efficientvlm.data.loaders"):
        assert len(load([_karpathy_image()] * 2, decode_images=False)) == 2
    assert "1 image id value(s) occur more than once: 1" in caplog.text


def test_load_nlvr2_jsonl_validates_lines(tmp_path, caplog):
    _image(tmp_path / "dev/dev-1-0-img0.png")
    _image(tmp_path / "dev/dev-1-0-img1.png")
    good = {"identifier": "dev-1-0-0", "sentence": "s", "label": "True"}

    def load(lines, **kwargs):
        path = tmp_path / "dev.json"
        path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines), encoding="utf-8")
        return load_nlvr2(path, tmp_path / "dev", **kwargs)

    with pytest.raises(AnnotationError, match=r"dev\.json:2: not a JSON object .*one JSON object per line"):
        load([good, '{"identifier": '])
    with pytest.raises(AnnotationError, match=r"dev\.json: line 2 \(identifier='dev-1-0-1'\): 'sentence' is null"):
        load([good, {**good, "identifier": "dev-1-0-1", "sentence": None}])
    with pytest.raises(AnnotationError, match=r"line 1: 'identifier' is missing"):
        load([{"sentence": "s", "label": "True"}])
    with pytest.raises(AnnotationError, match=r"line 1 \(identifier='dev-1-0-0'\): 'label' is 'yes please'"):
        load([{**good, "label": "yes please"}])
    _image(tmp_path / "x/dev-1-0-img0.png")  # the "directory" of a line leads out of the root to this image
    _image(tmp_path / "x/dev-1-0-img1.png")
    with pytest.raises(AnnotationError, match=r"'directory' has image path '\.\./x/dev-1-0-img0\.png', which point"):
        load([{**good, "directory": "../x"}])
    assert len(load([{**good, "directory": "../x"}], allow_outside_root=True)) == 1
    with pytest.raises(AnnotationError, match=r"the file has no statements"):
        load(["", "  "])
    with caplog.at_level(logging.WARNING, logger="efficientvlm.data.loaders"):
        assert len(load([good, good], decode_images=False)) == 2
    assert "1 identifier value(s) occur more than once: 'dev-1-0-0'" in caplog.text


# ---------------------------------------------------------------------------------------------- collators


class FakeProcessor:
    """Stands in for EfficientVLMProcessor: word-length token ids, [1] ... [2] framing, 0-padding."""

    def __init__(self):
        self.calls = []

    def __call__(self, images=None, text=None, padding=None, truncation=None, max_length=None, return_tensors=None):
        self.calls.append(
            {
                "images": images,
                "text": text,
                "padding": padding,
                "max_length": max_length,
                "return_tensors": return_tensors,
            }
        )
        ids = [[1] + [len(w) + 10 for w in t.split()][: max_length - 2] + [2] for t in text]
        width = max(len(x) for x in ids)
        input_ids = torch.tensor([x + [0] * (width - len(x)) for x in ids])
        pair = isinstance(images[0], tuple)
        pixel_shape = (len(images), 2, 3, 4, 4) if pair else (len(images), 3, 4, 4)
        return {
            "input_ids": input_ids,
            "attention_mask": (input_ids != 0).long(),
            "pixel_values": torch.zeros(pixel_shape),
        }


def test_vqa_collator_soft_labels():
    label2id = {"yes": 0, "no": 1, "2": 2}
    processor = FakeProcessor()
    collator = VQACollator(processor, label2id, max_length=16)
    image = Image.new("RGB", (4, 4))
    rows = [
        {"image": image, "question": "is it?", "answers": ["yes"] * 7 + ["no"] * 2 + ["maybe"]},
        {"image": image, "question": "how many dogs are there?", "answers": ["Two"] * 2 + ["2"] + ["three"] * 7},
    ]
    batch = collator(rows)
    expected = torch.tensor([[1.0, 0.6, 0.0], [0.0, 0.0, 0.9]])
    assert batch["labels"].dtype == torch.float32 and torch.allclose(batch["labels"], expected)
    assert batch["pixel_values"].shape == (2, 3, 4, 4)
    assert processor.calls[0]["text"] == ["is it?", "how many dogs are there?"]
    assert processor.calls[0]["return_tensors"] == "pt" and processor.calls[0]["max_length"] == 16
    assert torch.allclose(
        VQACollator(processor, label2id, score_rule="min3")(rows)["labels"][0], torch.tensor([1.0, 2 / 3, 0.0])
    )
    assert "labels" not in collator([{"image": image, "question": "q", "answers": []}])
    assert vqa_soft_labels([["no"] * 10], label2id).tolist() == [[0.0, 1.0, 0.0]]


def test_vqa_collator_on_shapes(vqa_data):
    vocab = answer_vocabulary(CONFIG)
    label2id = {a: i for i, a in enumerate(vocab)}
    rows = [vqa_data[i] for i in range(8)]
    batch = VQACollator(FakeProcessor(), label2id)(rows)
    assert batch["labels"].shape == (8, len(vocab))
    assert batch["labels"].argmax(-1).tolist() == [label2id[r["answer"]] for r in rows]
    assert batch["labels"].sum(-1).tolist() == [1.0] * 8


def test_nlvr2_collator():
    processor = FakeProcessor()
    a, b = Image.new("RGB", (4, 4)), Image.new("RGB", (4, 4), (9, 9, 9))
    rows = [
        {"image_left": a, "image_right": b, "sentence": "s one", "label": 1},
        {"image_left": b, "image_right": a, "sentence": "s", "label": "False"},
    ]
    batch = NLVR2Collator(processor)(rows)
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [1, 0]
    assert batch["pixel_values"].shape == (2, 2, 3, 4, 4)
    assert processor.calls[0]["images"] == [(a, b), (b, a)]


def test_captioning_collator_masks_padding_and_prompt():
    image = Image.new("RGB", (4, 4))
    rows = [{"image": image, "caption": "a red circle"}, {"image": image, "caption": ["two squares", "ignored"]}]
    batch = CaptioningCollator(FakeProcessor(), prompt="")(rows)
    # input_ids: [1, 11, 13, 16, 2] and [1, 13, 17, 2, 0]
    assert batch["labels"].tolist() == [[1, 11, 13, 16, 2], [1, 13, 17, 2, -100]]
    processor = FakeProcessor()
    batch = CaptioningCollator(processor, prompt_length=4)(rows)  # the default prompt is the paper's
    assert processor.calls[0]["text"][0] == "a picture of a red circle"
    assert batch["labels"][:, :4].eq(-100).all() and batch["labels"][0, 4:].tolist() == [11, 13, 16, 2]
    # counting the prompt's tokens needs the processor's caption_prompt_ids (tests/test_captioning.py)
    with pytest.raises(ValueError, match="prompt_length"):
        CaptioningCollator(FakeProcessor())(rows)


def test_retrieval_collator_image_ids():
    image = Image.new("RGB", (4, 4))
    rows = [
        {"image": image, "caption": c, "image_id": i} for c, i in [("a", "coco_5"), ("b", "coco_9"), ("c", "coco_5")]
    ]
    # string ids: the same number for the same image in every batch (ids are compared across processes)
    ids = RetrievalCollator(FakeProcessor())(rows)["image_ids"].tolist()
    assert ids[0] == ids[2] != ids[1] and min(ids) >= 0
    assert RetrievalCollator(FakeProcessor())(rows[1:])["image_ids"].tolist() == ids[1:]
    rows = [{**r, "image_idx": k} for r, k in zip(rows, [4, 7, 4])]
    batch = RetrievalCollator(FakeProcessor())(rows)
    assert batch["image_ids"].dtype == torch.long and batch["image_ids"].tolist() == [4, 7, 4]
    shapes_rows = list(make_caption_dataset(3, 0, CONFIG, one_row_per_caption=True))
    ids = RetrievalCollator(FakeProcessor())(shapes_rows)["image_ids"].tolist()
    assert ids == [r["image_id"] for r in shapes_rows] and len(set(ids)) == 3


def test_shapes_tokenizer_covers_every_generated_text(tmp_path):
    from efficientvlm.data import build_tokenizer, make_caption_dataset, make_nlvr2_dataset, text_vocabulary

    tokenizer = build_tokenizer(tmp_path / "tok")
    assert (tmp_path / "tok" / "vocab.txt").read_text().split("\n")[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert text_vocabulary() == text_vocabulary()
    texts = list(make_vqa_dataset(60, split_seed="test").with_format(None)["question"])
    texts += [c for caps in make_caption_dataset(20, split_seed="test").with_format(None)["captions"] for c in caps]
    texts += list(make_nlvr2_dataset(20, split_seed="test").with_format(None)["sentence"])
    for text in texts:
        assert tokenizer.unk_token_id not in tokenizer(text)["input_ids"], text
