"""Mixed precision and non-finite values in the distillation and pruning trainers: fp16 loss scaling never reaches
the gates (overflow steps leave them unchanged, scaled steps equal unscaled ones), bf16 runs end to end with the
teacher under autocast and fp32 KD terms, and a NaN batch stops the run (or, opted in, is skipped and counted)
without a non-finite checkpoint."""

from __future__ import annotations

import copy
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from efficientvlm import EfficientVLMForVisualQuestionAnswering
from efficientvlm.distillation import DistillationConfig, DistillationTrainer, NonFiniteError
from efficientvlm.pruning import ModalAdaptivePruningTrainer, PruningConfig
from tests.distillation_helpers import BatchDataset, pruning_pair as make_pair

HEAD = EfficientVLMForVisualQuestionAnswering
ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_args(tmp_path, **overrides) -> PruningConfig:
    defaults = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, learning_rate=1e-3, report_to=[],
                    save_strategy="no", disable_tqdm=True, use_cpu=True, seed=0, target_sparsity=0.5,
                    lagrangian_warmup_steps=1, reg_learning_rate=0.1, logging_steps=1, max_steps=3)
    return PruningConfig(**{**defaults, **overrides})


class IdDataset(BatchDataset):
    """``BatchDataset`` rows with an ``example_id`` (1000 + index); ``nan_rows`` get one NaN pixel."""

    def __init__(self, size: int = 16, nan_rows: tuple[int, ...] = ()):
        super().__init__(HEAD, size)
        for index, row in enumerate(self.rows):
            row["example_id"] = 1000 + index
            if index in nan_rows:
                row["pixel_values"] = row["pixel_values"].clone()
                row["pixel_values"][0, 0, 0] = float("nan")


def pruning_trainer(tmp_path, dataset=None, **overrides) -> ModalAdaptivePruningTrainer:
    teacher, student = make_pair()
    return ModalAdaptivePruningTrainer(model=student, args=make_args(tmp_path, **overrides), teacher_model=teacher,
                                       train_dataset=dataset if dataset is not None else BatchDataset(HEAD, size=16))


def l0_state(trainer) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in trainer.l0_module.state_dict().items()}


def model_state(trainer) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in trainer.model.state_dict().items()}


def assert_all_finite(state: dict[str, torch.Tensor]) -> None:
    bad = [key for key, value in state.items() if value.is_floating_point() and not torch.isfinite(value).all()]
    assert not bad, bad


class Snapshots(TrainerCallback):
    """Model and gate states after every optimizer step."""

    def __init__(self, trainer):
        self.trainer, self.states = trainer, {}

    def on_train_begin(self, args, state, control, **kwargs):
        self.states[0] = (model_state(self.trainer), l0_state(self.trainer))

    def on_step_end(self, args, state, control, **kwargs):
        self.states[state.global_step] = (model_state(self.trainer), l0_state(self.trainer))


# ---- fp16 loss scaling (GradScaler on the CPU: Accelerate enables fp16 on CUDA only) --------------------------------


def test_an_overflowing_fp16_step_leaves_gates_multipliers_and_weights_unchanged(tmp_path):
    # A scale of 1.7e38 overflows the model's gradients at every step: the GradScaler skips each step (inside the
    # fused AdamW, which Accelerate's optimizer_step_was_skipped does not see) and halves its scale.
    trainer = pruning_trainer(tmp_path, max_grad_norm=0.0)
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=1.7e38)
    gates, weights = l0_state(trainer), model_state(trainer)
    trainer.train()
    assert trainer.accelerator.scaler.get_scale() == pytest.approx(1.7e38 / 2**3)  # three overflows
    after = l0_state(trainer)
    assert_all_finite(after)
    for key, value in gates.items():
        assert torch.equal(after[key], value), key
    for key, value in weights.items():
        assert torch.equal(trainer.model.state_dict()[key], value), key


def test_a_scaled_fp16_step_moves_the_gates_exactly_as_an_unscaled_one(tmp_path):
    # Scaling by a power of two is exact in float32, so an fp16-style run whose gradients are scaled by 2^12 and
    # unscaled before the step must reproduce the unscaled run bit for bit: gates, multipliers and weights.
    def run(scale):
        trainer = pruning_trainer(tmp_path, max_grad_norm=0.0)
        initial = l0_state(trainer)
        if scale is not None:
            trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=scale)
        trainer.train()
        return trainer, initial, l0_state(trainer), model_state(trainer)

    scaled_trainer, initial, scaled_gates, scaled_weights = run(2.0**12)
    _, _, gates, weights = run(None)
    assert scaled_trainer.accelerator.scaler.get_scale() == 2.0**12  # no overflow, no growth
    assert all(not torch.equal(scaled_gates[key], initial[key]) for key in ("lambda_1", "lambda_2"))
    for key, value in gates.items():
        torch.testing.assert_close(scaled_gates[key], value, rtol=0, atol=0, msg=key)
    for key, value in weights.items():
        torch.testing.assert_close(scaled_weights[key], value, rtol=0, atol=0, msg=key)


