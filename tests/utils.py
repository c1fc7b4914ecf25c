"""Offline test helpers shared across the test suite: a tiny BERT tokenizer and small image files.

Nothing here touches the network or the Hugging Face Hub.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image
from transformers import BertTokenizer

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
"""Special tokens, in id order: [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4."""

VQA_WORDS = [
    "what", "color", "colour", "is", "the", "shape", "how", "many", "are", "there", "which", "where", "does",
    "do", "in", "on", "of", "a", "an", "and", "to", "it", "this", "that", "image", "picture", "left", "right",
    "top", "bottom", "red", "green", "blue", "yellow", "white", "black", "circle", "circles", "square",
    "squares", "triangle", "triangles", "shapes", "big", "small", "yes", "no", "zero", "one", "two", "three",
    "four", "five", "both", "contain", "contains", "same", "?", ".", ",",
]
"""Lowercase words for questions about coloured shapes, ids 5 onwards in this order."""

WORDPIECES = ["##s", "##ed", "##ing"]
"""A few WordPiece continuation pieces, after `VQA_WORDS`."""

VOCAB = SPECIAL_TOKENS + VQA_WORDS + WORDPIECES
"""The full tiny vocabulary; a token's id is its index."""


def make_tiny_tokenizer(tmp_path: str | os.PathLike, model_max_length: int = 40) -> BertTokenizer:
    """Write `VOCAB` to `<tmp_path>/vocab.txt` and build a lower-casing BERT WordPiece tokenizer from it.

    Args:
        tmp_path: Directory to write `vocab.txt` into (e.g. pytest's `tmp_path`); created if missing.
        model_max_length: Maximum sequence length stored on the tokenizer.

    Returns:
        A `BertTokenizer` (the `tokenizers`-backed one in transformers 5.x) with `len(VOCAB)` tokens.
    """
    directory = Path(tmp_path)
    directory.mkdir(parents=True, exist_ok=True)
    vocab_file = directory / "vocab.txt"
    vocab_file.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    # In transformers 5.x `BertTokenizer(vocab_file=...)` silently ignores the file and keeps a 5-token
    # vocabulary; the path has to go through `vocab=`.
    return BertTokenizer(vocab=str(vocab_file), do_lower_case=True, model_max_length=model_max_length)


def _shapes_picture(width: int = 32, height: int = 24) -> Image.Image:
    """A small RGB picture: a red square and a green bar on a blue background."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:] = (0, 0, 255)
    pixels[4:14, 4:14] = (255, 0, 0)
    pixels[16:20, 10:30] = (0, 255, 0)
    return Image.fromarray(pixels, mode="RGB")


def make_test_images(tmp_path: str | os.PathLike) -> dict[str, Path]:
    """Write small (32x24) test images in several modes and formats, plus one corrupt file.

    Args:
        tmp_path: Directory to write the files into (e.g. pytest's `tmp_path`); created if missing.

    Returns:
        A dict from file name to path. Readable images: `rgb.png`, `rgba.png`, `l.png`, `p.png`,
        `p_transparent.png`, `la.png`, `i16.png` (16-bit greyscale), `rgb.jpg`, `l.jpg`, `cmyk.jpg`.
        `corrupt.png` holds random bytes and cannot be decoded.
    """
    directory = Path(tmp_path)
    directory.mkdir(parents=True, exist_ok=True)
    rgb = _shapes_picture()
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgb.size))
    p_transparent = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    p_transparent.info["transparency"] = 0
    i16 = Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
    images = {
        "rgb.png": rgb,
        "rgba.png": rgba,
        "l.png": rgb.convert("L"),
        "p.png": rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=8),
        "p_transparent.png": p_transparent,
        "la.png": rgba.convert("LA"),
        "i16.png": i16,
        "rgb.jpg": rgb,
        "l.jpg": rgb.convert("L"),
        "cmyk.jpg": rgb.convert("CMYK"),
    }
    paths = {}
    for name, image in images.items():
        paths[name] = directory / name
        image.save(paths[name])
    paths["corrupt.png"] = directory / "corrupt.png"
    paths["corrupt.png"].write_bytes(np.random.default_rng(0).integers(0, 256, size=512, dtype=np.uint8).tobytes())
    return paths


@contextlib.contextmanager
def serve_folder(folder: str | os.PathLike) -> Iterator[str]:
    """Serve `folder` over HTTP on 127.0.0.1 (a free port) while the block runs; yields the base URL.

    Lets tests load images by URL without the network. Missing files answer 404.
    """

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep the test output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
