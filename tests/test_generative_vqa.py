"""Generative VQA (the paper's answer decoder): the weighted answer likelihood, answer ranking, generation."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F

from efficientvlm import EfficientVLMForGenerativeVQA, EfficientVLMGenerativeVQAConfig
from tests.tiny_models import GENERATIVE_ANSWERS, tiny_generative_config, tiny_generative_inputs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_model(heterogeneous: bool = False, seed: int = 0, **overrides) -> EfficientVLMForGenerativeVQA:
    torch.manual_seed(seed)
    return EfficientVLMForGenerativeVQA(tiny_generative_config(heterogeneous, **overrides)).eval()


def question_inputs(inputs: dict) -> dict:
    return {key: inputs[key] for key in ("pixel_values", "input_ids", "attention_mask")}


# ---------------------------------------------------------------------------------------------------- config


def test_config_student_and_validation():
    student = EfficientVLMGenerativeVQAConfig.student()
    assert (student.vision_config.num_hidden_layers, student.text_config.num_hidden_layers,
            student.fusion_config.num_hidden_layers, student.decoder_config.num_hidden_layers) == (6, 3, 3, 3)
    assert EfficientVLMGenerativeVQAConfig().decoder_config.num_hidden_layers == 6  # the teacher's
    assert student.decoder_config.encoder_hidden_size == student.fusion_config.hidden_size
    assert student.layer_sizes()["decoder"]["num_cross_attention_heads"] == [12, 12, 12]
    with pytest.raises(ValueError, match="decoder_config.hidden_size=32 differs from text_config.hidden_size"):
        tiny_generative_config(decoder_config={"hidden_size": 32})
    with pytest.raises(ValueError, match="answer_token_ids has 1 entries but id2label 6 answers"):
        tiny_generative_config(answer_token_ids=[[10]])
    with pytest.raises(ValueError, match="rank_k must be an int >= 1"):
        tiny_generative_config(rank_k=0)


# ---------------------------------------------------------------------------------------------------- loss


def test_loss_is_the_weighted_answer_likelihood_by_hand():
    """With the LM head's weights at 0, every position predicts softmax(bias): the loss is a sum of logs."""
    model = make_model()
    vocab = model.config.text_config.vocab_size
    probabilities = torch.full((vocab,), 0.125 / (vocab - 4))
    probabilities[[3, 12, 13, 20]] = torch.tensor([0.5, 0.25, 0.0625, 0.0625])  # [SEP], red, blue, circle
    with torch.no_grad():
        model.lm_head.decoder.weight.zero_()
        model.lm_head.decoder.bias.copy_(probabilities.log())
    inputs = tiny_generative_inputs(model.config)
    log = math.log
    # question 0: 0.7 * "red circle" [SEP] + 0.3 * "red" [SEP]; question 1: "yes" (token 10) [SEP];
    # question 2: 0.5 * "blue square" (13, 21, 22) [SEP] + 0.3 * "blue" [SEP] + 0.2 * "no" (11) [SEP]
    other = 0.125 / (vocab - 4)
    log_p = {"red circle": log(0.25) + log(0.0625) + log(0.5), "red": log(0.25) + log(0.5),
             "yes": log(other) + log(0.5), "blue square": log(0.0625) + 2 * log(other) + log(0.5),
             "blue": log(0.0625) + log(0.5), "no": log(other) + log(0.5)}
    expected = -(0.7 * log_p["red circle"] + 0.3 * log_p["red"] + 1.0 * log_p["yes"]
                 + 0.5 * log_p["blue square"] + 0.3 * log_p["blue"] + 0.2 * log_p["no"]) / 3
    with torch.no_grad():
        outputs = model(**inputs)
    assert outputs.loss.item() == pytest.approx(expected, rel=1e-5)
    assert outputs.answer_log_likelihood[0].tolist() == pytest.approx([log_p["red circle"], log_p["red"], 0.0],
                                                                      rel=1e-5)


def test_loss_equals_a_token_by_token_computation_on_a_random_model():
    model = make_model(heterogeneous=True)
    inputs = tiny_generative_inputs(model.config)
    outputs = model(**inputs)
    ids, mask, weights = inputs["answer_input_ids"], inputs["answer_attention_mask"], inputs["answer_weights"]
    total = 0.0
    for b in range(ids.shape[0]):
        for a in range(ids.shape[1]):
            for t in range(1, ids.shape[2]):
                if mask[b, a, t]:
                    log_probs = F.log_softmax(outputs.answer_logits[b, a, t - 1].double(), dim=-1)
                    total -= weights[b, a].item() * log_probs[ids[b, a, t]].item()
    assert outputs.loss.item() == pytest.approx(total / ids.shape[0], rel=1e-5)
    outputs.loss.backward()
    decoder_grads = [p.grad for p in model.answer_decoder.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in decoder_grads)
    assert model.efficientvlm.vision_model.embeddings.patch_embedding.weight.grad.abs().sum() > 0


