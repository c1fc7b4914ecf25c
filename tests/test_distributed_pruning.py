"""Pruning under wrapped and sharded training: the gates are state of the gated modules (so they reach the forward
of layers wrapped by DDP, FSDP or activation checkpointing), ``prune()`` gathers sharded parameters (FSDP2 on two
gloo processes; DeepSpeed ZeRO-2/3 in one process when deepspeed is installed), and resuming restores the trainer's
own state without transformers' ``_load_from_checkpoint`` (which DeepSpeed resumes never call)."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch import nn
from transformers import TrainerCallback

from efficientvlm import EfficientVLMForVisualQuestionAnswering
from efficientvlm.distillation import DistillationConfig, DistillationTrainer
from efficientvlm.distillation.trainer import PROJECTIONS_NAME
from efficientvlm.pruning import (
    L0_OPTIMIZER_NAME,
    L0_STATE_NAME,
    ModalAdaptiveL0Module,
    ModalAdaptivePruningTrainer,
    PruningConfig,
    apply_gates,
    clear_gates,
    gates_applied,
    materialize,
)
from efficientvlm.pruning.distributed import full_model, sharding_of
from efficientvlm.pruning.structure import MODALITIES, encoder_layers
from tests.distillation_helpers import BatchDataset, narrow_student, pruning_pair, tiny_batch, tiny_config

ROOT = Path(__file__).resolve().parents[1]
HEAD = EfficientVLMForVisualQuestionAnswering

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def subprocess_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def gates_with_closed_blocks(model) -> dict:
    """Deterministic gates with some heads and neurons at 0 and two whole sub-blocks closed by their block gate."""
    torch.manual_seed(1)
    l0 = ModalAdaptiveL0Module(model.config, 0.4, prune=("heads", "ffn", "blocks"))
    zs = l0.budget_gates()
    zs["fusion"][0]["ffn_block"] = torch.tensor(0.0)
    zs["vision"][1]["attention_block"] = torch.tensor(0.0)
    return zs


def logits(model, zs=None):
    inputs = tiny_batch(HEAD, batch=3, seed=3)
    inputs.pop("labels")
    model.eval()
    with torch.no_grad():
        if zs is None:
            return model(**inputs).logits
        with gates_applied(model, zs):
            return model(**inputs).logits


@pytest.fixture
def student():
    torch.manual_seed(0)
    return HEAD(tiny_config(vision_layers=2, text_layers=1, fusion_layers=1))


@pytest.fixture
def process_group():
    """A one-process gloo group, for wrappers that need one."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(free_port())
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


# ---- the gates belong to the modules ----------------------------------------------------------------------------


def test_gates_are_non_persistent_buffers_declared_by_the_gated_modules(student):
    layer = encoder_layers(student, "fusion")[0]
    assert layer.pruning_gates == ("attention_gate", "cross_attention_gate", "ffn_gate")
    assert layer.self_attn.pruning_gates == ("head_gate",) and layer.mlp.pruning_gates == ("neuron_gate",)
    keys = set(student.state_dict())
    zs = gates_with_closed_blocks(student)
    apply_gates(student, zs)
    buffers = dict(student.named_buffers())
    assert buffers["efficientvlm.fusion_model.encoder.layers.0.ffn_gate"] is zs["fusion"][0]["ffn_block"]
    assert buffers["efficientvlm.vision_model.encoder.layers.0.self_attn.head_gate"] is zs["vision"][0]["heads"]
    assert set(student.state_dict()) == keys  # never saved
    clear_gates(student)
    assert not any(name.endswith("_gate") for name, _ in student.named_buffers())


