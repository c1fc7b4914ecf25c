"""pipeline("visual-question-answering") on a saved tiny checkpoint, with image files written by the test."""

import base64
import re

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoProcessor, pipeline

from efficientvlm import (
    EfficientVLMForVisualQuestionAnswering,
    EfficientVLMImageProcessor,
    EfficientVLMModel,
    EfficientVLMProcessor,
    EfficientVLMVQAPipeline,
)
from tests.tiny_models import ANSWERS, tiny_config
from tests.utils import make_test_images, make_tiny_tokenizer, serve_folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("vqa")
    tokenizer = make_tiny_tokenizer(root / "tok")
    config = tiny_config(text_config={"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
                                      "bos_token_id": tokenizer.cls_token_id, "eos_token_id": tokenizer.sep_token_id,
                                      "mask_token_id": tokenizer.mask_token_id})
    torch.manual_seed(0)
    model = EfficientVLMForVisualQuestionAnswering(config).eval()
    processor = EfficientVLMProcessor(EfficientVLMImageProcessor(size={"height": 32, "width": 32}), tokenizer)
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    return root / "model", model, processor


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_test_images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def vqa(checkpoint):
    return pipeline("visual-question-answering", model=str(checkpoint[0]))


def test_pipeline_resolves_the_library_classes(vqa, checkpoint):
    assert isinstance(vqa, EfficientVLMVQAPipeline)
    assert isinstance(vqa.model, EfficientVLMForVisualQuestionAnswering)
    assert isinstance(vqa.image_processor, EfficientVLMImageProcessor)
    assert isinstance(AutoProcessor.from_pretrained(checkpoint[0]), EfficientVLMProcessor)
    assert isinstance(AutoImageProcessor.from_pretrained(checkpoint[0]), EfficientVLMImageProcessor)


@pytest.mark.parametrize("name", ["rgb.png", "rgba.png", "l.png", "p.png", "rgb.jpg", "l.jpg", "cmyk.jpg"])
def test_answers_for_image_files_of_every_mode(vqa, images, name):
    answers = vqa(str(images[name]), "what color is the circle?", top_k=3)
    assert len(answers) == 3
    assert all(set(a) == {"answer", "score"} and a["answer"] in ANSWERS and 0 <= a["score"] <= 1 for a in answers)
    assert answers[0]["score"] >= answers[1]["score"] >= answers[2]["score"]


def test_scores_are_the_model_sigmoid(vqa, checkpoint, images):
    _, model, processor = checkpoint
    image = Image.open(images["rgb.png"])
    answers = vqa(image, "is there a red square?", top_k=len(ANSWERS))
    inputs = processor(images=[image], text=["is there a red square?"])
    with torch.no_grad():
        probs = model(**inputs).logits.sigmoid()[0]
    expected = {ANSWERS[i]: float(p) for i, p in enumerate(probs)}
    assert {a["answer"]: pytest.approx(a["score"], abs=1e-5) for a in answers} == expected


def test_scores_are_the_softmax_for_a_single_label_head(checkpoint, images, tmp_path):
    folder, _, processor = checkpoint
    model = EfficientVLMForVisualQuestionAnswering.from_pretrained(folder)
    model.config.problem_type = "single_label_classification"  # trained with softmax cross-entropy
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    single = pipeline("visual-question-answering", model=str(tmp_path))
    image = Image.open(images["rgb.png"])
    answers = single(image, "is there a red square?", top_k=len(ANSWERS))
    with torch.no_grad():
        probs = model(**processor(images=[image], text=["is there a red square?"])).logits.softmax(-1)[0]
    assert {a["answer"]: pytest.approx(a["score"], abs=1e-5) for a in answers} == {
        ANSWERS[i]: float(p) for i, p in enumerate(probs)}
    assert sum(a["score"] for a in answers) == pytest.approx(1.0, abs=1e-5)


def test_many_images_many_questions_and_batching(vqa, images):
    files = [str(images["rgb.png"]), str(images["l.jpg"])]
    per_image = vqa(files, "how many squares are there?", top_k=1)
    assert len(per_image) == 2 and all(len(a) == 1 for a in per_image)
    per_question = vqa(files[0], ["what shape is it?", "is there a blue triangle?"], top_k=2)
    assert len(per_question) == 2
    as_dicts = vqa([{"image": f, "question": "what color is the square?"} for f in files], top_k=1)
    batched = vqa([{"image": f, "question": q} for f, q in zip(files, ["what color is it?", "how many?"])],
                  top_k=1, batch_size=2)
    single = [vqa(f, q, top_k=1) for f, q in zip(files, ["what color is it?", "how many?"])]
    assert [b[0]["answer"] for b in batched] == [s[0]["answer"] for s in single]
    for b, s in zip(batched, single):
        assert b[0]["score"] == pytest.approx(s[0]["score"], abs=1e-5)
    assert len(as_dicts) == 2


