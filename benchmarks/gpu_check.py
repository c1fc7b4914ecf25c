"""Checks that need a GPU: the paths the CPU test suite can only simulate, run for real on CUDA.

    python benchmarks/gpu_check.py                     # every check; exit code 1 when one fails
    python benchmarks/gpu_check.py --only fp16_pruning fp16_overflow --steps 40 --json gpu_check.json

Without CUDA every check reports "skipped" and the exit code is 0; ``--cpu`` runs the bf16 check on the CPU (torch's
CPU bf16 autocast; Accelerate enables fp16 on CUDA only), a smoke test of the script itself.

Each check is a function ``check_x(args) -> dict`` registered in ``CHECKS``; it returns ``{"status": "passed" |
"failed" | "skipped", "details": {...}}`` (an exception inside a check, e.g. a failed ``assert``, counts as "failed",
with its message). ``main()`` runs the selected checks one after the other and prints a summary table.

Mixed precision (a 2/1/1-layer, width-128 VQA student pruned under a 4/2/2 teacher, random data, a few dozen steps):

* ``bf16_pruning``: ``PruningConfig(bf16=True)``: the student under Accelerate's bf16 autocast, the teacher (cast to
  bf16) under the same autocast, every KD term in float32; every loss, weight, gate and multiplier finite; the gates
  learn; the exported (materialised) model gives finite logits.
* ``fp16_pruning``: ``PruningConfig(fp16=True)``: a real GradScaler; the same checks; every step whose scale dropped
  (an overflow) left the gates and multipliers unchanged.
* ``fp16_overflow``: fp16 with the GradScaler started at 2^40, so the first ~25 of 48 steps overflow: the gates, the
  multipliers and the weights stay exactly as they were until the scale has come down, then the gates learn. Also
  reports how many of those skipped steps Accelerate's ``optimizer_step_was_skipped`` saw (it misses the fused
  AdamW's, which skip inside their own ``step()``).
* ``fp16_nan_batch``: fp16 with one NaN image: the run stops with ``NonFiniteError`` naming the example; with
  ``skip_nonfinite_batches`` it finishes, counts the step and ends with finite weights and gates.

Distributed (``accelerate launch`` with ``examples/accelerate_configs/``, running ``tests/accelerate_prune_worker.py``
on a tiny VQA student: 4 pruning steps uninterrupted, 2 + resume from the step-2 checkpoint, then ``prune()``; fp32
so that the resumed run can equal the uninterrupted one):

* ``fsdp_resume_prune``: FSDP2 (``fsdp.yaml``) with every CUDA device (one is enough: world size 1 still shards
  through FSDP's code paths): resumed == uninterrupted (student, gates, multipliers, gate optimizer), masked ==
  materialised after ``prune()`` gathered the full parameters, everything finite, on every process.
* ``deepspeed_zero2_resume_prune``: the same under DeepSpeed ZeRO-2 (``deepspeed_zero2.yaml``; skipped without
  deepspeed). transformers resumes DeepSpeed without ``_load_from_checkpoint``: this is where the gates used to be
  lost.
* ``ddp_two_processes``: DDP (``ddp.yaml``) on two processes: both end with the same gates and weights, and the
  checks above. Needs two CUDA devices - NCCL cannot run two ranks on one GPU - and is skipped otherwise (DDP with
  two gloo processes on the CPU is in the test suite: ``tests/test_pruning_trainer.py``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import Dataset
from transformers import TrainerCallback

from efficientvlm import EfficientVLMConfig, EfficientVLMForVisualQuestionAnswering, create_student
from efficientvlm.distillation import NonFiniteError
from efficientvlm.pruning import ModalAdaptivePruningTrainer, PruningConfig

WIDTH, IMAGE, PATCH, TEXT, VOCAB, LABELS = 128, 64, 8, 16, 100, 10


# ---- shared pieces ---------------------------------------------------------------------------------------------------


class RandomVQA(Dataset):
    """Random images, questions and soft labels, each row with an ``example_id`` (1000 + index)."""

    def __init__(self, size: int = 64, nan_rows: tuple[int, ...] = (), seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.rows = []
        for index in range(size):
            pixels = torch.randn(3, IMAGE, IMAGE, generator=g)
            if index in nan_rows:
                pixels[0, 0, 0] = float("nan")
            ids = torch.randint(5, VOCAB, (TEXT,), generator=g)
            ids[0] = 2
            self.rows.append({"pixel_values": pixels, "input_ids": ids, "labels": torch.rand(LABELS, generator=g),
                              "attention_mask": torch.ones(TEXT, dtype=torch.long), "example_id": 1000 + index})

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.rows[index]


def make_pair(seed: int = 0):
    """A 4/2/2 teacher and a 2/1/1 student copied from it, width 128, 64 px images."""
    torch.manual_seed(seed)
    common = {"hidden_size": WIDTH, "num_attention_heads": 4, "head_dim": WIDTH // 4, "intermediate_size": 4 * WIDTH}
    config = EfficientVLMConfig(
        vision_config={**common, "num_hidden_layers": 4, "image_size": IMAGE, "patch_size": PATCH},
        text_config={**common, "num_hidden_layers": 2, "vocab_size": VOCAB, "max_position_embeddings": 32,
                     "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3, "mask_token_id": 4},
        fusion_config={**common, "num_hidden_layers": 2, "num_cross_attention_heads": 4},
        projection_dim=64, id2label={i: str(i) for i in range(LABELS)},
    )
    teacher = EfficientVLMForVisualQuestionAnswering(config)
    return teacher, create_student(teacher, vision_layers=2, text_layers=1, fusion_layers=1)


def make_trainer(output_dir: str, steps: int, dataset: Dataset | None = None, **overrides):
    teacher, student = make_pair()
    args = PruningConfig(**{**dict(output_dir=output_dir, per_device_train_batch_size=8, learning_rate=1e-4,
                                   report_to=[], save_strategy="no", disable_tqdm=True, max_steps=steps,
                                   logging_steps=max(1, steps // 4), target_sparsity=0.3, reg_learning_rate=0.1,
                                   lagrangian_warmup_steps=max(1, steps // 2), seed=0, dataloader_num_workers=0),
                            **overrides})
    return ModalAdaptivePruningTrainer(model=student, args=args, teacher_model=teacher,
                                       train_dataset=dataset if dataset is not None else RandomVQA())


def l0_state(trainer) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in trainer.l0_module.state_dict().items()}


def nonfinite(state: dict[str, torch.Tensor]) -> list[str]:
    return [key for key, value in state.items() if value.is_floating_point() and not torch.isfinite(value).all()]


class StepLog(TrainerCallback):
    """Per optimizer step: the GradScaler's scale before and after, Accelerate's skip flag, whether the gates moved."""

    def __init__(self, trainer):
        self.trainer, self.steps, self._before = trainer, [], None

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        scaler = self.trainer._loss_scaler()
        self._before = (scaler.get_scale() if scaler is not None else None, l0_state(self.trainer),
                        {k: v.detach().clone() for k, v in self.trainer.model.named_parameters()})

    def on_step_end(self, args, state, control, **kwargs):
        scale, gates, weights = self._before
        scaler = self.trainer._loss_scaler()
        after = l0_state(self.trainer)
        self.steps.append({
            "step": state.global_step,
            "scale_before": scale, "scale_after": scaler.get_scale() if scaler is not None else None,
            "accelerate_skipped": self.trainer.accelerator.optimizer_step_was_skipped,
            "gates_moved": any(not torch.equal(after[k], v) for k, v in gates.items()),
            "weights_moved": any(not torch.equal(p.detach(), weights[k])
                                 for k, p in self.trainer.model.named_parameters()),
        })

    def overflow_steps(self) -> list[dict]:
        return [s for s in self.steps if s["scale_before"] is not None and s["scale_after"] < s["scale_before"]]


def _skip_without_cuda(args: argparse.Namespace, bf16: bool = False) -> dict | None:
    if args.cpu:
        return None if bf16 else {"status": "skipped", "details": {"reason": "fp16 needs CUDA (--cpu given)"}}
    if not torch.cuda.is_available():
        return {"status": "skipped", "details": {"reason": "no CUDA device"}}
    if bf16 and not torch.cuda.is_bf16_supported():
        return {"status": "skipped", "details": {"reason": "the CUDA device has no bf16"}}
    return None


def _prune_and_check(trainer, precision: str, steps: int) -> dict:
    """Train with a teacher-autocast and KD-dtype probe; the assertions shared by the bf16 and fp16 checks."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    device_type = trainer.args.device.type
    seen_autocast, term_dtypes = [], set()
    trainer.teacher_model.register_forward_pre_hook(
        lambda module, args: seen_autocast.append((torch.is_autocast_enabled(device_type),
                                                   torch.get_autocast_dtype(device_type))))
    distillation_terms = trainer.distillation_terms

    def spy(*args, **kwargs):
        terms = distillation_terms(*args, **kwargs)
        term_dtypes.update(str(value.dtype) for value in terms.values())
        return terms

    trainer.distillation_terms = spy
    log = StepLog(trainer)
    trainer.add_callback(log)
    initial = l0_state(trainer)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start

    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    gates = l0_state(trainer)
    assert trainer.accelerator.native_amp, "Accelerate did not enable autocast"
    assert trainer.teacher_model.dtype == dtype, f"teacher dtype {trainer.teacher_model.dtype}"
    assert seen_autocast and all(entry == (True, dtype) for entry in seen_autocast), \
        f"teacher forward outside {precision} autocast: {set(seen_autocast)}"
    assert term_dtypes == {"torch.float32"}, f"KD terms in {term_dtypes}"
    assert all(loss == loss and abs(loss) != float("inf") for loss in losses), f"non-finite logged loss {losses}"
    assert not nonfinite(gates), f"non-finite gates {nonfinite(gates)}"
    weights = {k: v for k, v in trainer.model.state_dict().items()}
    assert not nonfinite(weights), f"non-finite weights {nonfinite(weights)[:5]}"
    assert any(not torch.equal(gates[k], v) for k, v in initial.items()), "the gates never moved"
    overflows = log.overflow_steps()
    assert not any(step["gates_moved"] for step in overflows), \
        f"gates moved on overflow steps {[s['step'] for s in overflows if s['gates_moved']]}"
    pruned = trainer.prune()
    batch = trainer.train_dataset[0]
    inputs = {k: batch[k][None].to(trainer.args.device) for k in ("pixel_values", "input_ids", "attention_mask")}
    with torch.no_grad():
        logits = pruned.to(trainer.args.device).eval()(**inputs).logits
    assert torch.isfinite(logits).all(), "the exported model gives non-finite logits"
    return {"steps": steps, "seconds": round(seconds, 2), "first_loss": losses[0], "last_loss": losses[-1],
            "expected_sparsity": float(trainer.l0_module.expected_sparsity()["overall"].detach()),
            "overflow_steps": [s["step"] for s in overflows],
            "accelerate_saw_overflows": sum(s["accelerate_skipped"] for s in overflows),
            "final_scale": trainer._loss_scaler().get_scale() if trainer._loss_scaler() is not None else None}


