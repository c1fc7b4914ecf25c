"""Core of modal-adaptive pruning: gates, L0 module, Lagrangian, materialisation, reports.

The correctness gate: masked model (deterministic gates through the hooks) == materialised model == reloaded
model, for every head class, on gates with empty heads, empty FFNs, removed sub-blocks and an empty fusion layer.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModel, AutoModelForPreTraining, AutoModelForVisualQuestionAnswering
from torch.utils.flop_counter import FlopCounterMode

from efficientvlm.models.configuration_efficientvlm import EfficientVLMConfig
from efficientvlm.models.modeling_efficientvlm import (
    EfficientVLMForCaptioning,
    EfficientVLMForImageTextRetrieval,
    EfficientVLMForNLVR2,
    EfficientVLMForPreTraining,
    EfficientVLMForVisualQuestionAnswering,
    EfficientVLMModel,
)
from efficientvlm.pruning import (
    MODALITIES,
    HardConcreteGate,
    ModalAdaptiveL0Module,
    apply_gates,
    clear_gates,
    deterministic_gates,
    gates_applied,
    keep_lists_from_gates,
    keep_probability,
    layer_sizes,
    materialize,
    prunable_parameter_count,
    prune_model,
    pruning_report,
    sample_hard_concrete,
    save_report,
)
from efficientvlm.pruning.gates import BETA, LOG_ALPHA_MAX, LOG_ALPHA_MIN
from efficientvlm.pruning.structure import SUB_BLOCKS

BATCH, TEXT_LEN, IMAGE = 3, 7, 32


def tiny_config(**vision_text_fusion) -> EfficientVLMConfig:
    """Vision (width 32, head_dim 8) differs from text/fusion (width 24, head_dim 6): cross-attention K/V read 32."""
    sub = {
        "vision_config": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, head_dim=8,
                              intermediate_size=40, image_size=IMAGE, patch_size=8),
        "text_config": dict(vocab_size=50, hidden_size=24, num_hidden_layers=2, num_attention_heads=3, head_dim=6,
                            intermediate_size=36, max_position_embeddings=32, pad_token_id=0, bos_token_id=1,
                            eos_token_id=2, mask_token_id=3),
        "fusion_config": dict(hidden_size=24, num_hidden_layers=3, num_attention_heads=3,
                              num_cross_attention_heads=4, head_dim=6, intermediate_size=36),
    }
    for key, extra in vision_text_fusion.items():
        sub[key] = {**sub[key], **extra}
    return EfficientVLMConfig(**sub, projection_dim=16, id2label={0: "yes", 1: "no", 2: "two"})


def make_model(cls=EfficientVLMModel, config=None, seed=0):
    torch.manual_seed(seed)
    return cls(config or tiny_config()).eval()


# -------------------------------------------------------------------------------------------------------------
# gate patterns
# -------------------------------------------------------------------------------------------------------------

ALL = ("heads", "ffn", "blocks")


def random_pattern(l0: ModalAdaptiveL0Module, seed: int) -> dict:
    """A random 0/1 pattern over every gate group (partial groups keep at least one unit and drop one)."""
    generator = torch.Generator().manual_seed(seed)
    pattern = {}
    for modality, layers in l0.gates.items():
        pattern[modality] = []
        for groups in layers:
            values = {}
            for key, gate in groups.items():
                n = gate.log_alpha.numel()
                if n == 1:
                    values[key] = torch.ones(1)
                else:
                    bits = (torch.rand(n, generator=generator) < 0.6).float()
                    bits[0], bits[-1] = 1.0, 0.0
                    values[key] = bits[torch.randperm(n, generator=generator)]
            pattern[modality].append(values)
    return pattern


def structural_pattern(l0: ModalAdaptiveL0Module) -> dict:
    """Random partial gates plus every special case: empty heads, empty FFN, removed sub-blocks whose units are
    still on, an empty cross-attention, and a fusion layer with nothing left."""
    pattern = random_pattern(l0, seed=1)
    pattern["vision"][1]["heads"] = torch.zeros(4)               # attention vanishes through its heads
    pattern["vision"][1]["ffn_block"] = torch.zeros(1)           # FFN removed by its block gate
    pattern["text"][0]["ffn"] = torch.zeros(36)                  # empty FFN
    pattern["text"][1]["attention_block"] = torch.zeros(1)       # attention removed by its block gate
    pattern["fusion"][1] = {key: torch.zeros_like(bits) for key, bits in pattern["fusion"][1].items()}
    pattern["fusion"][1]["attention_block"] = torch.ones(1)      # heads all 0 under an open block gate
    pattern["fusion"][2]["cross_heads"] = torch.zeros(4)         # empty cross-attention
    return pattern


def set_pattern(l0: ModalAdaptiveL0Module, pattern: dict, magnitude: float = 10.0) -> None:
    """log_alpha = +-magnitude, so the deterministic rule reproduces the pattern exactly."""
    with torch.no_grad():
        for modality, layers in pattern.items():
            for groups, values in zip(l0.gates[modality], layers):
                for key, bits in values.items():
                    groups[key].log_alpha.copy_(torch.where(bits > 0, magnitude, -magnitude))


def pattern_l0(config: EfficientVLMConfig, pattern_fn=structural_pattern) -> ModalAdaptiveL0Module:
    l0 = ModalAdaptiveL0Module(config, 0.5, prune=ALL)
    set_pattern(l0, pattern_fn(l0))
    return l0.eval()


# -------------------------------------------------------------------------------------------------------------
# the correctness gate
# -------------------------------------------------------------------------------------------------------------


def text_inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(4, 50, (BATCH, TEXT_LEN), generator=generator)
    input_ids[:, 0] = 1
    attention_mask = torch.ones(BATCH, TEXT_LEN, dtype=torch.long)
    attention_mask[1, 5:] = 0  # padding
    attention_mask[2, 3:] = 0
    input_ids[attention_mask == 0] = 0
    return input_ids, attention_mask, generator


def head_inputs(cls) -> dict:
    input_ids, attention_mask, generator = text_inputs()
    pixel_shape = (BATCH, 2, 3, IMAGE, IMAGE) if cls is EfficientVLMForNLVR2 else (BATCH, 3, IMAGE, IMAGE)
    inputs = {"pixel_values": torch.randn(pixel_shape, generator=generator), "input_ids": input_ids,
              "attention_mask": attention_mask}
    if cls in (EfficientVLMForImageTextRetrieval, EfficientVLMForPreTraining):
        inputs["itm_negative_text_index"] = torch.tensor([1, 2, 0])
        inputs["itm_negative_image_index"] = torch.tensor([2, 0, 1])
    if cls is EfficientVLMForPreTraining:
        mlm_labels = torch.full_like(input_ids, -100)
        mlm_labels[:, 2] = input_ids[:, 2]
        inputs["mlm_input_ids"] = input_ids.masked_fill(mlm_labels != -100, 3)
        inputs["mlm_labels"] = mlm_labels
    if cls is EfficientVLMForVisualQuestionAnswering:
        inputs["labels"] = torch.rand(BATCH, 3, generator=generator)
    if cls is EfficientVLMForNLVR2:
        inputs["labels"] = torch.tensor([0, 1, 1])
    if cls is EfficientVLMForCaptioning:
        inputs["labels"] = input_ids.masked_fill(attention_mask == 0, -100)
    return inputs


def assert_same_outputs(reference, other, atol: float = 1e-5) -> None:
    tensors = {k: v for k, v in reference.items() if isinstance(v, torch.Tensor)}
    assert tensors, "nothing to compare"
    for key, value in tensors.items():
        assert key in other and other[key] is not None, key
        difference = (value.float() - other[key].float()).abs().max().item() if value.numel() else 0.0
        assert difference <= atol, f"{key}: max abs difference {difference}"


HEADS = [EfficientVLMModel, EfficientVLMForVisualQuestionAnswering, EfficientVLMForImageTextRetrieval,
         EfficientVLMForPreTraining, EfficientVLMForNLVR2, EfficientVLMForCaptioning]


@pytest.mark.parametrize("cls", HEADS, ids=lambda c: c.__name__)
def test_masked_equals_materialized_equals_reloaded(cls, tmp_path):
    model = make_model(cls)
    l0 = pattern_l0(model.config)
    zs = l0.deterministic()
    inputs = head_inputs(cls)

    with torch.no_grad():
        dense = model(**inputs)
        with gates_applied(model, zs):
            masked = model(**inputs)
        pruned = materialize(model, zs)
        materialized = pruned(**inputs)
        after_clear = model(**inputs)

    # the gates really change the function, and clearing them restores the dense model
    main = "last_hidden_state" if cls is EfficientVLMModel else "logits"
    assert (masked[main] - dense[main]).abs().max() > 1e-3
    assert_same_outputs(dense, after_clear, atol=0.0)
    assert_same_outputs(masked, materialized)

    # the structure the gates asked for
    fusion_sizes = pruned.config.fusion_config
    assert fusion_sizes.num_attention_heads[1] == fusion_sizes.num_cross_attention_heads[1] == 0
    assert fusion_sizes.intermediate_size[1] == 0 and fusion_sizes.num_cross_attention_heads[2] == 0
    assert pruned.config.vision_config.num_attention_heads[1] == 0
    assert pruned.config.vision_config.intermediate_size[1] == 0
    assert pruned.config.text_config.intermediate_size[0] == 0
    assert pruned.config.text_config.num_attention_heads[1] == 0
    empty = pruned.base_model.fusion_model.encoder.layers[1]
    assert empty.self_attn is empty.cross_attn is empty.mlp is None
    assert sum(p.numel() for p in empty.parameters()) == 0

    pruned.save_pretrained(tmp_path)
    reloaded, info = cls.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    with torch.no_grad():
        assert_same_outputs(masked, reloaded.eval()(**inputs))
    assert reloaded.config.layer_sizes() == pruned.config.layer_sizes()
    assert reloaded.config.pruning_info == pruned.config.pruning_info

    # the head's Auto class (where transformers has one) reloads it strictly too
    auto_class = {EfficientVLMModel: AutoModel, EfficientVLMForPreTraining: AutoModelForPreTraining,
                  EfficientVLMForVisualQuestionAnswering: AutoModelForVisualQuestionAnswering}.get(cls)
    if auto_class is not None:
        auto = auto_class.from_pretrained(tmp_path)
        assert type(auto) is cls
        with torch.no_grad():
            assert_same_outputs(masked, auto.eval()(**inputs))


def test_materialize_folds_fractional_unit_gates():
    model = make_model(EfficientVLMForVisualQuestionAnswering)
    l0 = pattern_l0(model.config)
    generator = torch.Generator().manual_seed(3)
    zs = l0.deterministic()
    for layers in zs.values():  # scale every kept unit by a value in (0.2, 1)
        for gates in layers:
            for key, z in gates.items():
                if not key.endswith("_block"):
                    gates[key] = z * (0.2 + 0.8 * torch.rand(z.shape, generator=generator))
    inputs = head_inputs(EfficientVLMForVisualQuestionAnswering)
    with torch.no_grad(), gates_applied(model, zs):
        masked = model(**inputs)
    with torch.no_grad():
        assert_same_outputs(masked, materialize(model, zs)(**inputs))

    zs["text"][0]["attention_block"] = torch.tensor(0.5)
    with pytest.raises(ValueError, match="not 0 or 1"):
        materialize(model, zs)


def test_materialize_keeps_input_model_and_its_gates():
    model = make_model()
    l0 = pattern_l0(model.config)
    zs = l0.deterministic()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_gates(model, zs)
    pruned = materialize(model, zs)
    assert model.base_model.vision_model.encoder.layers[0].self_attn.head_gate is zs["vision"][0]["heads"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(layer.self_attn is None or layer.self_attn.head_gate is None
               for layer in pruned.base_model.vision_model.encoder.layers)
    clear_gates(model)


# -------------------------------------------------------------------------------------------------------------
# expected size
# -------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prune", [ALL, ("heads", "ffn"), ("ffn",), ("heads", "blocks")])
@pytest.mark.parametrize("seed", [0, 1])
def test_expected_size_of_hard_gates_is_the_materialized_count(prune, seed):
    model = make_model()
    l0 = ModalAdaptiveL0Module(model.config, 0.1, prune=prune)
    assert l0.full_size["params"] == {**prunable_parameter_count(model),
                                      "overall": sum(prunable_parameter_count(model).values())}
    set_pattern(l0, structural_pattern(l0) if prune == ALL and seed else random_pattern(l0, seed))
    zs = l0.deterministic()
    counted = prunable_parameter_count(materialize(model, zs))
    expected = l0.expected_size("params", zs)
    for modality, count in counted.items():
        assert expected[modality].item() == count, modality
    assert expected["overall"].item() == sum(counted.values())


def test_expected_size_is_differentiable_and_nested():
    config = tiny_config()
    l0 = ModalAdaptiveL0Module(config, 0.3, prune=ALL)
    size = l0.expected_size()["overall"]
    size.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in l0.gate_parameters())
    # E[size] of a sub-block = P(block) * (P(any head) * block cost + sum P(head) * head cost)
    gates = l0.gates["text"][0]
    with torch.no_grad():
        before = l0.expected_size()["text"]
        p_block = keep_probability(gates["attention_block"].log_alpha.double())
        p_heads = keep_probability(gates["heads"].log_alpha.double())
        gates["attention_block"].log_alpha.fill_(-100.0)  # closing the block removes it, whatever its heads say
        after = l0.expected_size()["text"]
    cost = l0.costs["params"]["text"]["attention"]
    sub_block = p_block * ((1 - torch.prod(1 - p_heads)) * cost.block + p_heads.sum() * cost.unit)
    assert (before - after).item() == pytest.approx(sub_block.item(), rel=1e-6)


def test_flops_budget_counts_the_matmuls_of_the_encoders():
    config = tiny_config()
    model = make_model(config=config)
    model.config._attn_implementation = "eager"  # sdpa kernels are not seen by the CPU flop counter
    l0 = pattern_l0(config)
    l0.text_length = TEXT_LEN
    zs = l0.deterministic()
    pruned = materialize(model, zs)
    image_tokens = (IMAGE // 8) ** 2 + 1
    for candidate, gates in ((model, None), (pruned, zs)):
        base = candidate.base_model
        image, text = torch.randn(1, image_tokens, 32), torch.randn(1, TEXT_LEN, 24)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            base.vision_model.encoder(image)
            base.text_model.encoder(text)
            base.fusion_model.encoder(text, None, image)
        l0_flops = ModalAdaptiveL0Module(config, 0.1, prune=ALL, budget="flops", text_length=TEXT_LEN)
        expected = l0_flops.expected_size("flops", gates)["overall"] if gates else l0_flops.full_size["flops"][
            "overall"]
        assert counter.get_total_flops() == 2 * float(expected)  # FlopCounterMode counts multiply and add


def test_flops_budget_prices_vision_by_its_tokens():
    config = tiny_config()
    small = ModalAdaptiveL0Module(config, 0.1, budget="flops", text_length=TEXT_LEN)
    large = ModalAdaptiveL0Module(config, 0.1, budget="flops", text_length=TEXT_LEN, image_size=4 * IMAGE)
    params = ModalAdaptiveL0Module(config, 0.1)
    assert large.full_size["flops"]["vision"] > 16 * small.full_size["flops"]["vision"]
    assert large.full_size["flops"]["text"] == small.full_size["flops"]["text"]
    assert large.full_size["params"] == params.full_size["params"]


# -------------------------------------------------------------------------------------------------------------
# Lagrangian
# -------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["below", "above"])
def test_lagrangian_pushes_sparsity_towards_the_target(side):
    config = tiny_config()
    l0 = ModalAdaptiveL0Module(config, 0.5, prune=ALL)
    if side == "above":
        with torch.no_grad():
            for p in l0.gate_parameters():
                p.fill_(-2.0)
    target = 0.5
    start = l0.expected_sparsity()["overall"].item()
    assert (start < target) if side == "below" else (start > target)

    optimizer = torch.optim.SGD(l0.param_groups(lr=1.0), lr=1.0)
    group = next(g for g in optimizer.param_groups if g.get("maximize"))
    assert group["params"] == [l0.lambda_1, l0.lambda_2]

    # 1. ascent step on the lambdas (log_alpha gets no gradient while the lambdas are 0)
    l0.lagrangian(target).backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in l0.gate_parameters())
    optimizer.step()
    optimizer.zero_grad()
    gap = start - target
    assert l0.lambda_1.item() == pytest.approx(gap, rel=1e-5)  # maximised: lambda_1 follows the sign of the gap
    assert l0.lambda_2.item() == pytest.approx(gap * gap, rel=1e-5)  # and lambda_2 only grows

    # 2. descent step on log_alpha: the sparsity moves towards the target
    l0.lagrangian(target).backward()
    with torch.no_grad():
        for p in l0.gate_parameters():
            p -= 10.0 * p.grad
    moved = l0.expected_sparsity()["overall"].item()
    assert (moved > start) if side == "below" else (moved < start)


def test_adamw_ascent_on_lambdas():
    l0 = ModalAdaptiveL0Module(tiny_config(), 0.2)
    optimizer = l0.create_optimizer(lr=0.01)
    for _ in range(3):  # expected sparsity ~0 is below the target: lambda_1 must decrease, lambda_2 increase
        optimizer.zero_grad()
        l0.lagrangian(0.2).backward()
        optimizer.step()
        l0.clamp_()
    assert l0.lambda_1.item() < 0 < l0.lambda_2.item()


def test_per_modality_targets_have_one_term_each():
    config = tiny_config()
    l0 = ModalAdaptiveL0Module(config, {"vision": 0.3, "fusion": 0.1}, modalities=("vision", "fusion"),
                               warmup_steps=10)
    assert l0.lambda_1.shape == (2,)
    assert l0.target_at(5) == {"vision": 0.15, "fusion": 0.05}
    with torch.no_grad():
        l0.lambda_1.copy_(torch.tensor([1.0, 0.0]))
    l0.lagrangian(l0.target_at(10)).backward()
    vision_grad = sum(p.grad.abs().sum() for p in l0.gates["vision"].parameters())
    fusion_grad = sum(p.grad.abs().sum() for p in l0.gates["fusion"].parameters())
    assert vision_grad > 0 and fusion_grad == 0
    assert "text" not in l0.gates
    with pytest.raises(ValueError, match="per-modality"):
        l0.lagrangian(0.2)


def test_target_warmup():
    l0 = ModalAdaptiveL0Module(tiny_config(), 0.4, warmup_steps=100)
    assert [l0.target_at(s) for s in (0, 50, 100, 1000)] == [0.0, 0.2, 0.4, 0.4]
    assert ModalAdaptiveL0Module(tiny_config(), 0.4).target_at(0) == 0.4


@pytest.mark.parametrize("target", [-0.1, 1.0, 1.5])
def test_targets_outside_unit_interval_are_rejected(target):
    with pytest.raises(ValueError, match=r"must be in \[0, 1\)"):
        ModalAdaptiveL0Module(tiny_config(), target)


def test_unreachable_targets_are_rejected_with_the_numbers():
    config = tiny_config()
    ffn_only = ModalAdaptiveL0Module(config, 0.1, prune=("ffn",))
    reachable = ffn_only.max_sparsity()["overall"]
    costs, sizes = ffn_only.costs["params"], layer_sizes(config)
    ffn_share = sum(costs[m]["ffn"].size(layer["ffn"]) for m in sizes for layer in sizes[m]) \
        / ffn_only.full_size["params"]["overall"]
    assert reachable < ffn_share < 1
    with pytest.raises(ValueError, match=rf"at most {reachable:.4f}.*prune="):
        ModalAdaptiveL0Module(config, round(ffn_share, 3), prune=("ffn",))
    ModalAdaptiveL0Module(config, reachable - 0.01, prune=("ffn",))  # just below is fine
    with pytest.raises(ValueError, match="cannot be reached"):
        ModalAdaptiveL0Module(config, 0.6, modalities=("text",))  # text is a small part of the model
    with pytest.raises(ValueError, match="pruned modalities"):
        ModalAdaptiveL0Module(config, {"text": 0.2}, modalities=("vision",))
    with pytest.raises(ValueError, match="prune="):
        ModalAdaptiveL0Module(config, 0.2, prune=("hidden",))


# -------------------------------------------------------------------------------------------------------------
# gates
# -------------------------------------------------------------------------------------------------------------


def test_deterministic_rule_on_hand_set_log_alpha():
    log_alpha = torch.tensor([3.0, -2.0, 0.5, -4.0, 1.0, -0.5])
    keep = [1 / (1 + math.exp(-(a + 1.5986))) for a in log_alpha.tolist()]  # -beta*log(-l/r) = 1.5986
    n_zeros = round(sum(1 - p for p in keep))
    assert n_zeros == 2  # sum P(z=0) = 1.83
    assert deterministic_gates(log_alpha).tolist() == [1, 0, 1, 0, 1, 1]
    # block gates: a group of one, kept iff P(z != 0) >= 0.5
    assert deterministic_gates(torch.tensor([-1.5])).tolist() == [1.0]
    assert deterministic_gates(torch.tensor([-1.7])).tolist() == [0.0]
    # the scores, sigmoid(0.8 log_alpha / beta), rank like log_alpha; ties go to the lower index
    assert deterministic_gates(torch.tensor([-3.0, -3.0, 4.0])).tolist() == [0, 0, 1]
    assert deterministic_gates(torch.tensor([-1.0, -1.0, -1.0, 4.0])).tolist() == [0, 1, 1, 1]
    assert BETA == pytest.approx(2 / 3)


def test_l0_eval_mode_is_deterministic_and_training_mode_samples():
    l0 = ModalAdaptiveL0Module(tiny_config(), 0.3, prune=ALL, droprate_init=0.5)
    l0.eval()
    first, second = l0(), l0()
    assert first["fusion"][0]["ffn"].equal(second["fusion"][0]["ffn"])
    assert set(first["fusion"][0]["ffn"].unique().tolist()) <= {0.0, 1.0}
    assert first["fusion"][0]["ffn_block"].shape == ()
    l0.train()
    assert not l0()["fusion"][0]["ffn"].equal(l0()["fusion"][0]["ffn"])


def test_sampling_range_and_keep_probability():
    torch.manual_seed(0)
    log_alpha = torch.tensor([-2.0, 0.0, 2.0]).repeat(20000, 1).requires_grad_()
    z = sample_hard_concrete(log_alpha)
    assert z.min() >= 0 and z.max() <= 1
    assert (z == 0).any() and (z == 1).any() and ((z > 0) & (z < 1)).any()
    empirical = (z > 0).float().mean(0)
    assert torch.allclose(empirical, keep_probability(log_alpha[0].detach()), atol=0.02)
    z.sum().backward()
    assert log_alpha.grad.abs().sum() > 0


def test_log_alpha_init_and_clamping():
    gate = HardConcreteGate(1000)
    assert gate.log_alpha.mean().item() == pytest.approx(math.log(99), abs=0.01)
    assert keep_probability(gate.log_alpha).min() > 0.99
    l0 = ModalAdaptiveL0Module(tiny_config(), 0.3, prune=ALL)
    assert l0.expected_sparsity()["overall"].item() < 0.01
    assert all((z == 1).all() for layers in l0.deterministic().values() for g in layers for z in g.values())
    with torch.no_grad():
        for i, p in enumerate(l0.gate_parameters()):
            p.fill_(50.0 if i % 2 else -50.0)
    l0.clamp_()
    values = torch.cat([p.flatten() for p in l0.gate_parameters()])
    assert values.min().item() == pytest.approx(LOG_ALPHA_MIN) and values.max().item() == pytest.approx(
        LOG_ALPHA_MAX)
    with pytest.raises(ValueError, match="droprate_init"):
        HardConcreteGate(3, droprate_init=1.0)


def test_training_step_reaches_log_alpha_without_host_syncs(monkeypatch):
    model = make_model().train()
    l0 = ModalAdaptiveL0Module(model.config, 0.3, prune=ALL, warmup_steps=10, droprate_init=0.5).train()
    with torch.no_grad():
        l0.lambda_1.fill_(1.0)  # so that the Lagrangian reaches every gate (saturated samples have no gradient)
    input_ids, attention_mask, generator = text_inputs()
    pixel_values = torch.randn(BATCH, 3, IMAGE, IMAGE, generator=generator)

    def no_sync(*args, **kwargs):
        raise AssertionError("host sync in the per-step path")

    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, no_sync)
    zs = l0()
    with l0.applied(model, zs):
        output = model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
        loss = output.last_hidden_state.pow(2).mean() + l0.lagrangian(l0.target_at(3))
        loss.backward()
    l0.clamp_()
    monkeypatch.undo()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in l0.gate_parameters())
    assert l0.lambda_1.grad is not None and model.base_model.vision_model.encoder.layers[0].mlp.fc1.weight.grad \
        is not None

    # the task loss alone reaches the gates through the hooks
    l0.zero_grad()
    with torch.no_grad():
        l0.lambda_1.zero_()
    with l0.applied(model):
        model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask) \
            .last_hidden_state.pow(2).mean().backward()
    for modality in MODALITIES:
        assert sum(g.log_alpha.grad.abs().sum() for layer in l0.gates[modality] for g in layer.values()) > 0


def test_apply_checks_shapes_and_clear_restores_dense_model():
    model = make_model()
    l0 = ModalAdaptiveL0Module(model.config, 0.3).eval()
    zs = l0()
    zs["vision"][0]["heads"] = torch.ones(5)
    with pytest.raises(ValueError, match="shape"):
        l0.apply_to(model, zs)
    zs["vision"] = zs["vision"][:1]
    with pytest.raises(ValueError, match="1 vision layers"):
        apply_gates(model, zs)
    l0.apply_to(model)
    l0.clear(model)
    assert all(getattr(layer, spec.layer_gate) is None and getattr(getattr(layer, spec.module), spec.unit_gate)
               is None for layer in model.base_model.fusion_model.encoder.layers for spec in SUB_BLOCKS["fusion"])


def test_state_dict_round_trip_and_model_state_dict_untouched():
    model = make_model()
    l0 = pattern_l0(model.config)
    state = l0.state_dict()
    assert {"lambda_1", "lambda_2", "gates.fusion.2.cross_heads.log_alpha",
            "gates.vision.1.ffn_block.log_alpha"} <= set(state)
    with l0.applied(model, l0.deterministic()):
        assert set(model.state_dict()) == set(make_model().state_dict())
    fresh = ModalAdaptiveL0Module(model.config, 0.5, prune=ALL).eval()
    assert not fresh.deterministic()["vision"][1]["heads"].equal(l0.deterministic()["vision"][1]["heads"])
    fresh.load_state_dict(state)
    for modality in MODALITIES:
        for ours, theirs in zip(l0.deterministic()[modality], fresh.deterministic()[modality]):
            assert all(ours[key].equal(theirs[key]) for key in ours)


# -------------------------------------------------------------------------------------------------------------
# prune_model from keep-lists, reports
# -------------------------------------------------------------------------------------------------------------


def heterogeneous_config() -> EfficientVLMConfig:
    return tiny_config(
        vision_config={"num_attention_heads": [4, 2], "intermediate_size": [40, 0]},
        text_config={"num_attention_heads": [0, 3], "intermediate_size": [20, 36]},
        fusion_config={"num_attention_heads": [3, 2, 3], "num_cross_attention_heads": [4, 0, 1],
                       "intermediate_size": [36, 12, 0]},
    )


def test_prune_model_from_keep_lists_on_a_heterogeneous_model(tmp_path):
    model = make_model(EfficientVLMForVisualQuestionAnswering, heterogeneous_config())
    keep = {
        "vision": [{"heads": [3, 1], "ffn": list(range(0, 40, 3))}, {"heads": []}],
        "text": [{}, {"heads": [2], "ffn": [0, 35]}],
        "fusion": [{"cross_heads": [0, 3], "ffn": []}, {"heads": [1], "ffn": list(range(12))}, {"cross_heads": []}],
    }
    pruned = prune_model(model, keep, pruning_info={"note": "hand-made"})
    sizes = pruned.config.layer_sizes()
    assert sizes["vision"] == {"num_attention_heads": [2, 0], "intermediate_size": [14, 0]}
    assert sizes["text"] == {"num_attention_heads": [0, 1], "intermediate_size": [20, 2]}
    assert sizes["fusion"] == {"num_attention_heads": [3, 1, 3], "num_cross_attention_heads": [2, 0, 0],
                               "intermediate_size": [0, 12, 0]}
    assert pruned.config.pruning_info["note"] == "hand-made"
    assert pruned.config.pruning_info["prunable"]["params_after"] == sum(prunable_parameter_count(pruned).values())
    vision0 = pruned.base_model.vision_model.encoder.layers[0]
    assert vision0.self_attn.q_proj.weight.shape == (16, 32) and vision0.self_attn.out_proj.weight.shape == (32, 16)
    assert vision0.self_attn.num_heads == 2 and vision0.mlp.fc2.weight.shape == (32, 14)
    original = model.base_model.vision_model.encoder.layers[0].self_attn
    assert vision0.self_attn.q_proj.weight[:8].equal(original.q_proj.weight[8:16])  # kept heads 1, 3 in order
    assert vision0.self_attn.q_proj.weight[8:].equal(original.q_proj.weight[24:32])

    # the same keep-lists as gates give the same function
    sizes = layer_sizes(model.config)

    def indicator(indices, n):
        z = torch.zeros(n)
        z[indices] = 1.0
        return z

    zs = {modality: [{key: indicator(indices, sizes[modality][i][key]) for key, indices in layer_keep.items()}
                     for i, layer_keep in enumerate(layers)]
          for modality, layers in keep.items()}
    inputs = head_inputs(EfficientVLMForVisualQuestionAnswering)
    with torch.no_grad(), gates_applied(model, zs):
        masked = model(**inputs)
    with torch.no_grad():
        assert_same_outputs(masked, pruned(**inputs))
    pruned.save_pretrained(tmp_path)
    _, info = EfficientVLMForVisualQuestionAnswering.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))


@pytest.mark.parametrize("keep, message", [
    ({"vision": [{}]}, "has 1 entries"),
    ({"vision": [{"heads": [0, 0]}, {}]}, "twice"),
    ({"vision": [{"heads": [4]}, {}]}, "out of range"),
    ({"vision": [{"cross_heads": [0]}, {}]}, "unknown keys"),
    ({"audio": []}, "Unknown modality"),
    ({"vision": [{"heads": [0, 2.7]}, {}]}, r"keep\['vision'\]\[0\]\['heads'\] holds 2\.7 \(float\): indices must be "
                                            "integers"),
    ({"vision": [{"ffn": [1.0]}, {}]}, r"holds 1\.0 \(float\)"),
    ({"vision": [{"heads": [True]}, {}]}, r"holds True \(bool\)"),
    ({"vision": [{"heads": torch.tensor([0.0, 1.0])}, {}]}, r"holds tensor\(0\.\) \(Tensor\)"),
])
def test_prune_model_rejects_bad_keep_lists(keep, message):
    with pytest.raises(ValueError, match=message):
        prune_model(make_model(), keep)


def test_report_json_and_png(tmp_path):
    model = make_model(EfficientVLMForVisualQuestionAnswering)
    l0 = pattern_l0(model.config)
    pruned = materialize(model, l0.deterministic())
    from_l0 = pruning_report(model, l0)  # the structure the L0 module exports
    exported = materialize(model, l0.budget_gates())
    assert from_l0["modalities"] == pruning_report(model, exported)["modalities"]
    from_model = pruning_report(model, pruned, target=0.5)
    assert from_model["target_sparsity"] == 0.5 and from_model["budget"] == "params"
    assert from_model["overall"]["params_after"] == sum(prunable_parameter_count(pruned).values())
    assert from_model["achieved_sparsity"] == from_model["overall"]["params_sparsity"]
    total = from_model["total_parameters"]
    assert total["before"] - total["after"] == from_model["overall"]["params_before"] - from_model["overall"][
        "params_after"]
    fusion1 = from_model["modalities"]["fusion"]["layers"][1]
    assert fusion1["heads_after"] == fusion1["cross_heads_after"] == fusion1["ffn_after"] == 0
    assert fusion1["params_after"] == fusion1["flops_after"] == 0

    json_path, png_path = save_report(from_model, tmp_path / "card")
    assert json.loads(json_path.read_text())["modalities"]["vision"]["layers"][1]["heads_after"] == 0
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    per_modality = pruning_report(model.config, pruned.config, {"vision": 0.3}, budget="flops")
    assert per_modality["achieved_sparsity"] == {"vision": per_modality["modalities"]["vision"]["flops_sparsity"]}
    save_report(per_modality, tmp_path, name="per_modality")
    assert (tmp_path / "per_modality.png").exists()


def test_keep_lists_accept_integer_types_of_numpy_and_torch():
    import numpy as np

    model = make_model()
    as_ints = prune_model(model, {"vision": [{"heads": [0, 2]}, {}]})
    for heads in (np.array([0, 2]), torch.tensor([0, 2]), [np.int64(0), torch.tensor(2)]):
        other = prune_model(model, {"vision": [{"heads": heads}, {}]})
        assert other.config.vision_config.num_attention_heads == as_ints.config.vision_config.num_attention_heads
        assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), as_ints.state_dict().values()))


@pytest.mark.parametrize("bad, shown", [(float("nan"), "nan"), (float("inf"), "inf"), (-0.5, "-0.5"), (1.5, "1.5")])
def test_materialize_refuses_non_finite_or_out_of_range_gates(bad, shown):
    model = make_model(EfficientVLMForVisualQuestionAnswering)
    zs = pattern_l0(model.config).deterministic()
    key = next(k for k in zs["text"][0] if not k.endswith("_block"))
    zs["text"][0][key] = zs["text"][0][key].clone()
    zs["text"][0][key][1] = bad
    before = {k: v.clone() for k, v in model.state_dict().items()}
    message = rf"zs\['text'\]\[0\]\['{key}'\] holds {shown} at units \[1\]: gate values must be finite and in \[0, 1\]"
    with pytest.raises(ValueError, match=message):
        materialize(model, zs)
    with pytest.raises(ValueError, match=message):
        keep_lists_from_gates(zs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    block = next(k for k in zs["vision"][1] if k.endswith("_block"))
    zs["text"][0][key][1] = 1.0
    zs["vision"][1][block] = torch.tensor(float("nan"))
    with pytest.raises(ValueError, match=rf"zs\['vision'\]\[1\]\['{block}'\] holds nan at the gate"):
        materialize(model, zs)
