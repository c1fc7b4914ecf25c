"""Tiny random EfficientVLM configs and inputs for fast offline tests."""

from __future__ import annotations

import torch

from efficientvlm import (
    EfficientVLMConfig,
    EfficientVLMForCaptioning,
    EfficientVLMForImageTextRetrieval,
    EfficientVLMForNLVR2,
    EfficientVLMForPreTraining,
    EfficientVLMForVisualQuestionAnswering,
    EfficientVLMGenerativeVQAConfig,
    EfficientVLMModel,
)

HEAD_CLASSES = [
    EfficientVLMModel,
    EfficientVLMForPreTraining,
    EfficientVLMForVisualQuestionAnswering,
    EfficientVLMForImageTextRetrieval,
    EfficientVLMForNLVR2,
    EfficientVLMForCaptioning,
]

VOCAB_SIZE = 64
ANSWERS = ["yes", "no", "red", "blue", "circle"]


def tiny_config(heterogeneous: bool = False, **overrides) -> EfficientVLMConfig:
    """A 2-3 layer model with widths of 16-32, 32 px images, patch 8 (17 vision tokens).

    ``heterogeneous=True`` gives layers of different sizes, including absent sub-blocks and a fusion layer with
    no cross-attention and no FFN.
    """
    vision = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, head_dim=8, intermediate_size=48,
                  image_size=32, patch_size=8)
    text = dict(vocab_size=VOCAB_SIZE, hidden_size=24, num_hidden_layers=2, num_attention_heads=2, head_dim=12,
                intermediate_size=40, max_position_embeddings=40, pad_token_id=0, bos_token_id=2, eos_token_id=3,
                mask_token_id=4)
    fusion = dict(hidden_size=24, num_hidden_layers=2, num_attention_heads=2, num_cross_attention_heads=2,
                  head_dim=12, intermediate_size=40)
    if heterogeneous:
        vision.update(num_attention_heads=[2, 0, 3], intermediate_size=[0, 16, 8])
        text.update(num_attention_heads=[1, 2], intermediate_size=[40, 0])
        fusion.update(num_attention_heads=[2, 1], num_cross_attention_heads=[1, 0], intermediate_size=[8, 0])
    for key, sub in (("vision_config", vision), ("text_config", text), ("fusion_config", fusion)):
        sub.update(overrides.pop(key, {}))
    overrides.setdefault("id2label", dict(enumerate(ANSWERS)))
    return EfficientVLMConfig(vision_config=vision, text_config=text, fusion_config=fusion, projection_dim=16,
                              **overrides)


def tiny_inputs(model_class, config: EfficientVLMConfig, batch: int = 3, seq: int = 7, seed: int = 0) -> dict:
    """Inputs with labels for ``model_class``; the last text is padded."""
    g = torch.Generator().manual_seed(seed)
    size = config.vision_config.image_size
    ids = torch.randint(5, config.text_config.vocab_size, (batch, seq), generator=g)
    ids[:, 0] = config.text_config.bos_token_id
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[-1, seq - 2:] = 0
    ids[-1, seq - 2:] = config.text_config.pad_token_id
    inputs = {"pixel_values": torch.randn(batch, 3, size, size, generator=g), "input_ids": ids,
              "attention_mask": mask}
    if model_class is EfficientVLMForVisualQuestionAnswering:
        inputs["labels"] = torch.rand(batch, config.num_labels, generator=g)
    elif model_class is EfficientVLMForNLVR2:
        inputs["pixel_values"] = torch.randn(batch, 2, 3, size, size, generator=g)
        inputs["labels"] = torch.randint(0, 2, (batch,), generator=g)
    elif model_class is EfficientVLMForCaptioning:
        inputs["labels"] = ids.masked_fill(mask == 0, -100)
    elif model_class is EfficientVLMForPreTraining:
        masked = ids.clone()
        masked[:, 2] = config.text_config.mask_token_id
        inputs["mlm_input_ids"] = masked
        inputs["mlm_labels"] = torch.full_like(ids, -100)
        inputs["mlm_labels"][:, 2] = ids[:, 2]
    if model_class in (EfficientVLMForPreTraining, EfficientVLMForImageTextRetrieval):
        # fixed negatives, so that two forwards fuse the same pairs
        inputs["itm_negative_text_index"] = torch.roll(torch.arange(batch), 1)
        inputs["itm_negative_image_index"] = torch.roll(torch.arange(batch), -1)
    return inputs


