"""``shapes``: a small synthetic vision-language benchmark generated on the fly.

Every image is a procedurally drawn scene of 1-5 coloured shapes (circle, square, triangle; small or large;
six colours) on a light, optionally noisy background, with partial occlusion allowed. The scene graph is
known exactly, so VQA questions, captions and NLVR2-style statements come with exact labels. Counting
under occlusion, spatial relations, colour jitter and pixel noise keep it from being trivially solvable.

Determinism: example ``i`` of a split is generated from its own RNG seeded with
``(config.seed, split_seed, task, i)`` (``random.Random`` / ``numpy.random.default_rng``, never the global RNGs),
so the same arguments give identical datasets and a different ``seed`` or ``split_seed`` gives different ones.
Use different ``split_seed`` values for train / validation / test (``"train"``, ``"validation"`` and
``"test"`` are accepted and mean 0, 1 and 2).

Public API::

    config = ShapesConfig(image_size=64, seed=0)
    vqa = make_vqa_dataset(1000, split_seed="train", config=config)   # image, question, answer, answers, ...
    caps = make_caption_dataset(500, split_seed="test", config=config)  # image, caption, captions, image_id
    nlvr = make_nlvr2_dataset(500, split_seed="train", config=config)   # image_left, image_right, sentence, label
    vocab = answer_vocabulary(config)

Every dataset also carries the scene graph(s) as JSON strings (``scene`` / ``scene_left`` / ``scene_right``),
readable with :meth:`Scene.from_json`.
"""

from __future__ import annotations

import io
import json
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "COLORS",
    "SHAPES",
    "SIZES",
    "QUESTION_TYPES",
    "ShapesConfig",
    "SceneObject",
    "Scene",
    "sample_scene",
    "render_scene",
    "ask_question",
    "describe_scene",
    "sample_statement",
    "answer_vocabulary",
    "text_vocabulary",
    "build_tokenizer",
    "make_vqa_dataset",
    "make_caption_dataset",
    "make_nlvr2_dataset",
]

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 40),
    "purple": (140, 60, 185),
    "orange": (245, 135, 25),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[str, ...] = ("small", "large")
QUESTION_TYPES: tuple[str, ...] = ("color", "shape", "count", "exist", "position")

_SPLITS = {"train": 0, "validation": 1, "test": 2}
_TASKS = {"vqa": 1, "caption": 2, "nlvr2": 3}
_NUMBER_WORDS = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
)


@dataclass(frozen=True)
class ShapesConfig:
    """Generation settings. Geometry is relative to the image size, so any ``image_size`` draws the same scene.

    Attributes:
        image_size: side of the square images in pixels.
        seed: benchmark seed; combined with each dataset's ``split_seed``.
        min_objects, max_objects: objects per scene (uniform).
        colors, shapes: the vocabularies used (subsets of :data:`COLORS` / :data:`SHAPES`).
        small_radius, large_radius: object radius as a fraction of the image side.
        max_overlap: objects may overlap; centres stay at least ``(1 - max_overlap) * (r1 + r2)`` apart.
        color_jitter: per-object uniform RGB jitter (0-255 units) around the nominal colour.
        noise_prob, noise_std: fraction of images with Gaussian pixel noise, and its standard deviation.
        margin: minimum centre separation (fraction of the side) for "leftmost"/"left of" style facts to be
            used in questions and statements; closer configurations are considered ambiguous and not asked.
        answers_per_question: length of the VQA ``answers`` list (the exact answer repeated).
    """

    image_size: int = 64
    seed: int = 0
    min_objects: int = 1
    max_objects: int = 5
    colors: tuple[str, ...] = tuple(COLORS)
    shapes: tuple[str, ...] = SHAPES
    small_radius: float = 0.085
    large_radius: float = 0.14
    max_overlap: float = 0.35
    color_jitter: int = 15
    noise_prob: float = 0.5
    noise_std: float = 10.0
    margin: float = 0.08
    answers_per_question: int = 10

    def __post_init__(self) -> None:
        if not 1 <= self.min_objects <= self.max_objects <= 10:
            raise ValueError("need 1 <= min_objects <= max_objects <= 10")
        unknown = set(self.colors) - set(COLORS) | set(self.shapes) - set(SHAPES)
        if unknown:
            raise ValueError(f"unknown colours/shapes: {sorted(unknown)}")
        if len(self.colors) < 2 or len(self.shapes) < 2:
            raise ValueError("need at least two colours and two shapes")
        if self.image_size < 8:
            raise ValueError("image_size must be at least 8")


