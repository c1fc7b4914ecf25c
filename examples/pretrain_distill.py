"""General distillation (the paper's GeneralDistill.py): pre-train an EfficientVLM student, made from the teacher by
copying every other layer, on image-text pairs with ITC, ITM and MLM plus knowledge distillation from the teacher's
logits, hidden states and attention maps. The pairs are a JSON file or imagefolder held in memory (--train_file), or
are streamed from tar shards (--train_shards) or a datasets source (--train_stream); the student and the processor
are saved in --output_dir.

The student is built from the teacher by copying every other layer (6 vision, 3 text, 3 fusion layers for the
X-VLM_clip teacher) and trained with ITC + ITM + MLM plus KD on the ITM and MLM logits, hidden states and attention
maps of all three encoders (``DistillationConfig`` holds the weights; the defaults are the paper's).

Data, one of:

* ``--train_file``: image-text pairs as a JSON file in the official X-VLM format, a list of ``{"image": path,
  "caption": str | list[str]}`` (paths relative to ``--image_root``, default the file's folder), or a ``datasets``
  imagefolder: a folder of images with a ``metadata.jsonl`` holding ``file_name`` and ``caption``. Held in memory.
* ``--train_shards``: tar shards in the layout img2dataset writes (``<key>.jpg`` + ``<key>.txt`` per pair), as a
  pattern such as ``shards/{00000..00099}.tar`` or ``shards/*.tar``. Streamed.
* ``--train_stream``: a ``datasets`` source read with ``streaming=True``, a Hub id or a local folder (e.g. of
  parquet files), with an ``--image_column`` and a ``--caption_column``. Streamed.

A stream (``efficientvlm.data.ImageTextStream``) is never loaded into memory. Each process reads its own shards with
its DataLoader workers (``--dataloader_num_workers``; every process x worker needs a shard); the stream repeats epochs
without end, so give ``--max_steps``; ``--resume_from_checkpoint`` continues with the pair after the last one trained
on, without re-reading what came before (the script sets ``--ignore_data_skip``, which this needs). A bad sample (no
caption, an image that does not decode) stops the run naming its shard and key, unless ``--skip_bad_samples``.

Examples (the paper's schedule, 8 GPUs x 128):

    accelerate launch examples/pretrain_distill.py \\
        --teacher_name_or_path path/to/xvlm-clip-teacher --train_file data/pretrain_4m.json --image_root data \\
        --output_dir out/efficientvlm-student --per_device_train_batch_size 128 --num_train_epochs 41 \\
        --learning_rate 1e-4 --weight_decay 0.01 --adam_beta2 0.98 --lr_scheduler_type linear --bf16 \\
        --save_steps 5000 --logging_steps 100

    # from img2dataset shards: 41 epochs of 5.1M pairs at 1,024 pairs a step are about 205,000 steps
    accelerate launch examples/pretrain_distill.py \\
        --teacher_name_or_path path/to/xvlm-clip-teacher --train_shards "data/pretrain_4m/{00000..00511}.tar" \\
        --output_dir out/efficientvlm-student --per_device_train_batch_size 128 --max_steps 205000 \\
        --dataloader_num_workers 8 --learning_rate 1e-4 --weight_decay 0.01 --adam_beta2 0.98 \\
        --lr_scheduler_type linear --bf16 --save_steps 5000 --logging_steps 100

Under ``accelerate launch`` the ITC loss contrasts all 8 x 128 = 1,024 examples of a step and ITM hard negatives
are mined from all of them, as in one process on the whole batch (``EfficientVLMContrastiveMixin``); the captions of
one image share its ``image_id`` in every process.

The output folder holds the student and the processor (``AutoModel`` / ``AutoProcessor`` load it after
``import efficientvlm``); checkpoints also hold the trainer state, including the hidden-state projections when the
student is narrower than the teacher (``--resume_from_checkpoint`` restores all of it, under every backend).
``--seed`` is set before the student is built. A user mistake (a missing checkpoint or file, a bad flag value) prints
one error message and exits with status 2; ``--debug`` shows the traceback.

With ``examples/accelerate_configs/`` (see the README): ``--config_file .../ddp.yaml``, ``fsdp.yaml`` (FSDP2) or
``deepspeed_zero2.yaml`` / ``deepspeed_zero3.yaml`` (``pip install "efficientvlm[deepspeed]"``). A student narrower
than the teacher needs DDP: FSDP and DeepSpeed only optimise the model's own parameters, not the trainer's
hidden-state projections (the trainer says so before training).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from transformers import set_seed

from efficientvlm.data import ImageTextStream
from efficientvlm.distillation import (
    DistillationConfig,
    DistillationTrainer,
    ImageTextPretrainingCollator,
    check_teacher_trained,
    load_image_text_pairs,
)
from efficientvlm.models.modeling_efficientvlm import EfficientVLMForPreTraining
from efficientvlm.scripts import script_parser
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
    train_file: str | None = field(
        default=None, metadata={"help": "Training pairs held in memory: an X-VLM-format JSON file, or an imagefolder "
                                        "with metadata.jsonl."})
    train_shards: str | None = field(
        default=None, metadata={"help": "Training pairs streamed from tar shards (img2dataset's layout: <key>.jpg + "
                                        "<key>.txt): a path, glob or brace pattern such as shards/{00000..00099}.tar; "
                                        "several joined by '::'."})
    train_stream: str | None = field(
        default=None, metadata={"help": "Training pairs streamed with datasets (load_dataset(..., streaming=True)): a "
                                        "Hub id or a local folder, e.g. of parquet files."})
    stream_split: str = field(default="train", metadata={"help": "Split of --train_stream."})
    image_column: str = field(default="image", metadata={"help": "Image column of --train_stream."})
    skip_bad_samples: bool = field(
        default=False, metadata={"help": "Skip (and log) streamed samples without a caption or with an image that "
                                         "does not decode, instead of stopping with the shard and key."})
    eval_file: str | None = field(default=None, metadata={"help": "Evaluation pairs, as for --train_file."})
    image_root: str | None = field(
        default=None, metadata={"help": "Folder the JSON files' image paths are relative to (default: their folder)."})
    caption_column: str = field(default="caption",
                                metadata={"help": "Caption column of an imagefolder or of --train_stream."})
    max_length: int = field(default=40, metadata={"help": "Longest caption in tokens, [CLS] and [SEP] included."})
    mlm_probability: float = field(default=0.25, metadata={"help": "Share of each caption's tokens to mask (paper: "
                                                                   "0.25; BERT: 0.15 with --max_masks 0)."})
    max_masks: int = field(default=8, metadata={"help": "Most masked tokens per caption (paper: 8); 0 = no cap."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N pairs of --train_file."})

    def __post_init__(self):
        given = [f"--{name}" for name in ("train_file", "train_shards", "train_stream") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError("Give the training pairs with exactly one of --train_file, --train_shards or "
                             f"--train_stream (got {', '.join(given) or 'none'}).")
        if self.max_train_samples is not None and not self.train_file:
            raise ValueError("--max_train_samples selects pairs of --train_file; a stream's length is set by "
                             "--max_steps.")

    @property
    def streaming(self) -> bool:
        return bool(self.train_shards or self.train_stream)


def load_train_dataset(data_args: DataArguments, training_args: DistillationConfig):
    """The training pairs: a ``Dataset`` for ``--train_file``, an ``ImageTextStream`` for the other two."""
    if not data_args.streaming:
        dataset = load_image_text_pairs(data_args.train_file, data_args.image_root, data_args.caption_column)
        if data_args.max_train_samples is not None:
            dataset = dataset.select(range(min(data_args.max_train_samples, len(dataset))))
        return dataset
    options = dict(rank=training_args.process_index, world_size=training_args.world_size,
                   seed=training_args.data_seed if training_args.data_seed is not None else training_args.seed,
                   on_error="skip" if data_args.skip_bad_samples else "raise")
    if data_args.train_shards:
        stream = ImageTextStream.from_tar_shards(data_args.train_shards, **options)
    else:
        stream = ImageTextStream.from_datasets(data_args.train_stream, split=data_args.stream_split,
                                               image_column=data_args.image_column,
                                               caption_column=data_args.caption_column, **options)
    stream.check_workers(training_args.dataloader_num_workers)
    return stream


def load_processor(name_or_path: str):
    """The ``EfficientVLMProcessor`` saved at ``name_or_path``."""
    from efficientvlm.models.processing_efficientvlm import EfficientVLMProcessor

    return EfficientVLMProcessor.from_pretrained(name_or_path)


def main(argv: list[str] | None = None) -> DistillationTrainer:
    parser = script_parser((ModelArguments, DataArguments, DistillationConfig), __doc__)
    model_args, data_args, training_args, script_args = parser.parse_args_into_dataclasses(args=argv)
    script_args.apply()
    if data_args.streaming:
        if training_args.max_steps <= 0:
            raise ValueError("A stream repeats its epochs without end: give the length of the run with --max_steps.")
        training_args.ignore_data_skip = True  # a resumed stream continues from its own saved position

    check_checkpoint_argument(model_args.teacher_name_or_path, "--teacher_name_or_path")
    set_seed(training_args.seed)  # before the student is built
    teacher = EfficientVLMForPreTraining.from_pretrained(model_args.teacher_name_or_path)
    check_teacher_trained(teacher)  # e.g. a base checkpoint: random ITC/ITM/MLM heads; fail before reading data
    student = create_student(teacher, model_args.vision_layers, model_args.text_layers, model_args.fusion_layers)
    processor = load_processor(model_args.processor_name_or_path or model_args.teacher_name_or_path)

    train_dataset = load_train_dataset(data_args, training_args)
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
