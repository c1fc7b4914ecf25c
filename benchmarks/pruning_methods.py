"""L0 modal-adaptive pruning vs one-shot importance pruning + distillation, at the same budget, on shapes VQA.

Starts from the teacher and the distilled student that ``efficientvlm demo`` saved (``--demo-dir``, default
``efficientvlm-demo``), on the demo's data (same seed, sizes and image size, read from its ``results.json``), and
prunes the student to ``--target-sparsity`` of its ``--budget`` twice, with the same number of training epochs under
the same teacher:

* **L0**: ``ModalAdaptivePruningTrainer`` (gates learned while distilling, budget-exact export);
* **one-shot**: ``one_shot_prune`` (first-order Taylor importance per unit of cost, ranked across the three encoders,
  on ``--calibration-batches`` training batches), then ``DistillationTrainer`` to recover.

Both pruned models are evaluated on the demo's held-out questions (overall and per question type); wall time of each
method is reported (one process, the methods run one after the other, ``--threads`` torch threads).

    efficientvlm demo && python benchmarks/pruning_methods.py --demo-dir efficientvlm-demo
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from efficientvlm import EfficientVLMForVisualQuestionAnswering
from efficientvlm.data import ShapesConfig, answer_vocabulary, make_vqa_dataset
from efficientvlm.data.collators import VQACollator
from efficientvlm.distillation import DistillationConfig, DistillationTrainer
from efficientvlm.evaluation import evaluate_vqa
from efficientvlm.models import EfficientVLMProcessor
from efficientvlm.pruning import ModalAdaptivePruningTrainer, PruningConfig, one_shot_prune


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-dir", default="efficientvlm-demo")
    parser.add_argument("--target-sparsity", type=float, default=None, help="default: the demo's")
    parser.add_argument("--budget", default=None, choices=["params", "flops"], help="default: the demo's")
    parser.add_argument("--epochs", type=float, default=None, help="training epochs of each method (default: the "
                                                                   "demo's pruning epochs)")
    parser.add_argument("--calibration-batches", type=int, default=8)
    parser.add_argument("--freeze-ratio", type=float, default=None,
                        help="L0: freeze the gates after this fraction of the steps (default: the demo's 0.75)")
    parser.add_argument("--reg-learning-rate", type=float, default=None, help="L0 gates (default: the demo's)")
    parser.add_argument("--lambda-learning-rate", type=float, default=None,
                        help="L0 multipliers (default: the demo's, else PruningConfig's)")
    parser.add_argument("--methods", nargs="+", default=["l0", "one-shot"], choices=["l0", "one-shot"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    demo = Path(args.demo_dir)
    cfg = json.loads((demo / "results.json").read_text())["config"]
    target = cfg["target_sparsity"] if args.target_sparsity is None else args.target_sparsity
    budget = args.budget or cfg["budget"]
    epochs = cfg["prune_epochs"] if args.epochs is None else args.epochs
    freeze = cfg.get("freeze_gates_at", 0.75) if args.freeze_ratio is None else args.freeze_ratio
    shapes = ShapesConfig(image_size=cfg["image_size"], seed=cfg["seed"],
                          **{key: cfg[key] for key in ("max_objects", "small_radius", "large_radius", "noise_prob")
                             if key in cfg})
    train = make_vqa_dataset(cfg["train_size"], split_seed="train", config=shapes)
    test = make_vqa_dataset(cfg["test_size"], split_seed="test", config=shapes)
    processor = EfficientVLMProcessor.from_pretrained(demo / "student")
    collator = VQACollator(processor, {a: i for i, a in enumerate(answer_vocabulary(shapes))})
    teacher = EfficientVLMForVisualQuestionAnswering.from_pretrained(demo / "teacher").eval()
    student = EfficientVLMForVisualQuestionAnswering.from_pretrained(demo / "student")
    common = dict(per_device_train_batch_size=cfg["batch_size"], num_train_epochs=epochs,
                  learning_rate=cfg["learning_rate"], warmup_steps=0.1, weight_decay=0.01, lr_scheduler_type="cosine",
                  save_strategy="no", report_to=[], seed=cfg["seed"], use_cpu=True, remove_unused_columns=False,
                  disable_tqdm=True, logging_steps=50, task="vqa")
    results = {"target_sparsity": target, "budget": budget, "epochs": epochs, "threads": args.threads,
               "freeze_gates_at": freeze,
               "student": evaluate_vqa(student, processor, test)}

    with tempfile.TemporaryDirectory() as work:
        if "l0" in args.methods:
            started = time.perf_counter()
            steps = int(epochs * -(-len(train) // cfg["batch_size"]))
            l0 = ModalAdaptivePruningTrainer(
                model=copy.deepcopy(student), teacher_model=teacher, train_dataset=train, data_collator=collator,
                args=PruningConfig(output_dir=f"{work}/l0", target_sparsity=target, budget=budget,
                                   budget_text_length=12,
                                   reg_learning_rate=args.reg_learning_rate or cfg.get("reg_learning_rate", 0.1),
                                   **({"lambda_learning_rate": lam} if (lam := args.lambda_learning_rate
                                                                         or cfg.get("lambda_learning_rate")) else {}),
                                   freeze_gates_step=max(1, int(freeze * steps)),
                                   **common))
            l0.train()
            pruned_l0 = l0.prune().eval()
            results["l0"] = {"seconds": time.perf_counter() - started,
                             "achieved_sparsity": pruned_l0.config.pruning_info["achieved_sparsity"],
                             "parameters": pruned_l0.num_parameters(), **evaluate_vqa(pruned_l0, processor, test)}

        if "one-shot" in args.methods:
            started = time.perf_counter()
            loader = DataLoader(train, batch_size=cfg["batch_size"], shuffle=True, collate_fn=collator,
                                generator=torch.Generator().manual_seed(cfg["seed"]))
            calibration = [batch for _, batch in zip(range(args.calibration_batches), loader)]
            pruned_one_shot = one_shot_prune(student, calibration, target, budget=budget, text_length=12)
            scored = time.perf_counter() - started
            before_recovery = evaluate_vqa(pruned_one_shot, processor, test)
            started_recovery = time.perf_counter()
            DistillationTrainer(model=pruned_one_shot, teacher_model=teacher, train_dataset=train,
                                data_collator=collator,
                                args=DistillationConfig(output_dir=f"{work}/one-shot", **common)).train()
            pruned_one_shot.eval()
            results["one_shot"] = {"seconds": scored + time.perf_counter() - started_recovery,
                                   "scoring_seconds": scored,
                                   "achieved_sparsity": pruned_one_shot.config.pruning_info["achieved_sparsity"],
                                   "parameters": pruned_one_shot.num_parameters(),
                                   "before_recovery": before_recovery, **evaluate_vqa(pruned_one_shot, processor, test)}

    print(json.dumps(results, indent=2))
    types = sorted(k.removeprefix("vqa_accuracy_") for k in results["student"] if k.startswith("vqa_accuracy_"))
    print(f"\n| method ({budget} {100 * target:.0f}%, {epochs:g} epochs) | wall time | sparsity vision/text/fusion | "
          f"accuracy | " + " | ".join(types) + " |")
    print("|---|---|---|---|" + "---|" * len(types))
    rows = [("distilled student (unpruned)", results["student"], None, None)]
    if "l0" in results:
        rows.append(("L0 modal-adaptive", results["l0"], results["l0"]["seconds"], results["l0"]["achieved_sparsity"]))
    if "one_shot" in results:
        one_shot = results["one_shot"]
        rows += [("one-shot, before recovery", one_shot["before_recovery"], one_shot["scoring_seconds"],
                  one_shot["achieved_sparsity"]),
                 ("one-shot + KD recovery", one_shot, one_shot["seconds"], one_shot["achieved_sparsity"])]
    for name, acc, seconds, sparsity in rows:
        split = "-" if sparsity is None else "/".join(f"{100 * sparsity[m]:.0f}%" for m in ("vision", "text", "fusion"))
        print(f"| {name} | {'-' if seconds is None else f'{seconds:.0f} s'} | {split} | "
              f"{100 * acc['vqa_accuracy']:.1f} | " + " | ".join(f"{100 * acc[f'vqa_accuracy_{t}']:.1f}" for t in types)
              + " |")
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
