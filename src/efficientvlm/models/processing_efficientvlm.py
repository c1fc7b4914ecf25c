"""Processor for EfficientVLM: an [`EfficientVLMImageProcessor`] plus a BERT WordPiece tokenizer.

This module is also shipped to the Hub as remote code, so it imports only transformers and, relatively, its
sibling modules.
"""

from __future__ import annotations

from typing import Any

from transformers.feature_extraction_utils import BatchFeature
from transformers.image_utils import ImageInput
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin, Unpack
from transformers.tokenization_utils_base import TextInput

# Maximum number of text tokens, [CLS] and [SEP] included (the EfficientVLM paper's setting).
DEFAULT_MAX_TEXT_LENGTH = 40

# The text every caption starts with, in training and in generation (the paper's captioning setting).
DEFAULT_CAPTION_PROMPT = "a picture of "


def _check_text(text: Any) -> None:
    """Check that `text` is a non-empty string or a list of non-empty strings.

    Raises:
        TypeError: `text` is neither a string nor a list/tuple of strings.
        ValueError: `text` is an empty list, or one of its strings is empty or only whitespace.
    """
    texts = [text] if isinstance(text, str) else text
    if not isinstance(texts, (list, tuple)) or not all(isinstance(sample, str) for sample in texts):
        raise TypeError(f"`text` must be a string or a list of strings, got {type(text).__name__}.")
    if len(texts) == 0:
        raise ValueError("`text` is an empty list: pass one question/text per example.")
    for index, sample in enumerate(texts):
        if not sample.strip():
            raise ValueError(
                f"The question/text at index {index} is empty (or only whitespace). Every example needs a "
                "non-empty question/text; drop the example or fill in its text."
            )


def _batch_size(value: Any) -> int:
    """Number of examples in a processed feature (a tensor, an array or a list)."""
    return value.shape[0] if hasattr(value, "shape") else len(value)


