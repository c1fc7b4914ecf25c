"""Task metrics for EfficientVLM: pure Python / numpy functions plus offline ``evaluate`` modules.

The functions need neither models nor the Hugging Face Hub. The same metrics are shipped as ``evaluate``
modules inside the package (``metrics/modules/<name>/<name>.py``); :func:`load` loads them by path, which
works offline (``evaluate.load("accuracy")`` and other Hub metrics do not).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .caption import bleu_scores, cider_d, cider_d_scores, corpus_bleu, tokenize_caption
from .nlvr2 import nlvr2_accuracy, to_binary_label
from .retrieval import retrieval_recall
from .vqa import answer_soft_scores, normalize_answer, vqa_accuracy, vqa_accuracy_breakdown, vqa_score

__all__ = [
    "METRIC_NAMES",
    "answer_soft_scores",
    "bleu_scores",
    "cider_d",
    "cider_d_scores",
    "corpus_bleu",
    "load",
    "module_path",
    "nlvr2_accuracy",
    "normalize_answer",
    "retrieval_recall",
    "to_binary_label",
    "tokenize_caption",
    "vqa_accuracy",
    "vqa_accuracy_breakdown",
    "vqa_score",
]

METRIC_NAMES: tuple[str, ...] = ("vqa_accuracy", "retrieval_recall", "nlvr2_accuracy", "cider", "bleu")

_MODULES_DIR = Path(__file__).resolve().parent / "modules"


def module_path(name: str) -> str:
    """Path of the packaged ``evaluate`` module script for metric ``name`` (one of :data:`METRIC_NAMES`)."""
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown metric {name!r}; available: {', '.join(METRIC_NAMES)}")
    path = _MODULES_DIR / name / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"metric module {path} is missing from the installed package")
    return str(path)


def load(name: str, **kwargs: Any):
    """``evaluate.load`` the packaged metric ``name`` by path (offline); ``kwargs`` go to ``evaluate.load``.

    Example::

        >>> metric = efficientvlm.metrics.load("vqa_accuracy")
        >>> metric.compute(predictions=["yes"], references=[["yes"] * 10])
        {'vqa_accuracy': 1.0}
    """
    import evaluate  # imported lazily: the pure metric functions do not need it

    return evaluate.load(module_path(name), **kwargs)
