"""transformers' common model tests, written for EfficientVLM.

transformers checks each of its models with a per-model tester (``BertModelTester``: a small config and inputs) and
the common ``ModelTesterMixin`` / ``ConfigTester`` tests, which live in the transformers repository, not in the
installed package. This module is the same idea for our six classes: ``EfficientVLMModelTester`` builds a tiny
config, uniform or heterogeneous (a pruned model: layers of different sizes, absent sub-blocks), and inputs for any
class; the tests below run on every class with both configs. They cover ``return_dict`` (argument and config), the
config's output flags, ``get_image_features`` / ``get_text_features``, save/load, gradient checkpointing, sdpa ==
eager, ``resize_token_embeddings``, batching, and configs that build from their defaults and round-trip.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers.modeling_outputs import BaseModelOutputWithPooling, ModelOutput

from efficientvlm import (
    EfficientVLMConfig,
    EfficientVLMForCaptioning,
    EfficientVLMForImageTextRetrieval,
    EfficientVLMForNLVR2,
    EfficientVLMForPreTraining,
    EfficientVLMFusionConfig,
    EfficientVLMModel,
    EfficientVLMTextConfig,
    EfficientVLMVisionConfig,
)
from efficientvlm.models.configuration_efficientvlm import MODALITIES
from tests.tiny_models import HEAD_CLASSES, tiny_config, tiny_inputs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONTRASTIVE = (EfficientVLMForPreTraining, EfficientVLMForImageTextRetrieval)
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


class EfficientVLMModelTester:
    """A tiny config and inputs for any EfficientVLM class, in the manner of transformers' per-model testers.

    Args:
        heterogeneous: a pruned config (``tiny_config(heterogeneous=True)``: per-layer head counts and FFN widths,
            layers without attention, FFN or cross-attention) instead of a uniform one.
    """

    batch_size = 3
    seq_length = 7

    def __init__(self, heterogeneous: bool):
        self.heterogeneous = heterogeneous

    def get_config(self, **overrides) -> EfficientVLMConfig:
        """Without dropout, so that train-mode forwards (gradient checkpointing) are deterministic."""
        overrides.setdefault("text_config", dict(NO_DROPOUT))
        overrides.setdefault("fusion_config", dict(NO_DROPOUT))
        return tiny_config(heterogeneous=self.heterogeneous, **overrides)

    def prepare_config_and_inputs(self, model_class, **overrides) -> tuple[EfficientVLMConfig, dict]:
        config = self.get_config(**overrides)
        return config, tiny_inputs(model_class, config, batch=self.batch_size, seq=self.seq_length)

    def model(self, model_class, config: EfficientVLMConfig, seed: int = 0):
        torch.manual_seed(seed)
        return model_class(config).eval()

    @staticmethod
    def single_images(model_class, inputs: dict) -> torch.Tensor:
        """``(batch, 3, H, W)`` images for ``get_image_features`` (NLVR2's inputs hold image pairs)."""
        pixel_values = inputs["pixel_values"]
        return pixel_values[:, 0] if model_class is EfficientVLMForNLVR2 else pixel_values

    @staticmethod
    def streams(model_class) -> tuple[str, ...]:
        """The passes whose ``<pass>_model_output`` a class fills when states are requested."""
        return (*MODALITIES, "mlm_text", "mlm_fusion") if model_class is EfficientVLMForPreTraining else MODALITIES


def _assert_same(actual, expected, path="output", atol=0.0, rtol=0.0):
    """Recursive equality of (nested) tuples, ModelOutputs and tensors."""
    if isinstance(expected, ModelOutput):
        expected = expected.to_tuple()
    if isinstance(actual, ModelOutput):
        actual = actual.to_tuple()
    if isinstance(expected, (tuple, list)):
        assert isinstance(actual, (tuple, list)) and len(actual) == len(expected), path
        for i, (a, e) in enumerate(zip(actual, expected)):
            _assert_same(a, e, f"{path}[{i}]", atol, rtol)
    elif expected is None:
        assert actual is None, path
    else:
        torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=path)


