"""LoRA with PEFT: default targets per encoder on full and pruned models, merge + save + reload, a LoRA student under
DistillationTrainer, and a LoRA-fine-tuned teacher that teaches pruning after the merge."""

from __future__ import annotations

import warnings

import pytest
import torch
from peft import PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers import Trainer, TrainingArguments

from efficientvlm import (
    EfficientVLMForCaptioning,
    EfficientVLMForImageTextRetrieval,
    EfficientVLMForNLVR2,
    EfficientVLMForPreTraining,
    EfficientVLMForVisualQuestionAnswering,
    EfficientVLMModel,
    create_student,
    default_lora_targets,
    lora_config,
)
from efficientvlm.distillation import DistillationConfig, DistillationTrainer
from efficientvlm.lora import LORA_MODULES, default_modules_to_save, merge_lora
from efficientvlm.pruning import ModalAdaptivePruningTrainer, PruningConfig, prune_model
from tests.distillation_helpers import BatchDataset, pruning_pair, tiny_batch
from tests.tiny_models import HEAD_CLASSES, main_output, tiny_config, tiny_inputs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VQA = EfficientVLMForVisualQuestionAnswering


def linear_layers(model: nn.Module, encoder: str) -> dict[str, nn.Linear]:
    """Every linear layer of an encoder's layers, by full name."""
    return {name: module for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and f".{encoder}_model.encoder.layers." in f".{name}"}