def test_gates_reach_layers_wrapped_for_activation_checkpointing(student):
    """Wrappers that hold each layer and forward attribute reads to it (activation checkpointing here; FSDP1, which
    cannot be built without an accelerator, wraps layers the same way) used to catch block gates set with setattr:
    the inner forward never saw them. Masked through the wrappers == materialised proves it sees them."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    zs = gates_with_closed_blocks(student)
    expected = logits(materialize(student, zs))
    for modality in MODALITIES:
        layers = student.base_model.get_submodule(f"{modality}_model.encoder.layers")
        for index in range(len(layers)):
            layers[index] = checkpoint_wrapper(layers[index])
    wrapper = student.base_model.fusion_model.encoder.layers[0]
    apply_gates(student, zs)
    assert "ffn_gate" not in wrapper.__dict__ and wrapper._checkpoint_wrapped_module.ffn_gate is not None
    torch.testing.assert_close(logits(student, zs), expected, rtol=0, atol=1e-5)
    assert not torch.allclose(logits(student), expected, atol=1e-3)  # the gates matter


def test_gates_applied_through_ddp_reach_the_model_it_wraps(student, process_group):
    zs = gates_with_closed_blocks(student)
    expected = logits(student, zs)
    wrapped = nn.parallel.DistributedDataParallel(student)
    inputs = tiny_batch(HEAD, batch=3, seed=3)
    inputs.pop("labels")
    with torch.no_grad(), gates_applied(wrapped, zs):
        assert student.base_model.fusion_model.encoder.layers[0].ffn_gate is zs["fusion"][0]["ffn_block"]
        torch.testing.assert_close(wrapped(**inputs).logits, expected, rtol=0, atol=0)
    assert student.base_model.fusion_model.encoder.layers[0].ffn_gate is None
    assert sharding_of(wrapped) is None and full_model(wrapped) is student  # DDP: nothing to gather


def test_fsdp2_two_processes_train_gates_and_prune_the_gathered_model(tmp_path):
    """torch's FSDP2 on two gloo processes: gates on the sharded layers (block gates included) give the same logits
    as the model ``materialize`` builds from the gathered parameters, and both processes build the same model."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), str(ROOT / "tests" / "fsdp_prune_worker.py"), str(tmp_path)]
    result = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for rank in (rank0, rank1):
        assert rank["sharded"] and rank["local_rows"] * 2 == rank["rows"]  # FSDP held half of each weight
        assert rank["pruned_type"] == HEAD.__name__ and not rank["pruned_has_dtensor"]
        torch.testing.assert_close(rank["materialised"], rank["masked"], rtol=0, atol=1e-5)
        assert not torch.allclose(rank["dense"], rank["masked"], atol=1e-4)
        assert rank["pruned_sizes"]["fusion"][0]["ffn"] == 0 and rank["pruned_sizes"]["vision"][1]["heads"] == 0
    for key, value in rank0["pruned_state"].items():
        torch.testing.assert_close(rank1["pruned_state"][key], value, rtol=0, atol=0, msg=key)
    for key, value in rank0["gates"].items():
        torch.testing.assert_close(rank1["gates"][key], value, rtol=0, atol=0, msg=key)


# ---- trainer state: saved by a callback, restored by train() -----------------------------------------------------


class StopAt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        control.should_training_stop = state.global_step >= 3


def _load_model_weights_only(self, resume_from_checkpoint, model=None):
    """What a DeepSpeed resume does instead of ``_load_from_checkpoint``: the engine reloads the model, nothing else."""
    (model or self.model).load_state_dict(load_file(os.path.join(resume_from_checkpoint, "model.safetensors")))


def prune_run(tmp_path, output_dir, callbacks=(), resume=None):
    teacher, student = pruning_pair()
    args = PruningConfig(output_dir=str(output_dir), per_device_train_batch_size=2, max_steps=6, learning_rate=1e-3,
                         report_to=[], save_strategy="steps", save_steps=3, disable_tqdm=True, use_cpu=True, seed=0,
                         target_sparsity=0.5, lagrangian_warmup_steps=2, reg_learning_rate=0.1, logging_steps=10)
    trainer = ModalAdaptivePruningTrainer(model=student, args=args, teacher_model=teacher,
                                          train_dataset=BatchDataset(HEAD, size=8), callbacks=list(callbacks))
    trainer.train(resume_from_checkpoint=resume)
    state = {f"student.{k}": v for k, v in student.state_dict().items()}
    state |= {f"gates.{k}": v.detach() for k, v in trainer.l0_module.state_dict().items()}
    return state | {f"gates_optimizer.{i}": v["exp_avg"] for i, v in trainer.l0_optimizer.state_dict()["state"].items()}


