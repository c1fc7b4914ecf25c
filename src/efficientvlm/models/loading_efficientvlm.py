"""Checkpoint plumbing of the EfficientVLM models: loading, initialising from CLIP and BERT, and what is said when a
checkpoint does not fit.

``modeling_efficientvlm.py`` tells the model; this module holds what its ``from_pretrained`` and
``from_vision_text_pretrained`` do around transformers' loading:

* ``load_pretrained``: safetensors only (pickled weights are refused, naming the files and the conversion), int8
  exports refused, a truncated or corrupt weights file named, a config that does not fit its weights explained tensor
  by tensor (``mismatch_message``: the config field that sets each shape, and the fix), and the tensors initialised at
  random instead of loaded remembered (``weights_not_loaded``) and warned about, naming the head;
* ``init_from_vision_text``: a model whose vision tower is a CLIP checkpoint's and whose text and fusion layers are a
  BERT checkpoint's (``bert_layer_state_dict`` maps a ``BertLayer``'s keys to ours).

It is a sibling of the modeling file, not part of ``efficientvlm.hub`` (where the conversion of official X-VLM
checkpoints lives, ``hub/convert.py``), because these checks run on every loading path, also as Hub remote code for
users without the library: like the modeling file it imports only torch, transformers and its siblings.
"""

from __future__ import annotations

import contextlib
import json
import os

import torch
from transformers import PreTrainedModel
from transformers.utils import logging

from .configuration_efficientvlm import EfficientVLMConfig, EfficientVLMFusionConfig

logger = logging.get_logger(__name__)


# ---------------------------------------------------------------------------------------------------------------
# from_pretrained
# ---------------------------------------------------------------------------------------------------------------


def load_pretrained(cls, load, pretrained_model_name_or_path, *model_args, **kwargs):
    """``cls.from_pretrained``: ``load`` (transformers' ``PreTrainedModel.from_pretrained`` bound to ``cls``) with the
    checks and messages of the module docstring. Returns the model, or ``(model, loading_info)`` with
    ``output_loading_info=True``.

    Raises:
        ValueError: ``fusion_config=`` (a kernel-fusion request, see ``_fusion_encoder_is_not_a_kernel_fusion``);
            pickled weights only; an int8 export; a corrupt safetensors file; a checkpoint that does not fit its
            config (every tensor, the config field setting its shape, and the fix).
    """
    path = pretrained_model_name_or_path
    if isinstance(kwargs.get("fusion_config"), dict):
        raise ValueError(
            "from_pretrained(fusion_config=...) requests transformers kernel fusions, which EfficientVLM does not "
            "support: its config.fusion_config describes the fusion encoder. Change encoder sizes through the "
            "config instead."
        )
    if kwargs.get("use_safetensors") is False:
        raise ValueError(_pickled_weights_message(path))
    _refuse_int8_export(path)
    kwargs["use_safetensors"] = True  # never fall back to pickled weights
    want_info = kwargs.pop("output_loading_info", False)
    with _fusion_encoder_is_not_a_kernel_fusion():
        try:
            model, info = load(path, *model_args, output_loading_info=True, **kwargs)
        except RuntimeError as error:
            if "ignore_mismatched_sizes" not in str(error):
                if _is_safetensors_error(error):
                    raise ValueError(_corrupt_weights_message(path, error)) from error
                raise
            model, info = load(path, *model_args, output_loading_info=True,
                               **{**kwargs, "ignore_mismatched_sizes": True})
            raise ValueError(mismatch_message(path, model, info)) from error
        except OSError as error:
            if not _is_missing_safetensors(error):
                raise
            raise ValueError(_pickled_weights_message(path)) from error
        except Exception as error:
            if not _is_safetensors_error(error):
                raise
            raise ValueError(_corrupt_weights_message(path, error)) from error
    if _layer_keys(info, model):
        raise ValueError(mismatch_message(path, model, info))
    remember_weights_not_loaded(model, info, path)
    _warn_weights_not_loaded(model, path)
    return (model, info) if want_info else model


