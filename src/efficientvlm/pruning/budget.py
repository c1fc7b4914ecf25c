"""Budget-exact structure selection: which heads, FFN neurons and sub-blocks to keep so that the pruned model has
the asked size, chosen from per-unit scores, globally across the three encoders (and the answer decoder of
generative VQA).

The L0 gates learn *which* units matter and, through the Lagrangian, roughly *how many* go. How many is only
reached when the gates have converged, which short runs and small data sets do not guarantee (CoFi's users report
the same). Here the budget decides how many: ``select_structure(scores, config, target)`` removes units in the order
of their scores (lowest first), over all pruned modalities at once - so the split between vision, text and fusion
still follows the scores - until the prunable size (parameters or FLOPs, priced by ``structure.sub_block_costs``)
reaches ``1 - target`` of the full size. The sizes are exact, not expected values: removing the last unit of a
sub-block also removes its bias and LayerNorm, a removed block takes its units with it, and a unit whose removal
would overshoot the target is skipped for cheaper ones after it (so the result lands within the cost of the
cheapest remaining unit - an FFN neuron - of the target, rather than within the cost of a head).

Scores come in the nested gate layout of ``ModalAdaptiveL0Module`` (``{modality: [{gate key: tensor}]}``): unit
keys (``heads``, ``cross_heads``, ``ffn``) hold one score per unit, block keys (``attention_block``, ...) a scalar
for the whole sub-block. A sub-block without scores is not pruned. For L0 gates the scores are keep probabilities
(``ModalAdaptiveL0Module.budget_gates``, which first splits an overall target between the encoders in the
proportions the gates learned and then selects within each); for one-shot pruning, importance per unit of cost,
ranked globally (``efficientvlm.pruning.importance``).

``select_structures(scores, config, [0.25, 0.35, 0.5])`` exports a family from one set of scores: each target
continues from the previous one, so every smaller model is contained in every larger one (nested by
construction).

One rule overrides the scores: the selection never removes the last cross-attention head of the fusion encoder (the
only path from the image to the text, and so to every head's output) nor of the answer decoder (the only path from
the fused question to the answer) - ``structure.PATH_SUB_BLOCKS``. When the ranking reaches that head, it is kept,
a warning names it, and the walk goes on removing higher-scored units, so the size still meets the target. Without
the rule a FLOPs budget, which prices a cross-attention head over the image tokens at several self-attention heads,
exported image-blind students (README, "Generative against classifier VQA head"). The largest reachable sparsity
accounts for the kept head (``reachable_sparsity``).

The result is hard 0/1 gates in the same layout, ready for ``gates_applied`` (masked model) and ``materialize``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from transformers.utils import logging

from ..models.configuration_efficientvlm import EfficientVLMConfig
from .structure import (
    PATH_SUB_BLOCKS,
    SUB_BLOCKS,
    SubBlockCost,
    check_budget,
    check_modality,
    kept_sizes,
    layer_sizes,
    sizes_cost,
    sub_block_costs,
)

Gates = dict[str, list[dict[str, torch.Tensor]]]
Target = float | Mapping[str, float]

logger = logging.get_logger(__name__)

#: the modalities of ``PATH_SUB_BLOCKS`` and what their last path unit carries, for the warning
_PATH_ROLE = {"fusion": ("fusion encoder", "the only path from the image to the text"),
              "decoder": ("answer decoder", "the only path from the question and image to the answer")}


@dataclass
class _SubBlockState:
    """A prunable sub-block during selection: which units are left and what it costs now."""

    modality: str
    layer: int
    units_key: str
    block_key: str | None
    cost: SubBlockCost
    alive: list[bool]
    gated_units: bool
    name: str  # "attention", "cross_attention" or "ffn"
    removed: bool = False
    alive_count: int = -1  # kept in step with ``alive`` (counting it per removal would be quadratic)

    def __post_init__(self):
        self.alive_count = len(self.alive)

    @property
    def remaining(self) -> int:
        return 0 if self.removed else self.alive_count

    def size(self) -> int:
        return self.cost.size(self.remaining)


def sparsity_of(zs: Gates, config: EfficientVLMConfig, budget: str = "params", text_length: int = 40,
                image_size: int | None = None) -> dict[str, float]:
    """Exact sparsity (``1 - size / full size``) of the structure that hard gates ``zs`` keep, per modality and
    ``"overall"``, priced like the budget (see ``efficientvlm.pruning.structure``)."""
    from .materialize import keep_lists_from_gates  # materialize imports this module's users; keep it lazy

    check_budget(budget)
    costs = sub_block_costs(config, budget, text_length, image_size)
    before = sizes_cost(layer_sizes(config), costs)
    after = sizes_cost(kept_sizes(layer_sizes(config), keep_lists_from_gates(zs)), costs)
    sizes = {m: (sum(before[m]), sum(after[m])) for m in before}
    sizes["overall"] = (sum(b for b, _ in sizes.values()), sum(a for _, a in sizes.values()))
    return {key: (1 - a / b) if b else 0.0 for key, (b, a) in sizes.items()}


def select_structure(scores: Gates, config: EfficientVLMConfig, target_sparsity: Target, *, budget: str = "params",
                     text_length: int = 40, image_size: int | None = None) -> Gates:
    """Hard 0/1 gates that remove the lowest-scored units until the pruned size meets ``target_sparsity``.

    Args:
        scores: per-unit (and optional per-block) scores in the nested gate layout; higher = more worth keeping.
        config: the config of the model being pruned (its per-layer sizes and widths price the units).
        target_sparsity: one float for the whole prunable part (the split between modalities follows the scores),
            or ``{modality: target}`` for fixed per-modality targets (each modality selected on its own).
        budget: ``"params"`` or ``"flops"``.
        text_length, image_size: tokens for the FLOPs budget.

    Raises:
        ValueError: a target outside ``[0, 1)``, or one the scored structures cannot reach (the message gives the
            largest reachable sparsity).
    """
    return select_structures(scores, config, [target_sparsity], budget=budget, text_length=text_length,
                             image_size=image_size)[0]


def select_structures(scores: Gates, config: EfficientVLMConfig, targets: Sequence[Target], *,
                      budget: str = "params", text_length: int = 40, image_size: int | None = None) -> list[Gates]:
    """``select_structure`` for several targets at once, nested: the units removed for a target stay removed for
    every larger one. ``targets`` must be strictly increasing (per modality, for dict targets)."""
    targets, keys, blocks, full = _prepare(scores, config, targets, budget, text_length, image_size)
    guard = _PathGuard(blocks, config)
    # The removal order of each constraint's scope: its scored units and blocks, lowest score first.
    orders = {key: _removal_order(scores, blocks, None if key == "overall" else key) for key in keys}
    family = []
    for target in targets:
        for key in keys:
            value = target if key == "overall" else target[key]
            _remove_until(orders[key], blocks, (1 - value) * full[key], _scope_size(blocks, full, key), guard)
        guard.warn(budget)
        family.append(_as_gates(scores, blocks))
    return family


def check_targets(scores: Gates, config: EfficientVLMConfig, targets: Sequence[Target], *, budget: str = "params",
                  text_length: int = 40, image_size: int | None = None) -> None:
    """Raise the ``ValueError`` that ``select_structures`` would for these targets (only the layout of ``scores``
    matters), without selecting anything."""
    _prepare(scores, config, targets, budget, text_length, image_size)


def reachable_sparsity(scores: Gates, config: EfficientVLMConfig, *, budget: str = "params", text_length: int = 40,
                       image_size: int | None = None) -> dict[str, float]:
    """The largest exact sparsity ``select_structure`` can reach from scores of this layout, per modality and
    ``"overall"``: every scored unit removed except the one cross-attention head that the fusion encoder and the
    answer decoder each keep (``PATH_SUB_BLOCKS``); unscored sub-blocks stay whole."""
    check_budget(budget)
    costs = sub_block_costs(config, budget, text_length, image_size)
    blocks = _sub_blocks(scores, config, costs)
    full = _full_sizes(config, costs)
    floor = _PathGuard(blocks, config).floor()
    reachable = {}
    for key in full:
        scope = [b for b in blocks if key in ("overall", b.modality)]
        least = full[key] - sum(b.size() for b in scope)
        least += sum(size for modality, size in floor.items() if key in ("overall", modality))
        reachable[key] = 1 - least / full[key] if full[key] else 0.0
    return reachable


def _prepare(scores, config, targets, budget, text_length, image_size):
    """Check the budget and targets; return ``(targets, constraint keys, sub-block states, full sizes)``."""
    check_budget(budget)
    targets = list(targets)
    if not targets:
        raise ValueError("targets is empty: give at least one target sparsity.")
    keys = _target_keys(targets)
    _check_increasing(targets, keys)
    costs = sub_block_costs(config, budget, text_length, image_size)
    blocks = _sub_blocks(scores, config, costs)
    full = _full_sizes(config, costs)
    reachable = reachable_sparsity(scores, config, budget=budget, text_length=text_length, image_size=image_size)
    for key in keys:
        for target in targets:
            _check_target(target if key == "overall" else target[key], reachable[key], key)
    return targets, keys, blocks, full


def _full_sizes(config: EfficientVLMConfig, costs) -> dict[str, float]:
    full_costs = sizes_cost(layer_sizes(config), costs)
    full = {m: float(sum(full_costs[m])) for m in full_costs}
    full["overall"] = sum(full.values())
    return full


class _PathGuard:
    """Keeps, in each modality of ``PATH_SUB_BLOCKS`` that has any, at least one unit of its path sub-blocks (the
    cross-attention of the fusion encoder and of the answer decoder): refuses the removal that would take the last
    one, and warns about the units it kept that way."""

    def __init__(self, blocks: list[_SubBlockState], config: EfficientVLMConfig):
        sizes = layer_sizes(config)
        self.blocks = blocks
        self.alive: dict[str, int] = {}  # path units left per modality, scored or not
        for modality, kind in PATH_SUB_BLOCKS.items():
            spec = next(s for s in SUB_BLOCKS[modality] if s.name == kind)
            total = sum(layer[spec.units] for layer in sizes.get(modality, ()))
            if total:  # a model without any has no path to keep
                self.alive[modality] = total
        self.refused: set[str] = set()  # modalities where the rule kept a unit since the last warn()

    def guards(self, block: _SubBlockState) -> bool:
        return block.modality in self.alive and block.name == PATH_SUB_BLOCKS[block.modality]

    def allows(self, block: _SubBlockState, unit: int | None) -> bool:
        """Whether removing ``unit`` (``None``: the whole block) leaves a path unit in its modality."""
        if not self.guards(block):
            return True
        return self.alive[block.modality] - (1 if unit is not None else block.remaining) > 0

    def refuse(self, block: _SubBlockState) -> None:
        """Record that the rule kept a unit of ``block`` that the ranking would have removed."""
        self.refused.add(block.modality)

    def remove(self, block: _SubBlockState, unit: int | None) -> None:
        """Count a removal (before ``_remove`` changes the block)."""
        if self.guards(block):
            self.alive[block.modality] -= 1 if unit is not None else block.remaining

    def floor(self) -> dict[str, int]:
        """Per modality whose path units are all scored: the least it costs to keep one (the cheapest block with one
        unit, or whole where only its block gate is scored)."""
        floor = {}
        for modality in self.alive:
            path = [b for b in self.blocks if self.guards(b) and b.modality == modality]
            if path and sum(len(b.alive) for b in path) == self.alive[modality]:
                floor[modality] = min(b.cost.size(1 if b.gated_units else len(b.alive)) for b in path)
        return floor

    def warn(self, budget: str) -> None:
        """Warn (once per message) about the path units kept by the rule since the last call."""
        for modality in sorted(self.refused):
            kind = PATH_SUB_BLOCKS[modality].replace("_", "-")
            kept = [f"layer {b.layer} head{'s' if b.remaining > 1 else ''} "
                    + ", ".join(str(u) for u, alive in enumerate(b.alive) if alive)
                    for b in self.blocks if self.guards(b) and b.modality == modality and b.remaining]
            name, role = _PATH_ROLE[modality]
            logger.warning_once(
                f"The {budget} budget's ranking would remove every {kind} head of the {name}, {role}: kept "
                f"{'; '.join(kept)} (the highest-scored) and removed other units instead, so the size still meets "
                f"the target. The scores had ranked the model into not looking: compare its accuracy with an "
                f"image-blind baseline.")
        self.refused.clear()


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------


def _target_keys(targets: Sequence[Target]) -> list[str]:
    dicts = [isinstance(t, Mapping) for t in targets]
    if any(dicts) and not all(dicts):
        raise ValueError("Mix of float and per-modality targets: give all targets as floats or all as dicts.")
    if not dicts[0]:
        return ["overall"]
    keys = list(targets[0])
    for target in targets:
        if set(target) != set(keys) or not keys:
            raise ValueError(f"Per-modality targets must all name the same modalities, got "
                             f"{[dict(t) for t in targets]}.")
        for modality in target:
            check_modality(modality)
    return keys


def _check_increasing(targets: Sequence[Target], keys: list[str]) -> None:
    """Overall targets must increase strictly; per-modality targets must not decrease and must grow somewhere."""
    if keys == ["overall"]:
        values = [float(t) for t in targets]
        if any(b <= a for a, b in zip(values, values[1:])):
            raise ValueError(f"Targets of a family must be strictly increasing (each model nested in the previous "
                             f"one), got {values}: sort them and drop duplicates.")
        return
    for previous, current in zip(targets, targets[1:]):
        if any(current[k] < previous[k] for k in keys) or all(current[k] == previous[k] for k in keys):
            raise ValueError(f"Per-modality targets of a family must be strictly increasing (no modality "
                             f"decreasing), got {dict(previous)} then {dict(current)}.")


def _check_target(value: float, reachable: float, key: str) -> None:
    name = "target_sparsity" if key == "overall" else f"target_sparsity[{key!r}]"
    if not 0 <= value < 1 and not (key != "overall" and value == 1):
        raise ValueError(f"{name}={value} must be in [0, 1): it is the fraction of the prunable size to remove.")
    if value > reachable + 1e-9:
        raise ValueError(f"{name}={value} cannot be reached: removing every scored unit gives {reachable:.4f} "
                         f"(unscored sub-blocks and modalities stay whole, and the fusion encoder and answer decoder "
                         f"each keep one cross-attention head). Lower the target to at most "
                         f"{reachable:.4f}, or score (gate) more structures or modalities.")


def _sub_blocks(scores: Gates, config: EfficientVLMConfig, costs) -> list[_SubBlockState]:
    sizes = layer_sizes(config)
    blocks = []
    for modality, layers in scores.items():
        check_modality(modality)
        if len(layers) != len(sizes[modality]):
            raise ValueError(f"Scores for {len(layers)} {modality} layers, but the config has "
                             f"{len(sizes[modality])}.")
        for index, layer_scores in enumerate(layers):
            for spec in SUB_BLOCKS[modality]:
                units = sizes[modality][index][spec.units]
                unit_scores, block_score = layer_scores.get(spec.units), layer_scores.get(spec.block)
                if units == 0 or (unit_scores is None and block_score is None):
                    continue
                if unit_scores is not None and tuple(unit_scores.shape) != (units,):
                    raise ValueError(f"{modality} layer {index}: {spec.units} scores of shape "
                                     f"{tuple(unit_scores.shape)} for {units} units.")
                for value in (unit_scores, block_score):
                    if value is not None and not bool(torch.isfinite(value.detach()).all()):
                        raise ValueError(f"{modality} layer {index}: non-finite {spec.name} scores; the gates or "
                                         f"importance scores are corrupt (NaN/inf) and cannot select a structure.")
                block_key = spec.block if block_score is not None else None
                blocks.append(_SubBlockState(modality, index, spec.units, block_key, costs[modality][spec.name],
                                             [True] * units, unit_scores is not None, spec.name))
    return blocks


def _removal_order(scores: Gates, blocks: list[_SubBlockState], modality: str | None) -> list[tuple]:
    """``(score, tie-break, block, unit index or None)`` for every scored unit / block in scope, ascending."""
    items = []
    for position, block in enumerate(blocks):
        if modality is not None and block.modality != modality:
            continue
        layer_scores = scores[block.modality][block.layer]
        if block.gated_units:
            values = layer_scores[block.units_key].detach().double().cpu().tolist()
            items += [(value, position, unit, block) for unit, value in enumerate(values)]
        if block.block_key is not None:
            items.append((float(layer_scores[block.block_key]), position, -1, block))
    items.sort(key=lambda item: item[:3])
    return [(block, None if unit < 0 else unit) for _, _, unit, block in items]


def _scope_size(blocks: list[_SubBlockState], full: dict[str, float], key: str) -> float:
    """The current size of a constraint's scope: unscored sub-blocks at full size plus the scored ones now."""
    scope = [b for b in blocks if key in ("overall", b.modality)]
    scored_full = sum(b.cost.size(len(b.alive)) for b in scope)
    return full[key] - scored_full + sum(b.size() for b in scope)


