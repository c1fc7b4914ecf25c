"""EfficientVLM modeling, top down: embeddings, attention, MLP, layers, encoders, the base model, the task heads.

Architecture (X-VLM with a CLIP vision tower, as in the EfficientVLM paper):

* a pre-LayerNorm CLIP ViT encodes the image into patch tokens (``image_embeds``);
* post-LayerNorm BERT layers encode the text (``text_embeds``);
* fusion layers continue the text stream: self-attention, cross-attention from text to image tokens, FFN.
  The fused ``[CLS]`` token is the joint representation.

Every layer is built from the per-layer sizes of the config, so a pruned model is an ordinary dense model whose
layers differ in size. A layer whose attention or FFN has size 0 has no such sub-block: the residual passes
through.

Pruning hooks. Attention modules, MLPs and layers own *gates*, declared in their ``__init__`` through one mechanism
(``register_pruning_gates``: non-persistent buffers, ``None`` by default, never in the ``state_dict``, listed in
``module.pruning_gates``): ``EfficientVLMAttention.head_gate`` (one value per head, scales each head's context vector
before the output projection), ``EfficientVLMMLP.neuron_gate`` (one value per FFN neuron, scales the activations)
and the layer's ``attention_gate`` / ``cross_attention_gate`` / ``ffn_gate`` (one value per sub-block). Because the
gates are state of the gated modules themselves, a gate set on a layer is read by that layer's forward however the
model is wrapped (DDP, FSDP, DeepSpeed) and is seen again when gradient checkpointing replays the forward. A
sub-block whose combined gate is 0 - or all of whose heads / neurons are gated to 0 - behaves exactly like an absent
one, so a masked model and its materialised (sliced) counterpart compute the same function.

Multi-process training. The contrastive heads gather the ITC features (with gradient) and the ITM candidates from
every process when ``torch.distributed`` is initialised with more than one process, so that W processes of ``b``
examples train as one process of ``W * b`` examples (``EfficientVLMContrastiveMixin``).

Outputs. Each head returns its own fields (``loss``, ``logits``, ...) and, when hidden states or attention maps are
requested, one typed ``EfficientVLMEncoderOutput`` per encoder pass (``vision_model_output``, ``text_model_output``,
``fusion_model_output``; pre-training adds the MLM pass, generative VQA the answer decoder), as CLIP's
``vision_model_output``.

Loading. ``from_pretrained`` and ``from_vision_text_pretrained`` are thin: the checkpoint plumbing around
transformers' loading (safetensors only, the explanation of a checkpoint that does not fit its config, the weights a
checkpoint lacked, initialisation from CLIP and BERT checkpoints) lives in the sibling ``loading_efficientvlm.py``.

This file is shipped to the Hub as remote code: it imports only torch, transformers and its sibling modules.
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.generation import GenerationConfig, GenerationMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, ModelOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import logging

from .configuration_efficientvlm import EfficientVLMConfig, EfficientVLMGenerativeVQAConfig
from .loading_efficientvlm import (  # noqa: F401 - bert_layer_state_dict is public here too (hub/convert.py)
    bert_layer_state_dict,
    init_from_vision_text,
    load_pretrained,
    weights_not_loaded,
)

logger = logging.get_logger(__name__)


try:  # the keyword generate() keeps the cache under: "cache" from transformers 5.24 on, "past_key_values" before
    from transformers.generation.utils import ALL_CACHE_NAMES as _GENERATION_CACHE_NAMES
except ImportError:  # pragma: no cover - every transformers 5.x defines it
    _GENERATION_CACHE_NAMES = ["past_key_values"]
_CACHE_KWARG = _GENERATION_CACHE_NAMES[0]


# ---------------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class EfficientVLMEncoderOutput(ModelOutput):
    """Output of one encoder stack (vision, text, fusion) or of the answer decoder.

    Args:
        last_hidden_state: ``(batch, seq, hidden)``.
        hidden_states: the input of the stack and the output of every layer (``num_layers + 1`` tensors).
        attentions: per layer, self-attention probabilities ``(batch, heads, seq, seq)``; ``None`` for a layer
            without self-attention.
        cross_attentions: fusion and decoder only: per layer, cross-attention probabilities ``(batch, heads, seq,
            key_seq)`` (keys: the image tokens, or the decoder's question tokens); ``None`` for a layer without it.
    """

    last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor | None, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor | None, ...] | None = None


_PER_LAYER_KINDS = ("hidden_states", "attentions", "cross_attentions")


class _NestedEncoderOutputs:
    """What the outputs holding per-encoder ``EfficientVLMEncoderOutput`` fields (``<pass>_model_output``, as CLIP's
    ``vision_model_output``) share: ``to_tuple`` turns them into tuples too (transformers' convention for nested
    outputs, so ``return_dict=False`` gives plain tuples), and the flat names of earlier versions
    (``vision_hidden_states``, ``fusion_cross_attentions``, ``mlm_text_attentions``, ...) still read the nested
    fields: deprecated, use ``output.vision_model_output.hidden_states``."""

    def to_tuple(self) -> tuple:
        return tuple(self[k].to_tuple() if isinstance(self[k], ModelOutput) else self[k] for k in self.keys())

    def __getattr__(self, name: str):  # only called for names that are not attributes: the deprecated flat ones
        for kind in _PER_LAYER_KINDS:
            if name.endswith(f"_{kind}") and f"{name[:-len(kind) - 1]}_model_output" in self.__dataclass_fields__:
                nested = getattr(self, f"{name[:-len(kind) - 1]}_model_output")
                return None if nested is None else getattr(nested, kind)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


@dataclass
class EfficientVLMModelOutput(_NestedEncoderOutputs, ModelOutput):
    """Output of ``EfficientVLMModel``.

    Args:
        last_hidden_state: fusion output ``(batch, text_seq, hidden)``.
        pooler_output: the fused ``[CLS]`` token ``(batch, hidden)``.
        image_embeds: vision tower output ``(batch, image_seq, vision_hidden)`` (``(num_images, ...)``, one row per
            image, when the forward was given an ``image_index``).
        text_embeds: text encoder output ``(batch, text_seq, hidden)``.
        vision_model_output, text_model_output, fusion_model_output: each encoder's ``EfficientVLMEncoderOutput``
            (per-layer hidden states, attention maps and, for fusion, cross-attention maps), set when
            ``output_hidden_states`` or ``output_attentions`` is; ``vision_model_output`` is ``None`` when the images
            came already encoded (``image_embeds``).
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    vision_model_output: EfficientVLMEncoderOutput | None = None
    text_model_output: EfficientVLMEncoderOutput | None = None
    fusion_model_output: EfficientVLMEncoderOutput | None = None


@dataclass
class EfficientVLMHeadOutput(_NestedEncoderOutputs, ModelOutput):
    """Common output of the task heads: ``loss``, ``logits`` and each encoder's ``EfficientVLMEncoderOutput``.

    ``vision_model_output``, ``text_model_output`` and ``fusion_model_output`` are only set when
    ``output_hidden_states`` / ``output_attentions`` is, so that evaluation loops do not gather them.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    vision_model_output: EfficientVLMEncoderOutput | None = None
    text_model_output: EfficientVLMEncoderOutput | None = None
    fusion_model_output: EfficientVLMEncoderOutput | None = None


@dataclass
class EfficientVLMRetrievalOutput(EfficientVLMHeadOutput):
    """Output of ``EfficientVLMForImageTextRetrieval``.

    Under multi-process training the *gathered batch* is every process's batch concatenated in rank order (see
    ``EfficientVLMContrastiveMixin``); in a single process it is the batch itself.

    Args:
        loss: ``itc_loss + itm_loss``.
        logits: ITM logits ``(n_pairs, 2)`` of the fused pairs: the ``batch`` positives, then one mined negative
            text per image and one mined negative image per text (``3 * batch`` pairs when the gathered batch has
            more than one example).
        itm_labels: 1 for positive pairs, 0 for negatives.
        itc_loss, itm_loss: the two task losses. ``itc_loss`` is the loss of the whole gathered batch (the same
            value in every process); ``itm_loss`` averages this process's pairs.
        logits_per_image, logits_per_text: ITC similarities divided by the temperature, this process's images
            (texts) against every text (image) of the gathered batch ``(batch, gathered batch)``.
        image_features, text_features: L2-normalised ITC projections ``(batch, projection_dim)``.
        itm_negative_text_index, itm_negative_image_index: the mined negatives, as indices into the gathered batch,
            so that a teacher can score the very same pairs (pass them back into ``forward``).
        itm_attention_mask: text padding mask of the ITM pairs ``(n_pairs, text_seq)``, in the order of ``logits``;
            ``None`` when the batch came without an ``attention_mask`` in a single process. Under multi-process
            training the pairs' texts are padded to the longest text of the gathered batch.
        fusion_model_output: states of the fusion pass over all ITM pairs (positives first).
    """

    itm_labels: torch.LongTensor | None = None
    itc_loss: torch.FloatTensor | None = None
    itm_loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    image_features: torch.FloatTensor | None = None
    text_features: torch.FloatTensor | None = None
    itm_negative_text_index: torch.LongTensor | None = None
    itm_negative_image_index: torch.LongTensor | None = None
    itm_attention_mask: torch.LongTensor | None = None


@dataclass
class EfficientVLMPreTrainingOutput(EfficientVLMRetrievalOutput):
    """Output of ``EfficientVLMForPreTraining``: the retrieval fields plus masked language modelling and, for
    batches with region texts, box regression.

    Args:
        loss: ``itc_loss + itm_loss + mlm_loss (+ bbox_loss + giou_loss)``.
        mlm_loss: masked language modelling loss.
        mlm_logits: ``(batch, text_seq, vocab)``.
        mlm_text_model_output, mlm_fusion_model_output: the ``EfficientVLMEncoderOutput`` of the text and fusion
            pass over the masked text, when requested.
        bbox_loss: L1 distance between predicted and target boxes ``(cx, cy, w, h)``, summed over the four
            coordinates and averaged over the boxed examples.
        giou_loss: ``1 - GIoU`` of the predicted and target boxes, averaged over the boxed examples.
        pred_boxes: ``(batch, 4)`` predicted boxes ``(cx, cy, w, h)`` as fractions of the image side.
    """

    mlm_loss: torch.FloatTensor | None = None
    mlm_logits: torch.FloatTensor | None = None
    mlm_text_model_output: EfficientVLMEncoderOutput | None = None
    mlm_fusion_model_output: EfficientVLMEncoderOutput | None = None
    bbox_loss: torch.FloatTensor | None = None
    giou_loss: torch.FloatTensor | None = None
    pred_boxes: torch.FloatTensor | None = None


@dataclass
class EfficientVLMCaptioningOutput(EfficientVLMHeadOutput):
    """Output of ``EfficientVLMForCaptioning``: the head's fields plus the generation cache and the image tower's
    output, as transformers 5 vision-language models return it.

    Args:
        loss: language-modelling loss (label-smoothed by ``config.caption_label_smoothing``).
        logits: ``(batch, text_seq, vocab)``, for the positions in ``input_ids``.
        cache: with ``use_cache``, an ``EncoderDecoderCache`` holding the self-attention keys and values of every
            position so far (one slot per decoder layer that has self-attention: text layers, then fusion layers) and
            the image's cross-attention keys and values (one slot per fusion layer with cross-attention). Pass it back
            as ``cache=`` together with the next tokens only. transformers calls it ``past_key_values`` before 5.24;
            ``output.past_key_values`` reads it in every 5.x version.
        image_outputs: the vision tower's ``BaseModelOutputWithPooling`` (``last_hidden_state``: the image tokens
            the decoder cross-attends to; ``pooler_output``: their ``[CLS]`` token; ``hidden_states`` and
            ``attentions`` when requested, the same tensors as ``vision_model_output``'s).
            ``None`` when the images came already encoded (``image_embeds``) or cached, as during ``generate``.
    """

    cache: Cache | None = None
    image_outputs: BaseModelOutputWithPooling | None = None


if not hasattr(ModelOutput, "past_key_values"):  # transformers < 5.24: no alias of the older name yet
    EfficientVLMCaptioningOutput.past_key_values = property(lambda self: self.cache)


# ---------------------------------------------------------------------------------------------------------------
# Masks and attention
# ---------------------------------------------------------------------------------------------------------------


def build_attention_mask(
    attention_mask: torch.Tensor | None, seq_len: int, dtype: torch.dtype, device: torch.device, causal: bool = False,
    past_length: int = 0,
) -> torch.Tensor | None:
    """Turn a 1/0 padding mask into an additive ``(batch, 1, seq_len, past_length + seq_len)`` mask (optionally causal).

    ``seq_len`` queries follow ``past_length`` positions whose keys come from a cache (generation): query ``i`` sits
    at position ``past_length + i``. ``attention_mask`` covers every key, ``(batch, past_length + seq_len)``.
    """
    if attention_mask is None and (not causal or seq_len == 1):  # a single causal query may see every key
        return None
    key_len = past_length + seq_len
    keep = None
    if attention_mask is not None:
        if attention_mask.shape[-1] != key_len:
            raise ValueError(
                f"attention_mask has {attention_mask.shape[-1]} positions but the keys are {key_len} ({past_length} "
                f"cached + {seq_len} new): with a cache, pass the mask of the whole sequence so far."
            )
        keep = attention_mask[:, None, None, :].to(device=device, dtype=torch.bool)
    if causal:
        tri = torch.ones(seq_len, key_len, dtype=torch.bool, device=device).tril(diagonal=past_length)[None, None]
        keep = tri if keep is None else keep & tri
    return torch.zeros(keep.shape, dtype=dtype, device=device).masked_fill(~keep, torch.finfo(dtype).min)


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Plain softmax attention that also returns the attention probabilities (which distillation needs)."""
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = F.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


def register_pruning_gates(module: nn.Module, *names: str) -> None:
    """Declare pruning gates of ``module``: non-persistent buffers that stay ``None`` (ungated) until a pruning tool
    sets them, e.g. ``module.head_gate = z``. As buffers they are state of the module itself (not of a wrapper around
    it), move with ``.to()`` and stay out of the ``state_dict``; ``module.pruning_gates`` lists their names."""
    module.pruning_gates = (*getattr(module, "pruning_gates", ()), *names)
    for name in names:
        module.register_buffer(name, None, persistent=False)


def _nonempty(gate: torch.Tensor) -> torch.Tensor:
    """1.0 if any entry of ``gate`` is non-zero, else 0.0 - computed on device, without a host sync."""
    return (gate != 0).any().to(gate.dtype)


def _combine_gates(block_gate: torch.Tensor | None, unit_gate: torch.Tensor | None) -> torch.Tensor | None:
    """The gate of a whole sub-block: its own gate times "does any head / neuron survive"."""
    gate = block_gate
    if unit_gate is not None:
        alive = _nonempty(unit_gate)
        gate = alive if gate is None else gate * alive
    return gate