@contextlib.contextmanager
def _fusion_encoder_is_not_a_kernel_fusion():
    """While loading: transformers 5 reads any ``config.fusion_config`` as a request for runtime kernel fusions
    (``transformers.fusion_mapping.register_fusion_patches``), which EfficientVLM's ``fusion_config`` - the fusion
    *encoder*, a public config field since the first release - is not.

    transformers offers no supported way to say so: ``from_pretrained`` reads the attribute by name for every config
    before the model is built, and its ``fusion_config=`` argument would replace the encoder's sub-config. The one
    alternative, renaming the field, would break every saved ``config.json`` and the public ``config.fusion_config``.
    So ``register_fusion_patches`` is wrapped for the duration of the call, passing on every request except this
    encoder's sub-config (compared by ``model_type``: as Hub remote code, transformers imports
    ``configuration_efficientvlm`` twice, so the config's class may be a twin of ``EfficientVLMFusionConfig``). On
    transformers versions without kernel fusions nothing is wrapped.
    """
    try:
        from transformers import fusion_mapping
    except ImportError:  # transformers before kernel fusions
        fusion_mapping = None
    original = getattr(fusion_mapping, "register_fusion_patches", None)
    if original is None:
        yield
        return

    def register_fusion_patches(model_class, config, fusion_config=None):
        if getattr(fusion_config, "model_type", None) == EfficientVLMFusionConfig.model_type:
            return None
        return original(model_class, config, fusion_config)

    fusion_mapping.register_fusion_patches = register_fusion_patches
    try:
        yield
    finally:
        fusion_mapping.register_fusion_patches = original


# ---------------------------------------------------------------------------------------------------------------
# Weights that loading did not fill
# ---------------------------------------------------------------------------------------------------------------


def remember_weights_not_loaded(model, info: dict, source) -> None:
    """Keep on ``model`` a sample of every tensor that loading initialised instead of reading it from the checkpoint
    (missing, or re-initialised for another shape with ``ignore_mismatched_sizes=True``); see
    ``weights_not_loaded``."""
    names = set(info.get("missing_keys") or ()) | {entry[0] if isinstance(entry, tuple) else entry
                                                    for entry in info.get("mismatched_keys") or ()}
    tensors = model.state_dict(keep_vars=True)
    model._initialised_at_load = {name: _value_sample(tensors[name]) for name in sorted(names)
                                  if name in tensors and tensors[name].device.type != "meta"}
    model._loaded_from = None if source is None else str(source)


def weights_not_loaded(model) -> list[str]:
    """The tensors remembered by ``remember_weights_not_loaded`` that still hold the values they were initialised
    with (64 values of each, compared in the tensor's current dtype)."""
    initialised = getattr(model, "_initialised_at_load", None) or {}
    tensors = model.state_dict(keep_vars=True)
    untrained = []
    for name, sample in initialised.items():
        if name in tensors:
            now = _value_sample(tensors[name], as_float=False)
            if torch.equal(now, sample.to(now.dtype)):
                untrained.append(name)
    return untrained


# ---------------------------------------------------------------------------------------------------------------
# from_vision_text_pretrained: a CLIP vision tower, BERT text and fusion layers
# ---------------------------------------------------------------------------------------------------------------


