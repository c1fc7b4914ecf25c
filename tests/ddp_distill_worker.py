"""Worker for the DDP test: ``accelerate launch --num_processes 2 --cpu tests/ddp_distill_worker.py OUTPUT_DIR``.

Distils a tiny pre-training teacher into a narrower student (so hidden-state projections exist) for a few steps and
writes, per rank, the student's and the projections' weights plus a fingerprint of the batches the rank saw.
"""

import sys

import torch
from distillation_helpers import BatchDataset, narrow_student, tiny_config
from transformers import default_data_collator

from efficientvlm.distillation import DistillationConfig, DistillationTrainer
from efficientvlm.models.modeling_efficientvlm import EfficientVLMForPreTraining


def main(output_dir: str) -> None:
    torch.manual_seed(0)
    teacher = EfficientVLMForPreTraining(tiny_config())
    student = narrow_student(teacher.config, EfficientVLMForPreTraining)
    seen = []

    def collate(examples):
        batch = default_data_collator(examples)
        seen.append(batch["input_ids"].sum().item())
        return batch

    args = DistillationConfig(output_dir=output_dir, per_device_train_batch_size=2, gradient_accumulation_steps=2,
                              max_steps=2, learning_rate=1e-3, save_strategy="no", logging_steps=1, report_to=[],
                              disable_tqdm=True, use_cpu=True, seed=0)
    trainer = DistillationTrainer(model=student, args=args, teacher_model=teacher, data_collator=collate,
                                  train_dataset=BatchDataset(EfficientVLMForPreTraining, size=16))
    trainer.train()
    state = {f"student.{k}": v.clone() for k, v in student.state_dict().items()}
    state.update({f"projections.{k}": v.clone() for k, v in trainer.kd_projections.state_dict().items()})
    torch.save({"state": state, "seen": seen, "logs": trainer.state.log_history},
               f"{output_dir}/rank{trainer.args.process_index}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
