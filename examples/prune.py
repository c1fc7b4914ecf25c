"""Fine-tune-prune a student with modal-adaptive pruning (L0 gates on the heads and FFN neurons of every encoder,
one learned budget) under a fine-tuned task teacher, materialise it into a smaller dense model of the target size,
evaluate it, save it with its processor in --output_dir and print the pruning report. The student is a saved
checkpoint or is created from the teacher with --student_layers; --export_sparsities also exports several sizes from
the same run.

    python examples/prune.py --task vqa --dataset files --train_file vqa_train.json --eval_file vqa_val.json \\
        --image_root images/ --teacher_name_or_path runs/vqa-teacher --model_name_or_path runs/student \\
        --target_sparsity 0.35 --output_dir runs/vqa-pruned --num_train_epochs 5

    # offline, on the synthetic shapes benchmark, creating the student from the teacher (every other layer), and
    # exporting three sizes from the one run:
    python examples/prune.py --task vqa --dataset shapes --teacher_name_or_path runs/vqa \\
        --student_layers 3,1,1 --target_sparsity 0.5 --output_dir runs/vqa-pruned --max_steps 300 \\
        --export_sparsities 0.25,0.35,0.5

    # the paper's generative VQA model: the answer decoder is pruned too, as a fourth modality under the one budget
    python examples/prune.py --task vqa --dataset shapes --teacher_name_or_path runs/vqa-generative \
        --student_layers 3,1,1,1 --target_sparsity 0.35 --output_dir runs/vqa-generative-pruned --max_steps 300

The teacher is a fine-tuned model of the task (``examples/finetune.py`` makes one); a checkpoint without the task's
head (a base or pre-training checkpoint: the head would be random) is refused before any data is read. The head is
the teacher's (VQA: the classifier or the generative answer decoder); ``--vqa_head`` may name it, and naming another
is a one-line error. The student has the teacher's head: it comes from ``--model_name_or_path`` (e.g. a distilled
student; for a generative teacher, a student checkpoint without an answer decoder gets one initialised from its
fusion layers) or, with ``--student_layers V,T,F`` (``V,T,F,D`` with an answer decoder; without ``D`` the decoder is
as deep as the fusion encoder), is created from the teacher with ``create_student``. The output folder holds the
materialised model (reloads with ``from_pretrained``, no masks), the processor, ``pruning_report.json`` /
``pruning_report.png`` and ``eval_results.json``. The exported model has the target size exactly (``trainer.prune()``
is budget-exact). ``--export_sparsities`` also exports a nested family from the same run, one evaluated model per
size in ``sparsity-<target>/``, and adds the accuracy-size curve to the report (``pruning_report_family.png``).
``--seed`` is set before the student is built. A user mistake (a missing checkpoint or file, a bad flag value) prints
one error message and exits with status 2; ``--debug`` shows the traceback.

Multi-process (DDP, FSDP, DeepSpeed ZeRO-2/3: configs in ``examples/accelerate_configs/``, see the README)::

    accelerate launch --config_file examples/accelerate_configs/fsdp.yaml --num_processes 4 examples/prune.py ...
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoProcessor, set_seed

from efficientvlm import create_student
from efficientvlm.distillation import check_teacher_trained
from efficientvlm.pruning import ModalAdaptivePruningTrainer, PruningConfig, save_report
from efficientvlm.scripts import script_parser
from efficientvlm.pruning.structure import model_modalities
from efficientvlm.tasks import DOWNSTREAM_TASKS, TASKS, TaskDataArguments, TaskHeadArguments
from efficientvlm.user_errors import check_checkpoint_argument, run_script

logger = logging.getLogger("prune")


@dataclass
class ModelArguments:
    teacher_name_or_path: str = field(metadata={"help": "fine-tuned task teacher (EfficientVLM checkpoint)"})
    model_name_or_path: str | None = field(default=None, metadata={"help": "the student to prune"})
    student_layers: str | None = field(
        default=None, metadata={"help": "create the student from the teacher instead: 'vision,text,fusion' layer "
                                        "counts, e.g. '6,3,3' (every other teacher layer); a generative VQA "
                                        "teacher also takes the answer decoder's, '6,3,3,3' (default: as the "
                                        "fusion encoder's)"})
    export_sparsities: str | None = field(
        default=None, metadata={"help": "also export these sizes from the same run, e.g. '0.25,0.35,0.5' (strictly "
                                        "increasing; nested models, each evaluated, in sparsity-<target>/)"})

    def family(self) -> list[float]:
        if not self.export_sparsities:
            return []
        try:
            return [float(value) for value in self.export_sparsities.split(",")]
        except ValueError as error:
            raise ValueError(f"--export_sparsities {self.export_sparsities!r}: give comma-separated fractions such "
                             f"as 0.25,0.35,0.5 ({error}).") from error


def load_models(task_name: str, head_args: TaskHeadArguments, args: ModelArguments):
    """The teacher (a checkpoint with the trained head of ``--vqa_head``, by default its own), the student (the
    same head: from ``--model_name_or_path``, whose encoders a generative head is built around when it has no answer
    decoder, or created from the teacher) and the teacher's processor."""
    head = head_args.head(task_name, args.teacher_name_or_path, trained=True)
    teacher = head.model_class.from_pretrained(args.teacher_name_or_path)
    check_teacher_trained(teacher)  # a checkpoint without this task's head: fail before any data is read
    processor = AutoProcessor.from_pretrained(args.teacher_name_or_path)
    if args.model_name_or_path and args.student_layers:
        raise ValueError("Give either --model_name_or_path or --student_layers, not both.")
    if args.model_name_or_path:
        saved = TASKS[task_name].checkpoint_head(args.model_name_or_path)
        if saved is not None and saved is not head and head.adapt is None:
            raise ValueError(f"--model_name_or_path {args.model_name_or_path} is an {saved.model_class.__name__} "
                             f"checkpoint, the teacher an {head.model_class.__name__}: give a student with the "
                             "teacher's head (or none), or create it with --student_layers.")
        labels = [teacher.config.id2label[i] for i in range(teacher.config.num_labels)]  # the teacher's answers
        return teacher, head.build(labels, processor.tokenizer, checkpoint=args.model_name_or_path), processor
    if not args.student_layers:
        raise ValueError("Give the student: --model_name_or_path, or --student_layers V,T,F to create it.")
    names = model_modalities(teacher.config)  # vision, text, fusion (and decoder: generative VQA)
    try:
        layers = [int(n) for n in args.student_layers.split(",")]
    except ValueError:
        layers = []
    if len(layers) not in (3, len(names)):
        raise ValueError(f"--student_layers {args.student_layers!r}: give " + (
            "three layer counts, vision,text,fusion, e.g. 6,3,3." if len(names) == 3 else
            "three or four layer counts, vision,text,fusion[,decoder], e.g. 6,3,3,3 (without the fourth the answer "
            "decoder is as deep as the fusion encoder)."))
    decoder = layers[3] if len(layers) > 3 else layers[2]  # ignored without an answer decoder
    return teacher, create_student(teacher, *layers[:3], decoder_layers=decoder), processor