def test_padding_answers_and_question_padding_do_not_change_an_answer_s_score():
    model = make_model()
    inputs = tiny_generative_inputs(model.config)
    with torch.no_grad():
        full = model(**inputs).answer_log_likelihood
        first_only = {**inputs, "answer_input_ids": inputs["answer_input_ids"][:, :1],
                      "answer_attention_mask": inputs["answer_attention_mask"][:, :1]}
        first_only.pop("answer_weights")
        alone = model(**first_only).answer_log_likelihood
        padded = inputs["attention_mask"] == 0  # the last question is padded: change what is under the padding
        first_only["input_ids"] = inputs["input_ids"].masked_fill(padded, 7)
        changed = model(**first_only).answer_log_likelihood
    torch.testing.assert_close(alone[:, 0], full[:, 0], rtol=0, atol=1e-5)
    torch.testing.assert_close(changed, alone, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------------- ranking


def brute_force_scores(model, inputs) -> torch.Tensor:
    """Every answer of the list scored on its own, unpadded: (batch, num_answers) log-likelihoods."""
    tc = model.config.text_config
    batch = inputs["input_ids"].shape[0]
    columns = []
    for tokens in model.config.answer_token_ids:
        ids = torch.tensor([tc.bos_token_id, *tokens, tc.eos_token_id]).expand(batch, -1)
        with torch.no_grad():
            columns.append(model(**question_inputs(inputs), answer_input_ids=ids).answer_log_likelihood[:, 0])
    return torch.stack(columns, dim=1)


@pytest.mark.parametrize("heterogeneous", [False, True], ids=["uniform", "heterogeneous"])
def test_ranking_with_k_the_list_size_equals_brute_force_scoring(heterogeneous):
    model = make_model(heterogeneous)
    inputs = tiny_generative_inputs(model.config)
    expected = brute_force_scores(model, inputs)
    with torch.no_grad():
        outputs = model(**question_inputs(inputs), k=len(GENERATIVE_ANSWERS))
    torch.testing.assert_close(outputs.logits, expected, rtol=0, atol=1e-5)
    assert outputs.ranked_answer_ids.tolist() == expected.argsort(dim=1, descending=True).tolist()
    assert outputs.logits.argmax(-1).tolist() == expected.argmax(-1).tolist()


def test_ranking_re_scores_the_k_answers_with_the_most_likely_first_token():
    model = make_model(rank_k=3)
    inputs = tiny_generative_inputs(model.config)
    expected = brute_force_scores(model, inputs)
    with torch.no_grad():
        scores = model(**question_inputs(inputs)).logits  # k = config.rank_k = 3
        question = model.efficientvlm(**question_inputs(inputs)).last_hidden_state
        start = torch.full((3, 1), model.config.text_config.bos_token_id)
        first = model.decode(start, None, question, inputs["attention_mask"])[0][:, 0].log_softmax(-1)
    first_tokens = torch.tensor([tokens[0] for tokens in GENERATIVE_ANSWERS.values()])
    chosen = first[:, first_tokens].topk(3, dim=1).indices
    for row in range(3):
        kept = sorted(chosen[row].tolist())
        assert torch.isfinite(scores[row]).nonzero().flatten().tolist() == kept
        torch.testing.assert_close(scores[row, kept], expected[row, kept], rtol=0, atol=1e-5)


def test_ranking_without_an_answer_list_says_how_to_set_it():
    model = make_model(answer_token_ids=None)
    inputs = tiny_generative_inputs(model.config)
    with pytest.raises(ValueError, match="set_answer_list"):
        model(**question_inputs(inputs))


def test_set_answer_list_tokenises_the_answers(tmp_path):
    from tests.utils import make_tiny_tokenizer

    tokenizer = make_tiny_tokenizer(tmp_path)
    model = make_model(text_config={"vocab_size": len(tokenizer)})
    model.set_answer_list(["yes", "red circle", "two"], tokenizer)
    assert model.config.id2label == {0: "yes", 1: "red circle", 2: "two"}
    assert model.config.answer_token_ids == [tokenizer.convert_tokens_to_ids(t.split()) for t in
                                             ("yes", "red circle", "two")]
    ids, mask = model.answer_candidates()
    assert ids[1].tolist() == [2, *tokenizer.convert_tokens_to_ids(["red", "circle"]), 3]
    assert mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 0]]
    with pytest.raises(ValueError, match="distinct answers"):
        model.set_answer_list(["yes", "yes"], tokenizer)


# ---------------------------------------------------------------------------------------------------- generation


def test_generate_is_greedy_decoding_from_cls():
    model = make_model()
    inputs = tiny_generative_inputs(model.config)
    with torch.no_grad():
        generated = model.generate(**question_inputs(inputs), max_length=5)
        question = model.efficientvlm(**question_inputs(inputs)).last_hidden_state
        ids = torch.full((3, 1), model.config.text_config.bos_token_id)
        for _ in range(4):
            logits, _ = model.decode(ids, None, question, inputs["attention_mask"])
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    eos = model.config.text_config.eos_token_id
    for row, expected in zip(generated.tolist(), ids.tolist()):
        if eos in expected:  # after [SEP] the generator pads
            expected = expected[:expected.index(eos) + 1]
        assert row[:len(expected)] == expected
    assert generated.shape[1] <= 5


# ---------------------------------------------------------------------------------------------------- key/value cache


def cache_case(kind: str):
    """A model (float64, so that cached and uncached paths agree to rounding) and a context that applies its gates.

    ``gated``: the decoder pattern of the equality test applied as masks (heads all 0, FFN removed, ...);
    ``materialized``: the same pattern removed (the decoder keeps no self-attention at all: every step reruns the
    answer so far and only the question's keys and values are cached); ``materialized_partial``: random partial
    gates removed (the decoder keeps some self-attention heads)."""
    from efficientvlm.pruning import ModalAdaptiveL0Module, gates_applied, materialize
    from tests.test_pruning_core import random_pattern, set_pattern

    model = make_model(heterogeneous=kind == "heterogeneous")
    if kind in ("uniform", "heterogeneous"):
        return model.double(), contextlib.nullcontext
    l0 = ModalAdaptiveL0Module(model.config, 0.5, prune=("heads", "ffn", "blocks"))
    set_pattern(l0, random_pattern(l0, seed=4) if kind == "materialized_partial" else decoder_pattern(l0))
    zs = l0.eval().deterministic()
    if kind == "gated":
        model = model.double()
        return model, lambda: gates_applied(model, {m: [{k: g.double() for k, g in layer.items()} for layer in layers]
                                                    for m, layers in zs.items()})
    return materialize(model, zs).eval().double(), contextlib.nullcontext


