"""VQA answer normalisation and the VQA accuracy metric, by default exactly as the official evaluation computes it.

Two ways to score an answer are offered; ``official=True`` (the default everywhere) is the one to report.

**Official** (``official=True``): the rules of ``vqaEval.py`` of the VQA API (GT-Vision-Lab/VQA,
``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` as of its October 2016 commit, a Python 2 script; the same
file is in Cloud-CV/VQA-Evaluation, the 2016 evaluation server's code), reproduced rule by rule, quirks included,
so that numbers can be compared with published ones. For one question with predicted answer ``p`` and annotator
answers ``g_1 .. g_n``:

1. ``p``: newlines and tabs become spaces and outer whitespace is stripped; then the *punctuation step*
   (below); then the *word step*: lower-casing, splitting on whitespace, number words ``none/zero ... ten``
   become digits, the articles ``a``, ``an``, ``the`` are dropped, apostrophe-less contractions are restored
   from the official table (``dont`` -> ``don't``), and the words are joined by single spaces.
2. ``g_i``: if all the annotators gave the same string, the answers are compared *as they are* (no
   stripping, no lower-casing, nothing). Otherwise each answer gets the punctuation step *only*: it is
   neither lower-cased nor stripped, and number words and articles stay. So a reference ``Two`` or ``a dog``
   never matches (predictions are lower-cased, their number words and articles replaced or dropped), and a
   reference ``tennis;`` becomes ``tennis `` and matches no prediction.
3. Punctuation step: for each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` in turn, the character is
   *deleted* everywhere if the *original* text has it next to a space (``"x ;"``, ``"; x"``) or if the text
   contains a digit-comma-digit anywhere (``"1,000"``), and *replaced by a space* everywhere otherwise
   (``"red-ish"`` -> ``"red ish"``, ``"tennis;"`` -> ``"tennis "``). Then a period not followed by a digit is
   deleted (``"3.5"`` keeps its period) -- only the first 32 such periods, because the official script
   passes ``re.UNICODE`` (32) where ``re.sub`` expects the replacement count. Apostrophes and colons are
   never touched. "Digit" means ``0-9`` (Python 2's ``re`` without the UNICODE flag).
4. Score: every annotator is left out in turn; the answer scores ``min(1, m_i / 3)`` where ``m_i`` counts
   the *other* annotators whose (processed) answer equals the processed prediction, and the question's
   accuracy is the mean over the ``n`` annotators. With 10 annotators: 0.3, 0.6, 0.9, 1.0 for 1, 2, 3, 4+
   matches. The rule holds for any ``n``: with 3 annotators an answer scores at most 2/3, with one
   annotator always 0 (use ``official=False`` for such references).
5. Aggregates: the mean over questions, and per question type and per answer type the mean over their
   questions (the script's ``overall``, ``perQuestionType`` and ``perAnswerType``). The script reports
   ``round(100 * x, 2)``; the functions here return unrounded fractions in ``[0, 1]``.

**Smoothed** (``official=False``; this library's metric before it followed the official script): both the
prediction and every reference get the full normalisation of step 1 (so ``"Two"`` matches a reference
``"two"`` and ``"tennis;"`` matches ``"tennis"``), whether or not the annotators agree; every period is
handled, not only the first 32; with 10 or more references the score is the leave-one-out mean of step 4,
with fewer the simpler ``min(1, matches / 3)``. It suits hand-written references (one reference ``"a dog"``
scores ``"dog"`` 1/3, not 0), never numbers to compare with published ones.

:func:`normalize_answer` is the full normalisation of step 1 (every period handled); training targets
(:func:`answer_soft_scores`, the answer vocabulary) use it.

Versions of the official script: the GT-Vision-Lab repository changed the script in March 2021 ("Fixed
processing answers bug": when the annotators disagree, references *and* prediction get both steps; when they
agree, *neither* is processed, so a prediction ``"Yes"`` against ten ``"yes"`` scores 0), and the 2017 challenge
code (Cloud-CV/VQA-Challenge) rewrote the punctuation step with regular expressions. Their numbers can differ
from the 2016 rules' on answers that are not already normalised; this module follows the 2016 release.
"""

from __future__ import annotations

import logging
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from functools import lru_cache

__all__ = ["normalize_answer", "vqa_score", "vqa_accuracy", "vqa_accuracy_breakdown", "answer_soft_scores"]