class EfficientVLMAttention(nn.Module):
    """Multi-head attention with ``num_heads`` heads of width ``head_dim`` (self- or cross-attention).

    The attention kernel comes from transformers' attention interface (``config._attn_implementation``: ``sdpa``
    by default). When attention probabilities are requested the eager kernel is used, since fused kernels do not
    return them.

    Generation cache (``cache``, a transformers ``Cache``; passed by the decoders of ``EfficientVLMForCaptioning``
    and ``EfficientVLMForGenerativeVQA``). Self-attention appends the new positions' keys and values to slot
    ``cache_index`` of the self-attention cache and attends to all of them. Cross-attention (to the image tokens, or
    to the fused question for the answer decoder) reads slot ``cache_index`` of an ``EncoderDecoderCache``'s
    cross-attention cache once it is filled, and otherwise computes the keys and values from
    ``encoder_hidden_states`` and stores them there. Cached keys and values may have fewer rows than the queries: one
    row per image (question), shared by the ``batch / rows`` consecutive query rows that decode it (beams, returned
    sequences, candidate answers), which attend to it without copies; a mask then covers the keys only, one row per
    key row: ``(rows, 1, 1, keys)``. ``cache_index`` is set by the model (``EfficientVLMCachedGenerationMixin``).
    """

    def __init__(self, config: EfficientVLMConfig, hidden_size: int, num_heads: int, head_dim: int,
                 dropout: float = 0.0, kv_input_size: int | None = None, is_cross_attention: bool = False):
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.scaling = head_dim**-0.5
        self.dropout = dropout
        self.is_causal = False  # causality is always given through the explicit mask
        self.is_cross_attention = is_cross_attention
        self.cache_index: int | None = None  # slot in a generation cache (see the class docstring)
        inner = num_heads * head_dim
        kv_input_size = kv_input_size or hidden_size
        self.q_proj = nn.Linear(hidden_size, inner)
        self.k_proj = nn.Linear(kv_input_size, inner)
        self.v_proj = nn.Linear(kv_input_size, inner)
        self.out_proj = nn.Linear(inner, hidden_size)
        register_pruning_gates(self, "head_gate")  # shape (num_heads,)

    def key_value(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of ``states`` ``(batch, seq, kv_input_size)``, each ``(batch, heads, seq, head_dim)``."""
        batch, length, _ = states.shape
        key = self.k_proj(states).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        value = self.v_proj(states).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        return key, value

    def _cache_slot(self) -> int:
        if self.cache_index is None:
            raise ValueError("This attention block has no cache slot: the captioning and generative VQA models "
                             "number them; call the model (or its generate()) rather than its layers with a cache.")
        return self.cache_index

    def _cross_key_value(self, encoder_hidden_states, cache):
        cached = isinstance(cache, EncoderDecoderCache)
        if cached and cache.is_updated.get(self._cache_slot()):
            layer = cache.cross_attention_cache.layers[self.cache_index]
            return layer.keys, layer.values
        if encoder_hidden_states is None:
            raise ValueError("Cross-attention needs the image tokens (encoder_hidden_states), or a cache that holds "
                             "their keys and values.")
        key, value = self.key_value(encoder_hidden_states)
        if cached:
            key, value = cache.cross_attention_cache.update(key, value, self.cache_index)
            cache.is_updated[self.cache_index] = True
        return key, value

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None, output_attentions=False,
                cache: Cache | None = None):
        batch, q_len, _ = hidden_states.shape
        query = self.q_proj(hidden_states).view(batch, q_len, self.num_heads, self.head_dim).transpose(1, 2)
        if self.is_cross_attention or encoder_hidden_states is not None:
            key, value = self._cross_key_value(encoder_hidden_states, cache)
        else:
            key, value = self.key_value(hidden_states)
            if cache is not None:
                self_cache = cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache
                key, value = self_cache.update(key, value, self._cache_slot())
        rows = key.shape[0]
        group = batch // rows  # query rows per key row: > 1 for an image (question) shared by its beams (answers)
        if group * rows != batch:
            raise ValueError(f"{batch} query rows cannot share {rows} rows of keys and values.")
        if group > 1 and attention_mask is not None and (attention_mask.shape[0] not in (1, rows)
                                                         or attention_mask.shape[2] != 1):
            raise ValueError(f"{batch} query rows share {rows} rows of keys and values: the attention mask must "
                             f"cover the keys only, one row per key row ({rows}, 1, 1, keys), got "
                             f"{tuple(attention_mask.shape)}.")
        if group > 1:  # (batch, H, q, D) -> (rows, H, group * q, D): each key row serves its group of query rows
            query = query.view(rows, group, self.num_heads, q_len, self.head_dim).transpose(1, 2)
            query = query.reshape(rows, self.num_heads, group * q_len, self.head_dim)

        implementation = "eager" if output_attentions else self.config._attn_implementation
        attention_fn = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        context, weights = attention_fn(
            self, query, key, value, attention_mask,
            scaling=self.scaling, dropout=self.dropout if self.training else 0.0, is_causal=False,
        )
        context = context.reshape(batch, q_len, self.num_heads, self.head_dim)
        if output_attentions and group > 1:
            weights = weights.view(rows, self.num_heads, group, q_len, -1).transpose(1, 2)
            weights = weights.reshape(batch, self.num_heads, q_len, -1)
        if self.head_gate is not None:  # context: (batch, q_len, heads, head_dim)
            context = context * self.head_gate.to(context.dtype).view(1, 1, self.num_heads, 1)
        output = self.out_proj(context.reshape(batch, q_len, self.num_heads * self.head_dim))
        return output, (weights if output_attentions else None)


class EfficientVLMMLP(nn.Module):
    """Feed-forward block ``fc2(act(fc1(x)))`` with ``intermediate_size`` neurons."""

    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.act = ACT2FN[hidden_act]
        self.fc2 = nn.Linear(intermediate_size, hidden_size)
        register_pruning_gates(self, "neuron_gate")  # shape (intermediate_size,)

    def forward(self, hidden_states):
        hidden_states = self.act(self.fc1(hidden_states))
        if self.neuron_gate is not None:
            hidden_states = hidden_states * self.neuron_gate.to(hidden_states.dtype)
        return self.fc2(hidden_states)


# ---------------------------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------------------------


class EfficientVLMVisionLayer(GradientCheckpointingLayer):
    """Pre-LayerNorm CLIP layer: ``x + attn(ln1(x))`` then ``x + mlp(ln2(x))``. Absent sub-blocks pass through."""

    def __init__(self, config: EfficientVLMConfig, layer_idx: int):
        super().__init__()
        vc = config.vision_config
        heads = vc.per_layer("num_attention_heads")[layer_idx]
        ffn = vc.per_layer("intermediate_size")[layer_idx]
        self.layer_norm1 = nn.LayerNorm(vc.hidden_size, eps=vc.layer_norm_eps) if heads else None
        self.self_attn = (
            EfficientVLMAttention(config, vc.hidden_size, heads, vc.head_dim, vc.attention_dropout) if heads else None
        )
        self.layer_norm2 = nn.LayerNorm(vc.hidden_size, eps=vc.layer_norm_eps) if ffn else None
        self.mlp = EfficientVLMMLP(vc.hidden_size, ffn, vc.hidden_act) if ffn else None
        register_pruning_gates(self, "attention_gate", "ffn_gate")  # scalars

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None, output_attentions=False):
        attn_weights = None
        if self.self_attn is not None:
            branch, attn_weights = self.self_attn(
                self.layer_norm1(hidden_states), attention_mask, output_attentions=output_attentions
            )
            gate = _combine_gates(self.attention_gate, self.self_attn.head_gate)
            hidden_states = hidden_states + (branch if gate is None else gate * branch)
        if self.mlp is not None:
            branch = self.mlp(self.layer_norm2(hidden_states))
            gate = _combine_gates(self.ffn_gate, self.mlp.neuron_gate)
            hidden_states = hidden_states + (branch if gate is None else gate * branch)
        return hidden_states, attn_weights, None


class EfficientVLMTextLayer(GradientCheckpointingLayer):
    """Post-LayerNorm BERT layer: ``ln(x + attn(x))``, [``ln(x + cross_attn(x, image))``], ``ln(x + mlp(x))``.

    Used for the text encoder (no cross-attention) and the fusion encoder (with cross-attention). A gated
    sub-block computes ``x + g * (ln(x + branch(x)) - x)``: the usual block for ``g = 1`` and an exact
    pass-through for ``g = 0``, the same as an absent block. ``cache`` (captioning generation) is handed to both
    attention blocks; see ``EfficientVLMAttention``.
    """

    def __init__(self, config: EfficientVLMConfig, layer_idx: int, fusion: bool):
        super().__init__()
        sub = config.fusion_config if fusion else config.text_config
        hidden = sub.hidden_size
        heads = sub.per_layer("num_attention_heads")[layer_idx]
        cross_heads = sub.per_layer("num_cross_attention_heads")[layer_idx] if fusion else 0
        ffn = sub.per_layer("intermediate_size")[layer_idx]
        attn_dropout = sub.attention_probs_dropout_prob

        def layer_norm():
            return nn.LayerNorm(hidden, eps=sub.layer_norm_eps)

        self.self_attn = EfficientVLMAttention(config, hidden, heads, sub.head_dim, attn_dropout) if heads else None
        self.self_attn_layer_norm = layer_norm() if heads else None
        self.cross_attn = (
            EfficientVLMAttention(config, hidden, cross_heads, sub.head_dim, attn_dropout,
                                  kv_input_size=config.vision_config.hidden_size, is_cross_attention=True)
            if cross_heads else None
        )
        self.cross_attn_layer_norm = layer_norm() if cross_heads else None
        self.mlp = EfficientVLMMLP(hidden, ffn, sub.hidden_act) if ffn else None
        self.final_layer_norm = layer_norm() if ffn else None
        self.dropout = nn.Dropout(sub.hidden_dropout_prob)
        register_pruning_gates(self, "attention_gate", "cross_attention_gate", "ffn_gate")  # scalars

    def _residual(self, residual, branch, layer_norm, gate):
        output = layer_norm(residual + self.dropout(branch))
        return output if gate is None else residual + gate * (output - residual)

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None, output_attentions=False,
                cache: Cache | None = None):
        attn_weights = cross_weights = None
        if self.self_attn is not None:
            branch, attn_weights = self.self_attn(hidden_states, attention_mask, output_attentions=output_attentions,
                                                  cache=cache)
            gate = _combine_gates(self.attention_gate, self.self_attn.head_gate)
            hidden_states = self._residual(hidden_states, branch, self.self_attn_layer_norm, gate)
        if self.cross_attn is not None:
            if encoder_hidden_states is None and cache is None:
                raise ValueError("A fusion layer with cross-attention needs the image tokens (encoder_hidden_states).")
            branch, cross_weights = self.cross_attn(
                hidden_states, None, encoder_hidden_states, output_attentions=output_attentions, cache=cache
            )
            gate = _combine_gates(self.cross_attention_gate, self.cross_attn.head_gate)
            hidden_states = self._residual(hidden_states, branch, self.cross_attn_layer_norm, gate)
        if self.mlp is not None:
            branch = self.mlp(hidden_states)
            gate = _combine_gates(self.ffn_gate, self.mlp.neuron_gate)
            hidden_states = self._residual(hidden_states, branch, self.final_layer_norm, gate)
        return hidden_states, attn_weights, cross_weights


class EfficientVLMEncoder(nn.Module):
    """A stack of layers that collects hidden states and attention maps (and passes a generation ``cache`` on to
    text layers)."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None,
                output_attentions=False, output_hidden_states=False,
                cache: Cache | None = None) -> EfficientVLMEncoderOutput:
        all_hidden = (hidden_states,) if output_hidden_states else None
        all_attn = () if output_attentions else None
        cross_attention = encoder_hidden_states is not None or any(
            getattr(layer, "cross_attn", None) is not None for layer in self.layers)
        all_cross = () if output_attentions and cross_attention else None
        layer_kwargs = {} if cache is None else {"cache": cache}
        for layer in self.layers:
            # positional arguments, as gradient checkpointing requires
            hidden_states, attn, cross = layer(hidden_states, attention_mask, encoder_hidden_states, output_attentions,
                                               **layer_kwargs)
            if output_hidden_states:
                all_hidden += (hidden_states,)
            if output_attentions:
                all_attn += (attn,)
                if all_cross is not None:
                    all_cross += (cross,)
        return EfficientVLMEncoderOutput(
            last_hidden_state=hidden_states, hidden_states=all_hidden, attentions=all_attn, cross_attentions=all_cross
        )


# ---------------------------------------------------------------------------------------------------------------
# Encoders
# ---------------------------------------------------------------------------------------------------------------


class EfficientVLMVisionEmbeddings(nn.Module):
    """CLIP patch + class + position embeddings; position embeddings are interpolated for other resolutions."""

    def __init__(self, config: EfficientVLMConfig):
        super().__init__()
        vc = config.vision_config
        self.config = vc
        self.patch_size = vc.patch_size
        self.class_embedding = nn.Parameter(torch.zeros(vc.hidden_size))
        self.patch_embedding = nn.Conv2d(vc.num_channels, vc.hidden_size, vc.patch_size, vc.patch_size, bias=False)
        self.position_embedding = nn.Embedding(vc.num_patches + 1, vc.hidden_size)

    def interpolated_position_embeddings(self, height: int, width: int) -> torch.Tensor:
        """Position embeddings for a ``height x width`` image: bicubic interpolation of the patch grid."""
        table = self.position_embedding.weight
        grid = int(math.sqrt(table.shape[0] - 1))
        new_h, new_w = height // self.patch_size, width // self.patch_size
        if (new_h, new_w) == (grid, grid):
            return table
        patch_pos = table[1:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos.float(), size=(new_h, new_w), mode="bicubic", align_corners=False)
        patch_pos = patch_pos.to(table.dtype).permute(0, 2, 3, 1).reshape(new_h * new_w, -1)
        return torch.cat([table[:1], patch_pos], dim=0)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.dim() != 4 or pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"pixel_values must have shape (batch, {self.config.num_channels}, height, width), got "
                f"{tuple(pixel_values.shape)}; use EfficientVLMProcessor / EfficientVLMImageProcessor to prepare images."
            )
        height, width = pixel_values.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"Image size {height}x{width} is not a multiple of the patch size {self.patch_size}.")
        weight_dtype = self.patch_embedding.weight.dtype
        patches = self.patch_embedding(pixel_values.to(weight_dtype)).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)
        embeddings = torch.cat([cls, patches], dim=1)
        return embeddings + self.interpolated_position_embeddings(height, width).to(patches.dtype)[None]


class EfficientVLMVisionTransformer(nn.Module):
    """CLIP ViT: embeddings, ``pre_layrnorm``, pre-LN layers, ``post_layernorm`` over every token."""

    def __init__(self, config: EfficientVLMConfig):
        super().__init__()
        vc = config.vision_config
        self.embeddings = EfficientVLMVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(vc.hidden_size, eps=vc.layer_norm_eps)
        self.encoder = EfficientVLMEncoder([EfficientVLMVisionLayer(config, i) for i in range(vc.num_hidden_layers)])
        self.post_layernorm = nn.LayerNorm(vc.hidden_size, eps=vc.layer_norm_eps)

    def forward(self, pixel_values, output_attentions=False, output_hidden_states=False) -> EfficientVLMEncoderOutput:
        hidden_states = self.pre_layrnorm(self.embeddings(pixel_values))
        outputs = self.encoder(hidden_states, None, None, output_attentions, output_hidden_states)
        outputs.last_hidden_state = self.post_layernorm(outputs.last_hidden_state)
        return outputs


class EfficientVLMTextEmbeddings(nn.Module):
    """BERT embeddings: word + position + token type, LayerNorm, dropout."""

    def __init__(self, config: EfficientVLMConfig):
        super().__init__()
        tc = config.text_config
        self.word_embeddings = nn.Embedding(tc.vocab_size, tc.hidden_size, padding_idx=tc.pad_token_id)
        self.position_embeddings = nn.Embedding(tc.max_position_embeddings, tc.hidden_size)
        self.token_type_embeddings = nn.Embedding(tc.type_vocab_size, tc.hidden_size)
        self.layer_norm = nn.LayerNorm(tc.hidden_size, eps=tc.layer_norm_eps)
        self.dropout = nn.Dropout(tc.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids=None, past_length: int = 0):
        """``input_ids`` sit at positions ``past_length, past_length + 1, ...`` (``past_length`` > 0: tokens after
        those already in a generation cache)."""
        seq_len = past_length + input_ids.shape[1]
        if seq_len > self.position_embeddings.num_embeddings:
            raise ValueError(
                f"Text of {seq_len} tokens is longer than max_position_embeddings="
                f"{self.position_embeddings.num_embeddings}; truncate it (the processor's max_length), or generate "
                f"fewer tokens (max_length / max_new_tokens)."
            )
        positions = torch.arange(past_length, seq_len, device=input_ids.device)[None]
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        embeddings = (
            self.word_embeddings(input_ids) + self.position_embeddings(positions)
            + self.token_type_embeddings(token_type_ids)
        )
        return self.dropout(self.layer_norm(embeddings))