CACHE_CASES = ["uniform", "heterogeneous", "gated", "materialized", "materialized_partial"]


def float64_inputs(model) -> dict:
    inputs = question_inputs(tiny_generative_inputs(model.config))
    return {**inputs, "pixel_values": inputs["pixel_values"].double()}


@pytest.mark.parametrize("num_beams", [1, 3])
@pytest.mark.parametrize("kind", CACHE_CASES)
def test_cached_and_uncached_generation_give_the_same_sequences_and_scores(kind, num_beams):
    model, gates = cache_case(kind)
    inputs = float64_inputs(model)
    settings = dict(num_beams=num_beams, max_new_tokens=6, min_new_tokens=5, return_dict_in_generate=True,
                    output_scores=True, max_length=None)
    with gates():
        cached = model.generate(**inputs, **settings)  # use_cache is on by default
        uncached = model.generate(**inputs, use_cache=False, **settings)
    assert cached.sequences.shape[1] >= 6  # [CLS] and at least 5 new tokens
    assert cached.sequences.tolist() == uncached.sequences.tolist()
    torch.testing.assert_close(torch.stack(cached.scores), torch.stack(uncached.scores))
    if num_beams > 1:
        torch.testing.assert_close(cached.sequences_scores, uncached.sequences_scores)
    returned = cached.get("cache", None) or cached.get("past_key_values", None)
    assert returned is not None and (uncached.get("cache", None) or uncached.get("past_key_values", None)) is None


@pytest.mark.parametrize("kind", CACHE_CASES)
def test_ranking_with_and_without_the_cache_is_identical_and_equals_brute_force(kind):
    model, gates = cache_case(kind)
    inputs = float64_inputs(model)
    everything = len(GENERATIVE_ANSWERS)
    with gates():
        expected = brute_force_scores(model, inputs)
        with torch.no_grad():
            for k in (2, everything):
                cached, uncached = model(**inputs, k=k), model(**inputs, k=k, use_cache=False)
                assert cached.ranked_answer_ids.tolist() == uncached.ranked_answer_ids.tolist()
                assert torch.equal(torch.isinf(cached.logits), torch.isinf(uncached.logits))
                torch.testing.assert_close(cached.logits, uncached.logits, rtol=0, atol=1e-5)
            question = model.efficientvlm(**inputs).last_hidden_state
            chunked = [model.rank_answers(question, inputs["attention_mask"], everything, chunk_size=size,
                                          use_cache=use_cache) for size in (1, everything) for use_cache in (True, False)]
    torch.testing.assert_close(cached.logits, expected, rtol=0, atol=1e-5)  # k = the list's size: brute force
    assert cached.ranked_answer_ids.tolist() == expected.argsort(dim=1, descending=True).tolist()
    for scores, ranked in chunked:  # one question per decoder pass, or every candidate of a question at once
        torch.testing.assert_close(scores, expected, rtol=0, atol=1e-5)
        assert ranked.tolist() == cached.ranked_answer_ids.tolist()


def count_key_rows(model) -> dict:
    """Rows through every decoder cross-attention key projection, per layer."""
    rows = {}
    for index, layer in enumerate(model.answer_decoder.encoder.layers):
        if layer.cross_attn is not None:
            layer.cross_attn.k_proj.register_forward_hook(
                lambda module, args, output, index=index: rows.setdefault(index, []).append(args[0].shape[0]))
    return rows


def test_the_question_s_keys_and_values_are_computed_once_per_question():
    model = make_model()
    inputs = question_inputs(tiny_generative_inputs(model.config))
    rows = count_key_rows(model)
    with torch.no_grad():
        model(**inputs, k=4)
    assert rows == {0: [3], 1: [3]}  # once for the first-token step and the 4 candidates of each of 3 questions
    rows.clear()
    with torch.no_grad():
        model(**inputs, k=4, use_cache=False)
    assert rows == {0: [3, 12], 1: [3, 12]}  # without the cache: again for every candidate
    rows.clear()
    model.generate(**inputs, num_beams=3, max_new_tokens=4, min_new_tokens=4)
    assert rows == {0: [3], 1: [3]}  # once per generate call, one row per question (not per beam)
    rows.clear()
    model.generate(**inputs, num_beams=3, max_new_tokens=4, min_new_tokens=4, use_cache=False)
    assert rows[0] == [9] * 4  # without the cache: every step, every beam


