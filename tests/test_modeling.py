"""Config, modeling, heads, save/load round trips, Auto classes, initialisation from CLIP/BERT, create_student."""

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForPreTraining,
    AutoModelForVisualQuestionAnswering,
    BertConfig,
    BertModel,
    CLIPVisionConfig,
    CLIPVisionModel,
)

from efficientvlm import (
    EfficientVLMConfig,
    EfficientVLMForCaptioning,
    EfficientVLMForImageTextRetrieval,
    EfficientVLMForNLVR2,
    EfficientVLMForPreTraining,
    EfficientVLMForVisualQuestionAnswering,
    EfficientVLMModel,
    create_student,
    uniform_layer_choice,
)
from efficientvlm.models.modeling_efficientvlm import EfficientVLMEncoderOutput
from tests.tiny_models import HEAD_CLASSES, main_output, tiny_config, tiny_inputs


# ----------------------------------------------------------------------------------------------------- config


def test_defaults_are_the_paper_teacher_and_student_preset():
    config = EfficientVLMConfig()
    v, t, f = config.vision_config, config.text_config, config.fusion_config
    assert (v.num_hidden_layers, v.hidden_size, v.num_attention_heads, v.intermediate_size) == (12, 768, 12, 3072)
    assert (v.hidden_act, v.image_size, v.patch_size, v.head_dim) == ("quick_gelu", 224, 16, 64)
    assert (t.num_hidden_layers, t.vocab_size, f.num_hidden_layers, f.num_cross_attention_heads) == (6, 30522, 6, 12)
    assert f.encoder_hidden_size == 768
    assert (config.projection_dim, config.itc_temperature) == (256, 0.07)
    student = EfficientVLMConfig.student()
    assert [student.vision_config.num_hidden_layers, student.text_config.num_hidden_layers,
            student.fusion_config.num_hidden_layers] == [6, 3, 3]
    assert student.vision_config.hidden_size == 768


def test_config_json_round_trip_keeps_per_layer_lists(tmp_path):
    config = tiny_config(heterogeneous=True)
    config.save_pretrained(tmp_path)
    reloaded = EfficientVLMConfig.from_pretrained(tmp_path)
    assert reloaded.layer_sizes() == config.layer_sizes()
    assert reloaded.vision_config.per_layer("num_attention_heads") == [2, 0, 3]
    assert reloaded.fusion_config.per_layer("num_cross_attention_heads") == [1, 0]
    assert isinstance(AutoConfig.from_pretrained(tmp_path), EfficientVLMConfig)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"vision_config": {"num_hidden_layers": 3, "num_attention_heads": [1, 2]}}, "num_attention_heads"),
        ({"text_config": {"intermediate_size": -4}}, "intermediate_size"),
        ({"fusion_config": {"num_hidden_layers": 2, "num_cross_attention_heads": [1, -1]}},
         "num_cross_attention_heads[1]"),
        ({"fusion_config": {"hidden_size": 512}}, "fusion_config.hidden_size"),
        ({"fusion_config": {"encoder_hidden_size": 100}}, "encoder_hidden_size"),
        ({"vision_config": {"image_size": 100, "patch_size": 16}}, "image_size"),
        ({"vision_config": {"head_dim": 0}}, "head_dim"),
        ({"text_config": {"hidden_act": "nope"}}, "hidden_act"),
        ({"text_config": {"pad_token_id": 40000}}, "pad_token_id"),
        ({"projection_dim": 0}, "projection_dim"),
    ],
)
def test_invalid_configs_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
        EfficientVLMConfig(**kwargs)


# ---------------------------------------------------------------------------------------------------- heads


@pytest.mark.parametrize("heterogeneous", [False, True], ids=["uniform", "heterogeneous"])
@pytest.mark.parametrize("model_class", HEAD_CLASSES, ids=lambda c: c.__name__)
def test_forward_backward_and_save_load_round_trip(model_class, heterogeneous, tmp_path):
    torch.manual_seed(0)
    config = tiny_config(heterogeneous=heterogeneous)
    model = model_class(config)
    inputs = tiny_inputs(model_class, config)
    outputs = model(**inputs)
    if model_class is not EfficientVLMModel:
        assert torch.isfinite(outputs.loss)
        outputs.loss.backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads)

    model.eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))
    reloaded = model_class.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        expected = main_output(model_class, model(**inputs))
        actual = main_output(model_class, reloaded(**inputs))
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)


