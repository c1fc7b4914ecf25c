"""One-shot modal-adaptive pruning: score every head and FFN neuron on calibration data, keep the best under the
budget, then recover with distillation. No L0 training.

The importance of a unit is the first-order Taylor estimate of the loss change when it is removed (Michel et al.,
2019, for heads; Molchanov et al., 2019): with a gate ``z = 1`` on the unit, ``I = sum over batches |dL/dz|``. The
gates are the model's own pruning hooks (``gates_applied``), so the same code scores vision, text and fusion units,
self- and cross-attention heads and FFN neurons. Scores are divided by each unit's cost under the budget (parameters
or FLOPs) and ranked *globally* across the encoders (and decoder), as UPop ranks across modalities, so the split of the
budget between modalities follows the data; ``efficientvlm.pruning.budget`` then removes the cheapest-per-importance
units until the exact size meets the target.

    scores = importance_scores(student, calibration_batches)                    # {modality: [{key: (units,)}]}
    pruned = one_shot_prune(student, calibration_batches, target_sparsity=0.5, budget="flops")
    # then recover: DistillationTrainer(model=pruned, teacher_model=teacher, ...).train()

When to use which: L0 pruning (``ModalAdaptivePruningTrainer``) learns the structure while fine-tuning under the
teacher, which costs a full training run; one-shot pruning costs a few forward/backward passes and needs a recovery
run after it (see the README's benchmark for both on the shapes task).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from .budget import Gates, Target, check_targets, select_structures, sparsity_of
from .l0 import PRUNABLE_STRUCTURES, SUB_BLOCKS_BY_UNITS, _unit_structure, gates_applied
from .materialize import materialize
from .structure import SUB_BLOCKS, check_budget, check_modality, layer_sizes, model_modalities, sub_block_costs

ONE_SHOT_METHOD = "one-shot modal-adaptive pruning (first-order Taylor importance per unit of cost)"


def _unit_gates(config, structures: Sequence[str], modalities: Sequence[str] | None, device) -> Gates:
    """All-ones unit gates that require grad, for every present sub-block of the scored modalities (default: all of
    the model's)."""
    gates: Gates = {}
    for modality in model_modalities(config) if modalities is None else modalities:
        gates[modality] = []
        for units_of in layer_sizes(config)[modality]:
            layer = {}
            for spec in SUB_BLOCKS[modality]:
                if units_of[spec.units] and _unit_structure(spec) in structures:
                    layer[spec.units] = torch.ones(units_of[spec.units], device=device, requires_grad=True)
            gates[modality].append(layer)
    return gates


def _check(structures: Sequence[str], modalities: Sequence[str] | None, config=None) -> None:
    unknown = [s for s in structures if s not in PRUNABLE_STRUCTURES or s == "blocks"]
    if unknown or not structures:
        raise ValueError(f"structures={tuple(structures)!r}: one-shot pruning scores 'heads' and/or 'ffn' (a "
                         f"sub-block vanishes when its last unit goes).")
    if modalities is None:
        return
    if not modalities:
        raise ValueError("modalities is empty: name one or more of vision, text, fusion (decoder).")
    for modality in modalities:
        check_modality(modality)
        if config is not None and modality not in model_modalities(config):
            raise ValueError(f"modalities={tuple(modalities)}: this model has no {modality} (its modalities: "
                             f"{model_modalities(config)}).")


def importance_scores(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], *,
                      structures: Sequence[str] = ("heads", "ffn"), modalities: Sequence[str] | None = None
                      ) -> Gates:
    """First-order Taylor importance ``sum_b |dL_b/dz|`` of every head and FFN neuron, in the nested gate layout.

    Args:
        model: any EfficientVLM task model; ``model(**batch).loss`` must exist (the batches carry labels).
        batches: calibration batches, e.g. a ``DataLoader`` with the task collator.
        structures: ``"heads"`` (self- and cross-attention) and/or ``"ffn"``.
        modalities: encoders (and ``"decoder"``) to score; default: every modality of the model.

    The model's weights and their gradients are left untouched; it is run in eval mode (no dropout).

    Raises:
        ValueError: no batches, or a batch for which the model returns no loss.
    """
    _check(structures, modalities, model.config)
    if hasattr(batches, "__len__") and len(batches) == 0:
        raise ValueError("The calibration set has zero batches: give at least one batch of task data with labels.")
    device = next(model.parameters()).device
    gates = _unit_gates(model.config, structures, modalities, device)
    leaves = [z for layers in gates.values() for layer in layers for z in layer.values()]
    totals = [torch.zeros_like(z, requires_grad=False) for z in leaves]
    was_training = model.training
    model.eval()
    count = 0
    try:
        with gates_applied(model, gates):
            for batch in batches:
                inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                loss = model(**inputs).loss
                if loss is None:
                    raise ValueError("The model returned no loss for a calibration batch: the batches must carry "
                                     "labels (use the task's collator on labelled data).")
                grads = torch.autograd.grad(loss, leaves, allow_unused=True)
                for total, grad in zip(totals, grads):
                    if grad is not None:
                        total += grad.detach().abs()
                count += 1
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("The calibration set has zero batches: give at least one batch of task data with labels.")
    scores: Gates = {}
    iterator = iter(totals)
    for modality, layers in gates.items():
        scores[modality] = [{key: next(iterator) for key in layer} for layer in layers]
    return scores


