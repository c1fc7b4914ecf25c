"""The ``visual-question-answering`` pipeline for transformers 5.x.

transformers 5 removed its stock VQA pipeline. This is a pipeline for classifier VQA heads (``logits`` of shape
``(batch, num_labels)`` and a complete ``config.id2label``, as ``EfficientVLMForVisualQuestionAnswering`` has), for
answer-ranking heads (``model.ranks_answers``: ``EfficientVLMForGenerativeVQA``, whose ``logits`` are its answer
log-likelihoods over ``config.id2label``) and for other generative heads (``model.can_generate()``), with the call
forms of the 4.x pipeline:

```python
vqa(image, "what color is the circle?")                 # one image, one question
vqa([image1, image2], "what color is the circle?")      # many images, one question
vqa(image, ["question 1", "question 2"])                # one image, many questions
vqa({"image": image, "question": "..."})                # dict, or a list of dicts
```

Images may be PIL images, file paths, ``http(s)://`` URLs, ``data:image/`` URIs, numpy arrays or torch tensors (see
``EfficientVLMImageProcessor``; ``do_rescale=False`` for float images in [0, 1], ``input_data_format`` for the channel
axis of arrays). Each input returns ``[{"answer": str, "score": float}, ...]`` (``top_k`` answers, sorted by score;
classifier heads score answers with a sigmoid, as they are trained on soft scores, or with a softmax where
``config.problem_type`` is ``"single_label_classification"``; answer-ranking heads with the softmax over the answers
they re-scored, the paper's answer probabilities).

Arguments are checked before anything runs: ``top_k`` must be a positive integer, ``image`` a non-empty image or list
of images, ``question`` a non-empty string or list of strings. A classifier model whose head was not loaded from its
checkpoint (e.g. a pre-training or NLVR2 checkpoint loaded as a VQA model: the head is random) is refused.

The model may also be a deployed one from ``efficientvlm.export`` - the ONNX Runtime model
(``EfficientVLMOnnxForVisualQuestionAnswering``) or the int8 model - passed as an object with the export folder as
``tokenizer=`` and ``image_processor=``: the pre- and post-processing are the same.

This file is shipped to the Hub as remote code: it imports only PIL, torch, transformers and its siblings.
"""

from __future__ import annotations

import numbers
from typing import Any

from transformers.pipelines.base import Pipeline


def _check_question(question: Any, where: str) -> None:
    """Raise if ``question`` is not a non-empty string; ``where`` names the argument in the message."""
    if not isinstance(question, str):
        raise TypeError(f"{where} must be a string (a question about the image), got {type(question).__name__} "
                        f"({question!r}).")
    if not question.strip():
        raise ValueError(f"{where} is empty ({question!r}): ask a non-empty question about the image.")


def _check_image(image: Any, where: str) -> None:
    """Raise if ``image`` is missing or an empty list; what an image may be is checked by the image processor."""
    if image is None:
        raise ValueError(f"{where} is missing: pass an image (PIL image, file path, URL, array or tensor).")
    if isinstance(image, (list, tuple)) and len(image) == 0:
        raise ValueError(f"{where} is an empty list: pass at least one image.")