def test_step_by_step_decoding_with_a_cache_equals_one_full_pass():
    from transformers import EncoderDecoderCache

    model = make_model(heterogeneous=True)
    inputs = question_inputs(tiny_generative_inputs(model.config))
    ids = torch.randint(5, 40, (3, 6), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = model.config.text_config.bos_token_id
    mask = torch.ones_like(ids)
    with torch.no_grad():
        question = model.efficientvlm(**inputs).last_hidden_state
        q_mask = inputs["attention_mask"]
        full = model(decoder_input_ids=ids, decoder_attention_mask=mask, question_embeds=question,
                     question_attention_mask=q_mask).logits
        out = model(decoder_input_ids=ids[:, :2], decoder_attention_mask=mask[:, :2],
                    cache=model.cache_question(question), question_attention_mask=q_mask)
        steps, cache = [out.logits], out.cache
        for i in range(2, 6):  # one token at a time; the mask covers the whole answer so far
            out = model(decoder_input_ids=ids[:, i:i + 1], decoder_attention_mask=mask[:, :i + 1], cache=cache,
                        question_attention_mask=q_mask)
            assert out.cache is cache and cache.get_seq_length() == i + 1
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
    assert isinstance(cache, EncoderDecoderCache) and out.past_key_values is cache
    # the decoder's layer 1 has no cross-attention: one cross slot; both layers have self-attention
    assert len(cache.cross_attention_cache.layers) == 1 and len(cache.self_attention_cache.layers) == 2
    assert model(decoder_input_ids=ids, question_embeds=question).cache is None  # no cache unless asked for
    with pytest.raises(ValueError, match="needs question_embeds"):
        model(decoder_input_ids=ids)


def test_candidates_sharing_a_question_row_need_a_mask_over_the_keys_only():
    model = make_model()
    inputs = question_inputs(tiny_generative_inputs(model.config))
    with torch.no_grad():
        question = model.efficientvlm(**inputs).last_hidden_state
        ids = torch.full((6, 1), model.config.text_config.bos_token_id)
        shared = model(decoder_input_ids=ids, cache=model.cache_question(question),
                       question_attention_mask=inputs["attention_mask"]).logits
        repeated = model(decoder_input_ids=ids, question_embeds=question.repeat_interleave(2, 0),
                         question_attention_mask=inputs["attention_mask"].repeat_interleave(2, 0)).logits
        torch.testing.assert_close(shared, repeated, rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match=r"mask must cover the keys only, one row per key row \(3, 1, 1, keys\)"):
            model(decoder_input_ids=ids, cache=model.cache_question(question),
                  question_attention_mask=inputs["attention_mask"].repeat_interleave(2, 0))


def test_init_decoder_from_fusion_copies_the_fusion_layers():
    model = make_model()
    model.init_decoder_from_fusion()
    fusion = model.efficientvlm.fusion_model.encoder.layers
    for decoder_layer, fusion_layer in zip(model.answer_decoder.encoder.layers, fusion):
        for name, value in fusion_layer.state_dict().items():
            if not name.startswith(("cross_attn.k_proj", "cross_attn.v_proj")):  # image width 32, question 24
                torch.testing.assert_close(decoder_layer.state_dict()[name], value, rtol=0, atol=0)
    torch.testing.assert_close(model.answer_decoder.embeddings.word_embeddings.weight,
                               model.efficientvlm.text_model.embeddings.word_embeddings.weight, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("heterogeneous", [False, True], ids=["uniform", "heterogeneous"])
def test_save_and_strict_reload_give_identical_outputs(heterogeneous, tmp_path):
    from transformers import AutoConfig, AutoModel, AutoModelForVisualQuestionAnswering

    from efficientvlm import EfficientVLMModel

    model = make_model(heterogeneous)
    inputs = tiny_generative_inputs(model.config)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "generation_config.json").exists()
    reloaded, info = EfficientVLMForGenerativeVQA.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    auto = AutoModelForVisualQuestionAnswering.from_pretrained(tmp_path)
    assert type(auto) is EfficientVLMForGenerativeVQA and type(AutoConfig.from_pretrained(tmp_path)) is \
        EfficientVLMGenerativeVQAConfig
    assert type(AutoModel.from_pretrained(tmp_path)) is EfficientVLMModel  # the bare encoders, as for every head
    assert reloaded.config.layer_sizes() == model.config.layer_sizes()
    assert reloaded.config.answer_token_ids == model.config.answer_token_ids
    assert reloaded.lm_head.decoder.weight.data_ptr() == reloaded.answer_decoder.embeddings.word_embeddings.weight \
        .data_ptr()  # tied
    with torch.no_grad():
        for other in (reloaded.eval(), auto.eval()):
            torch.testing.assert_close(other(**inputs).answer_logits, model(**inputs).answer_logits, rtol=0, atol=1e-6)
            torch.testing.assert_close(other(**question_inputs(inputs)).logits,
                                       model(**question_inputs(inputs)).logits, rtol=0, atol=1e-6)


def test_a_decoder_config_that_does_not_match_the_weights_is_refused(tmp_path):
    import json

    make_model().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["decoder_config"]["intermediate_size"] = [40, 8]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"decoder layer 1, decoder_config.intermediate_size\[1\] = 8"):
        EfficientVLMForGenerativeVQA.from_pretrained(tmp_path)


# ---------------------------------------------------------------------------------------------------- data, pipeline


@pytest.fixture(scope="module")
def shapes_checkpoint(tmp_path_factory):
    """A tiny generative model on the shapes vocabulary, its processor, the answer list, and a saved folder."""
    from efficientvlm import EfficientVLMImageProcessor, EfficientVLMProcessor
    from efficientvlm.data import ShapesConfig, answer_vocabulary, build_tokenizer

    root = tmp_path_factory.mktemp("generative")
    shapes = ShapesConfig(image_size=32)
    tokenizer = build_tokenizer(root / "tok", shapes)
    special = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
               "bos_token_id": tokenizer.cls_token_id, "eos_token_id": tokenizer.sep_token_id,
               "mask_token_id": tokenizer.mask_token_id}
    model = make_model(text_config=special, answer_token_ids=None, id2label=None)
    answers = answer_vocabulary(shapes)
    model.set_answer_list(answers, tokenizer)
    processor = EfficientVLMProcessor(EfficientVLMImageProcessor(size={"height": 32, "width": 32}), tokenizer)
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    return root / "model", model, processor, shapes