# ---- mixed-precision checks ---------------------------------------------------------------------------------------


def check_bf16_pruning(args: argparse.Namespace) -> dict:
    skipped = _skip_without_cuda(args, bf16=True)
    if skipped:
        return skipped
    with tempfile.TemporaryDirectory() as folder:
        trainer = make_trainer(folder, args.steps, bf16=True, use_cpu=args.cpu)
        return {"status": "passed", "details": _prune_and_check(trainer, "bf16", args.steps)}


def check_fp16_pruning(args: argparse.Namespace) -> dict:
    skipped = _skip_without_cuda(args)
    if skipped:
        return skipped
    with tempfile.TemporaryDirectory() as folder:
        trainer = make_trainer(folder, args.steps, fp16=True)
        assert trainer._loss_scaler() is not None, "fp16 without a GradScaler"
        return {"status": "passed", "details": _prune_and_check(trainer, "fp16", args.steps)}


def check_fp16_overflow(args: argparse.Namespace) -> dict:
    skipped = _skip_without_cuda(args)
    if skipped:
        return skipped
    steps = max(args.steps, 48)
    with tempfile.TemporaryDirectory() as folder:
        trainer = make_trainer(folder, steps, fp16=True, max_grad_norm=1.0)
        trainer.accelerator.scaler = torch.amp.GradScaler("cuda", init_scale=2.0**40)  # before prepare() uses it
        log = StepLog(trainer)
        trainer.add_callback(log)
        initial = l0_state(trainer)
        trainer.train()
    overflows = log.overflow_steps()
    assert overflows, "no step overflowed at a scale of 2^40"
    first_clean = next((s["step"] for s in log.steps if s not in overflows), None)
    assert first_clean is not None, "every step overflowed; raise --steps"
    moved_on_overflow = [s["step"] for s in overflows if s["gates_moved"] or s["weights_moved"]]
    assert not moved_on_overflow, f"gates or weights moved on overflow steps {moved_on_overflow}"
    assert not nonfinite(l0_state(trainer)), "non-finite gates"
    assert any(not torch.equal(l0_state(trainer)[k], v) for k, v in initial.items()), "the gates never learned"
    return {"status": "passed", "details": {
        "steps": steps, "overflow_steps": len(overflows), "first_clean_step": first_clean,
        "accelerate_saw_overflows": sum(s["accelerate_skipped"] for s in overflows),
        "final_scale": trainer._loss_scaler().get_scale(),
    }}