class EfficientVLMProcessor(ProcessorMixin):
    r"""Wraps an [`EfficientVLMImageProcessor`] and a BERT tokenizer into a single processor.

    `processor(images=..., text=...)` returns a [`BatchFeature`] with `input_ids` and `attention_mask` (from the
    tokenizer) and `pixel_values` (from the image processor). `token_type_ids` are not returned: every input is a
    single text segment, so they would all be 0, which is what the model assumes when they are left out.

    Defaults, each overridable per call: `padding="longest"`, `truncation=True`, `max_length=40` and
    `return_tensors="pt"`.

    Captioning: `caption_inputs(images)` gives `pixel_values` and the prompt every caption starts with (`"[CLS] a
    picture of"`, the paper's) as `input_ids` for `EfficientVLMForCaptioning.generate`, and `decode_captions(ids)`
    decodes its output without that prompt. `CaptioningCollator` trains with the same prompt.

    Args:
        image_processor ([`EfficientVLMImageProcessor`]):
            The image processor.
        tokenizer ([`BertTokenizer`]):
            The WordPiece tokenizer.
        caption_prompt (`str`, *optional*, defaults to `"a picture of "`):
            The captioning prompt; saved with the processor. `""` starts captions from `[CLS]` alone.

    Example:

    ```python
    >>> processor = EfficientVLMProcessor(image_processor=EfficientVLMImageProcessor(), tokenizer=tokenizer)
    >>> batch = processor(images=["a.png", "b.png"], text=["what color is the square?", "how many circles?"])
    >>> sorted(batch.keys())
    ['attention_mask', 'input_ids', 'pixel_values']
    ```
    """

    text_kwargs = {
        "padding": "longest",
        "truncation": True,
        "max_length": DEFAULT_MAX_TEXT_LENGTH,
        "return_token_type_ids": False,
        "return_tensors": "pt",
    }
    images_kwargs = {"return_tensors": "pt"}

    def __init__(self, image_processor: Any = None, tokenizer: Any = None,
                 caption_prompt: str = DEFAULT_CAPTION_PROMPT, **kwargs: Any) -> None:
        if image_processor is None:
            raise ValueError("EfficientVLMProcessor needs an `image_processor` (an EfficientVLMImageProcessor).")
        if tokenizer is None:
            raise ValueError("EfficientVLMProcessor needs a `tokenizer` (a BertTokenizer).")
        if not isinstance(caption_prompt, str):
            raise TypeError(f"`caption_prompt` must be a string, got {type(caption_prompt).__name__}.")
        self.caption_prompt = caption_prompt
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(
        self,
        images: ImageInput | None = None,
        text: TextInput | list[TextInput] | None = None,
        **kwargs: Unpack[ProcessingKwargs],
    ) -> BatchFeature:
        """Tokenize `text` and preprocess `images`.

        Args:
            images: One image or a list of images (PIL, numpy, torch, file paths, URLs or data URIs), or a list of
                (left, right) pairs for NLVR2; see [`EfficientVLMImageProcessor`].
            text: One question/text or a list of them, one per example. None may be empty.
            **kwargs: Tokenizer or image processor arguments, e.g. `padding`, `max_length`, `return_tensors`,
                `do_rescale=False` (float images in [0, 1]) or `input_data_format`.

        Returns:
            A [`BatchFeature`] with `input_ids` and `attention_mask` when `text` is given, and `pixel_values`
            when `images` are given.

        Raises:
            ValueError: Neither `images` nor `text` is given, a text is empty, or the number of images and
                texts differ.
        """
        if images is None and text is None:
            raise ValueError("Pass `images`, `text` or both to EfficientVLMProcessor; got neither.")
        if text is not None:
            _check_text(text)
            if isinstance(text, tuple):
                text = list(text)
        features = super().__call__(images=images, text=text, **kwargs)
        if "input_ids" in features and "pixel_values" in features:
            num_texts, num_images = _batch_size(features["input_ids"]), _batch_size(features["pixel_values"])
            if num_texts != num_images:
                raise ValueError(
                    f"Got {num_images} image example(s) but {num_texts} text(s); pass exactly one image (or one "
                    "image pair) per question/text."
                )
        return features

    @property
    def unused_input_names(self) -> list[str]:
        """Inputs produced by the tokenizer that the model does not need."""
        return ["token_type_ids"]

    def batch_decode(self, *args: Any, skip_special_tokens: bool = True, **kwargs: Any) -> list[str]:
        """Decode batches of token ids with the tokenizer, dropping special tokens by default."""
        return self.tokenizer.batch_decode(*args, skip_special_tokens=skip_special_tokens, **kwargs)

    def decode(self, *args: Any, skip_special_tokens: bool = True, **kwargs: Any) -> str:
        """Decode one sequence of token ids with the tokenizer, dropping special tokens by default."""
        return self.tokenizer.decode(*args, skip_special_tokens=skip_special_tokens, **kwargs)

    def caption_prompt_ids(self, prompt: str | None = None) -> list[int]:
        """`[CLS]` and the tokens of `prompt` (default: `caption_prompt`), without `[SEP]`: where generation starts
        and the leading positions a captioning loss skips."""
        prompt = self.caption_prompt if prompt is None else prompt
        ids = list(self.tokenizer(prompt)["input_ids"])
        if ids and ids[-1] == self.tokenizer.sep_token_id:
            ids = ids[:-1]
        return ids

    def caption_inputs(self, images: ImageInput, prompt: str | None = None, **kwargs: Any) -> BatchFeature:
        """Inputs of `EfficientVLMForCaptioning.generate`: `pixel_values` and, for every image, the prompt
        (default: `caption_prompt`) as `input_ids` / `attention_mask` (`[CLS]` and its tokens, no `[SEP]`).

        Args:
            images: One image or a list of images; see [`EfficientVLMImageProcessor`].
            prompt: The text the captions start with; `""` starts them from `[CLS]` alone.
            **kwargs: Image processor arguments.
        """
        kwargs.setdefault("return_tensors", "pt")
        features = self.image_processor(images, **kwargs)
        ids = self.caption_prompt_ids(prompt)
        count = _batch_size(features["pixel_values"])
        return BatchFeature({**features, "input_ids": [ids] * count, "attention_mask": [[1] * len(ids)] * count},
                            tensor_type=kwargs["return_tensors"])

    def decode_captions(self, sequences: Any, prompt: str | None = None) -> list[str]:
        """Decode `generate()` output into captions: special tokens dropped and, where a sequence starts with it,
        the prompt (default: `caption_prompt`) removed."""
        prompt_ids = self.caption_prompt_ids(prompt)
        captions = []
        for sequence in sequences:
            ids = sequence.tolist() if hasattr(sequence, "tolist") else list(sequence)
            if ids[: len(prompt_ids)] == prompt_ids:
                ids = ids[len(prompt_ids):]
            captions.append(self.tokenizer.decode(ids, skip_special_tokens=True).strip())
        return captions


__all__ = ["EfficientVLMProcessor"]
