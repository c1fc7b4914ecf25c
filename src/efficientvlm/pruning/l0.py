"""Modal-adaptive L0 pruning: hard-concrete gates on the three encoders (and the answer decoder of generative VQA)
under one sparsity budget.

``ModalAdaptiveL0Module`` holds, for each pruned modality (vision, text, fusion; decoder) and layer, a
``HardConcreteGate``
group per gated structure:

* ``"heads"`` / ``"cross_heads"``: one gate per self-attention / cross-attention head (structure ``"heads"``);
* ``"ffn"``: one gate per FFN neuron (structure ``"ffn"``);
* ``"attention_block"`` / ``"cross_attention_block"`` / ``"ffn_block"``: one gate for the whole sub-block
  (structure ``"blocks"``), so a layer's attention or FFN can vanish as a unit.

Only sub-blocks that exist in the model get gates. The gates live in this module, not in the model: a trainer
checkpoints ``l0.state_dict()`` (``log_alpha`` of every group, ``lambda_1``, ``lambda_2``) next to the model.

Gate values travel as a nested dict, the same shape as ``prune_model``'s keep-lists::

    zs = {"vision": [{"heads": z (num_heads,), "ffn": z (intermediate,), ...} per layer],
          "text": [...], "fusion": [{"heads": ..., "cross_heads": ..., "ffn": ..., "ffn_block": z ()}, ...]}

Modal adaptivity (the paper): all gates feed ONE expected sparsity ``s`` of the prunable part of the whole model
under ONE Lagrangian ``lambda_1 (s - t) + lambda_2 (s - t)^2``, so how the budget is split between vision, text
and fusion (and the decoder: the paper's VQA model prunes its answer decoder under the same budget) is learned.
Passing a dict of per-modality targets instead gives one term (and one pair of lambdas) per modality: a fixed split,
for comparison.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..models.configuration_efficientvlm import EfficientVLMConfig
from .budget import reachable_sparsity, select_structures
from .gates import LOG_ALPHA_MIN, HardConcreteGate, keep_probability
from .structure import (
    BUDGETS,
    SUB_BLOCKS,
    SubBlockCost,
    SubBlockSpec,
    check_budget,
    check_modality,
    declared_gates,
    encoder_layers,
    layer_sizes,
    model_modalities,
    sub_block_costs,
    unwrap,
)

#: the sub-block specs by their units key
SUB_BLOCKS_BY_UNITS = {spec.units: spec for specs in SUB_BLOCKS.values() for spec in specs}

#: structures that can be gated
PRUNABLE_STRUCTURES: tuple[str, ...] = ("heads", "ffn", "blocks")

#: nested gate values: ``{modality: [{gate key: tensor} per layer]}``
Gates = dict[str, list[dict[str, torch.Tensor]]]
Target = float | Mapping[str, float]


@dataclass(frozen=True)
class _SubBlock:
    """One present sub-block of one layer and the keys of its gates (``None`` = not gated)."""

    modality: str
    layer: int
    spec: SubBlockSpec
    units: int
    unit_gate: str | None
    block_gate: str | None


def _unit_structure(spec: SubBlockSpec) -> str:
    return "ffn" if spec.name == "ffn" else "heads"


def apply_gates(model: nn.Module, zs: Gates) -> None:
    """Set the model's pruning gates from ``zs`` (replacing any gates set before).

    Unit gates go to ``head_gate`` / ``neuron_gate`` of the sub-block modules, block gates to the layer's
    ``attention_gate`` / ``cross_attention_gate`` / ``ffn_gate``: the gate buffers those modules declare
    (``register_pruning_gates``). ``model`` may be wrapped (DDP, FSDP, DeepSpeed, ``torch.compile``): the gates are
    set on the modules whose ``forward`` runs (``encoder_layers`` looks through the wrappers). Structures absent from
    ``zs`` stay ungated.
    """
    clear_gates(model)
    for modality, layer_gates in zs.items():
        layers = encoder_layers(model, modality)
        if len(layer_gates) != len(layers):
            raise ValueError(f"Gates for {len(layer_gates)} {modality} layers, but the model has {len(layers)}.")
        for index, (layer, gates) in enumerate(zip(layers, layer_gates)):
            for spec in SUB_BLOCKS[modality]:
                module = getattr(layer, spec.module)
                module = None if module is None else unwrap(module)
                unit_z, block_z = gates.get(spec.units), gates.get(spec.block)
                if (unit_z is not None or block_z is not None) and module is None:
                    raise ValueError(f"{modality} layer {index} has no {spec.name} sub-block to gate.")
                if unit_z is not None:
                    expected = module.num_heads if spec.name != "ffn" else module.fc1.out_features
                    if unit_z.shape != (expected,):
                        raise ValueError(f"{modality} layer {index}: {spec.units} gates of shape "
                                         f"{tuple(unit_z.shape)} for {expected} units.")
                    _set_gate(module, spec.unit_gate, unit_z)
                if block_z is not None:
                    _set_gate(layer, spec.layer_gate, block_z)


def _set_gate(module: nn.Module, name: str, value: torch.Tensor) -> None:
    if name not in declared_gates(module):
        raise TypeError(f"{type(module).__name__} declares no pruning gate {name!r} (its gates: "
                        f"{declared_gates(module)}); it must be an EfficientVLM module.")
    setattr(module, name, value)


def clear_gates(model: nn.Module) -> None:
    """Remove every pruning gate from the model (back to the plain dense forward), wrapped or not."""
    for module in model.modules():  # wrappers hold the modules they wrap as children
        for name in declared_gates(module):
            setattr(module, name, None)


@contextlib.contextmanager
def gates_applied(model: nn.Module, zs: Gates) -> Iterator[nn.Module]:
    """``with gates_applied(model, zs): model(...)`` - the hooks are set inside the block and cleared after it.

    With gradient checkpointing the layers re-run their forward during ``backward()`` and read the hooks again:
    keep the gates applied until after ``backward()`` (``apply_gates`` ... ``clear_gates``).
    """
    apply_gates(model, zs)
    try:
        yield model
    finally:
        clear_gates(model)


class ModalAdaptiveL0Module(nn.Module):
    """L0 gates for the vision, text and fusion encoders (and the answer decoder) of an EfficientVLM model, and their
    Lagrangian.

    Args:
        config: the config of the model to prune (its per-layer sizes decide which gates exist).
        target_sparsity: the final target. A float: ONE constraint on the sparsity of the whole prunable part
            (modal-adaptive, the paper). A dict ``{modality: target}``: one constraint per listed modality
            (a fixed split, for comparison).
        prune: gated structures, any of ``"heads"`` (self- and cross-attention heads), ``"ffn"`` (FFN neurons)
            and ``"blocks"`` (whole attention / cross-attention / FFN sub-blocks). The paper: heads and FFN.
        modalities: encoders (and ``"decoder"``) that get gates; default: every modality of the model
            (``model_modalities(config)``). The others stay whole but still count in the prunable size.
        budget: what the sparsity measures: ``"params"`` (the paper) or ``"flops"`` (multiply-accumulates per
            image-text pair, where the many vision tokens make vision layers expensive).
        warmup_steps: ``target_at(step)`` ramps linearly from 0 to the target over this many steps (the official
            code: one epoch).
        text_length: text tokens per example for the FLOP budget.
        image_size: image resolution for the FLOP budget (default: the config's).
        droprate_init: initial ``log_alpha = log((1 - p) / p)``; a float, or a dict with keys from ``prune``.
            The default 0.01 starts every gate near "keep" (about 0 expected sparsity); see ``HardConcreteGate``.
        init_std: noise on the initial ``log_alpha``.

    Sparsity is ``1 - size / full size`` where sizes count the prunable part: the parameters (or FLOPs) of the
    encoder layers' attention and FFN sub-blocks (see ``efficientvlm.pruning.structure``). Embeddings, the vision
    pre/post LayerNorms, the projections and task heads are not prunable and not counted, as in the paper.

    Raises:
        ValueError: a target outside ``[0, 1)`` or one the gates cannot reach (the message gives the largest
            reachable sparsity and what to change).

    Driving it from a trainer, per step (``l0`` in train mode, on the model's device)::

        zs = l0()                                            # sampled gates
        with l0.applied(model, zs):                          # hooks stay set through backward (checkpointing)
            loss = task_and_distillation_loss(model(**batch)) + l0.lagrangian(l0.target_at(global_step))
            loss.backward()
        model_optimizer.step(); l0_optimizer.step(); l0.clamp_()

    ``l0_optimizer = l0.create_optimizer(reg_lr)`` (or ``l0.param_groups(...)`` in an optimizer of your own): the
    ``log_alpha`` group is minimised, the lambda group maximised. Keep these parameters out of the model's
    optimizer, weight decay, LR scheduler and gradient clipping. Evaluate with ``l0.eval()`` (deterministic
    gates); checkpoint ``l0.state_dict()`` and the L0 optimizer's state; at the end ``materialize(model,
    l0.deterministic())``.
    """

    def __init__(self, config: EfficientVLMConfig, target_sparsity: Target, *,
                 prune: Sequence[str] = ("heads", "ffn"), modalities: Sequence[str] | None = None,
                 budget: str = "params", warmup_steps: int = 0, text_length: int = 40,
                 image_size: int | None = None, droprate_init: float | Mapping[str, float] = 0.01,
                 init_std: float = 0.01):
        super().__init__()
        self.prune = tuple(dict.fromkeys(prune))
        unknown = [p for p in self.prune if p not in PRUNABLE_STRUCTURES]
        if unknown or not self.prune:
            raise ValueError(f"prune={tuple(prune)!r}: choose one or more of {PRUNABLE_STRUCTURES}.")
        self.all_modalities = model_modalities(config)
        self.modalities = tuple(dict.fromkeys(self.all_modalities if modalities is None else modalities))
        for modality in self.modalities:
            check_modality(modality)
            if modality not in self.all_modalities:
                raise ValueError(f"modalities={self.modalities}: this model has no {modality} (its modalities: "
                                 f"{self.all_modalities}).")
        check_budget(budget)
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}.")
        self.config = config
        self.budget = budget
        self.warmup_steps = warmup_steps
        self.text_length = text_length
        self.image_size = image_size
        self.costs = {b: sub_block_costs(config, b, text_length, image_size) for b in BUDGETS}

        if isinstance(droprate_init, Mapping):
            droprates = dict(droprate_init)
        else:
            droprates = dict.fromkeys(self.prune, droprate_init)
        if set(droprates) != set(self.prune):
            raise ValueError(f"droprate_init keys {sorted(droprates)} must be the pruned structures {self.prune}.")

        self.sub_blocks: list[_SubBlock] = []
        self.gates = nn.ModuleDict()
        for modality, layers in layer_sizes(config).items():
            gated = modality in self.modalities
            if gated:
                self.gates[modality] = nn.ModuleList()
            for index, units_of in enumerate(layers):
                groups = nn.ModuleDict()
                for spec in SUB_BLOCKS[modality]:
                    units = units_of[spec.units]
                    if units == 0:
                        continue
                    unit_key = spec.units if gated and _unit_structure(spec) in self.prune else None
                    block_key = spec.block if gated and "blocks" in self.prune else None
                    if unit_key:
                        groups[unit_key] = HardConcreteGate(units, droprates[_unit_structure(spec)], init_std)
                    if block_key:
                        groups[block_key] = HardConcreteGate(1, droprates["blocks"], init_std)
                    self.sub_blocks.append(_SubBlock(modality, index, spec, units, unit_key, block_key))
                if gated:
                    self.gates[modality].append(groups)

        self.full_size = {b: self._size_floats(b, None) for b in BUDGETS}
        self.min_size = {b: self._size_floats(b, LOG_ALPHA_MIN) for b in BUDGETS}
        self.per_modality = isinstance(target_sparsity, Mapping)
        self.target_sparsity = self._check_target(target_sparsity)
        shape = (len(self.target_sparsity),) if self.per_modality else ()
        self.lambda_1 = nn.Parameter(torch.zeros(shape))
        self.lambda_2 = nn.Parameter(torch.zeros(shape))

    # ------------------------------------------------------------------------------------------------------------
    # gates
    # ------------------------------------------------------------------------------------------------------------

    def forward(self) -> Gates:
        """The gates: a sample in training mode, the deterministic evaluation gates in eval mode."""
        return self.sample() if self.training else self.deterministic()

    def sample(self) -> Gates:
        """Stochastic gates (differentiable in ``log_alpha``); block gates are 0-d scalars."""
        return self._map_gates(lambda gate: gate.sample())

    def deterministic(self) -> Gates:
        """Hard 0/1 gates from the paper's evaluation rule, per gate group (see ``efficientvlm.pruning.gates``)."""
        return self._map_gates(lambda gate: gate.deterministic())

    def keep_probabilities(self) -> Gates:
        """``P(z != 0)`` of every gate, in the nested gate layout."""
        return self._map_gates(lambda gate: gate.keep_probability())

    def export_scores(self) -> Gates:
        """Scores for the budget-exact export: each unit's keep probability times its block gate's (when blocks are
        gated too), and the block gates' keep probabilities."""
        scores = self.keep_probabilities()
        for layers in scores.values():
            for gates in layers:
                for spec in SUB_BLOCKS_BY_UNITS.values():
                    if spec.units in gates and spec.block in gates:
                        gates[spec.units] = gates[spec.units] * gates[spec.block]
        return scores

    @torch.no_grad()
    def learned_split(self, target_sparsity: float) -> dict[str, float]:
        """Per-modality targets that spread ``target_sparsity`` over the gated modalities in the proportions the
        gates learned: ``t_m = min(1, k * s_m)`` with ``s_m`` the expected sparsity of modality ``m`` and ``k`` such
        that the size-weighted sum of the ``t_m`` is the target. When the gates have converged (``s = target``),
        ``k = 1`` and ``t_m = s_m``. (``s_m`` gets a floor of 1% of the target, so that gates that have not moved
        yet still share the budget.) ``t_m`` is capped at what the export can reach in modality ``m``
        (``budget.reachable_sparsity``: the fusion encoder and the decoder keep one cross-attention head each),
        and the other modalities take up what the cap leaves."""
        learned = self.expected_sparsity()
        full = self.full_size[self.budget]
        weights = {m: full[m] / full["overall"] for m in self.modalities if full[m] > 0}
        caps = reachable_sparsity(self.export_scores(), self.config, budget=self.budget,
                                  text_length=self.text_length, image_size=self.image_size)
        reachable = sum(w * caps[m] for m, w in weights.items())
        if reachable < target_sparsity:
            raise ValueError(f"target_sparsity={target_sparsity} cannot be reached: removing every gated unit of "
                             f"{tuple(weights)} (but one cross-attention head of the fusion encoder and of the "
                             f"decoder) gives {reachable:.4f} of the prunable {self.budget}.")
        shares = {m: max(float(learned[m]), 0.0) + 0.01 * target_sparsity for m in weights}

        def total(k: float) -> float:
            return sum(w * min(caps[m], k * shares[m]) for m, w in weights.items())

        low, high = 0.0, 1.0
        while total(high) < target_sparsity:
            high *= 2
        for _ in range(100):
            middle = (low + high) / 2
            low, high = (middle, high) if total(middle) < target_sparsity else (low, middle)
        return {m: min(caps[m], high * shares[m]) for m in weights}

    @torch.no_grad()
    def budget_gates(self, target_sparsity: Target | Sequence[Target] | None = None) -> Gates | list[Gates]:
        """Hard 0/1 gates of the structure to export, whose exact size meets ``target_sparsity`` (default: this
        module's target). A list of increasing targets gives a nested family, one gate dict per target.

        One overall target is split between the gated modalities in the proportions of their learned expected
        sparsities (``learned_split``: the split stays learned); fixed per-modality targets are used as given.
        Within each modality the units with the lowest keep probability (``export_scores``) go first, until the
        exact size meets that modality's share (``efficientvlm.pruning.budget``). Unlike ``deterministic()`` (the
        paper's per-layer rule, which lands on the target only once the gates have converged), the size is the
        target's whatever the run length.

        Why not one ranking of all units by keep probability: before the gates have converged, keep probabilities
        are not comparable across encoders (each ``log_alpha`` moves by about the learning rate per AdamW step,
        whatever its unit costs), and a global ranking then removed 93-98% of a student's fusion encoder for a 65%
        FLOPs target, dropping its shapes-VQA accuracy from 60% to 14-23% (README).
        """
        target = self.target_sparsity if target_sparsity is None else target_sparsity
        family = isinstance(target, Sequence) and not isinstance(target, str)
        targets = list(target) if family else [target]
        splits = [t if isinstance(t, Mapping) else self.learned_split(float(t)) for t in targets]
        zs = select_structures(self.export_scores(), self.config, splits, budget=self.budget,
                               text_length=self.text_length, image_size=self.image_size)
        return zs if family else zs[0]

    def _map_gates(self, fn) -> Gates:
        out: Gates = {}
        for modality, layers in self.gates.items():
            out[modality] = []
            for groups in layers:
                values = {}
                for key, gate in groups.items():
                    value = fn(gate)
                    values[key] = value.reshape(()) if key.endswith("_block") else value
                out[modality].append(values)
        return out

    @torch.no_grad()
    def clamp_(self) -> None:
        """Clamp every ``log_alpha`` to ``[log 0.01, log 100]``; call after each optimiser step."""
        for module in self.modules():
            if isinstance(module, HardConcreteGate):
                module.clamp_()

    def gate_parameters(self) -> list[nn.Parameter]:
        """The ``log_alpha`` parameters (minimised)."""
        return [p for name, p in self.named_parameters() if name.startswith("gates.")]

    def lagrangian_parameters(self) -> list[nn.Parameter]:
        """``lambda_1`` and ``lambda_2`` (maximised)."""
        return [self.lambda_1, self.lambda_2]

    def param_groups(self, lr: float, lambda_lr: float | None = None) -> list[dict]:
        """Optimizer parameter groups: ``log_alpha`` minimised at ``lr``; the lambdas *maximised* (gradient ascent,
        ``maximize=True``) at ``lambda_lr`` (default ``lr``). No weight decay on either."""
        return [
            {"params": self.gate_parameters(), "lr": lr, "weight_decay": 0.0},
            {"params": self.lagrangian_parameters(), "lr": lr if lambda_lr is None else lambda_lr,
             "weight_decay": 0.0, "maximize": True},
        ]

    def create_optimizer(self, lr: float = 0.01, lambda_lr: float | None = None,
                         betas: tuple[float, float] = (0.9, 0.98)) -> torch.optim.AdamW:
        """The official setup: AdamW over ``param_groups`` (``reg_learning_rate`` 0.01; 0.1 for NLVR2). Keep it
        separate from the model's optimizer so that its scheduler and gradient clipping do not touch these."""
        return torch.optim.AdamW(self.param_groups(lr, lambda_lr), lr=lr, betas=betas, weight_decay=0.0)

    # ------------------------------------------------------------------------------------------------------------
    # hooks
    # ------------------------------------------------------------------------------------------------------------

    # (``nn.Module.apply(fn)`` already means "call fn on every submodule", hence ``apply_to``.)

    def apply_to(self, model: nn.Module, zs: Gates | None = None) -> None:
        """Set the model's pruning hooks to ``zs`` (default: ``self()``); see ``apply_gates``."""
        apply_gates(model, self() if zs is None else zs)

    @staticmethod
    def clear(model: nn.Module) -> None:
        """Remove every pruning hook from the model; see ``clear_gates``."""
        clear_gates(model)

    def applied(self, model: nn.Module, zs: Gates | None = None) -> contextlib.AbstractContextManager[nn.Module]:
        """Context manager: the model gated by ``zs`` (default: ``self()``) inside the block; see ``gates_applied``."""
        return gates_applied(model, self() if zs is None else zs)

    # ------------------------------------------------------------------------------------------------------------
    # size, sparsity, Lagrangian
    # ------------------------------------------------------------------------------------------------------------

    def expected_size(self, budget: str | None = None, zs: Gates | None = None) -> dict[str, torch.Tensor]:
        """Expected size of the prunable part, per modality and ``"overall"`` (float64 tensors, differentiable).

        Each present sub-block contributes ``P(block) * (P(any unit kept) * block_cost + sum_u P(u) * unit_cost)``
        with ``P(any unit kept) = 1 - prod(1 - P(u))``: the nested gates multiply, and a sub-block's bias and
        LayerNorm only count while one of its units survives - exactly what ``materialize`` keeps.

        Args:
            budget: ``"params"`` or ``"flops"`` (default: the module's budget).
            zs: gate values to use instead of the keep probabilities. For hard 0/1 gates (``deterministic()``) the
                result is the exact size of the materialised model's prunable part.
        """
        budget = budget or self.budget
        check_budget(budget)
        probabilities = self.keep_probabilities() if zs is None else zs
        zero = self.lambda_1.new_zeros((), dtype=torch.float64)
        sizes = {modality: zero.clone() for modality in self.all_modalities}
        for block in self.sub_blocks:
            cost = self.costs[budget][block.modality][block.spec.name]
            gates = probabilities[block.modality][block.layer] if block.modality in probabilities else {}
            unit_p = gates.get(block.unit_gate) if block.unit_gate else None
            block_p = gates.get(block.block_gate) if block.block_gate else None
            sizes[block.modality] = sizes[block.modality] + _sub_block_size(cost, block.units, unit_p, block_p)
        sizes["overall"] = sum(sizes[m] for m in self.all_modalities)
        return sizes

    def expected_sparsity(self, budget: str | None = None, zs: Gates | None = None) -> dict[str, torch.Tensor]:
        """``1 - expected size / full size``, per modality and ``"overall"`` (0 for an empty modality)."""
        budget = budget or self.budget
        sizes = self.expected_size(budget, zs)
        full = self.full_size[budget]
        return {key: 1 - size / full[key] if full[key] > 0 else size * 0 for key, size in sizes.items()}

    def max_sparsity(self, budget: str | None = None) -> dict[str, float]:
        """The largest expected sparsity the gates can reach (every ``log_alpha`` at its lower clamp), per modality
        and ``"overall"``."""
        budget = budget or self.budget
        full, least = self.full_size[budget], self.min_size[budget]
        return {key: 1 - least[key] / full[key] if full[key] > 0 else 0.0 for key in full}

    def target_at(self, step: int) -> Target:
        """The target at ``step``: linear from 0 to ``target_sparsity`` over ``warmup_steps``, then constant."""
        ramp = 1.0 if self.warmup_steps == 0 else min(1.0, step / self.warmup_steps)
        if self.per_modality:
            return {modality: ramp * target for modality, target in self.target_sparsity.items()}
        return ramp * self.target_sparsity

    def lagrangian(self, target: Target) -> torch.Tensor:
        """``lambda_1 (s - t) + lambda_2 (s - t)^2`` with ``s`` the expected sparsity (per modality: summed over the
        modalities of a dict target). Minimise it over ``log_alpha`` and *maximise* it over the lambdas."""
        sparsity = self.expected_sparsity()
        if self.per_modality:
            if not isinstance(target, Mapping) or set(target) != set(self.target_sparsity):
                raise ValueError(f"This module has per-modality targets for {sorted(self.target_sparsity)}; "
                                 f"pass a dict with those keys (target_at(step) gives one), got {target!r}.")
            gap = torch.stack([sparsity[m] - target[m] for m in self.target_sparsity]).to(self.lambda_1.dtype)
        else:
            if isinstance(target, Mapping):
                raise ValueError("This module has one overall target; pass a float (target_at(step) gives one).")
            gap = (sparsity["overall"] - target).to(self.lambda_1.dtype)
        return (self.lambda_1 * gap + self.lambda_2 * gap * gap).sum()

    # ------------------------------------------------------------------------------------------------------------
    # helpers
    # ------------------------------------------------------------------------------------------------------------

    def _size_floats(self, budget: str, log_alpha: float | None) -> dict[str, float]:
        """Sizes as Python floats: the full model (``log_alpha=None``), or every gate at ``log_alpha``."""
        sizes = dict.fromkeys((*self.all_modalities, "overall"), 0.0)
        for block in self.sub_blocks:
            cost = self.costs[budget][block.modality][block.spec.name]
            unit_p = block_p = None
            if log_alpha is not None:
                p = keep_probability(torch.tensor(log_alpha, dtype=torch.float64))
                unit_p = p.expand(block.units) if block.unit_gate else None
                block_p = p if block.block_gate else None
            size = float(_sub_block_size(cost, block.units, unit_p, block_p))
            sizes[block.modality] += size
            sizes["overall"] += size
        return sizes

    def _check_target(self, target: Target) -> float | dict[str, float]:
        reachable = self.max_sparsity()
        if isinstance(target, Mapping):
            unknown = [m for m in target if m not in self.modalities]
            if unknown or not target:
                raise ValueError(f"Per-modality targets must name pruned modalities {self.modalities}, got "
                                 f"{sorted(target)}.")
            checked = {m: float(t) for m, t in target.items()}
            for modality, value in checked.items():
                self._check_one_target(value, reachable[modality], f"target_sparsity[{modality!r}]")
            return checked
        value = float(target)
        self._check_one_target(value, reachable["overall"], "target_sparsity")
        return value

    def _check_one_target(self, target: float, reachable: float, name: str) -> None:
        if not 0 <= target < 1:
            raise ValueError(f"{name}={target} must be in [0, 1): it is the fraction of the prunable "
                             f"{self.budget} to remove.")
        if target >= reachable:
            raise ValueError(
                f"{name}={target} cannot be reached: with prune={self.prune} on modalities {self.modalities}, the "
                f"expected sparsity ({self.budget}) is at most {reachable:.4f} - the ungated structures stay whole "
                f"and every gate keeps P(z != 0) >= {float(keep_probability(torch.tensor(LOG_ALPHA_MIN))):.3f} "
                f"(log_alpha is clamped at log 0.01). Lower the target below {reachable:.4f}, or gate more "
                f"structures (prune={PRUNABLE_STRUCTURES}) or modalities."
            )

    def extra_repr(self) -> str:
        target = self.target_sparsity
        return (f"target_sparsity={target}, prune={self.prune}, modalities={self.modalities}, "
                f"budget={self.budget!r}, warmup_steps={self.warmup_steps}")


def _sub_block_size(cost: SubBlockCost, units: int, unit_p: torch.Tensor | None,
                    block_p: torch.Tensor | None) -> torch.Tensor | float:
    """Expected size of one sub-block from keep probabilities (or 0/1 gates); ``None`` = not gated."""
    if unit_p is None:
        size = cost.size(units)
    else:
        unit_p = unit_p.to(torch.float64)
        alive = 1 - torch.prod(1 - unit_p)
        size = alive * cost.block + unit_p.sum() * cost.unit
    return size if block_p is None else block_p.to(torch.float64) * size