logger = logging.getLogger(__name__)

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
# fail in front of a ".", so the effective rule is: a period not followed by a digit. The official script is
# Python 2, whose \d without re.UNICODE is [0-9]; the smoothed rules keep Python 3's \d.
_PERIOD = re.compile(r"\.(?!\d)")
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
_OFFICIAL_PERIOD = re.compile(r"\.(?![0-9])")
_OFFICIAL_DIGIT_COMMA_DIGIT = re.compile(r"[0-9],[0-9]")
_OFFICIAL_PERIOD_LIMIT = 32  # re.UNICODE, passed by the official script as re.sub's count


def _process_punctuation(text: str, official: bool = False) -> str:
    """The punctuation step (see the module docstring); ``official`` applies the 32-period limit and ASCII digits."""
    out = text
    digit_comma_digit = _OFFICIAL_DIGIT_COMMA_DIGIT if official else _DIGIT_COMMA_DIGIT
    delete_all = digit_comma_digit.search(text) is not None
    for p in _PUNCTUATION:
        # The official script tests the *original* text, not the partially processed one.
        if delete_all or (p + " ") in text or (" " + p) in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    if official:
        return _OFFICIAL_PERIOD.sub("", out, count=_OFFICIAL_PERIOD_LIMIT)
    return _PERIOD.sub("", out)


def _process_digits_and_articles(text: str) -> str:
    """The word step: lower-case, number words to digits, no articles, contractions restored."""
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def _clean_whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


@lru_cache(maxsize=1 << 18)
def normalize_answer(answer: str) -> str:
    """The full answer normalisation (the smoothed metric's, applied to both sides; training targets use it).

    Examples: ``"Two"`` -> ``"2"``, ``"a dog"`` -> ``"dog"``, ``"yes."`` -> ``"yes"``, ``"dont"`` -> ``"don't"``,
    ``"1,000"`` -> ``"1000"``, ``"tennis;"`` -> ``"tennis"``. The official metric applies the same steps to the
    prediction (except that it deletes at most 32 periods), but not to the references; see the module docstring.
    """
    return _process_digits_and_articles(_process_punctuation(_clean_whitespace(answer)))


@lru_cache(maxsize=1 << 18)
def _official_prediction(answer: str) -> str:
    return _process_digits_and_articles(_process_punctuation(_clean_whitespace(answer), official=True))


@lru_cache(maxsize=1 << 18)
def _official_reference(answer: str) -> str:
    return _process_punctuation(answer, official=True)


def _score_from_count(matches: int, num_references: int) -> float:
    """Smoothed accuracy of an answer given by ``matches`` of ``num_references`` annotators.

    With at least 10 references this is the leave-one-out average: for every annotator, the answer scores
    ``min(1, matches among the *other* annotators / 3)``, and the scores are averaged. An annotator who gave
    the answer sees ``matches - 1`` other matches, the others see ``matches``. With fewer references the
    simpler ``min(1, matches / 3)`` is used.
    """
    if num_references <= 0:
        raise ValueError("a question needs at least one reference answer")
    if num_references < 10:
        return min(1.0, matches / 3.0)
    return _leave_one_out(matches, num_references)


def _leave_one_out(matches: int, num_references: int) -> float:
    """Mean over the annotators of ``min(1, matching other annotators / 3)`` (step 4 of the module docstring)."""
    agree = matches * min(1.0, (matches - 1) / 3.0) if matches else 0.0
    disagree = (num_references - matches) * min(1.0, matches / 3.0)
    return (agree + disagree) / num_references


