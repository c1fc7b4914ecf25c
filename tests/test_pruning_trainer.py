"""ModalAdaptivePruningTrainer: lands on its target, keeps the gates out of the model and its optimizer, evaluates
and exports the deterministic structure, resumes exactly, and keeps identical gates across DDP ranks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from efficientvlm import EfficientVLMForVisualQuestionAnswering
from efficientvlm.pruning import (
    L0_STATE_NAME,
    ModalAdaptivePruningTrainer,
    PruningConfig,
    gates_applied,
    save_report,
)
from tests.distillation_helpers import (
    BatchDataset,
    assert_masked_materialised_reloaded_agree,
    pruning_pair as make_pair,
    tiny_batch,
)

ROOT = Path(__file__).resolve().parents[1]
HEAD = EfficientVLMForVisualQuestionAnswering


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_args(tmp_path, **overrides) -> PruningConfig:
    defaults = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, learning_rate=1e-3, report_to=[],
                    save_strategy="no", disable_tqdm=True, use_cpu=True, seed=0, target_sparsity=0.5,
                    lagrangian_warmup_steps=50, reg_learning_rate=0.1, logging_steps=10)
    return PruningConfig(**{**defaults, **overrides})


def test_a_short_run_lands_on_its_target_and_exports_that_structure(tmp_path):
    teacher, student = make_pair()
    trainer = ModalAdaptivePruningTrainer(model=student, args=make_args(tmp_path, max_steps=150),
                                          teacher_model=teacher, train_dataset=BatchDataset(HEAD, size=16))
    assert not any("log_alpha" in key or "lambda" in key for key in student.state_dict())
    trainer.train()
    last = [entry for entry in trainer.state.log_history if "sparsity" in entry][-1]
    for key in ("expected_sparsity", "sparsity", "sparsity_vision", "sparsity_text", "sparsity_fusion",
                "lambda_1", "lambda_2", "heads_kept", "ffn_kept", "target_sparsity", "lagrangian", "kd_loss"):
        assert key in last, key
    assert last["target_sparsity"] == 0.5
    assert abs(last["expected_sparsity"] - 0.5) <= 0.02
    assert abs(last["sparsity"] - 0.5) <= 0.02  # the deterministic gates: the structure prune() exports

    pruned = trainer.prune()
    info = pruned.config.pruning_info
    assert abs(info["achieved_sparsity"]["overall"] - 0.5) <= 0.02 and info["target_sparsity"] == 0.5
    # the parameter budget's sparsity is the parameter count of the exported model
    assert info["prunable"]["sparsity"] == pytest.approx(info["achieved_sparsity"]["overall"], abs=1e-6)

    reloaded = assert_masked_materialised_reloaded_agree(student, trainer.final_gates(), pruned, tmp_path / "pruned")
    assert sum(p.numel() for p in reloaded.parameters()) < sum(p.numel() for p in student.parameters())

    json_path, png_path = save_report(trainer.pruning_report(pruned), tmp_path / "report")
    assert json_path.stat().st_size > 0 and png_path.read_bytes()[:4] == b"\x89PNG"


def test_gates_have_their_own_optimizer_untouched_by_schedule_decay_and_clipping(tmp_path):
    teacher, student = make_pair()
    args = make_args(tmp_path, max_steps=4, lr_scheduler_type="linear", warmup_steps=2, weight_decay=0.1,
                     max_grad_norm=1e-6)
    trainer = ModalAdaptivePruningTrainer(model=student, args=args, teacher_model=teacher,
                                          train_dataset=BatchDataset(HEAD, size=16))
    before = {k: v.clone() for k, v in trainer.l0_module.state_dict().items()}
    trainer.train()
    model_params = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not model_params & {id(p) for p in trainer.l0_module.parameters()}
    groups = trainer.l0_optimizer.param_groups
    assert [g["lr"] for g in groups] == [0.1, 0.03] and [g["weight_decay"] for g in groups] == [0.0, 0.0]
    assert groups[1]["maximize"] and not groups[0]["maximize"]
    # clipping the model's gradients to 1e-6 did not stop the gates from moving a visible amount
    moved = max((trainer.l0_module.state_dict()[k] - v).abs().max() for k, v in before.items() if "log_alpha" in k)
    assert moved > 1e-3


def test_evaluation_uses_the_deterministic_gates(tmp_path):
    teacher, student = make_pair()
    dataset = BatchDataset(HEAD, size=8)
    args = make_args(tmp_path, max_steps=40, lagrangian_warmup_steps=10, per_device_eval_batch_size=8)
    trainer = ModalAdaptivePruningTrainer(model=student, args=args, teacher_model=teacher, train_dataset=dataset,
                                          eval_dataset=dataset)
    trainer.train()
    closed = sum(int((z == 0).sum()) for layers in trainer.final_gates().values() for g in layers for z in g.values())
    assert closed > 0
    metrics = trainer.evaluate()
    batch = tiny_batch(HEAD, batch=8)
    student.eval()
    with torch.no_grad(), gates_applied(student, trainer.final_gates()):
        masked_task_loss = student(**batch).loss
    assert metrics["eval_task_loss"] == pytest.approx(float(masked_task_loss), rel=1e-6)
    with torch.no_grad():
        dense_task_loss = student(**batch).loss
    assert abs(float(dense_task_loss) - float(masked_task_loss)) > 1e-5


def test_frozen_gates_stop_learning_and_the_forward_uses_the_final_structure(tmp_path):
    teacher, student = make_pair()
    trainer = ModalAdaptivePruningTrainer(model=student, args=make_args(tmp_path, max_steps=6, freeze_gates_step=3),
                                          teacher_model=teacher, train_dataset=BatchDataset(HEAD, size=16))

    class Snapshot(TrainerCallback):
        states = {}

        def on_step_end(self, args, state, control, **kwargs):
            self.states[state.global_step] = {k: v.clone() for k, v in trainer.l0_module.state_dict().items()}

    trainer.add_callback(Snapshot())
    trainer.train()
    states = Snapshot.states
    assert any(not torch.equal(states[2][k], states[3][k]) for k in states[3])  # learning before the freeze
    for step in (4, 5, 6):
        assert all(torch.equal(states[3][k], states[step][k]) for k in states[3])


def test_per_modality_targets_are_logged_per_modality(tmp_path):
    teacher, student = make_pair()
    args = make_args(tmp_path, max_steps=20, target_sparsity_per_modality='{"vision": 0.6, "text": 0.2}',
                     prune_modalities="vision,text")
    trainer = ModalAdaptivePruningTrainer(model=student, args=args, teacher_model=teacher,
                                          train_dataset=BatchDataset(HEAD, size=16))
    trainer.train()
    last = [entry for entry in trainer.state.log_history if "lambda_1" in entry][-1]
    assert {"target_sparsity_vision", "target_sparsity_text"} <= set(last)
    assert last["sparsity_fusion"] == 0.0  # not pruned


@pytest.mark.parametrize("overrides, match", [
    ({"target_sparsity": 1.0}, r"must be in \[0, 1\)"),
    ({"target_sparsity": -0.1}, r"must be in \[0, 1\)"),
    ({"target_sparsity": 0.9, "prune_modalities": "text"}, "cannot be reached"),
    ({"prune_structures": "heads,layers"}, "prune_structures"),
    ({"budget": "seconds"}, "budget"),
])
def test_impossible_targets_and_settings_are_rejected_before_training(tmp_path, overrides, match):
    teacher, student = make_pair()
    with pytest.raises(ValueError, match=match):
        ModalAdaptivePruningTrainer(model=student, args=make_args(tmp_path, **overrides), teacher_model=teacher,
                                    train_dataset=BatchDataset(HEAD, size=8))


def test_resume_from_a_mid_run_checkpoint_equals_an_uninterrupted_run(tmp_path):
    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step >= 3

    def run(output_dir, callbacks=(), resume=None):
        teacher, student = make_pair()
        args = make_args(tmp_path, output_dir=str(output_dir), per_device_train_batch_size=2, max_steps=6,
                         save_strategy="steps", save_steps=3, lagrangian_warmup_steps=2)
        trainer = ModalAdaptivePruningTrainer(model=student, args=args, teacher_model=teacher,
                                              train_dataset=BatchDataset(HEAD, size=8), callbacks=list(callbacks))
        trainer.train(resume_from_checkpoint=resume)
        state = {f"student.{k}": v for k, v in student.state_dict().items()}
        state |= {f"gates.{k}": v.detach() for k, v in trainer.l0_module.state_dict().items()}
        return state | {f"gates_optimizer.{i}": v["exp_avg"] for i, v in trainer.l0_optimizer.state_dict()["state"].items()}

    uninterrupted = run(tmp_path / "full")
    interrupted = run(tmp_path / "part", callbacks=[StopAt()])
    assert (tmp_path / "part" / "checkpoint-3" / L0_STATE_NAME).is_file()
    assert any(not torch.equal(interrupted[k], uninterrupted[k]) for k in uninterrupted)
    resumed = run(tmp_path / "part", resume=str(tmp_path / "part" / "checkpoint-3"))
    for key in uninterrupted:
        torch.testing.assert_close(resumed[key], uninterrupted[key], rtol=0, atol=0, msg=key)


def test_accelerate_launch_two_processes_keep_identical_gates(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(port), str(ROOT / "tests" / "ddp_prune_worker.py"), str(tmp_path)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert rank0["seen"] != rank1["seen"]
    assert any(key.startswith("gates.gates.") for key in rank0["state"])
    for key, value in rank0["state"].items():
        torch.testing.assert_close(rank1["state"][key], value, rtol=0, atol=0, msg=key)