@dataclass
class SceneObject:
    """One shape. ``x``, ``y`` (centre) and ``radius`` are fractions of the image side; y grows downwards."""

    shape: str
    color: str
    size: str
    x: float
    y: float
    radius: float
    rgb: tuple[int, int, int]

    def bbox(self) -> tuple[float, float, float, float]:
        """The drawn shape's tight box ``(cx, cy, w, h)`` as fractions of the image side (see ``render_scene``)."""
        r = self.radius
        if self.shape == "circle":
            return self.x, self.y, 2 * r, 2 * r
        if self.shape == "square":
            return self.x, self.y, 1.76 * r, 1.76 * r
        big = 1.15 * r  # triangle pointing up: apex at y - R, base at y + R/2, half-width R cos 30 degrees
        return self.x, self.y - big / 4, 2 * big * math.cos(math.pi / 6), 1.5 * big


@dataclass
class Scene:
    """A scene graph: objects in drawing order (later ones may occlude earlier ones) and the background."""

    objects: list[SceneObject]
    background: tuple[int, int, int]
    noise_seed: int | None = None  # None: no pixel noise

    def to_json(self) -> str:
        """Serialise (the ``scene`` columns of the datasets)."""
        objects = [
            {
                "shape": o.shape,
                "color": o.color,
                "size": o.size,
                "x": o.x,
                "y": o.y,
                "radius": o.radius,
                "rgb": list(o.rgb),
            }
            for o in self.objects
        ]
        return json.dumps({"objects": objects, "background": list(self.background), "noise_seed": self.noise_seed})

    @classmethod
    def from_json(cls, text: str) -> Scene:
        data = json.loads(text)
        objects = [SceneObject(**{**o, "rgb": tuple(o["rgb"])}) for o in data.pop("objects")]
        return cls(objects=objects, background=tuple(data.pop("background")), **data)

    # Simple queries used by the question / statement generators.
    def count(self, color: str | None = None, shape: str | None = None, size: str | None = None) -> int:
        """Number of objects matching every given attribute."""
        return sum(
            (color is None or o.color == color)
            and (shape is None or o.shape == shape)
            and (size is None or o.size == size)
            for o in self.objects
        )


# ---------------------------------------------------------------------------------------- scene sampling


def _split_code(split_seed: int | str) -> int:
    if isinstance(split_seed, str):
        if split_seed not in _SPLITS:
            raise ValueError(f"unknown split {split_seed!r}; use an int or one of {sorted(_SPLITS)}")
        return _SPLITS[split_seed]
    if split_seed < 0:
        raise ValueError("split_seed must be >= 0")
    return int(split_seed)


def _example_rng(config: ShapesConfig, split_seed: int | str, task: str, index: int) -> random.Random:
    """Independent RNG of one example (so examples can be generated in any order)."""
    state = np.random.SeedSequence([config.seed, _split_code(split_seed), _TASKS[task], index]).generate_state(2)
    return random.Random((int(state[0]) << 32) | int(state[1]))