class EfficientVLMVQAPipeline(Pipeline):
    """Visual question answering: ``pipeline("visual-question-answering", model=...)`` after ``import efficientvlm``."""

    _load_processor = False
    _load_image_processor = True
    _load_feature_extractor = False
    _load_tokenizer = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._refuse_untrained_classifier()

    def _refuse_untrained_classifier(self) -> None:
        """A classifier whose weights were not in the checkpoint is random: its answers would mean nothing."""
        if self.model.can_generate() or not hasattr(self.model, "weights_not_loaded"):
            return
        untrained = [name for name in self.model.weights_not_loaded() if name.startswith("classifier.")]
        if not untrained:
            return
        saved_as = (getattr(self.model.config, "architectures", None) or [None])[0]
        saved = f", which was saved from {saved_as}" if saved_as and saved_as != type(self.model).__name__ else ""
        raise ValueError(
            f"The VQA classifier of {type(self.model).__name__} was not loaded from the checkpoint at "
            f"{self.model.loaded_from!r}{saved} (missing: {', '.join(untrained)}): it holds random values, so its "
            "answers would mean nothing. Use a checkpoint fine-tuned for VQA (saved from "
            "EfficientVLMForVisualQuestionAnswering), or fine-tune this one first (examples/finetune.py --task vqa "
            "--model_name_or_path ...) and pass the saved folder."
        )

    def _sanitize_parameters(self, top_k=None, padding=None, truncation=None, max_length=None, do_rescale=None,
                             input_data_format=None, **kwargs):
        preprocess_params, postprocess_params = {}, {}
        if padding is not None:
            preprocess_params["padding"] = padding
        if truncation is not None:
            preprocess_params["truncation"] = truncation
        if max_length is not None:
            preprocess_params["max_length"] = max_length
        image_kwargs = {"do_rescale": do_rescale, "input_data_format": input_data_format}
        image_kwargs = {key: value for key, value in image_kwargs.items() if value is not None}
        if image_kwargs:
            preprocess_params["image_kwargs"] = image_kwargs
        if top_k is not None:
            if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1:
                raise ValueError(f"top_k must be a positive integer (the number of answers to return), got "
                                 f"{top_k!r}.")
            postprocess_params["top_k"] = int(top_k)
        return preprocess_params, {}, postprocess_params

    def __call__(self, image=None, question: str | list[str] | None = None, **kwargs):
        """Answer ``question`` about ``image``; see the module docstring for the accepted forms."""
        if isinstance(image, dict) or (isinstance(image, list) and image and isinstance(image[0], dict)):
            if question is not None:
                raise ValueError("Pass the questions inside the dicts ({'image': ..., 'question': ...}) or as the "
                                 "`question` argument, not both.")
            inputs = image
            for index, item in enumerate([image] if isinstance(image, dict) else image):
                where = "input" if isinstance(image, dict) else f"input {index}"
                if not isinstance(item, dict) or "image" not in item or "question" not in item:
                    raise ValueError(f"{where} needs an 'image' and a 'question' key, got {item!r}.")
                _check_image(item["image"], f"The 'image' of {where}")
                _check_question(item["question"], f"The 'question' of {where}")
        else:
            if image is None and question is None:
                raise ValueError("Pass an image and a question: vqa(image, question) or "
                                 "vqa({'image': ..., 'question': ...}).")
            _check_image(image, "`image`")
            if question is None:
                raise ValueError("`question` is missing: vqa(image, question).")
            if isinstance(question, (list, tuple)) and len(question) == 0:
                raise ValueError("`question` is an empty list: pass at least one question.")
            images = list(image) if isinstance(image, (list, tuple)) else [image]
            questions = list(question) if isinstance(question, (list, tuple)) else [question]
            for index, item in enumerate(questions):
                _check_question(item, f"`question[{index}]`" if isinstance(question, (list, tuple)) else "`question`")
            inputs = [{"image": im, "question": q} for im in images for q in questions]
            if not isinstance(image, (list, tuple)) and not isinstance(question, (list, tuple)):
                inputs = inputs[0]
        return super().__call__(inputs, **kwargs)

    def preprocess(self, inputs: dict[str, Any], padding=False, truncation=True, max_length=None, image_kwargs=None):
        if not isinstance(inputs, dict) or "image" not in inputs or "question" not in inputs:
            raise ValueError(f"Each input needs an 'image' and a 'question', got {inputs!r}.")
        _check_question(inputs["question"], "The question")
        model_inputs = self.tokenizer(inputs["question"], return_tensors="pt", padding=padding, truncation=truncation,
                                      max_length=max_length)
        pixel_values = self.image_processor(images=inputs["image"], return_tensors="pt",
                                            **(image_kwargs or {}))["pixel_values"]
        model_inputs["pixel_values"] = pixel_values.to(self.dtype) if self.dtype is not None else pixel_values
        return model_inputs

    def _forward(self, model_inputs, **generate_kwargs):
        if getattr(self.model, "ranks_answers", False):  # generative VQA: rank the answer list
            return self.model(**model_inputs)
        if self.model.can_generate():
            return {"generated_ids": self.model.generate(**model_inputs, **generate_kwargs)}
        return self.model(**model_inputs)

    def postprocess(self, model_outputs, top_k: int = 5):
        if "generated_ids" in model_outputs:
            texts = self.tokenizer.batch_decode(model_outputs["generated_ids"], skip_special_tokens=True)
            return [{"answer": text.strip()} for text in texts]
        id2label = self.model.config.id2label
        logits = model_outputs["logits"].float()[0]
        if getattr(self.model, "ranks_answers", False):
            probs = logits.softmax(-1)  # -inf (answers not re-scored) -> 0
            top_k = min(top_k, int(probs.gt(0).sum()))
        elif self.model.config.problem_type == "single_label_classification":  # trained with one softmax
            probs = logits.softmax(-1)
        else:
            probs = logits.sigmoid()
        scores, ids = probs.topk(min(top_k, probs.shape[-1]))
        return [{"score": float(score), "answer": id2label[int(i)]} for score, i in zip(scores, ids)]


__all__ = ["EfficientVLMVQAPipeline"]
