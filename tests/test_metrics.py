"""Tests of efficientvlm.metrics: hand-computed values, official-rule cases, and the evaluate modules."""

import math
import random

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
    vqa_score,
)

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
    ],
)
def test_normalize_answer_official_rules(raw, expected):
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize("matches, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_score_ten_annotators(matches, expected):
    # Hand computation: annotators who gave the answer see matches-1 other matches, the others see matches;
    # e.g. 3 matches: (3 * min(1, 2/3) + 7 * min(1, 3/3)) / 10 = 0.9.
    refs = ["cat"] * matches + ["dog"] * (10 - matches)
    assert vqa_score("cat", refs) == pytest.approx(expected)


def test_vqa_score_fewer_than_ten_references_uses_min_count_over_three():
    assert vqa_score("yes", ["yes", "yes", "no"]) == pytest.approx(2 / 3)
    assert vqa_score("yes", ["yes"] * 3) == 1.0
    assert vqa_score("yes", ["no"]) == 0.0


def test_vqa_accuracy_normalises_both_sides():
    preds = ["Two", "a dog", "yes.", "dont know", "blue"]
    refs = [["2"] * 10, ["dog"] * 10, ["yes"] * 10, ["don't know"] * 10, ["red"] * 10]
    assert vqa_accuracy(preds, refs) == pytest.approx(4 / 5)
    assert vqa_accuracy(["2"], [["two"] * 10]) == 1.0


def test_vqa_accuracy_mean_and_errors():
    refs = [["yes"] * 2 + ["no"] * 8, ["cat"] * 10]
    assert vqa_accuracy(["yes", "cat"], refs) == pytest.approx((0.6 + 1.0) / 2)
    with pytest.raises(ValueError):
        vqa_accuracy(["yes"], refs)
    with pytest.raises(TypeError):
        vqa_score("yes", "yes")


def test_answer_soft_scores():
    answers = ["yes"] * 7 + ["no"] * 2 + ["Two"]
    assert answer_soft_scores(answers) == pytest.approx({"yes": 1.0, "no": 0.6, "2": 0.3})
    assert answer_soft_scores(answers, rule="min3") == pytest.approx({"yes": 1.0, "no": 2 / 3, "2": 1 / 3})
    # The official soft score of an answer is exactly its VQA accuracy.
    for answer, score in answer_soft_scores(answers).items():
        assert vqa_score(answer, answers) == pytest.approx(score)


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


def test_module_paths():
    for name in metrics.METRIC_NAMES:
        assert metrics.module_path(name).endswith(f"modules/{name}/{name}.py")
    with pytest.raises(ValueError):
        metrics.module_path("accuracy")


def test_random_vqa_consistency():
    rng = random.Random(0)
    words = ["yes", "no", "2", "two", "red", "a red", "Red."]
    for _ in range(50):
        refs = [rng.choice(words) for _ in range(10)]
        pred = rng.choice(words)
        # The leave-one-out average equals the closed form over the count of matching annotators.
        norm = [normalize_answer(r) for r in refs]
        p = normalize_answer(pred)
        loo = np.mean([min(1.0, sum(x == p for j, x in enumerate(norm) if j != i) / 3) for i in range(10)])
        assert vqa_score(pred, refs) == pytest.approx(loo)
