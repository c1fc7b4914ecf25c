"""Generative VQA (the paper's answer decoder) against the classifier head on shapes VQA: accuracy and latency of the
teacher, the distilled student and the pruned student, on the same data, in one process.

For each head this runs the pipeline of ``efficientvlm demo --vqa-head <head>`` with the demo's flags: the teacher
(its encoders from one image-text pre-training shared by both heads; the generative teacher's decoder initialised from
the pre-trained fusion layers and MLM head), a half-depth student distilled from it, and modal-adaptive pruning of the
student to the same budget (the generative student's decoder is gated too, as a fourth modality). The stages without
KD and with a fixed split are left out. Then the teachers, distilled students and pruned students are evaluated on the
same held-out questions (the generative ones rank the answer list: with ``rank_k`` = 128 and the shapes list's 15
answers, every answer is re-scored), with the demo's image-blind baseline (each question type's most frequent training
answer) as the floor, and timed round-robin in one process (median of ``--latency-repeats`` forwards per batch size; a forward of
a generative model is a whole ranking: one decoder step over ``[CLS]``, then every re-scored answer).

    python benchmarks/vqa_heads.py                                  # the demo's defaults (about twice its time)
    python benchmarks/vqa_heads.py --train-size 3000 --teacher-epochs 3 --test-size 500   # reduced
    python benchmarks/vqa_heads.py --smoke                          # seconds: every stage on tiny data

Every ``efficientvlm demo`` flag applies (``--help`` lists them); ``--vqa-head`` is set per head.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from efficientvlm.data import make_caption_dataset
from efficientvlm.demo import (
    DemoConfig,
    _blind_baseline,
    _forward_flops,
    _layers,
    _Stages,
    add_demo_arguments,
    build_data,
    build_teacher,
    load_pretrained,
    teacher_config,
    vqa_collator,
)
from efficientvlm.distillation import DistillationConfig, DistillationTrainer
from efficientvlm.distillation.data import ImageTextPretrainingCollator
from efficientvlm.evaluation import evaluate_vqa, measure_latency
from efficientvlm.models import EfficientVLMForPreTraining
from efficientvlm.pruning import ModalAdaptivePruningTrainer, PruningConfig
from efficientvlm.student import create_student

logger = logging.getLogger("benchmarks.vqa_heads")
HEADS = ("classifier", "generative")


def run(cfg: DemoConfig) -> dict:
    started = time.perf_counter()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    eval_threads = cfg.threads or torch.get_num_threads()
    torch.set_num_threads(cfg.train_threads or torch.get_num_threads())
    data = build_data(cfg, out)
    shapes, train, validation, test = data.shapes, data.train, data.validation, data.test
    tokenizer, processor, answers = data.tokenizer, data.processor, data.answers
    config = teacher_config(cfg, tokenizer, answers)

    pretrained = None
    if cfg.pretrain_steps:
        logger.info("pre-training (shared by both heads): %d steps", cfg.pretrain_steps)
        captions = make_caption_dataset(cfg.pretrain_images, split_seed="train", one_row_per_caption=True,
                                        config=replace(shapes, max_objects=cfg.pretrain_max_objects))
        torch.manual_seed(cfg.seed)
        pretrained = EfficientVLMForPreTraining(config)
        _Stages(cfg, out, train, validation, None).run(
            "pretraining", pretrained, 1.0, train_dataset=captions, collator=ImageTextPretrainingCollator(processor),
            max_steps=cfg.pretrain_steps)

    models, minutes, pruning_info, structure = {}, {}, {}, {}
    steps = int(cfg.prune_epochs * -(-len(train) // cfg.batch_size))
    pruning = dict(task="vqa", target_sparsity=cfg.target_sparsity, budget=cfg.budget,
                   reg_learning_rate=cfg.reg_learning_rate, lambda_learning_rate=cfg.lambda_learning_rate,
                   freeze_gates_step=max(1, (3 * steps) // 4), budget_text_length=12)
    for head in HEADS:
        head_started = time.perf_counter()
        head_cfg = replace(cfg, vqa_head=head)
        stages = _Stages(head_cfg, out / head, train, validation, vqa_collator(head_cfg, processor, answers))
        torch.manual_seed(cfg.seed)
        teacher = build_teacher(head_cfg, copy.deepcopy(config), tokenizer, answers)
        if pretrained is not None:
            load_pretrained(teacher, pretrained)
        logger.info("%s: teacher %s", head, _layers(teacher))
        stages.run("teacher", teacher, cfg.teacher_epochs)
        student = create_student(teacher, *cfg.student_layers, decoder_layers=cfg.student_layers[2])
        logger.info("%s: student with KD %s", head, _layers(student))
        stages.run("student-kd", student, cfg.student_epochs, DistillationTrainer, DistillationConfig,
                   teacher=teacher, task="vqa")
        logger.info("%s: modal-adaptive pruning to %.0f%% of the %s", head, 100 * cfg.target_sparsity, cfg.budget)
        trainer = stages.run("pruning-adaptive", copy.deepcopy(student), cfg.prune_epochs,
                             ModalAdaptivePruningTrainer, PruningConfig, teacher=teacher, **pruning)
        pruned = trainer.prune().eval()
        models[f"{head} teacher"], models[f"{head} student with KD"] = teacher.eval(), student.eval()
        models[f"{head} pruned student"] = pruned
        pruning_info[head] = pruned.config.pruning_info
        structure[head] = pruned.config.layer_sizes()  # heads, cross-attention heads and FFN width kept per layer
        # the learned gates, to re-export other sizes (trainer.l0_module.load_state_dict) or inspect the scores
        torch.save(trainer.l0_module.state_dict(), out / head / "pruning_gates.pt")
        minutes[head] = (time.perf_counter() - head_started) / 60

    torch.set_num_threads(eval_threads)
    logger.info("evaluation on %d held-out questions; latency round-robin on %d thread(s)", cfg.test_size,
                eval_threads)
    accuracy = {name: evaluate_vqa(model, processor, test) for name, model in models.items()}
    accuracy["image-blind baseline"] = evaluate_vqa(None, None, test, predictions=_blind_baseline(train, test)[1])
    example = processor(images=[test[0]["image"]], text=[test[0]["question"]])
    batch = max(cfg.latency_batch_sizes)
    images, questions = [test[i]["image"] for i in range(batch)], [test[i]["question"] for i in range(batch)]
    latency = {}
    for size in cfg.latency_batch_sizes:
        inputs = processor(images=images[:size], text=questions[:size])
        latency[size] = measure_latency(models, lambda: inputs, repeats=cfg.latency_repeats)

    rows = [{"model": "image-blind baseline", "vqa_accuracy": accuracy["image-blind baseline"]["vqa_accuracy"]}]
    for name, model in models.items():
        head = name.split()[0]
        row = {"model": name, "layers": _layers(model), "parameters": sum(p.numel() for p in model.parameters()),
               "flops": _forward_flops(model, example), "vqa_accuracy": accuracy[name]["vqa_accuracy"],
               "percent_of_teacher": 100 * accuracy[name]["vqa_accuracy"]
               / max(accuracy[f"{head} teacher"]["vqa_accuracy"], 1e-9)}
        for size in cfg.latency_batch_sizes:
            row[f"latency_ms_batch{size}"] = 1000 * latency[size][name]
            row[f"speedup_batch{size}"] = latency[size]["classifier teacher"] / latency[size][name]
        if "pruned" in name:
            row["achieved_sparsity"] = pruning_info[head]["achieved_sparsity"]
        rows.append(row)
    results = {"config": asdict(cfg), "rows": rows, "accuracy": accuracy, "pruning": pruning_info,
               "pruned_layer_sizes": structure,
               "minutes_per_head": minutes, "minutes": (time.perf_counter() - started) / 60,
               "threads": {"training": cfg.train_threads, "evaluation": eval_threads}}
    (out / "vqa_heads.json").write_text(json.dumps(results, indent=2, default=str))
    print("\n" + markdown_table(rows, cfg.latency_batch_sizes) + "\n")
    print(f"results: {out / 'vqa_heads.json'}   time: {results['minutes']:.1f} min")
    return results


def markdown_table(rows: list[dict], batch_sizes) -> str:
    header = ["model", "layers V/T/F(/D)", "parameters", "MFLOPs", "VQA accuracy", "% of its teacher"]
    header += [f"latency b{b}" for b in batch_sizes] + [f"vs classifier teacher b{b}" for b in batch_sizes]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        if "layers" not in r:  # the image-blind baseline: an accuracy only
            lines.append(f"| {r['model']} | - | - | - | {100 * r['vqa_accuracy']:.1f} | - |" + " - |" * 2 * len(
                batch_sizes))
            continue
        cells = [r["model"], r["layers"], f"{r['parameters'] / 1e6:.2f}M", f"{r['flops'] / 1e6:.1f}",
                 f"{100 * r['vqa_accuracy']:.1f}", f"{r['percent_of_teacher']:.1f}%"]
        cells += [f"{r[f'latency_ms_batch{b}']:.1f} ms" for b in batch_sizes]
        cells += [f"{r[f'speedup_batch{b}']:.2f}x" for b in batch_sizes]
        lines.append("| " + " | ".join(cells) + " |")
    sparsity = [r for r in rows if "achieved_sparsity" in r]
    if sparsity:
        lines += ["", "| pruned student | overall | " + " | ".join(("vision", "text", "fusion", "decoder")) + " |",
                  "|---|---|---|---|---|---|"]
        for r in sparsity:
            a = r["achieved_sparsity"]
            lines.append(f"| {r['model']} | {100 * a['overall']:.1f}% | " + " | ".join(
                f"{100 * a[m]:.1f}%" if m in a else "-" for m in ("vision", "text", "fusion", "decoder")) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_demo_arguments(parser)
    parser.add_argument("--smoke", action="store_true", help="the demo's --quick sizes: seconds, every stage")
    args = parser.parse_args(argv)
    overrides = {spec.name: value for spec in fields(DemoConfig)
                 if spec.name != "vqa_head" and (value := getattr(args, spec.name, None)) is not None}
    overrides.setdefault("output_dir", "efficientvlm-vqa-heads")
    cfg = DemoConfig.quick(**overrides) if args.smoke or args.quick else DemoConfig(**overrides)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    hf_logging.set_verbosity_warning()
    threads = torch.get_num_threads()
    try:
        return run(cfg)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
