"""Checkpoints that do not fit: every kind of mismatch is refused with a message naming the tensor, the config field
and the fix; truncated weights files are named; heads initialised at random are warned about and remembered."""

import copy
import json
import logging
import shutil

import pytest
import torch

from efficientvlm import (
    EfficientVLMForNLVR2,
    EfficientVLMForVisualQuestionAnswering,
    EfficientVLMModel,
)
from efficientvlm.models import loading_efficientvlm
from tests.tiny_models import HEAD_CLASSES, tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LOGGER = "efficientvlm.models.loading_efficientvlm"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    for name, model_class in (("vqa", EfficientVLMForVisualQuestionAnswering), ("nlvr2", EfficientVLMForNLVR2),
                              ("base", EfficientVLMModel)):
        model_class(tiny_config()).save_pretrained(root / name)
    return root


def edited_copy(source, target, edit):
    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    edit(config)
    (target / "config.json").write_text(json.dumps(config))
    return target


def test_a_config_with_fewer_layers_than_the_weights_names_the_layer_and_the_field(saved, tmp_path):
    folder = edited_copy(saved / "vqa", tmp_path / "fewer", lambda c: c["vision_config"].update(num_hidden_layers=2))
    with pytest.raises(ValueError) as error:  # was an IndexError inside the message builder
        EfficientVLMForVisualQuestionAnswering.from_pretrained(folder)
    message = str(error.value)
    assert str(folder) in message
    assert "vision layer 2: 16 tensors in the checkpoint, but vision_config.num_hidden_layers = 2" in message
    assert "(the checkpoint has 3 vision layers)" in message
    assert "Fix config.json" in message


def test_a_config_with_more_layers_than_the_weights_names_the_layer_and_the_field(saved, tmp_path):
    folder = edited_copy(saved / "vqa", tmp_path / "more", lambda c: c["text_config"].update(num_hidden_layers=3))
    with pytest.raises(ValueError) as error:
        EfficientVLMForVisualQuestionAnswering.from_pretrained(folder)
    message = str(error.value)
    assert "text layer 2: missing from the checkpoint, but text_config.num_hidden_layers = 3" in message
    assert "(the checkpoint has 2 text layers)" in message


def test_a_classifier_that_does_not_fit_id2label_names_its_tensors_and_the_fix(saved, caplog):
    seven = {i: f"answer {i}" for i in range(7)}
    with pytest.raises(ValueError) as error:
        EfficientVLMForVisualQuestionAnswering.from_pretrained(saved / "vqa", id2label=seven)
    message = str(error.value)
    assert ("classifier.3.weight: [5, 48] in the checkpoint, [7, 48] from the config (one output per answer: "
            "config.id2label has 7 answers)") in message
    assert "classifier.3.bias: [5] in the checkpoint, [7] from the config" in message
    assert "load it without overriding id2label / num_labels" in message
    assert "ignore_mismatched_sizes=True" in message
    assert "layer" not in message.split("\n", 1)[1]  # no encoder hint for a head problem
    # the fix it names works, and the new classifier is reported as random
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        model = EfficientVLMForVisualQuestionAnswering.from_pretrained(saved / "vqa", id2label=seven,
                                                                       ignore_mismatched_sizes=True)
    assert model.config.num_labels == 7
    assert model.weights_not_loaded() == ["classifier.3.bias", "classifier.3.weight"]
    assert "has no weights for classifier (classifier.3.bias, classifier.3.weight)" in caplog.text


@pytest.mark.parametrize(
    ("source", "model_class", "expected"),
    [
        ("nlvr2", EfficientVLMForVisualQuestionAnswering,
         ["classifier.0.weight: [48, 48] in the checkpoint, [48, 24] from the config (input text_config.hidden_size",
          "classifier.3.weight: [2, 48] in the checkpoint, [5, 48] from the config (one output per answer: "
          "config.id2label has 5 answers)",
          "The checkpoint was saved from EfficientVLMForNLVR2, not EfficientVLMForVisualQuestionAnswering: load it "
          "with EfficientVLMForNLVR2.from_pretrained()"]),
        ("vqa", EfficientVLMForNLVR2,
         ["classifier.0.weight: [48, 24] in the checkpoint, [48, 48] from the config (the two fused [CLS] vectors: "
          "2 x text_config.hidden_size = 48)",
          "classifier.3.weight: [5, 48] in the checkpoint, [2, 48] from the config (2 outputs: false / true)",
          "load it with EfficientVLMForVisualQuestionAnswering.from_pretrained()"]),
    ],
)
def test_a_head_of_another_task_names_the_tensors_and_the_class_it_was_saved_from(saved, source, model_class,
                                                                                   expected):
    with pytest.raises(ValueError) as error:
        model_class.from_pretrained(saved / source)
    for part in expected:
        assert part in str(error.value)