def per_unit_of_cost(scores: Gates, config, budget: str = "params", text_length: int = 40,
                     image_size: int | None = None) -> Gates:
    """``scores`` divided by each unit's cost (parameters or FLOPs), so that ranking them trades importance against
    size across modalities whose units cost very different amounts."""
    costs = sub_block_costs(config, budget, text_length, image_size)
    return {modality: [{key: value / costs[modality][SUB_BLOCKS_BY_UNITS[key].name].unit
                        for key, value in layer.items()}
                       for layer in layers]
            for modality, layers in scores.items()}


def one_shot_prune(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]],
                   target_sparsity: Target | Sequence[Target], *, budget: str = "params", text_length: int = 40,
                   image_size: int | None = None, structures: Sequence[str] = ("heads", "ffn"),
                   modalities: Sequence[str] | None = None) -> nn.Module | list[nn.Module]:
    """Score (``importance_scores``), rank per unit of cost across modalities, remove units until the exact size
    meets ``target_sparsity``, and materialise. A list of increasing targets gives a nested family of models.

    The targets, structures and budget are checked before any scoring. ``config.pruning_info`` of each model
    records the method, target, budget and achieved sparsity (overall and per modality). Recover the accuracy
    afterwards with ``DistillationTrainer`` (the teacher, or the unpruned model, as teacher).
    """
    check_budget(budget)
    _check(structures, modalities, model.config)
    modalities = model_modalities(model.config) if modalities is None else modalities
    family = isinstance(target_sparsity, Sequence) and not isinstance(target_sparsity, str)
    targets = list(target_sparsity) if family else [target_sparsity]
    # validate the targets against the scored structure before the (costly) scoring
    placeholder = _unit_gates(model.config, structures, modalities, "cpu")
    check_targets({m: [{k: v.detach() for k, v in layer.items()} for layer in layers]
                   for m, layers in placeholder.items()}, model.config, targets, budget=budget,
                  text_length=text_length, image_size=image_size)

    scores = importance_scores(model, batches, structures=structures, modalities=modalities)
    ranked = per_unit_of_cost(scores, model.config, budget, text_length, image_size)
    selections = select_structures(ranked, model.config, targets, budget=budget, text_length=text_length,
                                   image_size=image_size)
    models = []
    for target, zs in zip(targets, selections):
        achieved = sparsity_of(zs, model.config, budget, text_length, image_size)
        info = {"method": ONE_SHOT_METHOD, "target_sparsity": target, "budget": budget,
                "pruned_structures": list(structures), "pruned_modalities": list(modalities),
                "achieved_sparsity": {key: round(value, 6) for key, value in achieved.items()}}
        if family:
            info["family"] = targets
        models.append(materialize(model, zs, pruning_info=info))
    return models if family else models[0]


__all__ = ["ONE_SHOT_METHOD", "importance_scores", "one_shot_prune", "per_unit_of_cost"]