class EfficientVLMTextEncoder(nn.Module):
    """BERT text encoder: embeddings and post-LN self-attention layers."""

    def __init__(self, config: EfficientVLMConfig):
        super().__init__()
        self.embeddings = EfficientVLMTextEmbeddings(config)
        self.encoder = EfficientVLMEncoder(
            [EfficientVLMTextLayer(config, i, fusion=False) for i in range(config.text_config.num_hidden_layers)]
        )

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, causal=False,
                output_attentions=False, output_hidden_states=False, cache: Cache | None = None,
                past_length: int = 0) -> EfficientVLMEncoderOutput:
        """``cache`` / ``past_length``: captioning generation, ``input_ids`` follow ``past_length`` cached positions
        (see ``EfficientVLMForCaptioning``)."""
        hidden_states = self.embeddings(input_ids, token_type_ids, past_length)
        mask = build_attention_mask(attention_mask, input_ids.shape[1], hidden_states.dtype, hidden_states.device,
                                    causal, past_length)
        return self.encoder(hidden_states, mask, None, output_attentions, output_hidden_states, cache)


class EfficientVLMFusionEncoder(nn.Module):
    """Cross-modal layers: self-attention over the text, cross-attention to the image tokens, FFN."""

    def __init__(self, config: EfficientVLMConfig):
        super().__init__()
        self.encoder = EfficientVLMEncoder(
            [EfficientVLMTextLayer(config, i, fusion=True) for i in range(config.fusion_config.num_hidden_layers)]
        )

    def forward(self, text_embeds, attention_mask, image_embeds, causal=False,
                output_attentions=False, output_hidden_states=False, cache: Cache | None = None,
                past_length: int = 0) -> EfficientVLMEncoderOutput:
        """``cache`` / ``past_length``: captioning generation (see ``EfficientVLMForCaptioning``); ``image_embeds``
        may then be ``None`` once the cache holds the image's cross-attention keys and values."""
        mask = build_attention_mask(attention_mask, text_embeds.shape[1], text_embeds.dtype, text_embeds.device, causal,
                                    past_length)
        if image_embeds is not None:
            image_embeds = image_embeds.to(text_embeds.dtype)
        return self.encoder(text_embeds, mask, image_embeds, output_attentions, output_hidden_states, cache)


# ---------------------------------------------------------------------------------------------------------------
# Pre-trained model base class and the base model
# ---------------------------------------------------------------------------------------------------------------


def output_conventions(method):
    """transformers' calling conventions for a ``forward`` or ``get_*_features`` method of an EfficientVLM model.

    * ``output_attentions`` / ``output_hidden_states`` left at ``None`` take the config's value
      (``config.output_attentions``, ``config.output_hidden_states``);
    * ``return_dict`` left at ``None`` takes ``config.return_dict``; when it is False the output is returned as
      ``output.to_tuple()`` (``None`` fields left out, as transformers does), so that
      ``loss, logits = model(..., labels=labels, return_dict=False)[:2]`` works.

    The method itself always builds its ``ModelOutput``; calls between EfficientVLM modules pass ``return_dict=True``.
    """
    names = list(inspect.signature(method).parameters)[1:]  # after self
    position = {name: names.index(name) for name in ("output_attentions", "output_hidden_states", "return_dict")
                if name in names}

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        def given(name):  # the argument, passed by position or by name
            index = position[name]
            return args[index] if index < len(args) else kwargs.get(name)

        for flag in ("output_attentions", "output_hidden_states"):
            if flag in position and given(flag) is None:
                value = bool(getattr(self.config, flag, False))
                if position[flag] < len(args):
                    args = (*args[:position[flag]], value, *args[position[flag] + 1:])
                else:
                    kwargs[flag] = value
        return_dict = given("return_dict")
        if return_dict is None:
            return_dict = getattr(self.config, "return_dict", True)
        output = method(self, *args, **kwargs)
        return output if return_dict or isinstance(output, tuple) else output.to_tuple()

    return wrapper


class EfficientVLMPreTrainedModel(PreTrainedModel):
    """Weight init, Auto-class plumbing and checkpoint-initialisation helpers shared by every EfficientVLM class."""

    config_class = EfficientVLMConfig
    config: EfficientVLMConfig
    base_model_prefix = "efficientvlm"
    main_input_name = "pixel_values"
    input_modalities = ["image", "text"]
    supports_gradient_checkpointing = True
    _no_split_modules = ["EfficientVLMVisionLayer", "EfficientVLMTextLayer"]
    _supports_sdpa = True
    _supports_attention_backend = True
    accepts_loss_kwargs = False  # losses are per-batch means (VQA soft scores are not token counts)
    model_tags = ["efficientvlm"]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """``PreTrainedModel.from_pretrained`` with the checks of ``loading_efficientvlm.load_pretrained``.

        Only safetensors weights are loaded: a checkpoint with pickled weights only (``pytorch_model.bin``) is
        refused with a ``ValueError``, as is one whose config does not match its weights (the message names every
        tensor that does not fit, the config field that sets its shape, and the fix) and one whose safetensors file
        is truncated or corrupt (the message names the file). This override is on every loading path (library
        classes, Auto classes, and Hub remote code, which ships this file and its siblings). ``config.fusion_config``
        is the fusion *encoder*, not a request for transformers' runtime kernel fusions.

        transformers reports the weights a checkpoint lacks (initialised at random instead) only through
        ``output_loading_info=True`` and its log table; this override warns, naming the head (e.g. a pre-training or
        NLVR2 checkpoint loaded as a VQA model), and remembers them on the model, so that ``weights_not_loaded()``
        can tell later whether they are still untrained (the VQA pipeline and the trainers refuse a random head).
        """
        return load_pretrained(cls, super().from_pretrained, pretrained_model_name_or_path, *model_args, **kwargs)

    def weights_not_loaded(self) -> list[str]:
        """Names of the tensors that loading did not fill from a checkpoint (``from_pretrained``: missing from it, or
        re-initialised for another shape; ``from_vision_text_pretrained``: all but the CLIP and BERT weights) and that
        still hold the values they were initialised with: a task head (or any other part) that is still random.

        Empty for a model built in memory (nothing was loaded), for a checkpoint that holds every tensor, and once the
        initialised tensors have been trained (64 values of each are compared with their values at load time, in the
        tensor's current dtype, so a cast to bf16 / fp16 still counts as untrained and one optimizer step as
        trained). ``loaded_from`` names the checkpoint(s).
        """
        return weights_not_loaded(self)

    @property
    def loaded_from(self) -> str | None:
        """The checkpoint (folder or Hub id) this model was loaded from (``"<vision> + <text>"`` for
        ``from_vision_text_pretrained``); None if built in memory."""
        return getattr(self, "_loaded_from", None)

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, EfficientVLMVisionEmbeddings):
            init.normal_(module.class_embedding, mean=0.0, std=module.config.hidden_size**-0.5)
        elif isinstance(module, EfficientVLMContrastiveMixin):
            init.constant_(module.temp, self.config.itc_temperature)

    @classmethod
    def from_vision_text_pretrained(cls, vision_name_or_path: str, text_name_or_path: str,
                                    text_layers: int | None = None, fusion_layers: int | None = None,
                                    image_size: int | None = None, config_kwargs: dict | None = None,
                                    **loading_kwargs):
        """Build a model of this class from a CLIP vision checkpoint and a BERT checkpoint (local folders or Hub ids).

        The vision tower is copied from CLIP; the text layers are BERT's first ``text_layers`` layers (default: half of
        BERT's layers), the fusion self-attention and FFN are BERT's following ``fusion_layers`` layers (default: the
        rest); the fusion cross-attention, the projections and the task head are freshly initialised.

        Args:
            vision_name_or_path: a ``CLIPVisionModel`` or ``CLIPModel`` checkpoint.
            text_name_or_path: a ``BertModel`` (or ``BertForMaskedLM`` ...) checkpoint.
            text_layers, fusion_layers: how many BERT layers go to each stack.
            image_size: resolution to fine-tune at; the position embeddings are interpolated to it.
            config_kwargs: extra top-level config fields (e.g. ``id2label`` for VQA).
            loading_kwargs: passed to both ``from_pretrained`` calls (``revision``, ``cache_dir``, ``local_files_only``...).
        """
        return init_from_vision_text(cls, vision_name_or_path, text_name_or_path, text_layers, fusion_layers,
                                     image_size, config_kwargs, **loading_kwargs)

    def get_image_features(self, pixel_values, output_attentions=None, output_hidden_states=None, return_dict=None):
        """The vision tower's output (``EfficientVLMModel.get_image_features``); the contrastive heads (retrieval,
        pre-training) return their ITC projection as ``pooler_output`` instead."""
        return self.base_model.get_image_features(pixel_values, output_attentions=output_attentions,
                                                  output_hidden_states=output_hidden_states, return_dict=return_dict)

    def get_text_features(self, input_ids, attention_mask=None, token_type_ids=None, output_attentions=None,
                          output_hidden_states=None, return_dict=None):
        """The text encoder's output (``EfficientVLMModel.get_text_features``); the contrastive heads (retrieval,
        pre-training) return their ITC projection as ``pooler_output`` instead."""
        return self.base_model.get_text_features(input_ids, attention_mask, token_type_ids,
                                                 output_attentions=output_attentions,
                                                 output_hidden_states=output_hidden_states, return_dict=return_dict)

    def resize_position_embeddings(self, image_size: int) -> None:
        """Interpolate the vision position embeddings to ``image_size`` and record it in the config
        (e.g. 224 px pre-training -> 384 px retrieval / 480 px VQA fine-tuning)."""
        vc = self.config.vision_config
        if image_size % vc.patch_size:
            raise ValueError(f"image_size={image_size} is not a multiple of patch_size={vc.patch_size}.")
        embeddings = self.base_model.vision_model.embeddings
        with torch.no_grad():
            table = embeddings.interpolated_position_embeddings(image_size, image_size).detach().clone()
        embeddings.position_embedding = nn.Embedding.from_pretrained(table, freeze=False)
        vc.image_size = image_size


def check_image_index(image_index: torch.Tensor, num_images: int, num_texts: int) -> None:
    """Raise a ``ValueError`` naming the problem unless ``image_index`` is a ``(num_texts,)`` integer tensor of rows
    in ``[0, num_images)`` (the ``image_index`` argument of ``EfficientVLMModel.forward``)."""
    if not isinstance(image_index, torch.Tensor):
        raise ValueError(f"image_index must be a torch.LongTensor (one image row per text), got "
                         f"{type(image_index).__name__}.")
    if image_index.is_floating_point() or image_index.is_complex() or image_index.dtype == torch.bool:
        raise ValueError(f"image_index must hold integers (rows of pixel_values), got dtype {image_index.dtype}: "
                         "pass a torch.long tensor.")
    if image_index.dim() != 1 or image_index.shape[0] != num_texts:
        raise ValueError(f"image_index has shape {tuple(image_index.shape)} but the batch has {num_texts} texts: "
                         f"pass one entry per text, shape ({num_texts},).")
    if num_texts and (image_index.min() < 0 or image_index.max() >= num_images):
        raise ValueError(f"image_index holds rows {image_index.min().item()}..{image_index.max().item()} but there "
                         f"are {num_images} images (rows 0..{num_images - 1} of pixel_values): each entry names the "
                         "row of the text's image.")


class EfficientVLMModel(EfficientVLMPreTrainedModel):
    """The bare EfficientVLM model: vision tower, text encoder and fusion encoder.

    ``forward`` encodes images and texts and fuses them; ``encode_image``, ``encode_text`` and ``fuse`` expose the
    three stages separately (retrieval re-ranking, ITM with mined negatives, NLVR2 and captioning use them).
    """

    def __init__(self, config: EfficientVLMConfig):
        super().__init__(config)
        self.vision_model = EfficientVLMVisionTransformer(config)
        self.text_model = EfficientVLMTextEncoder(config)
        self.fusion_model = EfficientVLMFusionEncoder(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.text_model.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.text_model.embeddings.word_embeddings = value

    def encode_image(self, pixel_values, output_attentions=False, output_hidden_states=False):
        """Vision tower. Returns an ``EfficientVLMEncoderOutput``; ``last_hidden_state`` is ``image_embeds``."""
        return self.vision_model(pixel_values, output_attentions, output_hidden_states)

    def encode_text(self, input_ids, attention_mask=None, token_type_ids=None, causal=False,
                    output_attentions=False, output_hidden_states=False):
        """Text encoder. Returns an ``EfficientVLMEncoderOutput``; ``last_hidden_state`` is ``text_embeds``."""
        return self.text_model(input_ids, attention_mask, token_type_ids, causal, output_attentions,
                               output_hidden_states)

    def fuse(self, text_embeds, attention_mask, image_embeds, causal=False,
             output_attentions=False, output_hidden_states=False):
        """Fusion encoder over already encoded text and image tokens."""
        return self.fusion_model(text_embeds, attention_mask, image_embeds, causal, output_attentions,
                                 output_hidden_states)

    @output_conventions
    def get_image_features(self, pixel_values, output_attentions=None, output_hidden_states=None,
                           return_dict=None) -> BaseModelOutputWithPooling:
        """The vision tower's output, as transformers 5 models return it (with gradient).

        Returns:
            ``BaseModelOutputWithPooling``: ``last_hidden_state`` the image tokens ``(batch, image_seq,
            vision_hidden)`` (``image_embeds``), ``pooler_output`` their ``[CLS]`` token ``(batch, vision_hidden)``,
            ``hidden_states`` / ``attentions`` when requested. The contrastive heads project ``pooler_output``.
        """
        vision = self.encode_image(pixel_values, output_attentions, output_hidden_states)
        return BaseModelOutputWithPooling(last_hidden_state=vision.last_hidden_state,
                                          pooler_output=vision.last_hidden_state[:, 0],
                                          hidden_states=vision.hidden_states, attentions=vision.attentions)

    @output_conventions
    def get_text_features(self, input_ids, attention_mask=None, token_type_ids=None, output_attentions=None,
                          output_hidden_states=None, return_dict=None) -> BaseModelOutputWithPooling:
        """The text encoder's output, as transformers 5 models return it (with gradient).

        Returns:
            ``BaseModelOutputWithPooling``: ``last_hidden_state`` the text tokens ``(batch, seq, hidden)``
            (``text_embeds``), ``pooler_output`` their ``[CLS]`` token ``(batch, hidden)``, ``hidden_states`` /
            ``attentions`` when requested. The contrastive heads project ``pooler_output``.
        """
        text = self.encode_text(input_ids, attention_mask, token_type_ids, False, output_attentions,
                                output_hidden_states)
        return BaseModelOutputWithPooling(last_hidden_state=text.last_hidden_state,
                                          pooler_output=text.last_hidden_state[:, 0],
                                          hidden_states=text.hidden_states, attentions=text.attentions)

    @output_conventions
    def forward(self, pixel_values=None, input_ids=None, attention_mask=None, token_type_ids=None,
                image_embeds=None, causal=False, output_attentions=None, output_hidden_states=None,
                return_dict=None, image_index=None, **kwargs) -> EfficientVLMModelOutput:
        """Encode images and texts and fuse them.

        Args:
            pixel_values: ``(batch, 3, H, W)`` from ``EfficientVLMImageProcessor``; with ``image_index``,
                ``(num_images, 3, H, W)``: each distinct image once.
            input_ids, attention_mask, token_type_ids: ``(batch, seq)`` from the tokenizer.
            image_embeds: already encoded images (skips the vision tower); with ``image_index``, one per image.
            causal: causal self-attention in the text and fusion layers (captioning).
            image_index: optional ``(batch,)`` integer tensor: for each text, the row of ``pixel_values`` (or
                ``image_embeds``) it is about. The vision tower then encodes each image once however many texts
                ask about it (``VQACollator(group_images=True)`` builds such batches); the fusion encoder reads
                each text's image states. ``None``: one image per text, row ``i`` with text ``i``.

        With ``image_index``, ``image_embeds`` and the vision tower's hidden states and attentions have one row per
        image; the text and fusion fields one row per text.
        """
        output_attentions, output_hidden_states = bool(output_attentions), bool(output_hidden_states)
        if input_ids is None:
            raise ValueError("input_ids are required: EfficientVLMModel fuses a text with an image.")
        vision = None
        if image_embeds is None:
            if pixel_values is None:
                raise ValueError("Pass pixel_values (or precomputed image_embeds).")
            vision = self.encode_image(pixel_values, output_attentions, output_hidden_states)
            image_embeds = vision.last_hidden_state
        if image_index is not None:
            check_image_index(image_index, image_embeds.shape[0], input_ids.shape[0])
            text_images = image_embeds.index_select(0, image_index.to(image_embeds.device))
        elif image_embeds.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"{image_embeds.shape[0]} images but {input_ids.shape[0]} texts: pass one image per text, or an "
                "image_index naming each text's image."
            )
        else:
            text_images = image_embeds
        text = self.encode_text(input_ids, attention_mask, token_type_ids, causal, output_attentions,
                                output_hidden_states)
        fusion = self.fuse(text.last_hidden_state, attention_mask, text_images, causal, output_attentions,
                           output_hidden_states)
        return EfficientVLMModelOutput(
            last_hidden_state=fusion.last_hidden_state,
            pooler_output=fusion.last_hidden_state[:, 0],
            image_embeds=image_embeds,
            text_embeds=text.last_hidden_state,
            vision_model_output=_requested(vision),
            text_model_output=_requested(text),
            fusion_model_output=_requested(fusion),
        )


