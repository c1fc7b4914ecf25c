"""Tests for EfficientVLMImageProcessor and EfficientVLMProcessor (offline, CPU, a few seconds)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoProcessor,
    AutoTokenizer,
    BatchFeature,
    PreTrainedConfig,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from efficientvlm.models.image_processing_efficientvlm import (
    EfficientVLMImageProcessor,
    convert_pil_to_rgb,
    load_image_file,
)
from efficientvlm.models.processing_efficientvlm import EfficientVLMProcessor
from tests.utils import VOCAB, make_test_images, make_tiny_tokenizer, serve_folder

MEAN = np.array(OPENAI_CLIP_MEAN, dtype=np.float32)
STD = np.array(OPENAI_CLIP_STD, dtype=np.float32)
READABLE_IMAGES = [
    "rgb.png", "rgba.png", "l.png", "p.png", "p_transparent.png", "la.png", "i16.png", "rgb.jpg", "l.jpg", "cmyk.jpg",
]  # fmt: skip


class ProcessingTestConfig(PreTrainedConfig):
    """Throwaway config, only used to check registration with the Auto classes."""

    model_type = "efficientvlm-processing-test"


@pytest.fixture(scope="module")
def registered() -> None:
    """Register the classes the way the package `__init__` will, under a throwaway model type."""
    AutoConfig.register(ProcessingTestConfig.model_type, ProcessingTestConfig, exist_ok=True)
    AutoImageProcessor.register(
        ProcessingTestConfig, image_processor_classes={"pil": EfficientVLMImageProcessor}, exist_ok=True
    )
    AutoProcessor.register(ProcessingTestConfig, EfficientVLMProcessor, exist_ok=True)


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    return make_test_images(tmp_path / "images")


@pytest.fixture
def image_processor() -> EfficientVLMImageProcessor:
    return EfficientVLMImageProcessor()


@pytest.fixture
def processor(tmp_path: Path) -> EfficientVLMProcessor:
    return EfficientVLMProcessor(
        image_processor=EfficientVLMImageProcessor(), tokenizer=make_tiny_tokenizer(tmp_path / "tokenizer")
    )


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


def test_urls_load_through_transformers_and_errors_name_the_url(image_processor, images) -> None:
    expected = image_processor(images["rgb.png"], return_tensors="pt")["pixel_values"]
    with serve_folder(images["rgb.png"].parent) as base:
        torch.testing.assert_close(image_processor(f"{base}/rgb.png", return_tensors="pt")["pixel_values"], expected)
        mixed = image_processor([f"{base}/rgb.png", images["rgb.png"]], return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(mixed, expected.repeat(2, 1, 1, 1))
        with pytest.raises(ValueError, match=rf"The URL '{base}/missing.png' did not serve an image"):
            image_processor(f"{base}/missing.png")  # the server answers 404 with an HTML page
        with pytest.raises(ValueError, match=rf"'{base}/corrupt.png' did not serve an image"):
            image_processor(f"{base}/corrupt.png")
    for unreachable in ("http://127.0.0.1:1/photo.png", "https://images.example.invalid/x.jpg"):
        with pytest.raises(ConnectionError, match=rf"Could not download the image at URL '{unreachable}'"):
            image_processor(unreachable)


def test_bad_data_uris_are_named(image_processor) -> None:
    with pytest.raises(ValueError, match=r"Unsupported data URI 'data:text/plain;base64,aGk='"):
        image_processor("data:text/plain;base64,aGk=")
    with pytest.raises(ValueError, match=r"The data URI 'data:image/png;base64,aGVsbG8=' could not be decoded"):
        image_processor("data:image/png;base64,aGVsbG8=")


def _picture() -> np.ndarray:
    """A random 24x32 RGB uint8 image, channels-last."""
    return np.random.default_rng(1).integers(0, 256, (24, 32, 3), dtype=np.uint8)


def test_float_images_follow_the_do_rescale_convention(image_processor) -> None:
    hwc = _picture()
    expected = image_processor(hwc, return_tensors="pt")["pixel_values"]
    scaled = hwc.astype(np.float32) / 255  # what ToTensor() holds, channels-last
    to_tensor = torch.from_numpy(scaled).permute(2, 0, 1)  # ... and as ToTensor() returns it
    for image in (scaled, to_tensor, scaled.astype(np.float64)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # do_rescale=False says the images are in [0, 1]: no warning
            result = image_processor(image, do_rescale=False, return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(result, expected, atol=1e-5, rtol=0)
    primaries = np.zeros((24, 32, 3), dtype=np.uint8)  # every value 0 or 1 once scaled: still an image in [0, 1]
    primaries[..., 2], primaries[4:14, 4:14] = 255, (255, 0, 0)
    torch.testing.assert_close(
        image_processor(primaries / 255.0, do_rescale=False, return_tensors="pt")["pixel_values"],
        image_processor(primaries, return_tensors="pt")["pixel_values"],
    )
    half = image_processor(to_tensor.to(torch.bfloat16), do_rescale=False, return_tensors="pt")["pixel_values"]
    assert (half - expected).abs().max() < 0.1  # bf16 holds 8 bits of mantissa: within a few grey levels
    with pytest.warns(UserWarning, match=r"already rescaled images.*Pass do_rescale=False"):
        nearly_black = image_processor(scaled, return_tensors="pt")["pixel_values"]
    assert (nearly_black - expected).abs().max() > 1  # the transformers convention: warned, not second-guessed
    # float images in 0..255 are 8-bit images: the same result as uint8, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for image in (hwc.astype(np.float32), torch.from_numpy(hwc.astype(np.float64)).permute(2, 0, 1)):
            torch.testing.assert_close(image_processor(image, return_tensors="pt")["pixel_values"], expected)
    with pytest.warns(UserWarning, match=r"do_rescale=False, but an image has 8-bit values"):
        image_processor(hwc, do_rescale=False)
    with pytest.warns(UserWarning, match=r"do_rescale=False, but a PIL image \(mode RGB\)"):
        image_processor(Image.fromarray(hwc), do_rescale=False)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.full((4, 4, 3), -0.5, dtype=np.float32), r"\[0, 1\].*or \[0, 255\]; got values in \[-0.5, -0.5\]"),
        (np.full((4, 4, 3), np.nan, dtype=np.float32), "NaN or infinite"),
        (np.full((4, 4, 3), 300, dtype=np.int32), r"0\.\.255 \(8-bit\).*int32 array with values in \[300, 300\]"),
        (np.zeros((4, 4, 3), dtype=np.complex64), "Unsupported image array dtype complex64"),
    ],
)
def test_values_that_are_not_an_image_are_refused(image_processor, image, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        image_processor(image)


def test_ambiguous_layouts_follow_the_documented_default(image_processor) -> None:
    pixel = np.array([[[10, 200, 30]]], dtype=np.uint8)  # a 1x1 RGB image, (H, W, C) = (1, 1, 3)
    raw = {"do_resize": False, "do_normalize": False, "return_tensors": "np"}
    values = np.array([10, 200, 30]) / 255
    np.testing.assert_allclose(image_processor(pixel, **raw)["pixel_values"][0, :, 0, 0], values)
    # torch tensors are channels-first when ambiguous: (1, 1, 3) is a 1x3 greyscale image
    grey = image_processor(torch.from_numpy(pixel), **raw)["pixel_values"][0]
    assert grey.shape == (3, 1, 3) and np.allclose(grey[0], grey[1]) and np.allclose(grey[0, 0], values)
    # input_data_format decides, as in transformers
    first = image_processor(pixel, input_data_format="channels_first", **raw)["pixel_values"]
    np.testing.assert_allclose(first, grey[None])
    last = image_processor(torch.from_numpy(pixel), input_data_format="channels_last", return_tensors="pt")
    torch.testing.assert_close(last["pixel_values"], image_processor(pixel, return_tensors="pt")["pixel_values"])
    chw = np.ascontiguousarray(np.random.default_rng(0).integers(0, 256, (3, 5, 4), dtype=np.uint8))  # ambiguous too
    torch.testing.assert_close(
        image_processor(chw, input_data_format="channels_first", return_tensors="pt")["pixel_values"],
        image_processor(np.ascontiguousarray(chw.transpose(1, 2, 0)), return_tensors="pt")["pixel_values"],
    )
    message = r"input_data_format='channels_last' reads the image array of shape \(3, 10, 12\) as having 12 channels"
    with pytest.raises(ValueError, match=message):
        image_processor(np.zeros((3, 10, 12), dtype=np.uint8), input_data_format="channels_last")


def test_sixteen_bit_arrays_read_like_the_sixteen_bit_file(image_processor, tmp_path: Path) -> None:
    grey = np.random.default_rng(2).integers(0, 65536, (24, 32)).astype(np.uint16)
    Image.fromarray(grey).save(tmp_path / "grey16.png")
    from_file = image_processor(tmp_path / "grey16.png", return_tensors="pt")["pixel_values"]
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I")
    for image in (grey, grey[..., None], torch.from_numpy(grey.astype(np.int32)).to(torch.uint16)):
        torch.testing.assert_close(image_processor(image, return_tensors="pt")["pixel_values"], from_file)
    rgb = _picture()
    torch.testing.assert_close(image_processor(rgb.astype(np.uint16) * 257, return_tensors="pt")["pixel_values"],
                               image_processor(rgb, return_tensors="pt")["pixel_values"])
    torch.testing.assert_close(image_processor(rgb.astype(np.int64), return_tensors="pt")["pixel_values"],
                               image_processor(rgb, return_tensors="pt")["pixel_values"])
    mask = rgb[..., 0] > 128
    torch.testing.assert_close(image_processor(mask, return_tensors="pt")["pixel_values"],
                               image_processor(Image.fromarray(mask), return_tensors="pt")["pixel_values"])


def test_four_channel_arrays_are_rgba_and_cmyk_goes_through_a_pil_image(image_processor) -> None:
    data = np.random.default_rng(3).integers(0, 256, (24, 32, 4), dtype=np.uint8)
    as_array = image_processor(data, return_tensors="pt")["pixel_values"]
    rgba = Image.fromarray(data)
    assert rgba.mode == "RGBA"
    torch.testing.assert_close(as_array, image_processor(rgba, return_tensors="pt")["pixel_values"])
    cmyk = Image.fromarray(data, mode="CMYK")
    from_cmyk = image_processor(cmyk, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(from_cmyk, image_processor(cmyk.convert("RGB"), return_tensors="pt")["pixel_values"])
    assert (from_cmyk - as_array).abs().max() > 1  # the two readings differ: the caller says which one is meant


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


# ---------------------------------------------------------------- processor


def test_processor_keys_shapes_and_padding(processor, images) -> None:
    questions = ["What color is the square?", "How many circles are there in the picture on the left?"]
    batch = processor(images=[images["rgb.png"], images["l.jpg"]], text=questions)
    assert isinstance(batch, BatchFeature)
    assert set(batch) == {"input_ids", "attention_mask", "pixel_values"}
    assert batch["pixel_values"].shape == (2, 3, 224, 224)
    lengths = [len(processor.tokenizer(q)["input_ids"]) for q in questions]
    assert batch["input_ids"].shape == (2, max(lengths))  # padding="longest"
    assert batch["input_ids"].dtype == torch.long
    assert batch["attention_mask"].sum(1).tolist() == lengths
    pad_id = processor.tokenizer.pad_token_id
    assert (batch["input_ids"][0, lengths[0] :] == pad_id).all()
    assert batch["input_ids"][0, 0].item() == VOCAB.index("[CLS]")
    assert "[UNK]" not in processor.tokenizer.convert_ids_to_tokens(batch["input_ids"][1])
    assert processor.model_input_names == ["pixel_values", "input_ids", "attention_mask"]


def test_processor_truncates_to_40_tokens(processor) -> None:
    batch = processor(text=["what is red " * 30, "is it red?"])
    assert batch["input_ids"].shape == (2, 40)
    assert batch["input_ids"][0, -1].item() == processor.tokenizer.sep_token_id
    assert processor(text="what is red " * 30, max_length=12)["input_ids"].shape == (1, 12)


def test_processor_overrides(processor, images) -> None:
    batch = processor(
        images=images["rgb.png"], text="is it red?", padding="max_length", max_length=16, return_tensors="np"
    )
    assert isinstance(batch["input_ids"], np.ndarray) and batch["input_ids"].shape == (1, 16)
    assert isinstance(batch["pixel_values"], np.ndarray) and batch["pixel_values"].shape == (1, 3, 224, 224)


def test_processor_single_modalities(processor, images) -> None:
    assert set(processor(text="is it red?")) == {"input_ids", "attention_mask"}
    assert set(processor(images=images["rgb.png"])) == {"pixel_values"}


def test_processor_pairs(processor, images) -> None:
    batch = processor(
        images=[(images["rgb.png"], images["p.png"]), (images["l.png"], images["rgba.png"])],
        text=["the left picture contains a red square.", "both pictures contain two circles."],
    )
    assert batch["pixel_values"].shape == (2, 2, 3, 224, 224)
    assert batch["input_ids"].shape[0] == 2


@pytest.mark.parametrize(("text", "index"), [("", 0), ("   \n", 0), (["what color?", ""], 1), (["a", "b", "\t"], 2)])
def test_empty_question(processor, text, index: int) -> None:
    with pytest.raises(ValueError, match=rf"question/text at index {index} is empty"):
        processor(text=text)


def test_no_inputs(processor) -> None:
    with pytest.raises(ValueError, match="neither"):
        processor()


def test_mismatched_batch_sizes(processor, images) -> None:
    with pytest.raises(ValueError, match=r"1 image example\(s\) but 2 text\(s\)"):
        processor(images=[images["rgb.png"]], text=["is it red?", "is it blue?"])


def test_processor_errors_name_the_path(processor, images, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.png"):
        processor(images=tmp_path / "missing.png", text="is it red?")
    with pytest.raises(ValueError, match=r"corrupt\.png' could not be decoded"):
        processor(images=images["corrupt.png"], text="is it red?")


def test_decode(processor) -> None:
    question = "what color is the square?"
    batch = processor(text=[question, "how many circles?"])
    assert processor.batch_decode(batch["input_ids"]) == [question, "how many circles?"]
    assert processor.decode(batch["input_ids"][0]) == question
    assert processor.decode(batch["input_ids"][0], skip_special_tokens=False).startswith("[CLS]")


def test_processor_requires_both_sub_processors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tokenizer"):
        EfficientVLMProcessor(image_processor=EfficientVLMImageProcessor())
    with pytest.raises(ValueError, match="image_processor"):
        EfficientVLMProcessor(tokenizer=make_tiny_tokenizer(tmp_path))


def test_processor_round_trip(registered, processor, images, tmp_path: Path) -> None:
    processor.save_pretrained(tmp_path / "saved")
    saved = {path.name for path in (tmp_path / "saved").iterdir()}
    assert {"processor_config.json", "tokenizer.json", "tokenizer_config.json"} <= saved
    config = json.loads((tmp_path / "saved" / "processor_config.json").read_text())
    assert config["processor_class"] == "EfficientVLMProcessor"
    assert config["image_processor"]["image_processor_type"] == "EfficientVLMImageProcessor"

    reloaded = EfficientVLMProcessor.from_pretrained(tmp_path / "saved")
    assert isinstance(reloaded.image_processor, EfficientVLMImageProcessor)
    assert reloaded.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    assert reloaded.tokenizer.model_max_length == 40
    inputs = {"images": [images["rgb.png"], images["i16.png"]], "text": ["what color is the square?", "is it red?"]}
    expected, actual = processor(**inputs), reloaded(**inputs)
    assert set(actual) == set(expected)
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key])


def test_auto_class_registration(registered, processor, images, tmp_path: Path) -> None:
    directory = tmp_path / "auto"
    ProcessingTestConfig().save_pretrained(directory)
    processor.save_pretrained(directory)
    auto_processor = AutoProcessor.from_pretrained(directory)
    assert type(auto_processor) is EfficientVLMProcessor
    assert type(AutoImageProcessor.from_pretrained(directory)) is EfficientVLMImageProcessor
    assert type(AutoImageProcessor.from_pretrained(directory, backend="pil")) is EfficientVLMImageProcessor
    assert type(AutoTokenizer.from_pretrained(directory)).__name__ == "BertTokenizer"
    inputs = {"images": images["rgb.png"], "text": "is it red?"}
    for key, value in processor(**inputs).items():
        torch.testing.assert_close(auto_processor(**inputs)[key], value)
    image_processor_only = tmp_path / "image_processor_only"
    ProcessingTestConfig().save_pretrained(image_processor_only)
    EfficientVLMImageProcessor().save_pretrained(image_processor_only)
    assert type(AutoImageProcessor.from_pretrained(image_processor_only)) is EfficientVLMImageProcessor


def test_remote_code_loads_without_the_library(processor, images, tmp_path: Path, monkeypatch) -> None:
    """The saved module files must work on their own: only relative imports between them (Hub remote code)."""
    monkeypatch.setattr(EfficientVLMImageProcessor, "_auto_class", "AutoImageProcessor")
    monkeypatch.setattr(EfficientVLMProcessor, "_auto_class", "AutoProcessor")
    directory = tmp_path / "remote"
    processor.save_pretrained(directory)
    assert {"image_processing_efficientvlm.py", "processing_efficientvlm.py"} <= set(os.listdir(directory))
    script = (
        "import sys; from transformers import AutoProcessor\n"
        f"processor = AutoProcessor.from_pretrained({str(directory)!r}, trust_remote_code=True)\n"
        "assert 'efficientvlm' not in sys.modules\n"
        f"batch = processor(images=[({str(images['rgb.png'])!r}, {str(images['l.jpg'])!r})], text='is it red?')\n"
        "shape = 'x'.join(str(size) for size in batch['pixel_values'].shape)\n"
        "print(type(processor).__name__, type(processor.image_processor).__name__, shape)"
    )
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    environment.pop("PYTHONPATH", None)  # the library must not be importable
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["EfficientVLMProcessor", "EfficientVLMImageProcessor", "1x2x3x224x224"]