def _removal_cost(block: _SubBlockState, unit: int | None) -> int:
    if block.removed or (unit is not None and not block.alive[unit]):
        return 0
    if unit is None or block.remaining == 1:
        return block.size()  # the whole sub-block, or its last unit with the bias and LayerNorm
    return block.cost.unit


def _remove(block: _SubBlockState, unit: int | None) -> None:
    if unit is None:
        block.removed = True
    else:
        block.alive[unit] = False
        block.alive_count -= 1


def _remove_until(order: list[tuple], blocks: list[_SubBlockState], goal: float, size: float,
                  guard: _PathGuard) -> None:
    """Walk the removal order: remove each item that keeps the size at or above ``goal``; skip those that would
    overshoot it, and those that would cut the last path (``guard``); finally take the skipped item that lands
    closest, if that is closer than stopping short."""
    skipped = []
    for block, unit in order:
        if size <= goal:
            break
        cost = _removal_cost(block, unit)
        if cost == 0:
            continue
        if size - cost < goal:
            skipped.append((block, unit))
        elif not guard.allows(block, unit):
            guard.refuse(block)
        else:
            guard.remove(block, unit)
            _remove(block, unit)
            size -= cost
    skipped = [item for item in skipped if _removal_cost(*item) and guard.allows(*item)]
    if size > goal and skipped:
        best = min(skipped, key=lambda item: abs(size - _removal_cost(*item) - goal))
        if abs(size - _removal_cost(*best) - goal) < size - goal:
            guard.remove(*best)
            _remove(*best)


def _as_gates(scores: Gates, blocks: list[_SubBlockState]) -> Gates:
    """Hard gates for every scored key: 1 = kept, 0 = removed."""
    state = {(b.modality, b.layer, b.units_key): b for b in blocks}
    out: Gates = {}
    for modality, layers in scores.items():
        out[modality] = []
        for index, layer_scores in enumerate(layers):
            gates = {}
            for spec in SUB_BLOCKS[modality]:
                block = state.get((modality, index, spec.units))
                for key in (spec.units, spec.block):
                    if key not in layer_scores:
                        continue
                    reference = layer_scores[key]
                    if block is None:  # a sub-block without units: nothing to keep
                        gates[key] = torch.zeros_like(reference, dtype=torch.float32)
                    elif key == spec.units:
                        alive = torch.tensor(block.alive, dtype=torch.float32, device=reference.device)
                        gates[key] = alive if not block.removed else torch.zeros_like(alive)
                    else:
                        gates[key] = torch.tensor(0.0 if block.removed else 1.0, device=reference.device)
            out[modality].append(gates)
    return out


__all__ = ["check_targets", "reachable_sparsity", "select_structure", "select_structures", "sparsity_of"]
