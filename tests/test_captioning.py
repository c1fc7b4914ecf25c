"""Captioning: generation with a key/value cache (the same sequences as without), the paper's prompt "a picture of "
(processor, collator, evaluation) and its label-smoothed loss."""

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import EncoderDecoderCache

from efficientvlm import (
    EfficientVLMConfig,
    EfficientVLMForCaptioning,
    EfficientVLMImageProcessor,
    EfficientVLMProcessor,
)
from efficientvlm import evaluation as evaluation_module
from efficientvlm.data import CaptioningCollator, ShapesConfig, build_tokenizer, make_caption_dataset
from efficientvlm.evaluation import evaluate_captioning
from tests.tiny_models import tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _gated(config: EfficientVLMConfig) -> EfficientVLMForCaptioning:
    """A model whose decoder carries pruning gates: a head switched off, a whole cross-attention block and an FFN
    block gated to 0, fractional block gates and FFN neuron gates."""
    model = EfficientVLMForCaptioning(config)
    text, fusion = model.efficientvlm.text_model.encoder.layers, model.efficientvlm.fusion_model.encoder.layers
    text[1].self_attn.head_gate = torch.tensor([1.0, 0.0])
    text[0].attention_gate = torch.tensor(0.7)
    fusion[0].cross_attention_gate = torch.tensor(0.0)
    fusion[0].mlp.neuron_gate = (torch.arange(40) % 3 != 0).float()
    fusion[1].attention_gate = torch.tensor(0.4)
    fusion[1].cross_attn.head_gate = torch.tensor([0.5, 1.0])
    fusion[1].ffn_gate = torch.tensor(0.0)
    return model


DECODERS = {
    "uniform": lambda: EfficientVLMForCaptioning(tiny_config()),
    # text layer 0: 1 head, no FFN in text layer 1; fusion layer 1 without cross-attention and FFN
    "heterogeneous": lambda: EfficientVLMForCaptioning(tiny_config(heterogeneous=True)),
    # the first decoder layer and the first fusion layer lack self- / cross-attention: cache slots are renumbered
    "first_blocks_absent": lambda: EfficientVLMForCaptioning(tiny_config(
        text_config={"num_attention_heads": [0, 2]}, fusion_config={"num_cross_attention_heads": [0, 2]})),
    # no decoder self-attention at all: each step reruns the prefix, only the image's keys and values are cached
    "no_self_attention": lambda: EfficientVLMForCaptioning(tiny_config(
        text_config={"num_attention_heads": 0}, fusion_config={"num_attention_heads": 0})),
    "gated": lambda: _gated(tiny_config()),
}


def _model(kind: str, dtype=torch.float64) -> EfficientVLMForCaptioning:
    torch.manual_seed(0)
    return DECODERS[kind]().eval().to(dtype)


def _pixels(batch: int = 2, seed: int = 1, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed)).to(dtype)


# --------------------------------------------------------------------------------------- cached == uncached


@pytest.mark.parametrize("num_beams", [1, 3])
@pytest.mark.parametrize("kind", list(DECODERS))
def test_cached_and_uncached_generation_give_the_same_sequences(kind, num_beams):
    model, pixel_values = _model(kind), _pixels()
    settings = dict(num_beams=num_beams, max_new_tokens=12, min_new_tokens=8, return_dict_in_generate=True,
                    output_scores=True)
    cached = model.generate(pixel_values=pixel_values, **settings)  # use_cache is on by default
    uncached = model.generate(pixel_values=pixel_values, use_cache=False, **settings)
    assert cached.sequences.shape[1] >= 9
    assert cached.sequences.tolist() == uncached.sequences.tolist()
    torch.testing.assert_close(torch.stack(cached.scores), torch.stack(uncached.scores))
    if num_beams > 1:
        torch.testing.assert_close(cached.sequences_scores, uncached.sequences_scores)
    assert isinstance(_returned_cache(cached), EncoderDecoderCache) and _returned_cache(uncached) is None


