"""Materialise pruning: a dense, smaller model whose config records every layer's new size.

``prune_model(model, keep)`` slices a model by explicit keep-lists; ``materialize(model, zs)`` turns gate values
(the deterministic gates of a ``ModalAdaptiveL0Module``) into keep-lists, folds fractional gate values into the
weights and calls ``prune_model``. The result is an ordinary model of the same class: ``save_pretrained`` then
``from_pretrained`` rebuilds it from its config, with strict loading and no masks.

Keep-lists name, per modality and layer, the units to keep::

    keep = {
        "vision": [{"heads": [0, 2], "ffn": [0, 5, 7, ...]}, ...],           # one dict per vision layer
        "text":   [{"heads": [...], "ffn": [...]}, ...],
        "fusion": [{"heads": [...], "cross_heads": [...], "ffn": [...]}, ...],
        "decoder": [{"heads": [...], "cross_heads": [...], "ffn": [...]}, ...],   # generative VQA only
    }

A missing modality or key keeps that part whole; an empty list removes the sub-block (its projections, bias and
LayerNorm: the residual passes through). Indices refer to the model being pruned; kept units keep their order.
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .distributed import full_model
from .l0 import Gates
from .structure import (
    LAYER_NORMS,
    SUB_BLOCKS,
    check_modality,
    declared_gates,
    encoder_layers,
    layer_sizes,
    sizes_cost,
    sub_block_costs,
    sub_config,
    unwrap,
)

#: ``{modality: [{units key: indices to keep} per layer]}``
KeepLists = dict[str, list[dict[str, list[int]]]]


def keep_lists_from_gates(zs: Gates) -> KeepLists:
    """Keep-lists of the non-zero units in ``zs``; a sub-block whose block gate is 0 gets an empty list.

    Sub-blocks with a block gate but no unit gates are kept whole (no entry) unless the block gate is 0. Gates that
    are NaN, infinite or outside [0, 1] are refused with a ``ValueError`` naming them.
    """
    _check_gate_values(zs)
    keep: KeepLists = {}
    for modality, layers in zs.items():
        check_modality(modality)
        keep[modality] = []
        for gates in layers:
            layer_keep = {}
            for spec in SUB_BLOCKS[modality]:
                unit_z, block_z = gates.get(spec.units), gates.get(spec.block)
                if block_z is not None and float(block_z) == 0.0:
                    layer_keep[spec.units] = []
                elif unit_z is not None:
                    layer_keep[spec.units] = torch.nonzero(unit_z.detach()).flatten().tolist()
            keep[modality].append(layer_keep)
    return keep


def prune_model(model: nn.Module, keep: Mapping[str, Sequence[Mapping[str, Sequence[int]]]],
                pruning_info: Mapping | None = None) -> nn.Module:
    """A new model of ``type(model)`` that keeps only the listed heads and FFN neurons (the input is unchanged).

    Args:
        model: any EfficientVLM model (base model or task head), also wrapped or sharded for training (DDP, FSDP,
            DeepSpeed): its full parameters are gathered first (``efficientvlm.pruning.distributed.full_model``; a
            collective then, to call on every process) and the result is an ordinary unwrapped model.
        keep: keep-lists, see the module docstring.
        pruning_info: extra JSON-serialisable facts for ``config.pruning_info`` (target, budget, ...). The parameter
            counts of the prunable part before and after, overall and per modality, are always recorded there.

    Returns:
        The pruned model, in the input's train/eval mode, dtype and device, with no pruning hooks set. Its config's
        per-layer fields (``num_attention_heads``, ``num_cross_attention_heads``, ``intermediate_size``) are lists of
        the new sizes.

    Raises:
        ValueError: a keep-list names an unknown modality or key, has one entry too many or too few, lists an index
            twice, out of range, or not an integer (``2.5`` is refused, not truncated to 2).
    """
    source = full_model(model)  # unwrapped; a gathered copy when the parameters are sharded
    before = layer_sizes(source.config)
    kept = _normalise_keep(keep, before)
    pruned = _copy_without_gates(source) if source is unwrap(model) else source
    for modality, layers in kept.items():
        for layer, layer_keep in zip(encoder_layers(pruned, modality), layers):
            for spec in SUB_BLOCKS[modality]:
                indices = layer_keep.get(spec.units)
                if indices is None:
                    continue
                if not indices:
                    setattr(layer, spec.module, None)
                    setattr(layer, LAYER_NORMS[modality][spec.name], None)
                elif spec.name == "ffn":
                    _prune_mlp(getattr(layer, spec.module), indices)
                else:
                    _prune_attention(getattr(layer, spec.module), indices)

    after = {modality: [{key: len(units) for key, units in layer.items()} for layer in layers]
             for modality, layers in _resolve_all(kept, before).items()}
    config = pruned.config
    for modality, layers in after.items():
        sub = sub_config(config, modality)
        for spec in SUB_BLOCKS[modality]:
            setattr(sub, spec.config_field, [layer[spec.units] for layer in layers])
    config.pruning_info = {**_size_summary(source.config, before, after), **dict(pruning_info or {})}
    _check_matches_config(pruned)
    return pruned


def materialize(model: nn.Module, zs: Gates, pruning_info: Mapping | None = None) -> nn.Module:
    """Prune ``model`` to the structure selected by gate values ``zs`` (e.g. ``l0.deterministic()``).

    Units with gate 0 are removed and sub-blocks whose block gate is 0 (or all of whose units are 0) disappear.
    Unit gates strictly between 0 and 1 are folded into the weights that read the unit (the head's ``out_proj``
    input columns, the neuron's ``fc2`` input column), so the result equals the gated model. Block gates must be
    exactly 0 or 1: a fractional gate on a post-LayerNorm block cannot be folded into weights. Gates that are NaN,
    infinite or outside [0, 1] (e.g. from a diverged run) are refused with a ``ValueError`` naming them, before
    anything is copied: they would be baked into the weights.

    Args:
        model: the model the gates were learned on (also wrapped or sharded for training, see ``prune_model``).
        zs: nested gate values as produced by ``ModalAdaptiveL0Module``.
        pruning_info: passed to ``prune_model``.
    """
    _check_gate_values(zs)
    for modality, layers in zs.items():
        for index, gates in enumerate(layers):
            for spec in SUB_BLOCKS[modality]:
                block_z = gates.get(spec.block)
                if block_z is not None and float(block_z) not in (0.0, 1.0):
                    raise ValueError(f"{modality} layer {index}: block gate {spec.block}={float(block_z)} is not 0 "
                                     f"or 1; use the deterministic gates (l0.deterministic() / eval mode).")
    keep = keep_lists_from_gates(zs)
    pruned = prune_model(model, keep, pruning_info)
    with torch.no_grad():
        for modality, layers in zs.items():
            for layer, gates, layer_keep in zip(encoder_layers(pruned, modality), layers, keep[modality]):
                for spec in SUB_BLOCKS[modality]:
                    unit_z, indices = gates.get(spec.units), layer_keep.get(spec.units)
                    if unit_z is None or not indices:
                        continue
                    scale = unit_z.detach()[indices]
                    module = getattr(layer, spec.module)
                    if spec.name == "ffn":
                        reader = module.fc2
                    else:
                        reader, scale = module.out_proj, scale.repeat_interleave(module.head_dim)
                    reader.weight.mul_(scale.to(reader.weight)[None, :])
    return pruned


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------


def _check_gate_values(zs: Gates) -> None:
    """Refuse gates that are NaN, infinite or outside [0, 1], naming where they are."""
    for modality, layers in zs.items():
        check_modality(modality)
        for index, gates in enumerate(layers):
            for key, z in gates.items():
                values = torch.as_tensor(z).detach().float().reshape(-1)
                bad = torch.nonzero(~torch.isfinite(values) | (values < 0) | (values > 1)).flatten().tolist()
                if bad:
                    shown = ", ".join(f"{values[i].item():g}" for i in bad[:5]) + (", ..." if len(bad) > 5 else "")
                    where = f"units {bad[:10]}{' ...' if len(bad) > 10 else ''}" if values.numel() > 1 else "the gate"
                    raise ValueError(
                        f"zs[{modality!r}][{index}][{key!r}] holds {shown} at {where}: gate values must be finite and "
                        "in [0, 1], else they are baked into the weights. NaN or infinite gates mean the run diverged: "
                        "use the gates of a checkpoint from before the divergence (l0.deterministic() / "
                        "budget_gates() of a finite L0 module)."
                    )


def _check_index(value, where: str) -> int:
    """An index of a keep-list as an ``int``; floats, bools and other types are refused rather than truncated."""
    if torch.is_tensor(value) and value.numel() == 1 and not value.is_floating_point() and value.dtype != torch.bool \
            and not value.is_complex():
        return int(value)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    raise ValueError(f"{where} holds {value!r} ({type(value).__name__}): indices must be integers (a float index is "
                     "not truncated, it is refused). Pass the unit numbers as ints, e.g. "
                     "torch.nonzero(gate).flatten().tolist().")


def _normalise_keep(keep, sizes) -> dict[str, list[dict[str, list[int]]]]:
    """Validate keep-lists against the model's sizes; return sorted index lists (missing entries stay missing)."""
    out: dict[str, list[dict[str, list[int]]]] = {}
    for modality, layers in keep.items():
        check_modality(modality)
        if modality not in sizes:
            raise ValueError(f"keep has {modality!r} entries, but the model has no {modality} (its modalities: "
                             f"{tuple(sizes)}).")
        model_layers = sizes[modality]
        if len(layers) != len(model_layers):
            raise ValueError(f"keep[{modality!r}] has {len(layers)} entries; the model has {len(model_layers)} "
                             f"{modality} layers (give one dict per layer, {{}} keeps a layer whole).")
        out[modality] = []
        for index, (layer_keep, units_of) in enumerate(zip(layers, model_layers)):
            unknown = set(layer_keep) - set(units_of)
            if unknown:
                raise ValueError(f"keep[{modality!r}][{index}] has unknown keys {sorted(unknown)}; "
                                 f"{modality} layers have {sorted(units_of)}.")
            normalised = {}
            for key, indices in layer_keep.items():
                where = f"keep[{modality!r}][{index}][{key!r}]"
                values = sorted(_check_index(i, where) for i in indices)
                if len(set(values)) != len(values):
                    raise ValueError(f"{where} lists an index twice: {values}.")
                if values and not 0 <= values[0] <= values[-1] < units_of[key]:
                    raise ValueError(f"{where}={values} is out of range: that sub-block has {units_of[key]} units.")
                normalised[key] = values
            out[modality].append(normalised)
    return out


def _resolve_all(kept, sizes) -> dict[str, list[dict[str, list[int]]]]:
    """Complete keep-lists: every modality, layer and sub-block, with the missing ones kept whole."""
    resolved = {}
    for modality in sizes:
        layers = kept.get(modality) or [{} for _ in sizes[modality]]
        resolved[modality] = [{key: layer_keep.get(key, list(range(n))) for key, n in units_of.items()}
                              for layer_keep, units_of in zip(layers, sizes[modality])]
    return resolved


def _copy_without_gates(model: nn.Module) -> nn.Module:
    """A deep copy of the model without pruning gates (gate tensors may be non-leaf tensors that cannot be copied);
    the input keeps its gates."""
    saved = [(module, name, getattr(module, name)) for module in model.modules() for name in declared_gates(module)]
    for module, name, _ in saved:
        setattr(module, name, None)
    try:
        return copy.deepcopy(model)
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def _slice_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new ``nn.Linear`` keeping ``index`` along ``dim`` of the weight (0: outputs, 1: inputs); same dtype,
    device and ``requires_grad``."""
    weight = linear.weight.detach().index_select(dim, index).clone()
    sliced = nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None, device="meta")
    sliced.weight = nn.Parameter(weight, requires_grad=linear.weight.requires_grad)
    if linear.bias is not None:
        bias = linear.bias.detach()
        sliced.bias = nn.Parameter((bias.index_select(0, index) if dim == 0 else bias).clone(),
                                   requires_grad=linear.bias.requires_grad)
    return sliced


def _prune_attention(attention: nn.Module, heads: list[int]) -> None:
    if len(heads) == attention.num_heads:
        return
    device = attention.q_proj.weight.device
    index = (torch.tensor(heads, device=device)[:, None] * attention.head_dim
             + torch.arange(attention.head_dim, device=device)[None, :]).flatten()
    for name in ("q_proj", "k_proj", "v_proj"):
        setattr(attention, name, _slice_linear(getattr(attention, name), index, dim=0))
    attention.out_proj = _slice_linear(attention.out_proj, index, dim=1)
    attention.num_heads = len(heads)


def _prune_mlp(mlp: nn.Module, neurons: list[int]) -> None:
    if len(neurons) == mlp.fc1.out_features:
        return
    index = torch.tensor(neurons, device=mlp.fc1.weight.device)
    mlp.fc1 = _slice_linear(mlp.fc1, index, dim=0)
    mlp.fc2 = _slice_linear(mlp.fc2, index, dim=1)


def _size_summary(config, before, after) -> dict:
    """Parameter counts of the prunable part before / after, overall and per modality (JSON-serialisable)."""
    costs = sub_block_costs(config, "params")
    size_before = {m: sum(v) for m, v in sizes_cost(before, costs).items()}
    size_after = {m: sum(v) for m, v in sizes_cost(after, costs).items()}

    def entry(b: int, a: int) -> dict:
        return {"params_before": b, "params_after": a, "sparsity": round(1 - a / b, 6) if b else 0.0}

    total = entry(sum(size_before.values()), sum(size_after.values()))
    return {"prunable": total, "per_modality": {m: entry(size_before[m], size_after[m]) for m in size_before}}


def _check_matches_config(model: nn.Module) -> None:
    """Guard the config contract: the pruned weights must have exactly the shapes its config builds."""
    with torch.device("meta"):
        skeleton = type(model)(copy.deepcopy(model.config))
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    actual = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if expected != actual:
        diff = sorted(set(expected.items()) ^ set(actual.items()))
        raise RuntimeError(f"The pruned model does not match the model its config describes: {diff[:10]}")