def randomise_adapters(model: PeftModel, seed: int = 0) -> None:
    """LoRA starts as the identity (lora_B = 0): give every adapter and head copy other weights."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))


def test_default_targets_are_every_projection_and_ffn_of_the_chosen_encoders():
    model = VQA(tiny_config())
    targets = default_lora_targets(model)
    for encoder in ("vision", "text", "fusion"):
        expected = {name for name in linear_layers(model, encoder) if name.rsplit(".", 1)[-1] in LORA_MODULES}
        assert expected and expected <= set(targets), encoder
    # vision 3 layers x (4 attention + 2 FFN), text 2 x 6, fusion 2 x (4 self + 4 cross + 2 FFN)
    assert len(targets) == 3 * 6 + 2 * 6 + 2 * 10
    assert "efficientvlm.fusion_model.encoder.layers.1.cross_attn.k_proj" in targets
    assert all(not name.startswith("classifier") for name in targets)
    text_only = default_lora_targets(model, encoders=("text",), modules=("q_proj", "v_proj"))
    assert text_only == [f"efficientvlm.text_model.encoder.layers.{i}.self_attn.{p}" for i in range(2)
                         for p in ("q_proj", "v_proj")]
    base_targets = default_lora_targets(EfficientVLMModel(tiny_config()))
    assert base_targets == [name.removeprefix("efficientvlm.") for name in targets]
    with pytest.raises(ValueError, match=r"Unknown encoders \['audio'\]: choose one or more of \['vision', 'text', "
                                         r"'fusion', 'decoder'\]"):
        lora_config(model, encoders=("vision", "audio"))
    with pytest.raises(ValueError, match="has no answer decoder"):
        default_lora_targets(model, encoders=("decoder",))
    with pytest.raises(ValueError, match="Unknown modules"):
        default_lora_targets(model, modules=("query",))
    with pytest.raises(TypeError, match="before wrapping"):
        default_lora_targets(get_peft_model(VQA(tiny_config()), lora_config(model)))


def test_the_generative_answer_decoder_gets_adapters_like_an_encoder_and_keeps_its_tie(tmp_path):
    from efficientvlm import EfficientVLMForGenerativeVQA
    from efficientvlm.lora import model_encoders
    from tests.tiny_models import tiny_generative_config, tiny_generative_inputs

    torch.manual_seed(0)
    config = tiny_generative_config(heterogeneous=True)
    model = EfficientVLMForGenerativeVQA(config)
    assert model_encoders(model) == ("vision", "text", "fusion", "decoder")
    assert model_encoders(VQA(tiny_config())) == ("vision", "text", "fusion")
    targets = default_lora_targets(model)
    decoder = {name for name, module in model.named_modules() if isinstance(module, nn.Linear)
               and name.startswith("answer_decoder.encoder.layers.")}
    # decoder layer 0: self 2 heads, cross 1 head, FFN 16; layer 1: self 1 head, no cross-attention, no FFN
    assert decoder == {name for name in targets if name.startswith("answer_decoder.")} and len(decoder) == 10 + 4
    assert "answer_decoder.encoder.layers.0.cross_attn.k_proj" in targets
    assert set(default_lora_targets(model, encoders=("vision", "text", "fusion"))) == set(targets) - decoder
    # the decoder is not copied in full (its embeddings are tied to the LM head): only the LM head's transform
    assert default_modules_to_save(model) == ["lm_head.dense", "lm_head.layer_norm"]

    peft_model = get_peft_model(model, lora_config(model, r=4))
    randomise_adapters(peft_model)
    peft_model.eval()
    inputs = tiny_generative_inputs(config)
    ranking = {key: inputs[key] for key in ("pixel_values", "input_ids", "attention_mask")}
    with torch.no_grad():
        adapted, adapted_ranking = peft_model(**inputs).answer_logits, peft_model(**ranking).logits
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        merged = merge_lora(peft_model)  # PEFT's merge alone would untie config.tie_word_embeddings (see merge_lora)
    assert not any("no longer tied" in str(w.message) for w in caught)
    assert type(merged) is EfficientVLMForGenerativeVQA and merged.config.tie_word_embeddings
    assert merged.get_output_embeddings().weight is merged.answer_decoder.embeddings.word_embeddings.weight
    merged.save_pretrained(tmp_path)
    reloaded = EfficientVLMForGenerativeVQA.from_pretrained(tmp_path).eval()  # strict: plain weights
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs).answer_logits, adapted, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(reloaded(**inputs).answer_logits, adapted, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(reloaded(**ranking).logits, adapted_ranking, atol=1e-5, rtol=1e-4)


def test_heads_are_trained_in_full_except_the_tied_lm_output_layer():
    config = tiny_config()
    assert default_modules_to_save(EfficientVLMModel(config)) == []
    assert default_modules_to_save(VQA(config)) == ["classifier"]
    assert default_modules_to_save(EfficientVLMForNLVR2(config)) == ["classifier"]
    assert default_modules_to_save(EfficientVLMForImageTextRetrieval(config)) == ["vision_proj", "text_proj",
                                                                                   "itm_head"]
    assert default_modules_to_save(EfficientVLMForCaptioning(config)) == ["lm_head.dense", "lm_head.layer_norm"]
    pretraining = default_modules_to_save(EfficientVLMForPreTraining(config))
    assert {"vision_proj", "text_proj", "itm_head", "lm_head.dense", "lm_head.layer_norm"} <= set(pretraining)
    assert not any(name.startswith(("efficientvlm", "lm_head.decoder")) for name in pretraining)
    untied = default_modules_to_save(EfficientVLMForCaptioning(tiny_config(tie_word_embeddings=False)))
    assert untied == ["lm_head"]
    assert lora_config(VQA(config), train_heads=False).modules_to_save is None


def test_a_pruned_heterogeneous_student_gets_lora_on_its_surviving_layers_only():
    torch.manual_seed(0)
    teacher = VQA(tiny_config())
    # prune: vision layer 1 loses its attention, text layer 0 its FFN, fusion layer 1 its cross-attention
    keep = {"vision": [{}, {"heads": []}, {"heads": [0, 3], "ffn": list(range(10))}],
            "text": [{"ffn": []}, {"heads": [1]}],
            "fusion": [{"cross_heads": [0]}, {"cross_heads": [], "ffn": list(range(7))}]}
    student = prune_model(teacher, keep)
    # and a layer whose FFN has width 0 without being removed (zero-size linear layers get no adapter)
    width = student.config.vision_config.hidden_size
    student.efficientvlm.vision_model.encoder.layers[0].mlp.fc1 = nn.Linear(width, 0)
    student.efficientvlm.vision_model.encoder.layers[0].mlp.fc2 = nn.Linear(0, width)

    targets = default_lora_targets(student)
    surviving = {name for encoder in ("vision", "text", "fusion")
                 for name, module in linear_layers(student, encoder).items() if module.weight.numel() > 0}
    assert set(targets) == surviving
    assert not any(".vision_model.encoder.layers.1.self_attn." in name for name in targets)
    assert not any(".text_model.encoder.layers.0.mlp." in name for name in targets)
    assert not any(".fusion_model.encoder.layers.1.cross_attn." in name for name in targets)
    assert not any(".vision_model.encoder.layers.0.mlp." in name for name in targets)

    model = get_peft_model(student, lora_config(student, r=2))
    adapted = {name.removeprefix("base_model.model.") for name, module in model.named_modules()
               if isinstance(module, LoraLayer)}
    assert adapted == set(targets)
    layer = model.base_model.model.efficientvlm.vision_model.encoder.layers[2]
    assert layer.self_attn.q_proj.lora_A["default"].in_features == width
    assert layer.self_attn.q_proj.lora_B["default"].out_features == 2 * student.config.vision_config.head_dim
    assert layer.mlp.fc2.lora_A["default"].in_features == 10  # the pruned FFN width
    loss = model(**tiny_inputs(VQA, student.config)).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_A" in n)


@pytest.mark.parametrize("model_class", HEAD_CLASSES, ids=lambda c: c.__name__)
def test_merge_and_save_gives_a_plain_checkpoint_that_reloads_to_the_merged_model(model_class, tmp_path):
    torch.manual_seed(0)
    config = tiny_config(heterogeneous=True)
    model = get_peft_model(model_class(config), lora_config(model_class(config), r=4))
    randomise_adapters(model)
    model.eval()
    inputs = tiny_inputs(model_class, config)
    with torch.no_grad():
        adapted = main_output(model_class, model(**inputs))
    merged = model.merge_and_unload()
    assert type(merged) is model_class
    assert not any(isinstance(module, LoraLayer) for module in merged.modules())
    assert not any("lora_" in name or "base_layer" in name or "modules_to_save" in name
                   for name in merged.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(main_output(model_class, merged(**inputs)), adapted, atol=1e-5, rtol=1e-4)
    merged.save_pretrained(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) in (
        ["config.json", "model.safetensors"], ["config.json", "generation_config.json", "model.safetensors"])
    reloaded = model_class.from_pretrained(tmp_path).eval()  # strict: every tensor fits the config
    with torch.no_grad():
        torch.testing.assert_close(main_output(model_class, reloaded(**inputs)),
                                   main_output(model_class, merged(**inputs)), atol=0, rtol=0)
    output = merged.get_output_embeddings()
    if output is not None:  # the tied LM output layer stayed tied through LoRA and the merge
        assert output.weight is merged.get_input_embeddings().weight
        assert reloaded.get_output_embeddings().weight is reloaded.get_input_embeddings().weight


def test_a_lora_student_trains_under_the_distillation_trainer_and_only_its_adapters_change(tmp_path):
    teacher, student = pruning_pair()
    student = get_peft_model(student, lora_config(student, r=4, train_heads=False))
    before = {name: p.detach().clone() for name, p in student.named_parameters()}
    adapters = {name for name in before if "lora_" in name}
    assert {name for name, p in student.named_parameters() if p.requires_grad} == adapters
    args = DistillationConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=3,
                              learning_rate=1e-2, report_to=[], save_strategy="no", logging_steps=1,
                              disable_tqdm=True, use_cpu=True, seed=0)
    trainer = DistillationTrainer(model=student, args=args, teacher_model=teacher,
                                  train_dataset=BatchDataset(VQA, size=12))
    assert trainer.task == "vqa"
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "kd_loss" in entry]
    assert len(logs) == 3 and all(entry["kd_logits"] > 0 for entry in logs)
    changed = {name for name, p in student.named_parameters() if not torch.equal(p, before[name])}
    assert changed <= adapters and changed  # only LoRA parameters change ...
    for encoder in ("vision_model", "text_model", "fusion_model"):  # ... and those of every encoder do
        assert any(f".{encoder}." in name and "lora_B" in name for name in changed), encoder
    merged = student.merge_and_unload()
    assert type(merged) is VQA


def test_a_lora_fine_tuned_teacher_teaches_pruning_after_the_merge(tmp_path):
    teacher, _ = pruning_pair()
    lora_teacher = get_peft_model(teacher, lora_config(teacher, r=4))
    args = TrainingArguments(output_dir=str(tmp_path / "teacher"), per_device_train_batch_size=4, max_steps=3,
                             learning_rate=1e-2, report_to=[], save_strategy="no", disable_tqdm=True,
                             use_cpu=True, seed=0)
    Trainer(model=lora_teacher, args=args, train_dataset=BatchDataset(VQA, size=12)).train()
    lora_teacher.eval()
    inputs = tiny_batch(VQA, seed=5)
    inputs.pop("labels")
    with torch.no_grad():
        adapted = lora_teacher(**inputs).logits
    merged = lora_teacher.merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    task_teacher = VQA.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(task_teacher(**inputs).logits, adapted, atol=1e-5, rtol=1e-4)

    student = create_student(task_teacher, vision_layers=2, text_layers=1, fusion_layers=1)
    args = PruningConfig(output_dir=str(tmp_path / "pruned"), per_device_train_batch_size=4, max_steps=4,
                         learning_rate=1e-3, report_to=[], save_strategy="no", disable_tqdm=True, use_cpu=True,
                         seed=0, target_sparsity=0.3, lagrangian_warmup_steps=2, reg_learning_rate=0.2,
                         logging_steps=2)
    trainer = ModalAdaptivePruningTrainer(model=student, args=args, teacher_model=task_teacher,
                                          train_dataset=BatchDataset(VQA, size=16))
    trainer.train()
    assert all(entry["kd_loss"] > 0 for entry in trainer.state.log_history if "kd_loss" in entry)
    with torch.no_grad():  # the trainer distilled from the merged teacher, unchanged
        torch.testing.assert_close(trainer.teacher_model(**inputs).logits, adapted, atol=1e-5, rtol=1e-4)
    pruned = trainer.prune()
    assert abs(pruned.config.pruning_info["achieved_sparsity"]["overall"] - 0.3) <= 0.02