def test_bad_inputs_give_clear_errors(vqa, images, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        vqa(str(tmp_path / "missing.png"), "what color is the circle?")
    with pytest.raises(ValueError, match="corrupt.png"):
        vqa(str(images["corrupt.png"]), "what color is the circle?")
    with pytest.raises(ValueError, match="empty"):
        vqa(str(images["rgb.png"]), "   ")
    with pytest.raises(ValueError, match="top_k"):
        vqa(str(images["rgb.png"]), "what color?", top_k=0)


def test_urls_and_data_uris_are_loaded_not_taken_for_paths(vqa, images):
    expected = vqa(str(images["rgb.png"]), "what color is the circle?", top_k=5)
    with serve_folder(images["rgb.png"].parent) as base:
        assert vqa(f"{base}/rgb.png", "what color is the circle?", top_k=5) == expected
    uri = "data:image/png;base64," + base64.b64encode(images["rgb.png"].read_bytes()).decode()
    assert vqa(uri, "what color is the circle?", top_k=5) == expected
    with pytest.raises(ConnectionError, match=r"Could not download the image at URL 'http://127\.0\.0\.1:1/x\.jpg'"):
        vqa("http://127.0.0.1:1/x.jpg", "what color is the circle?")


def test_float_images_in_0_1_with_do_rescale_false_answer_like_the_file(vqa, images):
    expected = vqa(str(images["rgb.png"]), "what color is the circle?", top_k=5)
    as_tensor = torch.from_numpy(np.asarray(Image.open(images["rgb.png"]).convert("RGB")).copy()).permute(2, 0, 1)
    answers = vqa(as_tensor.float() / 255, "what color is the circle?", top_k=5, do_rescale=False)
    assert [a["answer"] for a in answers] == [a["answer"] for a in expected]
    assert [a["score"] for a in answers] == pytest.approx([a["score"] for a in expected], abs=1e-5)
    with pytest.warns(UserWarning, match="do_rescale=False"):
        vqa(as_tensor.float() / 255, "what color is the circle?")


@pytest.mark.parametrize("top_k", [2.5, "3", True, 0, -1])
def test_top_k_must_be_a_positive_integer(vqa, images, top_k):
    with pytest.raises(ValueError, match=rf"top_k must be a positive integer .*got {re.escape(repr(top_k))}"):
        vqa(str(images["rgb.png"]), "what color?", top_k=top_k)


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        (([], "what color?"), ValueError, r"`image` is an empty list"),
        ((None, "what color?"), ValueError, r"`image` is missing"),
        (("IMAGE", []), ValueError, r"`question` is an empty list"),
        (("IMAGE", None), ValueError, r"`question` is missing"),
        (("IMAGE", 5), TypeError, r"`question` must be a string \(a question about the image\), got int \(5\)"),
        (("IMAGE", ["what color?", None]), TypeError, r"`question\[1\]` must be a string .*got NoneType"),
        (("IMAGE", "  "), ValueError, r"`question` is empty \('  '\)"),
        (([{"image": "IMAGE", "question": 7}],), TypeError, r"The 'question' of input 0 must be a string"),
        (([{"image": "IMAGE"}],), ValueError, r"input 0 needs an 'image' and a 'question' key"),
    ],
)
def test_arguments_are_checked_and_errors_name_them(vqa, images, args, error, message):
    args = tuple(str(images["rgb.png"]) if a == "IMAGE" else a for a in args)
    args = tuple([{k: (str(images["rgb.png"]) if v == "IMAGE" else v) for k, v in a[0].items()}]
                 if isinstance(a, list) and a and isinstance(a[0], dict) else a for a in args)
    with pytest.raises(error, match=message):
        vqa(*args)


def test_a_vqa_model_whose_classifier_was_not_loaded_is_refused(checkpoint, tmp_path):
    _, model, processor = checkpoint
    folder = tmp_path / "pretrained-only"
    EfficientVLMModel(model.config).save_pretrained(folder)  # encoders only: no VQA classifier
    processor.save_pretrained(folder)
    with pytest.raises(ValueError) as error:
        pipeline("visual-question-answering", model=str(folder))
    message = str(error.value)
    assert f"was not loaded from the checkpoint at '{folder}', which was saved from EfficientVLMModel" in message
    assert "classifier.0.weight" in message and "classifier.3.bias" in message
    assert "fine-tune this one first (examples/finetune.py --task vqa" in message
    # once the head is trained (here: changed), the same model is served
    loaded = EfficientVLMForVisualQuestionAnswering.from_pretrained(folder)
    with torch.no_grad():
        for parameter in loaded.classifier.parameters():
            parameter.mul_(0.5).add_(0.1)
    served = pipeline("visual-question-answering", model=loaded, tokenizer=processor.tokenizer,
                      image_processor=processor.image_processor)
    assert isinstance(served, EfficientVLMVQAPipeline)
