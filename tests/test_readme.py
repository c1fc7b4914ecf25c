"""The README's Python blocks run as written.

Every ```python block of README.md is executed on its own, in a fresh namespace, with a temporary working directory.
Hub ids and the folders of earlier commands in the blocks are replaced by tiny local ones built here (``HUB_IDS``: the
quoted id becomes the folder's path), and the image files the blocks open (``IMAGE_FILES``) are drawn in the working
directory. A block that
needs the network or a GPU is marked on the line before it with ``<!-- readme-test: skip (reason) -->``; it must still
compile and define every name it uses. Every other block must run.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import BertConfig, BertModel, CLIPVisionConfig, CLIPVisionModel

from efficientvlm import (
    EfficientVLMForCaptioning,
    EfficientVLMForVisualQuestionAnswering,
    EfficientVLMImageProcessor,
    EfficientVLMProcessor,
)
from efficientvlm.data import answer_vocabulary, build_tokenizer
from efficientvlm.tasks import small_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

README = Path(__file__).resolve().parents[1] / "README.md"
#: Hub id in the README -> what stands in for it (built by the ``hub_ids`` fixture).
HUB_IDS = {
    "my-org/efficientvlm-vqa": "a VQA teacher of 6/3/3 layers (width 32) on the shapes vocabulary and answers",
    "my-org/efficientvlm-captioning": "a captioning model of 2/1/1 layers (width 32) on the shapes vocabulary",
    "openai/clip-vit-base-patch16": "a 12-layer CLIPVisionModel of width 32",
    "bert-base-uncased": "a 12-layer BertModel of width 32 with its tokenizer",
    "deploy/onnx": "the ONNX export of the VQA teacher (efficientvlm.export, legacy exporter)",
}
IMAGE_FILES = ("photo.jpg", "a.png", "b.jpg")
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\s*\((?P<reason>[^)]+)\)\s*-->")


def python_blocks(text: str) -> list[tuple[int, str, str | None]]:
    """(line number, code, skip reason or None) of every ```python block."""
    blocks = []
    for match in re.finditer(r"^```python\n(.*?)^```", text, flags=re.S | re.M):
        before = text[:match.start()].rstrip("\n").splitlines()
        marker = SKIP.search(before[-1]) if before else None
        blocks.append((len(before) + 1, match.group(1), marker.group("reason") if marker else None))
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def hub_ids(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("readme-hub")
    torch.manual_seed(0)
    tokenizer = build_tokenizer(root / "tokenizer")
    vqa = EfficientVLMForVisualQuestionAnswering(
        small_config(tokenizer, (6, 3, 3), hidden_size=32, head_dim=16, image_size=32, labels=answer_vocabulary()))
    vqa.save_pretrained(root / "vqa")
    processor = EfficientVLMProcessor(EfficientVLMImageProcessor(size={"height": 32, "width": 32}), tokenizer)
    processor.save_pretrained(root / "vqa")
    EfficientVLMForCaptioning(small_config(tokenizer, (2, 1, 1), hidden_size=32, head_dim=16, image_size=32)
                              ).save_pretrained(root / "captioning")
    processor.save_pretrained(root / "captioning")
    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=12, num_attention_heads=2,
                                     image_size=32, patch_size=16)).save_pretrained(root / "clip")
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=12, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=40), add_pooling_layer=False).save_pretrained(
        root / "bert")
    tokenizer.save_pretrained(root / "bert")
    from efficientvlm.export import export

    export(root / "vqa", root / "deploy", "onnx", exporter="legacy", batch_sizes=(1,), repeats=1, warmup=0)
    return {"deploy/onnx": root / "deploy" / "onnx", "my-org/efficientvlm-vqa": root / "vqa", "my-org/efficientvlm-captioning": root / "captioning",
            "openai/clip-vit-base-patch16": root / "clip", "bert-base-uncased": root / "bert"}


def test_the_readme_has_python_blocks_and_every_skip_gives_a_reason():
    assert len(BLOCKS) >= 3
    text = README.read_text(encoding="utf-8")
    assert len(SKIP.findall(text)) == sum(reason is not None for _, _, reason in BLOCKS), \
        "a readme-test marker must be on the line right before a ```python block"
    for hub_id in HUB_IDS:
        assert f'"{hub_id}"' in text, f"{hub_id} is no longer in the README: update HUB_IDS"


@pytest.mark.parametrize(("line", "code", "skip"), BLOCKS, ids=[f"line-{line}" for line, _, _ in BLOCKS])
def test_every_python_block_runs_as_written(line, code, skip, hub_ids, tmp_path, monkeypatch):
    if skip is not None:  # a skipped block must still be valid, complete Python
        compile(code, f"README.md:{line}", "exec")
        undefined = _names_used_before_definition(code)
        assert not undefined, f"README.md line {line} uses names it does not define: {undefined}"
        pytest.skip(f"README.md line {line}: {skip}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_DISABLED", "true")
    for index, name in enumerate(IMAGE_FILES):
        Image.new("RGB", (48, 40), ("red", "green", "blue")[index]).save(tmp_path / name)
    for hub_id, folder in hub_ids.items():
        code = code.replace(f'"{hub_id}"', repr(os.fspath(folder)))
    exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})


def _names_used_before_definition(code: str) -> list[str]:
    """Top-level names a block reads without importing or assigning them first (builtins aside): a block that does
    not run in the tests must still be complete."""
    import ast
    import builtins

    defined = set(dir(builtins))
    undefined = []
    for statement in ast.parse(code).body:
        for node in ast.walk(statement):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id not in defined:
                undefined.append(node.id)
        for node in ast.walk(statement):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                defined.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                defined.add(node.id)
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                defined.add(node.name)
    return sorted(set(undefined))
