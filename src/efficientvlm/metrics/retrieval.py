"""Image-text retrieval recall@K, in the format of the ALBEF / X-VLM ``itm_eval``.

Ranking and ties
----------------
For a query (an image for image->text, a text for text->image) the *rank* is the number of non-gold candidates
placed before the best gold candidate; recall@K is the percentage of queries with rank < K.

Ties are broken **pessimistically and deterministically**: a gold candidate tied with a non-gold candidate
is ranked *after* it. Equivalently::

    rank = #{non-gold candidates j : score_j >= max(score of the gold candidates)}

So a constant score matrix gives recall@K = 0 unless a query has fewer than K non-gold candidates, and a tie
can never raise recall. (``np.argsort`` in ``itm_eval`` breaks ties by position instead, so the same scores
could score differently after a permutation of the candidates.) Gold candidates tied with each other do
not matter: only the best one counts. ``-inf`` scores are allowed (e.g. candidates outside a re-ranked
top-k); NaN scores are rejected.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["retrieval_recall"]

_CHUNK_ELEMENTS = 1 << 24  # rows are processed in blocks of about this many scores to bound memory


def _as_numpy(scores: Any) -> np.ndarray:
    """Convert a numpy array, torch tensor or nested list to a 2-D float numpy array (no torch import)."""
    if hasattr(scores, "detach"):  # torch.Tensor: bf16/half have no numpy dtype, so go through float64
        scores = scores.detach().cpu().double().numpy()
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"scores must be a 2-D matrix, got shape {array.shape}")
    if np.isnan(array).any():
        raise ValueError("scores contain NaN")
    return array


def _pessimistic_ranks(scores: np.ndarray, gold: Sequence[Sequence[int]], what: str) -> np.ndarray:
    """Rank of the best gold candidate of every query (row), with the pessimistic tie rule."""
    n_queries, n_candidates = scores.shape
    if len(gold) != n_queries:
        raise ValueError(f"{what}: {n_queries} queries in the score matrix but {len(gold)} gold lists")
    ranks = np.empty(n_queries, dtype=np.int64)
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // max(1, n_candidates))
    for start in range(0, n_queries, rows_per_chunk):
        block = scores[start : start + rows_per_chunk]
        is_gold = np.zeros(block.shape, dtype=bool)
        for r in range(block.shape[0]):
            items = list(gold[start + r])
            if not items:
                raise ValueError(f"{what}: query {start + r} has no gold candidate")
            if min(items) < 0 or max(items) >= n_candidates:
                raise ValueError(f"{what}: query {start + r} has a gold index outside [0, {n_candidates})")
            is_gold[r, items] = True
        best_gold = np.where(is_gold, block, -np.inf).max(axis=1, keepdims=True)
        ranks[start : start + block.shape[0]] = ((block >= best_gold) & ~is_gold).sum(axis=1)
    return ranks


def retrieval_recall(
    scores_i2t: Any,
    txt2img: Sequence[int],
    img2txt: Sequence[Sequence[int]],
    ks: Sequence[int] = (1, 5, 10),
    scores_t2i: Any | None = None,
) -> dict[str, float]:
    """Recall@K in both retrieval directions, as percentages.

    Args:
        scores_i2t: ``[n_img, n_txt]`` similarity matrix (numpy array, torch tensor or nested lists);
            higher means more similar.
        txt2img: the gold image index of every text.
        img2txt: the gold text indices of every image (COCO: 5 per image).
        ks: the cut-offs K.
        scores_t2i: optional ``[n_txt, n_img]`` matrix for text->image, for pipelines that re-rank each
            direction separately (as ``itm_eval`` receives); defaults to ``scores_i2t.T``.

    Returns:
        ``txt_r{K}`` (image->text, i.e. text retrieval), ``img_r{K}`` (text->image, image retrieval),
        ``txt_r_mean`` / ``img_r_mean`` (mean over ``ks``) and ``r_mean`` (mean of both), in percent.
        Ties are ranked pessimistically (see the module docstring).
    """
    i2t = _as_numpy(scores_i2t)
    t2i = i2t.T if scores_t2i is None else _as_numpy(scores_t2i)
    if t2i.shape != i2t.shape[::-1]:
        raise ValueError(f"scores_t2i has shape {t2i.shape}, expected {i2t.shape[::-1]}")
    if not ks:
        raise ValueError("ks must contain at least one cut-off")
    txt_ranks = _pessimistic_ranks(i2t, img2txt, "image->text")
    img_ranks = _pessimistic_ranks(t2i, [[int(g)] for g in txt2img], "text->image")

    result: dict[str, float] = {}
    for k in ks:
        result[f"txt_r{k}"] = 100.0 * float(np.mean(txt_ranks < k))
    for k in ks:
        result[f"img_r{k}"] = 100.0 * float(np.mean(img_ranks < k))
    result["txt_r_mean"] = float(np.mean([result[f"txt_r{k}"] for k in ks]))
    result["img_r_mean"] = float(np.mean([result[f"img_r{k}"] for k in ks]))
    result["r_mean"] = (result["txt_r_mean"] + result["img_r_mean"]) / 2.0
    return result