def _check_answer(value, what: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, got {type(value).__name__} {value!r}")


def vqa_score(prediction: str, references: Sequence[str], official: bool = True) -> float:
    """VQA accuracy of one predicted answer against the annotators' answers (a value in ``[0, 1]``).

    Args:
        prediction: the predicted answer.
        references: the annotators' answers (10 for VQAv2), in any order.
        official: ``True`` (default) for the official evaluation's rules, ``False`` for the smoothed ones
            (both in the module docstring).
    """
    if isinstance(references, str):
        raise TypeError("references must be a list of answer strings, not a single string")
    references = list(references)
    if not references:
        raise ValueError("a question needs at least one reference answer")
    _check_answer(prediction, "the prediction")
    for j, reference in enumerate(references):
        _check_answer(reference, f"reference answer {j}")
    if not official:
        pred = normalize_answer(prediction)
        return _score_from_count(sum(normalize_answer(r) == pred for r in references), len(references))
    pred = _official_prediction(prediction)
    if len(set(references)) > 1:
        references = [_official_reference(r) for r in references]
    return _leave_one_out(sum(r == pred for r in references), len(references))


def _per_question_scores(
    predictions: Sequence[str], references: Sequence[Sequence[str]], official: bool
) -> list[float]:
    if isinstance(predictions, str) or isinstance(references, str):
        raise TypeError("predictions must be a list of answers and references a list of lists of answers")
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions but {len(references)} reference lists")
    if len(predictions) == 0:
        raise ValueError("VQA accuracy needs at least one question")
    scores = []
    for i, (prediction, refs) in enumerate(zip(predictions, references)):
        try:
            scores.append(vqa_score(prediction, refs, official=official))
        except (TypeError, ValueError) as err:
            raise type(err)(f"question {i}: {err}") from err
    if official:
        few = [i for i, refs in enumerate(references) if len(refs) < 4]
        if few:
            logger.warning(
                "%d of %d questions (first: %s) have fewer than 4 reference answers: under the official rule an "
                "answer needs 3 matching *other* annotators for full credit, so these score at most (n - 1) / 3 "
                "(0 with one reference); pass official=False for min(1, matches / 3)",
                len(few), len(references), few[:5],
            )
    return scores


def vqa_accuracy(predictions: Sequence[str], references: Sequence[Sequence[str]], official: bool = True) -> float:
    """Mean VQA accuracy over questions, as a fraction in ``[0, 1]`` (multiply by 100 for the usual %).

    Args:
        predictions: one answer string per question.
        references: for each question, the list of annotator answers (10 for VQAv2).
        official: ``True`` (default) for the official evaluation (equal to the ``overall`` of ``vqaEval.py``
            divided by 100, before its rounding to 2 decimals), ``False`` for the smoothed rules.
    """
    scores = _per_question_scores(predictions, references, official)
    return sum(scores) / len(scores)


def _group_means(scores: Sequence[float], types: Sequence[str], what: str) -> dict[str, float]:
    if isinstance(types, str) or len(types) != len(scores):
        raise ValueError(f"{what} must be a list with one entry per question ({len(scores)}), got "
                         f"{len(types) if not isinstance(types, str) else 'a string'}")
    groups: dict[str, list[float]] = defaultdict(list)
    for score, group in zip(scores, types):
        groups[group].append(score)
    return {group: sum(values) / len(values) for group, values in sorted(groups.items())}


def vqa_accuracy_breakdown(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    question_types: Sequence[str] | None = None,
    answer_types: Sequence[str] | None = None,
    official: bool = True,
) -> dict:
    """VQA accuracy overall, per question and per question / answer type (fractions in ``[0, 1]``).

    The counterpart of the official script's ``overall``, ``evalQA``, ``perQuestionType`` and ``perAnswerType``
    (which are ``round(100 * x, 2)`` of these).

    Args:
        predictions, references, official: as for :func:`vqa_accuracy`.
        question_types: optional, one per question (VQAv2's ``question_type``, e.g. ``"what color is the"``).
        answer_types: optional, one per question (VQAv2's ``answer_type``: ``"yes/no"``, ``"number"``,
            ``"other"``).

    Returns:
        ``{"vqa_accuracy": float, "per_question": [float, ...]}`` plus ``"per_question_type"`` and
        ``"per_answer_type"`` (``{type: mean accuracy of its questions}``, sorted by type) when the types are
        given.
    """
    scores = _per_question_scores(predictions, references, official)
    result: dict = {"vqa_accuracy": sum(scores) / len(scores), "per_question": scores}
    if question_types is not None:
        result["per_question_type"] = _group_means(scores, question_types, "question_types")
    if answer_types is not None:
        result["per_answer_type"] = _group_means(scores, answer_types, "answer_types")
    return result


def answer_soft_scores(answers: Iterable[str], rule: str = "official", normalize: bool = True) -> dict[str, float]:
    """Soft target scores of every distinct answer given by the annotators of one question (training targets).

    Args:
        answers: the annotators' answers (usually 10).
        rule: ``"official"`` (default) gives each answer the accuracy that predicting it would earn under the
            leave-one-out rule, i.e. 0.3 / 0.6 / 0.9 / 1.0 for 1 / 2 / 3 / 4+ matches out of 10 -- the classic
            bottom-up-attention soft scores; it equals ``vqa_score(answer, answers, official=False)``, and the
            official ``vqa_score`` too on normalised answers. With fewer than 10 answers ``min(1, count / 3)``.
            ``"min3"`` uses ``min(1, count / 3)`` always.
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
