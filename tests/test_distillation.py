"""Distillation: loss terms against hand computations, the trainer's contract, resume, DDP, data, example script."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests.distillation_helpers import (
    HEADS,
    MASK,
    WORDS,
    BatchDataset,
    StandInProcessor,
    narrow_student,
    tiny_batch,
    tiny_config,
)
from PIL import Image
from torch import nn

from efficientvlm.distillation import (
    TASK_DEFAULT_WEIGHTS,
    DistillationConfig,
    DistillationTrainer,
    ImageTextPretrainingCollator,
    attention_map_mse,
    check_teacher_trained,
    hidden_state_mse,
    load_image_text_pairs,
    logits_kd_loss,
    masked_positions,
    multilabel_logits_kd_loss,
    resolve_layer_map,
)
from efficientvlm.distillation.trainer import PROJECTIONS_NAME
from efficientvlm.models.modeling_efficientvlm import (
    EfficientVLMForCaptioning,
    EfficientVLMForNLVR2,
    EfficientVLMForPreTraining,
    EfficientVLMForVisualQuestionAnswering,
    EfficientVLMModel,
)
from efficientvlm.pruning import ModalAdaptivePruningTrainer, PruningConfig
from efficientvlm.student import create_student

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_args(tmp_path, **overrides) -> DistillationConfig:
    defaults = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, learning_rate=1e-3,
                    report_to=[], save_strategy="no", disable_tqdm=True, use_cpu=True, seed=0)
    return DistillationConfig(**{**defaults, **overrides})


def logged_terms(trainer: DistillationTrainer, inputs: dict, seed: int = 0) -> tuple[torch.Tensor, dict]:
    """One ``compute_loss`` (hard negatives drawn with ``seed``) and the terms it logs."""
    torch.manual_seed(seed)
    loss = trainer.compute_loss(trainer.model, inputs)
    trainer.log({"loss": loss.item()})
    return loss, {k: v for k, v in trainer.state.log_history[-1].items() if k.startswith(("kd_", "task_"))}


# ---- loss terms against hand computations ------------------------------------------------------------------------


def softmax(row):
    exps = [math.exp(x) for x in row]
    return [e / sum(exps) for e in exps]


def test_logits_kd_matches_hand_computation():
    student = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [5.0, -5.0, 0.0]])
    teacher = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 3.0], [0.0, 0.0, 0.0]])
    tau = 2.0

    def kl(s, t):
        p, q = softmax([x / tau for x in t]), softmax([x / tau for x in s])
        return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)) * tau**2

    expected_all = (kl(student[0].tolist(), teacher[0].tolist()) + kl(student[1].tolist(), teacher[1].tolist())
                    + kl(student[2].tolist(), teacher[2].tolist())) / 3
    assert logits_kd_loss(student, teacher, temperature=tau).item() == pytest.approx(expected_all, rel=1e-5)
    mask = torch.tensor([1, 0, 1])  # row 1 is padding
    expected_masked = (kl(student[0].tolist(), teacher[0].tolist()) + kl(student[2].tolist(), teacher[2].tolist())) / 2
    assert logits_kd_loss(student, teacher, mask, temperature=tau).item() == pytest.approx(expected_masked, rel=1e-5)
    assert logits_kd_loss(teacher, teacher, temperature=tau).item() == pytest.approx(0.0, abs=1e-7)


def test_multilabel_logits_kd_matches_hand_computation():
    student, teacher = torch.tensor([[0.5, -1.0], [2.0, 2.0]]), torch.tensor([[2.0, 0.0], [-1.0, 1.0]])

    def sigmoid(x):
        return 1 / (1 + math.exp(-x))

    def binary_kl(s, t):
        p, q = sigmoid(t), sigmoid(s)
        return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))

    rows = [sum(binary_kl(s, t) for s, t in zip(srow, trow)) for srow, trow in zip(student.tolist(), teacher.tolist())]
    assert multilabel_logits_kd_loss(student, teacher).item() == pytest.approx(sum(rows) / 2, rel=1e-5)
    tau = 3.0
    rows = [sum(binary_kl(s / tau, t / tau) for s, t in zip(srow, trow))
            for srow, trow in zip(student.tolist(), teacher.tolist())]
    expected = sum(rows) / 2 * tau**2
    assert multilabel_logits_kd_loss(student, teacher, temperature=tau).item() == pytest.approx(expected, rel=1e-5)
    assert multilabel_logits_kd_loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)


def test_hidden_state_mse_matches_hand_computation():
    student = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    teacher = torch.tensor([[[1.0, 0.0], [0.0, 4.0], [0.0, 0.0]]])
    mask = torch.tensor([[1, 1, 0]])
    # token 0: (0 + 4) / 2 = 2; token 1: (9 + 0) / 2 = 4.5; token 2 is padding
    assert hidden_state_mse(student, teacher, mask).item() == pytest.approx(3.25)
    assert hidden_state_mse(student[:, :2], teacher[:, :2]).item() == pytest.approx(3.25)

    projection = nn.Linear(1, 2)
    with torch.no_grad():
        projection.weight.copy_(torch.tensor([[2.0], [-1.0]]))
        projection.bias.copy_(torch.tensor([0.0, 1.0]))
    narrow = torch.tensor([[[1.0], [2.0], [7.0]]])  # -> [[2, 0], [4, -1], ...]
    # token 0: (1 + 0) / 2 = 0.5; token 1: (16 + 25) / 2 = 20.5
    assert hidden_state_mse(narrow, teacher, mask, projection).item() == pytest.approx(10.5)
    with pytest.raises(ValueError, match="projection"):
        hidden_state_mse(narrow, teacher, mask)


def test_attention_map_mse_matches_hand_computation():
    student = torch.tensor([[[[0.5, 0.5, 0.0], [0.2, 0.8, 0.0], [0.3, 0.3, 0.4]]]])
    teacher = torch.tensor([[[[1.0, 0.0, 0.0], [0.6, 0.4, 0.0], [0.0, 0.0, 1.0]]]])
    mask = torch.tensor([[1, 1, 0]])
    # query 0: 0.25 + 0.25 = 0.5; query 1: 0.16 + 0.16 = 0.32; query 2 is padding; mean 0.41
    assert attention_map_mse(student, teacher, mask, mask).item() == pytest.approx(0.41)
    # without masks: query 2 adds 0.09 + 0.09 + 0.36 = 0.54, and the mean is over 3 queries
    assert attention_map_mse(student, teacher).item() == pytest.approx((0.5 + 0.32 + 0.54) / 3)
    # a padded key column is ignored even where the maps differ there
    noisy = student.clone()
    noisy[..., 1, 2] = 0.7
    assert attention_map_mse(noisy, teacher, mask, mask).item() == pytest.approx(0.41)
    # unequal head counts compare head-averaged maps: mean of (student, teacher) heads == student
    two_heads = torch.cat([teacher, 2 * student - teacher], dim=1)
    assert attention_map_mse(two_heads, teacher, mask, mask).item() == pytest.approx(0.41)


def test_masked_terms_ignore_all_padding_rows_without_nan():
    zeros = torch.zeros(1, 3)
    assert logits_kd_loss(torch.randn(1, 3, 5), torch.randn(1, 3, 5), mask=zeros).item() == 0.0
    assert hidden_state_mse(torch.randn(1, 3, 4), torch.randn(1, 3, 4), zeros).item() == 0.0


# ---- configuration -----------------------------------------------------------------------------------------------


def test_default_layer_map_is_the_papers_uniform_map():
    teacher, student = tiny_config(vision_layers=12, text_layers=6, fusion_layers=6), tiny_config(6, 3, 3)
    pairs = resolve_layer_map(None, teacher, student)
    assert pairs["vision"].hidden == tuple((i, 2 * i) for i in range(7))
    assert pairs["vision"].attention == tuple((i, 2 * i + 1) for i in range(6))
    assert pairs["text"].hidden == ((0, 0), (1, 2), (2, 4), (3, 6))
    assert pairs["fusion"].cross_attention == ((0, 1), (1, 3), (2, 5))
    assert pairs["vision"].cross_attention == ()


def test_explicit_layer_map_from_json(tmp_path):
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"vision": {"hidden": {"0": 0, "1": 2}}, "fusion": {"cross_attention": []}}))
    args = make_args(tmp_path, layer_map=str(path))
    pairs = resolve_layer_map(args.layer_map, tiny_config(), tiny_config(2, 1, 1))
    assert pairs["vision"].hidden == ((0, 0), (1, 2))
    assert pairs["vision"].attention == ((0, 1), (1, 3))  # not given: default
    assert pairs["fusion"].cross_attention == ()
    with pytest.raises(ValueError, match="student 5 with teacher 0"):
        resolve_layer_map({"text": {"hidden": [[5, 0]]}}, tiny_config(), tiny_config(2, 1, 1))
    with pytest.raises(ValueError, match="unknown kind"):
        make_args(tmp_path, layer_map='{"text": {"cross_attention": [[0, 0]]}}')


def test_task_default_weights_follow_the_official_code(tmp_path):
    weights = make_args(tmp_path).loss_weights("retrieval")
    # 0.5 {L + KL + 0.33 [text + img(A + 0.2H) + 0.5 (fusion H, A, cross-A)]}
    assert (weights.task, weights.logits) == (0.5, 0.5)
    assert weights.layer_term("hidden", "vision") == pytest.approx(0.5 * 0.33 * 0.2)
    assert weights.layer_term("attention", "text") == pytest.approx(0.5 * 0.33)
    assert weights.layer_term("cross_attention", "fusion") == pytest.approx(0.5 * 0.33 * 0.5)
    nlvr2 = make_args(tmp_path).loss_weights("nlvr2")  # 0.8 L + 0.2 {KL + text + 0.33 [img(A + 0.1H) + 0.5 fusion]}
    assert nlvr2.layer_term("hidden", "vision") == pytest.approx(0.2 * 0.33 * 0.1)
    assert nlvr2.layer_term("attention", "fusion") == pytest.approx(0.2 * 0.33 * 0.5)
    assert TASK_DEFAULT_WEIGHTS["pretraining"].fusion_cross_attention == 0.0
    custom = make_args(tmp_path, task="vqa", kd_hidden_weight=1.0, distill_attentions=False).loss_weights()
    assert (custom.hidden, custom.attention, custom.task) == (1.0, 0.0, 0.6)


# ---- the trainer's loss --------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", HEADS, ids=lambda h: h.__name__)
def test_kd_is_zero_for_an_exact_copy(tmp_path, head):
    torch.manual_seed(0)
    teacher = head(tiny_config())
    student = create_student(teacher, 4, 2, 2)
    trainer = DistillationTrainer(model=student, args=make_args(tmp_path), teacher_model=teacher)
    _, terms = logged_terms(trainer, tiny_batch(head))
    kd_terms = {name: value for name, value in terms.items() if name.startswith("kd_")}
    assert len(kd_terms) >= 8  # logits, hidden and attention terms of every encoder
    assert all(value == pytest.approx(0.0, abs=1e-9) for value in kd_terms.values()), kd_terms


@pytest.mark.parametrize("head", HEADS, ids=lambda h: h.__name__)
def test_tokens_at_padded_positions_change_no_kd_term(tmp_path, head):
    torch.manual_seed(0)
    teacher = head(tiny_config())
    student = narrow_student(teacher.config, head)
    trainer = DistillationTrainer(model=student, args=make_args(tmp_path), teacher_model=teacher)
    inputs = tiny_batch(head)
    changed = {key: value.clone() for key, value in inputs.items()}
    padding = inputs["attention_mask"] == 0
    assert padding.any()
    for key in ("input_ids", "mlm_input_ids"):
        if key in changed:
            changed[key][padding] = torch.randint(MASK + 1, 50, (int(padding.sum()),))
    _, before = logged_terms(trainer, inputs)
    _, after = logged_terms(trainer, changed)
    kd_terms = [name for name in before if name.startswith("kd_")]
    assert all(before[name] > 0 for name in kd_terms)
    assert {name: after[name] for name in kd_terms} == pytest.approx({name: before[name] for name in kd_terms},
                                                                     rel=1e-5)


def test_total_loss_is_the_configured_weighted_sum(tmp_path):
    torch.manual_seed(0)
    teacher = EfficientVLMForPreTraining(tiny_config())
    student = narrow_student(teacher.config, EfficientVLMForPreTraining)
    args = make_args(tmp_path, temperature=2.0, kd_hidden_weight=0.3, vision_hidden_weight=2.0,
                     fusion_cross_attention_weight=0.5)
    trainer = DistillationTrainer(model=student, args=args, teacher_model=teacher)
    weights = trainer.term_weights
    assert weights["task_loss"] == 0.6 and weights["kd_logits_mlm"] == 0.4
    assert weights["kd_hidden_vision"] == pytest.approx(0.6) and weights["kd_hidden_mlm_text"] == pytest.approx(0.3)
    assert weights["kd_attn_vision"] == pytest.approx(0.4) and weights["kd_attn_mlm_fusion_cross"] == pytest.approx(0.2)
    loss, terms = logged_terms(trainer, tiny_batch(EfficientVLMForPreTraining))
    assert set(terms) == set(weights) | {"kd_loss"}
    expected = sum(weights[name] * terms[name] for name in weights)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert terms["kd_loss"] == pytest.approx(expected - 0.6 * terms["task_loss"], rel=1e-5)


def test_trainer_terms_use_the_layer_map(tmp_path):
    """Two terms recomputed by hand from the model outputs with the default map (teacher 4 -> student 2 layers)."""
    torch.manual_seed(0)
    teacher = EfficientVLMForVisualQuestionAnswering(tiny_config())
    student = create_student(teacher, 2, 1, 1)
    trainer = DistillationTrainer(model=student, args=make_args(tmp_path), teacher_model=teacher)
    inputs = tiny_batch(EfficientVLMForVisualQuestionAnswering)
    _, terms = logged_terms(trainer, inputs)
    flags = {"output_hidden_states": True, "output_attentions": True}
    with torch.no_grad():
        s, t = student(**inputs, **flags), teacher(**inputs, **flags)
    mask = inputs["attention_mask"]
    vision = sum(hidden_state_mse(s.vision_model_output.hidden_states[i], t.vision_model_output.hidden_states[2 * i])
                 for i in range(3))
    text_attn = attention_map_mse(s.text_model_output.attentions[0], t.text_model_output.attentions[1], mask, mask)
    cross = attention_map_mse(s.fusion_model_output.cross_attentions[0], t.fusion_model_output.cross_attentions[1],
                              mask)
    assert terms["kd_hidden_vision"] == pytest.approx(vision.item(), rel=1e-5)
    assert terms["kd_attn_text"] == pytest.approx(text_attn.item(), rel=1e-5)
    assert terms["kd_attn_fusion_cross"] == pytest.approx(cross.item(), rel=1e-5)


def test_mlm_logits_are_distilled_at_the_masked_tokens(tmp_path):
    torch.manual_seed(0)
    teacher = EfficientVLMForPreTraining(tiny_config())
    student = narrow_student(teacher.config, EfficientVLMForPreTraining)
    trainer = DistillationTrainer(model=student, args=make_args(tmp_path, temperature=2.0), teacher_model=teacher)
    inputs = tiny_batch(EfficientVLMForPreTraining)
    inputs["mlm_labels"][0, 4] = inputs["input_ids"][0, 4]  # a second masked token in the first caption
    _, without_positions = logged_terms(trainer, inputs)
    _, with_positions = logged_terms(trainer, {**inputs, "mlm_positions": masked_positions(inputs["mlm_labels"])})
    assert masked_positions(inputs["mlm_labels"]).tolist() == [[2, 4]] + [[2, 0]] * 3
    with torch.no_grad():
        s, t = student(**inputs).mlm_logits, teacher(**inputs).mlm_logits
    chosen = inputs["mlm_labels"] != -100
    expected = logits_kd_loss(s[chosen], t[chosen], temperature=2.0).item()
    assert without_positions["kd_logits_mlm"] == pytest.approx(expected, rel=1e-5)
    assert with_positions["kd_logits_mlm"] == pytest.approx(expected, rel=1e-5)


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    torch.manual_seed(0)
    teacher = EfficientVLMForVisualQuestionAnswering(tiny_config())
    initial = narrow_student(teacher.config, EfficientVLMForVisualQuestionAnswering).state_dict()
    dataset = BatchDataset(EfficientVLMForVisualQuestionAnswering, size=4, padded=False)
    results = []
    for batch_size, accumulation in ((4, 1), (2, 2)):
        student = narrow_student(teacher.config, EfficientVLMForVisualQuestionAnswering)
        student.load_state_dict(initial)
        args = make_args(tmp_path, per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
                         max_steps=1, optim="sgd", learning_rate=0.5, max_grad_norm=0.0)
        trainer = DistillationTrainer(model=student, args=args, teacher_model=teacher, train_dataset=dataset)
        trainer.train()
        projections = {f"p.{k}": v for k, v in trainer.kd_projections.state_dict().items()}
        results.append({**student.state_dict(), **projections})
    changed = [key for key in results[0] if not torch.equal(results[0][key], initial.get(key, results[0][key]))]
    assert changed
    for key in results[0]:
        torch.testing.assert_close(results[1][key], results[0][key], rtol=1e-4, atol=1e-6)
    # num_items_in_batch does not rescale the loss (the Trainer divides by the accumulation steps instead)
    assert DistillationTrainer.loss_is_scaled_for_ga is False
    batch = {key: value[None] for key, value in dataset[0].items()}
    trainer.model.eval()
    torch.testing.assert_close(trainer.compute_loss(trainer.model, batch, num_items_in_batch=torch.tensor(7)),
                               trainer.compute_loss(trainer.model, batch))


# ---- training ------------------------------------------------------------------------------------------------


def test_teacher_stays_frozen_and_every_term_is_logged(tmp_path):
    torch.manual_seed(0)
    teacher = EfficientVLMForPreTraining(tiny_config())
    before = {key: value.clone() for key, value in teacher.state_dict().items()}
    student = narrow_student(teacher.config, EfficientVLMForPreTraining)
    dataset = BatchDataset(EfficientVLMForPreTraining, size=8)
    args = make_args(tmp_path, per_device_train_batch_size=4, max_steps=4, logging_steps=1, learning_rate=1e-2)
    trainer = DistillationTrainer(model=student, args=args, teacher_model=teacher, train_dataset=dataset,
                                  eval_dataset=dataset)
    trainer.train()
    metrics = trainer.evaluate()

    assert not teacher.training
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert all(torch.equal(before[key], value) for key, value in teacher.state_dict().items())
    assert all(p.grad is None for p in trainer.kd_projections.parameters())  # cleared after every step
    expected = set(trainer.term_weights) | {"kd_loss"}
    assert {"kd_hidden_vision", "kd_hidden_mlm_fusion", "kd_attn_text", "kd_logits_itm", "kd_logits_mlm"} <= expected
    train_logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(train_logs) == 4 and all(expected <= set(entry) for entry in train_logs)
    assert {f"eval_{name}" for name in expected} <= set(metrics)


def test_evaluation_gathers_the_logits_not_the_states_or_the_image_tokens(tmp_path):
    torch.manual_seed(0)
    teacher = EfficientVLMForCaptioning(tiny_config())
    student = narrow_student(teacher.config, EfficientVLMForCaptioning)
    trainer = DistillationTrainer(model=student, args=make_args(tmp_path, per_device_eval_batch_size=4),
                                  teacher_model=teacher)
    predictions = trainer.predict(BatchDataset(EfficientVLMForCaptioning, size=8)).predictions
    # captioning's forward also returns image_outputs (the image tower's tokens): left out like the per-layer states
    assert not isinstance(predictions, tuple)  # the logits alone (an array), no nested image outputs
    assert predictions.shape == (8, 7, teacher.config.text_config.vocab_size)


def test_a_few_hundred_steps_lower_the_kd_loss(tmp_path):
    torch.manual_seed(0)
    teacher = EfficientVLMForPreTraining(tiny_config())
    student = narrow_student(teacher.config, EfficientVLMForPreTraining)
    # Without the task loss: with a random teacher the task loss (weight 0.6) would pull the logits elsewhere.
    args = make_args(tmp_path, per_device_train_batch_size=4, max_steps=200, logging_steps=20, learning_rate=3e-3,
                     lr_scheduler_type="constant", task_loss_weight=0.0)
    trainer = DistillationTrainer(model=student, args=args, teacher_model=teacher,
                                  train_dataset=BatchDataset(EfficientVLMForPreTraining, size=4))
    trainer.train()
    kd = [entry["kd_loss"] for entry in trainer.state.log_history if "kd_loss" in entry]
    assert len(kd) == 10
    assert kd[-1] < 0.5 * kd[0], kd
    for name in ("kd_hidden_vision", "kd_hidden_fusion", "kd_attn_text", "kd_logits_mlm", "kd_logits_itm"):
        values = [entry[name] for entry in trainer.state.log_history if name in entry]
        assert values[-1] < values[0], (name, values)


def test_resume_from_checkpoint_matches_an_uninterrupted_run(tmp_path):
    from transformers import TrainerCallback

    class StopAt(TrainerCallback):
        def __init__(self, step):
            self.step = step

        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step >= self.step

    dataset = BatchDataset(EfficientVLMForPreTraining, size=8)

    def run(output_dir, callbacks=(), resume=None):
        torch.manual_seed(0)
        teacher = EfficientVLMForPreTraining(tiny_config())
        student = narrow_student(teacher.config, EfficientVLMForPreTraining)
        student.config.text_config.hidden_dropout_prob = 0.1  # dropout draws from the restored generator
        args = make_args(tmp_path, output_dir=str(output_dir), per_device_train_batch_size=2, max_steps=6,
                         save_strategy="steps", save_steps=3, learning_rate=1e-2, warmup_steps=2)
        trainer = DistillationTrainer(model=student, args=args, teacher_model=teacher, train_dataset=dataset,
                                      callbacks=list(callbacks))
        trainer.train(resume_from_checkpoint=resume)
        state = {f"student.{k}": v for k, v in student.state_dict().items()}
        return state | {f"projections.{k}": v for k, v in trainer.kd_projections.state_dict().items()}

    uninterrupted = run(tmp_path / "full")
    interrupted = run(tmp_path / "part", callbacks=[StopAt(3)])
    checkpoint = tmp_path / "part" / "checkpoint-3"
    assert (checkpoint / PROJECTIONS_NAME).is_file()
    assert any(not torch.equal(interrupted[key], uninterrupted[key]) for key in uninterrupted)
    resumed = run(tmp_path / "part", resume=str(checkpoint))
    assert any(key.startswith("projections.vision") for key in resumed)
    for key in uninterrupted:
        torch.testing.assert_close(resumed[key], uninterrupted[key], rtol=0, atol=0, msg=key)


def test_accelerate_launch_two_processes_end_with_identical_weights(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")]),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    # `accelerate launch --cpu --num_processes 2` starts ONE process (accelerate 1.15 spreads CPU processes only
    # through mpirun); `--multi_gpu` goes through torchrun, and on a machine without GPUs Accelerate then runs DDP
    # over gloo on the CPU. The worker also sets use_cpu=True.
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(port), str(ROOT / "tests" / "ddp_distill_worker.py"), str(tmp_path)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert rank0["seen"] != rank1["seen"]  # each rank trained on its own shard
    assert any(key.startswith("projections.") for key in rank0["state"])
    for key, value in rank0["state"].items():
        torch.testing.assert_close(rank1["state"][key], value, rtol=0, atol=0, msg=key)
    assert any("kd_hidden_vision" in entry for entry in rank0["logs"])


@pytest.mark.parametrize("change, match", [
    ({"text_config": {"vocab_size": 60}}, r"60 tokens.*student's 50"),
    ({"vision_config": {"patch_size": 16}}, r"patch_size=16.*patch_size=8"),
    ({"vision_config": {"image_size": 48}}, r"image_size=48.*image_size=32.*resize_position_embeddings"),
])
def test_a_teacher_that_does_not_fit_fails_before_training(tmp_path, change, match):
    teacher = EfficientVLMForCaptioning(tiny_config(**change))
    student = EfficientVLMForCaptioning(tiny_config(2, 1, 1))
    with pytest.raises(ValueError, match=match):
        DistillationTrainer(model=student, args=make_args(tmp_path), teacher_model=teacher)


def test_teacher_and_student_must_share_the_head(tmp_path):
    with pytest.raises(ValueError, match="same task head"):
        DistillationTrainer(model=EfficientVLMForCaptioning(tiny_config()), args=make_args(tmp_path),
                            teacher_model=EfficientVLMForVisualQuestionAnswering(tiny_config()))


@pytest.mark.parametrize("source", [EfficientVLMModel, EfficientVLMForPreTraining])
def test_a_teacher_whose_checkpoint_lacks_the_task_head_is_refused(tmp_path, source):
    torch.manual_seed(0)
    source(tiny_config()).save_pretrained(tmp_path / "base")
    teacher = EfficientVLMForVisualQuestionAnswering.from_pretrained(tmp_path / "base")
    student = EfficientVLMForVisualQuestionAnswering(tiny_config(2, 1, 1))
    head = sorted(name for name, _ in teacher.named_parameters() if name.startswith("classifier."))
    assert teacher.weights_not_loaded() == head and teacher.loaded_from == str(tmp_path / "base")
    with pytest.raises(ValueError, match="random initialisation") as error:
        DistillationTrainer(model=student, args=make_args(tmp_path), teacher_model=teacher)
    message = str(error.value)
    assert all(name in message for name in head) and "examples/finetune.py" in message
    with pytest.raises(ValueError, match="classifier.0.weight"):  # the pruning trainer inherits the check
        ModalAdaptivePruningTrainer(model=student, teacher_model=teacher,
                                    args=PruningConfig(output_dir=str(tmp_path / "p"), use_cpu=True, report_to=[]))
    with torch.no_grad():  # fine-tuned in memory after loading: no longer random, accepted
        for name in head:
            teacher.get_parameter(name).add_(0.05)
    assert teacher.weights_not_loaded() == []
    DistillationTrainer(model=student, args=make_args(tmp_path), teacher_model=teacher)


def test_a_teacher_saved_with_its_head_or_built_in_memory_is_accepted(tmp_path):
    torch.manual_seed(0)
    EfficientVLMForVisualQuestionAnswering(tiny_config()).save_pretrained(tmp_path / "vqa")
    loaded = EfficientVLMForVisualQuestionAnswering.from_pretrained(tmp_path / "vqa")
    assert loaded.weights_not_loaded() == [] and loaded.loaded_from == str(tmp_path / "vqa")
    in_memory = EfficientVLMForVisualQuestionAnswering(tiny_config())
    assert in_memory.weights_not_loaded() == [] and in_memory.loaded_from is None
    for teacher in (loaded, in_memory):
        DistillationTrainer(model=EfficientVLMForVisualQuestionAnswering(tiny_config(2, 1, 1)),
                            args=make_args(tmp_path), teacher_model=teacher)
    # a head of another shape: refused at load with the fix; re-initialised on request, then refused as a teacher
    with pytest.raises(ValueError, match=r"(?s)classifier.3.weight: \[3, 48\] in the checkpoint, \[2, 48\].*"
                                         "ignore_mismatched_sizes=True"):
        EfficientVLMForNLVR2.from_pretrained(tmp_path / "vqa")
    nlvr2 = EfficientVLMForNLVR2.from_pretrained(tmp_path / "vqa", ignore_mismatched_sizes=True)
    assert {"classifier.3.weight", "classifier.3.bias"} <= set(nlvr2.weights_not_loaded())
    with pytest.raises(ValueError, match="classifier.3.bias"):
        check_teacher_trained(nlvr2)


# ---- data and the example script -----------------------------------------------------------------------------

def write_pairs(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, color in (("one.png", "red"), ("two.png", "blue")):
        Image.new("RGB", (40, 30), color).save(folder / name)
    records = [{"image": "one.png", "caption": ["a dog runs on the grass", "a red ball"]},
               {"image": "two.png", "caption": "the blue sky with a cat"}]
    (folder / "pairs.json").write_text(json.dumps(records))
    with open(folder / "metadata.jsonl", "w") as handle:
        for record in records:
            captions = record["caption"]  # one type per column in a metadata.jsonl (Arrow)
            captions = [captions] if isinstance(captions, str) else captions
            handle.write(json.dumps({"file_name": record["image"], "caption": captions}) + "\n")
    return folder / "pairs.json"


def test_image_text_pairs_from_xvlm_json_and_imagefolder(tmp_path):
    path = write_pairs(tmp_path / "data")
    pairs = load_image_text_pairs(str(path))
    assert pairs["caption"] == ["a dog runs on the grass", "a red ball", "the blue sky with a cat"]
    assert pairs["image_id"] == [0, 0, 1]
    assert pairs["image"][0] == str(tmp_path / "data" / "one.png")
    folder = load_image_text_pairs(str(tmp_path / "data"))
    assert sorted(folder["caption"]) == sorted(pairs["caption"])
    assert len(set(folder["image_id"])) == 2


def test_collator_masks_captions_and_keeps_image_ids(tmp_path):
    pairs = load_image_text_pairs(str(write_pairs(tmp_path / "data")))
    processor = StandInProcessor()
    collator = ImageTextPretrainingCollator(processor, max_length=12, mlm_probability=0.25, max_masks=2)
    torch.manual_seed(0)
    batch = collator([pairs[i] for i in range(3)])
    assert set(batch) == {"pixel_values", "input_ids", "attention_mask", "mlm_input_ids", "mlm_labels",
                          "mlm_positions", "image_ids"}
    assert batch["pixel_values"].shape == (3, 3, 32, 32)
    assert batch["image_ids"].tolist() == [0, 0, 1]
    ids, labels, masked = batch["input_ids"], batch["mlm_labels"], batch["mlm_input_ids"]
    chosen = labels != -100
    words = batch["attention_mask"].sum(1) - 2  # minus [CLS], [SEP]
    expected = torch.clamp((words.float() * 0.25).round().long(), 1, 2)
    assert chosen.sum(1).tolist() == expected.tolist()
    assert torch.equal(labels[chosen], ids[chosen])
    special = torch.isin(ids, torch.tensor(processor.tokenizer.all_special_ids))
    assert not (chosen & special).any() and not (chosen & (batch["attention_mask"] == 0)).any()
    assert torch.equal(masked[~chosen], ids[~chosen])
    positions = batch["mlm_positions"]
    assert positions.shape == (3, 2)
    for row in range(3):
        assert positions[row, : chosen[row].sum()].tolist() == chosen[row].nonzero().flatten().tolist()
    # region texts: their boxes and which rows have one (only when some example has a box)
    examples = [{**pairs[i], "bbox": box} for i, box in enumerate([None, [0.5, 0.4, 0.2, 0.1], None])]
    boxed = collator(examples)
    assert boxed["bbox_mask"].tolist() == [False, True, False]
    assert boxed["target_bbox"][1].tolist() == pytest.approx([0.5, 0.4, 0.2, 0.1])
    assert not collator([{**pairs[i], "bbox": None} for i in range(3)])["bbox_mask"].any()
    assert "target_bbox" not in batch
    # over many draws: 80% [MASK], 10% random, 10% unchanged
    many = collator.mask_tokens(ids.repeat(500, 1), batch["attention_mask"].repeat(500, 1))
    picked = many[1] != -100
    share_mask = (many[0][picked] == processor.tokenizer.mask_token_id).float().mean().item()
    assert 0.75 < share_mask < 0.85


def test_pretrain_distill_example_end_to_end(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import pretrain_distill
    finally:
        sys.path.pop(0)
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from efficientvlm.models.configuration_efficientvlm import EfficientVLMConfig

    torch.manual_seed(0)
    teacher_dir = tmp_path / "teacher"
    EfficientVLMForPreTraining(tiny_config(text_config={"vocab_size": 5 + len(WORDS)})).save_pretrained(teacher_dir)
    monkeypatch.setattr(pretrain_distill, "load_processor", lambda path: StandInProcessor())
    path = write_pairs(tmp_path / "data")
    out = tmp_path / "student"
    trainer = pretrain_distill.main([
        "--teacher_name_or_path", str(teacher_dir), "--train_file", str(path), "--eval_file", str(path),
        "--vision_layers", "2", "--text_layers", "1", "--fusion_layers", "1", "--output_dir", str(out),
        "--per_device_train_batch_size", "3", "--max_steps", "2", "--logging_steps", "1", "--save_strategy", "no",
        "--report_to", "none", "--use_cpu", "--disable_tqdm", "true",
    ])
    assert trainer.state.global_step == 2
    assert any("kd_logits_mlm" in entry for entry in trainer.state.log_history)
    student = EfficientVLMForPreTraining.from_pretrained(out)
    assert student.config.vision_config.num_hidden_layers == 2
    assert AutoTokenizer.from_pretrained(out).mask_token_id == MASK
    # `import efficientvlm` registers the Auto classes in the packaged library; do it here for this branch alone
    AutoConfig.register("efficientvlm", EfficientVLMConfig, exist_ok=True)
    AutoModel.register(EfficientVLMConfig, EfficientVLMModel, exist_ok=True)
    assert isinstance(AutoModel.from_pretrained(out), EfficientVLMModel)
    assert not any(name.endswith(PROJECTIONS_NAME) for name in os.listdir(out))