def test_gate_gradients_are_divided_by_the_scale_before_their_step(tmp_path):
    # The hand check: gradients g * S in, g out, and the gates' AdamW step is the one an fp32 run takes from g.
    trainer = pruning_trainer(tmp_path)
    scale = 2.0**10
    scaler = trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=scale)
    scaler.scale(torch.ones(()))  # initialises the scale, as the first scaled backward does
    initial, reference = l0_state(trainer), copy.deepcopy(trainer.l0_module)
    reference_optimizer = reference.create_optimizer(trainer.args.reg_learning_rate, trainer.args.lambda_learning_rate)
    generator = torch.Generator().manual_seed(0)
    grads = {name: torch.randn(p.shape, generator=generator) for name, p in trainer.l0_module.named_parameters()}
    for (name, parameter), twin in zip(trainer.l0_module.named_parameters(), reference.parameters()):
        parameter.grad = grads[name] * scale
        twin.grad = grads[name].clone()

    trainer._prepare_auxiliary_gradients()  # before the model's step: averaged over processes, unscaled
    for name, parameter in trainer.l0_module.named_parameters():
        assert torch.equal(parameter.grad, grads[name]), name
    scaler.update()  # what the model's optimizer.step() does: no overflow, the scale stays
    assert not trainer.gate_step_overflowed()
    trainer.step_gates()
    reference_optimizer.step()
    reference.clamp_()
    for (name, parameter), twin in zip(trainer.l0_module.named_parameters(), reference.parameters()):
        assert parameter.grad is None and torch.equal(parameter, twin), name
    assert any(not torch.equal(value, initial[key]) for key, value in l0_state(trainer).items())


# ---- bf16 ----------------------------------------------------------------------------------------------------------


def test_bf16_prunes_end_to_end_with_the_teacher_under_autocast_and_fp32_kd_terms(tmp_path):
    trainer = pruning_trainer(tmp_path, bf16=True, max_steps=4)
    assert trainer.accelerator.native_amp and trainer.teacher_model.dtype == torch.bfloat16
    teacher_autocast, term_dtypes = [], set()

    def record_autocast(module, args, kwargs):
        teacher_autocast.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))

    trainer.teacher_model.register_forward_pre_hook(record_autocast, with_kwargs=True)
    distillation_terms = trainer.distillation_terms

    def spy(*args, **kwargs):
        terms = distillation_terms(*args, **kwargs)
        term_dtypes.update(value.dtype for value in terms.values())
        return terms

    trainer.distillation_terms = spy
    gates = l0_state(trainer)
    trainer.train()
    assert teacher_autocast and all(entry == (True, torch.bfloat16) for entry in teacher_autocast)
    assert term_dtypes == {torch.float32}
    after = l0_state(trainer)
    assert_all_finite(after)
    assert_all_finite(model_state(trainer))
    assert any(not torch.equal(after[key], value) for key, value in gates.items())  # the gates learned
    assert all(math_finite(entry["loss"]) for entry in trainer.state.log_history if "loss" in entry)


def math_finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")


# ---- non-finite batches ----------------------------------------------------------------------------------------------


def checkpoints(output_dir) -> dict[int, object]:
    return {int(folder.name.split("-")[1]): folder for folder in output_dir.glob("checkpoint-*")}


def assert_checkpoint_finite(folder) -> None:
    for file in folder.glob("*.safetensors"):
        assert_all_finite(load_file(file))


def test_a_nan_example_stops_the_run_naming_the_step_and_the_example(tmp_path):
    trainer = pruning_trainer(tmp_path, IdDataset(nan_rows=(5,)), max_steps=4, save_strategy="steps", save_steps=1)
    with pytest.raises(NonFiniteError) as raised:
        trainer.train()
    message = str(raised.value)
    step = int(re.search(r"optimizer step (\d+)", message).group(1))
    assert "example_id=[1005]" in message and "'pixel_values' at rows" in message
    assert "task_loss=nan" in message and "skip_nonfinite_batches" in message
    saved = checkpoints(tmp_path / "out")
    assert sorted(saved) == list(range(1, step))  # every step before the NaN one, none from it on
    for folder in saved.values():
        assert_checkpoint_finite(folder)
    assert_all_finite(model_state(trainer))  # stopped before the optimizer step
    assert_all_finite(l0_state(trainer))


