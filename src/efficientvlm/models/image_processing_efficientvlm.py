"""Image processor for EfficientVLM (PIL/NumPy backend, no torchvision needed).

This module is also shipped to the Hub as remote code, so it imports only numpy, PIL and transformers.

Pipeline, per image: load (file paths) -> convert to RGB -> resize to 224x224 (bicubic) -> rescale by 1/255
-> normalise with the OpenAI CLIP mean/std. The result is a channels-first float32 array.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_backends import PilBackend
from transformers.image_utils import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ChannelDimension,
    ImageInput,
    PILImageResampling,
    infer_channel_dimension_format,
    is_pil_image,
    is_torch_tensor,
    load_image,
)
from transformers.processing_utils import ImagesKwargs, Unpack

# Pillow modes holding 16-bit greyscale (e.g. 16-bit PNG/TIFF). They are scaled to 8 bits, since Pillow's own
# conversion to RGB clips every value above 255 to white.
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
# Pillow modes with premultiplied alpha, mapped to their straight-alpha counterparts (Pillow cannot convert
# "La" to RGBA directly).
_PREMULTIPLIED_ALPHA_MODES = {"La": "LA", "RGBa": "RGBA"}
_ALPHA_MODES = ("RGBA", "LA", "PA")
# Strings handed to transformers' own loader instead of being treated as local file paths.
_REMOTE_PREFIXES = ("http://", "https://", "data:image/")


def load_image_file(path: str | os.PathLike) -> PIL.Image.Image:
    """Open a local image file with Pillow, decode it fully and apply its EXIF orientation.

    Args:
        path: Path of the image file.

    Returns:
        The decoded image, in the file's own mode (not yet converted to RGB).

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: `path` is a directory, or its content could not be decoded as an image.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"Image file not found: '{path}' (resolved as '{path.absolute()}'). Check the path, or pass the image "
            "as a PIL image, numpy array or torch tensor instead."
        )
    if not path.is_file():
        raise ValueError(f"'{path}' is not a file. Pass the path of an image file, not a directory.")
    with open(path, "rb") as file:
        try:
            with PIL.Image.open(file) as image:
                image.load()
                # exif_transpose returns a new image, which stays valid once the file is closed.
                return PIL.ImageOps.exif_transpose(image)
        except (PIL.UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise ValueError(
                f"'{path}' could not be decoded as an image ({type(error).__name__}: {error}). Check that the "
                "file is a complete image in a format Pillow can read (PNG, JPEG, BMP, ...), or remove it from the "
                "inputs."
            ) from error


def convert_pil_to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """Convert a PIL image of any mode to RGB.

    - Transparent images (RGBA, LA, PA, La, RGBa, or P/L/RGB with a `transparency` entry) are composited onto
      a white background, so transparent pixels become white rather than black.
    - 16-bit greyscale (I;16 and its byte-order variants) is scaled to 8 bits (value / 257) before conversion.
    - Every other mode (L, 1, P, CMYK, YCbCr, HSV, LAB, I, F, ...) uses Pillow's conversion; note that for the
      32-bit "I" and "F" modes Pillow clips values to 0..255.

    Args:
        image: The image to convert.

    Returns:
        An image in mode "RGB".
    """
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        eight_bit = np.clip(np.rint(np.asarray(image, dtype=np.float64) / 257.0), 0, 255).astype(np.uint8)
        return PIL.Image.fromarray(eight_bit, mode="L").convert("RGB")
    if image.mode in _PREMULTIPLIED_ALPHA_MODES:
        image = image.convert(_PREMULTIPLIED_ALPHA_MODES[image.mode])
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _unsupported_shape_error(shape: tuple[int, ...]) -> ValueError:
    """Build the error raised for an array or tensor that is not a single image."""
    return ValueError(
        f"Unsupported image array shape {tuple(shape)}: expected (H, W), (H, W, C) or (C, H, W) with C = 1 "
        "(greyscale), 3 (RGB) or 4 (RGBA) channels. Convert the array to one of these layouts first."
    )


def _is_batch_of_pairs(images: Any) -> bool:
    """Tell whether `images` is a batch of NLVR2-style pairs: a list whose every element holds exactly 2 images.

    Raises:
        ValueError: The input is empty, mixes single images with groups, or has a group that is not a pair.
    """
    if not isinstance(images, (list, tuple)):
        return False
    if len(images) == 0:
        raise ValueError("No images were given: `images` is an empty list.")
    nested = [isinstance(example, (list, tuple)) for example in images]
    if not any(nested):
        return False
    if not all(nested):
        raise ValueError(
            "`images` mixes single images and groups of images. Pass either a list of images (one per example) or "
            "a list of (left, right) pairs (two per example, as in NLVR2)."
        )
    for index, example in enumerate(images):
        if len(example) != 2:
            raise ValueError(
                f"Example {index} holds {len(example)} images, but nested image inputs must be (left, right) pairs "
                "of exactly 2 images. Pass a flat list for one image per example."
            )
    return True


class EfficientVLMImageProcessor(PilBackend):
    r"""Image processor for EfficientVLM, on the PIL/NumPy backend (no torchvision required).

    Each image is converted to RGB (see [`convert_pil_to_rgb`]), resized to `size` (default 224x224, bicubic),
    rescaled by `rescale_factor` (1/255) and normalised with the OpenAI CLIP mean and std.

    Accepted images: PIL images of any mode, numpy arrays and torch tensors of shape (H, W), (H, W, C) or
    (C, H, W) with C in {1, 3, 4} (uint8 values in 0..255; 4 channels are treated as RGBA), a 4-D batch of those,
    and local file paths (`str` or `pathlib.Path`, decoded with Pillow and EXIF-rotated). `http(s)://` URLs and
    `data:image/` strings are delegated to `transformers.image_utils.load_image`.

    Batches: a list gives `pixel_values` of shape (batch, 3, H, W). A list of (left, right) pairs, as in NLVR2,
    gives `pixel_values` of shape (batch, 2, 3, H, W).

    Example:

    ```python
    >>> processor = EfficientVLMImageProcessor()
    >>> processor("cat.png", return_tensors="pt")["pixel_values"].shape
    torch.Size([1, 3, 224, 224])
    >>> processor([("left.png", "right.png")], return_tensors="pt")["pixel_values"].shape
    torch.Size([1, 2, 3, 224, 224])
    ```
    """

    resample = PILImageResampling.BICUBIC
    image_mean = OPENAI_CLIP_MEAN
    image_std = OPENAI_CLIP_STD
    size = {"height": 224, "width": 224}
    rescale_factor = 1 / 255
    do_resize = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True
    model_input_names = ["pixel_values"]

    def fetch_images(self, image_url_or_urls: Any) -> Any:
        """Load every file path in a (possibly nested) image input, leaving in-memory images untouched.

        Local paths are opened with [`load_image_file`], which raises `FileNotFoundError` or `ValueError` naming
        the path. Arrays and tensors are checked to have 2 to 4 dimensions; (H, W) ones get a channel axis.
        """
        if isinstance(image_url_or_urls, (list, tuple)):
            return [self.fetch_images(item) for item in image_url_or_urls]
        if isinstance(image_url_or_urls, str) and image_url_or_urls.startswith(_REMOTE_PREFIXES):
            return load_image(image_url_or_urls)
        if isinstance(image_url_or_urls, (str, os.PathLike)):
            return load_image_file(image_url_or_urls)
        if is_pil_image(image_url_or_urls):
            return image_url_or_urls
        if isinstance(image_url_or_urls, np.ndarray) or is_torch_tensor(image_url_or_urls):
            if image_url_or_urls.ndim not in (2, 3, 4):
                raise ValueError(
                    f"Unsupported image array shape {tuple(image_url_or_urls.shape)}: expected one image of shape "
                    "(H, W), (H, W, C) or (C, H, W), or a batch of shape (B, H, W, C) or (B, C, H, W). For image "
                    "pairs, pass a list of (left, right) tuples."
                )
            # A greyscale (H, W) image gets an explicit channel axis, as transformers expects 3-D images.
            return image_url_or_urls[..., None] if image_url_or_urls.ndim == 2 else image_url_or_urls
        raise TypeError(
            f"Unsupported image type {type(image_url_or_urls).__name__}. Pass PIL images, numpy arrays, torch "
            "tensors or image file paths (str or pathlib.Path)."
        )

    def process_image(
        self,
        image: ImageInput,
        do_convert_rgb: bool | None = None,
        input_data_format: str | ChannelDimension | None = None,
        **kwargs: Unpack[ImagesKwargs],
    ) -> np.ndarray:
        """Turn one image into a channels-first numpy array, converting it to RGB when `do_convert_rgb` is set.

        Raises:
            ValueError: An array or tensor does not have an (H, W, C) or (C, H, W) shape with C in {1, 3, 4}.
        """
        if is_pil_image(image):
            if do_convert_rgb:
                image = convert_pil_to_rgb(image)
            return super().process_image(image, do_convert_rgb=False, input_data_format=input_data_format, **kwargs)

        array = image.detach().cpu().numpy() if is_torch_tensor(image) else np.asarray(image)
        if array.ndim != 3:
            raise _unsupported_shape_error(array.shape)
        elif input_data_format is None:
            try:
                input_data_format = infer_channel_dimension_format(array, num_channels=(1, 3, 4))
            except ValueError as error:
                raise _unsupported_shape_error(array.shape) from error
        return super().process_image(
            array, do_convert_rgb=do_convert_rgb, input_data_format=input_data_format, **kwargs
        )

    def _preprocess_image_like_inputs(
        self,
        images: ImageInput,
        *args: Any,
        return_tensors: str | None = None,
        **kwargs: Unpack[ImagesKwargs],
    ) -> BatchFeature:
        """Preprocess single images or NLVR2-style pairs.

        Pairs are flattened, processed like single images, then regrouped so that each example's entry in
        `pixel_values` has shape (2, 3, H, W).
        """
        images = self.fetch_images(images)
        pairs = _is_batch_of_pairs(images)
        if pairs:
            images = [image for pair in images for image in pair]
        features = super()._preprocess_image_like_inputs(images, *args, return_tensors=None, **kwargs)
        pixel_values = features["pixel_values"]
        if pairs:
            pixel_values = [np.stack(pixel_values[index : index + 2]) for index in range(0, len(pixel_values), 2)]
        return BatchFeature(data={"pixel_values": pixel_values}, tensor_type=return_tensors)


__all__ = ["EfficientVLMImageProcessor", "convert_pil_to_rgb", "load_image_file"]
