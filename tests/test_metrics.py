"""Tests of efficientvlm.metrics: hand-computed values, official-rule cases, and the evaluate modules."""

import logging
import math
import random
import re

import numpy as np
import pytest

from efficientvlm import metrics
from efficientvlm.metrics import (
    answer_soft_scores,
    bleu_scores,
    cider_d,
    cider_d_scores,
    corpus_bleu,
    nlvr2_accuracy,
    normalize_answer,
    retrieval_recall,
    tokenize_caption,
    vqa_accuracy,
    vqa_accuracy_breakdown,
    vqa_score,
)
from tests import vqa_official_port

# ------------------------------------------------------------------------------------------------ VQA


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Two", "2"),
        ("two", "2"),
        ("none", "0"),
        ("a dog", "dog"),
        ("The Dog", "dog"),
        ("an apple", "apple"),
        ("yes.", "yes"),
        ("Yes!", "yes"),
        ("yes ?", "yes"),
        ("dont", "don't"),
        ("whats", "what's"),
        ("1,000", "1000"),  # digit-comma-digit: punctuation deleted, not replaced by a space
        ("3.5", "3.5"),  # a period followed by a digit stays
        ("red-ish", "red ish"),  # punctuation touching no space becomes a space
        ("left , right", "left right"),  # punctuation touching a space is deleted
        ("  two\tdogs\n", "2 dogs"),
        ("10:30", "10:30"),  # colons are not in the official punctuation list
        ("tennis;", "tennis"),  # the full normalisation strips the space the ";" became
    ],
)
def test_normalize_answer_rules(raw, expected):
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize("official", [True, False])
@pytest.mark.parametrize("matches, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_score_ten_annotators(matches, expected, official):
    # Hand computation: annotators who gave the answer see matches-1 other matches, the others see matches;
    # e.g. 3 matches: (3 * min(1, 2/3) + 7 * min(1, 3/3)) / 10 = 0.9.
    refs = ["cat"] * matches + ["dog"] * (10 - matches)
    assert vqa_score("cat", refs, official=official) == pytest.approx(expected)


# Each official quirk, by hand: the same prediction and references under the official and the smoothed rules.
@pytest.mark.parametrize(
    "prediction, references, official, smoothed",
    [
        # Ground-truth answers are not lower-cased (the prediction is): "Yes" never matches.
        ("yes", ["Yes"] * 5 + ["no"] * 5, 0.0, 1.0),
        ("Yes", ["Yes"] * 5 + ["no"] * 5, 0.0, 1.0),
        # Nor do number words and articles of the ground truth get replaced / dropped.
        ("2", ["two"] * 4 + ["3"] * 6, 0.0, 1.0),
        ("dog", ["a dog"] * 4 + ["cat"] * 6, 0.0, 1.0),
        # Punctuation touching no space becomes a space and is not stripped: "tennis;" -> "tennis ".
        ("tennis", ["tennis;"] * 4 + ["golf"] * 6, 0.0, 1.0),
        ("tennis;", ["tennis;"] * 4 + ["golf"] * 6, 0.0, 1.0),  # the prediction is stripped after the split
        # Punctuation touching a space is deleted: "tennis ;" -> "tennis ", still no match; "; tennis" -> " tennis".
        ("tennis", ["tennis ;"] * 4 + ["golf"] * 6, 0.0, 1.0),
        ("tennis", ["golf-ball"] * 4 + ["tennis"] * 6, 1.0, 1.0),
        ("golf ball", ["golf-ball"] * 4 + ["tennis"] * 6, 1.0, 1.0),  # "-" -> " " on both sides
        # Ground-truth answers are processed only when the annotators disagree.
        ("yes", ["yes."] * 10, 0.0, 1.0),  # all agree: "yes." compared as it is
        ("yes", ["yes."] * 9 + ["no"], 1.0, 1.0),  # they disagree: "yes." -> "yes"
        ("yes", [" yes"] * 10, 0.0, 1.0),  # nor stripped when they agree
        ("Two", ["2"] * 10, 1.0, 1.0),  # the prediction is always processed
        # The comma rule: a digit-comma-digit anywhere deletes every punctuation mark instead of spacing it.
        ("1,000", ["1000"] * 3 + ["500"] * 7, 0.9, 0.9),
        ("1000", ["1,000"] * 3 + ["500"] * 7, 0.9, 0.9),
        ("1,000-2", ["10002"] * 4 + ["1"] * 6, 1.0, 1.0),
        ("1-2", ["1 2"] * 4 + ["1"] * 6, 1.0, 1.0),
        # Only the first 32 periods are deleted (re.UNICODE passed as re.sub's count): 8 remain.
        ("yes" + "." * 40, ["yes"] * 4 + ["no"] * 6, 0.0, 1.0),
        ("yes" + "." * 32, ["yes"] * 4 + ["no"] * 6, 1.0, 1.0),
        # Digits are ASCII only (Python 2): "3.\uff15" loses its period under the official rules.
        ("3.\uff15", ["3\uff15"] * 4 + ["4"] * 6, 1.0, 0.0),
        # Contractions are restored on the prediction; ground truth keeps its spelling.
        ("dont", ["don't"] * 4 + ["no"] * 6, 1.0, 1.0),
        ("don't", ["dont"] * 4 + ["no"] * 6, 0.0, 1.0),
        # Leave-one-out over the annotators, for any number of them: 3 annotators, 2 matches ->
        # (1/3 + 1/3 + 2/3) / 3 = 4/9 (smoothed: min(1, 2/3)); one annotator: always 0 (smoothed 1/3).
        ("cat", ["cat", "cat", "dog"], 4 / 9, 2 / 3),
        ("cat", ["cat"], 0.0, 1 / 3),
        ("cat", ["cat"] * 4, 1.0, 1.0),
        ("cat", ["cat"] * 3, 2 / 3, 1.0),
    ],
)
def test_vqa_score_official_quirks(prediction, references, official, smoothed):
    assert vqa_score(prediction, references) == pytest.approx(official)
    assert vqa_score(prediction, references, official=True) == pytest.approx(official)
    assert vqa_score(prediction, references, official=False) == pytest.approx(smoothed)


def test_vqa_accuracy_smoothed_normalises_both_sides():
    preds = ["Two", "a dog", "yes.", "dont know", "blue"]
    refs = [["2"] * 10, ["dog"] * 10, ["yes"] * 10, ["don't know"] * 10, ["red"] * 10]
    assert vqa_accuracy(preds, refs, official=False) == pytest.approx(4 / 5)
    assert vqa_accuracy(preds, refs) == pytest.approx(4 / 5)  # normalised references: the same
    assert vqa_accuracy(["2"], [["two"] * 10], official=False) == 1.0
    assert vqa_accuracy(["2"], [["two"] * 10]) == 0.0  # official: the ground truth is not normalised


def test_vqa_score_smoothed_fewer_than_ten_references_uses_min_count_over_three():
    assert vqa_score("yes", ["yes", "yes", "no"], official=False) == pytest.approx(2 / 3)
    assert vqa_score("yes", ["yes"] * 3, official=False) == 1.0
    assert vqa_score("yes", ["no"], official=False) == 0.0


def test_vqa_accuracy_mean_and_errors():
    refs = [["yes"] * 2 + ["no"] * 8, ["cat"] * 10]
    assert vqa_accuracy(["yes", "cat"], refs) == pytest.approx((0.6 + 1.0) / 2)
    with pytest.raises(ValueError, match="1 predictions but 2 reference lists"):
        vqa_accuracy(["yes"], refs)
    with pytest.raises(TypeError, match="not a single string"):
        vqa_score("yes", "yes")
    with pytest.raises(ValueError, match="question 1: a question needs at least one reference"):
        vqa_accuracy(["yes", "no"], [["yes"], []])
    with pytest.raises(TypeError, match="question 0: reference answer 1 must be a string, got int 2"):
        vqa_accuracy(["2"], [["2", 2]])
    with pytest.raises(TypeError, match="question 0: the prediction must be a string, got NoneType"):
        vqa_accuracy([None], [["2"]])


def test_vqa_official_warns_about_too_few_references(caplog):
    with caplog.at_level(logging.WARNING, logger="efficientvlm.metrics.vqa"):
        assert vqa_accuracy(["cat", "cat"], [["cat"] * 10, ["cat"]]) == pytest.approx(0.5)
    assert "1 of 2 questions (first: [1]) have fewer than 4 reference answers" in caplog.text
    assert "official=False" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="efficientvlm.metrics.vqa"):
        vqa_accuracy(["cat"], [["cat"]], official=False)
        vqa_accuracy(["cat"], [["cat"] * 4])
    assert caplog.text == ""


