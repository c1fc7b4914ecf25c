"""LoRA for EfficientVLM models, with PEFT: default target modules per encoder, on full and pruned models.

```python
from peft import get_peft_model
from efficientvlm import lora_config
from efficientvlm.lora import merge_lora

model = get_peft_model(model, lora_config(model, r=8, encoders=("vision", "text", "fusion")))
...                                       # train: Trainer, DistillationTrainer (a LoRA student), ...
merged = merge_lora(model)                # model.merge_and_unload(): a plain model of the same class
merged.save_pretrained(folder)            # a plain checkpoint: from_pretrained gives the merged model back
```

Targets: the linear layers of every layer of the chosen encoders (by default every encoder of the model: vision,
text, fusion, and the answer decoder of ``EfficientVLMForGenerativeVQA``), named one by one: the attention
projections (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``; in the fusion encoder and the decoder also those of
the cross-attention) and the FFN (``fc1``, ``fc2``). A pruned (heterogeneous) model has no modules for the sub-blocks
pruned away, and a zero-width layer is skipped, so the adapters land on the surviving layers only. Embeddings (the
decoder's too) stay frozen.

Heads: the task heads are trained in full (PEFT's ``modules_to_save``), since a head is often new for the task (the
VQA answer classifier, NLVR2's classifier) and is small: ``classifier``, the ITC projections and ITM head, the box
head, the LM head's transform. The LM head's output layer is tied to the word embeddings and stays frozen with them
(a trained copy would untie it, and the tie would overwrite it on reload). The answer decoder is not a head here: its
layers get adapters like an encoder's (``encoders``), and it is never copied in full. ``train_heads=False`` trains
the adapters alone. The retrieval / pre-training ITC temperature (a bare parameter) stays frozen.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from torch import nn

from .models.configuration_efficientvlm import DECODER, MODALITIES

if TYPE_CHECKING:
    from peft import LoraConfig

#: The encoders LoRA may target, and the attribute of each: in ``EfficientVLMModel`` (``vision_model``, ...), and
#: for the answer decoder in ``EfficientVLMForGenerativeVQA`` itself.
LORA_ENCODERS: dict[str, str] = {**{modality: f"{modality}_model" for modality in MODALITIES},
                                 DECODER: "answer_decoder"}

#: The linear layers of an encoder layer that LoRA targets by default: attention projections and the FFN.
LORA_MODULES: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def _base(model: nn.Module) -> nn.Module:
    """The ``EfficientVLMModel`` inside any EfficientVLM class."""
    base = getattr(model, "base_model", None)
    if base is None or not all(hasattr(base, LORA_ENCODERS[name]) for name in ("vision", "text", "fusion")):
        raise TypeError(f"Expected an EfficientVLM model (EfficientVLMModel or a task head), got {type(model).__name__}"
                        ". Build the LoRA config before wrapping the model with get_peft_model.")
    return base


def _check(names: Sequence[str], allowed: Sequence[str], what: str) -> tuple[str, ...]:
    if isinstance(names, str):
        names = (names,)
    unknown = [name for name in names if name not in allowed]
    if unknown or not names:
        raise ValueError(f"Unknown {what} {unknown or list(names)}: choose one or more of {list(allowed)}.")
    return tuple(names)


def model_encoders(model: nn.Module) -> tuple[str, ...]:
    """The encoders of ``model`` LoRA can target: vision, text, fusion, and ``"decoder"`` for a model with an answer
    decoder (``EfficientVLMForGenerativeVQA``)."""
    _base(model)
    return MODALITIES + ((DECODER,) if hasattr(model, LORA_ENCODERS[DECODER]) else ())


def default_lora_targets(model: nn.Module, encoders: Sequence[str] | None = None,
                         modules: Sequence[str] = LORA_MODULES) -> list[str]:
    """The full names of the linear layers LoRA targets in ``model``: ``modules`` of every layer of ``encoders``.

    Sub-blocks a pruned model does not have (0 heads, 0 FFN neurons) have no modules and are not listed; a linear
    layer of width 0 is skipped too.

    Args:
        model: any EfficientVLM model (not yet wrapped by PEFT).
        encoders: among ``"vision"``, ``"text"``, ``"fusion"`` and ``"decoder"`` (the answer decoder of generative
            VQA); default: every encoder the model has (``model_encoders``).
        modules: among ``LORA_MODULES``.

    Returns:
        Module names as ``model.named_modules()`` gives them, e.g.
        ``"efficientvlm.fusion_model.encoder.layers.0.cross_attn.q_proj"`` or
        ``"answer_decoder.encoder.layers.0.cross_attn.q_proj"``.
    """
    encoders = model_encoders(model) if encoders is None else _check(encoders, tuple(LORA_ENCODERS), "encoders")
    modules = _check(modules, LORA_MODULES, "modules")
    base = _base(model)
    if DECODER in encoders and DECODER not in model_encoders(model):
        raise ValueError(f"encoders includes 'decoder' but {type(model).__name__} has no answer decoder (only "
                         "EfficientVLMForGenerativeVQA has one): choose among 'vision', 'text', 'fusion'.")
    targets = []
    for encoder in encoders:
        attribute = LORA_ENCODERS[encoder]
        owner = model if encoder == DECODER else base  # the decoder belongs to the head, not the base model
        prefix = "" if owner is model else f"{model.base_model_prefix}."
        for name, module in getattr(owner, attribute).encoder.layers.named_modules():
            if (isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in modules
                    and module.in_features > 0 and module.out_features > 0):
                targets.append(f"{prefix}{attribute}.encoder.layers.{name}")
    if not targets:
        raise ValueError(f"{type(model).__name__} has no {list(modules)} layers in the {list(encoders)} encoders "
                         "(every such sub-block was pruned away): choose other encoders or modules.")
    return targets


def default_modules_to_save(model: nn.Module) -> list[str]:
    """The task-head modules that LoRA fine-tuning trains in full (PEFT's ``modules_to_save``).

    Every module of ``model`` outside the base model, except the answer decoder of generative VQA (LoRA adapts its
    layers like an encoder's) and those holding a weight tied to the word embeddings (the LM head's output layer),
    whose siblings are listed instead. Empty for ``EfficientVLMModel``.
    """
    base = _base(model)
    if base is model:
        return []
    tied = set()
    if getattr(model.config, "tie_word_embeddings", False):
        tied = {key.rsplit(".", 1)[0] for key in (getattr(model, "_tied_weights_keys", None) or {})}

    def trainable(name: str, module: nn.Module) -> list[str]:
        if not any(t == name or t.startswith(f"{name}.") for t in tied):
            return [name]
        return [found for child, sub in module.named_children() for found in trainable(f"{name}.{child}", sub)
                if f"{name}.{child}" not in tied]

    return [found for name, module in model.named_children() if module is not base and name != LORA_ENCODERS[DECODER]
            for found in trainable(name, module) if any(True for _ in model.get_submodule(found).parameters())]


def lora_config(model: nn.Module, r: int = 8, lora_alpha: int = 16, lora_dropout: float = 0.05,
                encoders: Sequence[str] | None = None, modules: Sequence[str] = LORA_MODULES,
                train_heads: bool = True, **kwargs: Any) -> LoraConfig:
    """A ``peft.LoraConfig`` for ``model`` with the default targets (see the module docstring).

    Args:
        model: any EfficientVLM model, full or pruned (not yet wrapped by PEFT).
        r, lora_alpha, lora_dropout: LoRA's rank, scaling numerator (the update is scaled by ``lora_alpha / r``)
            and dropout on the adapters' input.
        encoders: which encoders get adapters, among ``"vision"``, ``"text"``, ``"fusion"``, ``"decoder"``;
            default: all the model has.
        modules: which linear layers of each encoder layer, among ``LORA_MODULES``.
        train_heads: train the task heads in full (``default_modules_to_save``); False trains the adapters alone.
        kwargs: further ``LoraConfig`` fields (``bias``, ``use_rslora``, ``init_lora_weights``, ...).

    Returns:
        The config to pass to ``peft.get_peft_model(model, config)``.
    """
    from peft import LoraConfig  # imported here: ``import efficientvlm`` does not pay for PEFT

    if not isinstance(r, int) or r <= 0:
        raise ValueError(f"r (the LoRA rank) must be a positive int, got {r!r}.")
    return LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                      target_modules=default_lora_targets(model, encoders, modules),
                      modules_to_save=default_modules_to_save(model) if train_heads else None, **kwargs)


def merge_lora(model: nn.Module) -> nn.Module:
    """``model.merge_and_unload()`` for an EfficientVLM model wrapped by PEFT, keeping its LM output layer tied.

    PEFT's merge sets ``config.tie_word_embeddings = False`` when the output embeddings are not the tensor of
    ``get_input_embeddings()``. In generative VQA they are not, by design: the LM head is tied to the answer
    decoder's embeddings, and ``get_input_embeddings()`` gives the question's. Saved with that flag, the checkpoint
    would lose its LM head (one tensor is written for a tied pair, and the reload no longer ties it). The flag is
    set back, and PEFT's warning about it dropped, when every tie of ``_tied_weights_keys`` still holds after the
    merge (LoRA never trains the embeddings or the LM output layer).
    """
    tied = bool(getattr(unwrap_lora(model).config, "tie_word_embeddings", False))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        merged = model.merge_and_unload()
    restore = tied and not merged.config.tie_word_embeddings and _ties_hold(merged)
    if restore:
        merged.config.tie_word_embeddings = True
    for warning in caught:
        if not (restore and "no longer tied" in str(warning.message)):
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return merged


def _ties_hold(model: nn.Module) -> bool:
    ties = getattr(model, "_tied_weights_keys", None) or {}
    return bool(ties) and all(model.get_parameter(target) is model.get_parameter(source)
                              for target, source in ties.items())


def unwrap_lora(model: nn.Module) -> nn.Module:
    """The EfficientVLM model inside a PEFT wrapper (``PeftModel``), or ``model`` itself."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


__all__ = ["LORA_ENCODERS", "LORA_MODULES", "default_lora_targets", "default_modules_to_save", "lora_config",
           "merge_lora", "model_encoders", "unwrap_lora"]
