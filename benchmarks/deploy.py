"""Deployment latency: the EfficientVLM family against ViLT-B/32, in PyTorch, int8 and ONNX Runtime, as ratios.

    python benchmarks/deploy.py                          # 384 px, batch 1 and 8, one thread (minutes)
    python benchmarks/deploy.py --json deploy.json --repeats 5
    python benchmarks/deploy.py --smoke                  # tiny models, seconds: checks the script

Models (random weights, VQA heads with 3,129 answers, 384 px images, 20 text tokens):

* **ViLT-B/32**: transformers' ``ViltForQuestionAnswering`` with its default config (12 layers of width 768,
  32 px patches: 144 image tokens at 384 x 384, plus the text) - the reference, 1.00x;
* **teacher** (12/6/6 layers) and **student** (6/3/3) presets;
* **pruned, uniform**: the student with the same fraction of every encoder's heads and FFN neurons removed,
  chosen so that the model has ``--params`` parameters (default 93M, the paper's pruned student);
* **pruned, FLOPs budget**: the same parameter count, split as a FLOPs budget splits it: the vision tower, whose
  577 tokens make its units the most expensive, loses ``1 - (1 - s)^2`` of its prunable parameters and text and
  fusion share the rest of the parameter sparsity ``s`` (the ``flops-budget`` pattern of
  ``benchmarks/pruning_speed.py``);
* **pruned + int8**: the FLOPs-budget model with int8 Linear layers (``efficientvlm.export.quantize_int8``);
* **pruned + bf16**: the FLOPs-budget model in bfloat16;
* **pruned, ONNX Runtime** and **pruned, ONNX Runtime int8**: its VQA graph exported with
  ``efficientvlm.export.export_onnx`` (``--exporter``) and run by ONNX Runtime on as many threads as torch, before
  and after ONNX Runtime's dynamic quantisation (``quantize_onnx``).

The pruned structures come from the library's budget selection (``efficientvlm.pruning.select_structure``) with
per-encoder parameter targets and random unit scores (which units go does not change the speed; how many does);
they are materialised into smaller dense models. Every model runs the same seeded inputs; all are timed in one
process, one forward each per round, round after round (``efficientvlm.evaluation.measure_latency``, median of
``--repeats``; the order rotates every round). Each ratio is the median over rounds of the model's time over
ViLT's time in the same round, so that load drifting between rounds cancels; the JSON also keeps the smallest and
largest per-round ratio. The goals: pruned
(FLOPs budget) <= 1.0x ViLT-B/32's latency, pruned + int8 <= 0.5x at batch 1.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from efficientvlm import EfficientVLMConfig, EfficientVLMForVisualQuestionAnswering
from efficientvlm.evaluation import measure_latency
from efficientvlm.pruning import MODALITIES, ModalAdaptiveL0Module, layer_sizes, materialize, select_structure

REFERENCE = "ViLT-B/32"
GOALS = {"pruned, FLOPs budget": (1.0, None), "pruned + int8": (None, 0.5)}  # (every batch, batch 1) x ViLT


# ---------------------------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------------------------


def efficientvlm_configs(args) -> dict[str, EfficientVLMConfig]:
    labels = {i: str(i) for i in range(args.num_labels)}
    if args.smoke:
        layers = dict(hidden_size=32, num_attention_heads=4, head_dim=8, intermediate_size=64)
        text = {**layers, "vocab_size": 64, "max_position_embeddings": 40, "pad_token_id": 0, "bos_token_id": 2,
                "eos_token_id": 3, "mask_token_id": 4}

        def tiny(v, t, f):
            return EfficientVLMConfig(
                vision_config={**layers, "num_hidden_layers": v, "image_size": args.image_size, "patch_size": 8},
                text_config={**text, "num_hidden_layers": t},
                fusion_config={**layers, "num_hidden_layers": f, "num_cross_attention_heads": 4},
                projection_dim=16, id2label=labels)

        return {"teacher": tiny(4, 2, 2), "student": tiny(2, 1, 1)}
    configs = {"teacher": EfficientVLMConfig(id2label=labels), "student": EfficientVLMConfig.student(id2label=labels)}
    for config in configs.values():
        config.vision_config.image_size = args.image_size  # the fine-tuning resolution, as after interpolation
    return configs


def vilt(args) -> nn.Module:
    from transformers import ViltConfig, ViltForQuestionAnswering

    labels = {i: str(i) for i in range(args.num_labels)}
    if args.smoke:
        config = ViltConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                            image_size=args.image_size, patch_size=8, vocab_size=64, id2label=labels)
    else:
        config = ViltConfig(image_size=args.image_size, id2label=labels)  # ViLT-B/32
    return ViltForQuestionAnswering(config).eval()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def prunable_sizes(config: EfficientVLMConfig) -> dict[str, float]:
    """Prunable parameters (encoder layers' attention and FFN sub-blocks) per modality and overall."""
    return ModalAdaptiveL0Module(config, 0.0).full_size["params"]


def modality_targets(pattern: str, sparsity: float, full: dict[str, float]) -> dict[str, float]:
    """Per-encoder parameter sparsity for an overall parameter sparsity ``s`` (see the module docstring)."""
    if pattern == "uniform":
        return dict.fromkeys(MODALITIES, sparsity)
    vision = min(0.95, 1 - (1 - sparsity) ** 2)
    others = (sparsity * full["overall"] - vision * full["vision"]) / (full["overall"] - full["vision"])
    return {"vision": vision, "text": max(0.0, others), "fusion": max(0.0, others)}


def pruned(student: nn.Module, pattern: str, parameters: float, seed: int) -> nn.Module:
    """The student pruned to about ``parameters`` parameters with the ``pattern`` split (random unit scores)."""
    config = student.config
    full = prunable_sizes(config)
    fixed = count_parameters(student) - full["overall"]  # embeddings, heads, LayerNorms outside the layers
    sparsity = 1 - (parameters - fixed) / full["overall"]
    if not 0 < sparsity < 0.9:
        raise ValueError(f"--params {parameters / 1e6:.1f}M needs a sparsity of {sparsity:.2f} of the student's "
                         f"prunable part; choose between {(fixed + 0.1 * full['overall']) / 1e6:.1f}M and "
                         f"{count_parameters(student) / 1e6:.1f}M.")
    generator = torch.Generator().manual_seed(seed)
    scores = {modality: [{key: torch.rand(units, generator=generator) for key, units in layer.items() if units}
                         for layer in layers]
              for modality, layers in layer_sizes(config).items()}
    zs = select_structure(scores, config, modality_targets(pattern, sparsity, full), budget="params")
    return materialize(student, zs, pruning_info={"pattern": pattern, "params_sparsity": sparsity}).eval()


class EfficientVLMForward(nn.Module):
    """The VQA forward on (pixel_values, input_ids, attention_mask), returning the logits (any model kind)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values, input_ids, attention_mask, pixel_mask=None):
        return self.model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask).logits


class ViltForward(EfficientVLMForward):
    def forward(self, pixel_values, input_ids, attention_mask, pixel_mask=None):
        return self.model(pixel_values=pixel_values, pixel_mask=pixel_mask, input_ids=input_ids,
                          attention_mask=attention_mask).logits


def make_inputs(batch: int, args, vocab: int, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    size = args.image_size
    return {"pixel_values": torch.randn(batch, 3, size, size, generator=generator),
            "pixel_mask": torch.ones(batch, size, size, dtype=torch.long),
            "input_ids": torch.randint(min(1000, vocab // 2), vocab, (batch, args.text_length), generator=generator),
            "attention_mask": torch.ones(batch, args.text_length, dtype=torch.long)}


def build_models(args, scratch: Path, progress) -> tuple[dict[str, nn.Module], dict[str, dict]]:
    from efficientvlm.export import (
        EfficientVLMOnnxForVisualQuestionAnswering,
        export_onnx,
        quantize_int8,
        quantize_onnx,
    )

    torch.manual_seed(args.seed)
    models, info = {}, {}
    reference = vilt(args)
    models[REFERENCE], info[REFERENCE] = ViltForward(reference), {"parameters": count_parameters(reference)}
    configs = efficientvlm_configs(args)
    student = None
    for name, config in configs.items():
        model = EfficientVLMForVisualQuestionAnswering(config).eval()
        models[name], info[name] = EfficientVLMForward(model), {"parameters": count_parameters(model)}
        student = model if name == "student" else student
    progress("built ViLT, teacher, student")
    parameters = args.params if not args.smoke else 0.75 * count_parameters(student)
    for pattern in ("uniform", "FLOPs budget"):
        model = pruned(student, pattern, parameters, args.seed)
        name = f"pruned, {pattern}"
        models[name] = EfficientVLMForward(model)
        info[name] = {"parameters": count_parameters(model), "layer_sizes": model.config.layer_sizes(),
                      "params_sparsity": model.config.pruning_info["params_sparsity"]}
    flops_pruned = models["pruned, FLOPs budget"].model
    progress("pruned")
    models["pruned + int8"] = EfficientVLMForward(quantize_int8(flops_pruned))
    models["pruned + bf16"] = EfficientVLMForward(_bf16_copy(flops_pruned))
    export_onnx(flops_pruned, scratch / "onnx", exporter=args.exporter, verify_batch_sizes=(1, 2),
                verify_text_lengths=(args.text_length, args.text_length // 2 + 1))
    quantize_onnx(scratch / "onnx", scratch / "onnx-int8")
    progress(f"exported to ONNX ({args.exporter})")
    threads = torch.get_num_threads()
    for name, folder in (("pruned, ONNX Runtime", "onnx"), ("pruned, ONNX Runtime int8", "onnx-int8")):
        models[name] = EfficientVLMForward(
            EfficientVLMOnnxForVisualQuestionAnswering.from_pretrained(scratch / folder, num_threads=threads))
    for name in ("pruned + int8", "pruned + bf16", "pruned, ONNX Runtime", "pruned, ONNX Runtime int8"):
        info[name] = {"parameters": info["pruned, FLOPs budget"]["parameters"]}
    return models, info


def count_macs(models: dict[str, nn.Module], inputs: dict) -> dict[str, float]:
    """Multiply-accumulates of one forward on ``inputs`` (torch's FLOP counter / 2): machine-independent."""
    from torch.utils.flop_counter import FlopCounterMode

    macs = {}
    with torch.inference_mode():
        for name, model in models.items():
            with FlopCounterMode(display=False) as counter:
                model(**inputs)
            macs[name] = counter.get_total_flops() / 2
    return macs


def paired_ratio(times: list[float], reference: list[float]) -> float:
    """The median over rounds of this round's time / the reference's time in the same round: load that drifts
    between rounds (a shared machine) cancels within each pair."""
    return statistics.median(t / r for t, r in zip(times, reference))


def ratio_range(times: list[float], reference: list[float]) -> list[float]:
    """The smallest and largest per-round ratio, to show how much the rounds disagree."""
    ratios = [t / r for t, r in zip(times, reference)]
    return [min(ratios), max(ratios)]


def _bf16_copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).to(torch.bfloat16)


# ---------------------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------------------


def markdown(result: dict) -> str:
    batches = [str(b) for b in result["settings"]["batch_sizes"]]
    header = ["model", "parameters", "GMACs b1"] + [f"b{b} latency" for b in batches] + [f"b{b} / {REFERENCE}" for b in batches]
    header += ["max abs diff of logits vs float32"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in result["models"].items():
        count = row["parameters"]
        cells = [name, f"{count / 1e6:.1f}M" if count >= 1e6 else f"{count / 1e3:.0f}k",
                 f"{row['macs_batch1'] / 1e9:.2f}"]
        cells += [f"{1000 * row['latency_s'][b]:.0f} ms" for b in batches]
        cells += [f"{row['ratio_to_reference'][b]:.2f}x" for b in batches]
        diff = row.get("max_abs_diff")
        cells.append("-" if diff is None else f"{diff:.2g}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=384)
    parser.add_argument("--text-length", type=int, default=20)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--params", type=float, default=93e6, help="parameters of the pruned students (93M)")
    parser.add_argument("--num-labels", type=int, default=3129, help="VQA answers (VQAv2: 3129)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (each runs every model once)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime threads (restored after)")
    parser.add_argument("--exporter", choices=("dynamo", "legacy"), default="dynamo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny models, batch 1 and 2, one round: checks the script")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.smoke:
        args.image_size, args.text_length, args.batch_sizes, args.repeats, args.warmup = 32, 7, [1, 2], 1, 0
        args.num_labels, args.exporter = 5, "legacy"
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads)


def run(args: argparse.Namespace) -> dict:
    start = time.perf_counter()

    def progress(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f} s] {message}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as scratch:
        models, info = build_models(args, Path(scratch), progress)
        vocab = models["student"].model.config.text_config.vocab_size
        differences = {}
        probe = make_inputs(max(args.batch_sizes), args, vocab, seed=args.seed + 1)
        with torch.inference_mode():
            reference = models["pruned, FLOPs budget"](**probe).float()
            for name in ("pruned + int8", "pruned + bf16", "pruned, ONNX Runtime", "pruned, ONNX Runtime int8"):
                output = models[name](**probe).float()
                agreement = (output.argmax(-1) == reference.argmax(-1)).float().mean()
                differences[name] = {"max_abs_diff": float((output - reference).abs().max()),
                                     "top1_agreement": float(agreement)}
        macs = count_macs({name: models[name] for name in (REFERENCE, "teacher", "student", "pruned, uniform",
                                                           "pruned, FLOPs budget")},
                          make_inputs(1, args, vocab, seed=args.seed))
        for name in ("pruned + int8", "pruned + bf16", "pruned, ONNX Runtime", "pruned, ONNX Runtime int8"):
            macs[name] = macs["pruned, FLOPs budget"]  # the same network in another number format or runtime
        latency = {}
        for batch in args.batch_sizes:
            progress(f"timing {len(models)} models at batch {batch}")
            with torch.inference_mode():
                latency[batch] = measure_latency(models, lambda: make_inputs(batch, args, vocab, args.seed),
                                                 repeats=args.repeats, warmup=args.warmup, per_round=True)
    rows = {}
    for name in models:
        rows[name] = {**info[name], **differences.get(name, {}), "macs_batch1": macs[name],
                      "latency_s": {str(b): statistics.median(latency[b][name]) for b in args.batch_sizes},
                      "ratio_to_reference": {str(b): paired_ratio(latency[b][name], latency[b][REFERENCE])
                                             for b in args.batch_sizes},
                      "ratio_range": {str(b): ratio_range(latency[b][name], latency[b][REFERENCE])
                                      for b in args.batch_sizes}}
    goals = {}
    for name, (every_batch, batch_one) in GOALS.items():
        ratios = rows[name]["ratio_to_reference"]
        if every_batch is not None:
            goals[f"{name} <= {every_batch}x {REFERENCE} (every batch size)"] = all(
                r <= every_batch for r in ratios.values())
        if batch_one is not None and "1" in ratios:
            goals[f"{name} <= {batch_one}x {REFERENCE} at batch 1"] = ratios["1"] <= batch_one
    result = {
        "settings": {"image_size": args.image_size, "text_length": args.text_length, "batch_sizes": args.batch_sizes,
                     "repeats": args.repeats, "warmup": args.warmup, "threads": torch.get_num_threads(),
                     "exporter": args.exporter, "smoke": args.smoke, "torch": torch.__version__,
                     "processor": platform.processor() or platform.machine(), "seconds": time.perf_counter() - start},
        "models": rows, "goals": goals,
    }
    s = result["settings"]
    print(f"torch {s['torch']}, {s['threads']} thread(s), {s['processor']}; image {s['image_size']} px, text "
          f"{s['text_length']} tokens, median of {s['repeats']} round-robin rounds (ratios: median of per-round ratios)\n")
    print(markdown(result))
    print()
    for goal, met in goals.items():
        print(f"goal {goal}: {'met' if met else 'NOT met'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