def main(argv: list[str] | None = None) -> dict:
    parser = script_parser((TaskHeadArguments, TaskDataArguments, ModelArguments, PruningConfig), __doc__)
    head_args, data_args, model_args, pruning_args, script_args = parser.parse_args_into_dataclasses(args=argv)
    script_args.apply()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stdout)
    pruning_args.remove_unused_columns = False  # the collator reads the raw image/text columns
    output_dir = Path(pruning_args.output_dir)
    if pruning_args.task not in DOWNSTREAM_TASKS:
        raise ValueError(f"--task must be one of {sorted(DOWNSTREAM_TASKS)}, got {pruning_args.task!r}.")
    task = TASKS[pruning_args.task]
    family = model_args.family()
    if family:  # checked before any training: increasing, and each a valid target
        if any(b <= a for a, b in zip(family, family[1:])) or not all(0 <= t < 1 for t in family):
            raise ValueError(f"--export_sparsities {family}: give strictly increasing fractions in [0, 1).")
    check_checkpoint_argument(model_args.teacher_name_or_path, "--teacher_name_or_path")
    if model_args.model_name_or_path:
        check_checkpoint_argument(model_args.model_name_or_path, "--model_name_or_path")
    set_seed(pruning_args.seed)  # before the student is built
    teacher, student, processor = load_models(task.name, head_args, model_args)
    data = data_args.load(task.name, output_dir)
    labels = data.labels
    if task.name == "vqa":
        labels = [teacher.config.id2label[i] for i in range(teacher.config.num_labels)]  # the teacher's answer order
    collator = task.collator(processor, labels, data_args.max_length, model=student)

    trainer = ModalAdaptivePruningTrainer(model=student, args=pruning_args, teacher_model=teacher,
                                          train_dataset=data.train, data_collator=collator)
    trainer.train(resume_from_checkpoint=pruning_args.resume_from_checkpoint)
    # every process prunes (under FSDP / DeepSpeed ZeRO-3 the full parameters are gathered, a collective); the main
    # process saves, evaluates and reports
    pruned = trainer.prune()
    report = trainer.pruning_report(pruned)
    members = trainer.prune_family(family) if family else []
    if not trainer.is_world_process_zero():
        return {"report": report, "metrics": {}}
    pruned.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    metrics = task.evaluate(pruned, processor, data.eval) if data.eval is not None else {}
    (output_dir / "eval_results.json").write_text(json.dumps(metrics, indent=2))
    if family:
        report["family"] = []
        for target, member in zip(family, members):
            folder = output_dir / f"sparsity-{target:g}"
            member.save_pretrained(folder)
            processor.save_pretrained(folder)
            member_metrics = task.evaluate(member, processor, data.eval) if data.eval is not None else {}
            (folder / "eval_results.json").write_text(json.dumps(member_metrics, indent=2))
            report["family"].append({"target_sparsity": target, "path": folder.name,
                                     "achieved_sparsity": member.config.pruning_info["achieved_sparsity"],
                                     "parameters": sum(p.numel() for p in member.parameters()),
                                     "metrics": member_metrics})
    save_report(report, output_dir)
    summary = {key: report[key] for key in ("target_sparsity", "achieved_sparsity", "learned_expected_sparsity",
                                            "budget", "overall")}
    summary["per_modality"] = {m: {k: v for k, v in entry.items() if k != "layers"}
                               for m, entry in report["modalities"].items()}
    logger.info("pruning report (per layer: pruning_report.json):\n%s", json.dumps(summary, indent=2))
    logger.info("evaluation of the pruned model: %s", json.dumps(metrics, indent=2))
    return {"report": report, "metrics": metrics}


if __name__ == "__main__":
    sys.exit(run_script(main))
