"""Task evaluation helpers on tiny models and the synthetic shapes data."""

import pytest
import torch

from efficientvlm import (
    EfficientVLMForCaptioning,
    EfficientVLMForImageTextRetrieval,
    EfficientVLMForNLVR2,
    EfficientVLMForVisualQuestionAnswering,
    EfficientVLMImageProcessor,
    EfficientVLMProcessor,
)
from efficientvlm.data import (
    ShapesConfig,
    answer_vocabulary,
    build_tokenizer,
    make_caption_dataset,
    make_nlvr2_dataset,
    make_vqa_dataset,
)
from efficientvlm.evaluation import (
    evaluate_captioning,
    evaluate_nlvr2,
    evaluate_retrieval,
    evaluate_vqa,
    measure_latency,
)
from tests.tiny_models import tiny_config

SHAPES = ShapesConfig(image_size=32)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tokenizer = build_tokenizer(tmp_path_factory.mktemp("tok"))
    processor = EfficientVLMProcessor(EfficientVLMImageProcessor(size={"height": 32, "width": 32}), tokenizer)
    answers = answer_vocabulary(SHAPES)
    config = tiny_config(text_config={"vocab_size": len(tokenizer), "bos_token_id": 2, "eos_token_id": 3},
                         id2label=dict(enumerate(answers)))
    return processor, config, answers


def _force_class(classifier: torch.nn.Sequential, index: int) -> None:
    with torch.no_grad():
        classifier[-1].weight.zero_()
        classifier[-1].bias.fill_(-10.0)
        classifier[-1].bias[index] = 10.0


def test_vqa_accuracy_of_a_constant_answer(setup):
    processor, config, answers = setup
    dataset = make_vqa_dataset(24, split_seed="test", config=SHAPES)
    model = EfficientVLMForVisualQuestionAnswering(config)
    _force_class(model.classifier, answers.index("yes"))
    result = evaluate_vqa(model, processor, dataset, batch_size=10)
    expected = sum(a == "yes" for a in dataset.with_format(None)["answer"]) / 24
    assert result["vqa_accuracy"] == pytest.approx(expected)
    assert {k for k in result if k.startswith("vqa_accuracy_")} <= {f"vqa_accuracy_{t}" for t in
                                                                   ("color", "shape", "count", "exist", "position")}
    if "vqa_accuracy_color" in result:
        assert result["vqa_accuracy_color"] == 0.0


def test_vqa_accuracy_of_given_predictions_equals_the_models(setup):
    processor, config, answers = setup
    dataset = make_vqa_dataset(24, split_seed="test", config=SHAPES)
    model = EfficientVLMForVisualQuestionAnswering(config)
    _force_class(model.classifier, answers.index("no"))
    assert evaluate_vqa(None, None, dataset, predictions=["no"] * 24) == evaluate_vqa(model, processor, dataset)
    with pytest.raises(ValueError, match="predictions has 3 answers for 24 rows"):
        evaluate_vqa(None, None, dataset, predictions=["no"] * 3)


def test_vqa_accuracy_per_answer_type_and_the_smoothed_option(setup):
    processor, config, answers = setup
    dataset = make_vqa_dataset(24, split_seed="test", config=SHAPES)
    plain = dataset.with_format(None)
    answer_types = ["yes/no" if a in ("yes", "no") else "other" for a in plain["answer"]]
    # VQAv2-style columns: an answer type, and references the official rules do not normalise ("Yes").
    dataset = dataset.add_column("answer_type", answer_types).map(
        lambda row: {"answers": [a.capitalize() if a == "yes" else a for a in row["answers"]]})
    model = EfficientVLMForVisualQuestionAnswering(config)
    _force_class(model.classifier, answers.index("yes"))
    yes_no = [a for a, t in zip(plain["answer"], answer_types) if t == "yes/no"]
    assert "yes" in yes_no
    official = evaluate_vqa(model, processor, dataset, batch_size=12)
    smoothed = evaluate_vqa(model, processor, dataset, batch_size=12, official=False)
    # Official: ten "Yes" are compared as they are and never match the prediction "yes"; smoothed: they match.
    assert official["vqa_accuracy"] == official["vqa_accuracy_answer_type_yes/no"] == 0.0
    assert smoothed["vqa_accuracy_answer_type_yes/no"] == pytest.approx(yes_no.count("yes") / len(yes_no))
    assert smoothed["vqa_accuracy"] == pytest.approx(yes_no.count("yes") / 24)
    if "other" in answer_types:
        assert official["vqa_accuracy_answer_type_other"] == smoothed["vqa_accuracy_answer_type_other"] == 0.0
    without = evaluate_vqa(model, processor, dataset, batch_size=12, answer_type_column=None)
    assert not any(k.startswith("vqa_accuracy_answer_type_") for k in without)


def test_nlvr2_accuracy_of_a_constant_answer(setup):
    processor, config, _ = setup
    dataset = make_nlvr2_dataset(12, split_seed="test", config=SHAPES)
    model = EfficientVLMForNLVR2(config)
    _force_class(model.classifier, 1)
    expected = sum(bool(v) for v in dataset.with_format(None)["label"]) / 12
    assert evaluate_nlvr2(model, processor, dataset, batch_size=5)["nlvr2_accuracy"] == pytest.approx(expected)


def test_retrieval_and_captioning_metrics_run_end_to_end(setup):
    processor, config, _ = setup
    dataset = make_caption_dataset(6, split_seed="test", config=SHAPES, captions_per_image=2)
    torch.manual_seed(0)
    model = EfficientVLMForImageTextRetrieval(config)
    recall = evaluate_retrieval(model, processor, dataset, k=3, batch_size=4)
    assert set(recall) >= {"txt_r1", "txt_r5", "img_r1", "img_r10", "r_mean"}
    assert all(0 <= v <= 100 for v in recall.values())
    # re-scoring every candidate: with 6 images and 12 texts (2 gold each) every gold item is within the top 10
    full = evaluate_retrieval(model, processor, dataset, k=12, batch_size=4)
    assert full["txt_r10"] == full["img_r10"] == 100.0
    captions = evaluate_captioning(EfficientVLMForCaptioning(config), processor, dataset, batch_size=4,
                                   max_new_tokens=4, num_beams=1, min_length=0)
    assert set(captions) == {"cider", "bleu_4"} and captions["cider"] >= 0


def test_measure_latency_times_every_model(setup):
    _, config, _ = setup
    models = {"a": EfficientVLMForVisualQuestionAnswering(config), "b": EfficientVLMForVisualQuestionAnswering(config)}
    inputs = {"pixel_values": torch.randn(2, 3, 32, 32), "input_ids": torch.randint(5, 20, (2, 6))}
    latency = measure_latency(models, lambda: inputs, repeats=3, warmup=1)
    assert set(latency) == {"a", "b"} and all(v > 0 for v in latency.values())
