"""Generative VQA (the paper's answer decoder): the weighted answer likelihood, answer ranking, generation."""

from __future__ import annotations

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