def check_fp16_nan_batch(args: argparse.Namespace) -> dict:
    skipped = _skip_without_cuda(args)
    if skipped:
        return skipped
    with tempfile.TemporaryDirectory() as folder:
        trainer = make_trainer(folder, 8, dataset=RandomVQA(nan_rows=(13,)), fp16=True)
        try:
            trainer.train()
        except NonFiniteError as error:
            message = str(error)
        else:
            raise AssertionError("a NaN image did not stop the fp16 run")
        assert "example_id=[1013]" in message, message[:500]
        assert not nonfinite(l0_state(trainer)) and not nonfinite(trainer.model.state_dict())
        trainer = make_trainer(folder, 8, dataset=RandomVQA(nan_rows=(13,)), fp16=True, skip_nonfinite_batches=True)
        trainer.train()
        counter = trainer.nonfinite_counter
        assert (counter.skipped_steps, counter.skipped_batches) == (1, 1), vars(counter)
        assert not nonfinite(l0_state(trainer)) and not nonfinite(trainer.model.state_dict())
    return {"status": "passed", "details": {"stop_message": message.splitlines()[0],
                                            "skipped_step": counter.last_skipped_step}}


# ---- distributed: accelerate launch with the example configs --------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def _launch_worker(config: str, processes: int, timeout: int = 900) -> list[dict]:
    """Run ``tests/accelerate_prune_worker.py`` under ``accelerate launch`` with an example config; the results of
    every process."""
    with tempfile.TemporaryDirectory() as folder:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                   str(ROOT / "examples" / "accelerate_configs" / config), "--num_processes", str(processes),
                   "--mixed_precision", "no", "--main_process_port", str(port),
                   str(ROOT / "tests" / "accelerate_prune_worker.py"), folder]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, f"the worker failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
        return [torch.load(Path(folder) / f"results_rank{rank}.pt") for rank in range(processes)]