def _requested(output: EfficientVLMEncoderOutput | None) -> EfficientVLMEncoderOutput | None:
    """An encoder's output for a ``<pass>_model_output`` field: set when its hidden states or attention maps were
    requested, else ``None`` (its last hidden state alone is already in the head's own fields)."""
    if output is None or (output.hidden_states is None and output.attentions is None):
        return None
    return output


def _classifier(in_features: int, hidden: int, num_outputs: int) -> nn.Sequential:
    """The X-VLM ``build_mlp`` head: Linear, LayerNorm (torch's default eps, as there), GELU, Linear."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.LayerNorm(hidden), nn.GELU(),
                         nn.Linear(hidden, num_outputs))


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """``(..., 4)`` boxes ``(centre x, centre y, width, height)`` -> ``(x0, y0, x1, y1)``."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Generalized IoU (Rezatofighi et al., 2019) of matching rows of two ``(n, 4)`` ``(x0, y0, x1, y1)`` box sets:
    IoU minus the share of the smallest enclosing box that neither box covers; in ``[-1, 1]``."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    low, high = torch.maximum(boxes1[:, :2], boxes2[:, :2]), torch.minimum(boxes1[:, 2:], boxes2[:, 2:])
    intersection = (high - low).clamp(min=0).prod(-1)
    union = area1 + area2 - intersection
    enclosing = (torch.maximum(boxes1[:, 2:], boxes2[:, 2:]) - torch.minimum(boxes1[:, :2], boxes2[:, :2])).prod(-1)
    return intersection / union - (enclosing - union) / enclosing


def box_losses(pred_boxes: torch.Tensor, target_boxes: torch.Tensor, mask: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """X-VLM's box regression losses of ``(cx, cy, w, h)`` boxes: ``(L1 summed over the coordinates, 1 - GIoU)``,
    each averaged over the rows where ``mask`` is true (all rows by default; 0 when no row is boxed)."""
    pred_boxes, target_boxes = pred_boxes.float(), target_boxes.float()
    if mask is None:
        mask = torch.ones(pred_boxes.shape[0], dtype=torch.bool, device=pred_boxes.device)
    if (target_boxes[mask][:, 2:] <= 0).any():
        raise ValueError("target_bbox has a box of zero or negative width/height; boxes are (cx, cy, w, h) "
                         "fractions of the image side (set bbox_mask False for examples without a box).")
    weight = mask.float()
    count = weight.sum().clamp(min=1)
    l1 = (F.l1_loss(pred_boxes, target_boxes, reduction="none").sum(-1) * weight).sum() / count
    # Unboxed rows get a stand-in target so the GIoU stays finite; their term is masked out.
    safe_target = torch.where(mask[:, None], target_boxes, torch.tensor([0.5, 0.5, 1.0, 1.0],
                                                                         device=target_boxes.device))
    giou = generalized_box_iou(box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(safe_target))
    return l1, ((1 - giou) * weight).sum() / count


# ---------------------------------------------------------------------------------------------------------------
# Heads
# ---------------------------------------------------------------------------------------------------------------


class EfficientVLMForVisualQuestionAnswering(EfficientVLMPreTrainedModel):
    """VQA as classification over the answer vocabulary in ``config.id2label``, trained on soft VQA scores.

    This deliberately differs from the paper, which ranks answers with a generative decoder: a classifier head
    gives a fixed-cost forward pass, prunes like the rest of the model and plugs into the standard
    ``visual-question-answering`` pipeline. ``labels`` are soft scores ``(batch, num_labels)`` in [0, 1].

    The loss follows ``config.problem_type``, as transformers' classification heads do:

    - ``None`` or ``"multi_label_classification"`` (the default): binary cross-entropy with logits, multiplied by the
      number of labels (the ViLT / BUTD convention for VQAv2, whose ten human answers often disagree);
    - ``"single_label_classification"``: cross-entropy of the softmax against the soft scores normalised to sum to
      one, for data with one answer per question (a question whose answers are all outside the vocabulary adds 0).

    The pipeline scores answers with the matching sigmoid or softmax, and distillation compares the matching
    distributions (``tasks.KDLogits.scores_each_label``).
    """

    def __init__(self, config: EfficientVLMConfig):
        super().__init__(config)
        self.efficientvlm = EfficientVLMModel(config)
        hidden = config.text_config.hidden_size
        self.classifier = _classifier(hidden, 2 * hidden, config.num_labels)
        self.post_init()

    @output_conventions
    def forward(self, pixel_values=None, input_ids=None, attention_mask=None, token_type_ids=None, labels=None,
                output_attentions=None, output_hidden_states=None, return_dict=None, image_index=None,
                **kwargs) -> EfficientVLMHeadOutput:
        """``image_index`` (optional, ``(batch,)``): for each question, its row of ``pixel_values``, which then holds
        each distinct image once (see ``EfficientVLMModel.forward``); ``vision_hidden_states`` /
        ``vision_attentions`` then have one row per image."""
        outputs = self.efficientvlm(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask,
                                    token_type_ids=token_type_ids, output_attentions=output_attentions,
                                    output_hidden_states=output_hidden_states, return_dict=True,
                                    image_index=image_index)
        logits = self.classifier(outputs.pooler_output)
        loss = None
        if labels is not None:
            if labels.shape != logits.shape:
                raise ValueError(
                    f"VQA labels must be soft scores of shape (batch, num_labels)={tuple(logits.shape)}, got "
                    f"{tuple(labels.shape)}."
                )
            loss = vqa_classification_loss(logits, labels, self.config.problem_type)
        return EfficientVLMHeadOutput(loss=loss, logits=logits, **_model_fields(outputs))


def vqa_classification_loss(logits: torch.Tensor, labels: torch.Tensor, problem_type: str | None) -> torch.Tensor:
    """The VQA classifier's loss on soft scores ``labels`` ``(batch, num_labels)`` (see
    ``EfficientVLMForVisualQuestionAnswering``): BCE times ``num_labels`` for ``None`` /
    ``"multi_label_classification"``, soft-target softmax cross-entropy (mean over questions) for
    ``"single_label_classification"``."""
    labels = labels.to(logits.dtype)
    if problem_type == "single_label_classification":
        targets = labels / labels.sum(-1, keepdim=True).clamp_min(torch.finfo(labels.dtype).tiny)
        return -(targets * logits.float().log_softmax(-1)).sum(-1).mean()
    return F.binary_cross_entropy_with_logits(logits, labels) * labels.shape[1]


def _model_fields(outputs: EfficientVLMModelOutput) -> dict:
    """The per-encoder outputs of ``EfficientVLMModel``'s output, for a head's output."""
    return {"vision_model_output": outputs.vision_model_output, "text_model_output": outputs.text_model_output,
            "fusion_model_output": outputs.fusion_model_output}


# ---------------------------------------------------------------------------------------------------------------
# Decoding with a key/value cache (captioning, generative VQA)
# ---------------------------------------------------------------------------------------------------------------


class EfficientVLMCachedGenerationMixin(GenerationMixin):
    """``generate`` with a key/value cache for a decoder that cross-attends to encoder states (the image tokens for
    captioning, the fused question for generative VQA).

    The cache is an ``EncoderDecoderCache``: the self-attention keys and values of the decoded positions (one slot
    per decoder block with self-attention) and the cross-attention keys and values of the encoder states (one slot
    per block with cross-attention), computed once per encoder row by ``cache_cross_attention``. The rows that decode
    one encoder row (its beams, returned sequences or candidate answers, consecutive as transformers expands them)
    share that row without copies (see ``EfficientVLMAttention``). A model lists its decoder layers in decoding
    order in ``_cached_decoder_layers``.
    """

    def _cached_decoder_layers(self) -> list[nn.Module]:
        raise NotImplementedError

    def _number_cache_slots(self) -> int:
        """Give every decoder attention block its slot in a cache, in decoding order, and return the number of
        cross-attention slots.

        Self-attention blocks are numbered 0, 1, ... and so are cross-attention blocks; absent blocks (0 heads) get
        no slot, so that slot 0 always holds the length of the cached text (``Cache.get_seq_length()``). Numbered at
        every cached call, since pruning may remove blocks in place.
        """
        self_slot = cross_slot = 0
        for layer in self._cached_decoder_layers():
            if layer.self_attn is not None:
                layer.self_attn.cache_index, self_slot = self_slot, self_slot + 1
            if getattr(layer, "cross_attn", None) is not None:
                layer.cross_attn.cache_index, cross_slot = cross_slot, cross_slot + 1
        return cross_slot

    @staticmethod
    def _cached_length(cache: Cache | None) -> int:
        """Text positions whose keys and values ``cache`` holds (0 when no decoder layer has self-attention: each
        step then reruns the whole prefix, and only the encoder states' keys and values are reused)."""
        return 0 if cache is None else cache.get_seq_length()

    def _new_cache(self, cache: Cache | None, use_cache: bool | None) -> EncoderDecoderCache | None:
        """The cache a forward call works with: ``None`` without ``use_cache`` (default: when a cache is passed), a
        new one for ``use_cache=True`` alone, a plain self-attention ``Cache`` wrapped into an ``EncoderDecoderCache``."""
        use_cache = cache is not None if use_cache is None else use_cache
        if not use_cache:
            return None
        if cache is None:
            return EncoderDecoderCache(DynamicCache(), DynamicCache())
        return cache if isinstance(cache, EncoderDecoderCache) else EncoderDecoderCache(cache, DynamicCache())

    def _cross_attention_cached(self, cache: Cache | None) -> bool:
        """Whether ``cache`` holds the keys and values of every cross-attention block (numbering the slots)."""
        if cache is None:
            return False
        return all(cache.is_updated.get(slot) for slot in range(self._number_cache_slots()))

    @staticmethod
    def _cached_cross_rows(cache: Cache | None) -> int | None:
        """Rows of the encoder states whose keys and values ``cache`` holds (``None`` if it holds none)."""
        if not isinstance(cache, EncoderDecoderCache) or not cache.is_updated.get(0):
            return None
        return cache.cross_attention_cache.layers[0].keys.shape[0]

    def cache_cross_attention(self, encoder_states: torch.Tensor) -> EncoderDecoderCache:
        """A new cache holding the decoder's cross-attention keys and values of ``encoder_states``
        ``(rows, tokens, width)``, one row per image (question); its self-attention cache is empty."""
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        self._number_cache_slots()
        layers = self._cached_decoder_layers()
        encoder_states = encoder_states.to(self.get_output_embeddings().weight.dtype)
        for layer in layers:
            if getattr(layer, "cross_attn", None) is not None:
                key, value = layer.cross_attn.key_value(encoder_states)
                cache.cross_attention_cache.update(key, value, layer.cross_attn.cache_index)
                cache.is_updated[layer.cross_attn.cache_index] = True
        return cache

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, is_encoder_decoder=False, **kwargs):
        if outputs.get("cache") is not None:
            model_kwargs[_CACHE_KWARG] = outputs["cache"]
        mask = model_kwargs.get("attention_mask")
        if mask is not None:
            new = kwargs.get("num_new_tokens", 1)
            model_kwargs["attention_mask"] = torch.cat([mask, mask.new_ones((mask.shape[0], new))], dim=-1)
        return model_kwargs

    def _reorder_cache(self, cache: Cache, beam_idx: torch.LongTensor) -> Cache:
        """Beam search: keep the self-attention keys and values of the beams chosen at this step.

        The encoder states' cross-attention keys and values are left as they are: beam search picks every beam among
        the beams of the same image (question), and those share its keys and values (one row per image, or identical
        rows), so reordering them would copy them for nothing.
        """
        if isinstance(cache, EncoderDecoderCache):
            cache.self_attention_cache.reorder_cache(beam_idx)
        else:
            cache.reorder_cache(beam_idx)
        return cache

    def _generation_setting(self, generate_kwargs: dict, name: str):
        """A generation setting as ``generate`` resolves it: keyword, then the ``generation_config`` argument, then
        the model's ``generation_config`` (``None`` if unset everywhere)."""
        for source in (generate_kwargs, generate_kwargs.get("generation_config"), self.generation_config):
            value = source.get(name) if isinstance(source, dict) else getattr(source, name, None)
            if value is not None:
                return value
        return None

    def _cache_for_generate(self, generate_kwargs: dict, encoder_states: torch.Tensor) -> torch.Tensor | None:
        """Unless ``use_cache=False`` or the caller passed a cache: put a new cache holding ``encoder_states``'
        cross-attention keys and values into ``generate_kwargs`` and return ``None`` (the decoder then reads the
        encoder states from the cache alone); otherwise return ``encoder_states``."""
        use_cache, implementation = (self._generation_setting(generate_kwargs, name)
                                     for name in ("use_cache", "cache_implementation"))
        user_cache = generate_kwargs.get("cache", generate_kwargs.get("past_key_values"))
        if use_cache is False or user_cache is not None:  # unset means True, as in transformers
            return encoder_states
        if implementation not in (None, "dynamic"):
            raise ValueError(f"cache_implementation={implementation!r} is not supported by {type(self).__name__} (its "
                             "decoder layers differ in size); use the default dynamic cache.")
        generate_kwargs[_CACHE_KWARG] = self.cache_cross_attention(encoder_states)
        return None


