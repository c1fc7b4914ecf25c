"""Worker that prunes, resumes and exports under any accelerate config: ``accelerate launch --config_file
examples/accelerate_configs/<config>.yaml [--num_processes N] tests/accelerate_prune_worker.py DIR``.

Used by the DeepSpeed tests (``deepspeed_zero{2,3}.yaml`` with one process: accelerate runs DeepSpeed on the CPU
only with one process, as its CPU state does not count DeepSpeed's gloo processes) and by ``benchmarks/gpu_check.py``
(DDP, FSDP, DeepSpeed on CUDA). It exercises what differs under those backends: the engine or FSDP wraps the
student, ZeRO-3 and FSDP shard its parameters, and transformers resumes DeepSpeed with ``deepspeed_load_checkpoint``
instead of ``_load_from_checkpoint``. The worker runs the pruning trainer three times - 4 steps uninterrupted, stopped
after the checkpoint at step 2, resumed from that checkpoint - then ``prune()``s the resumed student (every process)
and compares its masked and materialised logits. It also records the error that refuses distillation into a
narrower student under FSDP / DeepSpeed (hidden-state projections outside the model). Each process writes
``results_rank<i>.pt``.
"""

import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.distillation_helpers import BatchDataset, narrow_student, pruning_pair, tiny_batch, tiny_config  # noqa: E402

from efficientvlm import EfficientVLMForVisualQuestionAnswering as HEAD  # noqa: E402
from efficientvlm.distillation import DistillationConfig, DistillationTrainer  # noqa: E402
from efficientvlm.pruning import ModalAdaptivePruningTrainer, PruningConfig, gates_applied  # noqa: E402
from efficientvlm.pruning.distributed import full_state_dict, sharding_of  # noqa: E402


class StopAt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        control.should_training_stop = state.global_step >= 2


def prune_run(output_dir: Path, callbacks=(), resume=None):
    teacher, student = pruning_pair()
    args = PruningConfig(output_dir=str(output_dir), per_device_train_batch_size=2, max_steps=4, learning_rate=1e-3,
                         save_strategy="steps", save_steps=2, logging_steps=1, report_to=[], disable_tqdm=True,
                         use_cpu=False, seed=0, target_sparsity=0.5, lagrangian_warmup_steps=2,
                         reg_learning_rate=0.1, prune_structures="heads,ffn,blocks")
    trainer = ModalAdaptivePruningTrainer(model=student, args=args, teacher_model=teacher,
                                          train_dataset=BatchDataset(HEAD, size=8), callbacks=list(callbacks))
    trainer.train(resume_from_checkpoint=resume)
    student_state = full_state_dict(trainer.model_wrapped)
    state = {f"student.{k}": v.detach().float().cpu().clone() for k, v in student_state.items()}
    state |= {f"gates.{k}": v.detach().cpu().clone() for k, v in trainer.l0_module.state_dict().items()}
    optimizer_state = trainer.l0_optimizer.state_dict()["state"]
    state |= {f"gates_optimizer.{i}": v["exp_avg"].detach().cpu().clone() for i, v in optimizer_state.items()}
    return trainer, state


def distill_run(output_dir: Path):
    torch.manual_seed(0)
    teacher = HEAD(tiny_config())
    args = DistillationConfig(output_dir=str(output_dir), max_steps=1, report_to=[], use_cpu=False)
    DistillationTrainer(model=narrow_student(teacher.config, HEAD), args=args, teacher_model=teacher,
                        train_dataset=BatchDataset(HEAD, size=8))


def main(output_dir: str) -> None:
    out = Path(output_dir)
    _, uninterrupted = prune_run(out / "full")
    _, interrupted = prune_run(out / "part", callbacks=[StopAt()])
    trainer, resumed = prune_run(out / "part", resume=str(out / "part" / "checkpoint-2"))
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    zero_stage = plugin.zero_stage if plugin is not None else None
    sharded = sharding_of(trainer.model_wrapped)

    pruned = trainer.prune()
    inputs = tiny_batch(HEAD, batch=3, seed=3)
    inputs.pop("labels")
    engine = trainer.model_wrapped
    engine.eval()  # (DeepSpeedEngine.eval returns None)
    with torch.no_grad(), gates_applied(engine, trainer.final_gates()):
        masked = engine(**{key: value.to(trainer.args.device) for key, value in inputs.items()}).logits.cpu()
    device = next(pruned.parameters()).device
    with torch.no_grad():
        materialised = pruned.eval()(**{key: value.to(device) for key, value in inputs.items()}).logits.cpu()
    results = {"zero_stage": zero_stage, "sharded": sharded, "backend": str(trainer.accelerator.distributed_type),
               "engine": type(engine).__name__,
               "uninterrupted": uninterrupted, "interrupted": interrupted, "resumed": resumed,
               "masked": masked.float(), "materialised": materialised.float(),
               "pruned_params": sum(p.numel() for p in pruned.parameters())}

    try:
        distill_run(out / "distill_refused")
    except ValueError as error:
        results["distill_error"] = str(error)
    results["finite"] = all(torch.isfinite(value).all().item() for value in resumed.values()
                            if value.is_floating_point()) and bool(torch.isfinite(results["materialised"]).all())
    torch.save(results, out / f"results_rank{trainer.args.process_index}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
