"""General distillation: pre-train an EfficientVLM student against a teacher (the paper's ``GeneralDistill.py``).

The student is built from the teacher by copying every other layer (6 vision, 3 text, 3 fusion layers for the
X-VLM_clip teacher) and trained with ITC + ITM + MLM plus KD on the ITM and MLM logits, hidden states and attention
maps of all three encoders (``DistillationConfig`` holds the weights; the defaults are the paper's).

Data: image-text pairs as a JSON file in the official X-VLM format, a list of ``{"image": path, "caption": str |
list[str]}`` (paths relative to ``--image_root``, default the file's folder), or a ``datasets`` imagefolder: a
folder of images with a ``metadata.jsonl`` holding ``file_name`` and ``caption``.

Example (the paper's schedule, 8 GPUs x 128):

    accelerate launch examples/pretrain_distill.py \
        --teacher_name_or_path path/to/xvlm-clip-teacher --train_file data/pretrain_4m.json --image_root data \
        --output_dir out/efficientvlm-student --per_device_train_batch_size 128 --num_train_epochs 41 \
        --learning_rate 1e-4 --weight_decay 0.01 --adam_beta2 0.98 --lr_scheduler_type linear --bf16 \
        --save_steps 5000 --logging_steps 100

Under ``accelerate launch`` the ITC loss contrasts all 8 x 128 = 1,024 examples of a step and ITM hard negatives
are mined from all of them, as in one process on the whole batch (``EfficientVLMContrastiveMixin``); the captions of
one image share its ``image_id`` in every process.

The output folder holds the student and the processor (``AutoModel`` / ``AutoProcessor`` load it after
``import efficientvlm``); checkpoints also hold the trainer state, including the hidden-state projections when the
student is narrower than the teacher (``--resume_from_checkpoint`` restores all of it). ``--seed`` is set before
the student is built. A user mistake (a missing checkpoint or file, a bad flag value) prints one error message and
exits with status 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser, set_seed

from efficientvlm.distillation import (
    DistillationConfig,
    DistillationTrainer,
    ImageTextPretrainingCollator,
    load_image_text_pairs,
)
from efficientvlm.models.modeling_efficientvlm import EfficientVLMForPreTraining
from efficientvlm.student import create_student
from efficientvlm.user_errors import check_checkpoint_argument, run_script


@dataclass
class ModelArguments:
    teacher_name_or_path: str = field(
        metadata={"help": "The teacher: a folder (or Hub id) holding an EfficientVLMForPreTraining checkpoint."})
    processor_name_or_path: str | None = field(
        default=None, metadata={"help": "Where the EfficientVLMProcessor is saved (default: the teacher's folder)."})
    vision_layers: int = field(default=6, metadata={"help": "Student vision layers, taken uniformly from the teacher."})
    text_layers: int = field(default=3, metadata={"help": "Student text layers, taken uniformly from the teacher."})
    fusion_layers: int = field(default=3, metadata={"help": "Student fusion layers, taken uniformly from the teacher."})


@dataclass
class DataArguments:
    train_file: str = field(
        metadata={"help": "Training pairs: an X-VLM-format JSON file, or an imagefolder with metadata.jsonl."})
    eval_file: str | None = field(default=None, metadata={"help": "Evaluation pairs, in the same formats."})
    image_root: str | None = field(
        default=None, metadata={"help": "Folder the JSON files' image paths are relative to (default: their folder)."})
    caption_column: str = field(default="caption", metadata={"help": "Caption column of an imagefolder."})
    max_length: int = field(default=40, metadata={"help": "Longest caption in tokens, [CLS] and [SEP] included."})
    mlm_probability: float = field(default=0.25, metadata={"help": "Share of each caption's tokens to mask (paper: "
                                                                   "0.25; BERT: 0.15 with --max_masks 0)."})
    max_masks: int = field(default=8, metadata={"help": "Most masked tokens per caption (paper: 8); 0 = no cap."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training pairs."})


def load_processor(name_or_path: str):
    """The ``EfficientVLMProcessor`` saved at ``name_or_path``."""
    from efficientvlm.models.processing_efficientvlm import EfficientVLMProcessor

    return EfficientVLMProcessor.from_pretrained(name_or_path)


def main(argv: list[str] | None = None) -> DistillationTrainer:
    parser = HfArgumentParser((ModelArguments, DataArguments, DistillationConfig))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)

    check_checkpoint_argument(model_args.teacher_name_or_path, "--teacher_name_or_path")
    set_seed(training_args.seed)  # before the student is built
    teacher = EfficientVLMForPreTraining.from_pretrained(model_args.teacher_name_or_path)
    student = create_student(teacher, model_args.vision_layers, model_args.text_layers, model_args.fusion_layers)
    processor = load_processor(model_args.processor_name_or_path or model_args.teacher_name_or_path)

    train_dataset = load_image_text_pairs(data_args.train_file, data_args.image_root, data_args.caption_column)
    if data_args.max_train_samples is not None:
        train_dataset = train_dataset.select(range(min(data_args.max_train_samples, len(train_dataset))))
    eval_dataset = None
    if data_args.eval_file is not None:
        eval_dataset = load_image_text_pairs(data_args.eval_file, data_args.image_root, data_args.caption_column)
    collator = ImageTextPretrainingCollator(processor, max_length=data_args.max_length,
                                            mlm_probability=data_args.mlm_probability,
                                            max_masks=data_args.max_masks or None)

    trainer = DistillationTrainer(model=student, args=training_args, teacher_model=teacher,
                                  train_dataset=train_dataset, eval_dataset=eval_dataset, data_collator=collator,
                                  processing_class=processor)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()  # the student and the processor, into output_dir
    if eval_dataset is not None:
        trainer.log_metrics("eval", trainer.evaluate())
    return trainer


if __name__ == "__main__":
    sys.exit(run_script(main))