def _max_difference(a: dict, b: dict) -> float:
    return max(float((a[key].float() - b[key].float()).abs().max()) for key in a)


def _check_worker_results(results: list[dict]) -> dict:
    details = {"backend": results[0]["backend"], "sharded": results[0]["sharded"], "processes": len(results)}
    for rank, result in enumerate(results):
        resume_gap = _max_difference(result["uninterrupted"], result["resumed"])
        interrupted_gap = _max_difference(result["uninterrupted"], result["interrupted"])
        masked_gap = float((result["masked"] - result["materialised"]).abs().max())
        details[f"rank{rank}"] = {"resumed_vs_uninterrupted_max_abs": resume_gap,
                                  "stopped_at_2_vs_uninterrupted_max_abs": interrupted_gap,
                                  "masked_vs_materialised_max_abs": masked_gap, "finite": result["finite"],
                                  "pruned_parameters": result["pruned_params"],
                                  "narrow_student_refused": result.get("distill_error", "")[:80]}
        assert result["finite"], f"rank {rank}: a non-finite weight, gate or logit"
        assert interrupted_gap > 0, "stopping at step 2 changed nothing: the resume check would prove nothing"
        assert resume_gap <= 1e-5, f"rank {rank}: resumed run differs from the uninterrupted one by {resume_gap}"
        assert masked_gap <= 1e-4, f"rank {rank}: masked and materialised logits differ by {masked_gap}"
    return details