def test_the_collator_builds_weighted_answers_from_the_classifier_s_annotations(shapes_checkpoint):
    from PIL import Image

    from efficientvlm.data import GenerativeVQACollator, VQACollator

    _, model, processor, _ = shapes_checkpoint
    image = Image.new("RGB", (32, 32), "red")
    rows = [{"image": image, "question": "what color is the circle?", "answers": ["red"] * 7 + ["Blue", "blue", "2"]},
            {"image": image, "question": "is there a square?", "answers": ["yes"] * 10},
            {"image": image, "question": "how many circles?", "answers": []}]
    batch = GenerativeVQACollator(processor)(rows)
    tokenizer = processor.tokenizer
    torch.testing.assert_close(batch["answer_weights"], torch.tensor([[0.7, 0.2, 0.1], [1.0, 0, 0], [0, 0, 0]]))
    first = [tokenizer.decode(ids[mask.bool()]) for ids, mask in zip(batch["answer_input_ids"][0],
                                                                     batch["answer_attention_mask"][0])]
    assert first == ["[CLS] red [SEP]", "[CLS] blue [SEP]", "[CLS] 2 [SEP]"]
    assert batch["answer_attention_mask"][2].sum() == 0
    classifier_batch = VQACollator(processor, {"red": 0})(rows)
    for key in ("input_ids", "attention_mask", "pixel_values"):  # the same question and image tensors
        torch.testing.assert_close(batch[key], classifier_batch[key])
    scores = GenerativeVQACollator(processor, weight_rule="official")(rows)["answer_weights"]
    assert scores[0].tolist() == pytest.approx([1.0, 0.6, 0.3])
    assert "answer_weights" not in GenerativeVQACollator(processor)(rows[2:])
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)


def test_the_pipeline_answers_with_the_ranking_scores(shapes_checkpoint):
    from PIL import Image
    from transformers import pipeline

    from efficientvlm import EfficientVLMVQAPipeline

    folder, model, processor, _ = shapes_checkpoint
    vqa = pipeline("visual-question-answering", model=str(folder))
    assert isinstance(vqa, EfficientVLMVQAPipeline) and isinstance(vqa.model, EfficientVLMForGenerativeVQA)
    image = Image.new("RGB", (32, 32), "blue")
    answers = vqa(image, "what color is the circle?", top_k=3)
    with torch.no_grad():
        logits = model(**processor(images=image, text="what color is the circle?", return_tensors="pt")).logits[0]
    probabilities = logits.softmax(-1)
    expected = probabilities.argsort(descending=True)[:3]
    assert [a["answer"] for a in answers] == [model.config.id2label[int(i)] for i in expected]
    assert [a["score"] for a in answers] == pytest.approx(probabilities[expected].tolist(), abs=1e-5)
    everything = vqa(image, "what color is the circle?", top_k=1000)  # at most the rank_k re-scored answers
    assert len(everything) == min(model.config.rank_k, len(model.config.id2label))
    assert sum(a["score"] for a in everything) == pytest.approx(1.0, abs=1e-5)


def test_evaluate_vqa_reads_the_ranked_answers(shapes_checkpoint):
    from efficientvlm.data import make_vqa_dataset
    from efficientvlm.evaluation import evaluate_vqa, predict_vqa

    _, model, processor, shapes = shapes_checkpoint
    data = make_vqa_dataset(6, split_seed="test", config=shapes)
    predictions = predict_vqa(model, processor, data, batch_size=4)
    with torch.no_grad():
        batch = processor(images=[data[i]["image"] for i in range(6)], text=[data[i]["question"] for i in range(6)],
                          padding="longest", return_tensors="pt")
        expected = [model.config.id2label[int(i)] for i in model(**batch).ranked_answer_ids[:, 0]]
    assert predictions == expected
    assert 0.0 <= evaluate_vqa(model, processor, data)["vqa_accuracy"] <= 1.0


REMOTE_CODE_SCRIPT = r'''
import json, sys


class BlockEfficientVLM:
    """Make efficientvlm unimportable, even though it is installed in site-packages."""

    def find_spec(self, name, path=None, target=None):
        if name == "efficientvlm" or name.startswith("efficientvlm."):
            raise ImportError("efficientvlm is blocked in this process")


sys.meta_path.insert(0, BlockEfficientVLM())
import torch
from PIL import Image
from transformers import AutoConfig, AutoModelForVisualQuestionAnswering, AutoProcessor, pipeline

folder, question = sys.argv[1], sys.argv[2]
image = Image.new("RGB", (32, 32), "blue")
model = AutoModelForVisualQuestionAnswering.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
with torch.no_grad():
    inputs = processor(images=image, text=question, return_tensors="pt")
    logits = model(**inputs).logits[0]
    generated = model.generate(**inputs, max_length=4)
answers = pipeline("visual-question-answering", model=folder, trust_remote_code=True)(image, question, top_k=2)
print(json.dumps({"model": f"{type(model).__module__}.{type(model).__name__}",
                  "config": type(AutoConfig.from_pretrained(folder, trust_remote_code=True)).__name__,
                  "logits": logits.tolist(), "generated": generated.tolist(), "answers": answers,
                  "efficientvlm_imported": any(name.split(".")[0] == "efficientvlm" for name in sys.modules)}))
'''


