"""Convert the official X-VLM_clip / EfficientVLM checkpoints into efficientvlm checkpoints.

The official checkpoints are PyTorch state dicts (possibly wrapped as ``{"model": state_dict}``) with these names
(see ``official-checkpoint-keys.md``):

* ``vision_encoder.*``: a CLIP ViT with ``patch_embed``, ``pos_embed``, ``class_embedding``, ``pre_layrnorm``,
  ``encoder.layers.N.*`` (CLIP names) and ``post_layernorm``;
* ``text_encoder.*`` (fine-tuning) or ``text_encoder.bert.*`` plus an MLM head ``text_encoder.cls.*`` (pre-training):
  one BERT stack whose first ``fusion_layer`` layers (default: half) are the text encoder and whose remaining layers,
  the only ones with ``crossattention.*``, are the fusion encoder;
* ``vision_proj``, ``text_proj``, ``temp`` (ITC) and ``itm_head.{0,1,3}`` (ITM);
* ``bbox_head.{0,1,3}`` (X-VLM's box regression, in checkpoints pre-trained with region data): placed into the
  pre-training head's ``bbox_head``, which the converted config then has (``use_bbox_head=True``); a checkpoint
  without one converts into a pre-training head without it (the default).

Every shape of the efficientvlm config is read from the tensors, so a checkpoint whose heads or FFN neurons were
physically removed (smaller q/k/v/out, fc1/fc2, intermediate/output tensors; missing tensors for a removed
sub-block) converts into a heterogeneous config: heads per layer = rows of the query projection / ``head_dim``, FFN
width = rows of the first FFN matrix, 0 where the sub-block's weights are missing.

Nothing is dropped silently. Each official key ends up in one of three lists of the [`ConversionReport`]:
``placed`` (copied into the model), ``skipped`` (known not to be weights of the computed function: ``position_ids``
buffers, the duplicate MLM decoder bias, LayerNorms of removed sub-blocks, which the official pruning code skips
too) and ``unplaced`` (could not be placed, with the reason: e.g. the official generative VQA decoder
``text_decoder.*`` and the NLVR2 ``cls_head.*`` belong to architectures this library does not implement; the
``bbox_head.*`` has a place in the pre-training head only). Model weights that no official tensor filled are listed as ``missing``. With
``strict=True`` any unplaced or missing key is an error.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..models.configuration_efficientvlm import EfficientVLMConfig
from ..models.image_processing_efficientvlm import EfficientVLMImageProcessor
from ..models.modeling_efficientvlm import (
    EfficientVLMForImageTextRetrieval,
    EfficientVLMForPreTraining,
    EfficientVLMModel,
    bert_layer_state_dict,
)
from ..models.processing_efficientvlm import DEFAULT_MAX_TEXT_LENGTH, EfficientVLMProcessor

HEAD_CLASSES = {
    "model": EfficientVLMModel,
    "pretraining": EfficientVLMForPreTraining,
    "retrieval": EfficientVLMForImageTextRetrieval,
}
"""Heads a converted checkpoint can get: ``auto`` picks ``pretraining`` when the MLM head ``text_encoder.cls.*`` is
present, ``retrieval`` when only the ITC / ITM heads are, else ``model``."""

_VISION = "vision_encoder."
_VISION_TOP = {
    "class_embedding": "vision_model.embeddings.class_embedding",
    "patch_embed.weight": "vision_model.embeddings.patch_embedding.weight",
    "pos_embed.weight": "vision_model.embeddings.position_embedding.weight",
    "pre_layrnorm.weight": "vision_model.pre_layrnorm.weight",
    "pre_layrnorm.bias": "vision_model.pre_layrnorm.bias",
    "post_layernorm.weight": "vision_model.post_layernorm.weight",
    "post_layernorm.bias": "vision_model.post_layernorm.bias",
}
_VISION_LAYER_MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                         "layer_norm1", "mlp.fc1", "mlp.fc2", "layer_norm2")
_TEXT_EMBEDDINGS = {
    "embeddings.word_embeddings.weight": "text_model.embeddings.word_embeddings.weight",
    "embeddings.position_embeddings.weight": "text_model.embeddings.position_embeddings.weight",
    "embeddings.token_type_embeddings.weight": "text_model.embeddings.token_type_embeddings.weight",
    "embeddings.LayerNorm.weight": "text_model.embeddings.layer_norm.weight",
    "embeddings.LayerNorm.bias": "text_model.embeddings.layer_norm.bias",
}
_MLM = "text_encoder.cls.predictions."
_MLM_HEAD = {
    "transform.dense.weight": "lm_head.dense.weight",
    "transform.dense.bias": "lm_head.dense.bias",
    "transform.LayerNorm.weight": "lm_head.layer_norm.weight",
    "transform.LayerNorm.bias": "lm_head.layer_norm.bias",
    "decoder.weight": "lm_head.decoder.weight",
    "bias": "lm_head.decoder.bias",
}
_ITC_ITM = re.compile(r"^(vision_proj|text_proj|itm_head\.[013])\.(weight|bias)$|^temp$")
_BERT_SPECIAL_TOKENS = {"pad_token_id": 0, "bos_token_id": 101, "eos_token_id": 102, "mask_token_id": 103}
_NOT_PLACEABLE = {  # official heads of architectures this library does not implement
    "text_decoder.": "the official generative VQA answer decoder; EfficientVLMForVisualQuestionAnswering is a "
                     "classifier over an answer vocabulary, a different architecture",
    "cls_head.": "the official NLVR2 head, which sits on fusion layers duplicated per image; EfficientVLMForNLVR2 "
                 "shares its fusion layers between the two images, a different architecture",
}
_BBOX = re.compile(r"^bbox_head\.[013]\.(weight|bias)$")


class ConversionError(ValueError):
    """The checkpoint cannot be converted (or not completely, with ``strict=True``); ``report`` says why."""

    def __init__(self, message: str, report: ConversionReport | None = None):
        super().__init__(message)
        self.report = report


@dataclass
class ConversionReport:
    """Where every official tensor went.

    Attributes:
        head: the efficientvlm class of the converted model.
        placed: official key -> efficientvlm key.
        skipped: official key -> why it is not a weight of the computed function.
        unplaced: official key -> why it could not be placed.
        missing: efficientvlm weights no official tensor filled (left at their initialisation).
        notes: other observations (vocabulary size, tied decoder, fusion split).
    """

    head: str
    placed: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    unplaced: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Whether every official tensor was placed or knowingly skipped and every model weight was filled."""
        return not self.unplaced and not self.missing

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        lines = [f"Converted into {self.head}: {len(self.placed)} tensors placed, {len(self.skipped)} skipped, "
                 f"{len(self.unplaced)} not placed, {len(self.missing)} model weights missing."]
        lines += [f"  note: {note}" for note in self.notes]
        lines += [f"  skipped   {key}: {why}" for key, why in sorted(self.skipped.items())]
        lines += [f"  NOT PLACED {key}: {why}" for key, why in sorted(self.unplaced.items())]
        lines += [f"  MISSING   {key}: left at its random initialisation" for key in self.missing]
        return "\n".join(lines)