def test_vqa_accuracy_breakdown_by_type():
    preds = ["yes", "2", "red", "no"]
    refs = [["yes"] * 10, ["2"] * 3 + ["3"] * 7, ["blue"] * 10, ["no"] * 10]
    qtypes = ["is the", "how many", "what color is the", "is the"]
    atypes = ["yes/no", "number", "other", "yes/no"]
    out = vqa_accuracy_breakdown(preds, refs, question_types=qtypes, answer_types=atypes)
    assert out["per_question"] == pytest.approx([1.0, 0.9, 0.0, 1.0])
    assert out["vqa_accuracy"] == pytest.approx(2.9 / 4)
    assert out["per_question_type"] == pytest.approx({"how many": 0.9, "is the": 1.0, "what color is the": 0.0})
    assert out["per_answer_type"] == pytest.approx({"number": 0.9, "other": 0.0, "yes/no": 1.0})
    assert set(vqa_accuracy_breakdown(preds, refs)) == {"vqa_accuracy", "per_question"}
    with pytest.raises(ValueError, match="question_types must be a list with one entry per question"):
        vqa_accuracy_breakdown(preds, refs, question_types=qtypes[:3])


def test_answer_soft_scores():
    answers = ["yes"] * 7 + ["no"] * 2 + ["Two"]
    assert answer_soft_scores(answers) == pytest.approx({"yes": 1.0, "no": 0.6, "2": 0.3})
    assert answer_soft_scores(answers, rule="min3") == pytest.approx({"yes": 1.0, "no": 2 / 3, "2": 1 / 3})
    # The soft score of an answer is exactly its smoothed VQA accuracy.
    for answer, score in answer_soft_scores(answers).items():
        assert vqa_score(answer, answers, official=False) == pytest.approx(score)


