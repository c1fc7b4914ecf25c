"""The ``visual-question-answering`` pipeline for transformers 5.x.

transformers 5 removed its stock VQA pipeline. This is a pipeline for classifier VQA heads (``logits`` of shape
``(batch, num_labels)`` and a complete ``config.id2label``, as ``EfficientVLMForVisualQuestionAnswering`` has) and for
generative heads (``model.can_generate()``), with the call forms of the 4.x pipeline:

```python
vqa(image, "what color is the circle?")                 # one image, one question
vqa([image1, image2], "what color is the circle?")      # many images, one question
vqa(image, ["question 1", "question 2"])                # one image, many questions
vqa({"image": image, "question": "..."})                # dict, or a list of dicts
```

Images may be PIL images or file paths. Each input returns ``[{"answer": str, "score": float}, ...]`` (``top_k``
answers, sorted by score; classifier heads score answers with a sigmoid, as they are trained on soft scores).

The model may also be a deployed one from ``efficientvlm.export`` - the ONNX Runtime model
(``EfficientVLMOnnxForVisualQuestionAnswering``) or the int8 model - passed as an object with the export folder as
``tokenizer=`` and ``image_processor=``: the pre- and post-processing are the same.

This file is shipped to the Hub as remote code: it imports only PIL, torch, transformers and its siblings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers.pipelines.base import Pipeline

from .image_processing_efficientvlm import load_image_file


class EfficientVLMVQAPipeline(Pipeline):
    """Visual question answering: ``pipeline("visual-question-answering", model=...)`` after ``import efficientvlm``."""

    _load_processor = False
    _load_image_processor = True
    _load_feature_extractor = False
    _load_tokenizer = True

    def _sanitize_parameters(self, top_k=None, padding=None, truncation=None, max_length=None, **kwargs):
        preprocess_params, postprocess_params = {}, {}
        if padding is not None:
            preprocess_params["padding"] = padding
        if truncation is not None:
            preprocess_params["truncation"] = truncation
        if max_length is not None:
            preprocess_params["max_length"] = max_length
        if top_k is not None:
            if top_k < 1:
                raise ValueError(f"top_k must be >= 1, got {top_k}.")
            postprocess_params["top_k"] = top_k
        return preprocess_params, {}, postprocess_params

    def __call__(self, image=None, question: str | list[str] | None = None, **kwargs):
        """Answer ``question`` about ``image``; see the module docstring for the accepted forms."""
        if isinstance(image, dict) or (isinstance(image, list) and image and isinstance(image[0], dict)):
            inputs = image
        elif image is None or question is None:
            raise ValueError("Pass an image and a question: vqa(image, question) or vqa({'image':..., 'question':...}).")
        else:
            images = list(image) if isinstance(image, (list, tuple)) else [image]
            questions = list(question) if isinstance(question, (list, tuple)) else [question]
            inputs = [{"image": im, "question": q} for im in images for q in questions]
            if not isinstance(image, (list, tuple)) and not isinstance(question, (list, tuple)):
                inputs = inputs[0]
        return super().__call__(inputs, **kwargs)

    def preprocess(self, inputs: dict[str, Any], padding=False, truncation=True, max_length=None):
        if not isinstance(inputs, dict) or "image" not in inputs or "question" not in inputs:
            raise ValueError(f"Each input needs an 'image' and a 'question', got {inputs!r}.")
        question = inputs["question"]
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"The question is empty ({question!r}): ask a non-empty question about the image.")
        image = inputs["image"]
        if isinstance(image, (str, Path)):
            image = load_image_file(image)
        model_inputs = self.tokenizer(question, return_tensors="pt", padding=padding, truncation=truncation,
                                      max_length=max_length)
        pixel_values = self.image_processor(images=image, return_tensors="pt")["pixel_values"]
        model_inputs["pixel_values"] = pixel_values.to(self.dtype) if self.dtype is not None else pixel_values
        return model_inputs

    def _forward(self, model_inputs, **generate_kwargs):
        if self.model.can_generate():
            return {"generated_ids": self.model.generate(**model_inputs, **generate_kwargs)}
        return self.model(**model_inputs)

    def postprocess(self, model_outputs, top_k: int = 5):
        if "generated_ids" in model_outputs:
            texts = self.tokenizer.batch_decode(model_outputs["generated_ids"], skip_special_tokens=True)
            return [{"answer": text.strip()} for text in texts]
        id2label = self.model.config.id2label
        probs = model_outputs["logits"].float().sigmoid()[0]
        scores, ids = probs.topk(min(top_k, probs.shape[-1]))
        return [{"score": float(score), "answer": id2label[int(i)]} for score, i in zip(scores, ids)]


__all__ = ["EfficientVLMVQAPipeline"]