@dataclass
class ConversionResult:
    """A converted model (in eval mode), its processor and the report."""

    model: Any
    processor: EfficientVLMProcessor
    report: ConversionReport

    def save_pretrained(self, output_dir: str | os.PathLike) -> None:
        """Write the model, the processor and ``conversion_report.json`` to ``output_dir``."""
        self.model.save_pretrained(output_dir)
        self.processor.save_pretrained(output_dir)
        (Path(output_dir) / "conversion_report.json").write_text(
            json.dumps(self.report.to_dict(), indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------------
# Reading the checkpoint
# ---------------------------------------------------------------------------------------------------------------


def load_official_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load an official checkpoint with ``torch.load(weights_only=True)`` and unwrap ``{"model": ...}``."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return unwrap_state_dict(checkpoint)


def unwrap_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The state dict inside ``{"model": ...}`` / ``{"state_dict": ...}``, without a DDP ``module.`` prefix."""
    for wrapper in ("model", "state_dict", "module"):
        inner = checkpoint.get(wrapper) if isinstance(checkpoint, Mapping) else None
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            checkpoint = inner
            break
    if not isinstance(checkpoint, Mapping) or not checkpoint:
        raise ConversionError("The checkpoint is not a state dict (or {'model': state_dict}).")
    not_tensors = sorted(k for k, v in checkpoint.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise ConversionError(f"The checkpoint has entries that are not tensors: {not_tensors[:10]}")
    state = dict(checkpoint)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def image_size_from_positions(num_positions: int, patch_size: int) -> int:
    """Image side from the rows of the position-embedding table: 197 -> 224, 577 -> 384, 901 -> 480 (patch 16)."""
    grid = math.isqrt(num_positions - 1)
    if grid * grid != num_positions - 1:
        raise ConversionError(f"pos_embed has {num_positions} rows, which is not 1 + a square number of patches.")
    return grid * patch_size


def _layer_indices(state: Mapping[str, torch.Tensor], prefix: str) -> list[int]:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for key in state if (m := pattern.match(key))})


def _heads(state, key: str, head_dim: int, where: str) -> int:
    if key not in state:
        return 0
    rows = state[key].shape[0]
    if rows % head_dim:
        raise ConversionError(f"{where}: {key} has {rows} rows, not a multiple of head_dim={head_dim}; pass the "
                              "head width of the checkpoint (head_dim).")
    return rows // head_dim


def _compact(values: list[int]) -> int | list[int]:
    """An int when every layer has the same size, else the per-layer list."""
    return values[0] if values and all(v == values[0] for v in values) else values


# ---------------------------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------------------------


def _infer_config(state: Mapping[str, torch.Tensor], text_prefix: str, fusion_layer: int | None, head_dim: int,
                  special_tokens: dict[str, int], report: ConversionReport) -> tuple[dict, int, dict]:
    """Config kwargs of ``EfficientVLMConfig``, the fusion split and the per-layer sizes, from tensor shapes."""
    def need(key: str) -> torch.Tensor:
        if key not in state:
            raise ConversionError(f"The checkpoint has no {key}: it is not an official X-VLM_clip / EfficientVLM "
                                  "checkpoint with a CLIP vision encoder.", report)
        return state[key]

    # vision
    class_embedding = need(_VISION + "class_embedding")
    patch = need(_VISION + "patch_embed.weight")
    positions = need(_VISION + "pos_embed.weight")
    hidden = class_embedding.shape[0]
    patch_size = patch.shape[-1]
    vision_layers = _layer_indices(state, _VISION + "encoder.layers.")
    vision_heads, vision_ffn = [], []
    for i in range(max(vision_layers, default=-1) + 1):
        base = f"{_VISION}encoder.layers.{i}."
        vision_heads.append(_heads(state, base + "self_attn.q_proj.weight", head_dim, f"vision layer {i}"))
        vision_ffn.append(state[base + "mlp.fc1.weight"].shape[0] if base + "mlp.fc1.weight" in state else 0)
    vision_config = {
        "hidden_size": hidden, "num_hidden_layers": len(vision_heads), "num_attention_heads": _compact(vision_heads),
        "head_dim": head_dim, "intermediate_size": _compact(vision_ffn),
        "image_size": image_size_from_positions(positions.shape[0], patch_size), "patch_size": patch_size,
        "num_channels": patch.shape[1],
    }

    # text + fusion: one BERT stack split at fusion_layer
    words = need(text_prefix + "embeddings.word_embeddings.weight")
    text_hidden = words.shape[1]
    bert_layers = _layer_indices(state, text_prefix + "encoder.layer.")
    total = max(bert_layers, default=-1) + 1
    if fusion_layer is None:
        fusion_layer = total // 2
        report.notes.append(f"fusion_layer = {fusion_layer}: BERT layers 0..{fusion_layer - 1} are the text encoder, "
                            f"{fusion_layer}..{total - 1} the fusion encoder (the official code's L/2 split).")
    if not 0 <= fusion_layer <= total:
        raise ConversionError(f"fusion_layer={fusion_layer} is outside the {total} BERT layers.", report)
    heads, cross_heads, ffn = [], [], []
    for i in range(total):
        base = f"{text_prefix}encoder.layer.{i}."
        stack = "text" if i < fusion_layer else "fusion"
        heads.append(_heads(state, base + "attention.self.query.weight", head_dim, f"{stack} BERT layer {i}"))
        cross_heads.append(_heads(state, base + "crossattention.self.query.weight", head_dim, f"BERT layer {i}"))
        ffn.append(state[base + "intermediate.dense.weight"].shape[0] if base + "intermediate.dense.weight" in state
                   else 0)
    text_config = {
        "vocab_size": words.shape[0], "hidden_size": text_hidden, "num_hidden_layers": fusion_layer,
        "num_attention_heads": _compact(heads[:fusion_layer]), "head_dim": head_dim,
        "intermediate_size": _compact(ffn[:fusion_layer]),
        "max_position_embeddings": need(text_prefix + "embeddings.position_embeddings.weight").shape[0],
        "type_vocab_size": need(text_prefix + "embeddings.token_type_embeddings.weight").shape[0],
        **special_tokens,
    }
    fusion_config = {
        "hidden_size": text_hidden, "num_hidden_layers": total - fusion_layer,
        "num_attention_heads": _compact(heads[fusion_layer:]),
        "num_cross_attention_heads": _compact(cross_heads[fusion_layer:]), "head_dim": head_dim,
        "intermediate_size": _compact(ffn[fusion_layer:]),
    }
    config = {"vision_config": vision_config, "text_config": text_config, "fusion_config": fusion_config}
    if "vision_proj.weight" in state:
        config["projection_dim"] = state["vision_proj.weight"].shape[0]
    if "temp" in state:
        config["itc_temperature"] = float(state["temp"])
    sizes = {"vision_heads": vision_heads, "vision_ffn": vision_ffn, "heads": heads, "cross_heads": cross_heads,
             "ffn": ffn}
    return config, fusion_layer, sizes


def _map_keys(state: Mapping[str, torch.Tensor], text_prefix: str, fusion_layer: int, sizes: dict, head: str,
              report: ConversionReport) -> dict[str, torch.Tensor]:
    """Official key -> efficientvlm key (relative to the converted class), filling the report."""
    base = "" if head == "model" else "efficientvlm."
    with_heads = head != "model"
    mapped: dict[str, torch.Tensor] = {}

    def place(key: str, target: str) -> None:
        mapped[target] = state[key]
        report.placed[key] = target

    for key in state:
        if key.endswith("position_ids"):
            report.skipped[key] = "position-index buffer, not a weight"
        elif key.startswith(_VISION):
            rest = key[len(_VISION):]
            layer = re.match(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", rest)
            if rest in _VISION_TOP:
                place(key, base + _VISION_TOP[rest])
            elif layer and layer.group(2) in _VISION_LAYER_MODULES:
                i, module = int(layer.group(1)), layer.group(2)
                removed = (sizes["vision_heads"][i] == 0 if module in ("self_attn.q_proj", "self_attn.k_proj",
                           "self_attn.v_proj", "self_attn.out_proj", "layer_norm1")
                           else sizes["vision_ffn"][i] == 0)
                if removed and module.startswith("layer_norm"):
                    report.skipped[key] = "LayerNorm of a removed sub-block (unused by the official forward too)"
                elif removed:
                    report.unplaced[key] = f"vision layer {i}: part of a sub-block with no heads / neurons left"
                else:
                    place(key, f"{base}vision_model.{rest}")
            else:
                report.unplaced[key] = "unknown vision-encoder tensor"
        elif key.startswith(text_prefix + "embeddings."):
            rest = key[len(text_prefix):]
            if rest in _TEXT_EMBEDDINGS:
                place(key, base + _TEXT_EMBEDDINGS[rest])
            else:
                report.unplaced[key] = "unknown text-embedding tensor"
        elif key.startswith(text_prefix + "encoder.layer."):
            i = int(key[len(text_prefix + "encoder.layer."):].split(".")[0])
            ours = bert_layer_state_dict({key: state[key]}, f"{text_prefix}encoder.layer.{i}.")
            if not ours:
                report.unplaced[key] = f"BERT layer {i}: unknown tensor"
                continue
            (name,) = ours
            stack, j = ("text", i) if i < fusion_layer else ("fusion", i - fusion_layer)
            block = name.split(".")[0]
            size = {"self_attn": sizes["heads"], "self_attn_layer_norm": sizes["heads"],
                    "cross_attn": sizes["cross_heads"], "cross_attn_layer_norm": sizes["cross_heads"],
                    "mlp": sizes["ffn"], "final_layer_norm": sizes["ffn"]}[block][i]
            if stack == "text" and block.startswith("cross_attn"):
                report.unplaced[key] = (f"BERT layer {i} is a text layer (fusion_layer={fusion_layer}) but has "
                                        "cross-attention; check fusion_layer")
            elif size == 0 and block.endswith("layer_norm"):
                report.skipped[key] = "LayerNorm of a removed sub-block (unused by the official forward too)"
            elif size == 0:
                report.unplaced[key] = f"BERT layer {i}: part of a sub-block with no heads / neurons left"
            else:
                place(key, f"{base}{stack}_model.encoder.layers.{j}.{name}")
        elif key.startswith(_MLM):
            rest = key[len(_MLM):]
            if head != "pretraining":
                report.unplaced[key] = f"MLM head; only the pretraining head has one (converting into {head})"
            elif rest == "decoder.bias" and _MLM + "bias" in state and torch.equal(state[key], state[_MLM + "bias"]):
                report.skipped[key] = f"the same tensor as {_MLM}bias (tied in BERT)"
            elif rest == "decoder.bias" and _MLM + "bias" not in state:
                place(key, "lm_head.decoder.bias")
            elif rest in _MLM_HEAD:
                place(key, _MLM_HEAD[rest])
            else:
                report.unplaced[key] = "unknown MLM-head tensor"
        elif _BBOX.match(key):
            if head == "pretraining":
                place(key, key)
            else:
                report.unplaced[key] = ("the pre-training box-regression head (region data); only the pretraining "
                                        f"head has one (converting into {head})")
        elif _ITC_ITM.match(key):
            if with_heads:
                place(key, key)
            else:
                report.unplaced[key] = "ITC / ITM head; convert with head='retrieval' or 'pretraining' to keep it"
        else:
            prefix = next((p for p in _NOT_PLACEABLE if key.startswith(p)), None)
            report.unplaced[key] = _NOT_PLACEABLE[prefix] if prefix else "unknown tensor"
    return mapped


def convert_official_state_dict(state_dict: Mapping[str, torch.Tensor], *, head: str = "auto",
                                fusion_layer: int | None = None, head_dim: int = 64,
                                special_tokens: Mapping[str, int] | None = None,
                                config_overrides: Mapping[str, Any] | None = None) -> tuple[Any, ConversionReport]:
    """Convert an official state dict into an efficientvlm model (eval mode) and a report; no processor.

    Args:
        state_dict: official key names (already unwrapped).
        head: ``auto``, ``model``, ``pretraining`` or ``retrieval`` (see ``HEAD_CLASSES``).
        fusion_layer: number of BERT layers of the text encoder; the rest are fusion layers (default: half).
        head_dim: width of one attention head; heads per layer = query rows / head_dim.
        special_tokens: ``pad_token_id``, ``bos_token_id``, ``eos_token_id``, ``mask_token_id`` of the tokenizer
            (default: bert-base-uncased's [PAD], [CLS], [SEP], [MASK], where the vocabulary has them).
        config_overrides: extra top-level config fields (e.g. ``id2label``).
    """
    state = unwrap_state_dict(state_dict)
    has_mlm = any(key.startswith("text_encoder.cls.") for key in state)
    has_itc_itm = any(_ITC_ITM.match(key) for key in state)
    if head == "auto":
        head = "pretraining" if has_mlm else "retrieval" if has_itc_itm else "model"
    if head not in HEAD_CLASSES:
        raise ConversionError(f"Unknown head {head!r}; choose 'auto' or one of {sorted(HEAD_CLASSES)}.")
    model_class = HEAD_CLASSES[head]
    report = ConversionReport(head=model_class.__name__)
    text_prefix = "text_encoder.bert." if any(k.startswith("text_encoder.bert.") for k in state) else "text_encoder."

    config_kwargs, fusion_layer, sizes = _infer_config(state, text_prefix, fusion_layer, head_dim,
                                                      dict(special_tokens or {}), report)
    if special_tokens is None:  # bert-base-uncased's ids where the vocabulary has them
        vocab_size = config_kwargs["text_config"]["vocab_size"]
        for name, bert_id in _BERT_SPECIAL_TOKENS.items():
            config_kwargs["text_config"][name] = bert_id if bert_id < vocab_size else None
    if head == "pretraining":
        decoder = state.get(_MLM + "decoder.weight")
        words = state.get(text_prefix + "embeddings.word_embeddings.weight")
        tied = decoder is None or (words is not None and torch.equal(decoder, words))
        config_kwargs["tie_word_embeddings"] = tied
        report.notes.append("MLM decoder tied to the word embeddings" if tied
                            else "MLM decoder differs from the word embeddings: kept untied")
    if head == "pretraining" and any(_BBOX.match(key) for key in state):
        config_kwargs["use_bbox_head"] = True  # X-VLM pre-trained with region data: keep its box head
    config = EfficientVLMConfig(**config_kwargs, **dict(config_overrides or {}))
    mapped = _map_keys(state, text_prefix, fusion_layer, sizes, head, report)

    model = model_class(config)
    expected = model.state_dict()
    for target, tensor in mapped.items():
        if target not in expected:
            raise ConversionError(f"Internal mapping error: {target} is not a weight of {model_class.__name__}.",
                                  report)
        if tensor.shape != expected[target].shape:
            source = next(k for k, v in report.placed.items() if v == target)
            raise ConversionError(
                f"{source} has shape {list(tensor.shape)} but the layer sizes read from the checkpoint make "
                f"{target} {list(expected[target].shape)}: the tensors of one block disagree (head_dim={head_dim}?).",
                report)
    with torch.no_grad():
        result = model.load_state_dict(mapped, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or {}) if config.tie_word_embeddings else set()
    report.missing = sorted(k for k in result.missing_keys if k not in tied)
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.eval(), report


def convert_official_checkpoint(checkpoint: str | os.PathLike | Mapping[str, torch.Tensor],
                                vocab_file: str | os.PathLike, *, head: str = "auto", fusion_layer: int | None = None,
                                head_dim: int = 64, strict: bool = False,
                                max_text_length: int = DEFAULT_MAX_TEXT_LENGTH) -> ConversionResult:
    """Convert an official checkpoint (file or state dict) and build its processor.

    Args:
        checkpoint: path of the ``.pth`` (loaded with ``torch.load(weights_only=True)``) or the state dict.
        vocab_file: the ``vocab.txt`` of bert-base-uncased (the official tokenizer).
        head, fusion_layer, head_dim: see [`convert_official_state_dict`].
        strict: raise a [`ConversionError`] when any tensor is not placed or any model weight is not filled.
        max_text_length: ``model_max_length`` of the tokenizer (the paper: 40).

    Returns:
        A [`ConversionResult`]; ``result.save_pretrained(folder)`` writes a loadable efficientvlm checkpoint.
    """
    from transformers import BertTokenizer

    vocab_file = Path(vocab_file)
    if not vocab_file.is_file():
        raise ConversionError(f"vocab file {vocab_file} not found (bert-base-uncased's vocab.txt).")
    # transformers 5 ignores BertTokenizer(vocab_file=...); the vocabulary has to go through `vocab=`.
    tokenizer = BertTokenizer(vocab=str(vocab_file), do_lower_case=True, model_max_length=max_text_length)
    special_tokens = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.cls_token_id,
                      "eos_token_id": tokenizer.sep_token_id, "mask_token_id": tokenizer.mask_token_id}
    state = checkpoint if isinstance(checkpoint, Mapping) else load_official_state_dict(checkpoint)
    model, report = convert_official_state_dict(state, head=head, fusion_layer=fusion_layer, head_dim=head_dim,
                                                special_tokens=special_tokens)
    if len(tokenizer) != model.config.text_config.vocab_size:
        report.notes.append(f"the vocabulary has {len(tokenizer)} tokens but the word embeddings have "
                            f"{model.config.text_config.vocab_size} rows")
    size = model.config.vision_config.image_size
    processor = EfficientVLMProcessor(EfficientVLMImageProcessor(size={"height": size, "width": size}), tokenizer)
    if strict and not report.complete:
        raise ConversionError(f"The conversion is incomplete (strict):\n{report}", report)
    return ConversionResult(model=model, processor=processor, report=report)


__all__ = [
    "ConversionError",
    "ConversionReport",
    "ConversionResult",
    "HEAD_CLASSES",
    "convert_official_checkpoint",
    "convert_official_state_dict",
    "image_size_from_positions",
    "load_official_state_dict",
    "unwrap_state_dict",
]
