"""Does the learned sparsity reach the target within the run? Expected sparsity vs step for runs of different length.

``ModalAdaptivePruningTrainer`` fine-tune-prunes a small shapes-VQA student (distilling from its teacher) for 64, 300
and 3,000 optimizer steps under one or more hyperparameter settings, and records the *learned* expected sparsity (from
the gates' keep probabilities) at 25/50/75/100% of the run, next to the size of the model ``prune()`` exports (which
is budget-exact by construction, so it measures nothing about convergence). A setting converges when the learned
sparsity ends within a few points of the target: the gates have then actually learned to do without the removed
units, rather than having them removed by the export rule.

    python benchmarks/sparsity_convergence.py                       # the library's defaults, 64/300/3000 steps
    python benchmarks/sparsity_convergence.py --settings paper defaults --steps 64 300 3000 --target 0.5

Settings: ``paper`` (reg_learning_rate 0.01 for gates and multipliers, warm-up of the first ~10% of the run, gates
start at keep 0.998), ``defaults`` (whatever ``PruningConfig`` defaults to now: gates at 0.1, multipliers at 0.03,
warm-up 30% of the run) and the variants tried while choosing those defaults. One torch thread; the models and data
are small so that 3,000 steps take a few minutes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from efficientvlm import EfficientVLMForVisualQuestionAnswering, create_student
from efficientvlm.data import ShapesConfig, answer_vocabulary, build_tokenizer, make_vqa_dataset
from efficientvlm.data.collators import VQACollator
from efficientvlm.models import EfficientVLMImageProcessor, EfficientVLMProcessor
from efficientvlm.pruning import ModalAdaptivePruningTrainer, PruningConfig
from efficientvlm.tasks import small_config

SETTINGS = {
    "paper": {"reg_learning_rate": 0.01, "lambda_learning_rate": None, "lagrangian_warmup_ratio": 0.1,
              "droprate_init": 0.01},
    "defaults": {},
    "reg-lr-0.03": {"reg_learning_rate": 0.03},
    "reg-lr-0.1": {"reg_learning_rate": 0.1},
    "reg-lr-0.3": {"reg_learning_rate": 0.3},
    "drop-0.5-lr-0.1": {"reg_learning_rate": 0.1, "droprate_init": 0.5},
    "drop-0.5-lr-0.03": {"reg_learning_rate": 0.03, "droprate_init": 0.5},
    "drop-0.5-lr-0.1-lam-0.01": {"reg_learning_rate": 0.1, "lambda_learning_rate": 0.01, "droprate_init": 0.5},
    "lr-0.1-lam-0.01": {"reg_learning_rate": 0.1, "lambda_learning_rate": 0.01},
    "lr-0.1-lam-0.03": {"reg_learning_rate": 0.1, "lambda_learning_rate": 0.03},
}


class _Record(TrainerCallback):
    def __init__(self, trainer, total):
        self.trainer, self.marks, self.points = trainer, {max(1, round(f * total)) for f in (0.25, .5, .75, 1)}, {}

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in self.marks:
            with torch.no_grad():
                self.points[state.global_step] = float(self.trainer.l0_module.expected_sparsity()["overall"])


def run(setting: str, steps: int, target: float, budget: str, data, collator, teacher, work: Path) -> dict:
    torch.manual_seed(0)
    student = create_student(teacher, 2, 1, 1)
    args = PruningConfig(output_dir=str(work / f"{setting}-{steps}"), per_device_train_batch_size=16, max_steps=steps,
                         learning_rate=3e-4, report_to=[], save_strategy="no", disable_tqdm=True, use_cpu=True,
                         seed=0, remove_unused_columns=False, task="vqa", target_sparsity=target, budget=budget,
                         budget_text_length=12, logging_steps=10_000, **SETTINGS[setting])
    trainer = ModalAdaptivePruningTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data,
                                          data_collator=collator)
    record = _Record(trainer, steps)
    trainer.add_callback(record)
    started = time.perf_counter()
    trainer.train()
    info = trainer.pruning_info()
    return {"setting": setting, "steps": steps, "target": target, "budget": budget,
            "reg_learning_rate": args.reg_learning_rate, "warmup_steps": trainer.l0_module.warmup_steps,
            "learned_sparsity_at": record.points, "learned_final": info["learned_expected_sparsity"]["overall"],
            "exported": info["achieved_sparsity"]["overall"],
            "deterministic_rule": info["deterministic_rule_sparsity"]["overall"],
            "seconds": round(time.perf_counter() - started, 1)}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=["defaults"], choices=sorted(SETTINGS))
    parser.add_argument("--steps", type=int, nargs="+", default=[64, 300, 3000])
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--budget", default="params", choices=["params", "flops"])
    parser.add_argument("--output", default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shapes = ShapesConfig(image_size=32, seed=0)
        data = make_vqa_dataset(512, split_seed="train", config=shapes)
        tokenizer = build_tokenizer(work / "vocab", shapes)
        processor = EfficientVLMProcessor(EfficientVLMImageProcessor(size={"height": 32, "width": 32}), tokenizer)
        answers = answer_vocabulary(shapes)
        collator = VQACollator(processor, {a: i for i, a in enumerate(answers)})
        torch.manual_seed(0)
        teacher = EfficientVLMForVisualQuestionAnswering(
            small_config(tokenizer, (4, 2, 2), 64, 16, 32, 8, answers)).eval()
        rows = []
        for setting in args.settings:
            for steps in args.steps:
                row = run(setting, steps, args.target, args.budget, data, collator, teacher, work)
                print(json.dumps(row), flush=True)
                rows.append(row)
    print("\n| setting | steps | reg lr | warm-up | learned sparsity at 25/50/75/100% | exported | paper rule |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        points = " / ".join(f"{v:.3f}" for _, v in sorted(r["learned_sparsity_at"].items()))
        print(f"| {r['setting']} | {r['steps']} | {r['reg_learning_rate']} | {r['warmup_steps']} | {points} | "
              f"{r['exported']:.3f} | {r['deterministic_rule']:.3f} |")
    if args.output:
        Path(args.output).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
