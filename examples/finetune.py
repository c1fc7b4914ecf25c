"""Fine-tune an EfficientVLM model on one task (VQA, NLVR2, retrieval or captioning), evaluate it, and save a
Hub-ready checkpoint and processor in --output_dir. The data is the offline synthetic shapes benchmark or annotation
files in the official X-VLM JSON format; the model is a saved EfficientVLM checkpoint, a CLIP vision tower and a BERT
text model, or a small random model; with --lora_r only LoRA adapters and the task head are trained, then merged.

    # the synthetic shapes benchmark (offline), VQA, from scratch at a small size:
    python examples/finetune.py --task vqa --dataset shapes --output_dir runs/vqa --num_train_epochs 3

    # real data in the official X-VLM / EfficientVLM JSON format, starting from a pre-trained student:
    python examples/finetune.py --task vqa --model_name_or_path path/to/student \\
        --train_file data/vqa_train.json --eval_file data/vqa_val.json --image_root images/ \\
        --answer_list data/answer_list.json --output_dir runs/vqa

    # LoRA: train rank-8 adapters on the text and fusion encoders (and the task head), save the merged model:
    python examples/finetune.py --task vqa --model_name_or_path path/to/student --lora_r 8 \\
        --lora_encoders text fusion ... --output_dir runs/vqa-lora

    # the paper's generative VQA model: an answer decoder initialised from the fusion layers, ranking the answers:
    python examples/finetune.py --task vqa --vqa_head generative --model_name_or_path path/to/student \\
        ... --output_dir runs/vqa-generative

Tasks: ``vqa`` (``--vqa_head classifier``: scores over the answer vocabulary; ``--vqa_head generative``: the paper's
answer decoder, trained on the weighted annotated answers and evaluated by ranking the answer list), ``nlvr2``,
``retrieval`` (ITC + ITM), ``captioning``. Without ``--vqa_head`` a checkpoint keeps its head (a generative one stays
generative), any other starts the classifier; a generative head built from a checkpoint without one gets an answer
decoder shaped like, and initialised from, its fusion layers (and a pre-training checkpoint's MLM head as its LM
head); a classifier is not made from a generative checkpoint (a one-line error says so). How each head is built and
fed is the task registry's (``efficientvlm.tasks.TASKS``).

The model comes from ``--model_name_or_path`` (any EfficientVLM checkpoint: a pre-trained one gives the encoders,
the task head is initialised fresh), from ``--vision_model`` + ``--text_model`` (a CLIP and a BERT checkpoint), or,
with neither, a small random model whose sizes are set by ``--hidden_size`` and the ``--*_layers`` flags.
``--seed`` is set before the model is built, so two runs with the same seed give the same model. A user mistake (a
missing checkpoint or file, a bad flag value) prints one error message and exits with status 2; ``--debug`` shows
the traceback.

With ``--lora_r`` > 0 only LoRA adapters (``efficientvlm.lora_config``: attention projections and FFNs of the
``--lora_encoders``, surviving layers only in a pruned model) and the task head are trained; the adapters are merged
before evaluation and saving, so the output is a plain EfficientVLM checkpoint (e.g. a task teacher for
``examples/prune.py``).
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoProcessor, AutoTokenizer, Trainer, TrainingArguments, set_seed

from efficientvlm import EfficientVLMImageProcessor, EfficientVLMProcessor, lora_config
from efficientvlm.lora import LORA_ENCODERS, merge_lora, model_encoders
from efficientvlm.scripts import script_parser
from efficientvlm.tasks import DOWNSTREAM_TASKS, TASKS, TaskDataArguments, TaskHeadArguments, small_config
from efficientvlm.user_errors import check_checkpoint_argument, run_script

logger = logging.getLogger("finetune")

@dataclass
class TaskArguments:
    task: str = field(default="vqa", metadata={"help": "vqa | nlvr2 | retrieval | captioning",
                                               "choices": sorted(DOWNSTREAM_TASKS)})


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "EfficientVLM checkpoint (path or Hub id)"})
    vision_model: str | None = field(default=None, metadata={"help": "CLIP checkpoint for the vision tower"})
    text_model: str | None = field(default=None, metadata={"help": "BERT checkpoint for text and fusion layers"})
    hidden_size: int = field(default=128, metadata={"help": "random init: width of every encoder"})
    vision_layers: int = field(default=6, metadata={"help": "random init: vision layers"})
    text_layers: int = field(default=2, metadata={"help": "random init: text layers"})
    fusion_layers: int = field(default=2, metadata={"help": "random init: fusion layers"})
    image_size: int | None = field(default=None, metadata={"help": "fine-tuning resolution (position embeddings "
                                                                    "are interpolated to it)"})


@dataclass
class LoraArguments:
    lora_r: int = field(default=0, metadata={"help": "LoRA rank; 0 fine-tunes every weight instead"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (updates scaled by alpha / r)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA adapters' input"})
    lora_encoders: list[str] = field(default_factory=list,
                                     metadata={"help": "encoders that get adapters (vision, text, fusion; decoder for "
                                                       "a generative VQA model); default: all the model has"})


def build_model(head, args: ModelArguments, labels, tokenizer):
    """A model of ``head`` (a ``TaskHead`` of the registry, which knows how to build itself from each source) and
    its processor."""
    if args.model_name_or_path:
        processor = AutoProcessor.from_pretrained(args.model_name_or_path)
        model = head.build(labels, processor.tokenizer, checkpoint=args.model_name_or_path)
    elif args.vision_model and args.text_model:
        tokenizer = AutoTokenizer.from_pretrained(args.text_model)
        model = head.build(labels, tokenizer, vision_model=args.vision_model, text_model=args.text_model)
        size = model.config.vision_config.image_size
        processor = EfficientVLMProcessor(EfficientVLMImageProcessor(size={"height": size, "width": size}), tokenizer)
    else:
        if tokenizer is None:
            raise ValueError("A random model needs a tokenizer: use --dataset shapes, or give --model_name_or_path.")
        config = small_config(tokenizer, (args.vision_layers, args.text_layers, args.fusion_layers),
                              hidden_size=args.hidden_size, head_dim=min(32, args.hidden_size),
                              image_size=args.image_size or 64, labels=labels)
        model = head.build(labels, tokenizer, config=config)
        size = config.vision_config.image_size
        processor = EfficientVLMProcessor(EfficientVLMImageProcessor(size={"height": size, "width": size}), tokenizer)
    if args.image_size and args.image_size != model.config.vision_config.image_size:
        model.resize_position_embeddings(args.image_size)
        processor.image_processor.size = {"height": args.image_size, "width": args.image_size}
    return model, processor


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = script_parser((TaskArguments, TaskHeadArguments, TaskDataArguments, ModelArguments, LoraArguments,
                            TrainingArguments), __doc__)
    (task_args, head_args, data_args, model_args, lora_args, training_args,
     script_args) = parser.parse_args_into_dataclasses(args=argv)
    script_args.apply()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stdout)
    if task_args.task not in DOWNSTREAM_TASKS:
        raise ValueError(f"--task must be one of {sorted(DOWNSTREAM_TASKS)}, got {task_args.task!r}.")
    if lora_args.lora_r < 0:
        raise ValueError(f"--lora_r must be >= 0 (0: no LoRA), got {lora_args.lora_r}.")
    unknown = sorted(set(lora_args.lora_encoders) - set(LORA_ENCODERS))
    if unknown:
        raise ValueError(f"--lora_encoders: unknown {unknown}; choose among {list(LORA_ENCODERS)}.")
    for flag, value in (("--model_name_or_path", model_args.model_name_or_path),
                        ("--vision_model", model_args.vision_model), ("--text_model", model_args.text_model)):
        if value:
            check_checkpoint_argument(value, flag)
    task = TASKS[task_args.task]
    head = head_args.head(task.name, model_args.model_name_or_path)  # before any data is read
    set_seed(training_args.seed)  # before the model is built: its initialisation is part of the run
    training_args.remove_unused_columns = False  # the collator reads the raw image/text columns
    output_dir = Path(training_args.output_dir)
    data = data_args.load(task.name, output_dir)
    model, processor = build_model(head, model_args, data.labels, data.tokenizer)
    collator = task.collator(processor, data.labels, data_args.max_length, model=model)
    logger.info("%s: %.1fM parameters, %d training examples", type(model).__name__,
                sum(p.numel() for p in model.parameters()) / 1e6, len(data.train))
    if lora_args.lora_r:
        from peft import get_peft_model

        encoders = lora_args.lora_encoders or model_encoders(model)
        model = get_peft_model(model, lora_config(model, r=lora_args.lora_r, lora_alpha=lora_args.lora_alpha,
                                                  lora_dropout=lora_args.lora_dropout, encoders=encoders))
        trainable, total = model.get_nb_trainable_parameters()
        logger.info("LoRA (r=%d, %s): %d of %d parameters trained", lora_args.lora_r, "+".join(encoders), trainable,
                    total)
    trainer = Trainer(model=model, args=training_args, train_dataset=data.train, data_collator=collator)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    if lora_args.lora_r:
        model = merge_lora(trainer.model)  # a plain model of the task's class, adapters folded in
    metrics = task.evaluate(model, processor, data.eval) if data.eval is not None else {}
    logger.info("evaluation: %s", json.dumps(metrics, indent=2))
    if lora_args.lora_r:
        model.save_pretrained(output_dir)  # the merged model (trainer.save_model would write the adapters only)
    else:
        trainer.save_model(str(output_dir))
    processor.save_pretrained(output_dir)
    (output_dir / "eval_results.json").write_text(json.dumps(metrics, indent=2))
    return metrics


if __name__ == "__main__":
    sys.exit(run_script(main))
