"""The task registry: shapes and X-VLM-format files give datasets, labels and collators every head accepts."""

import json

import pytest
import torch
from PIL import Image

from efficientvlm import EfficientVLMImageProcessor, EfficientVLMProcessor
from efficientvlm.data import ShapesConfig
from efficientvlm.tasks import TASKS, load_task_data
from tests.tiny_models import tiny_config


@pytest.mark.parametrize("name", sorted(TASKS))
def test_shapes_data_feeds_the_task_head(name, tmp_path):
    task = TASKS[name]
    data = load_task_data(name, "shapes", shapes_train_size=6, shapes_eval_size=4,
                          shapes_config=ShapesConfig(image_size=32), tokenizer_dir=tmp_path / "tok")
    assert len(data.train) >= 6 and len(data.eval) == 4
    assert (data.labels is not None) == (name == "vqa")
    processor = EfficientVLMProcessor(EfficientVLMImageProcessor(size={"height": 32, "width": 32}), data.tokenizer)
    config = tiny_config(text_config={"vocab_size": len(data.tokenizer)},
                         **({"id2label": dict(enumerate(data.labels))} if data.labels else {}))
    batch = task.collator(processor, data.labels)([data.train[i] for i in range(4)])
    loss = task.model_class(config)(**batch).loss
    assert torch.isfinite(loss)


def test_xvlm_files_give_an_answer_vocabulary_and_report_missing_images(tmp_path):
    Image.new("RGB", (20, 20), "red").save(tmp_path / "a.jpg")
    rows = [{"image": "a.jpg", "question": "what color?", "answer": ["red", "red", "Red."], "question_id": 1,
             "dataset": "vqa"},
            {"image": "a.jpg", "question": "how many?", "answer": ["two", "2"], "question_id": 2, "dataset": "vqa"}]
    (tmp_path / "train.json").write_text(json.dumps(rows))
    data = load_task_data("vqa", "files", train_files=[str(tmp_path / "train.json")], image_root=str(tmp_path))
    assert data.labels == ["red", "2"] and data.eval is None and len(data.train) == 2
    (tmp_path / "broken.json").write_text(json.dumps([{**rows[0], "image": "missing.jpg"}]))
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        load_task_data("vqa", "files", train_files=[str(tmp_path / "broken.json")], image_root=str(tmp_path))
    with pytest.raises(ValueError, match="needs train_files"):
        load_task_data("vqa", "files")
    with pytest.raises(ValueError, match="Unknown task"):
        load_task_data("ocr")
