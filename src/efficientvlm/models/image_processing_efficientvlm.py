"""Image processor for EfficientVLM (PIL/NumPy backend, no torchvision needed).

This module is also shipped to the Hub as remote code, so it imports only numpy, PIL and transformers.

Pipeline, per image: load (file paths, URLs, data URIs) -> convert to RGB -> resize to 224x224 (bicubic) -> rescale
by 1/255 -> normalise with the OpenAI CLIP mean/std. The result is a channels-first float32 array.
"""

from __future__ import annotations

import os
import warnings
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
    is_pil_image,
    is_scaled_image,
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
_REMOTE_PREFIXES = ("http://", "https://", "data:")
# Channel counts of an image array: greyscale, RGB, RGBA.
_CHANNELS = (1, 3, 4)
#: Seconds to wait for an image URL to answer before giving up.
URL_TIMEOUT = 10.0


def load_image_url(url: str, timeout: float | None = URL_TIMEOUT) -> PIL.Image.Image:
    """Load an `http(s)://` URL or a `data:image/...;base64,...` URI with `transformers.image_utils.load_image`.

    Args:
        url: The address, or the data URI.
        timeout: Seconds to wait for the server (None: wait forever).

    Returns:
        The decoded image, EXIF-rotated, in its own mode (not yet converted to RGB).

    Raises:
        ConnectionError: The URL could not be downloaded (no network, unknown host, refused, timed out).
        ValueError: What the URL served, or the data URI holds, is not an image Pillow can read (e.g. an HTML
            error page), or the data URI is not a base64 image.
    """
    shown = url if len(url) <= 100 else url[:97] + "..."
    if url.startswith("data:"):
        if not url.startswith("data:image/") or "," not in url:
            raise ValueError(
                f"Unsupported data URI {shown!r}: expected 'data:image/<format>;base64,<data>'. Pass an image data "
                "URI, a URL, a file path or a PIL image."
            )
        try:
            image = load_image(url)
            image.load()
        except Exception as error:  # load_image raises ValueError, Pillow OSError or UnidentifiedImageError
            raise ValueError(
                f"The data URI {shown!r} could not be decoded as an image ({type(error).__name__}: "
                f"{str(error)[:200]}). Check that it holds a complete base64-encoded PNG, JPEG, ... file."
            ) from error
        return image
    try:
        image = load_image(url, timeout=timeout)
        image.load()
    except PIL.UnidentifiedImageError as error:
        raise ValueError(
            f"The URL {shown!r} did not serve an image Pillow can read (it may have answered with a web page or an "
            "error page, e.g. HTTP 404). Check the address, or download the image and pass its local path."
        ) from error
    except Exception as error:  # network errors come from httpx and are not OSError subclasses
        raise ConnectionError(
            f"Could not download the image at URL {shown!r} ({type(error).__name__}: {error}). Check the address "
            "and the network connection (with no network, download the image first and pass its local path or a "
            "PIL image)."
        ) from error
    return image


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
        return PIL.Image.fromarray(_sixteen_to_eight_bit(np.asarray(image)), mode="L").convert("RGB")
    if image.mode in _PREMULTIPLIED_ALPHA_MODES:
        image = image.convert(_PREMULTIPLIED_ALPHA_MODES[image.mode])
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _sixteen_to_eight_bit(array: np.ndarray) -> np.ndarray:
    """Scale 16-bit values (0..65535) to 8 bits (value / 257, rounded), as 16-bit greyscale files are read."""
    return np.clip(np.rint(np.asarray(array, dtype=np.float64) / 257.0), 0, 255).astype(np.uint8)


def _unsupported_shape_error(shape: tuple[int, ...]) -> ValueError:
    """Build the error raised for an array or tensor that is not a single image."""
    return ValueError(
        f"Unsupported image array shape {tuple(shape)}: expected (H, W), (H, W, C) or (C, H, W) with C = 1 "
        "(greyscale), 3 (RGB) or 4 (RGBA) channels. Convert the array to one of these layouts first."
    )