def test_pruning_resume_does_not_need_load_from_checkpoint(tmp_path, monkeypatch):
    """With ``_load_from_checkpoint`` reduced to what DeepSpeed does (the model weights only), resuming still equals
    an uninterrupted run bit for bit: the gates, multipliers and their optimizer come back through ``train``."""
    monkeypatch.setattr(ModalAdaptivePruningTrainer, "_load_from_checkpoint", _load_model_weights_only)
    uninterrupted = prune_run(tmp_path, tmp_path / "full")
    prune_run(tmp_path, tmp_path / "part", callbacks=[StopAt()])
    checkpoint = tmp_path / "part" / "checkpoint-3"
    assert {L0_STATE_NAME, L0_OPTIMIZER_NAME} <= {path.name for path in checkpoint.iterdir()}
    resumed = prune_run(tmp_path, tmp_path / "part", resume=True)  # the last checkpoint
    for key in uninterrupted:
        torch.testing.assert_close(resumed[key], uninterrupted[key], rtol=0, atol=0, msg=key)


def test_distillation_resume_restores_the_projections_without_load_from_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(DistillationTrainer, "_load_from_checkpoint", _load_model_weights_only)

    def run(output_dir, callbacks=(), resume=None):
        torch.manual_seed(0)
        teacher = HEAD(tiny_config())
        student = narrow_student(teacher.config, HEAD)
        args = DistillationConfig(output_dir=str(output_dir), per_device_train_batch_size=2, max_steps=6,
                                  learning_rate=1e-3, save_strategy="steps", save_steps=3, report_to=[],
                                  disable_tqdm=True, use_cpu=True, seed=0)
        trainer = DistillationTrainer(model=student, args=args, teacher_model=teacher, callbacks=list(callbacks),
                                      train_dataset=BatchDataset(HEAD, size=8))
        trainer.train(resume_from_checkpoint=resume)
        return {f"student.{k}": v for k, v in student.state_dict().items()} | \
            {f"projections.{k}": v for k, v in trainer.kd_projections.state_dict().items()}

    uninterrupted = run(tmp_path / "full")
    run(tmp_path / "part", callbacks=[StopAt()])
    assert (tmp_path / "part" / "checkpoint-3" / PROJECTIONS_NAME).is_file()
    resumed = run(tmp_path / "part", resume=str(tmp_path / "part" / "checkpoint-3"))
    assert any(key.startswith("projections.") for key in resumed)
    for key in uninterrupted:
        torch.testing.assert_close(resumed[key], uninterrupted[key], rtol=0, atol=0, msg=key)


def test_a_checkpoint_without_gates_is_refused_before_training(tmp_path):
    prune_run(tmp_path, tmp_path / "part", callbacks=[StopAt()])
    checkpoint = tmp_path / "part" / "checkpoint-3"
    (checkpoint / L0_STATE_NAME).unlink()
    (checkpoint / L0_OPTIMIZER_NAME).unlink()  # optional on its own; the gates are not
    with pytest.raises(ValueError, match=f"has no {L0_STATE_NAME}.*not written by ModalAdaptivePruningTrainer"):
        prune_run(tmp_path, tmp_path / "part", resume=str(checkpoint))


# ---- DeepSpeed (one process on the CPU; skipped without deepspeed) --------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                    reason="deepspeed is not installed (pip install 'efficientvlm[deepspeed]')")
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_resume_equals_an_uninterrupted_run_and_prune_gathers(tmp_path, stage):
    """Under DeepSpeed transformers resumes without ``_load_from_checkpoint``; the pruning state must come back
    anyway. ZeRO-3 partitions the student: ``prune()`` gathers it, and masked == materialised."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "examples" / "accelerate_configs" / f"deepspeed_zero{stage}.yaml"), "--num_processes", "1",
               "--mixed_precision", "no", "--main_process_port", str(free_port()),
               str(ROOT / "tests" / "accelerate_prune_worker.py"), str(tmp_path)]
    result = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = torch.load(tmp_path / "results_rank0.pt")
    assert results["zero_stage"] == stage and results["engine"] == "DeepSpeedEngine" and results["finite"]
    assert results["sharded"] == ("zero3" if stage == 3 else None)
    uninterrupted, interrupted, resumed = results["uninterrupted"], results["interrupted"], results["resumed"]
    assert any(key.startswith("gates.gates.") for key in uninterrupted)
    assert any(not torch.equal(interrupted[key], uninterrupted[key]) for key in uninterrupted)
    for key in uninterrupted:
        torch.testing.assert_close(resumed[key], uninterrupted[key], rtol=0, atol=0, msg=key)
    torch.testing.assert_close(results["materialised"], results["masked"], rtol=0, atol=1e-5)
    assert "DeepSpeed cannot optimise" in results["distill_error"] and "ddp.yaml" in results["distill_error"]
