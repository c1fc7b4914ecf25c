"""Does pruning make the student faster? Masked (dense weights + 0/1 gates) vs materialised (sliced) models.

    python benchmarks/pruning_speed.py                              # student, 384 px, batch 1 and 8
    python benchmarks/pruning_speed.py --threads 1 --no-memory --json out.json
    python benchmarks/pruning_speed.py --smoke                      # tiny config, seconds

The default run costs about 80 batch-8 forwards of the dense student: some 5 min where one takes 3 s (estimate),
20 min measured on the project's 2-core machine while another job kept both cores busy (9 min with ``--threads 1
--no-memory``). On shared cores ``--threads 1`` gives steadier ratios: with two threads every operator also waits
for a descheduled thread, a per-operator cost that pruning does not shrink.

For every target sparsity (default 25, 50, 75 %) and gate *pattern* (below), hard 0/1 gates on attention heads and
FFN neurons of every layer (vision, text, fusion) are built, and the model is run two ways:

* **masked**: the dense student with the gates set through ``gates_applied`` - what training and the L0 module's
  evaluation see; it computes every head and neuron and multiplies the pruned ones by 0;
* **materialised**: ``materialize(model, gates)`` - the smaller dense model whose weights are sliced.

Both give the same logits (the table reports the largest difference). Reported per model: parameters, FLOPs of one
forward at batch 1 counted by ``torch.utils.flop_counter.FlopCounterMode`` (the whole model: patch embedding,
embeddings, classifier included; attention run eagerly for the count because the counter does not see the CPU
SDPA kernel), the FLOPs ratio dense / materialised both from that count and from the L0 module's cost model (the
prunable part only, ``ModalAdaptiveL0Module.expected_sparsity(budget, zs)``), latency at each batch size, and
peak memory.

**Speed-up** is masked latency / materialised latency; the goal is speed-up >= 0.85 x the counted FLOPs ratio.

Latency: the median wall time of a VQA forward under ``torch.inference_mode``, every model timed once per round,
round after round in one process (``efficientvlm.evaluation.measure_latency``), so that the ratios hold on a
loaded machine even when absolute times drift. The unpruned student is timed too ("dense"), which shows what the
gate multiplications cost.

Peak memory: weights (parameters and buffers) plus the peak of the bytes live in torch's CPU allocator during one
forward, read from the allocation / free events of ``torch.profiler`` (``profile_memory=True``) - the activations
and workspaces torch allocates, including those inside kernels. It is not the process RSS: memory that a library
allocates past torch's allocator (e.g. oneDNN scratch space) and the Python heap are not seen. The masked models
share one set of dense weights; their figure counts it once each.

Gate patterns (synthetic, random indices, seeded - they imitate what each budget favours, they are NOT gates
learned by the L0 module). ``s`` is the target *parameter* sparsity of the prunable part (encoder layers); every
sub-block drops ``round(f * units)`` units for its layer's fraction ``f``, chosen uniformly at random, at least one
unit kept; heads and FFN neurons of a layer get the same fraction. The achieved sparsities are reported.

* ``random``: every layer of every modality ``f = s``.
* ``params-budget``: a parameter budget prices a vision parameter like a text one, so the sparsity is spread
  evenly over the modalities by parameters: every modality loses ``s`` of its parameters. Within a modality the
  layers are pruned unevenly, as learned gates are: a linear ramp over depth ``f_i = s + a (2 i / (L - 1) - 1)``
  with ``a = min(s / 2, 0.95 - s)`` (mean ``s``; shallow layers keep more).
* ``flops-budget``: a FLOP budget prices a vision parameter by its 577 tokens (at 384 px), ~29x a text parameter
  (20 tokens), so it prunes vision first: vision layers keep ``(1 - s)^2`` of their units (``f_v = 1 - (1 - s)^2``:
  44, 75, 94 % for s = 25, 50, 75 %), and text and fusion share the rest of the parameter budget, ``f_o = (s P -
  f_v P_vision) / (P - P_vision)`` (clipped to [0, 0.95]), so the parameter sparsity stays about ``s`` while the
  FLOP reduction is much larger.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from efficientvlm import EfficientVLMConfig, EfficientVLMForVisualQuestionAnswering
from efficientvlm.evaluation import measure_latency
from efficientvlm.pruning import (
    MODALITIES,
    ModalAdaptiveL0Module,
    gates_applied,
    layer_sizes,
    materialize,
    prunable_parameter_count,
)

PATTERNS = ("random", "params-budget", "flops-budget")
MAX_FRACTION = 0.95


# ---------------------------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------------------------


def student_config(image_size: int, num_labels: int) -> EfficientVLMConfig:
    """The student preset (6 vision / 3 text / 3 fusion layers, width 768) at ``image_size``."""
    config = EfficientVLMConfig.student(id2label={i: str(i) for i in range(num_labels)})
    config.vision_config.image_size = image_size  # fine-tuning resolution, as after interpolation
    return config


def smoke_config() -> EfficientVLMConfig:
    """A tiny model (width 32, 2 layers per encoder, 32 px images) for the smoke run."""
    layers = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, head_dim=8, intermediate_size=64)
    return EfficientVLMConfig(
        vision_config={**layers, "image_size": 32, "patch_size": 8},
        text_config={**layers, "vocab_size": 64, "max_position_embeddings": 40, "pad_token_id": 0,
                     "bos_token_id": 2, "eos_token_id": 3, "mask_token_id": 4},
        fusion_config={**layers, "num_cross_attention_heads": 4},
        projection_dim=16, id2label={i: str(i) for i in range(5)},
    )


class Masked(nn.Module):
    """The dense model run with pruning gates set (``gates_applied``): same weights, pruned units multiplied by 0."""

    def __init__(self, model: nn.Module, zs):
        super().__init__()
        self.model = model
        self.zs = zs

    def forward(self, **inputs):
        with gates_applied(self.model, self.zs):
            return self.model(**inputs)


# ---------------------------------------------------------------------------------------------------------------
# gate patterns
# ---------------------------------------------------------------------------------------------------------------


def layer_fractions(pattern: str, sparsity: float, config: EfficientVLMConfig,
                    l0: ModalAdaptiveL0Module) -> dict[str, list[float]]:
    """The fraction of units to drop in each layer of each modality (see the module docstring)."""
    sizes = layer_sizes(config)
    if pattern == "random":
        return {m: [sparsity] * len(sizes[m]) for m in MODALITIES}
    if pattern == "params-budget":
        out = {}
        for m in MODALITIES:
            n = len(sizes[m])
            amplitude = max(0.0, min(sparsity / 2, MAX_FRACTION - sparsity))
            out[m] = [sparsity if n == 1 else sparsity + amplitude * (2 * i / (n - 1) - 1) for i in range(n)]
        return out
    if pattern == "flops-budget":
        full = l0.full_size["params"]
        vision = min(MAX_FRACTION, 1 - (1 - sparsity) ** 2)
        others = (sparsity * full["overall"] - vision * full["vision"]) / (full["overall"] - full["vision"])
        others = min(MAX_FRACTION, max(0.0, others))
        return {m: [vision if m == "vision" else others] * len(sizes[m]) for m in MODALITIES}
    raise ValueError(f"Unknown pattern {pattern!r}; choose from {PATTERNS}.")


def make_gates(config: EfficientVLMConfig, fractions: dict[str, list[float]], seed: int):
    """Hard 0/1 gates for every head / cross-attention head / FFN neuron: per sub-block, ``round(f * units)``
    units chosen uniformly at random are 0 (at least one unit stays 1)."""
    generator = torch.Generator().manual_seed(seed)
    zs = {}
    for modality, layers in layer_sizes(config).items():
        zs[modality] = []
        for units_of, fraction in zip(layers, fractions[modality]):
            gates = {}
            for key, units in units_of.items():
                if units == 0:
                    continue
                z = torch.ones(units)
                drop = min(units - 1, round(fraction * units))
                z[torch.randperm(units, generator=generator)[:drop]] = 0.0
                gates[key] = z
            zs[modality].append(gates)
    return zs


def kept_units(zs) -> dict[str, dict[str, int]]:
    """Units kept per modality and gate key, summed over layers."""
    out = {}
    for modality, layers in zs.items():
        totals: dict[str, int] = {}
        for gates in layers:
            for key, z in gates.items():
                totals[key] = totals.get(key, 0) + int(z.count_nonzero())
        out[modality] = totals
    return out


# ---------------------------------------------------------------------------------------------------------------
# measurements
# ---------------------------------------------------------------------------------------------------------------


def make_inputs(config: EfficientVLMConfig, batch: int, text_length: int, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    size = config.vision_config.image_size
    vocab = config.text_config.vocab_size
    return {
        "pixel_values": torch.randn(batch, 3, size, size, generator=generator),
        "input_ids": torch.randint(min(1000, vocab // 2), vocab, (batch, text_length), generator=generator),
        "attention_mask": torch.ones(batch, text_length, dtype=torch.long),
    }


def count_flops(model: nn.Module, inputs: dict) -> tuple[int, torch.Tensor]:
    """FLOPs (2 per multiply-accumulate) of one forward and its logits. Attention runs eagerly
    (``output_attentions=True``) so that FlopCounterMode sees its matmuls; it counts no CPU SDPA kernel."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        logits = model(**inputs, output_attentions=True).logits
    return counter.get_total_flops(), logits


