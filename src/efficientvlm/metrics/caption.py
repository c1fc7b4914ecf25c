"""Caption metrics without Java: corpus BLEU and CIDEr-D as defined by the coco-caption toolkit.

Tokenisation (:func:`tokenize_caption`) is a simple deterministic stand-in for the PTB tokenizer that
coco-caption runs through Java: lower-case, ``-`` and ``/`` become spaces, every other ASCII punctuation
character is removed, then the text is split on whitespace. Scores can therefore differ slightly from
published numbers computed on PTB tokens (e.g. ``"don't"`` is one token here, two for PTB), but the
scoring formulas are the same.

Scales follow coco-caption: BLEU in ``[0, 1]`` and CIDEr-D as returned by ``pycocoevalcap`` (papers
multiply both by 100, e.g. "CIDEr 127.3" is 1.273 here).
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np

__all__ = ["tokenize_caption", "corpus_bleu", "bleu_scores", "cider_d", "cider_d_scores"]

_SPLIT_CHARS = re.compile(r"[-/]")
_DROP_PUNCT = str.maketrans("", "", "".join(c for c in string.punctuation if c not in "-/"))


def tokenize_caption(text: str) -> list[str]:
    """Lower-case, strip punctuation (``-`` and ``/`` separate words) and split on whitespace."""
    return _SPLIT_CHARS.sub(" ", text.lower()).translate(_DROP_PUNCT).split()


def _tokens(text: str, tokenize: bool) -> list[str]:
    return tokenize_caption(text) if tokenize else text.split()


def _ngram_counts(tokens: Sequence[str], max_n: int) -> Counter:
    """Counts of all n-grams of ``tokens`` for n = 1..max_n (keys are tuples)."""
    counts: Counter = Counter()
    for n in range(1, max_n + 1):
        for i in range(len(tokens) - n + 1):
            counts[tuple(tokens[i : i + n])] += 1
    return counts


def _check_pairs(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions but {len(references)} reference lists")
    if len(predictions) == 0:
        raise ValueError("need at least one caption")
    for i, refs in enumerate(references):
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(f"references[{i}] must be a non-empty list of strings")


# ----------------------------------------------------------------------------------------------------- BLEU


def _bleu_statistics(
    predictions: Sequence[str], references: Sequence[Sequence[str]], max_n: int, tokenize: bool
) -> tuple[list[int], list[int], int, int]:
    """Corpus totals: clipped matches per order, candidate n-grams per order, candidate and reference length."""
    _check_pairs(predictions, references)
    matches = [0] * max_n
    totals = [0] * max_n
    cand_len = ref_len = 0
    for pred, refs in zip(predictions, references):
        cand = _tokens(pred, tokenize)
        ref_tokens = [_tokens(r, tokenize) for r in refs]
        cand_len += len(cand)
        # Effective reference length: the closest one; on a tie the shorter (coco-caption "closest").
        ref_len += min((abs(len(r) - len(cand)), len(r)) for r in ref_tokens)[1]
        # Clip each candidate n-gram count by its maximum count in any single reference.
        max_ref: Counter = Counter()
        for r in ref_tokens:
            max_ref |= _ngram_counts(r, max_n)
        for gram, count in _ngram_counts(cand, max_n).items():
            matches[len(gram) - 1] += min(count, max_ref[gram])
        for n in range(1, max_n + 1):
            totals[n - 1] += max(0, len(cand) - n + 1)
    return matches, totals, cand_len, ref_len


def _bleu_from_statistics(matches: list[int], totals: list[int], cand_len: int, ref_len: int, n: int) -> float:
    if cand_len == 0 or any(m == 0 for m in matches[:n]) or any(t == 0 for t in totals[:n]):
        return 0.0
    log_precision = sum(math.log(matches[i] / totals[i]) for i in range(n)) / n
    brevity = 1.0 if cand_len > ref_len else math.exp(1.0 - ref_len / cand_len)
    return brevity * math.exp(log_precision)


def corpus_bleu(
    predictions: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4, tokenize: bool = True
) -> float:
    """Corpus-level BLEU-``max_n`` (Papineni et al. 2002) with multiple references.

    ``BP * exp(mean_n log p_n)`` where ``p_n`` are corpus-level clipped n-gram precisions (candidate counts
    clipped by the maximum count in any one reference) and ``BP = exp(1 - r / c)`` if ``c <= r`` else 1, with
    ``c`` the total candidate length and ``r`` the total effective reference length (per caption, the
    reference length closest to the candidate's, the shorter one on a tie). No smoothing: a zero
    precision gives 0. ``tokenize=False`` splits the inputs on whitespace only.
    """
    if max_n < 1:
        raise ValueError("max_n must be >= 1")
    stats = _bleu_statistics(predictions, references, max_n, tokenize)
    return _bleu_from_statistics(*stats, n=max_n)


def bleu_scores(
    predictions: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4, tokenize: bool = True
) -> dict[str, float]:
    """``{"bleu_1": ..., ..., "bleu_{max_n}": ...}``: cumulative BLEU-1..max_n, like coco-caption's Bleu_1..4."""
    if max_n < 1:
        raise ValueError("max_n must be >= 1")
    stats = _bleu_statistics(predictions, references, max_n, tokenize)
    return {f"bleu_{n}": _bleu_from_statistics(*stats, n=n) for n in range(1, max_n + 1)}


# -------------------------------------------------------------------------------------------------- CIDEr-D


def _tfidf(counts: Counter, df: Counter, log_num_docs: float, n: int) -> tuple[list[dict], list[float], int]:
    """TF-IDF vectors per n-gram order, their L2 norms, and the coco-caption 'length' of the sentence.

    coco-caption measures the length as the number of *bigrams* (``len - 1``; 0 for one-word sentences);
    only length differences enter the penalty, so this matters only for captions of at most one word.
    """
    vectors: list[dict] = [{} for _ in range(n)]
    norms = [0.0] * n
    length = 0
    for gram, tf in counts.items():
        order = len(gram) - 1
        weight = tf * (log_num_docs - math.log(max(1.0, df[gram])))
        vectors[order][gram] = weight
        norms[order] += weight * weight
        if order == 1:
            length += tf
    return vectors, [math.sqrt(v) for v in norms], length


def cider_d_scores(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    n: int = 4,
    sigma: float = 6.0,
    tokenize: bool = True,
) -> np.ndarray:
    """Per-caption CIDEr-D (Vedantam et al. 2015, coco-caption implementation).

    For n-gram orders 1..n, every sentence becomes a TF-IDF vector whose document frequencies come from the
    *references of the evaluated corpus* (one document per image: the union of its reference n-grams; IDF =
    ``log(#images) - log(max(1, df))``). For each reference, per order: the candidate weights are clipped
    to the reference weights, the clipped dot product is divided by both norms, and the result is multiplied
    by the Gaussian length penalty ``exp(-(l_cand - l_ref)^2 / (2 sigma^2))``. Scores are averaged over the
    orders and the references, then multiplied by 10.

    The IDF makes CIDEr-D a corpus metric: scores depend on the other images evaluated with it, and a
    single-image corpus always scores 0 (every IDF is ``log 1 = 0``). Evaluate whole test sets at once.
    """
    _check_pairs(predictions, references)
    cand_counts = [_ngram_counts(_tokens(p, tokenize), n) for p in predictions]
    ref_counts = [[_ngram_counts(_tokens(r, tokenize), n) for r in refs] for refs in references]

    df: Counter = Counter()
    for refs in ref_counts:
        df.update(set().union(*(r.keys() for r in refs)))
    log_num_docs = math.log(float(len(ref_counts)))

    scores = np.zeros(len(predictions), dtype=np.float64)
    two_sigma_sq = 2.0 * sigma * sigma
    for i, (cand, refs) in enumerate(zip(cand_counts, ref_counts)):
        vec_c, norm_c, len_c = _tfidf(cand, df, log_num_docs, n)
        total = 0.0
        for ref in refs:
            vec_r, norm_r, len_r = _tfidf(ref, df, log_num_docs, n)
            penalty = math.exp(-((len_c - len_r) ** 2) / two_sigma_sq)
            for order in range(n):
                if norm_c[order] == 0.0 or norm_r[order] == 0.0:
                    continue  # an all-zero vector has similarity 0
                ref_vec = vec_r[order]
                dot = sum(min(w, ref_vec.get(g, 0.0)) * ref_vec.get(g, 0.0) for g, w in vec_c[order].items())
                total += penalty * dot / (norm_c[order] * norm_r[order])
        scores[i] = 10.0 * total / (n * len(refs))
    return scores


def cider_d(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    n: int = 4,
    sigma: float = 6.0,
    tokenize: bool = True,
) -> float:
    """Corpus CIDEr-D: the mean of :func:`cider_d_scores` (the number ``pycocoevalcap``'s ``Cider`` returns)."""
    return float(np.mean(cider_d_scores(predictions, references, n=n, sigma=sigma, tokenize=tokenize)))
