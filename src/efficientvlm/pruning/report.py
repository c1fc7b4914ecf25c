"""What pruning did, per modality and layer: a JSON-able dict and a figure for model cards.

``pruning_report(before, after, target)`` compares two structures: the model before pruning and either the pruned
model (or its config) or a ``ModalAdaptiveL0Module`` whose exported gates (``budget_gates()``) say what would be
kept. It reports heads (self, cross) and FFN width kept per layer, the parameters and FLOPs of the prunable part before and after,
and the target next to the achieved sparsity. ``save_report`` writes it as ``<name>.json`` and ``<name>.png``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import nn

from ..models.configuration_efficientvlm import EfficientVLMConfig
from .l0 import ModalAdaptiveL0Module
from .materialize import keep_lists_from_gates
from .structure import (
    BUDGETS,
    SUB_BLOCKS,
    check_budget,
    image_tokens,
    kept_sizes,
    layer_sizes,
    sizes_cost,
    sub_block_costs,
)

_UNIT_LABELS = {"heads": "self-attention heads", "cross_heads": "cross-attention heads", "ffn": "FFN neurons"}


def pruning_report(before: EfficientVLMConfig | nn.Module,
                   after: EfficientVLMConfig | nn.Module | ModalAdaptiveL0Module,
                   target: float | Mapping[str, float] | None = None, *, budget: str | None = None,
                   text_length: int | None = None, image_size: int | None = None) -> dict:
    """Per-modality and per-layer comparison of two structures of the same model.

    Args:
        before: the model (or config) before pruning.
        after: the pruned model or its config, or the ``ModalAdaptiveL0Module`` trained on ``before`` (its
            exported gates, ``budget_gates()``, give the kept structure).
        target: the target sparsity (default: the L0 module's, if ``after`` is one).
        budget: what ``target`` measures, ``"params"`` or ``"flops"`` (default: the L0 module's, else params).
        text_length, image_size: tokens for the FLOP counts (defaults: the L0 module's, else 40 text tokens and
            the config's image size).

    Returns:
        ``{"target_sparsity", "budget", "achieved_sparsity", "text_length", "image_tokens", "overall",
        "modalities": {modality: {..., "layers": [...]}}}``, plus ``"total_parameters"`` (embeddings and heads
        included) when both ``before`` and ``after`` are models. Sizes count the prunable part (encoder layers).
    """
    config_before = before.config if isinstance(before, nn.Module) else before
    sizes_before = layer_sizes(config_before)
    l0 = after if isinstance(after, ModalAdaptiveL0Module) else None
    if l0 is not None:
        sizes_after = kept_sizes(sizes_before, keep_lists_from_gates(l0.budget_gates()))
        target = l0.target_sparsity if target is None else target
        budget = budget or l0.budget
        text_length = text_length or l0.text_length
        image_size = image_size or l0.image_size
    else:
        sizes_after = layer_sizes(after.config if isinstance(after, nn.Module) else after)
    budget = budget or "params"
    check_budget(budget)
    text_length = text_length or 40
    if set(sizes_before) != set(sizes_after):
        raise ValueError(f"before has the modalities {tuple(sizes_before)}, after {tuple(sizes_after)}: they are not "
                         "the same model.")
    for modality in sizes_before:
        if len(sizes_before[modality]) != len(sizes_after[modality]):
            raise ValueError(f"before has {len(sizes_before[modality])} {modality} layers, after has "
                             f"{len(sizes_after[modality])}: they are not the same model.")

    costs = {b: sub_block_costs(config_before, b, text_length, image_size) for b in BUDGETS}
    per_layer = {(b, when): sizes_cost(sizes, costs[b])
                 for b in BUDGETS for when, sizes in (("before", sizes_before), ("after", sizes_after))}

    modalities = {}
    for modality in sizes_before:
        layers = []
        for i, (units_before, units_after) in enumerate(zip(sizes_before[modality], sizes_after[modality])):
            row = {"layer": i}
            for key in units_before:
                row[f"{key}_before"], row[f"{key}_after"] = units_before[key], units_after[key]
            for b in BUDGETS:
                row[f"{b}_before"] = per_layer[(b, "before")][modality][i]
                row[f"{b}_after"] = per_layer[(b, "after")][modality][i]
            layers.append(row)
        modalities[modality] = {**_totals(layers), "layers": layers}
    overall = _totals([row for entry in modalities.values() for row in entry["layers"]])

    if isinstance(target, Mapping):
        achieved = {m: modalities[m][f"{budget}_sparsity"] for m in target}
    else:
        achieved = overall[f"{budget}_sparsity"]
    report = {
        "target_sparsity": dict(target) if isinstance(target, Mapping) else target,
        "budget": budget,
        "achieved_sparsity": achieved,
        "text_length": text_length,
        "image_tokens": image_tokens(config_before, image_size),
        "overall": overall,
        "modalities": modalities,
    }
    if isinstance(before, nn.Module) and isinstance(after, nn.Module) and l0 is None:
        report["total_parameters"] = {"before": sum(p.numel() for p in before.parameters()),
                                      "after": sum(p.numel() for p in after.parameters())}
    return report


def save_report(report: dict, directory: str | Path, name: str = "pruning_report") -> tuple[Path, Path]:
    """Write ``<name>.json`` and ``<name>.png`` (kept heads and FFN width per layer and modality) into
    ``directory``; return both paths. A report with a ``"family"`` (several sizes exported from one run, each
    ``{"target_sparsity", "achieved_sparsity", "metrics", ...}``) also gets ``<name>_family.png``, its metrics
    against the achieved sparsity."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    json_path, png_path = directory / f"{name}.json", directory / f"{name}.png"
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    figure = plot_report(report)
    figure.savefig(png_path, dpi=120, bbox_inches="tight")
    if report.get("family"):
        plot_family(report["family"], report.get("budget", "params")).savefig(
            directory / f"{name}_family.png", dpi=120, bbox_inches="tight")
    return json_path, png_path


def plot_family(family: list[dict], budget: str = "params") -> Figure:
    """Each evaluation metric of a family of pruned models against its achieved sparsity (one line per metric)."""
    figure = Figure(figsize=(5.5, 3.8), layout="constrained")
    ax = figure.subplots()
    members = sorted(family, key=lambda m: _overall(m["achieved_sparsity"]))
    x = [100 * _overall(m["achieved_sparsity"]) for m in members]
    metrics = sorted({key for m in members for key, value in m.get("metrics", {}).items()
                      if isinstance(value, (int, float)) and not key.startswith(("eval_runtime", "eval_samples"))})
    for key in metrics:
        ax.plot(x, [m["metrics"].get(key, float("nan")) for m in members], marker="o", label=key)
    ax.set_xlabel(f"{budget} sparsity (%)")
    ax.set_ylabel("metric")
    ax.set_title("Sizes exported from one pruning run")
    if metrics:
        ax.legend(fontsize="small")
    return figure


def _overall(achieved) -> float:
    return achieved["overall"] if isinstance(achieved, Mapping) else achieved


def plot_report(report: dict) -> Figure:
    """A figure with one column per modality: kept attention heads (top) and FFN neurons (bottom) per layer, the
    unpruned size in grey behind. Built without pyplot, so it never changes the global matplotlib backend."""
    names = list(report["modalities"])
    figure = Figure(figsize=(4.2 * len(names), 6.4), layout="constrained")
    axes = figure.subplots(2, len(names), squeeze=False)
    colors = {"heads": "tab:blue", "cross_heads": "tab:orange", "ffn": "tab:green"}
    for column, modality in enumerate(names):
        entry = report["modalities"][modality]
        layers = entry["layers"]
        x = list(range(len(layers)))
        for row, keys in enumerate((
            [s.units for s in SUB_BLOCKS[modality] if s.name != "ffn"], ["ffn"],
        )):
            ax = axes[row][column]
            width = 0.8 / len(keys)
            for k, key in enumerate(keys):
                offsets = [i - 0.4 + width * (k + 0.5) for i in x]
                ax.bar(offsets, [layer[f"{key}_before"] for layer in layers], width, color="lightgrey")
                ax.bar(offsets, [layer[f"{key}_after"] for layer in layers], width, color=colors[key],
                       label=_UNIT_LABELS[key])
            ax.set_xticks(x)
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("layer")
            ax.set_ylabel("heads kept" if row == 0 else "FFN width kept")
            if row == 0:
                sparsity = entry[f"{report['budget']}_sparsity"]
                ax.set_title(f"{modality}: {report['budget']} sparsity {sparsity:.1%}")
            if len(keys) > 1:
                ax.legend(fontsize="small")
    target = report["target_sparsity"]
    achieved = report["achieved_sparsity"]
    if isinstance(achieved, Mapping):
        achieved_text = ", ".join(f"{m} {v:.1%}" for m, v in achieved.items())
    else:
        achieved_text = f"{achieved:.1%}"
    target_text = "none" if target is None else (
        ", ".join(f"{m} {v:.1%}" for m, v in target.items()) if isinstance(target, Mapping) else f"{target:.1%}")
    figure.suptitle(f"Pruning ({report['budget']}): target {target_text}, achieved {achieved_text} "
                    f"(grey: before pruning)")
    return figure


def _totals(layers: list[dict]) -> dict:
    totals = {}
    for b in BUDGETS:
        before = sum(row[f"{b}_before"] for row in layers)
        after = sum(row[f"{b}_after"] for row in layers)
        totals.update({f"{b}_before": before, f"{b}_after": after,
                       f"{b}_sparsity": round(1 - after / before, 6) if before else 0.0})
    return totals