def _returned_cache(output):
    """generate()'s returned cache: ``cache`` from transformers 5.24, ``past_key_values`` before."""
    return output.get("cache", None) or output.get("past_key_values", None)


def test_beam_search_reorders_the_self_attention_cache_and_keeps_the_image_rows():
    model, pixel_values = _model("uniform"), _pixels(batch=3)
    chosen = []
    reorder = model._reorder_cache

    def record(cache, beam_idx):
        chosen.append(beam_idx.clone())
        return reorder(cache, beam_idx)

    model._reorder_cache = record
    cached = model.generate(pixel_values=pixel_values, num_beams=3, max_new_tokens=10, min_new_tokens=10)
    uncached = model.generate(pixel_values=pixel_values, num_beams=3, max_new_tokens=10, min_new_tokens=10,
                              use_cache=False)
    assert cached.tolist() == uncached.tolist()
    identity = torch.arange(9)
    assert any(not torch.equal(idx, identity) for idx in chosen)  # beams really were reordered
    assert all(torch.equal(idx // 3, identity // 3) for idx in chosen)  # always among one image's beams

    # _reorder_cache permutes the self-attention rows and leaves the image's (one row per image) alone
    ids = torch.randint(5, 60, (6, 4))
    image_embeds = model.efficientvlm.encode_image(_pixels(batch=2)).last_hidden_state
    cache = model(input_ids=ids, cache=model.cache_image(image_embeds)).cache
    keys = [layer.keys.clone() for layer in cache.self_attention_cache.layers]
    image_keys = [layer.keys for layer in cache.cross_attention_cache.layers]
    beam_idx = torch.tensor([2, 2, 0, 4, 3, 3])
    assert model._reorder_cache(cache, beam_idx) is cache
    for before, layer in zip(keys, cache.self_attention_cache.layers):
        torch.testing.assert_close(layer.keys, before[beam_idx])
    assert [layer.keys for layer in cache.cross_attention_cache.layers] == image_keys
    assert image_keys[0].shape[0] == 2


def test_sampled_return_sequences_share_the_image_rows_and_match_the_uncached_path():
    model, pixel_values = _model("heterogeneous"), _pixels()
    settings = dict(do_sample=True, num_beams=1, num_return_sequences=3, max_new_tokens=8, min_new_tokens=8, top_k=0)
    torch.manual_seed(5)
    cached = model.generate(pixel_values=pixel_values, **settings)
    torch.manual_seed(5)
    uncached = model.generate(pixel_values=pixel_values, use_cache=False, **settings)
    assert cached.shape[0] == 6 and cached.tolist() == uncached.tolist()


@pytest.mark.parametrize("kind", ["heterogeneous", "first_blocks_absent", "no_self_attention", "gated"])
def test_step_by_step_logits_with_a_cache_equal_one_full_forward(kind):
    model = _model(kind, torch.float32)
    pixel_values = _pixels(batch=3, dtype=torch.float32)
    ids = torch.randint(5, 60, (3, 7), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = 2
    mask = torch.ones_like(ids)
    mask[2, :2] = 0  # a left-padded row
    with torch.no_grad():
        full = model(pixel_values=pixel_values, input_ids=ids, attention_mask=mask).logits
        out = model(pixel_values=pixel_values, input_ids=ids[:, :3], attention_mask=mask[:, :3], use_cache=True)
        steps, cache = [out.logits], out.cache
        for i in range(3, 7):  # one token at a time; the mask covers the whole sequence so far
            start = model._cached_length(cache)  # 0 without self-attention: the whole text again (see forward)
            assert start == (0 if kind == "no_self_attention" else i)
            out = model(input_ids=ids[:, start:i + 1], attention_mask=mask[:, :i + 1], cache=cache)
            assert out.cache is cache
            steps.append(out.logits[:, -1:])
    real = mask.bool()  # (the queries of padding positions see no key: their outputs are arbitrary)
    torch.testing.assert_close(torch.cat(steps, dim=1)[real], full[real], rtol=1e-5, atol=1e-5)
    base = model.efficientvlm
    decoder = [*base.text_model.encoder.layers, *base.fusion_model.encoder.layers]
    # one slot per layer with self-attention; slot 0 holds the text length whichever layers lack it
    assert len(cache.self_attention_cache.layers) == sum(layer.self_attn is not None for layer in decoder)
    assert cache.get_seq_length() == (0 if kind == "no_self_attention" else 7)
    assert out.past_key_values is cache  # the name transformers used before 5.24 reads the same cache


def test_the_image_is_encoded_once_and_its_keys_and_values_once_per_image():
    model, pixel_values = _model("uniform"), _pixels(batch=2)
    vision_calls, key_rows = [], {}
    model.efficientvlm.vision_model.register_forward_hook(lambda *_: vision_calls.append(1))
    for index, layer in enumerate(model.efficientvlm.fusion_model.encoder.layers):
        layer.cross_attn.k_proj.register_forward_hook(
            lambda module, args, output, index=index: key_rows.setdefault(index, []).append(args[0].shape[0]))
    model.generate(pixel_values=pixel_values, num_beams=3, max_new_tokens=6, min_new_tokens=6)
    assert len(vision_calls) == 1
    assert key_rows == {0: [2], 1: [2]}  # once per generate call, one row per image (not per beam)

    vision_calls.clear()
    key_rows.clear()
    model.generate(pixel_values=pixel_values, num_beams=3, max_new_tokens=6, min_new_tokens=6, use_cache=False)
    assert len(vision_calls) == 1 and key_rows[0] == [6] * 6  # without the cache: every step, every beam


def test_one_image_row_serves_several_query_rows_exactly():
    """Queries of k rows per image against one cached image row == against the image repeated k times."""
    model = _model("heterogeneous", torch.float32)
    image_embeds = model.efficientvlm.encode_image(_pixels(batch=2, dtype=torch.float32)).last_hidden_state
    ids = torch.randint(5, 60, (6, 5), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        shared = model(input_ids=ids, cache=model.cache_image(image_embeds), output_attentions=True)
        repeated = model(input_ids=ids, image_embeds=image_embeds.repeat_interleave(3, dim=0), output_attentions=True)
    torch.testing.assert_close(shared.logits, repeated.logits, rtol=1e-5, atol=1e-5)
    shared_cross = shared.fusion_model_output.cross_attentions
    repeated_cross = repeated.fusion_model_output.cross_attentions
    torch.testing.assert_close(shared_cross[0], repeated_cross[0])
    assert shared_cross[1] is None  # fusion layer 1 has no cross-attention
    with pytest.raises(ValueError, match="cannot share"):
        model(input_ids=ids[:5], cache=model.cache_image(image_embeds))


def test_forward_cache_arguments_and_generation_inputs():
    model = _model("uniform")
    pixel_values, ids = _pixels(), torch.randint(5, 60, (2, 4))
    assert model(pixel_values=pixel_values, input_ids=ids).cache is None  # no cache unless asked for
    assert model(pixel_values=pixel_values, input_ids=ids, use_cache=False).cache is None
    cache = model(pixel_values=pixel_values, input_ids=ids, use_cache=True).cache
    assert isinstance(cache, EncoderDecoderCache) and cache.get_seq_length() == 4
    assert all(cache.is_updated.values()) and len(cache.is_updated) == 2
    # the older keyword is accepted too
    assert model(input_ids=ids[:, -1:], past_key_values=cache).cache.get_seq_length() == 5

    longer = torch.cat([ids, ids[:, :2]], dim=1)  # 4 + 1 cached positions, then one new token
    inputs = model.prepare_inputs_for_generation(longer[:, :6], cache=cache, use_cache=True)
    assert inputs["input_ids"].tolist() == longer[:, 5:6].tolist() and inputs["cache"] is cache
    assert torch.equal(model.prepare_inputs_for_generation(longer, use_cache=False)["input_ids"], longer)

    with pytest.raises(ValueError, match="cache_implementation='static'"):
        model.generate(pixel_values=pixel_values, cache_implementation="static")
    with pytest.raises(ValueError, match="whole sequence so far"):
        model(input_ids=ids[:, -1:], attention_mask=torch.ones(2, 1, dtype=torch.long), cache=cache)


def test_a_prompt_ending_with_sep_is_continued_and_an_inner_sep_is_refused():
    model, pixel_values = _model("uniform"), _pixels()
    prompt = torch.tensor([[2, 20, 21], [2, 20, 21]])
    settings = dict(num_beams=1, max_new_tokens=5, min_new_tokens=5)
    plain = model.generate(pixel_values=pixel_values, input_ids=prompt, **settings)
    with_sep = model.generate(pixel_values=pixel_values, input_ids=torch.cat([prompt, torch.full((2, 1), 3)], 1),
                              **settings)
    assert plain[:, :3].tolist() == prompt.tolist() and with_sep.tolist() == plain.tolist()
    with pytest.raises(ValueError, match=r"\[SEP\]"):
        model.generate(pixel_values=pixel_values, input_ids=torch.tensor([[2, 3, 20], [2, 20, 21]]), **settings)


# ------------------------------------------------------------------------------------------ label smoothing


def test_the_loss_is_label_smoothed_as_the_config_says(tmp_path):
    torch.manual_seed(0)
    config = tiny_config()
    assert config.caption_label_smoothing == 0.1  # the paper's captioning fine-tuning
    model = EfficientVLMForCaptioning(config).eval()
    ids = torch.randint(5, 60, (2, 6))
    labels = ids.clone()
    labels[:, :2] = -100
    labels[1, -1] = -100
    out = model(pixel_values=_pixels(dtype=torch.float32), input_ids=ids, labels=labels)
    targets = labels[:, 1:].flatten()
    logits = out.logits[:, :-1].flatten(0, 1)
    torch.testing.assert_close(out.loss, F.cross_entropy(logits, targets, ignore_index=-100, label_smoothing=0.1))
    assert not torch.isclose(out.loss, F.cross_entropy(logits, targets, ignore_index=-100))

    model.config.caption_label_smoothing = 0.0
    plain = model(pixel_values=_pixels(dtype=torch.float32), input_ids=ids, labels=labels).loss
    torch.testing.assert_close(plain, F.cross_entropy(logits, targets, ignore_index=-100))

    config.caption_label_smoothing = 0.2
    config.save_pretrained(tmp_path)
    assert EfficientVLMConfig.from_pretrained(tmp_path).caption_label_smoothing == 0.2
    with pytest.raises(ValueError, match="caption_label_smoothing"):
        tiny_config(caption_label_smoothing=1.0)


# ------------------------------------------------------------------------------------------------- prompt


SHAPES = ShapesConfig(image_size=32)


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    tokenizer = build_tokenizer(tmp_path_factory.mktemp("tok"), SHAPES)
    return EfficientVLMProcessor(EfficientVLMImageProcessor(size={"height": 32, "width": 32}), tokenizer)


def test_the_processor_gives_the_paper_prompt_and_strips_it(processor, tmp_path):
    tokenizer = processor.tokenizer
    words = tokenizer.convert_tokens_to_ids(["a", "picture", "of"])
    assert processor.caption_prompt == "a picture of "
    assert processor.caption_prompt_ids() == [tokenizer.cls_token_id, *words]  # [CLS] a picture of, no [SEP]
    assert processor.caption_prompt_ids("") == [tokenizer.cls_token_id]

    inputs = processor.caption_inputs([Image.new("RGB", (40, 30), "red"), Image.new("RGB", (8, 8))])
    assert inputs["pixel_values"].shape == (2, 3, 32, 32)
    assert inputs["input_ids"].tolist() == [[tokenizer.cls_token_id, *words]] * 2
    assert inputs["attention_mask"].tolist() == [[1] * 4] * 2

    red, circle = tokenizer.convert_tokens_to_ids(["red", "circle"])
    generated = torch.tensor([[tokenizer.cls_token_id, *words, red, circle, tokenizer.sep_token_id],
                              [tokenizer.cls_token_id, red, tokenizer.sep_token_id, tokenizer.pad_token_id, 0, 0, 0]])
    assert processor.decode_captions(generated) == ["red circle", "red"]  # the prompt only where it was generated
    assert processor.decode_captions(generated, prompt="") == ["a picture of red circle", "red"]

    processor.caption_prompt = "a"
    processor.save_pretrained(tmp_path)
    processor.caption_prompt = "a picture of "
    assert EfficientVLMProcessor.from_pretrained(tmp_path).caption_prompt == "a"


def test_generation_from_the_processor_prompt(processor):
    torch.manual_seed(0)
    config = tiny_config(text_config={"vocab_size": len(processor.tokenizer)})
    model = EfficientVLMForCaptioning(config).eval()
    inputs = processor.caption_inputs([Image.new("RGB", (32, 32), "blue")] * 2)
    generated = model.generate(**inputs, num_beams=3, max_new_tokens=5, min_new_tokens=5)
    assert generated[:, :4].tolist() == inputs["input_ids"].tolist()
    uncached = model.generate(**inputs, num_beams=3, max_new_tokens=5, min_new_tokens=5, use_cache=False)
    assert generated.tolist() == uncached.tolist()
    captions = processor.decode_captions(generated)
    assert captions == [processor.tokenizer.decode(row[4:], skip_special_tokens=True) for row in generated]


def test_the_collator_trains_after_the_prompt_and_skips_it_in_the_loss(processor):
    rows = [{"image": Image.new("RGB", (32, 32)), "caption": "red circle"},
            {"image": Image.new("RGB", (32, 32)), "caption": ["two blue squares", "ignored"]}]
    batch = CaptioningCollator(processor)(rows)
    prompt = processor.caption_prompt_ids()
    assert batch["input_ids"][:, :4].tolist() == [prompt, prompt]
    assert batch["labels"][:, :4].eq(-100).all()  # [CLS] and the prompt's tokens are never predicted
    kept = batch["attention_mask"].bool()
    kept[:, :4] = False
    assert torch.equal(batch["labels"][kept], batch["input_ids"][kept])
    assert batch["labels"][~batch["attention_mask"].bool()].eq(-100).all()
    assert processor.tokenizer.decode(batch["input_ids"][1], skip_special_tokens=True) == "a picture of two blue squares"

    none = CaptioningCollator(processor, prompt="")(rows)
    assert none["input_ids"][0, 1:3].tolist() == processor.tokenizer.convert_tokens_to_ids(["red", "circle"])
    with pytest.raises(ValueError, match="does not start with the tokens of prompt"):
        CaptioningCollator(processor, prompt="a picture of")(rows)  # "ofred": no space after the prompt


def test_evaluation_generates_from_the_prompt_and_scores_captions_without_it(processor, monkeypatch):
    torch.manual_seed(0)
    config = tiny_config(text_config={"vocab_size": len(processor.tokenizer)})
    model = EfficientVLMForCaptioning(config)
    dataset = make_caption_dataset(3, split_seed="test", config=SHAPES, captions_per_image=2)
    prompts, scored = [], []
    generate = model.generate

    def spy_generate(**kwargs):
        prompts.append(kwargs["input_ids"])
        return generate(**kwargs)

    def spy_cider(predictions, references):
        scored.extend(predictions)
        return 0.0

    model.generate = spy_generate
    monkeypatch.setattr(evaluation_module, "cider_d", spy_cider)
    evaluate_captioning(model, processor, dataset, batch_size=2, max_new_tokens=4, num_beams=1, min_length=0)
    assert [p.tolist() for p in prompts] == [[processor.caption_prompt_ids()] * 2, [processor.caption_prompt_ids()]]
    assert len(scored) == 3 and not any(caption.startswith("a picture of") for caption in scored)