def _stream_layers(config: EfficientVLMConfig, stream: str) -> tuple[int, list[int]]:
    """(layers, self-attention heads per layer) of the encoder behind an output prefix."""
    modality = stream.removeprefix("mlm_")
    sub = getattr(config, f"{modality}_config")
    return sub.num_hidden_layers, sub.per_layer("num_attention_heads")


CLASSES = pytest.mark.parametrize("model_class", HEAD_CLASSES, ids=lambda c: c.__name__)
CONFIGS = pytest.mark.parametrize("tester", [False, True], ids=["uniform", "heterogeneous"],
                                  indirect=True)


@pytest.fixture
def tester(request) -> EfficientVLMModelTester:
    return EfficientVLMModelTester(heterogeneous=request.param)


# ------------------------------------------------------------------------------------------------------ configs


CONFIG_CLASSES = [EfficientVLMConfig, EfficientVLMVisionConfig, EfficientVLMTextConfig, EfficientVLMFusionConfig]


@pytest.mark.parametrize("config_class", CONFIG_CLASSES, ids=lambda c: c.__name__)
def test_every_config_class_builds_from_defaults_and_round_trips(config_class, tmp_path):
    config = config_class()
    assert config_class.from_dict(config.to_dict()).to_dict() == config.to_dict()
    config.to_json_file(tmp_path / "config.json")
    assert config_class.from_json_file(tmp_path / "config.json").to_dict() == config.to_dict()
    config.save_pretrained(tmp_path / "sub" / "folder")
    assert config_class.from_pretrained(tmp_path / "sub", subfolder="folder").to_dict() == config.to_dict()


def test_a_small_vocabulary_builds_from_the_default_special_tokens():
    # bert-base-uncased's [CLS] / [SEP] / [MASK] ids (101-103) do not exist in a 64-token vocabulary: unknown
    text = EfficientVLMTextConfig(vocab_size=64)
    assert (text.pad_token_id, text.bos_token_id, text.eos_token_id, text.mask_token_id) == (0, None, None, None)
    assert EfficientVLMTextConfig.from_dict(text.to_dict()).to_dict() == text.to_dict()
    assert EfficientVLMConfig(text_config={"vocab_size": 64}).text_config.bos_token_id is None
    assert EfficientVLMTextConfig(vocab_size=200).bos_token_id == 101  # a vocabulary that has them keeps them
    with pytest.raises(ValueError, match=r"bos_token_id=70 is outside the vocabulary \(vocab_size=64\)"):
        EfficientVLMTextConfig(vocab_size=64, bos_token_id=70)
    model = EfficientVLMForCaptioning(tiny_config(text_config={"bos_token_id": None}))
    with pytest.raises(ValueError, match="bos_token_id, which is None"):
        model.generate(pixel_values=torch.randn(1, 3, 32, 32), max_new_tokens=2)


def test_config_common_kwargs_and_num_labels_round_trip():
    common = {"return_dict": False, "output_hidden_states": True, "tie_word_embeddings": False,
              "id2label": {0: "no", 1: "yes"}, "problem_type": "multi_label_classification"}
    config = EfficientVLMConfig(**common)
    reloaded = EfficientVLMConfig.from_dict(config.to_dict())
    for key, value in common.items():
        assert getattr(config, key) == value and getattr(reloaded, key) == value, key
    # label2id follows id2label (transformers 5 fills it only through num_labels): config.label2id["yes"] works
    assert config.label2id == reloaded.label2id == {"no": 0, "yes": 1}
    assert EfficientVLMConfig(id2label={0: "a"}, label2id={"a": 0, "b": 1}).label2id == {"a": 0, "b": 1}  # given: kept
    config.num_labels = 5
    assert len(config.id2label) == 5 and len(config.label2id) == 5
    config.num_labels = 3
    assert len(config.id2label) == 3


# ------------------------------------------------------------------------------------------ return_dict, flags