def _channel_layout(
    shape: tuple[int, ...], input_data_format: Any, channels_first_if_ambiguous: bool
) -> ChannelDimension:
    """Where the channel axis of a 3-D image array is.

    `input_data_format` decides when given. Otherwise the layout is inferred from which end axis has 1, 3 or 4
    entries; when both have (e.g. a 1x1 RGB image of shape (1, 1, 3), or (3, 5, 4)), numpy arrays are read
    channels-last (H, W, C), the layout of `np.asarray(pil_image)`, and torch tensors channels-first (C, H, W), the
    layout of torchvision's `ToTensor()`.

    Raises:
        ValueError: The array has no axis of 1, 3 or 4 channels where the layout puts it.
    """
    if input_data_format is not None:
        layout = ChannelDimension(input_data_format)
        axis = 0 if layout == ChannelDimension.FIRST else -1
        if shape[axis] not in _CHANNELS:
            raise ValueError(
                f"input_data_format={layout.value!r} reads the image array of shape {tuple(shape)} as having "
                f"{shape[axis]} channels; an image has 1 (greyscale), 3 (RGB) or 4 (RGBA). Pass the other "
                "input_data_format ('channels_first' for (C, H, W), 'channels_last' for (H, W, C)) or reshape the "
                "array."
            )
        return layout
    first, last = shape[0] in _CHANNELS, shape[-1] in _CHANNELS
    if first and last:
        return ChannelDimension.FIRST if channels_first_if_ambiguous else ChannelDimension.LAST
    if first or last:
        return ChannelDimension.FIRST if first else ChannelDimension.LAST
    raise _unsupported_shape_error(shape)


def _with_channel_axis(image: Any, input_data_format: Any = None) -> Any:
    """Give a 2-D (H, W) greyscale array or tensor the channel axis its layout expects: last for numpy arrays, first
    for torch tensors, or as `input_data_format` says."""
    if input_data_format is not None:
        first = ChannelDimension(input_data_format) == ChannelDimension.FIRST
    else:
        first = is_torch_tensor(image)
    return image[None] if first else image[..., None]


def _warn(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=4)


