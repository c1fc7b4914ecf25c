"""Worker for the pruning DDP tests: ``accelerate launch --multi_gpu --num_processes 2 tests/ddp_prune_worker.py DIR
[nan]``.

Prunes a tiny VQA student under a tiny teacher for a few steps and writes, per rank, the gates' parameters, the
student's weights, a fingerprint of the batches the rank saw and the non-finite counts. With ``nan``, one example's
image holds a NaN and ``skip_nonfinite_batches`` is on.
"""

import sys
from pathlib import Path

import torch
from transformers import default_data_collator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.distillation_helpers import BatchDataset, tiny_config  # noqa: E402

from efficientvlm import EfficientVLMForVisualQuestionAnswering, create_student  # noqa: E402
from efficientvlm.pruning import ModalAdaptivePruningTrainer, PruningConfig  # noqa: E402


def main(output_dir: str, nan: bool = False) -> None:
    torch.manual_seed(0)
    teacher = EfficientVLMForVisualQuestionAnswering(tiny_config())
    student = create_student(teacher, vision_layers=2, text_layers=1, fusion_layers=1)
    seen = []

    def collate(examples):
        batch = default_data_collator(examples)
        seen.append(batch["input_ids"].sum().item())
        return batch

    args = PruningConfig(output_dir=output_dir, per_device_train_batch_size=2, gradient_accumulation_steps=2,
                         max_steps=3, learning_rate=1e-3, save_strategy="no", logging_steps=1, report_to=[],
                         disable_tqdm=True, use_cpu=True, seed=0, target_sparsity=0.5, lagrangian_warmup_steps=1,
                         reg_learning_rate=0.1, skip_nonfinite_batches=nan)
    dataset = BatchDataset(EfficientVLMForVisualQuestionAnswering, size=16)
    if nan:
        row = dataset.rows[5]
        dataset.rows[5] = {**row, "pixel_values": torch.full_like(row["pixel_values"], torch.nan)}
    trainer = ModalAdaptivePruningTrainer(model=student, args=args, teacher_model=teacher, data_collator=collate,
                                          train_dataset=dataset)
    trainer.train()
    state = {f"gates.{k}": v.detach().clone() for k, v in trainer.l0_module.state_dict().items()}
    state.update({f"student.{k}": v.clone() for k, v in student.state_dict().items()})
    counter = trainer.nonfinite_counter
    torch.save({"state": state, "seen": seen, "skipped": (counter.skipped_steps, counter.skipped_batches,
                                                          counter.last_skipped_step)},
               f"{output_dir}/rank{trainer.args.process_index}.pt")


if __name__ == "__main__":
    main(sys.argv[1], nan=sys.argv[2:] == ["nan"])