def init_from_vision_text(cls, vision_name_or_path: str, text_name_or_path: str, text_layers: int | None = None,
                          fusion_layers: int | None = None, image_size: int | None = None,
                          config_kwargs: dict | None = None, **loading_kwargs):
    """``cls.from_vision_text_pretrained`` (see there for the arguments)."""
    from transformers import BertModel, CLIPVisionModel

    vision = CLIPVisionModel.from_pretrained(vision_name_or_path, **loading_kwargs)
    text = BertModel.from_pretrained(text_name_or_path, add_pooling_layer=False, **loading_kwargs)
    vcfg, tcfg = vision.config, text.config
    total = tcfg.num_hidden_layers
    text_layers = total // 2 if text_layers is None else text_layers
    fusion_layers = total - text_layers if fusion_layers is None else fusion_layers
    if text_layers < 0 or fusion_layers < 0 or text_layers + fusion_layers > total:
        raise ValueError(
            f"text_layers={text_layers} + fusion_layers={fusion_layers} must not exceed the {total} layers of "
            f"{text_name_or_path!r}."
        )
    bert_shared = {
        "hidden_size": tcfg.hidden_size, "num_attention_heads": tcfg.num_attention_heads,
        "head_dim": tcfg.hidden_size // tcfg.num_attention_heads, "intermediate_size": tcfg.intermediate_size,
        "hidden_act": tcfg.hidden_act, "hidden_dropout_prob": tcfg.hidden_dropout_prob,
        "attention_probs_dropout_prob": tcfg.attention_probs_dropout_prob, "layer_norm_eps": tcfg.layer_norm_eps,
    }
    special = _bert_special_tokens(text_name_or_path, tcfg, loading_kwargs)
    config_kwargs = dict(config_kwargs or {})
    config = EfficientVLMConfig(
        vision_config={
            "hidden_size": vcfg.hidden_size, "num_hidden_layers": vcfg.num_hidden_layers,
            "num_attention_heads": vcfg.num_attention_heads,
            "head_dim": vcfg.hidden_size // vcfg.num_attention_heads, "intermediate_size": vcfg.intermediate_size,
            "hidden_act": vcfg.hidden_act, "image_size": vcfg.image_size, "patch_size": vcfg.patch_size,
            "num_channels": vcfg.num_channels, "layer_norm_eps": vcfg.layer_norm_eps,
            "attention_dropout": vcfg.attention_dropout,
        },
        text_config={
            **bert_shared, **special, "vocab_size": tcfg.vocab_size, "num_hidden_layers": text_layers,
            "max_position_embeddings": tcfg.max_position_embeddings, "type_vocab_size": tcfg.type_vocab_size,
            **config_kwargs.pop("text_config", {}),
        },
        fusion_config={
            **bert_shared, "num_hidden_layers": fusion_layers,
            "num_cross_attention_heads": tcfg.num_attention_heads, **config_kwargs.pop("fusion_config", {}),
        },
        **config_kwargs,
    )
    model = cls(config)
    base = model.base_model
    clip_tower = getattr(vision, "vision_model", vision)  # transformers 5 flattened CLIPVisionModel
    missing = base.vision_model.load_state_dict(clip_tower.state_dict(), strict=False)
    unexpected = [k for k in missing.unexpected_keys if not k.endswith("position_ids")]
    if missing.missing_keys or unexpected:
        raise ValueError(f"CLIP vision weights do not fit: missing {missing.missing_keys}, unexpected {unexpected}")
    text_state = text.state_dict()
    base.text_model.embeddings.load_state_dict(
        {k.replace("embeddings.LayerNorm", "embeddings.layer_norm").removeprefix("embeddings."): v
         for k, v in text_state.items() if k.startswith("embeddings.") and "position_ids" not in k
         and "token_type_ids" not in k}
    )
    for i in range(text_layers):
        base.text_model.encoder.layers[i].load_state_dict(bert_layer_state_dict(text_state, f"encoder.layer.{i}."))
    prefix = "" if base is model else f"{model.base_model_prefix}."
    filled = {f"{prefix}{stack}.{key}" for stack in ("vision_model", "text_model")
              for key in getattr(base, stack).state_dict()}
    for i in range(fusion_layers):
        layer_state = bert_layer_state_dict(text_state, f"encoder.layer.{text_layers + i}.")
        result = base.fusion_model.encoder.layers[i].load_state_dict(layer_state, strict=False)
        if result.unexpected_keys or any(not k.startswith("cross_attn") for k in result.missing_keys):
            raise ValueError(f"BERT layer {text_layers + i} does not fit fusion layer {i}: {result}")
        filled |= {f"{prefix}fusion_model.encoder.layers.{i}.{key}" for key in layer_state}
    # the cross-attention, projections and task head start random: remembered for weights_not_loaded()
    remember_weights_not_loaded(model, {"missing_keys": set(model.state_dict()) - filled},
                                f"{vision_name_or_path} + {text_name_or_path}")
    if image_size is not None and image_size != config.vision_config.image_size:
        model.resize_position_embeddings(image_size)
    return model


# ---------------------------------------------------------------------------------------------------------------
# What is said when a checkpoint does not fit, or cannot be read
# ---------------------------------------------------------------------------------------------------------------


_FIELD_OF_MODULE = {
    "self_attn": "num_attention_heads", "layer_norm1": "num_attention_heads",
    "self_attn_layer_norm": "num_attention_heads", "cross_attn": "num_cross_attention_heads",
    "cross_attn_layer_norm": "num_cross_attention_heads", "mlp": "intermediate_size", "layer_norm2": "intermediate_size",
    "final_layer_norm": "intermediate_size",
}
_STACK_OF_MODULE = {"vision_model": "vision", "text_model": "text", "fusion_model": "fusion",
                    "answer_decoder": "decoder"}