def test_the_distillation_trainer_stops_too(tmp_path):
    teacher, student = make_pair()
    args = DistillationConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, report_to=[],
                              save_strategy="no", disable_tqdm=True, use_cpu=True, max_steps=4)
    trainer = DistillationTrainer(model=student, args=args, teacher_model=teacher,
                                  train_dataset=IdDataset(nan_rows=(2, 9)))
    with pytest.raises(NonFiniteError, match=r"(?s)optimizer step \d+:.*example_id=\[10(02|09)\]"):
        trainer.train()


def test_a_non_finite_gradient_stops_the_run_naming_the_parameter(tmp_path):
    trainer = pruning_trainer(tmp_path, max_steps=2)
    weight = trainer.model.classifier[-1].weight
    name = next(n for n, p in trainer.model.named_parameters() if p is weight)
    weight.register_hook(lambda grad: grad * float("inf"))
    with pytest.raises(NonFiniteError, match=rf"optimizer step 1:\n- \d+ of \d+ gradient tensors .*{re.escape(name)}"):
        trainer.train()


def test_skip_nonfinite_batches_drops_the_step_counts_it_and_survives_resume(tmp_path):
    dataset = IdDataset(nan_rows=(5,))
    trainer = pruning_trainer(tmp_path, dataset, max_steps=4, save_strategy="steps", save_steps=1,
                              skip_nonfinite_batches=True)
    snapshots = Snapshots(trainer)
    trainer.add_callback(snapshots)
    trainer.train()
    counter = trainer.nonfinite_counter
    assert (counter.skipped_steps, counter.skipped_batches) == (1, 1)
    skipped = counter.last_skipped_step
    logged = [entry for entry in trainer.state.log_history if "nonfinite_skipped_steps" in entry]
    assert [entry["nonfinite_skipped_steps"] for entry in logged] == [int(step >= skipped) for step in range(1, 5)]
    # the skipped step updated nothing: weights, gates and multipliers are those of the step before
    for previous, current in zip(snapshots.states[skipped - 1], snapshots.states[skipped]):
        for key, value in previous.items():
            assert torch.equal(current[key], value), key
    assert any(not torch.equal(current, snapshots.states[4][1][key])  # the other steps did train the gates
               for key, current in snapshots.states[0][1].items())
    for weights, gates in snapshots.states.values():
        assert_all_finite(weights)
        assert_all_finite(gates)
    for folder in checkpoints(tmp_path / "out").values():
        assert_checkpoint_finite(folder)
    state = json.loads((tmp_path / "out" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["stateful_callbacks"]["NonFiniteBatchCounter"]["attributes"]["skipped_steps"] == 1
    # the id column does not reach the model in evaluation either
    assert "eval_loss" in trainer.evaluate(IdDataset(size=4))

    resumed = pruning_trainer(tmp_path, dataset, max_steps=4, save_strategy="steps", save_steps=1,
                              skip_nonfinite_batches=True)
    assert resumed.nonfinite_counter.skipped_steps == 0
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-4"))
    assert (resumed.nonfinite_counter.skipped_steps, resumed.nonfinite_counter.last_skipped_step) == (1, skipped)


def test_a_checkpoint_with_a_non_finite_tensor_is_never_written(tmp_path):
    trainer = pruning_trainer(tmp_path, max_steps=3, save_strategy="steps", save_steps=1)

    class Corrupt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:  # as if a non-finite value had slipped past the step check
                with torch.no_grad():
                    trainer.l0_module.lambda_1.fill_(float("nan"))

    trainer.add_callback(Corrupt())
    with pytest.raises(NonFiniteError, match=r"Refusing to save checkpoint-2: 1 of \d+ tensors .*l0_module.lambda_1"):
        trainer.train()
    assert sorted(checkpoints(tmp_path / "out")) == [1]
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("inf"))
    with pytest.raises(NonFiniteError, match="Refusing to save the model"):
        trainer.save_model(str(tmp_path / "final"))
    assert not (tmp_path / "final").exists()


def test_two_processes_skip_a_nan_batch_together_and_keep_identical_gates(tmp_path):
    # The NaN example reaches one rank only (once per epoch; the run spans two); the skip decision is summed over
    # processes, so both drop the same steps (gradient accumulation 2: four micro-batches each) and end with the
    # same finite gates and weights.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(port), str(ROOT / "tests" / "ddp_prune_worker.py"), str(tmp_path), "nan"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    steps, batches, _ = rank0["skipped"]
    assert rank1["skipped"] == rank0["skipped"] and steps == batches == 2  # one NaN micro-batch per dropped step
    assert_all_finite(rank0["state"])
    for key, value in rank0["state"].items():
        torch.testing.assert_close(rank1["state"][key], value, rtol=0, atol=0, msg=key)