def test_a_published_folder_answers_with_remote_code_without_the_library(shapes_checkpoint, tmp_path):
    import json
    import os
    import subprocess
    import sys

    from PIL import Image

    from efficientvlm.hub import push_to_hub

    _, model, processor, _ = shapes_checkpoint
    folder = tmp_path / "repo"
    result = push_to_hub(model, processor, "org/generative-vqa", dry_run_dir=folder, example_question="what color "
                         "is the circle?")
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForVisualQuestionAnswering"] == \
        "modeling_efficientvlm.EfficientVLMForGenerativeVQA"
    assert config["auto_map"]["AutoConfig"] == "configuration_efficientvlm.EfficientVLMGenerativeVQAConfig"
    assert "visual-question-answering" in config["custom_pipelines"]
    card = (folder / "README.md").read_text()
    assert "generative answer decoder" in card and "logits.softmax(-1)" in card and "decoder" in card
    assert "generation_config.json" in result.files

    question = "what color is the circle?"
    (tmp_path / "check.py").write_text(REMOTE_CODE_SCRIPT)
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "HF_"))}
    environment.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), TOKENIZERS_PARALLELISM="false",
                       OMP_NUM_THREADS="1")
    completed = subprocess.run([sys.executable, "-I", str(tmp_path / "check.py"), str(folder), question],
                               cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-5000:]
    remote = json.loads(completed.stdout.strip().splitlines()[-1])
    assert remote["efficientvlm_imported"] is False
    assert remote["model"].startswith("transformers_modules.")
    assert remote["model"].endswith("modeling_efficientvlm.EfficientVLMForGenerativeVQA")
    assert remote["config"] == "EfficientVLMGenerativeVQAConfig"
    image = Image.new("RGB", (32, 32), "blue")
    with torch.no_grad():
        inputs = processor(images=image, text=question, return_tensors="pt")
        logits = model(**inputs).logits[0]
        generated = model.generate(**inputs, max_length=4)
    torch.testing.assert_close(torch.tensor(remote["logits"]), logits, rtol=1e-4, atol=1e-5)
    assert remote["generated"] == generated.tolist()
    best = logits.softmax(-1).argsort(descending=True)[:2]
    assert [a["answer"] for a in remote["answers"]] == [model.config.id2label[int(i)] for i in best]


# ---------------------------------------------------------------------------------------------------- pruning


def decoder_pattern(l0) -> dict:
    """Random partial gates everywhere, plus the special cases in the decoder: heads all 0, an FFN removed by its
    block gate, an empty cross-attention and a decoder layer with nothing left."""
    from tests.test_pruning_core import random_pattern

    pattern = random_pattern(l0, seed=3)
    decoder = pattern["decoder"]
    decoder[0]["heads"] = torch.zeros(2)                          # self-attention vanishes through its heads
    decoder[0]["ffn_block"] = torch.zeros(1)                      # FFN removed by its block gate
    decoder[0]["cross_heads"] = torch.tensor([1.0, 0.0])
    decoder[1] = {key: torch.zeros_like(bits) for key, bits in decoder[1].items()}
    decoder[1]["attention_block"] = torch.ones(1)                 # heads all 0 under an open block gate
    pattern["fusion"][1]["cross_heads"] = torch.zeros(2)          # the question states change too
    return pattern


def test_decoder_gates_masked_equals_materialized_equals_reloaded(tmp_path):
    from efficientvlm.pruning import ModalAdaptiveL0Module, gates_applied, materialize, prunable_parameter_count
    from efficientvlm.pruning.budget import sparsity_of
    from tests.test_pruning_core import assert_same_outputs, set_pattern

    model = make_model()
    l0 = ModalAdaptiveL0Module(model.config, 0.5, prune=("heads", "ffn", "blocks"))
    assert tuple(l0.gates) == ("vision", "text", "fusion", "decoder")  # the decoder is gated by default
    set_pattern(l0, decoder_pattern(l0))
    zs = l0.eval().deterministic()
    inputs = tiny_generative_inputs(model.config)
    ranking = {**question_inputs(inputs), "k": len(GENERATIVE_ANSWERS)}

    with torch.no_grad():
        dense, dense_ranking = model(**inputs), model(**ranking)
        with gates_applied(model, zs):
            masked, masked_ranking = model(**inputs), model(**ranking)
        pruned = materialize(model, zs)
        materialized, materialized_ranking = pruned(**inputs), pruned(**ranking)
    assert (masked.answer_logits - dense.answer_logits).abs().max() > 1e-3
    assert (masked_ranking.logits - dense_ranking.logits).abs().max() > 1e-3
    assert_same_outputs(masked, materialized)
    assert_same_outputs(masked_ranking, materialized_ranking)

    sizes = pruned.config.decoder_config
    assert (sizes.num_attention_heads, sizes.num_cross_attention_heads, sizes.intermediate_size)[0][0] == 0
    assert sizes.intermediate_size[0] == 0 and sizes.num_cross_attention_heads[0] == 1
    assert sizes.num_attention_heads[1] == sizes.num_cross_attention_heads[1] == sizes.intermediate_size[1] == 0
    empty = pruned.answer_decoder.encoder.layers[1]
    assert empty.self_attn is empty.cross_attn is empty.mlp is None
    # the exact size the gates give is what was materialised, and the decoder is counted in it
    counted = prunable_parameter_count(pruned)
    assert set(counted) == {"vision", "text", "fusion", "decoder"}
    assert float(l0.expected_size(zs=zs)["overall"]) == sum(counted.values())
    assert pruned.config.pruning_info["per_modality"]["decoder"]["params_after"] == counted["decoder"]
    assert sparsity_of(zs, model.config)["decoder"] == pytest.approx(
        1 - counted["decoder"] / prunable_parameter_count(model)["decoder"])

    pruned.save_pretrained(tmp_path)
    reloaded, info = EfficientVLMForGenerativeVQA.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    with torch.no_grad():
        assert_same_outputs(masked, reloaded.eval()(**inputs))
        assert_same_outputs(masked_ranking, reloaded(**ranking))
    assert reloaded.config.layer_sizes() == pruned.config.layer_sizes()


