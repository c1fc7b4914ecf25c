"""The task registry: shapes and X-VLM-format files give datasets, labels and collators every head accepts."""

import inspect
import json
import typing

import pytest
import torch
from PIL import Image

from efficientvlm import EfficientVLMImageProcessor, EfficientVLMProcessor
from efficientvlm.data import ShapesConfig
from efficientvlm.tasks import DOWNSTREAM_TASKS, TASKS, load_task_data, task_head, task_of
from tests.tiny_models import tiny_config


@pytest.mark.parametrize("name", sorted(DOWNSTREAM_TASKS))
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


def test_one_registry_entry_per_head_gives_its_task_and_distillation_streams():
    from efficientvlm import EfficientVLMForGenerativeVQA, EfficientVLMForPreTraining, EfficientVLMModel
    from efficientvlm.distillation import TASK_DEFAULT_WEIGHTS
    from efficientvlm.distillation.config import TASKS as DISTILLED_TASKS
    from efficientvlm.models.configuration_efficientvlm import ALL_MODALITIES
    from efficientvlm.tasks import KDStream

    assert DISTILLED_TASKS == tuple(TASKS) and "pretraining" in TASKS and "pretraining" not in DOWNSTREAM_TASKS
    assert set(DOWNSTREAM_TASKS) == {"vqa", "nlvr2", "retrieval", "captioning"}
    heads = [head for task in TASKS.values() for head in task.heads]
    assert len({head.model_class for head in heads}) == len(heads) == 6  # every head class once
    for name, task in TASKS.items():
        assert TASK_DEFAULT_WEIGHTS[name].task == task.kd_weights["task"]
        for head in task.heads:
            assert {s.modality for s in head.kd_streams} <= set(ALL_MODALITIES)
            output_class = typing.get_type_hints(inspect.unwrap(head.model_class.forward))["return"]
            for stream in head.kd_streams:  # a typed EfficientVLMEncoderOutput field of the head's output
                assert isinstance(stream, KDStream)
                assert output_class.__dataclass_fields__[stream.output].type == "EfficientVLMEncoderOutput | None"
            assert all(term.output in output_class.__dataclass_fields__ for term in head.kd_logits)
    config = tiny_config()
    generative = EfficientVLMForGenerativeVQA(EfficientVLMForGenerativeVQA.config_class.from_encoder_config(config))
    assert task_of(generative) == "vqa" and task_head(generative) is TASKS["vqa"].heads[1]
    assert [s.name for s in task_head(generative).kd_streams] == ["vision", "text", "fusion", "decoder"]
    assert task_of(EfficientVLMForPreTraining(config)) == "pretraining"
    with pytest.raises(ValueError, match="EfficientVLMModel is not a task head"):
        task_of(EfficientVLMModel(config))
    with pytest.raises(ValueError, match="no task data here"):
        load_task_data("pretraining")


def test_named_heads_choose_the_model_and_its_collator(tmp_path):
    from efficientvlm import EfficientVLMForGenerativeVQA, EfficientVLMForVisualQuestionAnswering
    from efficientvlm.data import GenerativeVQACollator, VQACollator
    from efficientvlm.tasks import HEAD_NAMES

    vqa = TASKS["vqa"]
    assert HEAD_NAMES == ("classifier", "generative") and vqa.head() is vqa.heads[0]
    data = load_task_data("vqa", "shapes", shapes_train_size=4, shapes_eval_size=2,
                          shapes_config=ShapesConfig(image_size=32), tokenizer_dir=tmp_path / "tok")
    processor = EfficientVLMProcessor(EfficientVLMImageProcessor(size={"height": 32, "width": 32}), data.tokenizer)
    config = tiny_config(text_config={"vocab_size": len(data.tokenizer)})
    generative = vqa.head("generative").build(data.labels, data.tokenizer, config=config)
    classifier = vqa.head("classifier").build(data.labels, data.tokenizer, config=config)
    assert type(generative) is EfficientVLMForGenerativeVQA and generative.config.answer_list == data.labels
    assert type(classifier) is EfficientVLMForVisualQuestionAnswering
    assert classifier.config.num_labels == len(data.labels)
    collator = vqa.collator(processor, data.labels, model=generative)
    assert isinstance(collator, GenerativeVQACollator)
    assert collator.max_answer_length == generative.config.max_answer_length
    assert isinstance(vqa.collator(processor, data.labels, model=classifier), VQACollator)
    batch = collator([data.train[i] for i in range(4)])
    assert torch.isfinite(generative(**batch).loss)

    generative.save_pretrained(tmp_path / "generative")
    assert vqa.checkpoint_head(tmp_path / "generative") is vqa.heads[1]
    assert vqa.head(checkpoint=tmp_path / "generative") is vqa.heads[1]  # no name: the checkpoint's own head
    with pytest.raises(ValueError, match="head 'answers': the vqa task has no such head; choose one of classifier, "
                                         "generative"):
        vqa.head("answers")
    with pytest.raises(ValueError, match="head classifier: .* is an EfficientVLMForGenerativeVQA"):
        vqa.head("classifier", checkpoint=tmp_path / "generative")
    with pytest.raises(ValueError, match=r"the retrieval task has one head \(EfficientVLMForImageTextRetrieval\) "
                                         r"\('generative' is a head of the vqa task\)"):
        TASKS["retrieval"].head("generative")