@CONFIGS
@CLASSES
def test_return_dict_false_returns_the_outputs_as_a_tuple(model_class, tester):
    config, inputs = tester.prepare_config_and_inputs(model_class)
    model = tester.model(model_class, config)
    with torch.no_grad():
        as_dict = model(**inputs)
        as_tuple = model(**inputs, return_dict=False)
        with_states = model(**inputs, output_hidden_states=True, return_dict=False)
    assert type(as_tuple) is tuple and not isinstance(as_tuple, ModelOutput)
    _assert_same(as_tuple, as_dict)
    _assert_same(with_states, model(**inputs, output_hidden_states=True))
    if model_class is EfficientVLMModel:
        torch.testing.assert_close(as_tuple[0], as_dict.last_hidden_state)
    else:
        loss, logits = as_tuple[:2]  # the unpacking of transformers' heads
        torch.testing.assert_close(loss, as_dict.loss)
        torch.testing.assert_close(logits, as_dict.logits)

    model.config.return_dict = False
    with torch.no_grad():
        _assert_same(model(**inputs), as_dict)
        assert type(model(**inputs)) is tuple
        assert isinstance(model(**inputs, return_dict=True), ModelOutput)  # the argument wins over the config


def test_flags_and_return_dict_passed_by_position_are_honoured():
    tester = EfficientVLMModelTester(heterogeneous=True)
    config, inputs = tester.prepare_config_and_inputs(EfficientVLMModel)
    model = tester.model(EfficientVLMModel, config)
    model.config.output_hidden_states = True
    args = (inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"], None, None, False)
    with torch.no_grad():
        by_name = model(*args, output_attentions=None, output_hidden_states=False, return_dict=False)
        by_position = model(*args, None, False, False)  # output_attentions, output_hidden_states, return_dict
        defaults = model(*args, None, None, None)
    _assert_same(by_position, by_name)
    assert len(by_position) == 4  # last_hidden_state, pooler_output, image_embeds, text_embeds
    assert defaults.text_model_output.hidden_states is not None  # None by position falls back to the config too


@CONFIGS
@CLASSES
def test_config_output_flags_are_the_default_and_arguments_override_them(model_class, tester):
    config, inputs = tester.prepare_config_and_inputs(model_class)
    model = tester.model(model_class, config)
    model.set_attn_implementation("eager")  # transformers allows config.output_attentions with eager attention only
    model.config.output_hidden_states = True
    model.config.output_attentions = True
    model.train()  # states are part of the graph (distillation backpropagates through them)
    outputs = model(**inputs)
    for stream in tester.streams(model_class):
        layers, heads = _stream_layers(config, stream)
        states = getattr(outputs, f"{stream}_model_output")
        hidden, attentions = states.hidden_states, states.attentions
        assert len(hidden) == layers + 1 and len(attentions) == layers, stream
        assert all(h.requires_grad for h in hidden[1:]), stream
        for i, attention in enumerate(attentions):
            if heads[i] == 0:
                assert attention is None, (stream, i)  # a pruned-away attention block
            else:
                assert attention.shape[1] == heads[i] and attention.requires_grad, (stream, i)
                torch.testing.assert_close(attention.sum(-1), torch.ones_like(attention.sum(-1)))
    cross = outputs.fusion_model_output.cross_attentions
    cross_heads = config.fusion_config.per_layer("num_cross_attention_heads")
    assert [None if c is None else c.shape[1] for c in cross] == [h or None for h in cross_heads]
    if model_class is EfficientVLMForCaptioning:
        assert outputs.image_outputs.hidden_states is outputs.vision_model_output.hidden_states

    model.eval()
    with torch.no_grad():
        quiet = model(**inputs, output_hidden_states=False, output_attentions=False)
    for stream in tester.streams(model_class):
        assert getattr(quiet, f"{stream}_model_output") is None, stream


# ------------------------------------------------------------------------------------------- get_*_features


@CONFIGS
@CLASSES
def test_get_features_return_base_model_outputs_with_pooling_and_gradients(model_class, tester):
    config, inputs = tester.prepare_config_and_inputs(model_class)
    model = tester.model(model_class, config)
    pixel_values = tester.single_images(model_class, inputs)
    text_args = (inputs["input_ids"], inputs["attention_mask"])
    image = model.get_image_features(pixel_values)
    text = model.get_text_features(*text_args)
    assert isinstance(image, BaseModelOutputWithPooling) and isinstance(text, BaseModelOutputWithPooling)
    base = model.base_model
    with torch.no_grad():
        image_tokens = base.encode_image(pixel_values).last_hidden_state
        text_tokens = base.encode_text(*text_args).last_hidden_state
    torch.testing.assert_close(image.last_hidden_state, image_tokens)
    torch.testing.assert_close(text.last_hidden_state, text_tokens)
    if isinstance(model, CONTRASTIVE):  # CLIPModel's: the (unnormalised) projection of the [CLS] token
        torch.testing.assert_close(image.pooler_output, model.vision_proj(image_tokens[:, 0]))
        torch.testing.assert_close(text.pooler_output, model.text_proj(text_tokens[:, 0]))
        with torch.no_grad():
            forward = model(**inputs)
        torch.testing.assert_close(F.normalize(image.pooler_output, dim=-1), forward.image_features)
        torch.testing.assert_close(F.normalize(text.pooler_output, dim=-1), forward.text_features)
    else:
        torch.testing.assert_close(image.pooler_output, image_tokens[:, 0])
        torch.testing.assert_close(text.pooler_output, text_tokens[:, 0])

    # with gradient, into the towers (and the projections)
    # (a random direction: the sum of a LayerNorm output is constant)
    (image.pooler_output * torch.randn_like(image.pooler_output)).sum().add(
        (text.pooler_output * torch.randn_like(text.pooler_output)).sum()).backward()
    patch = base.vision_model.embeddings.patch_embedding.weight
    words = base.text_model.embeddings.word_embeddings.weight
    assert patch.grad is not None and patch.grad.abs().sum() > 0
    assert words.grad is not None and words.grad.abs().sum() > 0
    if isinstance(model, CONTRASTIVE):
        assert model.vision_proj.weight.grad.abs().sum() > 0 and model.text_proj.weight.grad.abs().sum() > 0

    # output flags (argument and config) and return_dict=False
    model.set_attn_implementation("eager")
    with torch.no_grad():
        states = model.get_image_features(pixel_values, output_hidden_states=True, output_attentions=True)
        assert len(states.hidden_states) == config.vision_config.num_hidden_layers + 1
        assert len(states.attentions) == config.vision_config.num_hidden_layers
        model.config.output_hidden_states = True
        text_states = model.get_text_features(*text_args)
        assert len(text_states.hidden_states) == config.text_config.num_hidden_layers + 1
        assert text_states.attentions is None
        as_tuple = model.get_image_features(pixel_values, return_dict=False)
        assert type(as_tuple) is tuple
        _assert_same(as_tuple, model.get_image_features(pixel_values))


@CONFIGS
def test_captioning_exposes_the_image_towers_output(tester):
    config, inputs = tester.prepare_config_and_inputs(EfficientVLMForCaptioning)
    model = tester.model(EfficientVLMForCaptioning, config)
    with torch.no_grad():
        outputs = model(**inputs)
        image = model.get_image_features(inputs["pixel_values"])
        reused = model(**{k: v for k, v in inputs.items() if k != "pixel_values"},
                       image_embeds=outputs.image_outputs.last_hidden_state)
    assert isinstance(outputs.image_outputs, BaseModelOutputWithPooling)
    _assert_same(outputs.image_outputs, image)
    torch.testing.assert_close(reused.logits, outputs.logits)  # the decoder reads exactly these image tokens
    assert reused.image_outputs is None  # images came encoded: no image-tower output in this forward
    as_tuple = model(**inputs, return_dict=False)
    assert isinstance(as_tuple[-1], tuple)  # the nested output becomes a tuple too
    _assert_same(as_tuple[-1], image)


# -------------------------------------------------------------------------------------------------- save/load


@CONFIGS
@CLASSES
def test_save_and_load_gives_every_output_back(model_class, tester, tmp_path):
    config, inputs = tester.prepare_config_and_inputs(model_class)
    model = tester.model(model_class, config)
    model.save_pretrained(tmp_path)
    reloaded, info = model_class.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert reloaded.config.layer_sizes() == config.layer_sizes()
    with torch.no_grad():
        _assert_same(reloaded.eval()(**inputs, output_hidden_states=True),
                     model(**inputs, output_hidden_states=True))


# ------------------------------------------------------------------------------------ gradient checkpointing


def _loss(model_class, outputs):
    return outputs.last_hidden_state.pow(2).mean() if model_class is EfficientVLMModel else outputs.loss


@CONFIGS
@CLASSES
def test_gradient_checkpointing_recomputes_layers_and_gives_the_same_gradients(model_class, tester):
    config, inputs = tester.prepare_config_and_inputs(model_class)
    model = tester.model(model_class, config).train()
    _loss(model_class, model(**inputs)).backward()
    reference = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    calls = []  # a module inside a checkpointed layer (the layer's own hooks stay outside the checkpoint)
    attention = model.base_model.text_model.encoder.layers[0].self_attn
    handle = attention.register_forward_hook(lambda *args: calls.append(1))
    # transformers 5.24 renamed gradient checkpointing to activation checkpointing (the old names still work)
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    assert all(layer.gradient_checkpointing for layer in model.base_model.text_model.encoder.layers)
    loss = _loss(model_class, model(**inputs))
    forwards = len(calls)
    loss.backward()
    handle.remove()
    assert forwards > 0 and len(calls) == 2 * forwards  # the layer ran again in the backward pass
    gradients = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert gradients.keys() == reference.keys()
    for name, grad in reference.items():
        torch.testing.assert_close(gradients[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    disable = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
    disable()
    assert not any(layer.gradient_checkpointing for layer in model.base_model.text_model.encoder.layers)


# ---------------------------------------------------------------------------------------- attention backends


@CONFIGS
@CLASSES
def test_sdpa_and_eager_attention_give_the_same_outputs(model_class, tester):
    config, inputs = tester.prepare_config_and_inputs(model_class)
    model = tester.model(model_class, config)
    assert model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        sdpa = model(**inputs, output_hidden_states=True)
        model.set_attn_implementation("eager")
        eager = model(**inputs, output_hidden_states=True)
    _assert_same(eager, sdpa, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ embeddings


@CONFIGS
@CLASSES
def test_resize_token_embeddings(model_class, tester, tmp_path):
    config, inputs = tester.prepare_config_and_inputs(model_class)
    model = tester.model(model_class, config)
    old = config.text_config.vocab_size
    embeddings = model.resize_token_embeddings(old + 8)
    assert embeddings is model.get_input_embeddings() and embeddings.num_embeddings == old + 8
    assert model.config.text_config.vocab_size == old + 8
    output_embeddings = model.get_output_embeddings()
    if output_embeddings is not None:  # the tied LM head follows
        assert output_embeddings.weight is embeddings.weight and output_embeddings.bias.shape == (old + 8,)
    inputs["input_ids"][0, 1] = old + 5  # a new token
    with torch.no_grad():
        outputs = model(**inputs)
    if model_class is EfficientVLMForCaptioning:
        assert outputs.logits.shape[-1] == old + 8
    if model_class is EfficientVLMForPreTraining:
        assert outputs.mlm_logits.shape[-1] == old + 8
    model.save_pretrained(tmp_path)
    reloaded = model_class.from_pretrained(tmp_path).eval()
    assert reloaded.config.text_config.vocab_size == old + 8
    with torch.no_grad():
        _assert_same(reloaded(**inputs), outputs)


# -------------------------------------------------------------------------------------------------- batching


@CONFIGS
@pytest.mark.parametrize("model_class", [c for c in HEAD_CLASSES if c not in CONTRASTIVE], ids=lambda c: c.__name__)
def test_batching_equivalence(model_class, tester):
    """Each example's outputs do not depend on the rest of the batch (padding, masks); the contrastive heads are
    left out, since their ITC and ITM contrast the examples of a batch with each other."""
    config, inputs = tester.prepare_config_and_inputs(model_class)
    model = tester.model(model_class, config)
    inputs.pop("labels", None)
    with torch.no_grad():
        batched = model(**inputs)
        for row in range(tester.batch_size):
            single = model(**{key: value[row:row + 1] for key, value in inputs.items()})
            main = "last_hidden_state" if model_class is EfficientVLMModel else "logits"
            torch.testing.assert_close(single[main][0], batched[main][row], atol=1e-5, rtol=1e-5)
