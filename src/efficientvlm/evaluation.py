"""Task evaluation of EfficientVLM models on ``datasets`` datasets, and latency measurement.

Each ``evaluate_*`` function runs a model in eval mode over a dataset in the format of :mod:`efficientvlm.data`
(the synthetic shapes benchmark or the real-format loaders) and returns the task metric(s) from
:mod:`efficientvlm.metrics`:

* :func:`evaluate_vqa` - VQA accuracy (the official evaluation's rules), per question and answer type too;
* :func:`evaluate_nlvr2` - accuracy;
* :func:`evaluate_retrieval` - recall@1/5/10 both ways, ITC ranking re-ranked by ITM on the top ``k``;
* :func:`evaluate_captioning` - CIDEr-D and BLEU-4 of ``generate()`` output (from the captioning prompt, which is
  stripped from the captions).

:func:`measure_latency` times several models on the same inputs, alternating between them, so that their ratio
holds even when the machine's load changes during the measurement.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from .data.collators import NLVR2Collator, VQACollator
from .data.loaders import retrieval_targets
from .metrics import bleu_scores, cider_d, nlvr2_accuracy, retrieval_recall, vqa_accuracy_breakdown

__all__ = [
    "evaluate_vqa",
    "evaluate_nlvr2",
    "evaluate_retrieval",
    "evaluate_captioning",
    "predict_vqa",
    "measure_latency",
]


def _batches(dataset, batch_size: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(dataset), batch_size):
        yield [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]


def _device_of(model: torch.nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)  # a module without parameters (an ONNX Runtime model) runs on the CPU
    return torch.device("cpu") if parameter is None else parameter.device


def _to(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def predict_vqa(model, processor, dataset, batch_size: int = 64, max_length: int = 40) -> list[str]:
    """The arg-max answer (from ``model.config.id2label``) for every row (``image``, ``question``)."""
    model.eval()
    id2label = model.config.id2label
    collator = VQACollator(processor, label2id={}, max_length=max_length)
    predictions = []
    for rows in _batches(dataset, batch_size):
        batch = collator([{"image": r["image"], "question": r["question"]} for r in rows])
        logits = model(**_to(batch, _device_of(model))).logits
        predictions += [id2label[int(i)] for i in logits.argmax(-1)]
    return predictions


def evaluate_vqa(model, processor, dataset, batch_size: int = 64, max_length: int = 40,
                 answers_column: str = "answers", type_column: str | None = "question_type",
                 answer_type_column: str | None = "answer_type", official: bool = True,
                 predictions: list[str] | None = None) -> dict[str, float]:
    """VQA accuracy (fraction in [0, 1]) overall, per question type and per answer type.

    ``predictions``: one answer per row, when already computed (``predict_vqa``, or a baseline's answers); ``model``
    and ``processor`` are then not used.

    ``vqa_accuracy`` follows the official VQA evaluation (``official=False``: the smoothed rules, see
    :mod:`efficientvlm.metrics.vqa`). When the dataset has ``type_column`` (VQAv2 and shapes: ``question_type``)
    the result also has ``vqa_accuracy_<question type>``; when it has ``answer_type_column`` (VQAv2:
    ``answer_type``), ``vqa_accuracy_answer_type_<answer type>`` -- the official ``perQuestionType`` and
    ``perAnswerType`` (divided by 100, not rounded).
    """
    if predictions is None:
        predictions = predict_vqa(model, processor, dataset, batch_size, max_length)
    elif len(predictions) != len(dataset):
        raise ValueError(f"predictions has {len(predictions)} answers for {len(dataset)} rows: give one per row.")
    plain = dataset.with_format(None) if hasattr(dataset, "with_format") else dataset
    references = [list(a) for a in plain[answers_column]]
    columns = getattr(dataset, "column_names", ())
    breakdown = vqa_accuracy_breakdown(
        predictions, references, official=official,
        question_types=plain[type_column] if type_column and type_column in columns else None,
        answer_types=plain[answer_type_column] if answer_type_column and answer_type_column in columns else None,
    )
    result = {"vqa_accuracy": breakdown["vqa_accuracy"]}
    for qtype, accuracy in breakdown.get("per_question_type", {}).items():
        result[f"vqa_accuracy_{qtype}"] = accuracy
    for atype, accuracy in breakdown.get("per_answer_type", {}).items():
        result[f"vqa_accuracy_answer_type_{atype}"] = accuracy
    return result


@torch.no_grad()
def evaluate_nlvr2(model, processor, dataset, batch_size: int = 32, max_length: int = 40) -> dict[str, float]:
    """NLVR2 accuracy (fraction) of ``EfficientVLMForNLVR2`` on rows ``image_left, image_right, sentence, label``."""
    model.eval()
    collator = NLVR2Collator(processor, max_length=max_length)
    predictions, references = [], []
    for rows in _batches(dataset, batch_size):
        batch = collator(rows)
        references += batch.pop("labels").tolist()
        predictions += model(**_to(batch, _device_of(model))).logits.argmax(-1).tolist()
    return {"nlvr2_accuracy": nlvr2_accuracy(predictions, references)}


@torch.no_grad()
def evaluate_retrieval(model, processor, dataset, k: int = 16, batch_size: int = 64,
                       captions_column: str = "captions", image_column: str = "image") -> dict[str, float]:
    """Recall@1/5/10 (percent) of ``EfficientVLMForImageTextRetrieval`` on a one-row-per-image dataset.

    Every image is ranked against every caption by ITC similarity, and each query's top ``k`` are re-scored with
    ITM (``model.rank``), as the paper evaluates COCO (``k=256`` there).
    """
    model.eval()
    device = _device_of(model)
    texts, txt2img, img2txt = retrieval_targets(dataset, captions_column)
    image_embeds = []
    for rows in _batches(dataset, batch_size):
        pixel_values = processor.image_processor([r[image_column] for r in rows], return_tensors="pt")["pixel_values"]
        image_embeds.append(model.efficientvlm.encode_image(pixel_values.to(device)).last_hidden_state)
    tokens = processor(text=texts)  # the processor's padding / truncation defaults
    scores_i2t, scores_t2i = model.rank(torch.cat(image_embeds), tokens["input_ids"].to(device),
                                        tokens["attention_mask"].to(device), k=k, batch_size=batch_size)
    return retrieval_recall(scores_i2t, txt2img, img2txt, scores_t2i=scores_t2i)


@torch.no_grad()
def evaluate_captioning(model, processor, dataset, batch_size: int = 32, captions_column: str = "captions",
                        prompt: str | None = None, **generate_kwargs) -> dict[str, float]:
    """CIDEr-D and BLEU-4 of ``model.generate`` (the model's generation config unless overridden).

    Captions are generated from ``prompt`` (default: ``processor.caption_prompt``, the paper's ``"a picture of "``,
    as ``CaptioningCollator`` trains with; ``""`` for none) and scored without it.
    """
    model.eval()
    plain = dataset.with_format(None)
    references = [list(c) for c in plain[captions_column]]
    predictions = []
    for rows in _batches(dataset, batch_size):
        inputs = processor.caption_inputs([r["image"] for r in rows], prompt=prompt)
        generated = model.generate(**_to(inputs, _device_of(model)), **generate_kwargs)
        predictions += processor.decode_captions(generated, prompt=prompt)
    return {"cider": cider_d(predictions, references), "bleu_4": bleu_scores(predictions, references)["bleu_4"]}


@torch.no_grad()
def measure_latency(models: Mapping[str, torch.nn.Module], make_inputs: Callable[[], Mapping[str, torch.Tensor]],
                    repeats: int = 10, warmup: int = 2, per_round: bool = False
                    ) -> dict[str, float] | dict[str, list[float]]:
    """Median seconds per forward of each model on the same inputs, timed alternately (round-robin).

    Each round runs every model once; the order rotates by one model per round, so that no model always runs
    right after the same neighbour (whose cache footprint or thermal state it would inherit).

    Args:
        models: name -> model (put in eval mode here).
        make_inputs: returns the forward's keyword arguments (called once; the same tensors feed every model).
        repeats: timed rounds; each round runs every model once.
        warmup: untimed rounds first.
        per_round: return every timed round's seconds (``name -> [seconds of round 0, 1, ...]``) instead of the
            medians, e.g. to take the median of per-round ratios, which cancels load that drifts between rounds.
    """
    inputs = make_inputs()
    for model in models.values():
        model.eval()
    names = list(models)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(warmup + repeats):
        shift = round_index % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            model = models[name]
            start = time.perf_counter()
            model(**_to(inputs, _device_of(model)))
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
    if per_round:
        return times
    return {name: statistics.median(values) for name, values in times.items()}