def weight_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def peak_forward_bytes(model: nn.Module, inputs: dict) -> int:
    """The peak of bytes live in torch's CPU allocator during one forward, above the level at its start, from
    ``torch.profiler``'s memory events (every allocation and free, in time order)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.inference_mode(), torch.profiler.profile(activities=activities, profile_memory=True) as profiler:
        model(**inputs)
    events = sorted((event.start_ns(), event.nbytes()) for event in profiler.profiler.kineto_results.events()
                    if event.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


# ---------------------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _mib(x: int) -> str:
    mib = x / 2**20
    return f"{mib:.0f}" if mib >= 100 else f"{mib:.1f}"


def _ms(x: float) -> str:
    return f"{1000 * x:.0f}"


def markdown(result: dict) -> str:
    settings, rows, dense = result["settings"], result["rows"], result["dense"]
    batches = settings["batch_sizes"]
    goal = settings["goal"]
    lines = [
        "Structure (sparsity of the prunable part per the cost model, vision/text/fusion; FLOPs counted on one "
        "batch-1 forward):",
        "",
        "| pattern | target | params sparsity (V/T/F) | FLOPs sparsity (V/T/F) | parameters | GFLOPs | "
        "FLOPs ratio (counted) | FLOPs ratio (cost model) | max abs diff of logits |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| dense | 0% | - | - | {dense['parameters'] / 1e6:.1f}M | {dense['flops'] / 1e9:.1f} | 1.00x | 1.00x | - |",
    ]
    def split(sparsity: dict) -> str:
        return f"{_pct(sparsity['overall'])} ({'/'.join(_pct(sparsity[m]) for m in MODALITIES)})"

    for row in rows:
        lines.append(
            f"| {row['pattern']} | {_pct(row['target'])} | {split(row['params_sparsity'])}"
            f" | {split(row['flops_sparsity'])} | {row['parameters'] / 1e6:.1f}M"
            f" | {row['flops'] / 1e9:.1f} | {_ratio(row['flops_ratio'])} | {_ratio(row['flops_ratio_cost_model'])}"
            f" | {row['max_abs_diff']:.1e} |"
        )
    lines += ["", f"Latency in ms (median of {settings['repeats']}, round-robin), speed-up = masked / materialised, "
              f"and speed-up / counted FLOPs ratio (goal >= {goal}); peak memory in MiB (weights + forward peak):", ""]
    header = ["pattern", "target"]
    for b in batches:
        header += [f"b{b} masked", f"b{b} mat.", f"b{b} speed-up", f"b{b} / FLOPs"]
    if settings["memory"]:
        header += [f"b{b} peak MiB masked / mat." for b in batches]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    cells = ["dense (no gates)", "0%"]
    for b in batches:
        cells += [_ms(dense["latency"][str(b)]), "-", "-", "-"]
    if settings["memory"]:
        cells += [_mib(dense["peak_memory"][str(b)]) for b in batches]
    lines.append("| " + " | ".join(cells) + " |")
    for row in rows:
        cells = [row["pattern"], _pct(row["target"])]
        for b in batches:
            t = row["latency"][str(b)]
            mark = "ok" if t["speedup_over_flops_ratio"] >= goal else "below"
            cells += [_ms(t["masked"]), _ms(t["materialised"]), _ratio(t["speedup"]),
                      f"{t['speedup_over_flops_ratio']:.2f} ({mark})"]
        if settings["memory"]:
            peaks = [row["peak_memory"][str(b)] for b in batches]
            cells += [f"{_mib(peak['masked'])} / {_mib(peak['materialised'])}" for peak in peaks]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=384)
    parser.add_argument("--text-length", type=int, default=20)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    parser.add_argument("--patterns", nargs="+", choices=PATTERNS, default=list(PATTERNS))
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (each runs every model once)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--num-labels", type=int, default=3129, help="VQA answer vocabulary (VQAv2 standard: 3129)")
    parser.add_argument("--goal", type=float, default=0.85, help="target speed-up / FLOPs ratio")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory forwards")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads for the run (default: torch's; restored at the end)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny model, batch 1 and 2, 1 round, 1 thread unless --threads: checks the script")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.smoke:  # one thread: on a busy machine tiny ops wait for a second thread far longer than they run
        args.image_size, args.text_length, args.batch_sizes, args.repeats, args.warmup = 32, 7, [1, 2], 1, 0
        args.threads = args.threads or 1
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads)


def _progress(message: str, start: float) -> None:
    print(f"[{time.perf_counter() - start:6.0f} s] {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    torch.manual_seed(args.seed)

    config = smoke_config() if args.smoke else student_config(args.image_size, args.num_labels)
    dense = EfficientVLMForVisualQuestionAnswering(config).eval()
    l0 = ModalAdaptiveL0Module(config, 0.0, text_length=args.text_length, image_size=args.image_size)
    one = make_inputs(config, 1, args.text_length, args.seed)
    dense_flops, _ = count_flops(dense, one)

    models: dict[str, nn.Module] = {"dense": dense}
    rows = []
    for s_index, sparsity in enumerate(args.sparsities):
        for p_index, pattern in enumerate(args.patterns):
            fractions = layer_fractions(pattern, sparsity, config, l0)
            zs = make_gates(config, fractions, seed=args.seed + 1000 * s_index + p_index)
            name = f"{pattern} {_pct(sparsity)}"
            masked = Masked(dense, zs)
            pruned = materialize(dense, zs).eval()
            flops, logits = count_flops(pruned, one)
            _, masked_logits = count_flops(masked, one)
            sparsity_of = {budget: {k: float(v) for k, v in l0.expected_sparsity(budget, zs).items()}
                           for budget in ("params", "flops")}
            rows.append({
                "name": name, "pattern": pattern, "target": sparsity,
                "layer_fractions": fractions, "kept_units": kept_units(zs),
                "params_sparsity": sparsity_of["params"], "flops_sparsity": sparsity_of["flops"],
                "parameters": sum(p.numel() for p in pruned.parameters()),
                "prunable_parameters": prunable_parameter_count(pruned),
                "flops": flops, "flops_ratio": dense_flops / flops,
                "flops_ratio_cost_model": 1 / (1 - sparsity_of["flops"]["overall"]),
                "max_abs_diff": float((logits - masked_logits).abs().max()),
            })
            models[f"{name} masked"] = masked
            models[f"{name} materialised"] = pruned
            _progress(f"built {name}: FLOPs ratio {rows[-1]['flops_ratio']:.2f}x", start)

    latency = {}
    for batch in args.batch_sizes:
        _progress(f"timing {len(models)} models at batch {batch}", start)
        with torch.inference_mode():
            latency[batch] = measure_latency(models, lambda: make_inputs(config, batch, args.text_length, args.seed),
                                             repeats=args.repeats, warmup=args.warmup)
    memory = {}
    if args.memory:
        for batch in args.batch_sizes:
            _progress(f"peak memory of {len(models)} models at batch {batch}", start)
            inputs = make_inputs(config, batch, args.text_length, args.seed)
            memory[batch] = {name: weight_bytes(model) + peak_forward_bytes(model, inputs)
                             for name, model in models.items()}

    for row in rows:
        row["latency"], row["peak_memory"] = {}, {}
        for batch in args.batch_sizes:
            masked_t, pruned_t = latency[batch][f"{row['name']} masked"], latency[batch][f"{row['name']} materialised"]
            row["latency"][str(batch)] = {"masked": masked_t, "materialised": pruned_t, "speedup": masked_t / pruned_t,
                                          "speedup_over_flops_ratio": masked_t / pruned_t / row["flops_ratio"],
                                          "dense_over_materialised": latency[batch]["dense"] / pruned_t}
            if args.memory:
                row["peak_memory"][str(batch)] = {"masked": memory[batch][f"{row['name']} masked"],
                                                  "materialised": memory[batch][f"{row['name']} materialised"]}
    result = {
        "settings": {
            "model": "smoke" if args.smoke else "student (6/3/3)", "image_size": args.image_size,
            "image_tokens": (args.image_size // config.vision_config.patch_size) ** 2 + 1,
            "text_length": args.text_length, "batch_sizes": args.batch_sizes, "repeats": args.repeats,
            "warmup": args.warmup, "memory": args.memory, "goal": args.goal, "seed": args.seed,
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "processor": platform.processor() or platform.machine(),
        },
        "dense": {
            "parameters": sum(p.numel() for p in dense.parameters()), "flops": dense_flops,
            "latency": {str(b): latency[b]["dense"] for b in args.batch_sizes},
            "peak_memory": {str(b): memory[b]["dense"] for b in memory},
        },
        "rows": rows,
    }
    s = result["settings"]
    print(f"torch {s['torch']}, {s['threads']} threads, {s['processor']}; {s['model']}, image {s['image_size']} px "
          f"({s['image_tokens']} tokens), text {s['text_length']} tokens\n")
    print(markdown(result))
    ratios = [t["speedup_over_flops_ratio"] for row in rows for t in row["latency"].values()]
    if ratios:
        met = sum(r >= args.goal for r in ratios)
        print(f"\nspeed-up >= {args.goal} x FLOPs ratio in {met} of {len(ratios)} cases "
              f"(median speed-up / FLOPs ratio {statistics.median(ratios):.2f})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