def main_output(model_class, outputs) -> torch.Tensor:
    return outputs.last_hidden_state if model_class is EfficientVLMModel else outputs.logits


#: the tiny answer list of generative VQA and its token ids (tokens of ``VOCAB_SIZE``, no special tokens)
GENERATIVE_ANSWERS = {"yes": [10], "no": [11], "red": [12], "blue": [13], "red circle": [12, 20],
                      "blue square": [13, 21, 22]}


def tiny_generative_config(heterogeneous: bool = False, **overrides) -> EfficientVLMGenerativeVQAConfig:
    """``tiny_config`` plus a 2-layer answer decoder (width 24 like the text), ranking ``GENERATIVE_ANSWERS``.

    ``heterogeneous=True`` also gives the decoder layers of different sizes, with a layer without cross-attention
    and FFN.
    """
    decoder = dict(hidden_size=24, num_hidden_layers=2, num_attention_heads=2, num_cross_attention_heads=2,
                   head_dim=12, intermediate_size=40)
    if heterogeneous:
        decoder.update(num_attention_heads=[2, 1], num_cross_attention_heads=[1, 0], intermediate_size=[16, 0])
    decoder.update(overrides.pop("decoder_config", {}))
    base = tiny_config(heterogeneous, **{k: overrides.pop(k) for k in ("vision_config", "text_config",
                                                                       "fusion_config") if k in overrides})
    overrides.setdefault("id2label", dict(enumerate(GENERATIVE_ANSWERS)))
    overrides.setdefault("answer_token_ids", list(GENERATIVE_ANSWERS.values()))
    return EfficientVLMGenerativeVQAConfig(
        vision_config=base.vision_config.to_dict(), text_config=base.text_config.to_dict(),
        fusion_config=base.fusion_config.to_dict(), decoder_config=decoder, projection_dim=16, **overrides)


def tiny_generative_inputs(config: EfficientVLMGenerativeVQAConfig, batch: int = 3, seq: int = 7,
                           seed: int = 0) -> dict:
    """Question + image inputs (the last question padded) and 1-3 weighted answers per question, as
    ``GenerativeVQACollator`` builds them: ``(batch, answers, len)`` ids ``[CLS] answer [SEP]``, padding answers with
    an all-zero mask and weight 0."""
    inputs = tiny_inputs(EfficientVLMModel, config, batch=batch, seq=seq, seed=seed)
    tc = config.text_config
    chosen = [["red circle", "red"], ["yes"], ["blue square", "blue", "no"]][:batch]
    weights = [[0.7, 0.3], [1.0], [0.5, 0.3, 0.2]][:batch]
    answers, length = max(len(c) for c in chosen), 2 + max(len(GENERATIVE_ANSWERS[a]) for c in chosen for a in c)
    ids = torch.full((batch, answers, length), tc.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    answer_weights = torch.zeros(batch, answers)
    for i, (row, row_weights) in enumerate(zip(chosen, weights)):
        for j, (answer, weight) in enumerate(zip(row, row_weights)):
            tokens = [tc.bos_token_id, *GENERATIVE_ANSWERS[answer], tc.eos_token_id]
            ids[i, j, :len(tokens)] = torch.tensor(tokens)
            mask[i, j, :len(tokens)] = 1
            answer_weights[i, j] = weight
    inputs.update(answer_input_ids=ids, answer_attention_mask=mask, answer_weights=answer_weights)
    return inputs
