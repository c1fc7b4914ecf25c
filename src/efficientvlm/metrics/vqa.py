"""VQA answer normalisation and the VQA accuracy metric.

The normalisation reproduces the rules of the official VQA evaluation script (``vqaEval.py`` of the VQA API):

1. newlines and tabs become spaces, outer whitespace is stripped;
2. punctuation: each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is *deleted* when it touches a space
   somewhere in the answer or when the answer contains a digit-comma-digit pattern (``"1,000"``), and is
   *replaced by a space* otherwise; a period is deleted unless a digit follows it (``"3.5"`` keeps its
   period, ``"yes."`` loses it). Apostrophes and colons are kept;
3. lower-casing and whitespace tokenisation;
4. number words ``none/zero ... ten`` become digits, the articles ``a``, ``an``, ``the`` are dropped;
5. apostrophe-less contractions are restored from the official table (``"dont"`` -> ``"don't"``).

Differences from the official script (both documented in the README):

* the official script normalises *predictions* fully but the ground-truth answers only with step 2 (and
  only when the ten answers disagree), because the released VQAv2 answers are already normalised. Here both
  sides get the full normalisation, so hand-written references such as ``"Two"`` or ``"a dog"`` compare
  as expected. On the official annotations this gives the same numbers;
* the official period regex is applied with a replacement limit of 32 (a bug: ``re.UNICODE`` passed as
  ``count``); here every period is handled, which only matters for answers with more than 32 periods.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache

__all__ = ["normalize_answer", "vqa_score", "vqa_accuracy", "answer_soft_scores"]

# Contractions written without apostrophe -> the official spelling. Keys containing upper case letters
# can never match after lower-casing; they are kept because the official table has them.
# fmt: off
_CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    # The official table maps "somebody'd" to "somebodyd" (sic); kept for fidelity.
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}

_NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}

# fmt: on

_ARTICLES = frozenset({"a", "an", "the"})

# fmt: off
_PUNCTUATION = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
)
# fmt: on

# The official pattern is "(?!<=\d)(\.)(?!\d)"; its first group is a (mistyped) look-*ahead* that can never
# fail in front of a ".", so the effective rule is: a period not followed by a digit.
_PERIOD = re.compile(r"\.(?!\d)")
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")


def _process_punctuation(text: str) -> str:
    """Step 2 of the official normalisation (see the module docstring)."""
    out = text
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    for p in _PUNCTUATION:
        # The official script tests the *original* text, not the partially processed one.
        if delete_all or (p + " ") in text or (" " + p) in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out)


def _process_digits_and_articles(text: str) -> str:
    """Steps 3-5 of the official normalisation."""
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


@lru_cache(maxsize=1 << 18)
def normalize_answer(answer: str) -> str:
    """Normalise a VQA answer with the official rules.

    Examples: ``"Two"`` -> ``"2"``, ``"a dog"`` -> ``"dog"``, ``"yes."`` -> ``"yes"``, ``"dont"`` -> ``"don't"``,
    ``"1,000"`` -> ``"1000"``.
    """
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    return _process_digits_and_articles(_process_punctuation(text))


def _score_from_count(matches: int, num_references: int) -> float:
    """Official accuracy of an answer given by ``matches`` of ``num_references`` annotators.

    With at least 10 references this is the official leave-one-out average: for every annotator, the
    answer scores ``min(1, matches among the *other* annotators / 3)``, and the scores are averaged. An
    annotator who gave the answer sees ``matches - 1`` other matches, the others see ``matches``. With fewer
    references the simpler ``min(1, matches / 3)`` is used.
    """
    if num_references <= 0:
        raise ValueError("a question needs at least one reference answer")
    if num_references < 10:
        return min(1.0, matches / 3.0)
    agree = matches * min(1.0, (matches - 1) / 3.0) if matches else 0.0
    disagree = (num_references - matches) * min(1.0, matches / 3.0)
    return (agree + disagree) / num_references


def vqa_score(prediction: str, references: Sequence[str]) -> float:
    """VQA accuracy of one predicted answer against the annotators' answers (a value in ``[0, 1]``).

    Both sides are normalised with :func:`normalize_answer`. With 10 (or more) references the official
    leave-one-out average of ``min(1, #matches among the other answers / 3)`` is used; with fewer,
    ``min(1, #matches / 3)``.
    """
    if isinstance(references, str):
        raise TypeError("references must be a list of answer strings, not a single string")
    pred = normalize_answer(prediction)
    matches = sum(normalize_answer(r) == pred for r in references)
    return _score_from_count(matches, len(references))


def vqa_accuracy(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean VQA accuracy over questions, as a fraction in ``[0, 1]`` (multiply by 100 for the usual %).

    Args:
        predictions: one answer string per question.
        references: for each question, the list of annotator answers (10 for VQAv2).
    """
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions but {len(references)} reference lists")
    if len(predictions) == 0:
        raise ValueError("vqa_accuracy needs at least one question")
    return sum(vqa_score(p, r) for p, r in zip(predictions, references)) / len(predictions)


def answer_soft_scores(answers: Iterable[str], rule: str = "official", normalize: bool = True) -> dict[str, float]:
    """Soft target scores of every distinct answer given by the annotators of one question.

    Args:
        answers: the annotators' answers (usually 10).
        rule: ``"official"`` (default) gives each answer exactly the VQA accuracy that predicting it would
            earn (:func:`vqa_score`), i.e. 0.3 / 0.6 / 0.9 / 1.0 for 1 / 2 / 3 / 4+ matches out of 10 -- these
            are also the classic bottom-up-attention soft scores. ``"min3"`` uses ``min(1, count / 3)``.
        normalize: apply :func:`normalize_answer` before counting.

    Returns:
        ``{answer: score}`` for every distinct (normalised) answer, scores in ``(0, 1]``.
    """
    answers = [normalize_answer(a) if normalize else a for a in answers]
    counts = Counter(answers)
    n = len(answers)
    if rule == "official":
        return {a: _score_from_count(c, n) for a, c in counts.items()}
    if rule == "min3":
        return {a: min(1.0, c / 3.0) for a, c in counts.items()}
    raise ValueError(f"unknown soft-score rule {rule!r}; use 'official' or 'min3'")