# --------------------------------------------------------------- VQA: generated cases against the official port

_BASE_ANSWERS = [
    "yes", "no", "2", "two", "ten", "10", "none", "zero", "0", "1,000", "1000", "3.5", "10:30", "dog", "a dog",
    "the dog", "an apple", "red and white", "left side", "tennis", "dont", "don't", "whats", "what's", "oclock",
    "im", "i'm", "cant", "youre", "1,2", "50,000 feet", "t-shirt", "hot dog", "st. louis", "mr. smith",
]
_MARKS = list(';/[]"{}()=+\\_-><@`,?!') + [".", ":", "'"]


def _mutate(answer: str, rng: random.Random) -> str:
    """A variant of ``answer`` an annotator or a model might write: case, punctuation anywhere, spacing, articles."""
    kind = rng.randrange(9)
    if kind == 0:
        return answer.upper()
    if kind == 1:
        return answer.title()
    if kind == 2:  # a mark at the start, at the end, inside, or next to a space
        mark, where = rng.choice(_MARKS), rng.randrange(4)
        if where == 0:
            return mark + answer
        if where == 1:
            return answer + mark
        if where == 2:
            cut = rng.randint(1, max(1, len(answer) - 1))
            return answer[:cut] + mark + answer[cut:]
        return answer + " " + mark if rng.random() < 0.5 else mark + " " + answer
    if kind == 3:
        return rng.choice([" ", "\n", "\t", "  "]) + answer + rng.choice(["", " ", "\n", "\t"])
    if kind == 4:
        return rng.choice(["a ", "an ", "the ", "The "]) + answer
    if kind == 5:
        return answer + "." * rng.choice([1, 2, 31, 32, 33, 40])
    if kind == 6:
        return answer.replace(" ", rng.choice(["-", "_", "/", "  ", ", "]))
    if kind == 7:  # two marks, e.g. "(dog)" or "yes!?"
        return rng.choice(_MARKS) + answer + rng.choice(_MARKS)
    return answer