def check_fsdp_resume_prune(args: argparse.Namespace) -> dict:
    if not torch.cuda.is_available():
        return {"status": "skipped", "details": {"reason": "no CUDA device (accelerate runs FSDP on GPU backends only; "
                                                           "FSDP2 on two gloo CPU processes is in the test suite)"}}
    results = _launch_worker("fsdp.yaml", torch.cuda.device_count())
    details = _check_worker_results(results)
    assert results[0]["sharded"] == "fsdp", f"the student was not sharded by FSDP: {results[0]['sharded']}"
    assert "FSDP cannot optimise" in results[0].get("distill_error", ""), "a narrow student was not refused"
    return {"status": "passed", "details": details}


def check_deepspeed_zero2_resume_prune(args: argparse.Namespace) -> dict:
    if not torch.cuda.is_available():
        return {"status": "skipped", "details": {"reason": "no CUDA device (ZeRO-2/3 in one CPU process are in the "
                                                           "test suite when deepspeed is installed)"}}
    if importlib.util.find_spec("deepspeed") is None:
        return {"status": "skipped", "details": {"reason": "deepspeed is not installed"}}
    results = _launch_worker("deepspeed_zero2.yaml", torch.cuda.device_count())
    details = _check_worker_results(results)
    assert results[0]["engine"] == "DeepSpeedEngine" and results[0]["zero_stage"] == 2, results[0]["engine"]
    return {"status": "passed", "details": details}


def check_ddp_two_processes(args: argparse.Namespace) -> dict:
    if torch.cuda.device_count() < 2:
        return {"status": "skipped", "details": {
            "reason": f"needs 2 CUDA devices, found {torch.cuda.device_count()} (NCCL cannot run two ranks on one GPU; "
                      "DDP with two gloo processes on the CPU is in the test suite)"}}
    results = _launch_worker("ddp.yaml", 2)
    details = _check_worker_results(results)
    gap = _max_difference(results[0]["resumed"], results[1]["resumed"])
    details["rank0_vs_rank1_max_abs"] = gap
    assert gap == 0, f"the two processes ended with different weights or gates ({gap})"
    return {"status": "passed", "details": details}


#: name -> check; run in this order.
CHECKS: dict[str, Callable[[argparse.Namespace], dict]] = {
    "bf16_pruning": check_bf16_pruning,
    "fp16_pruning": check_fp16_pruning,
    "fp16_overflow": check_fp16_overflow,
    "fp16_nan_batch": check_fp16_nan_batch,
    "fsdp_resume_prune": check_fsdp_resume_prune,
    "deepspeed_zero2_resume_prune": check_deepspeed_zero2_resume_prune,
    "ddp_two_processes": check_ddp_two_processes,
}


def run_check(name: str, args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    try:
        result = CHECKS[name](args)
    except Exception as error:  # a check that fails is reported, and the others still run
        result = {"status": "failed", "details": {"error": f"{type(error).__name__}: {error}",
                                                  "traceback": traceback.format_exc(limit=6)}}
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(CHECKS), help="run these checks only")
    parser.add_argument("--steps", type=int, default=24, help="optimizer steps of the pruning runs")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--cpu", action="store_true", help="run the bf16 check on the CPU (smoke test)")
    args = parser.parse_args(argv)

    device = "cpu" if args.cpu else torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA"
    print(f"torch {torch.__version__}, {device}, {platform.machine()}")
    results = {}
    for name in args.only or CHECKS:
        results[name] = run_check(name, args)
        print(f"[{results[name]['status']}] {name} ({results[name]['seconds']} s): "
              f"{json.dumps(results[name]['details'], default=str)[:2000]}", flush=True)

    print("\n| check | status | seconds |\n|---|---|---|")
    for name, result in results.items():
        print(f"| {name} | {result['status']} | {result['seconds']} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"device": device, "torch": torch.__version__, "results": results}, handle, indent=2,
                      default=str)
    return results


if __name__ == "__main__":
    outcome = main()
    raise SystemExit(1 if any(result["status"] == "failed" for result in outcome.values()) else 0)