def sample_scene(rng: random.Random, config: ShapesConfig) -> Scene:
    """Sample a random scene: object count, attributes, non-overlapping-enough positions, background, noise."""
    n = rng.randint(config.min_objects, config.max_objects)
    for _ in range(1000):  # rejection sampling of positions; restarts are rare
        objects: list[SceneObject] = []
        for _ in range(n):
            size = rng.choice(SIZES)
            radius = config.small_radius if size == "small" else config.large_radius
            radius *= rng.uniform(0.9, 1.1)
            for _ in range(100):
                x = rng.uniform(radius + 0.02, 1 - radius - 0.02)
                y = rng.uniform(radius + 0.02, 1 - radius - 0.02)
                if all(math.hypot(x - o.x, y - o.y) >= (1 - config.max_overlap) * (radius + o.radius) for o in objects):
                    break
            else:
                break  # could not place this object: restart the scene
            color = rng.choice(config.colors)
            rgb = tuple(
                max(0, min(255, c + rng.randint(-config.color_jitter, config.color_jitter))) for c in COLORS[color]
            )
            objects.append(
                SceneObject(rng.choice(config.shapes), color, size, round(x, 4), round(y, 4), round(radius, 4), rgb)
            )
        if len(objects) == n:
            break
    else:  # pragma: no cover - only with extreme radius settings
        raise RuntimeError("could not place the objects; reduce the radii or max_objects")
    level = rng.randint(205, 250)
    background = tuple(max(0, min(255, level + rng.randint(-8, 8))) for _ in range(3))
    noise_seed = rng.getrandbits(32) if rng.random() < config.noise_prob else None
    return Scene(objects=objects, background=background, noise_seed=noise_seed)