def test_the_budget_counts_the_decoder_and_the_split_is_learned_over_four_modalities():
    from efficientvlm.pruning import ModalAdaptiveL0Module, layer_sizes
    from efficientvlm.pruning.budget import sparsity_of
    from efficientvlm.pruning.structure import sub_block_costs

    config = tiny_generative_config()
    assert set(layer_sizes(config)) == {"vision", "text", "fusion", "decoder"}
    params = sub_block_costs(config, "params")["decoder"]
    d, h = 24, 12  # the decoder's cross-attention reads the fused question (width 24), not the image (32)
    assert params["cross_attention"].unit == 2 * d * h + 2 * d * h + 3 * h
    flops = sub_block_costs(config, "flops", text_length=9, answer_length=4)["decoder"]
    assert flops["attention"].unit == h * (4 * 4 * d + 2 * 4 * 4)
    assert flops["cross_attention"].unit == h * (2 * 4 * d + 2 * 9 * d + 2 * 4 * 9)
    assert flops["ffn"].unit == 2 * 4 * d
    l0 = ModalAdaptiveL0Module(config, 0.4)
    split = l0.learned_split(0.4)
    assert set(split) == {"vision", "text", "fusion", "decoder"}
    zs = l0.budget_gates()
    assert sparsity_of(zs, config)["overall"] == pytest.approx(0.4, abs=0.02)
    from efficientvlm import EfficientVLMConfig

    with pytest.raises(ValueError, match="this model has no decoder"):
        ModalAdaptiveL0Module(EfficientVLMConfig(), 0.3, modalities=("decoder",))


# ---------------------------------------------------------------------------------------------------- distillation


def distillation_args(tmp_path, **overrides):
    from efficientvlm.distillation import DistillationConfig

    defaults = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=1, learning_rate=1e-3,
                    report_to=[], save_strategy="no", disable_tqdm=True, use_cpu=True, seed=0)
    return DistillationConfig(**{**defaults, **overrides})


def logged_terms(trainer, inputs) -> tuple[torch.Tensor, dict]:
    """One ``compute_loss`` of the student in eval mode (no dropout) and the terms it logs (as in evaluation)."""
    trainer.model.eval()
    loss = trainer.compute_loss(trainer.model, inputs)
    trainer.log({"eval_loss": loss.item(), "eval_runtime": 0.0})
    return loss, {k.removeprefix("eval_"): v for k, v in trainer.state.log_history[-1].items()
                  if k.startswith(("eval_kd_", "eval_task_"))}


def teacher_and_student():
    """A teacher with 3 vision, 2 text, 2 fusion and 2 decoder layers and a half-depth student copied from it."""
    from efficientvlm.student import create_student

    teacher = make_model(seed=0)
    torch.manual_seed(1)
    student = create_student(teacher, 2, 1, 1, decoder_layers=1)
    with torch.no_grad():  # move the student away from the copied weights
        for parameter in student.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return teacher, student


def test_create_student_copies_every_other_decoder_layer():
    from efficientvlm.student import create_student

    teacher = make_model()
    student = create_student(teacher, 2, 1, 1, decoder_layers=1)
    assert student.config.decoder_config.num_hidden_layers == 1
    assert student.config.student_of["layers"]["decoder"] == [1]
    torch.testing.assert_close(student.answer_decoder.encoder.layers[0].mlp.fc1.weight,
                               teacher.answer_decoder.encoder.layers[1].mlp.fc1.weight, rtol=0, atol=0)


def test_the_decoder_kd_terms_and_their_default_weights(tmp_path):
    from efficientvlm.distillation import DistillationTrainer, attention_map_mse, hidden_state_mse, logits_kd_loss

    teacher, student = teacher_and_student()
    trainer = DistillationTrainer(model=student, args=distillation_args(tmp_path, temperature=2.0),
                                  teacher_model=teacher)
    assert trainer.task == "vqa"
    weights = trainer.term_weights  # 0.6 L_ans + 0.4 [KL(decoder logits) + ... + dec(self-A + H + cross-A)]
    assert weights["task_loss"] == 0.6 and weights["kd_logits"] == 0.4
    assert weights["kd_hidden_decoder"] == weights["kd_attn_decoder"] == weights["kd_attn_decoder_cross"] == 0.4
    assert weights["kd_hidden_fusion"] == weights["kd_attn_fusion_cross"] == pytest.approx(0.2)
    inputs = tiny_generative_inputs(student.config)
    loss, terms = logged_terms(trainer, inputs)
    assert set(terms) == set(weights) | {"kd_loss"}
    assert all(terms[name] > 0 for name in weights)

    flags = {"output_hidden_states": True, "output_attentions": True}
    with torch.no_grad():
        s, t = student(**inputs, **flags), teacher(**inputs, **flags)
    answer_mask = inputs["answer_attention_mask"]
    rows = answer_mask.flatten(0, 1)  # (batch * answers, length): padding answers have no rows
    logits = logits_kd_loss(s.answer_logits, t.answer_logits, answer_mask, temperature=2.0)
    # teacher 2 -> student 1 decoder layer: hidden states 0 <-> 0, 1 <-> 2; attention maps 0 <-> 1
    s_decoder, t_decoder = s.decoder_model_output, t.decoder_model_output
    hidden = sum(hidden_state_mse(s_decoder.hidden_states[i], t_decoder.hidden_states[j], rows)
                 for i, j in ((0, 0), (1, 2)))
    attention = attention_map_mse(s_decoder.attentions[0], t_decoder.attentions[1], rows, rows)
    cross = attention_map_mse(s_decoder.cross_attentions[0], t_decoder.cross_attentions[1], rows)
    assert terms["kd_logits"] == pytest.approx(logits.item(), rel=1e-5)
    assert terms["kd_hidden_decoder"] == pytest.approx(hidden.item(), rel=1e-5)
    assert terms["kd_attn_decoder"] == pytest.approx(attention.item(), rel=1e-5)
    assert terms["kd_attn_decoder_cross"] == pytest.approx(cross.item(), rel=1e-5)
    assert terms["task_loss"] == pytest.approx(s.loss.item(), rel=1e-5)
    assert loss.item() == pytest.approx(sum(weights[name] * terms[name] for name in weights), rel=1e-5)