def test_heterogeneous_layers_have_the_configured_shapes():
    model = EfficientVLMModel(tiny_config(heterogeneous=True))
    vision = model.vision_model.encoder.layers
    assert vision[0].self_attn.num_heads == 2 and vision[0].mlp is None and vision[0].layer_norm2 is None
    assert vision[1].self_attn is None and vision[1].mlp.fc1.out_features == 16
    assert vision[2].self_attn.q_proj.out_features == 3 * 8 and vision[2].mlp.fc2.in_features == 8
    fusion = model.fusion_model.encoder.layers
    assert fusion[0].cross_attn.k_proj.in_features == 32  # reads the vision width
    assert fusion[1].cross_attn is None and fusion[1].mlp is None and fusion[1].self_attn.num_heads == 1


def test_checkpoint_that_does_not_fit_its_config_names_layer_and_field(tmp_path):
    EfficientVLMModel(tiny_config(heterogeneous=True)).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["vision_config"]["intermediate_size"] = [0, 16, 4]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"vision layer 2, vision_config\.intermediate_size\[2\] = 4"):
        EfficientVLMModel.from_pretrained(tmp_path)

    config["vision_config"]["intermediate_size"] = [0, 16, 8]
    config["fusion_config"]["num_cross_attention_heads"] = [1, 2]  # layer 1 has no cross-attention weights
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"fusion layer 1, fusion_config\.num_cross_attention_heads\[1\] = 2"):
        AutoModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("model_class", [EfficientVLMForVisualQuestionAnswering, EfficientVLMForCaptioning])
def test_sdpa_and_eager_attention_agree(model_class):
    torch.manual_seed(0)
    config = tiny_config(heterogeneous=True)
    model = model_class(config).eval()
    inputs = tiny_inputs(model_class, config)
    assert model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        sdpa = model(**inputs).logits
        model.set_attn_implementation("eager")
        eager = model(**inputs).logits
    torch.testing.assert_close(sdpa, eager, rtol=1e-5, atol=1e-5)