# ---------------------------------------------------------------------------------------------------------------
# Generative VQA: an answer decoder over the fused question states (the paper's VQA model)
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class EfficientVLMGenerativeVQAOutput(EfficientVLMHeadOutput):
    """Output of ``EfficientVLMForGenerativeVQA``.

    Args:
        loss: with ``answer_weights``: the weighted answer likelihood loss
            ``-sum_{question, answer} weight * log P(answer | question, image) / batch``.
        logits: when ranking (no ``answer_input_ids``): ``(batch, num_answers)`` scores over ``config.id2label``,
            the log-likelihood ``log P(answer | question, image)`` of each of the ``k`` re-scored answers and
            ``-inf`` for the others (``softmax`` of a row gives the paper's answer probabilities). When decoding
            (``decoder_input_ids``, as ``generate()`` does): next-token logits ``(batch, seq, vocab)``.
        answer_logits: with ``answer_input_ids``: next-token logits of the decoder on every given answer
            ``(batch, answers, answer_len, vocab)`` (position ``t`` predicts token ``t + 1``).
        answer_log_likelihood: with ``answer_input_ids``: ``log P(answer | question, image)`` of every given
            answer ``(batch, answers)`` (0 for padding answers).
        ranked_answer_ids: when ranking: indices into ``config.id2label`` of the ``k`` re-scored answers, best first
            ``(batch, k)``.
        decoder_model_output: the answer decoder's ``EfficientVLMEncoderOutput`` over the ``batch * answers`` answer
            sequences (answers of one question consecutive), when requested.
        cache: when decoding with ``use_cache`` (as ``generate()`` does), the ``EncoderDecoderCache`` holding the
            decoder's self-attention keys and values of the answer so far and its cross-attention keys and values
            of the fused question; pass it back as ``cache=`` with the next tokens only (``past_key_values`` before
            transformers 5.24; ``output.past_key_values`` reads it in every 5.x version).
    """

    answer_logits: torch.FloatTensor | None = None
    answer_log_likelihood: torch.FloatTensor | None = None
    ranked_answer_ids: torch.LongTensor | None = None
    decoder_model_output: EfficientVLMEncoderOutput | None = None
    cache: Cache | None = None


if not hasattr(ModelOutput, "past_key_values"):  # transformers < 5.24: no alias of the older name yet
    EfficientVLMGenerativeVQAOutput.past_key_values = property(lambda self: self.cache)


class EfficientVLMDecoderLayer(GradientCheckpointingLayer):
    """Post-LayerNorm BERT decoder layer: causal self-attention over the answer, cross-attention from the answer to
    the question states (masking the question's padding), FFN.

    Its sub-blocks, their names and their pruning gates are the fusion layer's (``EfficientVLMTextLayer``), so the
    decoder is gated, materialised and reloaded like the fusion encoder; a gated sub-block computes
    ``x + g * (ln(x + branch(x)) - x)``. ``cache`` (generation, ranking) is handed to both attention blocks; see
    ``EfficientVLMAttention``.
    """

    def __init__(self, config: EfficientVLMConfig, layer_idx: int):
        super().__init__()
        dc = config.decoder_config
        hidden = dc.hidden_size
        heads = dc.per_layer("num_attention_heads")[layer_idx]
        cross_heads = dc.per_layer("num_cross_attention_heads")[layer_idx]
        ffn = dc.per_layer("intermediate_size")[layer_idx]
        dropout = dc.attention_probs_dropout_prob

        def layer_norm():
            return nn.LayerNorm(hidden, eps=dc.layer_norm_eps)

        self.self_attn = EfficientVLMAttention(config, hidden, heads, dc.head_dim, dropout) if heads else None
        self.self_attn_layer_norm = layer_norm() if heads else None
        self.cross_attn = (
            EfficientVLMAttention(config, hidden, cross_heads, dc.head_dim, dropout,
                                  kv_input_size=dc.encoder_hidden_size, is_cross_attention=True)
            if cross_heads else None
        )
        self.cross_attn_layer_norm = layer_norm() if cross_heads else None
        self.mlp = EfficientVLMMLP(hidden, ffn, dc.hidden_act) if ffn else None
        self.final_layer_norm = layer_norm() if ffn else None
        self.dropout = nn.Dropout(dc.hidden_dropout_prob)
        register_pruning_gates(self, "attention_gate", "cross_attention_gate", "ffn_gate")  # scalars

    _residual = EfficientVLMTextLayer._residual

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                output_attentions=False, cache: Cache | None = None):
        attn_weights = cross_weights = None
        if self.self_attn is not None:
            branch, attn_weights = self.self_attn(hidden_states, attention_mask, output_attentions=output_attentions,
                                                  cache=cache)
            gate = _combine_gates(self.attention_gate, self.self_attn.head_gate)
            hidden_states = self._residual(hidden_states, branch, self.self_attn_layer_norm, gate)
        if self.cross_attn is not None:
            branch, cross_weights = self.cross_attn(hidden_states, encoder_attention_mask, encoder_hidden_states,
                                                    output_attentions=output_attentions, cache=cache)
            gate = _combine_gates(self.cross_attention_gate, self.cross_attn.head_gate)
            hidden_states = self._residual(hidden_states, branch, self.cross_attn_layer_norm, gate)
        if self.mlp is not None:
            branch = self.mlp(hidden_states)
            gate = _combine_gates(self.ffn_gate, self.mlp.neuron_gate)
            hidden_states = self._residual(hidden_states, branch, self.final_layer_norm, gate)
        return hidden_states, attn_weights, cross_weights


class EfficientVLMDecoderStack(EfficientVLMEncoder):
    """The decoder's layer stack: like ``EfficientVLMEncoder``, with the cross-attention's padding mask."""

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                output_attentions=False, output_hidden_states=False,
                cache: Cache | None = None) -> EfficientVLMEncoderOutput:
        all_hidden = (hidden_states,) if output_hidden_states else None
        all_attn = () if output_attentions else None
        all_cross = () if output_attentions else None
        layer_kwargs = {} if cache is None else {"cache": cache}
        for layer in self.layers:
            # positional arguments, as gradient checkpointing requires
            hidden_states, attn, cross = layer(hidden_states, attention_mask, encoder_hidden_states,
                                               encoder_attention_mask, output_attentions, **layer_kwargs)
            if output_hidden_states:
                all_hidden += (hidden_states,)
            if output_attentions:
                all_attn += (attn,)
                all_cross += (cross,)
        return EfficientVLMEncoderOutput(
            last_hidden_state=hidden_states, hidden_states=all_hidden, attentions=all_attn, cross_attentions=all_cross
        )


class EfficientVLMAnswerDecoder(nn.Module):
    """BERT answer decoder: its own text embeddings (the text encoder's vocabulary and sizes) and the decoder layers
    (``config.decoder_config``), causal over the answer and cross-attending to the fused question states."""

    def __init__(self, config: EfficientVLMConfig):
        super().__init__()
        self.embeddings = EfficientVLMTextEmbeddings(config)
        self.encoder = EfficientVLMDecoderStack(
            [EfficientVLMDecoderLayer(config, i) for i in range(config.decoder_config.num_hidden_layers)]
        )

    def forward(self, input_ids, attention_mask, question_embeds, question_attention_mask=None,
                output_attentions=False, output_hidden_states=False, cache: Cache | None = None,
                past_length: int = 0) -> EfficientVLMEncoderOutput:
        """``cache`` / ``past_length``: ``input_ids`` follow ``past_length`` positions whose self-attention keys and
        values ``cache`` holds (``attention_mask`` then covers all of them); ``question_embeds`` may be ``None`` once
        the cache holds the question's cross-attention keys and values (see ``EfficientVLMForGenerativeVQA``)."""
        hidden_states = self.embeddings(input_ids, past_length=past_length)
        dtype, device = hidden_states.dtype, hidden_states.device
        mask = build_attention_mask(attention_mask, input_ids.shape[1], dtype, device, causal=True,
                                    past_length=past_length)
        cross_mask = None if question_attention_mask is None else build_attention_mask(  # keys: the question tokens
            question_attention_mask, question_attention_mask.shape[-1], dtype, device)
        if question_embeds is not None:
            question_embeds = question_embeds.to(dtype)
        return self.encoder(hidden_states, mask, question_embeds, cross_mask, output_attentions,
                            output_hidden_states, cache)


