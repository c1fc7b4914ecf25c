"""NLVR2 accuracy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["to_binary_label", "nlvr2_accuracy"]

_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


def to_binary_label(value: Any) -> int:
    """Map a boolean-like label to 0/1.

    Accepts ``bool``, integers 0/1 (Python, numpy or 0-d tensors) and the strings ``"True"``/``"False"``
    (the NLVR2 and X-VLM JSON spelling), ``"true"``/``"false"``, ``"1"``/``"0"``, ``"yes"``/``"no"``.
    """
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, str):
        low = value.strip().lower()
        if low in _TRUE:
            return 1
        if low in _FALSE:
            return 0
        raise ValueError(f"cannot read {value!r} as a true/false label")
    if value in (0, 1):  # True == 1 and False == 0
        return int(value)
    raise ValueError(f"cannot read {value!r} as a true/false label")


def nlvr2_accuracy(predictions: Sequence[Any], references: Sequence[Any]) -> float:
    """Fraction of statements whose predicted truth value equals the label (a value in ``[0, 1]``).

    Both arguments may mix the label spellings accepted by :func:`to_binary_label`.
    """
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions but {len(references)} references")
    if len(predictions) == 0:
        raise ValueError("nlvr2_accuracy needs at least one example")
    correct = sum(to_binary_label(p) == to_binary_label(r) for p, r in zip(predictions, references))
    return correct / len(predictions)