def test_hidden_states_and_attentions_of_every_encoder():
    config = tiny_config(heterogeneous=True)
    model = EfficientVLMForVisualQuestionAnswering(config).eval()
    inputs = tiny_inputs(EfficientVLMForVisualQuestionAnswering, config, batch=2, seq=6)
    out = model(**inputs, output_hidden_states=True, output_attentions=True)
    vision, text, fusion = out.vision_model_output, out.text_model_output, out.fusion_model_output
    assert all(isinstance(o, EfficientVLMEncoderOutput) for o in (vision, text, fusion))
    assert len(vision.hidden_states) == 4 and len(text.hidden_states) == 3
    assert len(fusion.hidden_states) == 3
    assert vision.attentions[0].shape == (2, 2, 17, 17) and vision.attentions[1] is None
    assert text.attentions[0].shape == (2, 1, 6, 6)
    assert fusion.cross_attentions[0].shape == (2, 1, 6, 17) and fusion.cross_attentions[1] is None
    assert vision.cross_attentions is None and text.cross_attentions is None
    # padded keys get no attention
    assert text.attentions[0][1, :, :, -2:].abs().max() == 0
    torch.testing.assert_close(fusion.hidden_states[0], text.hidden_states[-1])
    torch.testing.assert_close(fusion.last_hidden_state, fusion.hidden_states[-1])
    plain = model(**inputs)
    assert plain.vision_model_output is None and plain.fusion_model_output is None
    # the flat names of earlier versions still read the nested outputs (deprecated)
    assert out.fusion_cross_attentions is fusion.cross_attentions and out.text_hidden_states is text.hidden_states
    assert plain.vision_hidden_states is None
    with pytest.raises(AttributeError, match="no attribute 'audio_hidden_states'"):
        out.audio_hidden_states
    # return_dict=False: the nested outputs become tuples too, as in transformers' CLIP
    as_tuple = model(**inputs, output_hidden_states=True, output_attentions=True, return_dict=False)
    *_, vision_tuple, text_tuple, fusion_tuple = as_tuple
    assert all(type(t) is tuple and len(t) == 3 + (t is fusion_tuple) for t in (vision_tuple, text_tuple, fusion_tuple))
    torch.testing.assert_close(fusion_tuple[0], fusion.last_hidden_state)
    torch.testing.assert_close(fusion_tuple[3][0], fusion.cross_attentions[0])


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    config = tiny_config(text_config={"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
                         fusion_config={"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})
    model = EfficientVLMForVisualQuestionAnswering(config).train()
    inputs = tiny_inputs(EfficientVLMForVisualQuestionAnswering, config)
    model(**inputs).loss.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.gradient_checkpointing_enable()
    model(**inputs).loss.backward()
    for name, grad in reference.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, rtol=1e-5, atol=1e-6)


def test_position_embeddings_are_interpolated_for_other_resolutions():
    torch.manual_seed(0)
    model = EfficientVLMModel(tiny_config()).eval()
    inputs = tiny_inputs(EfficientVLMModel, model.config)
    inputs["pixel_values"] = torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        on_the_fly = model(**inputs)
        assert on_the_fly.image_embeds.shape[1] == 37  # 6x6 patches + CLS
        model.resize_position_embeddings(48)
        resized = model(**inputs)
    assert model.config.vision_config.image_size == 48
    assert model.vision_model.embeddings.position_embedding.num_embeddings == 37
    torch.testing.assert_close(resized.last_hidden_state, on_the_fly.last_hidden_state)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model(**{**inputs, "pixel_values": torch.randn(3, 3, 30, 30)})


def test_input_errors_are_clear():
    config = tiny_config()
    nlvr2 = EfficientVLMForNLVR2(config)
    inputs = tiny_inputs(EfficientVLMForNLVR2, config)
    with pytest.raises(ValueError, match=r"\(batch, 2, 3, H, W\)"):
        nlvr2(**{**inputs, "pixel_values": torch.randn(3, 3, 32, 32)})
    vqa = EfficientVLMForVisualQuestionAnswering(config)
    inputs = tiny_inputs(EfficientVLMForVisualQuestionAnswering, config)
    with pytest.raises(ValueError, match="soft scores"):
        vqa(**{**inputs, "labels": torch.ones(3)})
    with pytest.raises(ValueError, match="one image per text"):
        vqa(**{**inputs, "pixel_values": inputs["pixel_values"][:2]})


# -------------------------------------------------------------------------------------------- task behaviour


def test_retrieval_rank_rescores_top_k_with_itm():
    torch.manual_seed(0)
    config = tiny_config()
    model = EfficientVLMForImageTextRetrieval(config).eval()
    inputs = tiny_inputs(EfficientVLMForImageTextRetrieval, config, batch=4)
    with torch.no_grad():
        image_embeds = model.efficientvlm.encode_image(inputs["pixel_values"]).last_hidden_state
        i2t, t2i = model.rank(image_embeds, inputs["input_ids"], inputs["attention_mask"], k=2, batch_size=3)
        assert i2t.shape == (4, 4) and t2i.shape == (4, 4)
        assert (torch.isfinite(i2t).sum(1) == 2).all() and (torch.isfinite(t2i).sum(1) == 2).all()
        # the re-scored candidates are the ITC top 2, scored with the ITM match logit
        image = model.get_image_features(inputs["pixel_values"]).pooler_output
        text = model.get_text_features(inputs["input_ids"], inputs["attention_mask"]).pooler_output
        sim = F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t()
        top = sim.topk(2, dim=1).indices
        assert torch.equal(torch.isfinite(i2t).nonzero()[:, 1].view(4, 2).sort(1).values, top.sort(1).values)
        text_embeds = model.efficientvlm.encode_text(inputs["input_ids"], inputs["attention_mask"]).last_hidden_state
        logits, _ = model.itm_logits(image_embeds[:1], text_embeds[top[0, :1]], inputs["attention_mask"][top[0, :1]])
        torch.testing.assert_close(i2t[0, top[0, 0]], logits[0, 1])


def test_itm_negatives_are_mined_and_can_be_replayed():
    torch.manual_seed(0)
    config = tiny_config()
    model = EfficientVLMForPreTraining(config).eval()
    inputs = tiny_inputs(EfficientVLMForPreTraining, config, batch=4)
    del inputs["itm_negative_text_index"], inputs["itm_negative_image_index"]
    inputs["image_ids"] = torch.tensor([0, 0, 1, 2])  # captions 0 and 1 describe the same image
    with torch.no_grad():
        out = model(**inputs)
        assert out.logits.shape == (12, 2) and out.itm_labels.tolist() == [1] * 4 + [0] * 8
        negatives = out.itm_negative_text_index
        assert all(inputs["image_ids"][n] != inputs["image_ids"][i] for i, n in enumerate(negatives.tolist()))
        replay = model(**inputs, itm_negative_text_index=negatives,
                       itm_negative_image_index=out.itm_negative_image_index)
    torch.testing.assert_close(replay.logits, out.logits)
    assert torch.isfinite(out.mlm_loss) and out.mlm_logits.shape == (4, 7, config.text_config.vocab_size)


def test_captioning_generate_matches_a_manual_greedy_loop():
    torch.manual_seed(0)
    config = tiny_config()
    model = EfficientVLMForCaptioning(config).eval()
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        generated = model.generate(pixel_values=pixel_values, num_beams=1, max_new_tokens=4, min_length=0)
        ids = torch.full((2, 1), config.text_config.bos_token_id)
        for _ in range(4):
            logits = model(pixel_values=pixel_values, input_ids=ids).logits[:, -1]
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
        assert torch.equal(generated[:, : ids.shape[1]], ids[:, : generated.shape[1]])
        beams = model.generate(pixel_values=pixel_values, max_new_tokens=4)
    assert beams.shape[0] == 2 and (beams[:, 0] == config.text_config.bos_token_id).all()
    assert model.generation_config.num_beams == 3 and model.generation_config.temperature in (None, 1.0)
    assert not hasattr(model.config, "temperature")


# ------------------------------------------------------------------------------------------- auto classes


def test_auto_classes_resolve_saved_checkpoints(tmp_path):
    config = tiny_config()
    EfficientVLMForVisualQuestionAnswering(config).save_pretrained(tmp_path / "vqa")
    EfficientVLMForPreTraining(config).save_pretrained(tmp_path / "pt")
    assert type(AutoModelForVisualQuestionAnswering.from_pretrained(tmp_path / "vqa")) is \
        EfficientVLMForVisualQuestionAnswering
    assert type(AutoModel.from_pretrained(tmp_path / "vqa")) is EfficientVLMModel
    assert type(AutoModelForPreTraining.from_pretrained(tmp_path / "pt")) is EfficientVLMForPreTraining


def test_word_embeddings_are_tied_to_the_lm_head(tmp_path):
    model = EfficientVLMForCaptioning(tiny_config())
    assert model.lm_head.decoder.weight is model.efficientvlm.text_model.embeddings.word_embeddings.weight
    model.save_pretrained(tmp_path)
    reloaded = EfficientVLMForCaptioning.from_pretrained(tmp_path)
    assert reloaded.lm_head.decoder.weight is reloaded.efficientvlm.text_model.embeddings.word_embeddings.weight


# ------------------------------------------------------------------------- initialisation from CLIP / BERT


@pytest.fixture(scope="module")
def clip_and_bert(tmp_path_factory):
    root = tmp_path_factory.mktemp("towers")
    torch.manual_seed(0)
    clip = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=4,
                                            num_attention_heads=4, image_size=32, patch_size=8)).eval()
    bert = BertModel(BertConfig(vocab_size=64, hidden_size=24, num_hidden_layers=4, num_attention_heads=2,
                                intermediate_size=40, max_position_embeddings=40), add_pooling_layer=False).eval()
    clip.save_pretrained(root / "clip")
    bert.save_pretrained(root / "bert")
    return root, clip, bert