def test_decoder_kd_is_zero_for_an_exact_copy_and_ignores_answer_padding(tmp_path):
    from efficientvlm.distillation import DistillationTrainer
    from efficientvlm.student import create_student

    teacher = make_model()
    copy = create_student(teacher, 3, 2, 2, decoder_layers=2)
    trainer = DistillationTrainer(model=copy, args=distillation_args(tmp_path), teacher_model=teacher)
    inputs = tiny_generative_inputs(teacher.config)
    _, terms = logged_terms(trainer, inputs)
    assert {"kd_logits", "kd_hidden_decoder", "kd_attn_decoder", "kd_attn_decoder_cross"} <= set(terms)
    assert all(value == pytest.approx(0.0, abs=1e-9) for name, value in terms.items() if name.startswith("kd_"))

    _, student = teacher_and_student()
    trainer = DistillationTrainer(model=student, args=distillation_args(tmp_path), teacher_model=teacher)
    changed = {key: value.clone() for key, value in inputs.items()}
    padding = inputs["answer_attention_mask"] == 0
    changed["answer_input_ids"][padding] = 30  # tokens under the answers' padding, and in the padding answers
    _, before = logged_terms(trainer, inputs)
    _, after = logged_terms(trainer, changed)
    assert after == pytest.approx(before, rel=1e-5)


def test_a_classifier_teacher_cannot_teach_a_generative_student(tmp_path):
    from efficientvlm import EfficientVLMForVisualQuestionAnswering
    from efficientvlm.distillation import DistillationTrainer
    from tests.tiny_models import tiny_config

    with pytest.raises(ValueError, match="the same task head on both"):
        DistillationTrainer(model=make_model(), args=distillation_args(tmp_path),
                            teacher_model=EfficientVLMForVisualQuestionAnswering(tiny_config()))


class _Batches(torch.utils.data.Dataset):
    """Each item is a whole generative VQA batch (use with batch size 1 and ``collate``)."""

    def __init__(self, config, size: int = 4):
        self.batches = [tiny_generative_inputs(config, seed=i) for i in range(size)]

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        return self.batches[index]


def collate(items):
    return items[0]


def test_the_pruning_trainer_learns_decoder_gates_under_one_budget(tmp_path):
    from efficientvlm.pruning import ModalAdaptivePruningTrainer, PruningConfig, gates_applied
    from tests.test_pruning_core import assert_same_outputs

    teacher, student = teacher_and_student()
    args = PruningConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=1, max_steps=4,
                         learning_rate=1e-3, reg_learning_rate=0.5, target_sparsity=0.4, report_to=[],
                         save_strategy="no", disable_tqdm=True, use_cpu=True, seed=0, logging_steps=2)
    trainer = ModalAdaptivePruningTrainer(model=student, args=args, teacher_model=teacher,
                                          train_dataset=_Batches(student.config), data_collator=collate)
    assert tuple(trainer.l0_module.gates) == ("vision", "text", "fusion", "decoder")
    before = [gate.log_alpha.clone() for gate in trainer.l0_module.gates["decoder"][0].values()]
    trainer.train()
    after = list(trainer.l0_module.gates["decoder"][0].values())
    assert any(not torch.equal(b, a.log_alpha) for b, a in zip(before, after))  # the decoder's gates learned
    assert "expected_sparsity_decoder" in trainer.state.log_history[0]

    pruned = trainer.prune()
    info = pruned.config.pruning_info
    assert info["pruned_modalities"] == ["vision", "text", "fusion", "decoder"]
    assert info["achieved_sparsity"]["overall"] == pytest.approx(0.4, abs=0.02)
    assert "decoder" in info["achieved_sparsity"] and "decoder" in info["per_modality"]
    inputs = tiny_generative_inputs(student.config, seed=7)
    student.eval()
    with torch.no_grad(), gates_applied(student, trainer.final_gates()):
        masked = student(**inputs)
    with torch.no_grad():
        assert_same_outputs(masked, pruned.eval()(**inputs))
    report = trainer.pruning_report(pruned)
    assert set(report["modalities"]) == {"vision", "text", "fusion", "decoder"}


def test_a_generative_config_from_an_encoder_config_copies_the_fusion_shape():
    from tests.tiny_models import tiny_config

    base = tiny_config()
    config = EfficientVLMGenerativeVQAConfig.from_encoder_config(base, rank_k=5)
    assert config.model_type == "efficientvlm_generative_vqa" and config.rank_k == 5
    assert config.decoder_config.to_dict()["model_type"] == "efficientvlm_decoder"
    for field in ("num_hidden_layers", "num_attention_heads", "num_cross_attention_heads", "intermediate_size"):
        assert getattr(config.decoder_config, field) == getattr(base.fusion_config, field)
    assert config.decoder_config.encoder_hidden_size == base.fusion_config.hidden_size  # not the image width
    assert config.layer_sizes()["vision"] == base.layer_sizes()["vision"] and config.id2label == base.id2label
    assert EfficientVLMGenerativeVQAConfig.from_encoder_config(base, decoder_layers=1).decoder_config \
        .num_hidden_layers == 1
    with pytest.raises(ValueError, match="per-layer sizes"):
        EfficientVLMGenerativeVQAConfig.from_encoder_config(tiny_config(heterogeneous=True), decoder_layers=1)


def test_the_push_command_publishes_a_generative_checkpoint(shapes_checkpoint, tmp_path, capsys):
    from efficientvlm import cli

    folder, model, _, _ = shapes_checkpoint
    out = tmp_path / "repo"
    assert cli.main(["push", str(folder), "org/generative", "--dry-run", str(out)]) == 0
    assert "dry run, nothing uploaded" in capsys.readouterr().out
    reloaded = EfficientVLMForGenerativeVQA.from_pretrained(out)
    assert reloaded.config.answer_token_ids == model.config.answer_token_ids
    assert "generative answer decoder" in (out / "README.md").read_text()
