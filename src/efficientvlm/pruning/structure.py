"""What can be pruned in an EfficientVLM model, where it lives, and what it costs.

The prunable *modalities* are the three encoders (``MODALITIES``: vision, text, fusion) and, in generative VQA
models (``EfficientVLMForGenerativeVQA``), the answer decoder (``"decoder"``); ``model_modalities(config)`` lists
those a model has. Every encoder (and decoder) layer is made of *sub-blocks* - self-attention, cross-attention
(fusion and decoder layers only) and FFN - and
each sub-block of *units* - attention heads or FFN neurons. This module holds the one table that names them
(``SUB_BLOCKS``: the config field giving the number of units, the module attribute, the pruning-hook attributes,
the keys used in gate dicts and keep-lists) and the cost model that prices them in parameters or FLOPs.

The *prunable part* of a model is everything inside the encoder layers; it is what the paper counts ("heads and
FFNs"). Embeddings, the vision pre/post LayerNorms, the ITC projections and the task heads are not prunable and are
never counted. Inside the layers every parameter belongs to exactly one sub-block:

* per attention head (``head_dim = h``, query width ``d``, key/value input width ``d_kv``): the ``h`` rows of
  ``q_proj`` (``d*h`` weights + ``h`` biases), of ``k_proj`` and ``v_proj`` (``d_kv*h + h`` each) and the ``h``
  input columns of ``out_proj`` (``h*d``);
* per present attention block: the ``out_proj`` bias (``d``) and the block's LayerNorm (``2d``);
* per FFN neuron: one ``fc1`` row and bias (``d + 1``) and one ``fc2`` column (``d``);
* per present FFN block: the ``fc2`` bias (``d``) and its LayerNorm (``2d``).

A sub-block is *present* when it keeps at least one unit; a sub-block without units is absent together with its
bias and LayerNorm. So for a layer with ``n`` units the size is ``[n > 0] * (block + n * unit)``, which equals the
number of parameters ``from_pretrained`` allocates for it.

FLOPs are multiply-accumulates of the matrix products for one image-text pair: ``image_tokens`` vision tokens
(``num_patches + 1``) and ``text_length`` text tokens; the cross-attention queries are text tokens and its keys and
values are image tokens. The decoder's FLOPs are those of one answer of ``answer_length`` tokens (default 5:
``[CLS]``, three word pieces, ``[SEP]``) whose cross-attention reads the ``text_length`` question tokens; ranking runs
the decoder on ``k`` answers per question, so its share of the compute at inference is ``k`` times that. Bias
additions, LayerNorms, softmax and activations are not counted (they are linear in the sequence length and small),
so a sub-block has no per-block FLOP cost.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

from ..models.configuration_efficientvlm import ALL_MODALITIES, DECODER, MODALITIES, EfficientVLMConfig

# MODALITIES (the three encoders), DECODER and ALL_MODALITIES (every prunable modality: a model has the encoders, and
# the decoder when it is a generative VQA model) are the config's, re-exported here.
#: tokens of one answer, for the decoder's FLOPs: [CLS], about three word pieces, [SEP]
DEFAULT_ANSWER_LENGTH = 5
BUDGETS: tuple[str, ...] = ("params", "flops")


@dataclass(frozen=True)
class SubBlockSpec:
    """One kind of sub-block and every name attached to it.

    Attributes:
        name: ``"attention"``, ``"cross_attention"`` or ``"ffn"``.
        units: key of its units (heads / neurons) in gate dicts and keep-lists: ``"heads"``, ``"cross_heads"``,
            ``"ffn"``.
        block: key of its whole-block gate in gate dicts: ``"attention_block"``, ``"cross_attention_block"``,
            ``"ffn_block"``.
        config_field: per-layer config field holding its number of units.
        module: attribute of the layer holding the sub-block module.
        unit_gate: pruning-hook attribute of that module (one value per unit).
        layer_gate: pruning-hook attribute of the layer (one scalar for the whole sub-block).
    """

    name: str
    units: str
    block: str
    config_field: str
    module: str
    unit_gate: str
    layer_gate: str


ATTENTION = SubBlockSpec("attention", "heads", "attention_block", "num_attention_heads", "self_attn", "head_gate",
                         "attention_gate")
CROSS_ATTENTION = SubBlockSpec("cross_attention", "cross_heads", "cross_attention_block", "num_cross_attention_heads",
                               "cross_attn", "head_gate", "cross_attention_gate")
FFN = SubBlockSpec("ffn", "ffn", "ffn_block", "intermediate_size", "mlp", "neuron_gate", "ffn_gate")

#: the sub-blocks of a layer of each modality, in forward order
SUB_BLOCKS: dict[str, tuple[SubBlockSpec, ...]] = {
    "vision": (ATTENTION, FFN),
    "text": (ATTENTION, FFN),
    "fusion": (ATTENTION, CROSS_ATTENTION, FFN),
    "decoder": (ATTENTION, CROSS_ATTENTION, FFN),
}

#: per modality, the sub-block kind of which an exported structure always keeps at least one unit: the fusion
#: encoder's cross-attention is the only path from the image to the text (and so to every head's output), the answer
#: decoder's the only path from the fused question and image to the answer. Removing every such head leaves a model
#: that answers without looking (``efficientvlm.pruning.budget``).
PATH_SUB_BLOCKS: dict[str, str] = {"fusion": "cross_attention", "decoder": "cross_attention"}

#: the LayerNorm that belongs to each sub-block (removed with it)
LAYER_NORMS: dict[str, dict[str, str]] = {
    "vision": {"attention": "layer_norm1", "ffn": "layer_norm2"},
    "text": {"attention": "self_attn_layer_norm", "ffn": "final_layer_norm"},
    "fusion": {"attention": "self_attn_layer_norm", "cross_attention": "cross_attn_layer_norm",
               "ffn": "final_layer_norm"},
    "decoder": {"attention": "self_attn_layer_norm", "cross_attention": "cross_attn_layer_norm",
                "ffn": "final_layer_norm"},
}

_SUB_CONFIG = {"vision": "vision_config", "text": "text_config", "fusion": "fusion_config",
               "decoder": "decoder_config"}
_ENCODER = {"vision": "vision_model", "text": "text_model", "fusion": "fusion_model", "decoder": "answer_decoder"}

#: ``{modality: [{units_key: number_of_units} per layer]}``
LayerSizes = dict[str, list[dict[str, int]]]


@dataclass(frozen=True)
class SubBlockCost:
    """Price of one sub-block: ``size = [units > 0] * (block + units * unit)``."""

    unit: int
    block: int

    def size(self, units: int) -> int:
        return (self.block + units * self.unit) if units > 0 else 0


def sub_config(config: EfficientVLMConfig, modality: str):
    """The vision / text / fusion / decoder sub-config."""
    check_modality(modality)
    sub = getattr(config, _SUB_CONFIG[modality], None)
    if sub is None:
        raise ValueError(f"This model has no {modality} ({_SUB_CONFIG[modality]} is missing from its config): only "
                         f"generative VQA models (EfficientVLMForGenerativeVQA) have an answer decoder.")
    return sub


def model_modalities(config: EfficientVLMConfig) -> tuple[str, ...]:
    """The prunable modalities of a model with this config: the three encoders, and the decoder if it has one."""
    return tuple(m for m in ALL_MODALITIES if getattr(config, _SUB_CONFIG[m], None) is not None)


def check_modality(modality: str) -> None:
    if modality not in ALL_MODALITIES:
        raise ValueError(f"Unknown modality {modality!r}; expected one of {ALL_MODALITIES}.")


def check_budget(budget: str) -> None:
    if budget not in BUDGETS:
        raise ValueError(f"Unknown budget {budget!r}; expected one of {BUDGETS}.")


#: attributes under which wrappers keep the module they wrap: DDP and DeepSpeed engines (``module``), FSDP1
#: (``_fsdp_wrapped_module``), activation-checkpoint wrappers (``_checkpoint_wrapped_module``), ``torch.compile``
#: (``_orig_mod``). FSDP2 (``fully_shard``) and DeepSpeed ZeRO-3 do not wrap modules.
_WRAPPED_MODULE_ATTRIBUTES = ("module", "_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod")


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside any stack of DDP / FSDP1 / DeepSpeed / checkpoint / compile wrappers (itself if none)."""
    while True:
        inner = next((module._modules[name] for name in _WRAPPED_MODULE_ATTRIBUTES if name in module._modules), None)
        if inner is None:
            return module
        module = inner