def _array_to_image(array: np.ndarray, do_rescale: bool | None) -> PIL.Image.Image | np.ndarray:
    """Read a channels-last (H, W, C) array as the same image from a file would be read.

    - uint8: as is; bool: 0/255; other integer types: values must lie in 0..255; uint16 (16-bit): scaled to 8 bits
      (value / 257), as 16-bit greyscale files are. These become a PIL image ("L", "RGB" or "RGBA": 4 channels are
      RGBA, as `PIL.Image.fromarray` reads them; wrap CMYK data in a PIL image of mode "CMYK" instead).
    - float: values in [0, 1] are already rescaled (e.g. torchvision's `ToTensor()`) and stay float; the transformers
      convention is that they need `do_rescale=False`, and a warning says so when `do_rescale` is on. Values in
      [0, 255] are rounded to 8 bits (a warning says so when `do_rescale=False`). Other values (e.g. an image already
      normalised with a mean and std) are refused.

    Raises:
        ValueError: NaN or infinite values, or values out of the ranges above.
        TypeError: An unsupported dtype (complex, object, ...).
    """
    dtype = array.dtype
    if np.issubdtype(dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError(
                f"The image array (shape {array.shape}, {dtype}) holds NaN or infinite values. Pass a valid image."
            )
        low, high = float(array.min()), float(array.max())
        if is_scaled_image(array):
            if do_rescale:
                _warn(
                    "It looks like you are trying to rescale already rescaled images: a float image has every value in "
                    "[0, 1] (as torchvision's ToTensor() gives), but do_rescale=True divides it by 255 again, which "
                    "makes it nearly black. Pass do_rescale=False (to the image processor, the processor or the "
                    "pipeline) for images in [0, 1], or pass uint8 / 0..255 images."
                )
            return array.astype(np.float32)
        if low >= 0 and high <= 255:
            if do_rescale is False:
                _warn(
                    f"do_rescale=False, but a float image has values up to {high:g}: it is read as a 0..255 image and "
                    "not rescaled to [0, 1], so the model sees values 255 times too large. Pass do_rescale=True for "
                    "0..255 images, or divide them by 255 first."
                )
            array = np.rint(array).astype(np.uint8)
        else:
            raise ValueError(
                f"Float image values must lie in [0, 1] (e.g. ToTensor() output) or [0, 255]; got values in "
                f"[{low:g}, {high:g}]. An image that was already normalised (mean/std) cannot be processed again: "
                "pass the original image."
            )
    elif dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif dtype == np.uint16:
        array = _sixteen_to_eight_bit(array)
    elif np.issubdtype(dtype, np.integer) and dtype != np.uint8:
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise ValueError(
                f"Integer image values must lie in 0..255 (8-bit), or the array must be uint16 (16-bit, scaled to 8 "
                f"bits as 16-bit image files are); got a {dtype} array with values in [{low}, {high}]. Convert it to "
                "uint8 or uint16 first."
            )
        array = array.astype(np.uint8)
    elif dtype != np.uint8:
        raise TypeError(f"Unsupported image array dtype {dtype}: pass uint8, uint16, bool or float values.")
    if do_rescale is False:
        _warn(
            "do_rescale=False, but an image has 8-bit values (0..255): they are not rescaled to [0, 1], so the model "
            "sees values 255 times too large. Pass do_rescale=True for PIL images, files and integer arrays."
        )
    return PIL.Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def _float_to_rgb(array: np.ndarray) -> np.ndarray:
    """RGB of a channels-last float image in [0, 1]: greyscale repeated, RGBA composited onto white."""
    if array.shape[-1] == 1:
        return np.repeat(array, 3, axis=-1)
    if array.shape[-1] == 4:
        alpha = array[..., 3:]
        return array[..., :3] * alpha + (1.0 - alpha)
    return array


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

    Accepted images:

    - PIL images of any mode (CMYK is converted as Pillow converts it; transparency is composited onto white).
    - Local file paths (`str` or `pathlib.Path`, decoded with Pillow and EXIF-rotated).
    - `http(s)://` URLs and `data:image/...;base64,...` URIs, loaded with `transformers.image_utils.load_image`
      (see [`load_image_url`]; an unreachable URL raises `ConnectionError` naming it).
    - numpy arrays and torch tensors of shape (H, W), (H, W, C) or (C, H, W) with C = 1 (greyscale), 3 (RGB) or
      4 (RGBA, as `PIL.Image.fromarray` reads 4 channels: for CMYK data pass `PIL.Image.fromarray(array,
      mode="CMYK")`), and 4-D batches of those. The channel axis is inferred from the shape; when both end axes
      could hold it (e.g. a 1x1 RGB image, (1, 1, 3)), numpy arrays are read channels-last (H, W, C) and torch
      tensors channels-first (C, H, W). Pass `input_data_format="channels_first"` or `"channels_last"` to say
      which. Values are read as the same image from a file: uint8 as is, uint16 scaled to 8 bits (value / 257, as
      16-bit files), bool as 0/255, other integers in 0..255. Float images follow transformers' `do_rescale`
      convention: values in [0, 1] (torchvision's `ToTensor()`) need `do_rescale=False`, and a warning says so
      when it is left on; values in [0, 255] are rounded to 8 bits and rescaled as usual.

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

    def fetch_images(self, image_url_or_urls: Any, input_data_format: str | ChannelDimension | None = None) -> Any:
        """Load every file path, URL and data URI in a (possibly nested) image input, leaving in-memory images
        untouched.

        Local paths are opened with [`load_image_file`], which raises `FileNotFoundError` or `ValueError` naming the
        path; URLs and data URIs with [`load_image_url`], which raises `ConnectionError` or `ValueError` naming the
        URL. Arrays and tensors are checked to have 2 to 4 dimensions; (H, W) ones get a channel axis (where
        `input_data_format` says, else last for numpy arrays and first for torch tensors).
        """
        if isinstance(image_url_or_urls, (list, tuple)):
            return [self.fetch_images(item, input_data_format) for item in image_url_or_urls]
        if isinstance(image_url_or_urls, str) and image_url_or_urls.startswith(_REMOTE_PREFIXES):
            return load_image_url(image_url_or_urls)
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
            if image_url_or_urls.ndim == 2:
                return _with_channel_axis(image_url_or_urls, input_data_format)
            return image_url_or_urls
        raise TypeError(
            f"Unsupported image type {type(image_url_or_urls).__name__}. Pass PIL images, numpy arrays, torch "
            "tensors, image file paths (str or pathlib.Path), URLs or data URIs."
        )

    def process_image(
        self,
        image: ImageInput,
        do_convert_rgb: bool | None = None,
        input_data_format: str | ChannelDimension | None = None,
        do_rescale: bool | None = None,
        **kwargs: Unpack[ImagesKwargs],
    ) -> np.ndarray:
        """Turn one image into a channels-first numpy array, converting it to RGB when `do_convert_rgb` is set.

        Arrays and tensors are read as described in the class docstring (layout, dtype, value range).

        Raises:
            ValueError: An array or tensor does not have an (H, W, C) or (C, H, W) shape with C in {1, 3, 4}, or
                its values are not those of an image.
        """
        if not is_pil_image(image):
            torch_tensor = is_torch_tensor(image)
            if torch_tensor:
                image = image.detach().cpu()
                image = image.float() if image.is_floating_point() and image.element_size() < 4 else image
            array = image.numpy() if torch_tensor else np.asarray(image)
            if array.ndim != 3:
                raise _unsupported_shape_error(array.shape)
            layout = _channel_layout(array.shape, input_data_format, channels_first_if_ambiguous=torch_tensor)
            if layout == ChannelDimension.FIRST:
                array = np.moveaxis(array, 0, -1)
            image = _array_to_image(array, do_rescale)
            if not is_pil_image(image):  # a float image in [0, 1], channels-last
                image = _float_to_rgb(image) if do_convert_rgb else image
                return super().process_image(
                    np.ascontiguousarray(np.moveaxis(image, -1, 0)), do_convert_rgb=False,
                    input_data_format=ChannelDimension.FIRST, **kwargs,
                )
        elif do_rescale is False and image.mode not in ("F", "I"):
            _warn(
                f"do_rescale=False, but a PIL image (mode {image.mode}) has 8-bit values (0..255): they are not "
                "rescaled to [0, 1], so the model sees values 255 times too large. Pass do_rescale=True for PIL "
                "images, files and integer arrays."
            )
        if do_convert_rgb:
            image = convert_pil_to_rgb(image)
        return super().process_image(image, do_convert_rgb=False, **kwargs)

    def resize(self, image: np.ndarray, size: Any, resample: Any = None, reducing_gap: int | None = None,
               **kwargs: Any) -> np.ndarray:
        """Resize with Pillow. A float image (values in [0, 1]: only those stay float, see `process_image`) goes
        through the 8-bit image it stands for, rounded, and comes back in [0, 1]: transformers' own conversion
        truncates x * 255 and reads a float image whose values are all 0 or 1 as a 0..255 image."""
        if np.issubdtype(image.dtype, np.floating) and is_scaled_image(image):
            eight_bit = np.rint(image.astype(np.float64) * 255).astype(np.uint8)
            resized = super().resize(eight_bit, size, resample=resample, reducing_gap=reducing_gap, **kwargs)
            return resized.astype(np.float32) / 255
        return super().resize(image, size, resample=resample, reducing_gap=reducing_gap, **kwargs)

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
        images = self.fetch_images(images, kwargs.get("input_data_format"))
        pairs = _is_batch_of_pairs(images)
        if pairs:
            images = [image for pair in images for image in pair]
        features = super()._preprocess_image_like_inputs(images, *args, return_tensors=None, **kwargs)
        pixel_values = features["pixel_values"]
        if pairs:
            pixel_values = [np.stack(pixel_values[index : index + 2]) for index in range(0, len(pixel_values), 2)]
        return BatchFeature(data={"pixel_values": pixel_values}, tensor_type=return_tensors)


__all__ = ["EfficientVLMImageProcessor", "URL_TIMEOUT", "convert_pil_to_rgb", "load_image_file", "load_image_url"]
