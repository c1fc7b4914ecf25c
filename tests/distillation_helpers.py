"""Tiny teachers, students and batches for the distillation tests (also imported by the DDP worker script)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from efficientvlm.models.configuration_efficientvlm import EfficientVLMConfig
from efficientvlm.models.modeling_efficientvlm import (
    EfficientVLMForCaptioning,
    EfficientVLMForImageTextRetrieval,
    EfficientVLMForNLVR2,
    EfficientVLMForPreTraining,
    EfficientVLMForVisualQuestionAnswering,
)
from efficientvlm.student import create_student

VOCAB_SIZE = 50
PAD, CLS, SEP, MASK = 0, 2, 3, 4
HEADS = [EfficientVLMForPreTraining, EfficientVLMForVisualQuestionAnswering, EfficientVLMForImageTextRetrieval,
         EfficientVLMForNLVR2, EfficientVLMForCaptioning]


def tiny_config(vision_layers: int = 4, text_layers: int = 2, fusion_layers: int = 2, vision_width: int = 32,
                text_width: int = 24, dropout: float = 0.0, **overrides) -> EfficientVLMConfig:
    """32 px images with 8 px patches (17 vision tokens), a 50-token vocabulary, widths of 16-32."""
    vision = dict(hidden_size=vision_width, num_hidden_layers=vision_layers, num_attention_heads=4,
                  head_dim=vision_width // 4, intermediate_size=2 * vision_width, image_size=32, patch_size=8,
                  attention_dropout=dropout)
    text_shared = dict(hidden_size=text_width, num_attention_heads=2, head_dim=text_width // 2,
                       intermediate_size=2 * text_width, hidden_dropout_prob=dropout,
                       attention_probs_dropout_prob=dropout)
    text = dict(text_shared, vocab_size=VOCAB_SIZE, num_hidden_layers=text_layers, max_position_embeddings=40,
                pad_token_id=PAD, bos_token_id=CLS, eos_token_id=SEP, mask_token_id=MASK)
    fusion = dict(text_shared, num_hidden_layers=fusion_layers, num_cross_attention_heads=2)
    for key, sub in (("vision_config", vision), ("text_config", text), ("fusion_config", fusion)):
        sub.update(overrides.pop(key, {}))
    overrides.setdefault("id2label", {0: "yes", 1: "no", 2: "red"})
    return EfficientVLMConfig(vision_config=vision, text_config=text, fusion_config=fusion, projection_dim=16,
                              **overrides)


def tiny_batch(head: type, batch: int = 4, seq: int = 7, seed: int = 0, padded: bool = True) -> dict:
    """A batch for ``head`` with labels; the last text ends in two padding tokens when ``padded``."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(MASK + 1, VOCAB_SIZE, (batch, seq), generator=g)
    ids[:, 0] = CLS
    mask = torch.ones(batch, seq, dtype=torch.long)
    if padded:
        mask[-1, -2:] = 0
        ids[-1, -2:] = PAD
    inputs = {"pixel_values": torch.randn(batch, 3, 32, 32, generator=g), "input_ids": ids, "attention_mask": mask}
    if head is EfficientVLMForPreTraining:
        inputs["mlm_input_ids"] = ids.clone()
        inputs["mlm_input_ids"][:, 2] = MASK
        inputs["mlm_labels"] = torch.full_like(ids, -100)
        inputs["mlm_labels"][:, 2] = ids[:, 2]
    elif head is EfficientVLMForVisualQuestionAnswering:
        inputs["labels"] = torch.rand(batch, 3, generator=g)
    elif head is EfficientVLMForNLVR2:
        inputs["pixel_values"] = torch.randn(batch, 2, 3, 32, 32, generator=g)
        inputs["labels"] = torch.randint(0, 2, (batch,), generator=g)
    elif head is EfficientVLMForCaptioning:
        inputs["labels"] = ids.masked_fill(mask == 0, -100)
    return inputs


class BatchDataset(Dataset):
    """The rows of ``tiny_batch`` outputs as examples (works with the Trainer's default collator)."""

    def __init__(self, head: type, size: int, seed: int = 0, padded: bool = True):
        full = tiny_batch(head, batch=size, seed=seed, padded=padded)
        self.rows = [{key: value[i] for key, value in full.items()} for i in range(size)]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.rows[index]


def pruning_pair(seed: int = 0):
    """A 4/2/2 VQA teacher with wide FFNs (fine-grained sparsity) and a 2/1/1 student copied from it."""
    torch.manual_seed(seed)
    teacher = EfficientVLMForVisualQuestionAnswering(tiny_config(
        vision_layers=4, vision_config={"intermediate_size": 128}, text_config={"intermediate_size": 96},
        fusion_config={"intermediate_size": 96}))
    return teacher, create_student(teacher, vision_layers=2, text_layers=1, fusion_layers=1)


def narrow_student(teacher_config: EfficientVLMConfig, head: type, seed: int = 0):
    """A randomly initialised half-depth student with narrower vision and text widths (so projections are needed)."""
    torch.manual_seed(seed)
    config = tiny_config(vision_layers=teacher_config.vision_config.num_hidden_layers // 2,
                         text_layers=max(1, teacher_config.text_config.num_hidden_layers // 2),
                         fusion_layers=max(1, teacher_config.fusion_config.num_hidden_layers // 2),
                         vision_width=16, text_width=16, id2label=teacher_config.id2label)
    return head(config)


def assert_masked_materialised_reloaded_agree(student, gates, pruned, folder):
    """The correctness gate of pruning: the student masked by ``gates``, the materialised ``pruned`` model and its
    reload through ``AutoModelForVisualQuestionAnswering`` give the same logits. Returns the reloaded model."""
    from transformers import AutoModelForVisualQuestionAnswering

    from efficientvlm.pruning import gates_applied

    inputs = tiny_batch(EfficientVLMForVisualQuestionAnswering, seed=3)
    inputs.pop("labels")
    student.eval()
    with torch.no_grad(), gates_applied(student, gates):
        masked = student(**inputs).logits
    pruned.save_pretrained(folder)
    reloaded = AutoModelForVisualQuestionAnswering.from_pretrained(folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(pruned.eval()(**inputs).logits, masked, rtol=0, atol=1e-5)
        torch.testing.assert_close(reloaded(**inputs).logits, masked, rtol=0, atol=1e-5)
    return reloaded