def _generated_vqa_cases(n: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    """``n`` (prediction, references) pairs: 1-10 annotators, agreeing or not, predictions near the references."""
    rng = random.Random(seed)
    cases = []
    for _ in range(n):
        num_annotators = rng.randint(1, 10)
        pool = [rng.choice(_BASE_ANSWERS) for _ in range(rng.randint(1, 3))]
        pool = [_mutate(a, rng) if rng.random() < 0.5 else a for a in pool]
        if rng.random() < 0.3:  # all annotators agree
            references = [pool[0]] * num_annotators
        else:
            references = [rng.choice(pool) for _ in range(num_annotators)]
            references = [_mutate(a, rng) if rng.random() < 0.15 else a for a in references]
        if rng.random() < 0.75:
            prediction = rng.choice(references)
            prediction = _mutate(prediction, rng) if rng.random() < 0.6 else prediction
        else:
            prediction = _mutate(rng.choice(_BASE_ANSWERS), rng)
        cases.append((prediction, references))
    return cases


_GENERATED = _generated_vqa_cases(600)


def test_generated_vqa_cases_cover_the_quirks():
    preds = [p for p, _ in _GENERATED]
    refs = [r for _, r in _GENERATED]
    assert {len(r) for r in refs} == set(range(1, 11))
    assert sum(len(set(r)) == 1 for r in refs) > 100 and sum(len(set(r)) > 1 for r in refs) > 300
    every_answer = preds + [a for r in refs for a in r]
    assert any(a != a.lower() for a in every_answer)
    assert all(any(m in a for a in every_answer) for m in _MARKS)
    assert any(a.count(".") > 32 for a in every_answer)
    assert any(w in a.split() for a in every_answer for w in ("two", "ten", "none", "zero"))
    assert any(w in a.lower().split() for a in every_answer for w in ("a", "an", "the"))
    assert any(w in a.split() for a in every_answer for w in ("dont", "whats", "im", "cant", "youre", "oclock"))
    assert any(re.search(r"[0-9],[0-9]", a) for a in every_answer)
    scores = [vqa_score(p, r) for p, r in _GENERATED]
    smoothed = [vqa_score(p, r, official=False) for p, r in _GENERATED]
    assert sum(s > 0 for s in scores) > 150  # many predictions match, so the comparison below has teeth
    assert len({round(s, 9) for s in scores}) > 8
    assert sum(abs(a - b) > 1e-9 for a, b in zip(scores, smoothed)) > 100  # and the quirks matter in many


@pytest.mark.parametrize("chunk", range(6))
def test_vqa_score_equals_the_official_port_on_generated_cases(chunk):
    cases = _GENERATED[chunk * 100 : (chunk + 1) * 100]
    preds = [p for p, _ in cases]
    refs = [r for _, r in cases]
    expected = vqa_official_port.evaluate(*vqa_official_port.as_official_files(preds, refs))["per_question"]
    for qid, (prediction, references) in enumerate(cases):
        assert vqa_score(prediction, references) == pytest.approx(expected[qid], abs=1e-12), (prediction, references)


def test_vqa_breakdown_equals_the_official_port_on_generated_cases():
    rng = random.Random(1)
    preds = [p for p, _ in _GENERATED]
    refs = [r for _, r in _GENERATED]
    qtypes = [rng.choice(["what color is the", "how many", "is the", "what is"]) for _ in preds]
    atypes = [rng.choice(["yes/no", "number", "other"]) for _ in preds]
    expected = vqa_official_port.evaluate(*vqa_official_port.as_official_files(preds, refs, qtypes, atypes))
    out = vqa_accuracy_breakdown(preds, refs, question_types=qtypes, answer_types=atypes)
    assert out["vqa_accuracy"] == pytest.approx(expected["overall"], abs=1e-12)
    assert out["per_question"] == pytest.approx([expected["per_question"][i] for i in range(len(preds))], abs=1e-12)
    assert out["per_question_type"] == pytest.approx(expected["per_question_type"], abs=1e-12)
    assert out["per_answer_type"] == pytest.approx(expected["per_answer_type"], abs=1e-12)
    assert vqa_accuracy(preds, refs) == pytest.approx(expected["overall"], abs=1e-12)


def test_official_port_hand_cases():
    # The oracle itself, on the quirks computed by hand above.
    port = vqa_official_port
    assert port.punctuation_step("tennis;") == "tennis "
    assert port.punctuation_step("tennis ;") == "tennis "
    assert port.punctuation_step("1,000-2") == "10002"
    assert port.punctuation_step("yes" + "." * 40) == "yes" + "." * 8
    assert port.punctuation_step("3.5.") == "3.5"
    assert port.word_step("The Two dont") == "2 don't"
    gt, res = port.as_official_files(["cat", "yes"], [["cat", "cat", "dog"], ["Yes"] * 10])
    assert port.evaluate(gt, res)["per_question"] == pytest.approx({0: 4 / 9, 1: 0.0})


# ------------------------------------------------------------------------------------------- retrieval


def _itm_eval_reference(scores_i2t, txt2img, img2txt):
    """ALBEF's itm_eval ranking (argsort), valid when there are no ties."""
    ranks = []
    for i, row in enumerate(scores_i2t):
        order = np.argsort(row)[::-1]
        ranks.append(min(np.where(order == t)[0][0] for t in img2txt[i]))
    tr = [100.0 * np.mean(np.array(ranks) < k) for k in (1, 5, 10)]
    ranks = []
    for t, row in enumerate(scores_i2t.T):
        order = np.argsort(row)[::-1]
        ranks.append(np.where(order == txt2img[t])[0][0])
    ir = [100.0 * np.mean(np.array(ranks) < k) for k in (1, 5, 10)]
    return tr, ir


def test_retrieval_recall_hand_computed():
    # 3 images, 4 texts; image 0 owns texts 0 and 1, image 1 text 2, image 2 text 3.
    txt2img = [0, 0, 1, 2]
    img2txt = [[0, 1], [2], [3]]
    scores = np.array(
        [
            [0.1, 0.9, 0.5, 0.2],  # best gold (text 1) ranked first            -> rank 0
            [0.8, 0.7, 0.6, 0.1],  # gold text 2 behind texts 0 and 1            -> rank 2
            [0.3, 0.2, 0.9, 0.1],  # gold text 3 last of 4                       -> rank 3
        ]
    )
    out = retrieval_recall(scores, txt2img, img2txt, ks=(1, 2, 3))
    assert out["txt_r1"] == pytest.approx(100 / 3)
    assert out["txt_r2"] == pytest.approx(100 / 3)
    assert out["txt_r3"] == pytest.approx(200 / 3)
    # text->image columns: text0 [0.1,.8,.3] gold 0 -> rank 2; text1 [.9,.7,.2] gold 0 -> 0;
    # text2 [.5,.6,.9] gold 1 -> 1; text3 [.2,.1,.1] gold 2 -> tie with image 1 at 0.1 (pessimistic) -> 2.
    assert out["img_r1"] == pytest.approx(25.0)
    assert out["img_r2"] == pytest.approx(50.0)
    assert out["img_r3"] == pytest.approx(100.0)
    assert out["txt_r_mean"] == pytest.approx(np.mean([100 / 3, 100 / 3, 200 / 3]))
    assert out["r_mean"] == pytest.approx((out["txt_r_mean"] + out["img_r_mean"]) / 2)


def test_retrieval_recall_ties_are_pessimistic():
    n = 4
    constant = np.zeros((n, n))
    out = retrieval_recall(constant, list(range(n)), [[i] for i in range(n)], ks=(1, 3, 4))
    # Every gold item is ranked after the 3 tied non-gold items: rank 3.
    assert out["txt_r1"] == out["img_r1"] == 0.0
    assert out["txt_r3"] == out["img_r3"] == 0.0
    assert out["txt_r4"] == out["img_r4"] == 100.0
    # A gold tied with one non-gold at the top: rank 1, so not counted at R@1.
    scores = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    out = retrieval_recall(scores, [0, 1, 2], [[0], [1], [2]], ks=(1, 2))
    assert out["txt_r1"] == pytest.approx(200 / 3)
    assert out["txt_r2"] == 100.0
    # Permuting the candidates does not change tied results (argsort-based ranking would).
    perm = [2, 1, 0]
    out_perm = retrieval_recall(
        scores[:, perm], [[0, 1, 2][p] for p in perm], [[perm.index(0)], [perm.index(1)], [perm.index(2)]], ks=(1, 2)
    )
    assert out_perm["txt_r1"] == out["txt_r1"]
    # Ties between two gold texts do not hurt.
    out = retrieval_recall(np.array([[0.5, 0.5, 0.1]]), [0, 0, 0], [[0, 1, 2]], ks=(1,))
    assert out["txt_r1"] == 100.0


def test_retrieval_recall_matches_itm_eval_without_ties_and_accepts_tensors():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    n_img, per = 12, 3
    txt2img = [i for i in range(n_img) for _ in range(per)]
    img2txt = [list(range(i * per, (i + 1) * per)) for i in range(n_img)]
    scores = rng.normal(size=(n_img, n_img * per))
    tr, ir = _itm_eval_reference(scores, txt2img, img2txt)
    out = retrieval_recall(scores, txt2img, img2txt)
    assert [out["txt_r1"], out["txt_r5"], out["txt_r10"]] == pytest.approx(tr)
    assert [out["img_r1"], out["img_r5"], out["img_r10"]] == pytest.approx(ir)
    assert set(out) == {
        "txt_r1",
        "txt_r5",
        "txt_r10",
        "img_r1",
        "img_r5",
        "img_r10",
        "txt_r_mean",
        "img_r_mean",
        "r_mean",
    }
    assert retrieval_recall(torch.tensor(scores), txt2img, img2txt) == out
    assert retrieval_recall(torch.tensor(scores, dtype=torch.bfloat16), txt2img, img2txt).keys() == out.keys()
    # A separate t2i matrix is honoured.
    assert retrieval_recall(scores, txt2img, img2txt, scores_t2i=scores.T) == out


def test_retrieval_recall_validation():
    with pytest.raises(ValueError):
        retrieval_recall(np.array([[np.nan, 0.0]]), [0, 0], [[0, 1]])
    with pytest.raises(ValueError):
        retrieval_recall(np.zeros((2, 2)), [0, 1], [[0], []])
    with pytest.raises(ValueError):
        retrieval_recall(np.zeros((2, 2)), [0, 1], [[0], [5]])
    out = retrieval_recall(np.array([[1.0, -np.inf], [-np.inf, 1.0]]), [0, 1], [[0], [1]], ks=(1,))
    assert out["r_mean"] == 100.0


# ----------------------------------------------------------------------------------------------- NLVR2


def test_nlvr2_accuracy():
    assert nlvr2_accuracy([1, 0, True, "False"], ["True", "False", 0, False]) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        nlvr2_accuracy([2], [1])


# --------------------------------------------------------------------------------------------- captions


def test_tokenize_caption():
    assert tokenize_caption("A man's dog, running. Black/white T-shirt!") == [
        "a",
        "mans",
        "dog",
        "running",
        "black",
        "white",
        "t",
        "shirt",
    ]


def test_bleu_hand_computed():
    # p1 = 4/5, p2 = 3/4, p3 = 2/3, p4 = 1/2; c = 5 < r = 6 -> BP = exp(1 - 6/5).
    expected = math.exp(1 - 6 / 5) * (4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** (1 / 4)
    assert corpus_bleu(["a b c d e"], [["a b c d f g"]]) == pytest.approx(expected)
    scores = bleu_scores(["a b c d e"], [["a b c d f g"]])
    assert scores["bleu_1"] == pytest.approx(math.exp(-0.2) * 0.8)
    assert scores["bleu_2"] == pytest.approx(math.exp(-0.2) * math.sqrt(0.8 * 0.75))
    assert scores["bleu_4"] == pytest.approx(expected)


def test_bleu_clipping_reference_length_and_corpus_aggregation():
    # Clipping: "the" counts at most once (its max count in a single reference); c = 4 > r = 2 -> BP = 1.
    assert corpus_bleu(["the the the the"], [["the cat", "a cat"]], max_n=1) == pytest.approx(0.25)
    # Closest reference length; on a tie the shorter one (4 and 6 are both 1 away from 5) -> BP = 1.
    assert corpus_bleu(["a b c d e"], [["a b c d", "a b c d e f"]], max_n=1) == pytest.approx(1.0)
    # Corpus level: statistics are summed before dividing.
    # Sentence 1: 2/2 unigrams match, sentence 2: 1/3 -> p1 = 3/5; c = 5, r = 2 + 3 = 5 -> BP = 1.
    assert corpus_bleu(["a b", "c d e"], [["a b"], ["c x y"]], max_n=1) == pytest.approx(3 / 5)
    # A zero precision gives 0 (no smoothing).
    assert corpus_bleu(["a b"], [["b a"]]) == 0.0


CAPTION_CORPUS = (
    [
        "a red circle and two blue squares",
        "a man riding a horse on the beach",
        "two dogs",
        "dog",
        "a picture of a cat cat cat sitting on a mat",
        "a red circle and two blue squares",
    ],
    [
        ["a red circle and two blue squares", "two blue squares and a red circle", "there is a red circle"],
        ["a person rides a horse along the beach", "a man on a horse at the beach", "horse riding on sand"],
        ["two dogs playing", "a pair of dogs in the grass"],
        ["a dog", "the dog sleeps"],
        ["a cat sitting on a mat", "a cat on a mat", "the cat sits on the mat", "a small cat", "cat on mat"],
        ["a green triangle", "one green triangle on a grey background"],
    ],
)


def test_cider_d_matches_pycocoevalcap():
    cider_module = pytest.importorskip("pycocoevalcap.cider.cider")
    preds, refs = CAPTION_CORPUS
    tokenized_preds = [" ".join(tokenize_caption(p)) for p in preds]
    tokenized_refs = [[" ".join(tokenize_caption(r)) for r in rs] for rs in refs]
    gts = {i: rs for i, rs in enumerate(tokenized_refs)}
    res = {i: [p] for i, p in enumerate(tokenized_preds)}
    expected, expected_per_image = cider_module.Cider().compute_score(gts, res)
    assert cider_d(preds, refs) == pytest.approx(expected, rel=1e-9)
    assert cider_d_scores(preds, refs) == pytest.approx(expected_per_image, rel=1e-9)


def test_bleu_matches_pycocoevalcap():
    bleu_module = pytest.importorskip("pycocoevalcap.bleu.bleu")
    import contextlib
    import io

    preds, refs = CAPTION_CORPUS
    gts = {i: [" ".join(tokenize_caption(r)) for r in rs] for i, rs in enumerate(refs)}
    res = {i: [" ".join(tokenize_caption(p))] for i, p in enumerate(preds)}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocoevalcap prints its statistics
        expected, _ = bleu_module.Bleu(4).compute_score(gts, res)
    ours = bleu_scores(preds, refs)
    assert [ours[f"bleu_{n}"] for n in range(1, 5)] == pytest.approx(expected, rel=1e-6)


def test_cider_d_properties():
    preds, refs = CAPTION_CORPUS
    scores = cider_d_scores(preds, refs)
    assert scores[0] > scores[5]  # exact match of a reference beats an unrelated caption
    assert scores[5] == 0.0
    assert cider_d(preds, refs) == pytest.approx(float(np.mean(scores)))
    # Tokenisation makes case and punctuation irrelevant.
    assert cider_d([p.upper() + "." for p in preds], refs) == pytest.approx(cider_d(preds, refs))


# ------------------------------------------------------------------------------------ evaluate modules


@pytest.fixture(scope="module")
def loaded_metrics():
    pytest.importorskip("evaluate")
    return {name: metrics.load(name) for name in metrics.METRIC_NAMES}


def test_evaluate_modules_match_pure_functions(loaded_metrics):
    preds, refs = CAPTION_CORPUS
    assert loaded_metrics["cider"].compute(predictions=preds, references=refs)["cider"] == pytest.approx(
        cider_d(preds, refs)
    )
    bleu = loaded_metrics["bleu"].compute(predictions=preds, references=refs)
    assert bleu["bleu"] == pytest.approx(corpus_bleu(preds, refs))
    assert bleu["bleu_1"] == pytest.approx(bleu_scores(preds, refs)["bleu_1"])

    vqa_preds = ["Two", "yes", "no"]
    vqa_refs = [["2"] * 10, ["yes"] * 3 + ["no"] * 7, ["no"] * 10]
    out = loaded_metrics["vqa_accuracy"].compute(predictions=vqa_preds, references=vqa_refs)
    assert out["vqa_accuracy"] == pytest.approx(vqa_accuracy(vqa_preds, vqa_refs))

    out = loaded_metrics["nlvr2_accuracy"].compute(predictions=[1, 0, 1], references=[1, 1, 1])
    assert out["nlvr2_accuracy"] == pytest.approx(2 / 3)

    rng = np.random.default_rng(1)
    scores = rng.normal(size=(5, 10))
    img2txt = [[2 * i, 2 * i + 1] for i in range(5)]
    txt2img = [i // 2 for i in range(10)]
    out = loaded_metrics["retrieval_recall"].compute(predictions=scores.tolist(), references=img2txt)
    assert out == pytest.approx(retrieval_recall(scores, txt2img, img2txt))
    out = loaded_metrics["retrieval_recall"].compute(
        predictions=scores.tolist(), references=img2txt, txt2img=txt2img, ks=(1, 2)
    )
    assert out == pytest.approx(retrieval_recall(scores, txt2img, img2txt, ks=(1, 2)))


def test_evaluate_module_add_batch(loaded_metrics):
    metric = loaded_metrics["vqa_accuracy"]
    metric.add_batch(predictions=["yes"], references=[["yes"] * 10])
    metric.add_batch(predictions=["no"], references=[["yes"] * 10])
    assert metric.compute()["vqa_accuracy"] == pytest.approx(0.5)


def test_vqa_evaluate_module_official_option_and_types(loaded_metrics):
    metric = loaded_metrics["vqa_accuracy"]
    preds = ["tennis", "2", "yes"]
    refs = [["tennis;"] * 4 + ["golf"] * 6, ["two"] * 10, ["yes"] * 10]
    assert metric.compute(predictions=preds, references=refs) == {"vqa_accuracy": pytest.approx(1 / 3)}
    out = metric.compute(predictions=preds, references=refs, official=False)
    assert out == {"vqa_accuracy": pytest.approx(1.0)}
    metric.add_batch(predictions=preds[:2], references=refs[:2])
    metric.add_batch(predictions=preds[2:], references=refs[2:])
    out = metric.compute(
        question_types=["what sport", "how many", "is the"], answer_types=["other", "number", "yes/no"]
    )
    assert out == {
        "vqa_accuracy": pytest.approx(1 / 3),
        "per_question_type": pytest.approx({"how many": 0.0, "is the": 1.0, "what sport": 0.0}),
        "per_answer_type": pytest.approx({"number": 0.0, "other": 0.0, "yes/no": 1.0}),
    }
    breakdown = vqa_accuracy_breakdown(preds, refs, ["what sport", "how many", "is the"], ["other", "number", "yes/no"])
    assert out["per_answer_type"] == pytest.approx(breakdown["per_answer_type"])


def test_module_paths():
    for name in metrics.METRIC_NAMES:
        assert metrics.module_path(name).endswith(f"modules/{name}/{name}.py")
    with pytest.raises(ValueError):
        metrics.module_path("accuracy")


def test_random_vqa_consistency_smoothed():
    rng = random.Random(0)
    words = ["yes", "no", "2", "two", "red", "a red", "Red."]
    for _ in range(50):
        refs = [rng.choice(words) for _ in range(10)]
        pred = rng.choice(words)
        # The smoothed leave-one-out average equals the closed form over the count of matching annotators.
        norm = [normalize_answer(r) for r in refs]
        p = normalize_answer(pred)
        loo = np.mean([min(1.0, sum(x == p for j, x in enumerate(norm) if j != i) / 3) for i in range(10)])
        assert vqa_score(pred, refs, official=False) == pytest.approx(loo)