def test_from_vision_text_pretrained_copies_clip_and_bert(clip_and_bert):
    root, clip, bert = clip_and_bert
    model = EfficientVLMForVisualQuestionAnswering.from_vision_text_pretrained(
        root / "clip", root / "bert", text_layers=2, config_kwargs={"id2label": {0: "yes", 1: "no"}}).eval()
    assert model.config.num_labels == 2
    assert model.config.text_config.num_hidden_layers == 2 and model.config.fusion_config.num_hidden_layers == 2
    pixel_values = torch.randn(2, 3, 32, 32)
    input_ids = torch.randint(1, 64, (2, 5))
    with torch.no_grad():
        ours = model.efficientvlm.encode_image(pixel_values, output_hidden_states=True)
        theirs = clip(pixel_values, output_hidden_states=True)
        torch.testing.assert_close(ours.hidden_states[-1], theirs.last_hidden_state)
        text = model.efficientvlm.encode_text(input_ids)
        bert_states = bert(input_ids, output_hidden_states=True).hidden_states
        torch.testing.assert_close(text.last_hidden_state, bert_states[2], rtol=1e-5, atol=1e-5)
    fusion_layer = model.efficientvlm.fusion_model.encoder.layers[1]
    torch.testing.assert_close(fusion_layer.mlp.fc1.weight, bert.encoder.layer[3].intermediate.dense.weight)
    torch.testing.assert_close(fusion_layer.self_attn.q_proj.weight, bert.encoder.layer[3].attention.self.query.weight)
    assert fusion_layer.cross_attn.k_proj.in_features == 32
    # what CLIP and BERT did not provide is random until trained: such a model cannot teach yet
    random = model.weights_not_loaded()
    assert {"classifier.0.weight", "efficientvlm.fusion_model.encoder.layers.1.cross_attn.k_proj.weight"} <= set(random)
    assert not any(".vision_model." in name or ".text_model." in name or ".self_attn." in name for name in random)
    assert model.loaded_from == f"{root / 'clip'} + {root / 'bert'}"