def declared_gates(module: nn.Module) -> tuple[str, ...]:
    """The pruning gates ``module`` itself declares (``register_pruning_gates``); a wrapper declares none, even
    though FSDP1 and checkpoint wrappers forward attribute reads to the module they wrap."""
    return module.__dict__.get("pruning_gates", ())


def encoder_layers(model: nn.Module, modality: str) -> nn.ModuleList:
    """The layer list of one encoder of any EfficientVLM model (base model or task head), wrapped or not.

    Wrappers are looked through: around the model (DDP, FSDP, DeepSpeed, ``torch.compile``) and around each layer
    (FSDP1 wraps every layer, activation checkpointing too), so the result holds the layers whose ``forward`` runs -
    the modules whose pruning gates count. It is the model's own ``ModuleList`` when no layer is wrapped.
    """
    check_modality(modality)
    model = unwrap(model)
    base = model if modality == DECODER else getattr(model, "base_model", model)  # the decoder belongs to the head
    encoder = getattr(base, _ENCODER[modality], None)
    if encoder is None:
        what = "a generative VQA model" if modality == DECODER else "an EfficientVLM model"
        raise TypeError(f"{type(model).__name__} is not {what}: it has no {_ENCODER[modality]}.")
    layers = encoder.encoder.layers
    inner = [unwrap(layer) for layer in layers]
    return layers if all(a is b for a, b in zip(inner, layers)) else nn.ModuleList(inner)