def _layer_keys(info: dict, model=None) -> list[tuple[str, str, str]]:
    """(status, key, detail) of every encoder-layer weight that is missing, unexpected or of the wrong shape.

    A head checkpoint's answer-decoder weights are not unexpected in a ``model`` without a decoder (``AutoModel``
    loading the bare encoders of a generative VQA checkpoint)."""
    found = []
    for status in ("mismatched_keys", "missing_keys", "unexpected_keys"):
        for entry in info.get(status) or ():
            key, detail = entry, ""
            if isinstance(entry, tuple):  # (key, checkpoint shape, model shape)
                key, detail = entry[0], f" {list(entry[1])} in the checkpoint, {list(entry[2])} from the config"
            stack = key.split(".encoder.layers.")[0].split(".")[-1] if ".encoder.layers." in key else None
            if stack == "answer_decoder" and model is not None and not hasattr(model, stack):
                continue
            if stack in _STACK_OF_MODULE:
                found.append((status.split("_")[0], key, detail))
    return sorted(found)


def mismatch_message(path, model: PreTrainedModel, info: dict) -> str:
    """Explain why a checkpoint's tensors do not fit the model its config describes: every tensor, the config field
    that sets its shape, and the fix. Never fails: if the explanation itself breaks, the raw report is returned."""
    try:
        return _explain_mismatch(path, model, info)
    except Exception as error:  # a bug here must not hide the checkpoint's problem behind another exception
        raw = {status: [entry if isinstance(entry, str) else f"{entry[0]} {list(entry[1])} -> {list(entry[2])}"
                        for entry in info.get(status) or ()] for status in ("mismatched_keys", "missing_keys",
                                                                            "unexpected_keys")}
        return (f"The checkpoint at {str(path)!r} does not fit the model its config describes: {raw}. Fix "
                f"config.json, or re-export the model with save_pretrained(). (Explaining it further failed: "
                f"{type(error).__name__}: {error})")


def _explain_mismatch(path, model: PreTrainedModel, info: dict) -> str:
    config = model.config
    lines: list[str] = []
    model_keys = set(model.state_dict())
    missing = set(info.get("missing_keys") or ())
    unexpected = set(info.get("unexpected_keys") or ())

    # Encoder layers: per layer and per-layer config field.
    layer_entries = _layer_keys(info, model)
    by_layer: dict[tuple[str, int], list[tuple[str, str, str]]] = {}
    for status, key, detail in layer_entries:
        stack, rest = key.split(".encoder.layers.")
        by_layer.setdefault((_STACK_OF_MODULE[stack.split(".")[-1]], int(rest.split(".")[0])), []).append(
            (status, key, detail))
    layer_fields = []
    for (modality, index), entries in sorted(by_layer.items()):
        sub = getattr(config, f"{modality}_config")
        count = sub.num_hidden_layers
        prefix = entries[0][1].split(".encoder.layers.")[0] + f".encoder.layers.{index}."
        saved = sorted({int(k.split(".encoder.layers.")[1].split(".")[0]) for k in (model_keys - missing) | unexpected
                        if k.startswith(entries[0][1].split(".encoder.layers.")[0] + ".encoder.layers.")})
        if index >= count:
            lines.append(f"  {modality} layer {index}: {len(entries)} tensors in the checkpoint, but "
                         f"{modality}_config.num_hidden_layers = {count} (the checkpoint has {len(saved)} {modality} "
                         "layers)")
            layer_fields.append(f"{modality}_config.num_hidden_layers")
            continue
        layer_keys = {k for k in model_keys if k.startswith(prefix)}
        if layer_keys and layer_keys <= missing and not any(status == "unexpected" for status, _, _ in entries):
            lines.append(f"  {modality} layer {index}: missing from the checkpoint, but "
                         f"{modality}_config.num_hidden_layers = {count} (the checkpoint has {len(saved)} {modality} "
                         "layers)")
            layer_fields.append(f"{modality}_config.num_hidden_layers")
            continue
        groups: dict[str, list[str]] = {}
        for status, key, detail in entries:
            rest = key.split(".encoder.layers.")[1]
            module, name = rest.split(".")[1], rest.split(".", 1)[1]
            what = {"mismatched": f"shape{detail}", "missing": "missing from the checkpoint",
                    "unexpected": "in the checkpoint but not in the config"}[status]
            groups.setdefault(_FIELD_OF_MODULE.get(module, "?"), []).append(f"{name} ({what})")
        for field, names in sorted(groups.items()):
            values = sub.per_layer(field) if field in sub.per_layer_fields else []
            value = values[index] if index < len(values) else "?"
            lines.append(f"  {modality} layer {index}, {modality}_config.{field}[{index}] = {value}: "
                         + "; ".join(names))
            layer_fields.append(f"{modality}_config.{field}")

    # Everything else: embeddings, projections and task heads.
    head_lines = []
    in_layers = {layer_key for _, layer_key, _ in layer_entries}
    for entry in sorted(info.get("mismatched_keys") or (), key=str):
        key, saved, wanted = entry if isinstance(entry, tuple) else (entry, "?", "?")
        if key in in_layers:
            continue
        head_lines.append(f"  {key}: {list(saved)} in the checkpoint, {list(wanted)} from the config "
                          f"({_shape_source(key, model)})")
    lines += head_lines
    other_missing = sorted(missing - in_layers)
    if other_missing and lines:
        lines.append(f"  also missing from the checkpoint (they would be initialised at random): "
                     f"{_summarise_keys(other_missing)}")

    fixes = []
    if layer_fields:
        fields = ", ".join(dict.fromkeys(layer_fields))
        fixes.append(f"The config must record the size of every layer of the saved weights ({fields}; 0 = "
                     "sub-block absent). Fix config.json, or re-export the model with save_pretrained().")
    if head_lines:
        fixes.append(_head_fix(model, info))
    return (f"The checkpoint at {str(path)!r} does not fit its config ({type(model).__name__}):\n" + "\n".join(lines)
            + "\n" + " ".join(fixes))