class EfficientVLMForGenerativeVQA(EfficientVLMPreTrainedModel, EfficientVLMCachedGenerationMixin):
    """VQA as in the paper: an answer decoder generates the answer from the fused question + image states.

    The vision, text and fusion encoders fuse the question with the image as in every head; a BERT-style causal
    decoder (``config.decoder_config``: 6 layers in the teacher, 3 in the student; ``init_decoder_from_fusion()``
    copies the fusion layers into it, as the official code initialises it) cross-attends to the fused question
    states and predicts the answer tokens ``[CLS] answer [SEP]``.

    * **Training** (``answer_input_ids`` ``(batch, answers, len)``, ``answer_attention_mask``, ``answer_weights``
      ``(batch, answers)``, from ``GenerativeVQACollator``): the weighted answer likelihood of the official code,
      ``loss = -sum_{q, a} w_{q,a} * log P(a | q, image) / batch``, with ``log P`` the sum of the answer tokens'
      log-probabilities (``[SEP]`` included), no label smoothing (the official VQA decoder has none; its captioning
      decoder uses 0.1). The official weights of a question's distinct answers are their shares of the annotators'
      answers (VG-QA answers: 0.5); the collator can also use VQA scores.
    * **Inference** (no ``answer_input_ids``): rank the answer list ``config.id2label`` (tokenised in
      ``config.answer_token_ids``): the ``k`` answers (``config.rank_k``, the paper 128) whose first token is most
      likely after ``[CLS]`` are re-scored with their full-sequence log-likelihood; ``logits`` holds those scores
      over the answer list (``-inf`` for answers not re-scored), so ``logits.argmax(-1)`` is the answer, as for the
      classifier head, and ``softmax(logits)`` the paper's answer probabilities. With ``k`` = the list's size every
      answer is scored exactly. (The official re-scoring adds the first token's log-probability once more to the
      full-sequence log-likelihood; here each answer is scored by its log-likelihood alone.) With ``use_cache`` (the
      default) the decoder's cross-attention keys and values of a question are computed once and shared by its
      ``k`` candidates, and so are the self-attention keys and values of their common ``[CLS]``; ``use_cache=False``
      runs every candidate against its own copy of the question (same scores, slower).
    * **Free-form answers**: ``generate(pixel_values, input_ids, attention_mask)`` decodes from ``[CLS]`` with any
      of transformers' strategies (greedy by default, ``config.max_answer_length`` tokens). With the key/value cache
      (``use_cache=True``, the default) each step runs only the new token through the decoder, and the question's
      cross-attention keys and values are computed once per question and shared by its beams
      (``cache_question``); ``use_cache=False`` recomputes the whole answer so far at every step (same sequences).
    """

    config_class = EfficientVLMGenerativeVQAConfig
    config: EfficientVLMGenerativeVQAConfig
    main_input_name = "input_ids"
    _no_split_modules = ["EfficientVLMVisionLayer", "EfficientVLMTextLayer", "EfficientVLMDecoderLayer"]
    _tied_weights_keys = {"lm_head.decoder.weight": "answer_decoder.embeddings.word_embeddings.weight"}
    #: the VQA pipeline ranks answers with ``forward`` (softmax scores) instead of calling ``generate``
    ranks_answers = True

    def __init__(self, config: EfficientVLMGenerativeVQAConfig):
        super().__init__(config)
        self.efficientvlm = EfficientVLMModel(config)
        self.answer_decoder = EfficientVLMAnswerDecoder(config)
        self.lm_head = EfficientVLMLMHead(config)
        self.post_init()
        tc = config.text_config
        self.generation_config = GenerationConfig(
            bos_token_id=tc.bos_token_id, eos_token_id=tc.eos_token_id, pad_token_id=tc.pad_token_id,
            max_length=config.max_answer_length, num_beams=1,
        )

    def get_output_embeddings(self):
        return self.lm_head.decoder

    def set_output_embeddings(self, value):
        self.lm_head.decoder = value

    # ---- answers ----------------------------------------------------------------------------------------------

    def set_answer_list(self, answers, tokenizer) -> None:
        """Make ``answers`` the answer list ranked at inference: ``config.id2label`` and ``config.answer_token_ids``
        (each answer tokenised without special tokens, truncated to ``config.max_answer_length - 2`` tokens)."""
        answers = [str(a) for a in answers]
        if not answers or len(set(answers)) != len(answers):
            raise ValueError("set_answer_list needs a non-empty list of distinct answers.")
        limit = self.config.max_answer_length - 2
        ids = [tokenizer(answer, add_special_tokens=False)["input_ids"][:limit] for answer in answers]
        empty = [a for a, i in zip(answers, ids) if not i]
        if empty:
            raise ValueError(f"The tokenizer gives no tokens for the answer {empty[0]!r}.")
        self.config.id2label = dict(enumerate(answers))
        self.config.label2id = {a: i for i, a in enumerate(answers)}
        self.config.answer_token_ids = ids

    def answer_candidates(self, device=None) -> tuple[torch.LongTensor, torch.LongTensor]:
        """The answer list as decoder inputs ``[CLS] answer [SEP]``, padded: ``(input_ids, attention_mask)`` of shape
        ``(num_answers, longest)``."""
        token_ids = self.config.answer_token_ids
        if not token_ids:
            raise ValueError("This model has no tokenised answer list (config.answer_token_ids) to rank: call "
                             "model.set_answer_list(answers, tokenizer), or pass answer_input_ids.")
        key = (id(token_ids), len(token_ids), device)
        cached = getattr(self, "_candidates_cache", None)
        if cached is None or cached[0] != key:
            tc = self.config.text_config
            rows = [[tc.bos_token_id, *ids, tc.eos_token_id] for ids in token_ids]
            longest = max(len(r) for r in rows)
            input_ids = torch.full((len(rows), longest), tc.pad_token_id or 0, dtype=torch.long)
            mask = torch.zeros((len(rows), longest), dtype=torch.long)
            for i, row in enumerate(rows):
                input_ids[i, :len(row)] = torch.tensor(row)
                mask[i, :len(row)] = 1
            device = device if device is not None else self.device
            self._candidates_cache = (key, input_ids.to(device), mask.to(device))
            cached = self._candidates_cache
        return cached[1], cached[2]

    # ---- decoder ----------------------------------------------------------------------------------------------

    def _cached_decoder_layers(self) -> list[nn.Module]:
        return list(self.answer_decoder.encoder.layers)

    def cache_question(self, question_embeds: torch.Tensor) -> EncoderDecoderCache:
        """A new cache holding the answer decoder's cross-attention keys and values of the fused question states
        ``(questions, question_len, hidden)``, one row per question.

        ``generate`` and ranking build it once per question; the rows that decode one question (its beams, returned
        sequences or candidate answers, consecutive) share its row. Pass it as ``cache=`` (``past_key_values=``
        before transformers 5.24) with ``decoder_input_ids``; ``question_embeds`` are then not needed, and
        ``question_attention_mask`` has one row per question.
        """
        return self.cache_cross_attention(question_embeds)

    def decode(self, answer_input_ids, answer_attention_mask, question_embeds, question_attention_mask=None,
               output_attentions=False, output_hidden_states=False, cache: Cache | None = None,
               past_length: int = 0):
        """Run the answer decoder on ``(n, len)`` answer ids against ``(n, question_len, hidden)`` question states;
        returns ``(next-token logits (n, len, vocab), decoder output)``. With a ``cache``: the ids follow
        ``past_length`` positions it holds (``answer_attention_mask`` covers all of them), and ``question_embeds``
        may be ``None`` when it holds the question's keys and values (one row per question, shared by ``n /
        questions`` consecutive answer rows)."""
        decoder = self.answer_decoder(answer_input_ids, answer_attention_mask, question_embeds,
                                      question_attention_mask, output_attentions, output_hidden_states, cache,
                                      past_length)
        return self.lm_head(decoder.last_hidden_state), decoder

    @staticmethod
    def sequence_log_likelihood(logits, input_ids, attention_mask=None) -> torch.Tensor:
        """``log P(sequence)``: the sum over positions ``t >= 1`` of ``log softmax(logits[t - 1])[input_ids[t]]`` where
        ``attention_mask[t]`` is 1 (float32) - the likelihood of everything after ``[CLS]``."""
        log_probs = F.log_softmax(logits[:, :-1].float(), dim=-1)
        token = log_probs.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
        if attention_mask is not None:
            token = token * attention_mask[:, 1:].to(token.dtype)
        return token.sum(-1)

    @torch.no_grad()
    def rank_answers(self, question_embeds, question_attention_mask=None, k: int | None = None,
                     chunk_size: int = 512, use_cache: bool = True) -> tuple[torch.Tensor, torch.LongTensor]:
        """Rank the answer list for already fused questions (``(batch, question_len, hidden)``).

        The ``k`` answers (default ``config.rank_k``, at most the list's size) with the most likely first token
        after ``[CLS]`` are re-scored with their full-sequence log-likelihood, for ``max(1, chunk_size // k)``
        questions per decoder pass. Returns ``(scores (batch, num_answers), ranked (batch, k))``: the
        log-likelihoods of the re-scored answers (``-inf`` elsewhere) and their indices, best first.

        ``use_cache`` (default): the decoder's cross-attention keys and values of a question are computed once
        (``cache_question``) for the first-token step and its ``k`` candidates, and the candidates continue from the
        first step's ``[CLS]`` (its self-attention keys and values and its next-token log-probabilities); without
        it every candidate is decoded from ``[CLS]`` against its own copy of the question. Both give the same scores
        up to float rounding.
        """
        candidates, candidate_mask = self.answer_candidates(question_embeds.device)
        batch, num_answers = question_embeds.shape[0], candidates.shape[0]
        k = min(self.config.rank_k if k is None else int(k), num_answers)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}.")
        scores = torch.full((batch, num_answers), float("-inf"), device=question_embeds.device)
        ranked = []
        step = max(1, chunk_size // k)
        for start in range(0, batch, step):
            rows = slice(start, start + step)
            mask = None if question_attention_mask is None else question_attention_mask[rows]
            top, log_likelihood = self._rank_questions(question_embeds[rows], mask, candidates, candidate_mask, k,
                                                       use_cache)
            scores[rows] = scores[rows].scatter(1, top, log_likelihood)
            ranked.append(top.gather(1, log_likelihood.argsort(dim=1, descending=True, stable=True)))
        return scores, torch.cat(ranked)

    def _rank_questions(self, question, question_mask, candidates, candidate_mask, k: int, use_cache: bool):
        """``rank_answers`` for ``n`` questions: the ``k`` answers with the most likely first token ``(n, k)`` and
        their log-likelihoods ``(n, k)``."""
        n = question.shape[0]
        start = candidates[:1, :1].expand(n, 1)  # [CLS]
        cache = self.cache_question(question) if use_cache else None
        first_logits, _ = self.decode(start, None, None if use_cache else question, question_mask, cache=cache)
        first_log_probs = F.log_softmax(first_logits[:, 0].float(), dim=-1)
        first_scores = first_log_probs[:, candidates[:, 1]]  # (n, answers)
        top = first_scores.topk(k, dim=1).indices  # (n, k)
        flat = top.reshape(-1)
        ids, ids_mask = candidates[flat], candidate_mask[flat]  # (n * k, len), the k answers of a question consecutive
        if not use_cache:
            expanded_mask = None if question_mask is None else question_mask.repeat_interleave(k, 0)
            logits, _ = self.decode(ids, ids_mask, question.repeat_interleave(k, 0), expanded_mask)
            return top, self.sequence_log_likelihood(logits, ids, ids_mask).view(n, k)
        # the candidates go on from [CLS] (cached, unless no decoder layer has self-attention: then they are run from
        # [CLS] again); the question's keys and values serve its k candidates without copies
        past = self._cached_length(cache)
        if past:
            cache.self_attention_cache.reorder_cache(torch.arange(n, device=ids.device).repeat_interleave(k))
        logits, _ = self.decode(ids[:, past:], ids_mask, None, question_mask, cache=cache, past_length=past)
        log_likelihood = self.sequence_log_likelihood(logits, ids[:, past:], ids_mask[:, past:]).view(n, k)
        if past:  # the first answer token's log-probability comes from the [CLS] step
            log_likelihood = log_likelihood + first_scores.gather(1, top)
        return top, log_likelihood

    def init_decoder_from_fusion(self) -> None:
        """Initialise the answer decoder as the official code does: decoder layer ``i`` copies fusion layer ``i``
        (for every decoder layer that has one; the cross-attention keys and values only when the question states
        are as wide as the image tokens the fusion layer read), and the decoder's embeddings copy the text
        encoder's. Sub-blocks whose sizes differ are left as they are."""
        base = self.efficientvlm
        with torch.no_grad():
            self.answer_decoder.embeddings.load_state_dict(base.text_model.embeddings.state_dict())
            fusion_layers = base.fusion_model.encoder.layers
            for decoder_layer, fusion_layer in zip(self.answer_decoder.encoder.layers, fusion_layers):
                target = decoder_layer.state_dict()
                for key, value in fusion_layer.state_dict().items():
                    if key in target and target[key].shape == value.shape:
                        target[key].copy_(value)

    # ---- forward ----------------------------------------------------------------------------------------------

    @output_conventions
    def forward(self, pixel_values=None, input_ids=None, attention_mask=None, token_type_ids=None,
                answer_input_ids=None, answer_attention_mask=None, answer_weights=None, k=None,
                decoder_input_ids=None, decoder_attention_mask=None, question_embeds=None,
                question_attention_mask=None, cache: Cache | None = None, use_cache: bool | None = None,
                output_attentions=None, output_hidden_states=None, return_dict=None,
                past_key_values: Cache | None = None, **kwargs) -> EfficientVLMGenerativeVQAOutput:
        """Args:
            pixel_values, input_ids, attention_mask, token_type_ids: image and question, as for every head.
            answer_input_ids, answer_attention_mask: ``(batch, answers, len)`` (or ``(batch, len)``: one answer
                each) answers ``[CLS] answer [SEP]``; padding answers have an all-zero mask.
            answer_weights: ``(batch, answers)``: with it, ``loss`` is the weighted answer likelihood loss.
            k: answers re-scored when ranking (default ``config.rank_k``).
            decoder_input_ids, decoder_attention_mask, question_embeds, question_attention_mask: one decoder step
                over already fused questions (``generate()``); ``logits`` are then next-token logits.
            cache: when decoding, a generation cache (``past_key_values`` before transformers 5.24, also accepted):
                an ``EncoderDecoderCache`` as returned by a previous step or built by ``cache_question``;
                ``decoder_input_ids`` are then only the tokens after the ``cache.get_seq_length()`` positions it
                holds, ``decoder_attention_mask`` covers the whole answer so far, and ``question_embeds`` are not
                needed once it holds the question's keys and values.
            use_cache: when decoding, return the cache (updated with these positions) as ``output.cache``
                (default: when one is passed; ``True`` without one starts a new one). When ranking: share each
                question's keys and values among its candidates (default ``True``; see ``rank_answers``).
        """
        output_attentions, output_hidden_states = bool(output_attentions), bool(output_hidden_states)
        if decoder_input_ids is not None:
            cache = self._new_cache(past_key_values if cache is None else cache, use_cache)
            if question_embeds is None and not self._cross_attention_cached(cache):
                raise ValueError("decoder_input_ids needs question_embeds (the fused question states), or a cache "
                                 "that holds their keys and values (cache_question).")
            logits, decoder = self.decode(decoder_input_ids, decoder_attention_mask, question_embeds,
                                          question_attention_mask, output_attentions, output_hidden_states, cache,
                                          self._cached_length(cache))
            return EfficientVLMGenerativeVQAOutput(logits=logits, cache=cache, decoder_model_output=_requested(decoder))

        outputs = self.efficientvlm(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask,
                                    token_type_ids=token_type_ids, output_attentions=output_attentions,
                                    output_hidden_states=output_hidden_states, return_dict=True)
        question, fields = outputs.last_hidden_state, _model_fields(outputs)
        if answer_input_ids is None:
            scores, ranked = self.rank_answers(question, attention_mask, k, use_cache=use_cache is not False)
            return EfficientVLMGenerativeVQAOutput(logits=scores, ranked_answer_ids=ranked, **fields)

        if answer_input_ids.dim() == 2:
            answer_input_ids = answer_input_ids[:, None]
            answer_attention_mask = None if answer_attention_mask is None else answer_attention_mask[:, None]
            answer_weights = None if answer_weights is None else answer_weights.reshape(-1, 1)
        batch, answers, length = answer_input_ids.shape
        if batch != question.shape[0]:
            raise ValueError(f"answer_input_ids has answers for {batch} questions but the batch has "
                             f"{question.shape[0]}: give (batch, answers, length) ids.")
        if answer_attention_mask is None:
            answer_attention_mask = (answer_input_ids != self.config.text_config.pad_token_id).long()
        ids, mask = answer_input_ids.reshape(-1, length), answer_attention_mask.reshape(-1, length)
        # One row of question states per question: its ``answers`` consecutive answer rows share the cross-attention
        # keys and values (EfficientVLMAttention), which are then projected once per question, not once per answer.
        logits, decoder = self.decode(ids, mask, question, attention_mask, output_attentions, output_hidden_states)
        log_likelihood = self.sequence_log_likelihood(logits, ids, mask).view(batch, answers)
        loss = None
        if answer_weights is not None:
            if answer_weights.shape != (batch, answers):
                raise ValueError(f"answer_weights must have shape (batch, answers)={(batch, answers)}, got "
                                 f"{tuple(answer_weights.shape)}.")
            loss = -(answer_weights.float() * log_likelihood).sum() / batch
        return EfficientVLMGenerativeVQAOutput(
            loss=loss, answer_logits=logits.view(batch, answers, length, -1), answer_log_likelihood=log_likelihood,
            **fields, decoder_model_output=_requested(decoder),
        )

    # ---- generation -------------------------------------------------------------------------------------------

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, question_embeds=None,
                                      question_attention_mask=None, cache: Cache | None = None,
                                      past_key_values: Cache | None = None, use_cache: bool | None = None, **kwargs):
        """The next step's inputs: with a cache, only the positions it does not hold yet (the last token)."""
        cache = past_key_values if cache is None else cache
        inputs = {"decoder_attention_mask": attention_mask, "question_embeds": question_embeds,
                  "question_attention_mask": question_attention_mask}
        if cache is not None and use_cache is not False:
            input_ids = input_ids[:, self._cached_length(cache):]
            inputs.update(cache=cache, use_cache=True)
            rows = self._cached_cross_rows(cache)
            if question_attention_mask is not None and rows and question_attention_mask.shape[0] != rows:
                # transformers repeated the question's mask for its beams (consecutive rows) but the cache holds one
                # row per question: each question's first row is its mask
                inputs["question_attention_mask"] = question_attention_mask[::question_attention_mask.shape[0] // rows]
        inputs["decoder_input_ids"] = input_ids
        return inputs

    @torch.no_grad()
    def generate(self, pixel_values=None, input_ids=None, attention_mask=None, token_type_ids=None,
                 **generate_kwargs):
        """Free-form answers: fuse the question with the image once, then decode from ``[CLS]`` (greedy unless
        told otherwise, at most ``config.max_answer_length`` tokens). Returns token ids ``(batch, len)`` starting
        with ``[CLS]``; decode them with the tokenizer (``skip_special_tokens=True``).

        With ``use_cache`` (the default) the decoder's cross-attention keys and values of each question are
        computed once, in a cache (``cache_question``) that ``generate`` then extends with the answer's
        self-attention keys and values; ``use_cache=False`` recomputes the whole answer so far at every step
        instead (same sequences, slower)."""
        if pixel_values is None or input_ids is None:
            raise ValueError("generate() needs pixel_values and the question's input_ids.")
        question = self.efficientvlm(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask,
                                     token_type_ids=token_type_ids, return_dict=True).last_hidden_state
        tc = self.config.text_config
        start = torch.full((question.shape[0], 1), tc.bos_token_id, dtype=torch.long, device=question.device)
        if attention_mask is None:
            attention_mask = torch.ones(input_ids.shape, dtype=torch.long, device=question.device)
        generate_kwargs.setdefault("eos_token_id", tc.eos_token_id)
        generate_kwargs.setdefault("pad_token_id", tc.pad_token_id)
        # with the cache (the default) question becomes None: the cache holds all the decoder reads from it
        question = self._cache_for_generate(generate_kwargs, question)
        return super().generate(input_ids=start, attention_mask=torch.ones_like(start), question_embeds=question,
                                question_attention_mask=attention_mask, **generate_kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Contrastive heads: ITC and ITM over the batch gathered from every process
# ---------------------------------------------------------------------------------------------------------------


class _AllGatherRows(torch.autograd.Function):
    """Every process's ``tensor`` concatenated along dim 0 in rank order; the row counts ``sizes`` may differ.

    Backward: this process's rows get the *sum over processes* of the gradients of their gathered copies (an
    all-reduce, then this process's slice). Each process's loss is a function of the gathered tensor, and
    distributed data parallelism averages the parameter gradients over processes; with the summed gradient that
    average is the gradient of the processes' mean loss, which equals one process's loss on the whole batch when
    each process's loss is either computed over the whole gathered batch (ITC) or averages its own share of it
    (ITM, MLM). (Returning only the local slice, as X-VLM's ``AllGather`` does, drops the other processes' terms:
    under replicated ITC it divides the features' gradient by the number of processes.)
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, sizes: tuple[int, ...], rank: int) -> torch.Tensor:
        ctx.start = sum(sizes[:rank])
        ctx.stop = ctx.start + sizes[rank]
        longest = max(sizes)
        if tensor.shape[0] < longest:  # all_gather needs equal shapes: pad, then drop the padding rows
            tensor = torch.cat([tensor, tensor.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))])
        parts = [torch.empty_like(tensor) for _ in sizes]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat([part[:size] for part, size in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad = grad_output.contiguous().clone()  # all_reduce works in place
        dist.all_reduce(grad)
        return grad[ctx.start:ctx.stop], None, None


class _GatheredBatch:
    """Where this process's rows sit in the batch gathered from every process (one small collective).

    In a single process, or when gathering is switched off, the gathered batch is the local batch and ``gather``
    returns its argument. Every process must then call ``gather`` for the same tensors in the same order, as with
    any collective.
    """

    def __init__(self, batch: int, text_len: int, device: torch.device, enabled: bool):
        self.rank, self.sizes, text_lens = 0, (batch,), (text_len,)
        if enabled and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            self.rank = dist.get_rank()
            shape = torch.tensor([batch, text_len], device=device)
            shapes = [torch.empty_like(shape) for _ in range(dist.get_world_size())]
            dist.all_gather(shapes, shape)
            self.sizes, text_lens = (tuple(column) for column in zip(*torch.stack(shapes).tolist()))
        self.distributed = len(self.sizes) > 1
        self.start = sum(self.sizes[:self.rank])
        self.stop = self.start + batch
        self.total = sum(self.sizes)
        self.text_len = max(text_lens)  # the longest text of the gathered batch

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor``'s rows from every process, in rank order (with gradient, see ``_AllGatherRows``)."""
        return _AllGatherRows.apply(tensor, self.sizes, self.rank) if self.distributed else tensor

    def pad_text(self, tensor: torch.Tensor) -> torch.Tensor:
        """Pad dim 1 (text positions) with zeros up to the longest text of the gathered batch."""
        missing = self.text_len - tensor.shape[1]
        if missing == 0:
            return tensor
        return torch.cat([tensor, tensor.new_zeros((tensor.shape[0], missing, *tensor.shape[2:]))], dim=1)


class EfficientVLMContrastiveMixin(nn.Module):
    """ITC projections with a learnable temperature and the ITM head, shared by retrieval and pre-training.

    Multi-process training. When ``torch.distributed`` is initialised with more than one process (``accelerate
    launch``, ``torchrun``) and ``gather_across_processes`` is True (the default), ``forward`` works on the batch
    gathered from every process: the ITC loss contrasts every image with every text of the gathered batch (features
    gathered with gradient, as X-VLM does); ``image_ids`` mark positives across processes; each process's images and
    texts draw their ITM hard negatives from the whole gathered batch (as BLIP's retrieval fine-tuning and BLIP-2
    do; X-VLM mines each process's own batch), whose vision-tower outputs, text-encoder outputs and text masks are
    gathered for that (with gradient, so a negative trains the process that encoded it). With gradients averaged
    across processes (DDP), the step equals one process's step on the whole batch, up to the random draw of the
    negatives and as long as every process's ITM and MLM averages run over equally many pairs and tokens. Local
    batches may differ in size and in text length.

    Every process must then run ``forward`` in step with the others (as distributed training does), and
    ``image_ids`` must name images across the whole dataset, not within one batch. Cost per forward: small
    all-gathers of the batch shapes (read on the host), ITC features, image ids and text masks, and all-gathers of
    the vision-tower outputs ``(gathered batch, image tokens, vision width)`` and text-encoder outputs, whose
    gradients are all-reduced in the backward pass (at the paper's 8 x 128 images of 197 tokens x 768, about 155M
    values each way). Set ``model.gather_across_processes = False`` for per-process contrastive batches (e.g. for
    forwards that only some processes run).
    """

    #: Gather the ITC features and ITM candidates from every process under ``torch.distributed`` (see above).
    gather_across_processes: bool = True

    def _init_contrastive(self, config: EfficientVLMConfig):
        vision_hidden, text_hidden = config.vision_config.hidden_size, config.text_config.hidden_size
        self.vision_proj = nn.Linear(vision_hidden, config.projection_dim)
        self.text_proj = nn.Linear(text_hidden, config.projection_dim)
        self.temp = nn.Parameter(torch.tensor(config.itc_temperature))
        self.itm_head = _classifier(text_hidden, 2 * text_hidden, 2)

    def clamped_temperature(self) -> torch.Tensor:
        return self.temp.clamp(0.001, 0.5)

    def image_features(self, image_embeds: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.vision_proj(image_embeds[:, 0]), dim=-1)

    def text_features(self, text_embeds: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(text_embeds[:, 0]), dim=-1)

    @output_conventions
    def get_image_features(self, pixel_values, output_attentions=None, output_hidden_states=None,
                           return_dict=None) -> BaseModelOutputWithPooling:
        """The vision tower's output with the ITC projection of its ``[CLS]`` token as ``pooler_output``
        ``(batch, projection_dim)``, as ``CLIPModel.get_image_features`` returns it: with gradient and not
        normalised. ``F.normalize(pooler_output, dim=-1)`` is the ITC image feature (``image_features``)."""
        outputs = self.efficientvlm.get_image_features(pixel_values, output_attentions=output_attentions,
                                                       output_hidden_states=output_hidden_states, return_dict=True)
        outputs.pooler_output = self.vision_proj(outputs.pooler_output)
        return outputs

    @output_conventions
    def get_text_features(self, input_ids, attention_mask=None, token_type_ids=None, output_attentions=None,
                          output_hidden_states=None, return_dict=None) -> BaseModelOutputWithPooling:
        """The text encoder's output with the ITC projection of its ``[CLS]`` token as ``pooler_output``
        ``(batch, projection_dim)``, as ``CLIPModel.get_text_features`` returns it: with gradient and not
        normalised. ``F.normalize(pooler_output, dim=-1)`` is the ITC text feature (``text_features``)."""
        outputs = self.efficientvlm.get_text_features(input_ids, attention_mask, token_type_ids,
                                                      output_attentions=output_attentions,
                                                      output_hidden_states=output_hidden_states, return_dict=True)
        outputs.pooler_output = self.text_proj(outputs.pooler_output)
        return outputs

    def itm_logits(self, image_embeds, text_embeds, attention_mask, output_attentions=False,
                   output_hidden_states=False):
        """ITM logits ``(batch, 2)`` (index 1 = match) of already encoded image/text pairs, and the fusion output."""
        fusion = self.efficientvlm.fuse(text_embeds, attention_mask, image_embeds,
                                        output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        return self.itm_head(fusion.last_hidden_state[:, 0]), fusion

    @staticmethod
    def mine_hard_negatives(similarity: torch.Tensor, positive: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Sample one negative column per row with probability ``softmax(similarity)`` over non-positive columns.

        Row ``i`` is example ``offset + i`` of the columns (``offset`` > 0 when the rows are one process's share of a
        gathered batch); a row whose columns are all positive falls back to a uniform draw over the other columns.
        """
        weights = F.softmax(similarity.float(), dim=1).masked_fill(positive, 0.0)
        empty = weights.sum(dim=1, keepdim=True) <= 0  # rows without a valid negative: fall back to uniform
        rows = torch.arange(weights.shape[0], device=weights.device) + offset
        itself = torch.arange(weights.shape[1], device=weights.device)[None, :] == rows[:, None]
        weights = torch.where(empty, (~itself).float(), weights)
        return torch.multinomial(weights, 1).squeeze(1)

    def contrastive_forward(self, pixel_values, input_ids, attention_mask, token_type_ids, image_ids,
                            itm_negative_text_index, itm_negative_image_index, output_attentions,
                            output_hidden_states):
        vision = self.efficientvlm.encode_image(pixel_values, output_attentions, output_hidden_states)
        text = self.efficientvlm.encode_text(input_ids, attention_mask, token_type_ids, False, output_attentions,
                                             output_hidden_states)
        image_embeds, text_embeds = vision.last_hidden_state, text.last_hidden_state
        batch = image_embeds.shape[0]
        if text_embeds.shape[0] != batch:
            raise ValueError(f"{batch} images but {text_embeds.shape[0]} texts: pass one caption per image.")
        device = image_embeds.device
        gathered = _GatheredBatch(batch, text_embeds.shape[1], device, self.gather_across_processes)
        local = slice(gathered.start, gathered.stop)

        # ITC over the gathered batch: every process computes the same loss (see _AllGatherRows for the gradient)
        image_feat, text_feat = self.image_features(image_embeds), self.text_features(text_embeds)
        all_image_feat, all_text_feat = gathered.gather(image_feat), gathered.gather(text_feat)
        temp = self.clamped_temperature()
        all_logits = all_image_feat @ all_text_feat.t() / temp
        logits_per_image, logits_per_text = all_logits[local], all_logits.t()[local]

        # rows showing the same image are positives: keys (1, image id), or (0, position) without image ids
        if image_ids is None:
            keys = torch.stack([torch.zeros(batch, dtype=torch.long, device=device),
                                torch.arange(gathered.start, gathered.stop, device=device)], dim=1)
        else:
            keys = torch.stack([torch.ones_like(image_ids), image_ids], dim=1).long().to(device)
        keys = gathered.gather(keys)
        positive = (keys[:, None] == keys[None, :]).all(-1)
        targets = positive.float() / positive.float().sum(dim=1, keepdim=True)
        itc_loss = (-(F.log_softmax(all_logits, dim=1) * targets).sum(1).mean()
                    - (F.log_softmax(all_logits.t(), dim=1) * targets).sum(1).mean()) / 2

        # ITM: positives, then (image, mined negative text), then (mined negative image, text); negatives index the
        # gathered batch, texts are padded to its longest text
        if gathered.total > 1:
            if itm_negative_text_index is None or itm_negative_image_index is None:
                with torch.no_grad():
                    itm_negative_text_index = self.mine_hard_negatives(logits_per_image.detach(), positive[local],
                                                                       gathered.start)
                    itm_negative_image_index = self.mine_hard_negatives(logits_per_text.detach(), positive[local],
                                                                        gathered.start)
            if attention_mask is None and gathered.distributed:
                attention_mask = torch.ones(text_embeds.shape[:2], dtype=torch.long, device=device)
            texts = gathered.pad_text(text_embeds)
            mask = None if attention_mask is None else gathered.pad_text(attention_mask)
            all_images, all_texts = gathered.gather(image_embeds), gathered.gather(texts)
            pair_images = torch.cat([image_embeds, image_embeds, all_images[itm_negative_image_index]])
            pair_texts = torch.cat([texts, all_texts[itm_negative_text_index], texts])
            pair_mask = None if mask is None else torch.cat(
                [mask, gathered.gather(mask)[itm_negative_text_index], mask])
            itm_labels = torch.cat([torch.ones(batch), torch.zeros(2 * batch)]).long().to(device)
        else:  # a single pair has no negative
            pair_images, pair_texts, pair_mask = image_embeds, text_embeds, attention_mask
            itm_labels = torch.ones(1, dtype=torch.long, device=device)
        itm_logits, fusion = self.itm_logits(pair_images, pair_texts, pair_mask, output_attentions,
                                             output_hidden_states)
        itm_loss = F.cross_entropy(itm_logits, itm_labels)
        fields = {"vision_model_output": _requested(vision), "text_model_output": _requested(text),
                  "fusion_model_output": _requested(fusion)}
        return dict(
            itc_loss=itc_loss, itm_loss=itm_loss, logits=itm_logits, itm_labels=itm_labels,
            logits_per_image=logits_per_image, logits_per_text=logits_per_text, image_features=image_feat,
            text_features=text_feat, itm_negative_text_index=itm_negative_text_index,
            itm_negative_image_index=itm_negative_image_index, itm_attention_mask=pair_mask, **fields,
        ), image_embeds

    @torch.no_grad()
    def rank(self, image_embeds: torch.Tensor, text_input_ids: torch.Tensor, text_attention_mask=None,
             k: int = 128, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """Rank a gallery: ITC similarity for every image-text pair, then ITM re-scoring of each query's top ``k``.

        Args:
            image_embeds: vision tower outputs of the gallery images ``(n_images, image_seq, hidden)``
                (``model.efficientvlm.encode_image(pixel_values).last_hidden_state``, batched by the caller).
            text_input_ids, text_attention_mask: the tokenised gallery texts ``(n_texts, seq)``.
            k: how many ITC candidates per query are re-scored with ITM (the paper: 256 for COCO, 128 for VQA).
            batch_size: pairs per fusion forward.

        Returns:
            ``(scores_i2t, scores_t2i)`` of shapes ``(n_images, n_texts)`` and ``(n_texts, n_images)``: the ITM match
            logit for re-scored candidates, ``-inf`` elsewhere. Higher is better.
        """
        text_embeds = torch.cat([
            self.efficientvlm.encode_text(text_input_ids[i:i + batch_size],
                                          None if text_attention_mask is None
                                          else text_attention_mask[i:i + batch_size]).last_hidden_state
            for i in range(0, text_input_ids.shape[0], batch_size)
        ])
        similarity = self.image_features(image_embeds) @ self.text_features(text_embeds).t()
        n_images, n_texts = similarity.shape

        def match_logits(image_index, text_index):  # ITM match logit of the pairs, fused batch_size at a time
            logits = []
            for start in range(0, image_index.numel(), batch_size):
                images, texts = image_index[start:start + batch_size], text_index[start:start + batch_size]
                mask = None if text_attention_mask is None else text_attention_mask[texts]
                logits.append(self.itm_logits(image_embeds[images], text_embeds[texts], mask)[0][:, 1].float())
            return torch.cat(logits)

        top_texts = similarity.topk(min(k, n_texts), dim=1).indices  # (n_images, k) ITC candidates per image
        images = torch.arange(n_images, device=similarity.device).repeat_interleave(top_texts.shape[1])
        scores_i2t = similarity.new_full((n_images, n_texts), float("-inf"), dtype=torch.float32)
        scores_i2t[images, top_texts.reshape(-1)] = match_logits(images, top_texts.reshape(-1))

        top_images = similarity.t().topk(min(k, n_images), dim=1).indices  # (n_texts, k) per text
        texts = torch.arange(n_texts, device=similarity.device).repeat_interleave(top_images.shape[1])
        scores_t2i = similarity.new_full((n_texts, n_images), float("-inf"), dtype=torch.float32)
        scores_t2i[texts, top_images.reshape(-1)] = match_logits(top_images.reshape(-1), texts)
        return scores_i2t, scores_t2i


class EfficientVLMForImageTextRetrieval(EfficientVLMContrastiveMixin, EfficientVLMPreTrainedModel):
    """Image-text retrieval: ITC (contrastive) features and ITM (match) scores; ``rank`` re-ranks a gallery.

    ``forward`` computes ``itc_loss + itm_loss`` with hard negatives mined from the ITC similarity. ``image_ids``
    marks captions of the same image as positives of each other.
    """

    def __init__(self, config: EfficientVLMConfig):
        super().__init__(config)
        self.efficientvlm = EfficientVLMModel(config)
        self._init_contrastive(config)
        self.post_init()

    @output_conventions
    def forward(self, pixel_values=None, input_ids=None, attention_mask=None, token_type_ids=None, image_ids=None,
                itm_negative_text_index=None, itm_negative_image_index=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, **kwargs) -> EfficientVLMRetrievalOutput:
        fields, _ = self.contrastive_forward(
            pixel_values, input_ids, attention_mask, token_type_ids, image_ids, itm_negative_text_index,
            itm_negative_image_index, bool(output_attentions), bool(output_hidden_states))
        return EfficientVLMRetrievalOutput(loss=fields["itc_loss"] + fields["itm_loss"], **fields)


class EfficientVLMLMHead(nn.Module):
    """BERT LM head: dense, activation, LayerNorm, decoder (tied to the word embeddings by default)."""

    def __init__(self, config: EfficientVLMConfig):
        super().__init__()
        tc = config.text_config
        self.dense = nn.Linear(tc.hidden_size, tc.hidden_size)
        self.act = ACT2FN[tc.hidden_act]
        self.layer_norm = nn.LayerNorm(tc.hidden_size, eps=tc.layer_norm_eps)
        self.decoder = nn.Linear(tc.hidden_size, tc.vocab_size)

    def forward(self, hidden_states):
        return self.decoder(self.layer_norm(self.act(self.dense(hidden_states))))


_TIED_DECODER = {"lm_head.decoder.weight": "efficientvlm.text_model.embeddings.word_embeddings.weight"}


class EfficientVLMForPreTraining(EfficientVLMContrastiveMixin, EfficientVLMPreTrainedModel):
    """Vision-language pre-training: ITC, ITM with hard negatives, masked language modelling (MLM) and, as in
    X-VLM, box regression for texts that describe one region of the image.

    ``input_ids`` is the clean caption (ITC, ITM); ``mlm_input_ids`` is the masked caption and ``mlm_labels`` the
    original ids at masked positions (-100 elsewhere). Masking happens in the data collator, so a teacher sees the
    very same masks as the student. ``target_bbox`` ``(batch, 4)`` holds each text's region as ``(cx, cy, w, h)``
    fractions of the image side and ``bbox_mask`` ``(batch,)`` which examples have one (default: all): the
    ``bbox_head`` reads the fused ``[CLS]`` of the (whole image, region text) pair and is trained with an L1 and a
    GIoU loss (X-VLM's ``bbox_head``, which ``convert`` maps from official pre-training checkpoints). The head exists
    when ``config.use_bbox_head`` is set (off by default, as X-VLM's ``use_bbox_loss``).
    """

    _tied_weights_keys = _TIED_DECODER

    def __init__(self, config: EfficientVLMConfig):
        super().__init__(config)
        self.efficientvlm = EfficientVLMModel(config)
        self._init_contrastive(config)
        self.lm_head = EfficientVLMLMHead(config)
        text_hidden = config.text_config.hidden_size
        self.bbox_head = _classifier(text_hidden, 2 * text_hidden, 4) if config.use_bbox_head else None
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head.decoder

    def set_output_embeddings(self, value):
        self.lm_head.decoder = value

    @output_conventions
    def forward(self, pixel_values=None, input_ids=None, attention_mask=None, token_type_ids=None, mlm_input_ids=None,
                mlm_labels=None, image_ids=None, itm_negative_text_index=None, itm_negative_image_index=None,
                target_bbox=None, bbox_mask=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, **kwargs) -> EfficientVLMPreTrainingOutput:
        output_attentions, output_hidden_states = bool(output_attentions), bool(output_hidden_states)
        fields, image_embeds = self.contrastive_forward(
            pixel_values, input_ids, attention_mask, token_type_ids, image_ids, itm_negative_text_index,
            itm_negative_image_index, output_attentions, output_hidden_states)
        loss = fields["itc_loss"] + fields["itm_loss"]
        if mlm_input_ids is not None:
            text = self.efficientvlm.encode_text(mlm_input_ids, attention_mask, token_type_ids, False,
                                                 output_attentions, output_hidden_states)
            fusion = self.efficientvlm.fuse(text.last_hidden_state, attention_mask, image_embeds, False,
                                            output_attentions, output_hidden_states)
            mlm_logits = self.lm_head(fusion.last_hidden_state)
            fields.update(mlm_logits=mlm_logits, mlm_text_model_output=_requested(text),
                          mlm_fusion_model_output=_requested(fusion))
            if mlm_labels is not None:
                mlm_loss = F.cross_entropy(mlm_logits.flatten(0, 1).float(), mlm_labels.flatten(), ignore_index=-100)
                fields["mlm_loss"] = mlm_loss
                loss = loss + mlm_loss
        if target_bbox is not None and self.bbox_head is None:
            raise ValueError("The batch has region boxes (target_bbox) but the model has no box-regression head: build "
                             "it with config.use_bbox_head=True (or drop the bbox column from the data).")
        if target_bbox is not None:  # the head runs on every row (DDP sees it used); unboxed rows weigh 0
            fused = self.efficientvlm.fuse(
                self.efficientvlm.encode_text(input_ids, attention_mask, token_type_ids).last_hidden_state,
                attention_mask, image_embeds).last_hidden_state
            pred_boxes = self.bbox_head(fused[:, 0]).sigmoid()
            fields["bbox_loss"], fields["giou_loss"] = box_losses(pred_boxes, target_bbox, bbox_mask)
            fields["pred_boxes"] = pred_boxes
            loss = loss + fields["bbox_loss"] + fields["giou_loss"]
        return EfficientVLMPreTrainingOutput(loss=loss, **fields)


class EfficientVLMForNLVR2(EfficientVLMPreTrainedModel):
    """NLVR2: two images and one statement -> true / false.

    The statement is fused with each image separately (shared fusion weights); the two fused ``[CLS]`` vectors are
    concatenated and classified. (The paper duplicates every fusion layer per image instead; sharing keeps the
    pruned structure identical to the other tasks.) ``pixel_values`` has shape ``(batch, 2, 3, H, W)``; ``labels``
    are 0 (false) / 1 (true).
    """

    def __init__(self, config: EfficientVLMConfig):
        super().__init__(config)
        self.efficientvlm = EfficientVLMModel(config)
        hidden = config.text_config.hidden_size
        self.classifier = _classifier(2 * hidden, 2 * hidden, 2)
        self.post_init()

    @output_conventions
    def forward(self, pixel_values=None, input_ids=None, attention_mask=None, token_type_ids=None, labels=None,
                output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs) -> EfficientVLMHeadOutput:
        if pixel_values is None or pixel_values.dim() != 5 or pixel_values.shape[1] != 2:
            shape = None if pixel_values is None else tuple(pixel_values.shape)
            raise ValueError(f"NLVR2 needs pixel_values of shape (batch, 2, 3, H, W) - an image pair per statement; "
                             f"got {shape}. Pass images=[(left, right), ...] to the processor.")
        output_attentions, output_hidden_states = bool(output_attentions), bool(output_hidden_states)
        batch = pixel_values.shape[0]
        vision = self.efficientvlm.encode_image(pixel_values.flatten(0, 1), output_attentions, output_hidden_states)
        text = self.efficientvlm.encode_text(input_ids, attention_mask, token_type_ids, False, output_attentions,
                                             output_hidden_states)
        # pairs ordered (statement 0 left, statement 0 right, statement 1 left, ...)
        text_embeds = text.last_hidden_state.repeat_interleave(2, dim=0)
        mask = None if attention_mask is None else attention_mask.repeat_interleave(2, dim=0)
        fusion = self.efficientvlm.fuse(text_embeds, mask, vision.last_hidden_state, False, output_attentions,
                                        output_hidden_states)
        pooled = fusion.last_hidden_state[:, 0].reshape(batch, -1)
        logits = self.classifier(pooled)
        loss = F.cross_entropy(logits, labels.long()) if labels is not None else None
        return EfficientVLMHeadOutput(loss=loss, logits=logits, vision_model_output=_requested(vision),
                                      text_model_output=_requested(text), fusion_model_output=_requested(fusion))


class EfficientVLMForCaptioning(EfficientVLMPreTrainedModel, EfficientVLMCachedGenerationMixin):
    """Image captioning: the text and fusion layers run as a causal decoder that cross-attends to the image.

    As in the paper, the text layers become causal self-attention layers and the fusion layers add cross-attention
    to the image tokens. ``labels`` are the caption ids with padding (and the prompt, see ``CaptioningCollator``) set
    to -100 (shifted inside); the loss is cross-entropy with ``config.caption_label_smoothing`` (the paper: 0.1).

    ``generate`` encodes the image once and decodes with any of transformers' strategies (greedy, beam search,
    sampling); without ``input_ids`` it starts from ``config.text_config.bos_token_id`` (``[CLS]``), and
    ``processor.caption_inputs(images)`` gives the paper's prompt ``"[CLS] a picture of"``. With the key/value cache
    (``use_cache=True``, the default) each step runs only the new token through the decoder: the self-attention keys
    and values of earlier positions and the image's cross-attention keys and values (computed once per image, shared
    by its beams) come from an ``EncoderDecoderCache``; ``use_cache=False`` recomputes the whole prefix at every step
    and gives the same sequences.

    As in transformers 5 vision-language models, ``get_image_features(pixel_values)`` returns the image tower's
    output and ``forward`` returns it as ``image_outputs``; its ``last_hidden_state`` can be passed back as
    ``image_embeds`` to decode without running the tower again.
    """

    _tied_weights_keys = _TIED_DECODER
    main_input_name = "input_ids"

    def __init__(self, config: EfficientVLMConfig):
        super().__init__(config)
        self.efficientvlm = EfficientVLMModel(config)
        self.lm_head = EfficientVLMLMHead(config)
        self.post_init()
        # The paper's decoding: beam 3, 5-20 tokens (prompt included).
        tc = config.text_config
        self.generation_config = GenerationConfig(
            bos_token_id=tc.bos_token_id, eos_token_id=tc.eos_token_id, pad_token_id=tc.pad_token_id,
            num_beams=3, max_length=20, min_length=5,
        )

    def get_output_embeddings(self):
        return self.lm_head.decoder

    def set_output_embeddings(self, value):
        self.lm_head.decoder = value

    # -- cache layout ----------------------------------------------------------------------------------------------

    def _cached_decoder_layers(self) -> list[nn.Module]:
        """The decoder in decoding order: text layers (self-attention), then fusion layers (self- and
        cross-attention to the image)."""
        base = self.efficientvlm
        return [*base.text_model.encoder.layers, *base.fusion_model.encoder.layers]

    def cache_image(self, image_embeds: torch.Tensor) -> EncoderDecoderCache:
        """A new cache holding the cross-attention keys and values of ``image_embeds`` ``(images, tokens, width)``,
        one row per image.

        ``generate`` builds it once per call; the rows that decode one image (its beams, or its returned sequences,
        consecutive as transformers expands them) share that image's row. Pass it as ``cache=`` (or
        ``past_key_values=`` before transformers 5.24) to ``forward`` or ``generate``; ``image_embeds`` are then not
        needed.
        """
        return self.cache_cross_attention(image_embeds)

    # -- forward ---------------------------------------------------------------------------------------------------

    @output_conventions
    def forward(self, pixel_values=None, input_ids=None, attention_mask=None, labels=None, image_embeds=None,
                cache: Cache | None = None, use_cache: bool | None = None, output_attentions=None,
                output_hidden_states=None, return_dict=None, past_key_values: Cache | None = None,
                **kwargs) -> EfficientVLMCaptioningOutput:
        """Next-token logits of ``input_ids`` given the image (and loss, with ``labels``).

        Args:
            pixel_values, image_embeds: the image (``image_embeds``: already encoded by ``encode_image``); not needed
                when ``cache`` holds the image's keys and values.
            input_ids, attention_mask: ``(batch, seq)``; with a ``cache``, only the tokens after the
                ``cache.get_seq_length()`` positions it holds (0 for a decoder without any self-attention, which caches
                the image alone), and the mask of the whole sequence so far.
            labels: caption ids, -100 where no loss is taken.
            cache: a generation cache (``past_key_values`` before transformers 5.24, also accepted): an
                ``EncoderDecoderCache`` as returned by a previous call or built by ``cache_image``. A plain
                self-attention ``Cache`` is wrapped into one.
            use_cache: return the cache (updated with these positions) as ``output.cache``; default: when one is
                passed. ``True`` without a cache starts a new one.
        """
        cache = self._new_cache(past_key_values if cache is None else cache, use_cache)
        output_attentions, output_hidden_states = bool(output_attentions), bool(output_hidden_states)
        if input_ids is None:
            raise ValueError("input_ids are required: the captioning decoder predicts the next token of a text.")
        base = self.efficientvlm
        image_cached = self._cross_attention_cached(cache)
        vision = None
        if image_embeds is None and not image_cached:
            if pixel_values is None:
                raise ValueError("Pass pixel_values (or precomputed image_embeds).")
            vision = base.encode_image(pixel_values, output_attentions, output_hidden_states)
            image_embeds = vision.last_hidden_state
        if image_embeds is not None and image_embeds.shape[0] != input_ids.shape[0]:
            raise ValueError(f"{image_embeds.shape[0]} images but {input_ids.shape[0]} texts: pass one image per text.")
        past_length = self._cached_length(cache)
        text = base.text_model(input_ids, attention_mask, None, True, output_attentions, output_hidden_states,
                               cache=cache, past_length=past_length)
        fusion = base.fusion_model(text.last_hidden_state, attention_mask, image_embeds, True, output_attentions,
                                   output_hidden_states, cache=cache, past_length=past_length)
        logits = self.lm_head(fusion.last_hidden_state)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100,
                                   label_smoothing=self.config.caption_label_smoothing)
        image_outputs = None
        if vision is not None:  # the vision tower ran in this forward
            image_outputs = BaseModelOutputWithPooling(
                last_hidden_state=vision.last_hidden_state, pooler_output=vision.last_hidden_state[:, 0],
                hidden_states=vision.hidden_states, attentions=vision.attentions)
        return EfficientVLMCaptioningOutput(loss=loss, logits=logits, cache=cache, image_outputs=image_outputs,
                                            vision_model_output=_requested(vision), text_model_output=_requested(text),
                                            fusion_model_output=_requested(fusion))

    # -- generation ------------------------------------------------------------------------------------------------

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, image_embeds=None,
                                      cache: Cache | None = None, past_key_values: Cache | None = None,
                                      use_cache: bool | None = None, **kwargs):
        """The next step's inputs: with a cache, only the positions it does not hold yet (the last token)."""
        cache = past_key_values if cache is None else cache
        inputs = {"attention_mask": attention_mask, "image_embeds": image_embeds}
        if cache is not None and use_cache is not False:
            input_ids = input_ids[:, self._cached_length(cache):]
            inputs.update(cache=cache, use_cache=True)
        inputs["input_ids"] = input_ids
        return inputs

    @torch.no_grad()
    def generate(self, pixel_values=None, input_ids=None, attention_mask=None, image_embeds=None, **generate_kwargs):
        """Caption images (``pixel_values`` or already encoded ``image_embeds``).

        ``input_ids`` is an optional prompt, ``(batch, prompt_len)`` without ``[SEP]``: ``processor.caption_inputs``
        gives the paper's ``"[CLS] a picture of"`` (decode with ``processor.decode_captions``, which strips it). A
        final ``[SEP]`` column, as ``processor(text=...)`` appends, is dropped; any other ``[SEP]`` is refused.

        The image is encoded once per call. With ``use_cache`` (the default), its cross-attention keys and values
        are computed once per image too, in a cache (``cache_image``) that ``generate`` then extends; pass
        ``use_cache=False`` to recompute the whole prefix at every step instead (same sequences, slower).
        """
        if image_embeds is None:
            if pixel_values is None:
                raise ValueError("generate() needs pixel_values (or image_embeds).")
            image_embeds = self.efficientvlm.encode_image(pixel_values).last_hidden_state
        batch = image_embeds.shape[0]
        tc = self.config.text_config
        if input_ids is None:
            if tc.bos_token_id is None:
                raise ValueError("generate() starts from config.text_config.bos_token_id, which is None: set it to "
                                 "the tokenizer's [CLS] id, or pass a prompt as input_ids.")
            input_ids = torch.full((batch, 1), tc.bos_token_id, dtype=torch.long, device=image_embeds.device)
        elif tc.eos_token_id is not None and input_ids.shape[1] > 1 and (input_ids[:, -1] == tc.eos_token_id).all():
            input_ids = input_ids[:, :-1]  # the tokenizer's final [SEP]: the prompt goes on
            attention_mask = None if attention_mask is None else attention_mask[:, :-1]
        if tc.eos_token_id is not None and (input_ids == tc.eos_token_id).any():
            raise ValueError(
                f"The prompt (input_ids) contains the end token [SEP] (eos_token_id={tc.eos_token_id}) before its end: "
                "generation would continue after the caption's end. Build prompts with processor.caption_inputs(...) "
                "(or tokenize without the end token), one prompt length per batch."
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        generate_kwargs.setdefault("eos_token_id", tc.eos_token_id)
        generate_kwargs.setdefault("pad_token_id", tc.pad_token_id)
        # with the cache (the default) image_embeds becomes None: the cache holds all the decoder reads from the image
        image_embeds = self._cache_for_generate(generate_kwargs, image_embeds)
        return super().generate(input_ids=input_ids, attention_mask=attention_mask, image_embeds=image_embeds,
                                **generate_kwargs)


__all__ = [
    "EfficientVLMPreTrainedModel",
    "EfficientVLMModel",
    "EfficientVLMForPreTraining",
    "EfficientVLMForVisualQuestionAnswering",
    "EfficientVLMForImageTextRetrieval",
    "EfficientVLMForNLVR2",
    "EfficientVLMForCaptioning",
    "EfficientVLMForGenerativeVQA",
    "EfficientVLMModelOutput",
    "EfficientVLMEncoderOutput",
    "EfficientVLMHeadOutput",
    "EfficientVLMRetrievalOutput",
    "EfficientVLMPreTrainingOutput",
    "EfficientVLMCaptioningOutput",
    "output_conventions",
    "EfficientVLMGenerativeVQAOutput",
]