def layer_sizes(config: EfficientVLMConfig) -> LayerSizes:
    """Units per sub-block and layer, read from the config: ``{"fusion": [{"heads": 12, "cross_heads": 12,
    "ffn": 3072}, ...], ...}`` (0 = sub-block absent)."""
    sizes: LayerSizes = {}
    for modality in model_modalities(config):
        sub = sub_config(config, modality)
        per_field = {spec.units: sub.per_layer(spec.config_field) for spec in SUB_BLOCKS[modality]}
        sizes[modality] = [{key: values[i] for key, values in per_field.items()}
                           for i in range(sub.num_hidden_layers)]
    return sizes


def image_tokens(config: EfficientVLMConfig, image_size: int | None = None) -> int:
    """Vision tokens per image: patches plus the class token (at ``image_size``, default the config's)."""
    vc = config.vision_config
    size = vc.image_size if image_size is None else image_size
    if size % vc.patch_size:
        raise ValueError(f"image_size={size} is not a multiple of patch_size={vc.patch_size}.")
    return (size // vc.patch_size) ** 2 + 1


def sub_block_costs(config: EfficientVLMConfig, budget: str = "params", text_length: int = 40,
                    image_size: int | None = None, *, answer_length: int = DEFAULT_ANSWER_LENGTH
                    ) -> dict[str, dict[str, SubBlockCost]]:
    """``{modality: {sub-block name: SubBlockCost}}`` in parameters or FLOPs (see the module docstring), for every
    modality of the model.

    Args:
        config: the model config (hidden sizes, ``head_dim``).
        budget: ``"params"`` or ``"flops"``.
        text_length: text tokens per example (FLOPs only; the paper's maximum is 40).
        image_size: image resolution (FLOPs only; default ``config.vision_config.image_size``).
        answer_length: answer tokens of the decoder (FLOPs only).
    """
    check_budget(budget)
    if text_length <= 0:
        raise ValueError(f"text_length must be a positive number of tokens, got {text_length}.")
    if answer_length <= 0:
        raise ValueError(f"answer_length must be a positive number of tokens, got {answer_length}.")
    n_img, n_txt = image_tokens(config, image_size), text_length
    costs: dict[str, dict[str, SubBlockCost]] = {}
    for modality in model_modalities(config):
        sub = sub_config(config, modality)
        d, h = sub.hidden_size, sub.head_dim
        n = {"vision": n_img, DECODER: answer_length}.get(modality, n_txt)
        # cross-attention keys and values: the image tokens (fusion) or the fused question tokens (decoder)
        d_kv, m = (sub.encoder_hidden_size, n_txt) if modality == DECODER else (config.vision_config.hidden_size,
                                                                                n_img)
        if budget == "params":
            costs[modality] = {
                "attention": SubBlockCost(unit=4 * d * h + 3 * h, block=3 * d),
                "cross_attention": SubBlockCost(unit=2 * d * h + 2 * d_kv * h + 3 * h, block=3 * d),
                "ffn": SubBlockCost(unit=2 * d + 1, block=3 * d),
            }
        else:  # q and out projections of n queries, k/v projections of m keys, scores and context (n*m each)
            costs[modality] = {
                "attention": SubBlockCost(unit=h * (4 * n * d + 2 * n * n), block=0),
                "cross_attention": SubBlockCost(unit=h * (2 * n * d + 2 * m * d_kv + 2 * n * m), block=0),
                "ffn": SubBlockCost(unit=2 * n * d, block=0),
            }
        costs[modality] = {spec.name: costs[modality][spec.name] for spec in SUB_BLOCKS[modality]}
    return costs


def sizes_cost(sizes: LayerSizes, costs: Mapping[str, Mapping[str, SubBlockCost]]) -> dict[str, list[int]]:
    """Per modality, the cost of every layer of a model with the given ``layer_sizes``."""
    return {
        modality: [sum(costs[modality][spec.name].size(layer[spec.units]) for spec in SUB_BLOCKS[modality])
                   for layer in layers]
        for modality, layers in sizes.items()
    }


def kept_sizes(sizes: LayerSizes, keep: Mapping) -> LayerSizes:
    """Layer sizes after applying keep-lists (``materialize``'s format; missing entries keep their size)."""
    return {
        modality: [{key: len(keep[modality][i][key]) if modality in keep and key in keep[modality][i] else n
                    for key, n in units_of.items()}
                   for i, units_of in enumerate(layers)]
        for modality, layers in sizes.items()
    }


def prunable_parameter_count(model: nn.Module) -> dict[str, int]:
    """Parameters actually allocated in each encoder's layers (the prunable part), counted from the tensors."""
    config = unwrap(model).config
    return {modality: sum(p.numel() for p in encoder_layers(model, modality).parameters())
            for modality in model_modalities(config)}