def test_a_checkpoint_without_the_head_warns_naming_it_and_remembers_it_until_trained(saved, caplog):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        model = EfficientVLMForVisualQuestionAnswering.from_pretrained(saved / "base")
    expected = ["classifier.0.bias", "classifier.0.weight", "classifier.1.bias", "classifier.1.weight",
                "classifier.3.bias", "classifier.3.weight"]
    assert model.weights_not_loaded() == expected
    assert model.loaded_from == str(saved / "base")
    assert (f"EfficientVLMForVisualQuestionAnswering: the checkpoint at '{saved / 'base'}' (saved from "
            "EfficientVLMModel) has no weights for classifier") in caplog.text
    assert "initialised at random" in caplog.text
    assert copy.deepcopy(model).to(torch.bfloat16).weights_not_loaded() == expected  # a cast does not train it
    optimizer = torch.optim.AdamW(model.classifier.parameters(), lr=1e-6)  # one tiny step trains it
    model.classifier(torch.randn(2, 24)).sum().backward()
    optimizer.step()
    assert model.weights_not_loaded() == []


@pytest.mark.parametrize("model_class", HEAD_CLASSES)
def test_a_complete_checkpoint_loads_without_warning_for_every_head(model_class, tmp_path, caplog):
    model_class(tiny_config()).save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        model = model_class.from_pretrained(tmp_path)
    assert model.weights_not_loaded() == []
    assert caplog.text == ""
    assert model_class(tiny_config()).weights_not_loaded() == []  # built in memory: nothing was loaded


@pytest.mark.parametrize("sharded", [False, True])
def test_a_truncated_weights_file_is_named(saved, tmp_path, sharded):
    folder = tmp_path / "truncated"
    if sharded:
        EfficientVLMForVisualQuestionAnswering.from_pretrained(saved / "vqa").save_pretrained(
            folder, max_shard_size="100KB")
        shards = sorted(folder.glob("model-*.safetensors"))
        assert len(shards) > 1
        broken = shards[-1]
    else:
        shutil.copytree(saved / "vqa", folder)
        broken = folder / "model.safetensors"
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError) as error:
        EfficientVLMForVisualQuestionAnswering.from_pretrained(folder)
    message = str(error.value)
    assert f"The weights file '{broken}' (it holds {len(data) // 2} bytes where its header describes {len(data)})" \
        in message
    assert "truncated or corrupt" in message and "download it again" in message
    broken.write_bytes(data[:5])
    with pytest.raises(ValueError, match="it holds 5 bytes, fewer than the 8 of a safetensors header"):
        EfficientVLMForVisualQuestionAnswering.from_pretrained(folder)


def test_the_mismatch_message_never_hides_the_problem_behind_its_own_error(saved, tmp_path, monkeypatch):
    def broken(*args):
        raise IndexError("list index out of range")

    monkeypatch.setattr(loading_efficientvlm, "_explain_mismatch", broken)
    folder = edited_copy(saved / "vqa", tmp_path / "fewer", lambda c: c["vision_config"].update(num_hidden_layers=2))
    with pytest.raises(ValueError) as error:
        EfficientVLMForVisualQuestionAnswering.from_pretrained(folder)
    message = str(error.value)
    assert "efficientvlm.vision_model.encoder.layers.2.mlp.fc1.weight" in message  # the raw report
    assert "Fix config.json" in message and "IndexError: list index out of range" in message


def test_the_fusion_encoder_config_is_not_taken_for_a_kernel_fusion_request_and_transformers_is_left_as_it_was(
        saved, tmp_path, monkeypatch):
    from transformers import fusion_mapping

    requests = []
    original = fusion_mapping.register_fusion_patches

    def spy(model_class, config, fusion_config=None):  # stands for transformers' own function
        requests.append(fusion_config)
        return original(model_class, config, fusion_config)

    monkeypatch.setattr(fusion_mapping, "register_fusion_patches", spy)
    model = EfficientVLMForVisualQuestionAnswering.from_pretrained(saved / "vqa")
    assert model.config.fusion_config.num_hidden_layers == tiny_config().fusion_config.num_hidden_layers
    assert requests == []  # config.fusion_config (the encoder) never reached the kernel-fusion registry
    assert fusion_mapping.register_fusion_patches is spy  # restored after loading...
    folder = edited_copy(saved / "vqa", tmp_path / "fewer", lambda c: c["vision_config"].update(num_hidden_layers=2))
    with pytest.raises(ValueError, match="vision_config.num_hidden_layers"):
        EfficientVLMForVisualQuestionAnswering.from_pretrained(folder)
    assert fusion_mapping.register_fusion_patches is spy  # ... and after a refused checkpoint
    with pytest.raises(ValueError, match="requests transformers kernel fusions"):
        EfficientVLMForVisualQuestionAnswering.from_pretrained(saved / "vqa", fusion_config={"patch_embeddings": True})