def _head_fix(model: PreTrainedModel, info: dict) -> str:
    """The fix for task-head (or embedding) tensors whose shapes differ from what the config builds."""
    this = type(model).__name__
    saved_as = (model.config.architectures or [None])[0]
    if saved_as and saved_as != this:
        return (f"The checkpoint was saved from {saved_as}, not {this}: load it with {saved_as}.from_pretrained() "
                f"(or its Auto class), or pass ignore_mismatched_sizes=True to put a new {this} head (random until "
                "fine-tuned) on its encoders.")
    answers = [entry for entry in info.get("mismatched_keys") or ()
               if isinstance(entry, tuple) and entry[0].startswith("classifier.3.")]
    if answers and "VisualQuestionAnswering" in this:
        saved = answers[0][1][0]
        return (f"config.id2label lists {model.config.num_labels} answers, but the checkpoint's classifier has "
                f"{saved} outputs: load it without overriding id2label / num_labels (its config.json lists its "
                "answers), or pass ignore_mismatched_sizes=True to initialise a new classifier for the new answer set "
                "(random until fine-tuned).")
    return ("Load the checkpoint with the config it was saved with (do not override these sizes), or pass "
            "ignore_mismatched_sizes=True to initialise the listed tensors at random.")


def _shape_source(key: str, model: PreTrainedModel) -> str:
    """The config fields that set the shape of a tensor outside the encoder layers."""
    config, head = model.config, type(model).__name__
    hidden = config.text_config.hidden_size
    if key.startswith("classifier."):
        index = key.split(".")[1]
        if "NLVR2" in head:
            if index == "3":
                return "2 outputs: false / true"
            return f"the two fused [CLS] vectors: 2 x text_config.hidden_size = {2 * hidden}"
        if index == "3":
            return f"one output per answer: config.id2label has {config.num_labels} answers"
        if index == "0" and key.endswith("weight"):
            return f"input text_config.hidden_size = {hidden}, width 2 x {hidden}"
        return f"width 2 x text_config.hidden_size = {2 * hidden}"
    if key.startswith("itm_head."):
        return f"image-text matching head on text_config.hidden_size = {hidden}"
    if "_proj." in key and key.split(".")[0] in ("vision_proj", "text_proj"):
        modality = key.split("_")[0]
        return (f"{modality}_config.hidden_size = {getattr(config, f'{modality}_config').hidden_size} -> "
                f"projection_dim = {config.projection_dim}")
    if "position_embedding." in key:
        vc = config.vision_config
        return f"vision_config.image_size / patch_size = {vc.image_size} / {vc.patch_size}, plus [CLS]"
    if "patch_embedding." in key:
        vc = config.vision_config
        return f"vision_config.hidden_size = {vc.hidden_size}, num_channels, patch_size = {vc.patch_size}"
    if "word_embeddings." in key or key.startswith("lm_head."):
        return f"text_config.vocab_size = {config.text_config.vocab_size}"
    if "position_embeddings." in key:
        return f"text_config.max_position_embeddings = {config.text_config.max_position_embeddings}"
    if "token_type_embeddings." in key:
        return f"text_config.type_vocab_size = {config.text_config.type_vocab_size}"
    return "the hidden sizes in the config"


