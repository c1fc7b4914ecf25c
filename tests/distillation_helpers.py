"""Tiny teachers, students and batches for the distillation tests, a stand-in processor and tar shards of image-text
pairs (also imported by the DDP worker scripts)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from transformers import BertTokenizer

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


# ---- multi-process contrastive batches (tests/ddp_contrastive_worker.py and tests/test_distributed_contrastive.py)


def contrastive_config() -> EfficientVLMConfig:
    """``tiny_config`` initialised wider (std 0.2), so that its ITC similarities spread out (std ~1.4 instead of
    ~0.02) and the contrastive losses depend on which pairs are positives."""
    return tiny_config(initializer_range=0.2)


def argmax_hard_negatives(similarity: torch.Tensor, positive: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """A deterministic stand-in for ``mine_hard_negatives``: each row's most similar non-positive column (the mode
    of the sampled distribution), so that two runs that mine over the same batch pick the same negatives."""
    return similarity.float().masked_fill(positive, float("-inf")).argmax(1)


def contrastive_batch(sizes: tuple[int, ...], seed: int = 0) -> dict:
    """A pre-training batch of ``sum(sizes)`` rows meant to be split into per-process shares of ``sizes`` rows.

    The first row of the second share shows the same image as row 0 (``image_ids``), and the texts of the last
    share end in two padding tokens, so that the shares' texts differ in length once trimmed (``share``).
    """
    batch = tiny_batch(EfficientVLMForPreTraining, batch=sum(sizes), seed=seed, padded=False)
    last = slice(sum(sizes[:-1]), None)
    batch["attention_mask"][last, -2:] = 0
    for key in ("input_ids", "mlm_input_ids"):
        batch[key][last, -2:] = PAD
    batch["image_ids"] = torch.arange(sum(sizes)) + 10
    batch["image_ids"][sizes[0]] = batch["image_ids"][0]
    return batch


def share(batch: dict, sizes: tuple[int, ...], rank: int) -> dict:
    """Process ``rank``'s rows of ``batch``, texts trimmed to their longest one (as a collator that pads each
    process's batch to its longest caption would give them)."""
    rows = slice(sum(sizes[:rank]), sum(sizes[:rank + 1]))
    length = int(batch["attention_mask"][rows].sum(1).max())
    text_keys = ("input_ids", "attention_mask", "mlm_input_ids", "mlm_labels")
    return {key: value[rows, :length] if key in text_keys else value[rows] for key, value in batch.items()}


def one_distillation_step(output_dir: str, per_device_batch: int) -> dict:
    """One plain-SGD step (no clipping) of pre-training distillation on the 4 unpadded rows of ``BatchDataset``:
    ``{"state": student and projection weights after the step, "logs": the trainer's log history}``."""
    from efficientvlm.distillation import DistillationConfig, DistillationTrainer

    torch.manual_seed(0)
    teacher = EfficientVLMForPreTraining(contrastive_config())
    student = narrow_student(teacher.config, EfficientVLMForPreTraining)
    args = DistillationConfig(output_dir=output_dir, per_device_train_batch_size=per_device_batch, max_steps=1,
                              optim="sgd", learning_rate=0.5, max_grad_norm=0.0, lr_scheduler_type="constant",
                              save_strategy="no", logging_steps=1, report_to=[], disable_tqdm=True, use_cpu=True,
                              seed=0)
    trainer = DistillationTrainer(model=student, args=args, teacher_model=teacher,
                                  train_dataset=BatchDataset(EfficientVLMForPreTraining, size=4, padded=False))
    trainer.train()
    state = {f"student.{k}": v.clone() for k, v in student.state_dict().items()}
    state.update({f"projections.{k}": v.clone() for k, v in trainer.kd_projections.state_dict().items()})
    return {"state": state, "logs": trainer.state.log_history}


# ---- pre-training data -------------------------------------------------------------------------------------------

WORDS = ["a", "dog", "cat", "on", "the", "grass", "red", "ball", "sits", "runs", "with", "blue", "sky", "##s"]


class StandInProcessor:
    """The EfficientVLMProcessor call interface, from a BertTokenizer and a tiny image-to-tensor function."""

    def __init__(self):
        vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
        self.tokenizer = BertTokenizer(vocab=vocab, model_max_length=40)

    def __call__(self, images, text, padding, truncation, max_length, return_tensors):
        batch = dict(self.tokenizer(text, padding=padding, truncation=truncation, max_length=max_length,
                                    return_tensors=return_tensors, return_token_type_ids=False))
        pixels = [torch.from_numpy(np.asarray(image.resize((32, 32)), dtype=np.float32)).permute(2, 0, 1)
                  for image in images]
        batch["pixel_values"] = torch.stack(pixels) / 255.0
        return batch

    def save_pretrained(self, path, **kwargs):
        return self.tokenizer.save_pretrained(path)


def sample_colour(shard: int, index: int) -> tuple[int, int, int]:
    """The flat colour of sample ``index`` of shard ``shard`` in ``write_tar_shards`` (PNG: exact after decoding)."""
    return (40 * shard % 256, 16 * index % 256, 200)


def write_tar_shards(folder: Path, sizes: list[int], bad: dict | None = None) -> tuple[list[Path], dict]:
    """Tar shards in img2dataset's layout: ``<folder>/{00000..}.tar`` holding, per sample ``<key>.png`` (8x8, one
    colour per sample), ``<key>.txt`` (a caption of three ``WORDS``) and ``<key>.json``, plus a ``.parquet``-style
    sidecar name beside each shard (ignored by readers).

    ``sizes``: samples per shard. ``bad``: ``{(shard, index): kind}`` with kind ``"no_caption"``, ``"empty_caption"``,
    ``"no_image"`` or ``"corrupt_image"``. Returns the shard paths and ``{(shard path, key): caption}`` of the good
    samples.
    """
    folder.mkdir(parents=True, exist_ok=True)
    bad = bad or {}
    paths, good = [], {}
    for shard, size in enumerate(sizes):
        path = folder / f"{shard:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for index in range(size):
                key = f"{shard:05d}{index:04d}"
                caption = " ".join(WORDS[(shard * 7 + index * 3 + j) % 13] for j in range(3))
                buffer = io.BytesIO()
                Image.new("RGB", (8, 8), sample_colour(shard, index)).save(buffer, format="PNG")
                kind = bad.get((shard, index))
                members = {"png": buffer.getvalue(), "txt": caption.encode(),
                           "json": json.dumps({"key": key, "caption": caption, "status": "success"}).encode()}
                if kind == "no_caption":
                    del members["txt"]
                elif kind == "empty_caption":
                    members["txt"] = b"  "
                elif kind == "no_image":
                    del members["png"]
                elif kind == "corrupt_image":
                    members["png"] = b"\x89PNG not really"
                elif kind is not None:
                    raise ValueError(kind)
                for extension, data in members.items():
                    info = tarfile.TarInfo(f"{key}.{extension}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                if kind is None:
                    good[(str(path), key)] = caption
        (folder / f"{shard:05d}.parquet").write_bytes(b"sidecar")
        paths.append(path)
    return paths, good
