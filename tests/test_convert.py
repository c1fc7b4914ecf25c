"""Conversion of official X-VLM_clip / EfficientVLM checkpoints (state dicts with the official key names).

The tests build tiny official-format state dicts and compare the converted model with the official architecture
computed by an independent path: stock transformers modules loaded with the official tensors (``CLIPVisionModel``,
``BertModel``, ``BertLayer`` for the fusion layers) for full-shape checkpoints, and a hand-written forward of the
official architecture (validated against the stock modules) for pruned, heterogeneous checkpoints.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel, CLIPVisionConfig, CLIPVisionModel
from transformers.models.bert.modeling_bert import BertLayer

from efficientvlm import EfficientVLMForImageTextRetrieval, EfficientVLMForPreTraining, EfficientVLMModel
from efficientvlm.hub.convert import (
    ConversionError,
    convert_official_checkpoint,
    convert_official_state_dict,
    image_size_from_positions,
)
from tests.utils import VOCAB, make_tiny_tokenizer

V, T, D, PATCH, IMAGE, PROJ = 32, 32, 8, 8, 32, 16  # vision / text width, head dim, patch, image side, ITC dim
VOCAB_SIZE = len(VOCAB)
ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------------
# Official-format state dicts
# ---------------------------------------------------------------------------------------------------------------


def official_state_dict(vision_heads=(4, 4), vision_ffn=(48, 48), bert_heads=(4, 4, 4, 4), cross_heads=(0, 0, 4, 4),
                        bert_ffn=(40, 40, 40, 40), mlm=True, seed=0) -> dict[str, torch.Tensor]:
    """Random tensors under the official names and shapes (tiny sizes). A 0 drops that sub-block's weights, as
    physical pruning does, and keeps its LayerNorm (CoFi-style pruning keeps the module but skips it)."""
    g = torch.Generator().manual_seed(seed)

    def w(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    def linear(name, out_features, in_features):
        state[f"{name}.weight"], state[f"{name}.bias"] = w(out_features, in_features), w(out_features, scale=0.05)

    def layer_norm(name, dim):
        state[f"{name}.weight"], state[f"{name}.bias"] = 1 + w(dim, scale=0.1), w(dim, scale=0.1)

    state = {"temp": torch.tensor(0.07)}
    v = "vision_encoder."
    state[v + "class_embedding"] = w(V)
    state[v + "position_ids"] = torch.arange((IMAGE // PATCH) ** 2 + 1)[None]
    state[v + "patch_embed.weight"] = w(V, 3, PATCH, PATCH)
    state[v + "pos_embed.weight"] = w((IMAGE // PATCH) ** 2 + 1, V)
    layer_norm(v + "pre_layrnorm", V)
    for i, (heads, ffn) in enumerate(zip(vision_heads, vision_ffn)):
        p = f"{v}encoder.layers.{i}."
        if heads:
            for proj in ("q_proj", "k_proj", "v_proj"):
                linear(p + "self_attn." + proj, heads * D, V)
            linear(p + "self_attn.out_proj", V, heads * D)
        layer_norm(p + "layer_norm1", V)
        if ffn:
            linear(p + "mlp.fc1", ffn, V)
            linear(p + "mlp.fc2", V, ffn)
        layer_norm(p + "layer_norm2", V)
    layer_norm(v + "post_layernorm", V)

    t = "text_encoder.bert." if mlm else "text_encoder."
    state[t + "embeddings.position_ids"] = torch.arange(40)[None]
    state[t + "embeddings.word_embeddings.weight"] = w(VOCAB_SIZE, T)
    state[t + "embeddings.position_embeddings.weight"] = w(40, T)
    state[t + "embeddings.token_type_embeddings.weight"] = w(2, T)
    layer_norm(t + "embeddings.LayerNorm", T)
    for i, (heads, cross, ffn) in enumerate(zip(bert_heads, cross_heads, bert_ffn)):
        p = f"{t}encoder.layer.{i}."
        for block, count, kv_width in (("attention", heads, T), ("crossattention", cross, V)):
            if block == "crossattention" and i < len(bert_heads) // 2:
                continue  # text layers have no cross-attention at all
            if count:
                linear(p + block + ".self.query", count * D, T)
                linear(p + block + ".self.key", count * D, kv_width)
                linear(p + block + ".self.value", count * D, kv_width)
                linear(p + block + ".output.dense", T, count * D)
            layer_norm(p + block + ".output.LayerNorm", T)
        if ffn:
            linear(p + "intermediate.dense", ffn, T)
            linear(p + "output.dense", T, ffn)
        layer_norm(p + "output.LayerNorm", T)
    linear("vision_proj", PROJ, V)
    linear("text_proj", PROJ, T)
    linear("itm_head.0", 2 * T, T)
    layer_norm("itm_head.1", 2 * T)
    linear("itm_head.3", 2, 2 * T)
    if mlm:
        c = "text_encoder.cls.predictions."
        linear(c + "transform.dense", T, T)
        layer_norm(c + "transform.LayerNorm", T)
        state[c + "decoder.weight"] = state[t + "embeddings.word_embeddings.weight"]  # tied, as in BertForMaskedLM
        state[c + "bias"] = w(VOCAB_SIZE, scale=0.05)
        state[c + "decoder.bias"] = state[c + "bias"]
    return state


def inputs(batch=3, seq=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB_SIZE, (batch, seq), generator=g)
    ids[:, 0] = 2
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[-1, -2:] = 0
    return torch.randn(batch, 3, IMAGE, IMAGE, generator=g), ids, mask


# ---------------------------------------------------------------------------------------------------------------
# Independent paths: stock transformers modules, and a hand-written forward of the official architecture
# ---------------------------------------------------------------------------------------------------------------


def _heads_of(state, mlm=True):
    """ITC features, ITM logits and MLM logits of the official heads (X-VLM's build_mlp: nn.LayerNorm eps 1e-5)."""
    def lin(name, x):
        return F.linear(x, state[f"{name}.weight"], state.get(f"{name}.bias"))

    def ln(name, x, eps):
        return F.layer_norm(x, x.shape[-1:], state[f"{name}.weight"], state[f"{name}.bias"], eps)

    def heads(image, text, fused):
        out = {
            "itc_image": F.normalize(lin("vision_proj", image[:, 0]), dim=-1),
            "itc_text": F.normalize(lin("text_proj", text[:, 0]), dim=-1),
            "itm": lin("itm_head.3", F.gelu(ln("itm_head.1", lin("itm_head.0", fused[:, 0]), 1e-5))),
        }
        if mlm:
            c = "text_encoder.cls.predictions."
            hidden = ln(c + "transform.LayerNorm", F.gelu(lin(c + "transform.dense", fused)), 1e-12)
            out["mlm"] = F.linear(hidden, state[c + "decoder.weight"], state[c + "bias"])
        return out

    return heads


def _extended_mask(mask, dtype=torch.float32):
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def official_forward_stock(state, pixel_values, ids, mask, mlm=True):
    """The official model assembled from stock transformers modules holding the official tensors."""
    vision = CLIPVisionModel(CLIPVisionConfig(hidden_size=V, intermediate_size=48, num_hidden_layers=2,
                                              num_attention_heads=V // D, image_size=IMAGE, patch_size=PATCH)).eval()
    rename = {"patch_embed.weight": "embeddings.patch_embedding.weight",
              "pos_embed.weight": "embeddings.position_embedding.weight",
              "class_embedding": "embeddings.class_embedding"}
    vision_state = {rename.get(k[len("vision_encoder."):], k[len("vision_encoder."):]): t for k, t in state.items()
                    if k.startswith("vision_encoder.") and "position_ids" not in k}
    tower = getattr(vision, "vision_model", vision)
    result = tower.load_state_dict(vision_state, strict=False)
    assert not result.missing_keys and not result.unexpected_keys
    with torch.no_grad():
        # X-VLM applies post_layernorm to every token (stock CLIP only to the pooled one)
        image = F.layer_norm(vision(pixel_values).last_hidden_state, (V,),
                             state["vision_encoder.post_layernorm.weight"], state["vision_encoder.post_layernorm.bias"],
                             1e-5)

    t = "text_encoder.bert." if mlm else "text_encoder."
    bert_config = BertConfig(vocab_size=VOCAB_SIZE, hidden_size=T, num_hidden_layers=2, num_attention_heads=T // D,
                             intermediate_size=40, max_position_embeddings=40, attn_implementation="eager")
    bert = BertModel(bert_config, add_pooling_layer=False).eval()
    bert_state = {k[len(t):]: v for k, v in state.items()
                  if k.startswith(t) and "position_ids" not in k and not k.startswith(t + "encoder.layer.2")
                  and not k.startswith(t + "encoder.layer.3")}
    result = bert.load_state_dict(bert_state, strict=False)
    assert not result.missing_keys and not result.unexpected_keys
    fusion_config = BertConfig(**{**bert_config.to_dict(), "is_decoder": True, "add_cross_attention": True})
    fusion_config._attn_implementation = "eager"
    with torch.no_grad():
        text = bert(input_ids=ids, attention_mask=mask).last_hidden_state
        fused = text
        for i in (2, 3):  # called directly with a padding-only mask, a BertLayer is bidirectional
            layer = BertLayer(fusion_config).eval()
            prefix = f"{t}encoder.layer.{i}."
            layer.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
            out = layer(fused, attention_mask=_extended_mask(mask), encoder_hidden_states=image)
            fused = out[0] if isinstance(out, tuple) else out
        return {"image": image, "text": text, "fused": fused, **_heads_of(state, mlm)(image, text, fused)}


def official_forward_by_hand(state, pixel_values, ids, mask, fusion_layer=2, mlm=True):
    """The official architecture written out with torch.nn.functional; a block without weights passes through."""
    def lin(name, x):
        return F.linear(x, state[f"{name}.weight"], state[f"{name}.bias"])

    def ln(name, x, eps):
        return F.layer_norm(x, x.shape[-1:], state[f"{name}.weight"], state[f"{name}.bias"], eps)

    def attend(q, k, v, additive_mask):
        b, lq, width = q.shape
        heads = width // D
        q, k, v = (x.view(b, x.shape[1], heads, D).transpose(1, 2) for x in (q, k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(D)
        if additive_mask is not None:
            scores = scores + additive_mask
        return (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, lq, width)

    with torch.no_grad():
        v = "vision_encoder."
        patches = F.conv2d(pixel_values, state[v + "patch_embed.weight"], stride=PATCH).flatten(2).transpose(1, 2)
        x = torch.cat([state[v + "class_embedding"].expand(len(patches), 1, -1), patches], 1)
        x = ln(v + "pre_layrnorm", x + state[v + "pos_embed.weight"], 1e-5)
        layers = sorted({int(k.split(".")[3]) for k in state if k.startswith(v + "encoder.layers.")})
        for i in layers:
            p = f"{v}encoder.layers.{i}."
            if p + "self_attn.q_proj.weight" in state:
                h = ln(p + "layer_norm1", x, 1e-5)
                x = x + lin(p + "self_attn.out_proj", attend(lin(p + "self_attn.q_proj", h),
                                                             lin(p + "self_attn.k_proj", h),
                                                             lin(p + "self_attn.v_proj", h), None))
            if p + "mlp.fc1.weight" in state:
                h = lin(p + "mlp.fc1", ln(p + "layer_norm2", x, 1e-5))
                x = x + lin(p + "mlp.fc2", h * torch.sigmoid(1.702 * h))  # quick_gelu
        image = ln(v + "post_layernorm", x, 1e-5)

        t = "text_encoder.bert." if mlm else "text_encoder."
        e = state[t + "embeddings.word_embeddings.weight"][ids] + state[t + "embeddings.position_embeddings.weight"][
            : ids.shape[1]] + state[t + "embeddings.token_type_embeddings.weight"][0]
        x = ln(t + "embeddings.LayerNorm", e, 1e-12)
        additive = _extended_mask(mask)
        text = None
        bert_layers = sorted({int(k[len(t + "encoder.layer."):].split(".")[0]) for k in state
                              if k.startswith(t + "encoder.layer.")})
        for i in bert_layers:
            if i == fusion_layer:
                text = x
            p = f"{t}encoder.layer.{i}."
            if p + "attention.self.query.weight" in state:
                a = attend(lin(p + "attention.self.query", x), lin(p + "attention.self.key", x),
                           lin(p + "attention.self.value", x), additive)
                x = ln(p + "attention.output.LayerNorm", x + lin(p + "attention.output.dense", a), 1e-12)
            if p + "crossattention.self.query.weight" in state:
                a = attend(lin(p + "crossattention.self.query", x), lin(p + "crossattention.self.key", image),
                           lin(p + "crossattention.self.value", image), None)
                x = ln(p + "crossattention.output.LayerNorm", x + lin(p + "crossattention.output.dense", a), 1e-12)
            if p + "intermediate.dense.weight" in state:
                h = F.gelu(lin(p + "intermediate.dense", x))
                x = ln(p + "output.LayerNorm", x + lin(p + "output.dense", h), 1e-12)
        fused = x
        return {"image": image, "text": text, "fused": fused, **_heads_of(state, mlm)(image, text, fused)}


def converted_outputs(model, pixel_values, ids, mask):
    base = model.base_model
    with torch.no_grad():
        image = base.encode_image(pixel_values).last_hidden_state
        text = base.encode_text(ids, mask).last_hidden_state
        fused = base.fuse(text, mask, image).last_hidden_state
        out = {"image": image, "text": text, "fused": fused}
        if hasattr(model, "itm_head"):
            out.update(itc_image=model.image_features(image), itc_text=model.text_features(text),
                       itm=model.itm_logits(image, text, mask)[0])
        if hasattr(model, "lm_head"):
            out["mlm"] = model.lm_head(fused)
    return out


def assert_outputs_match(ours, reference, keys=None, atol=1e-5):
    mask = inputs()[2]
    for key in keys or reference:
        a, b = ours[key], reference[key]
        if key in ("text", "fused", "mlm"):  # padded positions are not compared
            a, b = a[mask.bool()], b[mask.bool()]
        torch.testing.assert_close(a, b, atol=atol, rtol=1e-4, msg=lambda m: f"{key}: {m}")


# ---------------------------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory):
    directory = tmp_path_factory.mktemp("vocab")
    make_tiny_tokenizer(directory)
    return directory / "vocab.txt"


@pytest.fixture(scope="module")
def teacher(vocab_file):
    state = official_state_dict()
    return state, convert_official_checkpoint(state, vocab_file, head_dim=D, strict=True)


def test_hand_written_reference_matches_stock_transformers_modules():
    state = official_state_dict()
    by_hand = official_forward_by_hand(state, *inputs())
    assert_outputs_match(by_hand, official_forward_stock(state, *inputs()))


def test_pretraining_checkpoint_reproduces_the_official_outputs(teacher):
    state, result = teacher
    assert isinstance(result.model, EfficientVLMForPreTraining)
    reference = official_forward_stock(state, *inputs())
    ours = converted_outputs(result.model, *inputs())
    assert_outputs_match(ours, reference, ["image", "text", "fused", "itc_image", "itc_text", "itm", "mlm"])
    assert result.model.config.tie_word_embeddings
    assert result.model.lm_head.decoder.weight.data_ptr() == result.model.get_input_embeddings().weight.data_ptr()
    assert result.model.temp.item() == pytest.approx(0.07)


def test_every_official_tensor_is_accounted_for(teacher):
    state, result = teacher
    report = result.report
    assert report.complete and not report.unplaced and not report.missing
    assert set(report.placed) | set(report.skipped) == set(state)
    embeddings = "efficientvlm.vision_model.embeddings."
    assert report.placed["vision_encoder.patch_embed.weight"] == embeddings + "patch_embedding.weight"
    assert report.placed["vision_encoder.pos_embed.weight"] == embeddings + "position_embedding.weight"
    assert report.placed["text_encoder.bert.encoder.layer.3.crossattention.self.key.weight"] == (
        "efficientvlm.fusion_model.encoder.layers.1.cross_attn.k_proj.weight")
    assert report.placed["text_encoder.bert.encoder.layer.1.output.dense.weight"] == (
        "efficientvlm.text_model.encoder.layers.1.mlp.fc2.weight")
    assert set(report.skipped) == {"vision_encoder.position_ids", "text_encoder.bert.embeddings.position_ids",
                                   "text_encoder.cls.predictions.decoder.bias"}


def test_config_and_processor_are_read_from_the_tensors(teacher, vocab_file):
    _, result = teacher
    config = result.model.config
    assert (config.vision_config.num_hidden_layers, config.text_config.num_hidden_layers,
            config.fusion_config.num_hidden_layers) == (2, 2, 2)
    assert config.vision_config.num_attention_heads == 4 and config.vision_config.intermediate_size == 48
    assert config.vision_config.image_size == IMAGE and config.vision_config.patch_size == PATCH
    assert config.projection_dim == PROJ and config.text_config.vocab_size == VOCAB_SIZE
    tokenizer = result.processor.tokenizer
    assert config.text_config.bos_token_id == tokenizer.cls_token_id == VOCAB.index("[CLS]")
    assert config.text_config.mask_token_id == tokenizer.mask_token_id
    assert result.processor.image_processor.size["height"] == IMAGE


@pytest.mark.parametrize("rows, patch, size", [(197, 16, 224), (577, 16, 384), (901, 16, 480), (17, 8, 32)])
def test_image_size_from_position_embedding_rows(rows, patch, size):
    assert image_size_from_positions(rows, patch) == size


def test_fine_tuning_checkpoint_file_wrapped_in_model(tmp_path, vocab_file):
    """text_encoder.* names (no MLM head) in {"model": state_dict}, loaded from a file with weights_only=True."""
    state = official_state_dict(mlm=False, seed=3)
    torch.save({"model": state, "epoch": 3}, tmp_path / "checkpoint.pth")
    result = convert_official_checkpoint(tmp_path / "checkpoint.pth", vocab_file, head_dim=D, strict=True)
    assert isinstance(result.model, EfficientVLMForImageTextRetrieval)
    reference = official_forward_stock(state, *inputs(), mlm=False)
    assert_outputs_match(converted_outputs(result.model, *inputs()), reference,
                         ["image", "text", "fused", "itc_image", "itc_text"])


def test_unknown_and_unplaceable_keys_are_reported_never_dropped(vocab_file):
    state = official_state_dict(mlm=False)
    extra = {
        "text_decoder.bert.encoder.layer.0.attention.self.query.weight": torch.zeros(4, 4),
        "cls_head.0.weight": torch.zeros(4, 4),
        "bbox_head.0.weight": torch.zeros(4, 4),
        "l0_module.vision_head_loga": torch.zeros(2, 4),
        "vision_encoder.encoder.layers.0.self_attn.rel_pos": torch.zeros(3),
    }
    result = convert_official_checkpoint({**state, **extra}, vocab_file, head_dim=D)
    unplaced = result.report.unplaced
    assert set(unplaced) == set(extra)
    assert "generative VQA" in unplaced["text_decoder.bert.encoder.layer.0.attention.self.query.weight"]
    assert "NLVR2" in unplaced["cls_head.0.weight"]
    assert "box" in unplaced["bbox_head.0.weight"]
    assert unplaced["l0_module.vision_head_loga"] == "unknown tensor"
    assert "NOT PLACED cls_head.0.weight" in str(result.report)
    with pytest.raises(ConversionError, match="l0_module.vision_head_loga") as info:
        convert_official_checkpoint({**state, **extra}, vocab_file, head_dim=D, strict=True)
    assert set(info.value.report.unplaced) == set(extra)


def test_bbox_head_is_placed_into_the_pretraining_head(vocab_file):
    state = official_state_dict(seed=3)
    g = torch.Generator().manual_seed(1)
    bbox = {"bbox_head.0.weight": torch.randn(2 * T, T, generator=g) * 0.2, "bbox_head.0.bias": torch.randn(2 * T, generator=g),
            "bbox_head.1.weight": 1 + torch.randn(2 * T, generator=g) * 0.1, "bbox_head.1.bias": torch.randn(2 * T, generator=g),
            "bbox_head.3.weight": torch.randn(4, 2 * T, generator=g) * 0.2, "bbox_head.3.bias": torch.randn(4, generator=g)}
    result = convert_official_checkpoint({**state, **bbox}, vocab_file, head_dim=D, strict=True)
    assert isinstance(result.model, EfficientVLMForPreTraining)
    assert all(result.report.placed[key] == key for key in bbox)
    fused = converted_outputs(result.model, *inputs())["fused"][:, 0]
    hidden = F.gelu(F.layer_norm(fused @ bbox["bbox_head.0.weight"].T + bbox["bbox_head.0.bias"], (2 * T,),
                                 bbox["bbox_head.1.weight"], bbox["bbox_head.1.bias"], 1e-5))
    with torch.no_grad():
        ours = result.model.bbox_head(fused)
    torch.testing.assert_close(ours, hidden @ bbox["bbox_head.3.weight"].T + bbox["bbox_head.3.bias"])

    assert result.model.config.use_bbox_head
    # without one, the converted pre-training head has none (strict conversion passes)
    plain = convert_official_checkpoint(state, vocab_file, head_dim=D, strict=True)
    assert not plain.report.missing and plain.model.bbox_head is None and not plain.model.config.use_bbox_head
    # a retrieval conversion has no place for it
    retrieval = convert_official_checkpoint({**state, **bbox}, vocab_file, head="retrieval", head_dim=D).report
    assert "only the pretraining head" in retrieval.unplaced["bbox_head.0.weight"]


def test_heads_without_a_place_in_the_base_model_are_reported(vocab_file):
    state = official_state_dict()
    model, report = convert_official_state_dict(state, head="model", head_dim=D)
    assert isinstance(model, EfficientVLMModel)
    assert {k for k in report.unplaced} == {k for k in state if k.startswith(("vision_proj", "text_proj", "itm_head",
                                                                              "temp", "text_encoder.cls."))}
    assert "text_encoder.cls.predictions.decoder.bias" in report.unplaced


def test_pruned_checkpoint_converts_into_a_heterogeneous_config(tmp_path, vocab_file):
    sizes = dict(vision_heads=(3, 0), vision_ffn=(20, 10), bert_heads=(1, 4, 2, 0), cross_heads=(0, 0, 1, 2),
                 bert_ffn=(0, 40, 12, 40))
    state = official_state_dict(mlm=False, seed=5, **sizes)
    result = convert_official_checkpoint(state, vocab_file, head_dim=D, strict=True)
    sizes_of = result.model.config.layer_sizes()
    assert sizes_of["vision"] == {"num_attention_heads": [3, 0], "intermediate_size": [20, 10]}
    assert sizes_of["text"] == {"num_attention_heads": [1, 4], "intermediate_size": [0, 40]}
    assert sizes_of["fusion"] == {"num_attention_heads": [2, 0], "num_cross_attention_heads": [1, 2],
                                  "intermediate_size": [12, 40]}
    # LayerNorms of removed sub-blocks are known dead weights, listed as skipped
    assert "vision_encoder.encoder.layers.1.layer_norm1.weight" in result.report.skipped
    assert "text_encoder.encoder.layer.0.output.LayerNorm.bias" in result.report.skipped
    assert "text_encoder.encoder.layer.3.attention.output.LayerNorm.weight" in result.report.skipped
    reference = official_forward_by_hand(state, *inputs(), mlm=False)
    assert_outputs_match(converted_outputs(result.model, *inputs()), reference,
                         ["image", "text", "fused", "itc_image", "itc_text", "itm"])

    # the saved checkpoint reloads into the same heterogeneous model
    result.save_pretrained(tmp_path / "converted")
    reloaded = EfficientVLMForImageTextRetrieval.from_pretrained(tmp_path / "converted").eval()
    assert reloaded.config.layer_sizes() == sizes_of
    assert_outputs_match(converted_outputs(reloaded, *inputs()), reference, ["image", "text", "fused"])
    report = json.loads((tmp_path / "converted" / "conversion_report.json").read_text())
    assert report["head"] == "EfficientVLMForImageTextRetrieval" and not report["unplaced"]


def test_inconsistent_block_shapes_are_an_error(vocab_file):
    state = official_state_dict(mlm=False)
    state["vision_encoder.encoder.layers.0.self_attn.k_proj.weight"] = torch.zeros(2 * D, V)
    with pytest.raises(ConversionError, match="k_proj.weight has shape"):
        convert_official_checkpoint(state, vocab_file, head_dim=D)
    with pytest.raises(ConversionError, match="head_dim"):
        convert_official_checkpoint(official_state_dict(mlm=False), vocab_file, head_dim=5)


def test_example_script_converts_a_checkpoint_file(tmp_path, vocab_file, capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("convert_xvlm_checkpoint",
                                                  ROOT / "examples" / "convert_xvlm_checkpoint.py")
    script = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, script)  # dataclasses look their module up
    spec.loader.exec_module(script)
    state = official_state_dict(seed=7)
    state["cls_head.0.weight"] = torch.zeros(2, 2)
    torch.save(state, tmp_path / "teacher.th")
    argv = ["--checkpoint", str(tmp_path / "teacher.th"), "--vocab_file", str(vocab_file), "--output_dir",
            str(tmp_path / "out"), "--head_dim", str(D)]
    assert script.run_script(script.main, [*argv, "--strict"], prog="convert_xvlm_checkpoint.py") == 2
    error = capsys.readouterr().err
    assert error.startswith("convert_xvlm_checkpoint.py: error: ") and "cls_head.0.weight" in error
    assert script.main(argv) == 0
    assert "NOT PLACED cls_head.0.weight" in capsys.readouterr().out
    model = EfficientVLMForPreTraining.from_pretrained(tmp_path / "out")
    assert model.config.vision_config.image_size == IMAGE
    assert (tmp_path / "out" / "processor_config.json").is_file()
