"""Worker for the streaming DDP test: ``accelerate launch --multi_gpu --num_processes 2 tests/ddp_stream_worker.py
DIR`` with tar shards in ``DIR/shards``.

Each process distils a tiny pre-training teacher on an ``ImageTextStream`` read by 2 DataLoader workers, three times:
4 steps uninterrupted (one epoch); 2 steps, checkpointed and stopped; resumed from that checkpoint to step 4. It
writes, per rank, the ``image_ids`` of every batch each run trained on (``DIR/rank<r>.json``).
"""

import json
import sys

import torch
from distillation_helpers import StandInProcessor, narrow_student, tiny_config
from transformers import TrainerCallback

from efficientvlm.data import ImageTextStream
from efficientvlm.distillation import DistillationConfig, DistillationTrainer, ImageTextPretrainingCollator
from efficientvlm.models.modeling_efficientvlm import EfficientVLMForPreTraining


class RecordingTrainer(DistillationTrainer):
    def training_step(self, model, inputs, num_items_in_batch=None):
        self.seen.append(inputs["image_ids"].tolist())
        return super().training_step(model, inputs, num_items_in_batch)


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if self.step is not None and state.global_step >= self.step:
            control.should_training_stop = True


def run(folder: str, output: str, stop_at=None, resume=None) -> RecordingTrainer:
    torch.manual_seed(0)
    teacher = EfficientVLMForPreTraining(tiny_config())
    student = narrow_student(teacher.config, EfficientVLMForPreTraining)
    args = DistillationConfig(output_dir=f"{folder}/{output}", per_device_train_batch_size=3, max_steps=4,
                              save_strategy="steps", save_steps=2, logging_steps=1, report_to=[], disable_tqdm=True,
                              use_cpu=True, seed=0, dataloader_num_workers=2, ignore_data_skip=True)
    stream = ImageTextStream.from_tar_shards(f"{folder}/shards/*.tar", seed=1)  # rank, world size: from the launcher
    trainer = RecordingTrainer(model=student, args=args, teacher_model=teacher, train_dataset=stream,
                               data_collator=ImageTextPretrainingCollator(StandInProcessor(), max_length=8),
                               callbacks=[StopAt(stop_at)])
    trainer.seen = []
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def main(folder: str) -> None:
    full = run(folder, "full")
    part = run(folder, "part", stop_at=2)
    resumed = run(folder, "part", resume=f"{folder}/part/checkpoint-2")
    with open(f"{folder}/rank{full.args.process_index}.json", "w") as handle:
        json.dump({"full": full.seen, "part": part.seen, "resumed": resumed.seen}, handle)


if __name__ == "__main__":
    main(sys.argv[1])