def test_from_vision_text_pretrained_interpolates_to_a_fine_tuning_resolution(clip_and_bert):
    root, _, _ = clip_and_bert
    model = EfficientVLMModel.from_vision_text_pretrained(root / "clip", root / "bert", image_size=48)
    assert model.config.vision_config.image_size == 48
    assert model.vision_model.embeddings.position_embedding.num_embeddings == 37
    with pytest.raises(ValueError, match="must not exceed"):
        EfficientVLMModel.from_vision_text_pretrained(root / "clip", root / "bert", text_layers=3, fusion_layers=3)


# -------------------------------------------------------------------------------------------- create_student


def test_uniform_layer_choice_is_every_other_layer():
    assert uniform_layer_choice(12, 6) == [1, 3, 5, 7, 9, 11]
    assert uniform_layer_choice(6, 3) == [1, 3, 5]
    assert uniform_layer_choice(3, 3) == [0, 1, 2]
    with pytest.raises(ValueError):
        uniform_layer_choice(3, 4)


@pytest.mark.parametrize("model_class", [EfficientVLMForPreTraining, EfficientVLMForVisualQuestionAnswering])
def test_create_student_copies_the_chosen_layers(model_class):
    torch.manual_seed(0)
    config = tiny_config(vision_config={"num_hidden_layers": 4}, text_config={"num_hidden_layers": 2},
                         fusion_config={"num_hidden_layers": 2})
    teacher = model_class(config)
    student = create_student(teacher, vision_layers=2, text_layers=[0], fusion_layers=1)
    assert type(student) is model_class
    assert student.config.vision_config.num_hidden_layers == 2 and student.config.text_config.num_hidden_layers == 1
    assert student.config.student_of["layers"] == {"vision": [1, 3], "text": [0], "fusion": [1]}
    t, s = teacher.efficientvlm, student.efficientvlm
    pairs = [(s.vision_model.encoder.layers[0], t.vision_model.encoder.layers[1]),
             (s.vision_model.encoder.layers[1], t.vision_model.encoder.layers[3]),
             (s.text_model.encoder.layers[0], t.text_model.encoder.layers[0]),
             (s.fusion_model.encoder.layers[0], t.fusion_model.encoder.layers[1])]
    for student_layer, teacher_layer in pairs:
        for (name, a), (_, b) in zip(student_layer.state_dict().items(), teacher_layer.state_dict().items()):
            assert torch.equal(a, b), name
    for name, value in teacher.state_dict().items():
        if ".encoder.layers." not in name:
            assert torch.equal(student.state_dict()[name], value), name
    with pytest.raises(ValueError, match=r"vision_layers=\[7\]: teacher vision layer 7 does not exist \(the "
                                         r"teacher's vision encoder has 4 layers: 0 to 3\)"):
        create_student(teacher, vision_layers=[7])


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"text_layers": 6}, ValueError, r"text_layers=6: the student's text encoder cannot have 6 layers when the "
                                         r"teacher's text encoder has 2\. Give a number from 0 to 2"),
        ({"fusion_layers": -1}, ValueError, r"fusion_layers=-1: the student's fusion encoder cannot have -1 layers"),
        ({"vision_layers": 2.0}, TypeError, r"vision_layers=2\.0: give the number of vision layers \(an int\)"),
        ({"text_layers": [0.5]}, TypeError, r"text_layers=\[0\.5\]: teacher layer indices must be integers"),
        ({"fusion_layers": "1"}, TypeError, r"fusion_layers='1': give the number of fusion layers"),
    ],
)
def test_create_student_errors_name_the_encoder(kwargs, error, message):
    teacher = EfficientVLMModel(tiny_config())
    with pytest.raises(error, match=message):
        create_student(teacher, **{"vision_layers": 1, "text_layers": 1, "fusion_layers": 1, **kwargs})


