"""``efficientvlm demo``: the paper's whole method on the synthetic shapes VQA benchmark, on a CPU, offline.

1. **Teacher**: train a small X-VLM-style teacher (vision / text / fusion layers in the paper's 2:1:1 proportion)
   on shapes VQA.
2. **Student**: ``create_student`` copies every other teacher layer; ``DistillationTrainer`` distils the teacher
   into it (task loss + logits, hidden-state and attention-map KD).
3. **Pruning**: ``ModalAdaptivePruningTrainer`` fine-tune-prunes the student under the teacher with one sparsity
   budget over the three encoders, then ``prune()`` materialises the smaller dense model.
4. **Evaluation**: VQA accuracy of teacher, student and pruned student on held-out scenes, and their latency
   measured in this process, round-robin, so the speed-ups are ratios taken under the same load.
5. **Output**: ``teacher/``, ``student/`` and ``pruned/`` checkpoints (model + processor), a Hub-ready ``hub/``
   folder (model, processor, remote code, model card with the table and the pruning figure, pruning report) written
   with ``efficientvlm.hub.push_to_hub(dry_run_dir=...)``, ``report/`` and ``results.json``.

Defaults finish in about 10 minutes on 2 CPU cores; ``--quick`` is a seconds-long smoke run for CI.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments
from transformers.utils import logging as hf_logging

from .student import create_student
from .data import ShapesConfig, answer_vocabulary, build_tokenizer, make_vqa_dataset
from .data.collators import VQACollator
from .distillation import DistillationConfig, DistillationTrainer
from .evaluation import evaluate_vqa, measure_latency
from .hub import push_to_hub
from .models import (
    EfficientVLMForVisualQuestionAnswering,
    EfficientVLMImageProcessor,
    EfficientVLMProcessor,
)
from .pruning import ModalAdaptivePruningTrainer, PruningConfig, save_report
from .tasks import small_config

logger = logging.getLogger("efficientvlm.demo")


@dataclass
class DemoConfig:
    """Sizes and schedule of the demo (``efficientvlm demo --help`` lists them as flags)."""

    output_dir: str = "efficientvlm-demo"
    seed: int = 0
    image_size: int = 64
    patch_size: int = 8
    train_size: int = 6000
    test_size: int = 1000
    hidden_size: int = 128
    head_dim: int = 32
    teacher_layers: tuple[int, int, int] = (6, 2, 2)
    student_layers: tuple[int, int, int] = (3, 1, 1)
    batch_size: int = 32
    teacher_epochs: float = 3.0
    distill_epochs: float = 2.0
    prune_epochs: float = 2.0
    learning_rate: float = 3e-4
    target_sparsity: float = 0.6
    budget: str = "flops"
    reg_learning_rate: float = 0.05
    latency_batch_sizes: tuple[int, ...] = (1, 16)
    latency_repeats: int = 10
    threads: int | None = 1
    repo_id: str = "your-name/efficientvlm-shapes-vqa-pruned"

    @classmethod
    def quick(cls, **overrides) -> DemoConfig:
        """A run of seconds that exercises every stage (CI)."""
        small = dict(image_size=32, train_size=128, test_size=48, hidden_size=32, head_dim=16,
                     teacher_layers=(2, 2, 2), student_layers=(1, 1, 1), batch_size=16, teacher_epochs=1.0,
                     distill_epochs=1.0, prune_epochs=2.0, learning_rate=1e-3, reg_learning_rate=0.2,
                     latency_batch_sizes=(1, 4), latency_repeats=2)
        return replace(cls(**small), **overrides)


def _training_args(cfg: DemoConfig, args_class, output_dir: Path, epochs: float, **extra):
    return args_class(
        output_dir=str(output_dir), per_device_train_batch_size=cfg.batch_size, num_train_epochs=epochs,
        learning_rate=cfg.learning_rate, warmup_steps=0.1, weight_decay=0.01, lr_scheduler_type="cosine",
        logging_steps=25, save_strategy="no", report_to=[], seed=cfg.seed, use_cpu=True, dataloader_num_workers=0,
        remove_unused_columns=False, **extra,
    )


def _layers(model) -> str:
    c = model.config
    return f"{c.vision_config.num_hidden_layers}/{c.text_config.num_hidden_layers}/{c.fusion_config.num_hidden_layers}"


def _parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def run(cfg: DemoConfig) -> dict:
    """Run the demo; returns the results (also written to ``<output_dir>/results.json``)."""
    started = time.perf_counter()
    if cfg.threads:  # one thread by default: on shared cores, threads that wait for each other distort timings
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)

    logger.info("[1/6] data: %d training and %d held-out shapes VQA questions (%d px)", cfg.train_size,
                cfg.test_size, cfg.image_size)
    shapes = ShapesConfig(image_size=cfg.image_size, seed=cfg.seed)
    train = make_vqa_dataset(cfg.train_size, split_seed="train", config=shapes)
    test = make_vqa_dataset(cfg.test_size, split_seed="test", config=shapes)
    tokenizer = build_tokenizer(out / "vocab", shapes)
    processor = EfficientVLMProcessor(
        EfficientVLMImageProcessor(size={"height": cfg.image_size, "width": cfg.image_size}), tokenizer)
    answers = answer_vocabulary(shapes)
    collator = VQACollator(processor, {a: i for i, a in enumerate(answers)})

    logger.info("[2/6] teacher: training a %s (vision/text/fusion) model", "/".join(map(str, cfg.teacher_layers)))
    teacher = EfficientVLMForVisualQuestionAnswering(small_config(
        tokenizer, cfg.teacher_layers, cfg.hidden_size, cfg.head_dim, cfg.image_size, cfg.patch_size, answers))
    Trainer(model=teacher, args=_training_args(cfg, TrainingArguments, out / "runs" / "teacher", cfg.teacher_epochs),
            train_dataset=train, data_collator=collator).train()
    teacher.eval()

    logger.info("[3/6] student: every other teacher layer, distilled from the teacher")
    student = create_student(teacher, *cfg.student_layers)
    DistillationTrainer(model=student, teacher_model=teacher, train_dataset=train, data_collator=collator,
                        args=_training_args(cfg, DistillationConfig, out / "runs" / "student", cfg.distill_epochs,
                                            task="vqa")).train()
    student.eval()

    logger.info("[4/6] modal-adaptive pruning: target %.0f%% of the %s, one budget for the three encoders",
                100 * cfg.target_sparsity, cfg.budget)
    to_prune = copy.deepcopy(student)  # the distilled student stays as it is, for the comparison
    steps_per_epoch = -(-len(train) // cfg.batch_size)
    total_steps = int(cfg.prune_epochs * steps_per_epoch)
    pruner = ModalAdaptivePruningTrainer(
        model=to_prune, teacher_model=teacher, train_dataset=train, data_collator=collator,
        args=_training_args(cfg, PruningConfig, out / "runs" / "pruning", cfg.prune_epochs, task="vqa",
                            target_sparsity=cfg.target_sparsity, budget=cfg.budget,
                            reg_learning_rate=cfg.reg_learning_rate,
                            lagrangian_warmup_steps=max(1, total_steps // 3),
                            freeze_gates_step=max(1, (3 * total_steps) // 4),
                            budget_text_length=12),
    )
    pruner.train()
    pruned = pruner.prune().eval()
    report = pruner.pruning_report(pruned)

    logger.info("[5/6] evaluation on %d held-out questions and latency (round-robin, same process)", cfg.test_size)
    models = {"teacher": teacher, "student": student, "pruned student": pruned}
    accuracy = {name: evaluate_vqa(model, processor, test) for name, model in models.items()}
    questions = [test[i]["question"] for i in range(max(cfg.latency_batch_sizes))]
    images = [test[i]["image"] for i in range(max(cfg.latency_batch_sizes))]
    latency = {}
    for batch in cfg.latency_batch_sizes:
        inputs = processor(images=images[:batch], text=questions[:batch])
        latency[batch] = measure_latency(models, lambda: inputs, repeats=cfg.latency_repeats)

    teacher_accuracy = accuracy["teacher"]["vqa_accuracy"]
    rows = []
    for name, model in models.items():
        row = {"model": name, "layers": _layers(model), "parameters": _parameters(model),
               "vqa_accuracy": accuracy[name]["vqa_accuracy"],
               "percent_of_teacher": 100 * accuracy[name]["vqa_accuracy"] / teacher_accuracy if teacher_accuracy else 0}
        for batch in cfg.latency_batch_sizes:
            row[f"latency_ms_batch{batch}"] = 1000 * latency[batch][name]
            row[f"speedup_batch{batch}"] = latency[batch]["teacher"] / latency[batch][name]
        rows.append(row)
    table = _markdown_table(rows, cfg.latency_batch_sizes)

    logger.info("[6/6] writing the Hub-ready folder")
    results = {"config": asdict(cfg), "rows": rows, "accuracy": accuracy, "pruning": pruned.config.pruning_info,
               "minutes": (time.perf_counter() - started) / 60}
    teacher.save_pretrained(out / "teacher")
    processor.save_pretrained(out / "teacher")
    student.save_pretrained(out / "student")
    processor.save_pretrained(out / "student")
    pruned.save_pretrained(out / "pruned")
    processor.save_pretrained(out / "pruned")
    report_json, report_png = save_report(report, out / "report")
    _write_hub_folder(cfg, pruned, processor, report, report_png, rows, table, out / "hub")
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print("\n" + table + "\n")
    print(f"pruned student: {out / 'pruned'}   Hub-ready folder: {out / 'hub'}   results: {out / 'results.json'}   "
          f"time: {results['minutes']:.1f} min")
    return results


def _markdown_table(rows: list[dict], batch_sizes) -> str:
    header = ["model", "layers V/T/F", "parameters", "VQA accuracy", "% of teacher"]
    header += [f"latency b{b}" for b in batch_sizes] + [f"speed-up b{b}" for b in batch_sizes]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["model"], r["layers"], f"{r['parameters'] / 1e6:.2f}M", f"{100 * r['vqa_accuracy']:.1f}",
                 f"{r['percent_of_teacher']:.1f}%"]
        cells += [f"{r[f'latency_ms_batch{b}']:.1f} ms" for b in batch_sizes]
        cells += [f"{r[f'speedup_batch{b}']:.2f}x" for b in batch_sizes]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _write_hub_folder(cfg, pruned, processor, report, report_png, rows, table, folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    summary = (
        "An EfficientVLM student for the synthetic *shapes* VQA benchmark, produced by `efficientvlm demo`: "
        "a teacher trained on the benchmark, a half-depth student distilled from it, then modal-adaptive "
        f"pruning to {100 * cfg.target_sparsity:.0f}% sparsity of the {cfg.budget}. Measured in one process on "
        f"held-out scenes:\n\n{table}\n"
    )
    pruned_row = rows[-1]
    push_to_hub(
        pruned, processor, cfg.repo_id, dry_run_dir=folder, task="vqa", summary=summary, license="apache-2.0",
        pruning_report=report, pruning_figure=str(report_png),
        eval_results=[{"dataset_type": "shapes-vqa", "dataset_name": "shapes VQA (synthetic, held-out split)",
                       "dataset_split": "test", "metric_type": "accuracy", "metric_name": "VQA accuracy",
                       "metric_value": round(100 * pruned_row["vqa_accuracy"], 2)}],
    )


# ---- command line -----------------------------------------------------------------------------------------------

_TUPLE_FIELDS = {"teacher_layers", "student_layers", "latency_batch_sizes"}


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``efficientvlm demo``: ``--quick`` and one per ``DemoConfig`` field."""
    parser.add_argument("--quick", action="store_true", help="a seconds-long run of every stage (CI)")
    for name, spec in DemoConfig.__dataclass_fields__.items():
        flag = "--" + name.replace("_", "-")
        if name in _TUPLE_FIELDS:
            parser.add_argument(flag, type=int, nargs="+", default=None, help=f"(default: {spec.default})")
        elif name == "threads":
            parser.add_argument(flag, type=int, default=None,
                                help="torch threads (default: 1, which measures steadily on shared cores; 0 = torch's "
                                     "choice)")
        else:
            parser.add_argument(flag, type=type(spec.default), default=None, help=f"(default: {spec.default})")


def run_demo(args: argparse.Namespace) -> int:
    overrides = {name: (tuple(value) if name in _TUPLE_FIELDS else value)
                 for name in DemoConfig.__dataclass_fields__ if (value := getattr(args, name, None)) is not None}
    cfg = DemoConfig.quick(**overrides) if args.quick else DemoConfig(**overrides)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    hf_logging.set_verbosity_warning()
    run(cfg)
    return 0


__all__ = ["DemoConfig", "run", "add_demo_arguments", "run_demo"]
