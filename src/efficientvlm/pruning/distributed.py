"""Full, unwrapped copies of models that training wrapped or sharded, for ``prune()`` and reports.

Under DDP every process holds the whole model, but under FSDP (FSDP1 flat parameters or FSDP2 ``DTensor`` shards)
and DeepSpeed ZeRO-3 each process holds a slice of every parameter: slicing such tensors, or deep-copying the
wrapped model, gives wrong shapes or a model that still needs the process group. ``full_model(model)`` gathers the
full parameters first (FSDP: the full state dict of ``torch.distributed.checkpoint``; ZeRO-3:
``deepspeed.zero.GatheredParameters``) and loads them into a fresh, unwrapped model of the same class. Gathering is
a collective: every process must call it, and every process gets the full copy.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .structure import unwrap


def _fsdp_module_types() -> tuple[type, ...]:
    types: list[type] = []
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
        types.append(FullyShardedDataParallel)
    except ImportError:  # torch built without distributed support
        pass
    try:
        from torch.distributed.fsdp import FSDPModule
        types.append(FSDPModule)
    except ImportError:
        pass
    return tuple(types)


def sharding_of(model: nn.Module) -> str | None:
    """``"fsdp"`` (FSDP1 or FSDP2), ``"zero3"`` (DeepSpeed ZeRO-3 partitioned parameters) or ``None`` (every
    parameter whole in this process: no wrapper, DDP, DeepSpeed ZeRO-1/2)."""
    fsdp = _fsdp_module_types()
    if fsdp and any(isinstance(module, fsdp) for module in model.modules()):
        return "fsdp"
    if any(hasattr(parameter, "ds_id") for parameter in model.parameters()):
        return "zero3"
    return None


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict of ``model``, on every process, with the unwrapped model's key names.

    ``model`` may be the outermost wrapper (the Trainer's ``model_wrapped``) or the model inside; for FSDP1 pass the
    root FSDP module. Collective under FSDP and ZeRO-3.
    """
    sharding = sharding_of(model)
    if sharding == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
        return {key: value.detach().clone() for key, value in state.items()}
    inner = unwrap(model)
    if sharding == "zero3":
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(inner.parameters()), modifier_rank=None):
            return {key: value.detach().clone() for key, value in inner.state_dict().items()}
    return {key: value.detach().clone() for key, value in inner.state_dict().items()}


def full_model(model: nn.Module) -> nn.Module:
    """An unwrapped model with every parameter whole: ``model`` itself (unwrapped) when nothing is sharded, otherwise
    a fresh model of the same class built from its config and loaded with ``full_state_dict(model)`` (same dtype,
    device and train/eval mode; no pruning gates). Collective under FSDP and ZeRO-3: call it on every process."""
    inner = unwrap(model)
    if sharding_of(model) is None:
        return inner
    state = full_state_dict(model)
    reference = next((value for value in state.values() if value.is_floating_point()), None)
    copy_ = type(inner)(copy.deepcopy(inner.config))
    if reference is not None:
        copy_.to(device=reference.device, dtype=reference.dtype)
    copy_.load_state_dict(state, strict=True)
    return copy_.train(inner.training)


__all__ = ["full_model", "full_state_dict", "sharding_of"]