def test_create_student_of_a_heterogeneous_teacher_keeps_its_layer_sizes():
    teacher = EfficientVLMModel(tiny_config(heterogeneous=True))
    student = create_student(teacher, vision_layers=[1, 2], text_layers=1, fusion_layers=[0])
    assert student.config.vision_config.per_layer("num_attention_heads") == [0, 3]
    assert student.config.vision_config.per_layer("intermediate_size") == [16, 8]
    assert student.config.fusion_config.per_layer("num_cross_attention_heads") == [1]


def test_box_losses_by_hand():
    from efficientvlm.models.modeling_efficientvlm import box_losses

    pred = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.2, 0.4], [0.9, 0.9, 0.1, 0.1]])
    target = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.4, 0.3, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1]])
    l1, giou = box_losses(pred, target, torch.tensor([True, True, False]))
    # row 0: identical (L1 0, GIoU 1); row 1: L1 = 0.1 + 0 + 0 + 0.2 = 0.3; boxes [0.2, 0.1, 0.4, 0.5] and
    # [0.3, 0.2, 0.5, 0.4]: intersection 0.1 * 0.2 = 0.02, union 0.08 + 0.04 - 0.02 = 0.10, enclosing
    # [0.2, 0.1, 0.5, 0.5] = 0.12, GIoU = 0.2 - 0.02 / 0.12; row 2 is masked out
    assert l1.item() == pytest.approx(0.3 / 2)
    assert giou.item() == pytest.approx((0 + 1 - (0.2 - 0.02 / 0.12)) / 2)
    l1_all, _ = box_losses(pred, target)
    assert l1_all.item() == pytest.approx((0.3 + 1.6) / 3)
    none = box_losses(pred, target, torch.zeros(3, dtype=torch.bool))
    assert none[0].item() == none[1].item() == 0.0
    with pytest.raises(ValueError, match="zero or negative width"):
        box_losses(pred, torch.zeros(3, 4))


def test_pretraining_box_regression_reads_the_fused_cls_of_each_region_text():
    torch.manual_seed(0)
    model = EfficientVLMForPreTraining(tiny_config(use_bbox_head=True)).eval()
    inputs = tiny_inputs(EfficientVLMForPreTraining, model.config)
    target = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.5, 0.3, 0.1], [0.5, 0.5, 1.0, 1.0]])
    without = EfficientVLMForPreTraining(tiny_config())  # off by default (X-VLM's use_bbox_loss)
    assert without.bbox_head is None
    with pytest.raises(ValueError, match="use_bbox_head=True"):
        without(**inputs, target_bbox=target)
    mask = torch.tensor([True, True, False])
    with torch.no_grad():
        plain = model(**inputs)
        out = model(**inputs, target_bbox=target, bbox_mask=mask)
        base = model.efficientvlm
        fused = base.fuse(base.encode_text(inputs["input_ids"], inputs["attention_mask"]).last_hidden_state,
                          inputs["attention_mask"], base.encode_image(inputs["pixel_values"]).last_hidden_state)
        expected = model.bbox_head(fused.last_hidden_state[:, 0]).sigmoid()
    torch.testing.assert_close(out.pred_boxes, expected)
    from efficientvlm.models.modeling_efficientvlm import box_losses

    l1, giou = box_losses(expected, target, mask)
    torch.testing.assert_close(out.bbox_loss, l1)
    torch.testing.assert_close(out.giou_loss, giou)
    torch.testing.assert_close(out.loss, plain.loss + l1 + giou)
    assert plain.bbox_loss is None and plain.pred_boxes is None
    # the unboxed row does not move the loss
    moved = target.clone()
    moved[2] = torch.tensor([0.1, 0.9, 0.05, 0.05])
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs, target_bbox=moved, bbox_mask=mask).loss, out.loss)