def _summarise_keys(keys: list[str], shown: int = 6) -> str:
    """``a, b, c, ... (n tensors)`` for a message."""
    more = f", ... ({len(keys)} tensors)" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def _weight_groups(names: list[str], base_prefix: str) -> list[str]:
    """The modules a list of tensor names belongs to: a head's top-level name (``classifier``), or the encoder part
    (``efficientvlm.text_model.embeddings``)."""
    groups = []
    for name in names:
        parts = name.split(".")
        group = ".".join(parts[:3]) if parts[0] == base_prefix and len(parts) > 3 else parts[0]
        if group not in groups:
            groups.append(group)
    return groups


def _warn_weights_not_loaded(model: PreTrainedModel, source) -> None:
    """Warn, naming the head, when ``from_pretrained`` initialised tensors at random instead of loading them."""
    names = weights_not_loaded(model)
    if names:
        logger.warning(_random_weights_message(source, model, names))


def _random_weights_message(source, model: PreTrainedModel, names: list[str]) -> str:
    """The warning for tensors that ``from_pretrained`` initialised at random instead of loading."""
    this = type(model).__name__
    saved_as = (model.config.architectures or [None])[0]
    saved = f" (saved from {saved_as})" if saved_as and saved_as != this else ""
    groups = ", ".join(_weight_groups(names, model.base_model_prefix))
    return (f"{this}: the checkpoint at {str(source)!r}{saved} has no weights for {groups} "
            f"({_summarise_keys(names)}); they were initialised at random, so the model's outputs mean nothing until "
            f"it is fine-tuned. To use a trained {this}, load a checkpoint saved from {this}; to train this head, "
            "fine-tune the model (e.g. examples/finetune.py).")


def _value_sample(tensor: torch.Tensor, size: int = 64, as_float: bool = True) -> torch.Tensor:
    """Up to ``size`` evenly spaced values of ``tensor`` on the CPU, as float32 or in its dtype (a fingerprint)."""
    flat = tensor.detach().reshape(-1)
    index = torch.linspace(0, max(flat.numel() - 1, 0), min(flat.numel(), size)).long().to(flat.device)
    sample = flat[index].cpu()
    return sample.float() if as_float else sample


def _is_safetensors_error(error: BaseException) -> bool:
    """Whether the safetensors library could not read a weights file (truncated, corrupt)."""
    return type(error).__name__ == "SafetensorError" or type(error).__module__.split(".")[0] == "safetensors"


def _safetensors_problem(file: str) -> str | None:
    """What is wrong with a safetensors file, read from its header alone; None if it looks complete."""
    size = os.path.getsize(file)
    if size < 8:
        return f"it holds {size} bytes, fewer than the 8 of a safetensors header"
    with open(file, "rb") as handle:
        header_size = int.from_bytes(handle.read(8), "little")
        if 8 + header_size > size:
            return f"it holds {size} bytes, fewer than its {8 + header_size}-byte header"
        try:
            header = json.loads(handle.read(header_size))
        except ValueError:
            return "its header is not valid JSON"
    ends = [entry["data_offsets"][1] for name, entry in header.items()
            if name != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry]
    expected = 8 + header_size + max(ends, default=0)
    if size != expected:
        return f"it holds {size} bytes where its header describes {expected}"
    return None