def render_scene(scene: Scene, config: ShapesConfig) -> Image.Image:
    """Draw a scene as an RGB PIL image of ``config.image_size`` pixels (anti-aliased by supersampling).

    Deterministic: pixel noise uses ``scene.noise_seed``.
    """
    size = config.image_size
    factor = max(1, min(4, math.ceil(256 / size)))
    side = size * factor
    canvas = Image.new("RGB", (side, side), scene.background)
    draw = ImageDraw.Draw(canvas)
    for o in scene.objects:
        cx, cy, r = o.x * side, o.y * side, o.radius * side
        if o.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=o.rgb)
        elif o.shape == "square":
            h = 0.88 * r
            draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=o.rgb)
        else:  # triangle pointing up, circumradius slightly larger so the area is comparable
            R = 1.15 * r
            pts = [(cx + R * math.cos(a), cy + R * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
            draw.polygon(pts, fill=o.rgb)
    # Box filtering of the supersampled canvas = area-averaged anti-aliasing (and much faster than Lanczos).
    image = canvas.resize((size, size), Image.Resampling.BOX) if factor > 1 else canvas
    if scene.noise_seed is not None and config.noise_std > 0:
        noise = np.random.default_rng(scene.noise_seed).standard_normal((size, size, 3), dtype=np.float32)
        pixels = np.asarray(image, dtype=np.float32) + np.float32(config.noise_std) * noise
        image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")
    return image


def _png(image: Image.Image) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # lossless either way; level 1 is several times faster
    return {"bytes": buffer.getvalue(), "path": None}


# ------------------------------------------------------------------------------------------ descriptions


def _a(phrase: str) -> str:
    """Prefix the indefinite article: 'a red circle', 'an orange square'."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _plural(shape: str, count: int) -> str:
    return shape if count == 1 else shape + "s"


def _unique_description(scene: Scene, obj: SceneObject) -> str | None:
    """Shortest referring expression that picks out ``obj`` alone, or None."""
    if scene.count(color=obj.color) == 1:
        return f"{obj.color} object"
    if scene.count(shape=obj.shape) == 1:
        return obj.shape
    if scene.count(color=obj.color, shape=obj.shape) == 1:
        return f"{obj.color} {obj.shape}"
    return None


_AXES = {
    # relation word -> (coordinate, sign): "A <rel> B" is true when sign * (A.coord - B.coord) > 0
    "left of": ("x", -1),
    "right of": ("x", 1),
    "above": ("y", -1),
    "below": ("y", 1),
}
_EXTREMES = {"leftmost": ("x", -1), "rightmost": ("x", 1), "topmost": ("y", -1), "bottommost": ("y", 1)}


def _ask_color(scene: Scene, rng: random.Random, config: ShapesConfig, want_yes: bool):
    options = []
    for o in scene.objects:
        if scene.count(shape=o.shape) == 1:
            options.append((f"what color is the {o.shape}?", o.color))
        elif scene.count(shape=o.shape, size=o.size) == 1:
            options.append((f"what color is the {o.size} {o.shape}?", o.color))
    return rng.choice(options) if options else None


def _ask_shape(scene: Scene, rng: random.Random, config: ShapesConfig, want_yes: bool):
    options = []
    for o in scene.objects:
        if scene.count(color=o.color) == 1:
            options.append((f"what shape is the {o.color} object?", o.shape))
        elif scene.count(color=o.color, size=o.size) == 1:
            options.append((f"what shape is the {o.size} {o.color} object?", o.shape))
    return rng.choice(options) if options else None


def _ask_count(scene: Scene, rng: random.Random, config: ShapesConfig, want_yes: bool):
    # Mostly ask about attributes present in the scene so that "0" does not dominate.
    present = rng.choice(scene.objects)
    color = present.color if rng.random() < 0.8 else rng.choice(config.colors)
    shape = present.shape if rng.random() < 0.8 else rng.choice(config.shapes)
    kind = rng.choice(("shape", "color", "all", "color_shape"))
    if kind == "shape":
        return f"how many {shape}s are there?", str(scene.count(shape=shape))
    if kind == "color":
        return f"how many {color} objects are there?", str(scene.count(color=color))
    if kind == "all":
        return "how many objects are there?", str(len(scene.objects))
    return f"how many {color} {shape}s are there?", str(scene.count(color=color, shape=shape))


def _ask_exist(scene: Scene, rng: random.Random, config: ShapesConfig, want_yes: bool):
    templates = [
        ("color_shape", lambda c, s: (f"is there {_a(c)} {s}?", scene.count(color=c, shape=s) > 0)),
        ("color", lambda c, s: (f"is there {_a(c)} object?", scene.count(color=c) > 0)),
        ("shape", lambda c, s: (f"is there {_a(s)}?", scene.count(shape=s) > 0)),
    ]
    rng.shuffle(templates)
    for _, template in templates:
        candidates = [template(c, s) for c in config.colors for s in config.shapes]
        candidates = sorted({q: a for q, a in candidates if a == want_yes}.items())
        if candidates:
            question, answer = rng.choice(candidates)
            return question, "yes" if answer else "no"
    return None  # unreachable with >= 2 colours and shapes (a "no" colour-shape pair always exists)


def _separated(a: SceneObject, b: SceneObject, coord: str, margin: float) -> bool:
    return abs(getattr(a, coord) - getattr(b, coord)) >= margin


def _ask_position(scene: Scene, rng: random.Random, config: ShapesConfig, want_yes: bool):
    kinds = ["relation", "extreme"]
    rng.shuffle(kinds)
    for kind in kinds:
        if kind == "extreme" and len(scene.objects) >= 2:
            options = []
            for word, (coord, sign) in _EXTREMES.items():
                ordered = sorted(scene.objects, key=lambda o: sign * getattr(o, coord), reverse=True)
                if _separated(ordered[0], ordered[1], coord, config.margin):
                    options.append((f"what color is the {word} object?", ordered[0].color))
                    options.append((f"what shape is the {word} object?", ordered[0].shape))
            if options:
                return rng.choice(options)
        if kind == "relation":
            described = [(o, d) for o in scene.objects if (d := _unique_description(scene, o)) is not None]
            options = []
            for relation, (coord, sign) in _AXES.items():
                for a, da in described:
                    for b, db in described:
                        if a is b or not _separated(a, b, coord, config.margin):
                            continue
                        truth = sign * (getattr(a, coord) - getattr(b, coord)) > 0
                        if truth == want_yes:
                            options.append((f"is the {da} {relation} the {db}?", "yes" if truth else "no"))
            if options:
                return rng.choice(options)
    return None


_QUESTION_MAKERS: dict[str, Callable] = {
    "color": _ask_color,
    "shape": _ask_shape,
    "count": _ask_count,
    "exist": _ask_exist,
    "position": _ask_position,
}


def ask_question(
    scene: Scene, rng: random.Random, config: ShapesConfig, question_type: str | None = None
) -> tuple[str, str, str]:
    """Generate one unambiguous question about ``scene``: ``(question, answer, question_type)``.

    The type is drawn uniformly from :data:`QUESTION_TYPES` unless given; when the scene does not support it
    (e.g. no object is uniquely described by its shape), another type is tried. Yes/no answers are drawn
    with probability 1/2 *before* the question is chosen, so they are balanced.
    """
    want_yes = rng.random() < 0.5
    order = list(QUESTION_TYPES)
    rng.shuffle(order)
    if question_type is not None:
        if question_type not in _QUESTION_MAKERS:
            raise ValueError(f"unknown question type {question_type!r}")
        order = [question_type]
    for qtype in order:
        result = _QUESTION_MAKERS[qtype](scene, rng, config, want_yes)
        if result is not None:
            return result[0], result[1], qtype
    raise ValueError(f"scene does not support a {question_type!r} question")


def _noun_phrases(scene: Scene, rng: random.Random, with_size: bool, shuffle: bool) -> list[str]:
    """'a red circle', 'two blue squares', ... grouped by (size,) colour and shape, ordered left to right."""
    groups: dict[tuple, list[SceneObject]] = {}
    for o in sorted(scene.objects, key=lambda o: o.x):
        key = (o.size, o.color, o.shape) if with_size else (o.color, o.shape)
        groups.setdefault(key, []).append(o)
    items = list(groups.items())
    if shuffle:
        rng.shuffle(items)
    phrases = []
    for key, members in items:
        count = len(members)
        words = " ".join((*key[:-1], _plural(key[-1], count)))
        phrases.append(_a(words) if count == 1 else f"{_NUMBER_WORDS[count]} {words}")
    return phrases


def _join(phrases: Sequence[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def describe_scene(scene: Scene, rng: random.Random, num_captions: int = 5) -> list[str]:
    """Up to ``num_captions`` distinct captions; the first is canonical (groups in left-to-right order).

    Paraphrase templates: plain list, "there is/are ...", "a picture of ...", "N shapes: ...", a version with
    sizes, and a strict left-to-right enumeration (the most specific one).
    """
    n = len(scene.objects)
    canonical = _join(_noun_phrases(scene, rng, with_size=False, shuffle=False))
    left_to_right = [_a(f"{o.color} {o.shape}") for o in sorted(scene.objects, key=lambda o: o.x)]

    def there_is() -> str:
        phrases = _noun_phrases(scene, rng, False, True)
        verb = "is" if phrases[0].split()[0] in ("a", "an") else "are"  # agree with the first noun phrase
        return f"there {verb} " + _join(phrases)

    paraphrases = [
        there_is,
        lambda: "a picture of " + _join(_noun_phrases(scene, rng, False, True)),
        lambda: f"{_NUMBER_WORDS[n]} {_plural('shape', n)}: " + _join(_noun_phrases(scene, rng, False, True)),
        lambda: _join(_noun_phrases(scene, rng, True, rng.random() < 0.5)),
        lambda: "from left to right: " + _join(left_to_right),
        lambda: "an image with " + _join(_noun_phrases(scene, rng, False, True)),
    ]
    rng.shuffle(paraphrases)
    captions = [canonical]
    for make in paraphrases:
        if len(captions) >= num_captions:
            break
        text = make()
        if text not in captions:
            captions.append(text)
    return captions


# ------------------------------------------------------------------------------------- NLVR2 statements


def _relation_truth(scene: Scene, color: str, shape: str, margin: float) -> bool | None:
    """'contains a <color> object to the left of a <shape>': True / False, or None when too close to call."""
    pairs = [
        (a, b) for a in scene.objects for b in scene.objects if a is not b and a.color == color and b.shape == shape
    ]
    if any(b.x - a.x >= margin for a, b in pairs):
        return True
    if all(a.x >= b.x for a, b in pairs):
        return False
    return None


Statement = tuple[str, Callable[[Scene, Scene], "bool | None"]]


def sample_statement(rng: random.Random, config: ShapesConfig) -> Statement:
    """A random NLVR2-style statement and its truth function ``truth(left, right) -> bool | None``.

    The statement (template and parameters) is drawn *independently of any scene*; the dataset then samples
    image pairs until the truth value equals the wanted label. Hence ``P(label | sentence) = 1/2`` and the
    sentence alone carries no information about the label. ``None`` means the pair makes the statement
    visually ambiguous (objects too close to call a left/right relation) and is never used.
    """
    color = rng.choice(config.colors)
    shape = rng.choice(config.shapes)
    side = rng.choice(("left", "right"))

    def pick(left: Scene, right: Scene) -> Scene:
        return left if side == "left" else right

    kind = rng.randrange(10)
    if kind == 0:
        return (
            f"the left image has more {shape}s than the right image",
            lambda l, r: l.count(shape=shape) > r.count(shape=shape),
        )
    if kind == 1:
        return (
            f"the right image has more {shape}s than the left image",
            lambda l, r: r.count(shape=shape) > l.count(shape=shape),
        )
    if kind == 2:
        return (
            f"both images contain {_a(color)} object",
            lambda l, r: l.count(color=color) > 0 and r.count(color=color) > 0,
        )
    if kind == 3:
        return (f"both images contain {_a(shape)}", lambda l, r: l.count(shape=shape) > 0 and r.count(shape=shape) > 0)
    if kind == 4:
        return (
            f"exactly one image contains {_a(color)} {shape}",
            lambda l, r: (l.count(color=color, shape=shape) > 0) != (r.count(color=color, shape=shape) > 0),
        )
    if kind == 5:
        return (
            f"neither image contains {_a(color)} object",
            lambda l, r: l.count(color=color) + r.count(color=color) == 0,
        )
    if kind == 6:
        k = rng.randint(0, max(1, (config.min_objects + config.max_objects) // 2))
        return (
            f"there are exactly {_NUMBER_WORDS[k]} {_plural(shape, k)} in total",
            lambda l, r: l.count(shape=shape) + r.count(shape=shape) == k,
        )
    if kind == 7:
        k = rng.randint(config.min_objects, config.max_objects)
        return (
            f"the {side} image contains exactly {_NUMBER_WORDS[k]} {_plural('object', k)}",
            lambda l, r: len(pick(l, r).objects) == k,
        )
    if kind == 8:
        return ("the two images contain the same number of objects", lambda l, r: len(l.objects) == len(r.objects))
    return (
        f"the {side} image contains {_a(color)} object to the left of {_a(shape)}",
        lambda l, r: _relation_truth(pick(l, r), color, shape, config.margin),
    )


# ---------------------------------------------------------------------------------------------- datasets


def answer_vocabulary(config: ShapesConfig | None = None) -> list[str]:
    """Every possible VQA answer, in a fixed order: ``yes``, ``no``, counts ``0..max_objects``, colours, shapes."""
    config = config or ShapesConfig()
    return ["yes", "no", *(str(i) for i in range(config.max_objects + 1)), *config.colors, *config.shapes]


_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def text_vocabulary(config: ShapesConfig | None = None, samples: int = 1000) -> list[str]:
    """Every word the benchmark's questions, answers, captions and statements use, sorted.

    Collected by running the text generators (no rendering) on ``samples`` scenes with a fixed seed - the
    templates draw from small closed word sets, so this covers them - plus every colour, shape, size and answer.
    """
    config = config or ShapesConfig()
    rng = random.Random(12345)
    texts = list(answer_vocabulary(config)) + list(config.colors) + list(config.shapes) + list(SIZES)
    for _ in range(samples):
        scene = sample_scene(rng, config)
        texts.append(ask_question(scene, rng, config)[0])
        texts.extend(describe_scene(scene, rng))
        texts.append(sample_statement(rng, config)[0])
    return sorted({word for text in texts for word in re.findall(r"\w+|[^\w\s]", text.lower())})


def build_tokenizer(directory: str | Path, config: ShapesConfig | None = None, model_max_length: int = 40):
    """A BERT WordPiece tokenizer for the benchmark: ``[PAD]=0, [UNK], [CLS], [SEP], [MASK]``, then the words of
    :func:`text_vocabulary`. Writes ``vocab.txt`` into ``directory`` and returns a ``transformers.BertTokenizer``."""
    from transformers import BertTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab_file = directory / "vocab.txt"
    vocab_file.write_text("\n".join(_SPECIAL_TOKENS + text_vocabulary(config)) + "\n", encoding="utf-8")
    return BertTokenizer(vocab=str(vocab_file), do_lower_case=True, model_max_length=model_max_length)


def make_vqa_dataset(
    n: int,
    split_seed: int | str = 0,
    config: ShapesConfig | None = None,
    questions_per_image: int = 1,
) -> datasets.Dataset:
    """``n`` VQA examples.

    Columns: ``image`` (``Image()``), ``question``, ``answer`` (exact), ``answers`` (the answer repeated
    ``config.answers_per_question`` times, VQAv2 style), ``question_type`` (one of :data:`QUESTION_TYPES`),
    ``question_id`` (0..n-1), ``image_id`` (``question_id // questions_per_image``), ``scene`` (JSON).
    With ``questions_per_image > 1`` consecutive questions share an image (asked without repetition when
    possible).
    """
    config = config or ShapesConfig()
    if questions_per_image < 1:
        raise ValueError("questions_per_image must be >= 1")
    rows = []
    num_images = math.ceil(n / questions_per_image)
    for image_id in range(num_images):
        rng = _example_rng(config, split_seed, "vqa", image_id)
        scene = sample_scene(rng, config)
        image = _png(render_scene(scene, config))
        scene_json = scene.to_json()
        asked: set[str] = set()
        for k in range(min(questions_per_image, n - image_id * questions_per_image)):
            for _ in range(20):
                question, answer, qtype = ask_question(scene, rng, config)
                if question not in asked:
                    break
            asked.add(question)
            rows.append(
                {
                    "image": image,
                    "question": question,
                    "answer": answer,
                    "answers": [answer] * config.answers_per_question,
                    "question_type": qtype,
                    "question_id": image_id * questions_per_image + k,
                    "image_id": image_id,
                    "scene": scene_json,
                }
            )
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "question": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "answers": datasets.List(datasets.Value("string")),
            "question_type": datasets.Value("string"),
            "question_id": datasets.Value("int64"),
            "image_id": datasets.Value("int64"),
            "scene": datasets.Value("string"),
        }
    )
    return datasets.Dataset.from_list(rows, features=features)


def region_descriptions(scene: Scene, obj: SceneObject) -> list[str]:
    """Every phrase of the forms "red circle", "red object", "circle", "small red circle", "small circle" that
    picks out ``obj`` alone in ``scene`` (empty when none does)."""
    candidates = [
        (f"{obj.color} {obj.shape}", dict(color=obj.color, shape=obj.shape)),
        (f"{obj.color} object", dict(color=obj.color)),
        (obj.shape, dict(shape=obj.shape)),
        (f"{obj.size} {obj.color} {obj.shape}", dict(color=obj.color, shape=obj.shape, size=obj.size)),
        (f"{obj.size} {obj.shape}", dict(shape=obj.shape, size=obj.size)),
    ]
    return [phrase for phrase, attributes in candidates if scene.count(**attributes) == 1]


def make_caption_dataset(
    n: int,
    split_seed: int | str = 0,
    config: ShapesConfig | None = None,
    captions_per_image: int = 5,
    one_row_per_caption: bool = False,
    regions_per_image: int = 0,
) -> datasets.Dataset:
    """``n`` images with captions, for retrieval, captioning and pre-training.

    Columns: ``image``, ``caption`` (the canonical caption), ``captions`` (up to ``captions_per_image``
    distinct paraphrases, canonical first), ``image_id`` (0..n-1), ``scene`` (JSON) and, with region rows,
    ``bbox`` (``None`` for captions of the whole image). With ``one_row_per_caption=True`` every caption gets its own row (X-VLM
    ``coco_train.json`` style: ``caption`` is that paraphrase, rows of one image share ``image_id``).
    ``regions_per_image`` adds up to that many rows per image whose ``caption`` names one object unambiguously
    ("the red circle", see ``region_descriptions``) and whose ``bbox`` is its box ``(cx, cy, w, h)`` as fractions
    of the side: X-VLM's region-text data, for ``EfficientVLMForPreTraining``'s box regression.
    """
    config = config or ShapesConfig()
    rows = []
    for image_id in range(n):
        rng = _example_rng(config, split_seed, "caption", image_id)
        scene = sample_scene(rng, config)
        image = _png(render_scene(scene, config))
        captions = describe_scene(scene, rng, captions_per_image)
        texts = captions if one_row_per_caption else captions[:1]

        def row(text: str, bbox) -> dict:
            return {"image": image, "caption": text, "captions": captions, "image_id": image_id,
                    "scene": scene.to_json(), "bbox": bbox}

        rows.extend(row(text, None) for text in texts)
        if regions_per_image:
            described = [(o, phrases) for o in scene.objects if (phrases := region_descriptions(scene, o))]
            for obj, phrases in rng.sample(described, min(regions_per_image, len(described))):
                rows.append(row("the " + rng.choice(phrases), [round(v, 4) for v in obj.bbox()]))
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "caption": datasets.Value("string"),
            "captions": datasets.List(datasets.Value("string")),
            "image_id": datasets.Value("int64"),
            "scene": datasets.Value("string"),
            "bbox": datasets.List(datasets.Value("float32"), length=4),
        }
    )
    if not regions_per_image:
        rows = [{key: value for key, value in row.items() if key != "bbox"} for row in rows]
        del features["bbox"]
    return datasets.Dataset.from_list(rows, features=features)


def make_nlvr2_dataset(n: int, split_seed: int | str = 0, config: ShapesConfig | None = None) -> datasets.Dataset:
    """``n`` NLVR2-style examples: two images and a statement about them.

    Columns: ``image_left``, ``image_right`` (``Image()``), ``sentence``, ``label`` (1 true / 0 false),
    ``id``, ``scene_left``, ``scene_right`` (JSON). Labels are exactly balanced within each pair of
    consecutive examples (example ``2k`` and ``2k + 1`` have opposite labels, in random order), and each
    statement is drawn before its images (:func:`sample_statement`), so the text alone does not predict the
    label.
    """
    config = config or ShapesConfig()
    rows = []
    for index in range(n):
        pair_rng = _example_rng(config, split_seed, "nlvr2", index - index % 2)
        first_label = pair_rng.random() < 0.5
        want = first_label if index % 2 == 0 else not first_label
        rng = _example_rng(config, split_seed, "nlvr2", index) if index % 2 else pair_rng
        while True:  # a statement drawn blind to the scenes, then scene pairs until its truth is `want`
            sentence, truth = sample_statement(rng, config)
            for _ in range(500):
                left, right = sample_scene(rng, config), sample_scene(rng, config)
                if truth(left, right) == want:
                    break
            else:
                continue
            break
        rows.append(
            {
                "image_left": _png(render_scene(left, config)),
                "image_right": _png(render_scene(right, config)),
                "sentence": sentence,
                "label": int(want),
                "id": index,
                "scene_left": left.to_json(),
                "scene_right": right.to_json(),
            }
        )
    features = datasets.Features(
        {
            "image_left": datasets.Image(),
            "image_right": datasets.Image(),
            "sentence": datasets.Value("string"),
            "label": datasets.Value("int64"),
            "id": datasets.Value("int64"),
            "scene_left": datasets.Value("string"),
            "scene_right": datasets.Value("string"),
        }
    )
    return datasets.Dataset.from_list(rows, features=features)
