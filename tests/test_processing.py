"""Tests for EfficientVLMImageProcessor and EfficientVLMProcessor (offline, CPU, a few seconds)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from efficientvlm.models.image_processing_efficientvlm import (
    EfficientVLMImageProcessor,
    convert_pil_to_rgb,
    load_image_file,
)
from tests.utils import make_test_images

MEAN = np.array(OPENAI_CLIP_MEAN, dtype=np.float32)
STD = np.array(OPENAI_CLIP_STD, dtype=np.float32)
READABLE_IMAGES = [
    "rgb.png", "rgba.png", "l.png", "p.png", "p_transparent.png", "la.png", "i16.png", "rgb.jpg", "l.jpg", "cmyk.jpg",
]  # fmt: skip


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    return make_test_images(tmp_path / "images")


@pytest.fixture
def image_processor() -> EfficientVLMImageProcessor:
    return EfficientVLMImageProcessor()


def normalised_range() -> tuple[np.ndarray, np.ndarray]:
    """Per-channel bounds of values normalised from [0, 1]."""
    return (0 - MEAN) / STD, (1 - MEAN) / STD


# ---------------------------------------------------------------- image processor


def test_defaults(image_processor: EfficientVLMImageProcessor) -> None:
    assert (image_processor.size.height, image_processor.size.width) == (224, 224)
    assert image_processor.resample == Image.Resampling.BICUBIC
    assert image_processor.rescale_factor == pytest.approx(1 / 255)
    assert tuple(image_processor.image_mean) == tuple(OPENAI_CLIP_MEAN)
    assert tuple(image_processor.image_std) == tuple(OPENAI_CLIP_STD)
    assert image_processor.model_input_names == ["pixel_values"]
    assert image_processor.backend == "pil"


@pytest.mark.parametrize("name", READABLE_IMAGES)
def test_every_mode_and_file_type(image_processor, images, name: str) -> None:
    pixel_values = image_processor(images[name], return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 3, 224, 224)
    assert pixel_values.dtype == torch.float32
    low, high = normalised_range()
    per_channel = pixel_values[0].flatten(1)
    assert (per_channel.min(1).values.numpy() >= low - 1e-4).all()
    assert (per_channel.max(1).values.numpy() <= high + 1e-4).all()
    assert pixel_values.std() > 0.1  # the picture's shapes survive every conversion


@pytest.mark.parametrize(
    "mode", ["RGB", "RGBA", "L", "P", "I;16", "I;16B", "I", "F", "CMYK", "LA", "La", "RGBa", "1", "YCbCr", "HSV"]
)
def test_every_pil_mode(image_processor, mode: str) -> None:
    pixel_values = image_processor(Image.new(mode, (20, 10)), return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 3, 224, 224)


def test_one_pixel_normalisation_by_hand(image_processor) -> None:
    colour = np.array([200, 100, 50], dtype=np.float32)
    image = Image.new("RGB", (17, 23), tuple(int(c) for c in colour))  # uniform, so resizing keeps the value
    pixel = image_processor(image, return_tensors="np")["pixel_values"][0, :, 100, 100]
    expected = (colour / 255 - MEAN) / STD
    np.testing.assert_allclose(pixel, expected, atol=1e-5)


def test_transparency_is_composited_onto_white(image_processor) -> None:
    transparent = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    white = Image.new("RGB", (8, 8), (255, 255, 255))
    assert np.array_equal(np.asarray(convert_pil_to_rgb(transparent)), np.asarray(white))
    np.testing.assert_allclose(
        image_processor(transparent, return_tensors="np")["pixel_values"],
        image_processor(white, return_tensors="np")["pixel_values"],
    )


def test_sixteen_bit_greyscale_is_scaled_not_clipped() -> None:
    image = Image.fromarray(np.full((4, 4), 128 * 257, dtype=np.uint16))
    assert image.mode == "I;16"
    assert np.asarray(convert_pil_to_rgb(image))[0, 0].tolist() == [128, 128, 128]


def test_numpy_and_torch_inputs_match_pil(image_processor, images) -> None:
    pil = Image.open(images["rgb.png"]).convert("RGB")
    hwc = np.asarray(pil)
    expected = image_processor(pil, return_tensors="pt")["pixel_values"]
    chw = np.ascontiguousarray(hwc.transpose(2, 0, 1))
    for image in (hwc, chw, torch.from_numpy(hwc.copy()), torch.from_numpy(chw)):
        torch.testing.assert_close(image_processor(image, return_tensors="pt")["pixel_values"], expected)
    batch = np.stack([hwc, hwc])
    assert image_processor(batch, return_tensors="pt")["pixel_values"].shape == (2, 3, 224, 224)


def test_greyscale_and_rgba_arrays(image_processor, images) -> None:
    grey = np.asarray(Image.open(images["l.png"]))
    assert grey.ndim == 2
    expected = image_processor(Image.open(images["l.png"]), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(image_processor(grey, return_tensors="pt")["pixel_values"], expected)
    grey_tensor = torch.from_numpy(grey[..., None].copy())
    torch.testing.assert_close(image_processor(grey_tensor, return_tensors="pt")["pixel_values"], expected)
    rgba = np.zeros((10, 12, 4), dtype=np.uint8)
    assert image_processor(rgba, return_tensors="pt")["pixel_values"].shape == (1, 3, 224, 224)


def test_tensor_requiring_grad_is_accepted(image_processor) -> None:
    tensor = torch.full((3, 10, 12), 128.0, requires_grad=True)
    assert image_processor(tensor, return_tensors="pt")["pixel_values"].shape == (1, 3, 224, 224)


@pytest.mark.parametrize("shape", [(10, 12, 2), (5, 10, 12), (1, 1, 10, 12, 3), (12,)])
def test_unsupported_array_shape(image_processor, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="Unsupported image array shape"):
        image_processor(np.zeros(shape, dtype=np.uint8))


def test_path_inputs_str_and_pathlib(image_processor, images) -> None:
    expected = image_processor(Image.open(images["rgb.png"]), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(image_processor(str(images["rgb.png"]), return_tensors="pt")["pixel_values"], expected)
    torch.testing.assert_close(image_processor(images["rgb.png"], return_tensors="pt")["pixel_values"], expected)
    mixed = [images["rgb.png"], str(images["l.jpg"]), Image.open(images["p.png"])]
    batch = image_processor(mixed, return_tensors="pt")
    assert batch["pixel_values"].shape == (3, 3, 224, 224)


def test_data_uri_input(image_processor, images) -> None:
    uri = "data:image/png;base64," + base64.b64encode(images["rgb.png"].read_bytes()).decode()
    torch.testing.assert_close(
        image_processor(uri, return_tensors="pt")["pixel_values"],
        image_processor(images["rgb.png"], return_tensors="pt")["pixel_values"],
    )


def test_exif_orientation_is_applied(image_processor, tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    Image.new("RGB", (40, 20), (255, 0, 0)).save(path, exif=exif)
    assert load_image_file(path).size == (20, 40)


def test_missing_file(image_processor, tmp_path: Path) -> None:
    missing = tmp_path / "no_such_image.png"
    with pytest.raises(FileNotFoundError, match="no_such_image.png"):
        image_processor(missing)
    with pytest.raises(FileNotFoundError, match="no_such_image.png"):
        image_processor([str(missing)])


def test_corrupt_file(image_processor, images) -> None:
    with pytest.raises(ValueError, match=r"corrupt\.png' could not be decoded as an image"):
        image_processor(images["corrupt.png"])


def test_truncated_file(image_processor, images, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(images["rgb.jpg"].read_bytes()[:200])
    with pytest.raises(ValueError, match=r"truncated\.jpg' could not be decoded as an image"):
        image_processor(truncated)


def test_directory_is_rejected(image_processor, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a file"):
        image_processor(tmp_path)


def test_pairs(image_processor, images) -> None:
    pairs = [
        (images["rgb.png"], images["l.jpg"]),
        [Image.open(images["rgba.png"]), np.asarray(Image.open(images["rgb.png"]))],
        (str(images["cmyk.jpg"]), images["p.png"]),
    ]
    pixel_values = image_processor(pairs, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (3, 2, 3, 224, 224)
    left = image_processor(images["rgb.png"], return_tensors="pt")["pixel_values"][0]
    right = image_processor(images["l.jpg"], return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(pixel_values[0, 0], left)
    torch.testing.assert_close(pixel_values[0, 1], right)
    unbatched = image_processor(pairs[:1])["pixel_values"]
    assert isinstance(unbatched, list) and unbatched[0].shape == (2, 3, 224, 224)


@pytest.mark.parametrize(
    ("bad_images", "message"),
    [
        ([(Image.new("RGB", (4, 4)),) * 3], "exactly 2 images"),
        ([Image.new("RGB", (4, 4)), (Image.new("RGB", (4, 4)),) * 2], "mixes single images and groups"),
        ([], "empty"),
    ],
)
def test_bad_image_structure(image_processor, bad_images, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        image_processor(bad_images)


def test_image_processor_round_trip(images, tmp_path: Path) -> None:
    original = EfficientVLMImageProcessor(size={"height": 64, "width": 48})
    original.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "preprocessor_config.json").read_text())["image_processor_type"] == (
        "EfficientVLMImageProcessor"
    )
    reloaded = EfficientVLMImageProcessor.from_pretrained(tmp_path / "saved")
    assert reloaded.to_dict() == original.to_dict()
    inputs = [images["rgb.png"], images["la.png"]]
    expected = original(inputs, return_tensors="pt")["pixel_values"]
    assert expected.shape == (2, 3, 64, 48)
    torch.testing.assert_close(reloaded(inputs, return_tensors="pt")["pixel_values"], expected)