def _corrupt_weights_message(path, error: BaseException) -> str:
    """Why a checkpoint whose safetensors file cannot be read is refused, naming the file."""
    cause = f"{type(error).__name__}: {error}"
    if path is not None and os.path.isdir(path):
        single = os.path.join(path, "model.safetensors")
        candidates = [single] if os.path.isfile(single) else sorted(
            os.path.join(path, name) for name in os.listdir(path) if name.endswith(".safetensors"))
        problems = [(file, _safetensors_problem(file)) for file in candidates]
        broken = [(file, problem) for file, problem in problems if problem] or [(file, None) for file in candidates]
        named = "; ".join(f"'{file}'" + (f" ({problem})" if problem else "") for file, problem in broken)
        return (f"The weights file {named} of the checkpoint at {str(path)!r} cannot be read ({cause}): it is "
                "truncated or corrupt, e.g. by an interrupted download, copy or save. Copy or download it again, or "
                "re-save the model with save_pretrained().")
    return (f"The safetensors weights of {str(path)!r} (model.safetensors in the Hugging Face cache) cannot be read "
            f"({cause}): the file is truncated or corrupt. Download it again with from_pretrained(..., "
            "force_download=True).")


def _is_missing_safetensors(error: OSError) -> bool:
    """Whether transformers could not find ``model.safetensors`` (or its index) while ``use_safetensors=True``."""
    return "model.safetensors" in str(error)


def _pickled_weights_message(path) -> str:
    """Why a checkpoint without safetensors weights is refused, naming the pickled files of a local folder."""
    pickled = []
    if path is not None and os.path.isdir(path):
        pickled = sorted(name for name in os.listdir(path) if name.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt")))
    found = f"; it holds pickled weights only ({', '.join(pickled)})" if pickled else ""
    return (
        f"No safetensors weights (model.safetensors or model.safetensors.index.json) for {str(path)!r}{found}. "
        "EfficientVLM loads safetensors weights only: unpickling a file can execute arbitrary code, so pickled "
        "weights (pytorch_model.bin, *.pth) are refused. If you trust the file, convert it once: "
        "model.load_state_dict(torch.load(path, map_location='cpu', weights_only=True)), then "
        "model.save_pretrained(folder). Official X-VLM / EfficientVLM checkpoints convert with "
        "examples/convert_xvlm_checkpoint.py."
    )


def _refuse_int8_export(path) -> None:
    """A folder of ``efficientvlm export --format int8`` holds int8 tensors that would load as float weights."""
    config_file = os.path.join(str(path), "config.json") if path is not None else ""
    if os.path.isfile(config_file) and '"int8_quantization"' in open(config_file, encoding="utf-8").read():
        raise ValueError(f"{str(path)!r} is an int8 export (efficientvlm export --format int8); load it with "
                         f"efficientvlm.export.load_exported({str(path)!r}).")


def _bert_special_tokens(text_name_or_path, bert_config, loading_kwargs: dict) -> dict:
    """[PAD]/[CLS]/[SEP]/[MASK] ids from the checkpoint's tokenizer if it ships one, else from its config."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(text_name_or_path, **loading_kwargs)
        ids = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.cls_token_id,
               "eos_token_id": tokenizer.sep_token_id, "mask_token_id": tokenizer.mask_token_id}
    except (OSError, ValueError, TypeError):
        ids = {"pad_token_id": getattr(bert_config, "pad_token_id", None)}
        for name, bert_default in (("bos_token_id", 101), ("eos_token_id", 102), ("mask_token_id", 103)):
            # bert-base-uncased's ids, if the vocabulary has them; otherwise unknown
            ids[name] = bert_default if bert_default < bert_config.vocab_size else None
    return {name: value for name, value in ids.items() if value is None or value < bert_config.vocab_size}


def bert_layer_state_dict(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Map one transformers ``BertLayer`` (keys under ``prefix``) to ``EfficientVLMTextLayer`` names."""
    names = {
        "attention.self.query": "self_attn.q_proj", "attention.self.key": "self_attn.k_proj",
        "attention.self.value": "self_attn.v_proj", "attention.output.dense": "self_attn.out_proj",
        "attention.output.LayerNorm": "self_attn_layer_norm",
        "crossattention.self.query": "cross_attn.q_proj", "crossattention.self.key": "cross_attn.k_proj",
        "crossattention.self.value": "cross_attn.v_proj", "crossattention.output.dense": "cross_attn.out_proj",
        "crossattention.output.LayerNorm": "cross_attn_layer_norm",
        "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2", "output.LayerNorm": "final_layer_norm",
    }
    mapped = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        module, param = key[len(prefix):].rsplit(".", 1)
        if module in names:
            mapped[f"{names[module]}.{param}"] = value
    return mapped
