"""Publishing to the Hub, model cards, Hub loading (also offline from the cache and without efficientvlm), and the
refusal of pickled / mismatched checkpoints. Everything runs offline against a folder-backed stand-in for the Hub
(``tests/local_hub.py``)."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
from huggingface_hub import CommitOperationAdd, EvalResult, ModelCard, ModelCardData
from PIL import Image
from transformers import AutoModelForVisualQuestionAnswering, AutoProcessor, pipeline

import efficientvlm
from efficientvlm import (
    EfficientVLMForCaptioning,
    EfficientVLMForImageTextRetrieval,
    EfficientVLMForNLVR2,
    EfficientVLMForPreTraining,
    EfficientVLMForVisualQuestionAnswering,
    EfficientVLMImageProcessor,
    EfficientVLMModel,
    EfficientVLMProcessor,
    EfficientVLMVQAPipeline,
)
from efficientvlm import cli
from efficientvlm.hub import cards, publish
from efficientvlm.hub.publish import RemoteCodeError, push_to_hub, remote_code_imports
from tests.local_hub import LocalFolderHfApi, snapshot_into_cache
from tests.tiny_models import ANSWERS, tiny_config
from tests.utils import make_test_images, make_tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "what color is the square?"
REPORT = {
    "target_sparsity": 0.35, "sparsity": 0.34, "params_before": 100_000, "params_after": 66_000,
    "modalities": {
        "vision": {"params_before": 50_000, "params_after": 30_000, "heads_kept": [2, 0, 3], "ffn_kept": [0, 16, 8]},
        "text": {"params_before": 30_000, "params_after": 22_000, "heads_kept": [1, 2]},
        "fusion": {"params_before": 20_000, "params_after": 14_000, "cross_heads_kept": [1, 0], "lambda_1": 0.5},
    },
}
EVAL = {"dataset_type": "HuggingFaceM4/VQAv2", "dataset_name": "VQAv2", "dataset_split": "test-dev",
        "metric_type": "accuracy", "metric_name": "VQA accuracy", "metric_value": 76.2}
CODE_FILES = {"configuration_efficientvlm.py", "modeling_efficientvlm.py", "loading_efficientvlm.py",
              "image_processing_efficientvlm.py", "processing_efficientvlm.py"}
PROCESSOR_FILES = {"processor_config.json", "tokenizer.json", "tokenizer_config.json"}
OTHER_HEADS = {
    "captioning": EfficientVLMForCaptioning, "retrieval": EfficientVLMForImageTextRetrieval,
    "nlvr2": EfficientVLMForNLVR2, "pretraining": EfficientVLMForPreTraining, "base": EfficientVLMModel,
}


# ---------------------------------------------------------------------------------------------------------------
# Fixtures: tiny models, a stand-in Hub with pushed repositories, and a Hub cache holding their snapshots
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def processor(tokenizer):
    return EfficientVLMProcessor(EfficientVLMImageProcessor(size={"height": 32, "width": 32}), tokenizer)


def make_model(model_class, tokenizer, seed=0):
    """A tiny *pruned* (heterogeneous) model whose special tokens match the tokenizer."""
    torch.manual_seed(seed)
    config = tiny_config(heterogeneous=True, text_config={
        "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.cls_token_id,
        "eos_token_id": tokenizer.sep_token_id, "mask_token_id": tokenizer.mask_token_id})
    return model_class(config).eval()


def vqa_logits(model, processor, image) -> torch.Tensor:
    with torch.no_grad():
        return model(**processor(images=image, text=QUESTION)).logits[0]


@pytest.fixture(scope="module")
def hub(tmp_path_factory, tokenizer, processor):
    root = tmp_path_factory.mktemp("hub")
    api = LocalFolderHfApi(root / "remote")
    images = make_test_images(root / "images")
    figure = root / "figure.png"
    Image.new("RGB", (8, 8), (0, 128, 255)).save(figure)
    vqa = make_model(EfficientVLMForVisualQuestionAnswering, tokenizer)
    result = push_to_hub(vqa, processor, "org/vqa", api=api, private=True, pruning_report=REPORT,
                         pruning_figure=figure, base_model="org/teacher", datasets=["HuggingFaceM4/VQAv2"],
                         eval_results=[EVAL], tags=["tiny"])
    vqa_v2 = make_model(EfficientVLMForVisualQuestionAnswering, tokenizer, seed=1)
    push_to_hub(vqa_v2, processor, "org/vqa", api=api, revision="v2", commit_message="second version")
    heads = {name: make_model(cls, tokenizer) for name, cls in OTHER_HEADS.items()}
    for name, model in heads.items():
        push_to_hub(model, processor, f"org/{name}", api=api)
    cache = root / "cache"
    for repo_id in api.repos:
        snapshot_into_cache(api, repo_id, cache)
    snapshot_into_cache(api, "org/vqa", cache, revision="v2")
    return SimpleNamespace(api=api, root=root, cache=cache, images=images, figure=figure, vqa=vqa, vqa_v2=vqa_v2,
                           heads=heads, result=result, folder=api._tree("org/vqa", None))


def card_snippets(readme: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", readme, flags=re.S)


def needs_library(code: str) -> bool:
    return re.search(r"^(import|from) efficientvlm\b", code, flags=re.M) is not None


def with_test_images(code: str, images: dict[str, Path]) -> str:
    return re.sub(r'"path/to/\w+\.jpg"', repr(str(images["rgb.png"])), code)


# ---------------------------------------------------------------------------------------------------------------
# The repository: exact contents, auto_map, custom pipeline, remote-code imports
# ---------------------------------------------------------------------------------------------------------------


def test_the_repository_holds_exactly_model_processor_card_and_code(hub):
    files = set(hub.api.list_repo_files("org/vqa"))
    assert files == {"README.md", "config.json", "model.safetensors", "pipeline_efficientvlm.py",
                     "pruning_report.json", "pruning_report.png"} | CODE_FILES | PROCESSOR_FILES
    assert files == set(hub.result.files)
    pushes = [c for c in hub.api.commits if c["repo_id"] == "org/vqa" and c["added"]]
    assert len(pushes) == 2  # one commit per push (main, then branch v2)
    assert pushes[0]["message"] == "Upload EfficientVLMForVisualQuestionAnswering (EfficientVLM)"
    assert hub.api.repos["org/vqa"]["private"]
    for name in ("captioning", "retrieval", "nlvr2", "pretraining"):
        other = set(hub.api.list_repo_files(f"org/{name}"))
        assert other - {"generation_config.json"} == {"README.md", "config.json", "model.safetensors"} | CODE_FILES \
            | PROCESSOR_FILES
    assert "generation_config.json" in hub.api.list_repo_files("org/captioning")
    assert json.loads((hub.folder / "pruning_report.json").read_text()) == REPORT


def test_config_maps_every_auto_class_and_the_vqa_pipeline(hub):
    config = json.loads((hub.folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_efficientvlm.EfficientVLMConfig",
        "AutoModel": "modeling_efficientvlm.EfficientVLMModel",
        "AutoModelForVisualQuestionAnswering": "modeling_efficientvlm.EfficientVLMForVisualQuestionAnswering",
    }
    assert config["custom_pipelines"] == {"visual-question-answering": {
        "impl": "pipeline_efficientvlm.EfficientVLMVQAPipeline", "pt": ["AutoModelForVisualQuestionAnswering"],
        "type": "multimodal"}}
    processor_config = json.loads((hub.folder / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_efficientvlm.EfficientVLMProcessor"
    assert processor_config["image_processor"]["auto_map"]["AutoImageProcessor"] == (
        "image_processing_efficientvlm.EfficientVLMImageProcessor")
    expected_heads = {"captioning": "AutoModelForImageTextToText", "pretraining": "AutoModelForPreTraining"}
    for name in OTHER_HEADS:
        auto_map = json.loads((hub.api._tree(f"org/{name}", None) / "config.json").read_text())["auto_map"]
        head_class = {expected_heads[name]} if name in expected_heads else set()
        assert set(auto_map) == {"AutoConfig", "AutoModel"} | head_class
        assert "custom_pipelines" not in json.loads((hub.api._tree(f"org/{name}", None) / "config.json").read_text())
    # the user's model is not modified by publishing
    assert not hasattr(hub.vqa.config, "custom_pipelines") and getattr(hub.vqa.config, "auto_map", None) is None
    assert EfficientVLMProcessor._auto_class is None and EfficientVLMImageProcessor._auto_class is None


def test_shipped_modules_import_only_torch_numpy_pil_transformers_and_siblings(hub, tmp_path):
    for path in hub.folder.glob("*.py"):
        assert set(remote_code_imports(path)) <= {p.stem for p in hub.folder.glob("*.py")}
    assert remote_code_imports(hub.folder / "modeling_efficientvlm.py") == ["configuration_efficientvlm",
                                                                             "loading_efficientvlm"]
    assert remote_code_imports(hub.folder / "loading_efficientvlm.py") == ["configuration_efficientvlm"]
    assert remote_code_imports(hub.folder / "pipeline_efficientvlm.py") == []  # images go through the image processor
    for bad, message in (("import efficientvlm.hub", "efficientvlm"), ("from ..models import x", r"\.\.models"),
                         ("import scipy", "scipy"), ("from .missing import x", "not a sibling"),
                         ("def f():\n    from efficientvlm import y", "efficientvlm")):
        (tmp_path / "module.py").write_text(f"import torch\n{bad}\n")
        with pytest.raises(RemoteCodeError, match=message):
            remote_code_imports(tmp_path / "module.py")


def test_a_dry_run_writes_the_same_folder_and_uploads_nothing(hub, processor, tmp_path):
    api = LocalFolderHfApi(tmp_path / "untouched")
    result = push_to_hub(hub.vqa, processor, "org/vqa", api=api, dry_run_dir=tmp_path / "dry", private=True,
                         pruning_report=REPORT, pruning_figure=hub.figure, base_model="org/teacher",
                         datasets=["HuggingFaceM4/VQAv2"], eval_results=[EVAL], tags=["tiny"])
    assert not api.repos and not api.commits and result.commit is None and result.folder == tmp_path / "dry"
    assert result.files == hub.result.files
    for name in result.files:
        assert (tmp_path / "dry" / name).read_bytes() == (hub.folder / name).read_bytes(), name
    with pytest.raises(ValueError, match="not empty"):
        push_to_hub(hub.vqa, processor, "org/vqa", dry_run_dir=tmp_path / "dry")


SHAPES_CARD = {  # what the demo's card says about its model, passed through push_to_hub to render_model_card
    "example_question": "How many circles are there?", "example_image": "examples/scene.png",
    "limitations": ["Trained only on synthetic scenes of coloured circles, squares and triangles."],
    "figures": [("Training curves", "training_curves.png"), ("Accuracy vs latency", "figures/latency.png")],
}


def test_extra_files_and_card_options_land_in_the_dry_run_folder_and_the_commit(hub, processor, tmp_path):
    curves = tmp_path / "curves.png"
    Image.new("RGB", (4, 4), (255, 0, 0)).save(curves)
    extra_files = {"training_curves.png": curves, "figures/latency.png": str(hub.figure)}
    result = push_to_hub(hub.vqa, processor, "org/shapes", dry_run_dir=tmp_path / "dry", pruning_report=REPORT,
                         extra_files=extra_files, **SHAPES_CARD)
    assert set(result.files) == set(hub.result.files) - {"pruning_report.png"} | set(extra_files)
    assert (tmp_path / "dry" / "training_curves.png").read_bytes() == curves.read_bytes()
    assert (tmp_path / "dry" / "figures" / "latency.png").read_bytes() == hub.figure.read_bytes()
    readme = (tmp_path / "dry" / "README.md").read_text()
    assert "![Training curves](training_curves.png)" in readme
    assert "![Accuracy vs latency](figures/latency.png)" in readme
    assert all('"How many circles are there?"' in code for code in card_snippets(readme))
    assert "- Trained only on synthetic scenes" in readme and "web-crawled" not in readme

    api = LocalFolderHfApi(tmp_path / "remote")
    push_to_hub(hub.vqa, processor, "org/shapes", api=api, extra_files=extra_files, **SHAPES_CARD)
    assert set(extra_files) <= set(api.commits[-1]["added"]) and set(extra_files) <= set(
        api.list_repo_files("org/shapes"))
    assert (api._tree("org/shapes", None) / "figures" / "latency.png").read_bytes() == hub.figure.read_bytes()


@pytest.mark.parametrize("name, message", [
    ("../outside.png", "not a plain relative path"), ("/abs.png", "not a plain relative path"),
    ("figures//x.png", "not a plain relative path"), ("figures\\x.png", "not a plain relative path"),
    ("./x.png", "not a plain relative path"), ("figures/", "not a plain relative path"),
    (".git/config", "not a plain relative path"), ("", "not a file name"),
    ("config.json", r"would replace a file the library writes \(config\.json\); give the extra file another name"),
    ("model.safetensors", "would replace"), ("tokenizer.json", "would replace"),
    ("processor_config.json", "would replace"), ("generation_config.json", "would replace"),
    ("helpers.py", r"\(\*\.py\)"), ("figures/helpers.py", r"\(\*\.py\)"),
    ("README.md", "card="), ("readme.md", "card="), ("pruning_report.png", "pruning_figure="),
    ("pruning_report.json", "pruning_report="),
])
def test_bad_extra_file_names_are_refused_before_anything_is_written(name, message, hub, processor, tmp_path):
    api = LocalFolderHfApi(tmp_path / "remote")
    extra_files = {"ok.png": hub.figure, name: hub.figure}
    for kwargs in ({"dry_run_dir": tmp_path / "dry"}, {"api": api}):
        with pytest.raises(ValueError, match=message) as error:
            push_to_hub(hub.vqa, processor, "org/shapes", extra_files=extra_files, **kwargs)
        assert repr(name) in str(error.value)
    with pytest.raises(ValueError, match=message):
        publish.assemble_repo_folder(hub.vqa, processor, tmp_path / "assembled", card=hub.result.card,
                                     extra_files=extra_files)
    assert not (tmp_path / "dry").exists() and not (tmp_path / "assembled").exists()
    assert not api.repos and not api.commits


def test_missing_extra_files_and_figures_are_refused_before_anything_is_written(hub, processor, tmp_path):
    api = LocalFolderHfApi(tmp_path / "remote")
    missing = tmp_path / "nowhere" / "curves.png"
    for bad in ({"extra_files": {"training_curves.png": missing}}, {"pruning_figure": missing}):
        for kwargs in ({"dry_run_dir": tmp_path / "dry"}, {"api": api}):
            with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
                push_to_hub(hub.vqa, processor, "org/shapes", **bad, **kwargs)
    assert not (tmp_path / "dry").exists() and not api.repos and not api.commits
    assert publish.check_extra_files(None) == {}
    assert publish.check_extra_files({"b.png": hub.figure, "a/c.png": str(hub.figure)}) == {
        "a/c.png": hub.figure, "b.png": hub.figure}


def test_a_second_push_keeps_the_card_metadata_and_drops_stale_files(hub, processor, tmp_path):
    api = hub.api
    push_to_hub(hub.vqa, processor, "org/edited", api=api, pruning_report=REPORT, pruning_figure=hub.figure,
                eval_results=[EVAL], tags=["tiny"])
    # someone edits the card on the Hub and adds a file
    card = ModelCard.load(api.hf_hub_download("org/edited", "README.md"))
    card.data.tags.append("user-tag")
    card.data["widget"] = [{"text": "what is it?"}]
    api.create_commit("org/edited", [CommitOperationAdd("README.md", str(card).encode()),
                                     CommitOperationAdd("notes.txt", b"keep me")], commit_message="edit card")
    commits = len(api.commits)
    new_eval = {**EVAL, "dataset_split": "test-std", "metric_value": 76.3}
    push_to_hub(hub.vqa, processor, "org/edited", api=api, eval_results=[new_eval], tags=["second"])
    assert len(api.commits) == commits + 1
    files = set(api.list_repo_files("org/edited"))
    assert "notes.txt" in files and not {"pruning_report.json", "pruning_report.png"} & files
    data = ModelCard.load(api.hf_hub_download("org/edited", "README.md")).data
    assert {"user-tag", "tiny", "second", "efficientvlm", "pruning", "knowledge-distillation"} <= set(data.tags)
    assert data.widget == [{"text": "what is it?"}]
    assert data.library_name == "transformers" and data.pipeline_tag == "visual-question-answering"
    assert sorted((r.dataset_split, r.metric_value) for r in data.eval_results) == [("test-dev", 76.2),
                                                                                      ("test-std", 76.3)]


def test_a_branch_is_created_and_main_is_left_alone(hub):
    branches = hub.api.repos["org/vqa"]["branches"]
    assert set(branches) == {"main", "v2"} and branches["main"] != branches["v2"]
    v2 = [c for c in hub.api.commits if c["repo_id"] == "org/vqa" and c["revision"] == "v2"]
    assert [c["message"] for c in v2] == ["second version"]
    main = EfficientVLMForVisualQuestionAnswering.from_pretrained(hub.folder)
    for name, tensor in hub.vqa.state_dict().items():
        torch.testing.assert_close(main.state_dict()[name], tensor)


def test_private_is_honoured_and_never_silently_flipped(hub, processor):
    push_to_hub(hub.heads["base"], processor, "org/public", api=hub.api)
    assert not hub.api.repos["org/public"]["private"]
    with pytest.raises(ValueError, match="is public"):
        push_to_hub(hub.heads["base"], processor, "org/public", api=hub.api, private=True)


# ---------------------------------------------------------------------------------------------------------------
# Model cards
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", sorted(cards.CARD_KINDS))
def test_every_card_renders_and_parses_back_with_its_eval_results(task, tmp_path):
    config = tiny_config(heterogeneous=True)
    card = cards.render_model_card(
        task, repo_id="org/model", config=config, num_parameters=93_700_000, base_model="org/teacher",
        datasets=["org/data"], eval_results=[{**EVAL, "task_type": "custom"}, EvalResult(
            task_type="t", dataset_type="d", dataset_name="D", metric_type="m", metric_value=0.5)],
        pruning_report=REPORT, pruning_figure="pruning_report.png", summary="A tiny test model.")
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    data = loaded.data
    assert data.library_name == "transformers" and data.base_model == "org/teacher" and data.datasets == ["org/data"]
    assert data.pipeline_tag == cards.CARD_KINDS[task].pipeline_tag
    assert {"efficientvlm", "knowledge-distillation", "pruning", *cards.CARD_KINDS[task].tags} <= set(data.tags)
    assert [(r.task_type, r.dataset_name, r.dataset_split, r.metric_name, r.metric_value) for r in data.eval_results] \
        == [("custom", "VQAv2", "test-dev", "VQA accuracy", 76.2), ("t", "D", None, None, 0.5)]
    text = loaded.text
    assert "{{ " not in text and "{%" not in text and "{#" not in text  # no Jinja left over
    assert "A tiny test model." in text and "93.7M" in text
    assert "[org/teacher](https://huggingface.co/org/teacher)" in text
    assert "```bibtex\n" + cards.CITATION_BIBTEX + "\n```" in text and "@inproceedings{wang2023efficientvlm" in text
    assert "| vision | 30,000 | 50,000 |" not in text and "| vision | 50,000 | 30,000 | 2, 0, 3 |" in text
    assert "![Pruning report](pruning_report.png)" in text
    assert "| vision | 3 | 32 | 2, 0, 3 |  | 0, 16, 8 |" in text  # per-layer sizes from the config
    assert all("org/model" in snippet for snippet in card_snippets(text))


def test_vqa_card_tags_and_usage():
    card = cards.render_model_card("vqa", repo_id="org/vqa")
    assert card.data.pipeline_tag == "visual-question-answering"
    snippets = card_snippets(card.text)
    assert 'pipeline("visual-question-answering", model="org/vqa", trust_remote_code=True)' in snippets[0]
    assert "No evaluation results were recorded" in card.text and "No pruning report" in card.text


def test_pruning_section_renders_only_what_is_present():
    assert cards.render_pruning_section(None) == ""
    assert cards.render_pruning_section({}, "figure.png") == "![Pruning report](figure.png)"
    text = cards.render_pruning_section({"method": "L0", "modalities": {"text": {"ffn_kept": 100, "custom": 0.5}}})
    assert "- **method**: L0" in text
    assert "| Modality | FFN neurons kept | custom |" in text and "| text | 100 | 0.5 |" in text
    assert "Parameters kept" not in text and "per layer" not in text


def test_one_citation_everywhere_the_readmes_acl_findings_2023_entry():
    readme = (ROOT / "README.md").read_text()
    assert cards.CITATION_BIBTEX == re.search(r"## Citation\n\n```bibtex\n(.*?)\n```", readme, flags=re.S).group(1)
    assert cards.CITATION_BIBTEX.startswith("@inproceedings{wang2023efficientvlm,")
    assert "booktitle = {Findings of the Association for Computational Linguistics: ACL 2023}" in cards.CITATION_BIBTEX
    for task in cards.CARD_KINDS:
        text = cards.render_model_card(task, repo_id="org/x").text
        assert text.count("@inproceedings{wang2023efficientvlm") == 1 and "@article" not in text, task


def _layer(index, heads, ffn, params, cross=None):
    row = {"layer": index, "heads_before": heads[0], "heads_after": heads[1]}
    if cross is not None:
        row.update(cross_heads_before=cross[0], cross_heads_after=cross[1])
    row.update(ffn_before=ffn[0], ffn_after=ffn[1], params_before=params[0], params_after=params[1],
               flops_before=10 * params[0], flops_after=10 * params[1])
    return row


LAYERED_REPORT = {  # the pruning_report() format: modalities carry per-layer rows
    "target_sparsity": 0.6, "budget": "params",
    "achieved_sparsity": {"vision": 0.62, "text": 0.1, "fusion": 0.12, "overall": 0.6},
    "learned_expected_sparsity": {"vision": 0.61, "overall": 0.58}, "deterministic_rule_sparsity": None,
    "text_length": 40, "image_tokens": 197, "family": [0.3, 0.6],
    "overall": {"params_before": 2_400_000, "params_after": 960_000, "params_sparsity": 0.6,
                "flops_before": 3_000_000_000, "flops_after": 1_200_000_000, "flops_sparsity": 0.6},
    "modalities": {
        "vision": {"params_before": 1_200_000, "params_after": 456_000, "params_sparsity": 0.62,
                   "flops_before": 2_000_000_000, "flops_after": 760_000_000, "flops_sparsity": 0.62, "layers": [
                       _layer(0, (4, 2), (512, 128), (600_000, 200_000)),
                       _layer(1, (4, 0), (512, 256), (600_000, 256_000))]},
        "text": {"params_before": 600_000, "params_after": 540_000, "params_sparsity": 0.1, "layers": [
            _layer(0, (4, 4), (512, 400), (600_000, 540_000))]},
        "fusion": {"params_before": 600_000, "params_after": 528_000, "params_sparsity": 0.12, "layers": [
            _layer(0, (4, 3), (512, 256), (600_000, 528_000), cross=(4, 1))]},
    },
}


def test_a_layered_pruning_report_renders_a_summary_a_modality_table_and_one_layer_table():
    text = cards.render_pruning_section(LAYERED_REPORT, "pruning_report.png")
    summary, modality_table, _, layer_table, figure = text.split("\n\n")
    assert summary.splitlines() == [
        "- **Target sparsity**: 60.0%",
        "- **Budget**: params (parameters of the encoder layers)",
        "- **Achieved sparsity**: vision 62.0%, text 10.0%, fusion 12.0%, overall 60.0%",
        "- **Learned expected sparsity (L0 gates)**: vision 61.0%, overall 58.0%",
        "- **FLOPs counted for**: 40 text tokens and 197 image tokens",
        "- **Nested family exported from the same run**: 30.0%; 60.0%",
    ]
    assert modality_table.splitlines() == [
        "| Modality | Parameters | Parameter sparsity | FLOPs | FLOP sparsity |",
        "|---|---|---|---|---|",
        "| vision | 1.2M → 456,000 | 62.0% | 2.0G → 760.0M | 62.0% |",
        "| text | 600,000 → 540,000 | 10.0% |  |  |",
        "| fusion | 600,000 → 528,000 | 12.0% |  |  |",
        "| overall | 2.4M → 960,000 | 60.0% | 3.0G → 1.2G | 60.0% |",
    ]
    assert layer_table.splitlines() == [
        "| Modality | Layer | Self-attention heads | Cross-attention heads | FFN width | Parameters |",
        "|---|---|---|---|---|---|",
        "| vision | 0 | 4 → 2 |  | 512 → 128 | 600,000 → 200,000 |",
        "| vision | 1 | 4 → 0 |  | 512 → 256 | 600,000 → 256,000 |",
        "| text | 0 | 4 → 4 |  | 512 → 400 | 600,000 → 540,000 |",
        "| fusion | 0 | 4 → 3 | 4 → 1 | 512 → 256 | 600,000 → 528,000 |",
    ]
    assert figure == "![Pruning report](pruning_report.png)"
    assert "'layer'" not in text and "Lists give one value per layer" not in text


def test_the_report_of_pruning_report_renders_one_row_per_layer():
    from efficientvlm.pruning import pruning_report

    before, after = tiny_config(), tiny_config(heterogeneous=True)
    report = pruning_report(before, after, 0.5)
    text = cards.render_pruning_section(report)
    rows = [line for line in text.splitlines() if re.match(r"\| (vision|text|fusion) \| \d+ \|", line)]
    assert len(rows) == before.vision_config.num_hidden_layers + before.text_config.num_hidden_layers \
        + before.fusion_config.num_hidden_layers
    assert f"- **Achieved sparsity**: {100 * report['achieved_sparsity']:.1f}%" in text
    assert "| vision | 1 | 4 → 0 |  |" in text  # the heterogeneous tiny config drops every head of vision layer 1
    assert all(row.count("→") == 4 for row in rows if row.startswith("| fusion"))
    card = cards.render_model_card("vqa", repo_id="org/x", pruning_report=report)
    assert text in card.text


def test_card_options_put_what_is_true_of_the_model_in_the_vqa_card():
    default = cards.render_model_card("vqa", repo_id="org/shapes").text
    assert default.count("What color is the car?") == 3 and default.count('"path/to/image.jpg"') == 3
    assert "web-crawled pre-training data" in default and "## Figures" not in default
    question, image = 'Is there a "red" circle?', "examples/shapes_scene.png"
    limitations = ["Trained only on *shapes*: synthetic scenes of coloured circles, squares and triangles\non a plain "
                   "background.", "Questions outside colour, shape, count, existence and position are out of scope."]
    figures = [("Training curves", "training_curves.png"), ("Accuracy vs latency", "figures/latency.png")]
    text = cards.render_model_card("vqa", repo_id="org/shapes", config=tiny_config(), example_question=question,
                                   example_image=image, limitations=limitations, figures=figures).text
    snippets = card_snippets(text)
    assert len(snippets) == 3
    for snippet in snippets:
        ast.parse(snippet)  # the quotes of the question are escaped
        assert '"Is there a \\"red\\" circle?"' in snippet and '"examples/shapes_scene.png"' in snippet
    assert "What color is the car?" not in text and "path/to/image.jpg" not in text
    limitations_section = text[text.index("## Limitations"):text.index("## Citation")]
    assert "- Trained only on *shapes*: synthetic scenes of coloured circles, squares and triangles on a plain " \
           "background.\n- Questions outside colour, shape, count, existence and position are out of scope.\n" \
           in limitations_section
    assert "web-crawled" not in text
    for generic in (f"fixed answer vocabulary ({len(ANSWERS)} answers)", "independent sigmoids", "at most 40 tokens",
                    "this model's custom\n  pipeline"):
        assert generic in limitations_section, generic
    assert text.index("## Pruning") < text.index("## Figures") < text.index("## Limitations")
    assert "## Figures\n\n### Training curves\n\n![Training curves](training_curves.png)\n\n" \
           "### Accuracy vs latency\n\n![Accuracy vs latency](figures/latency.png)\n\n## Limitations" in text


def test_the_vqa_card_scores_a_single_label_classifier_with_a_softmax():
    text = cards.render_model_card("vqa", repo_id="org/x",
                                   config=tiny_config(problem_type="single_label_classification")).text
    usage = [snippet for snippet in card_snippets(text) if ".logits." in snippet]
    assert usage and all(".logits.softmax(-1)" in snippet and "sigmoid" not in snippet for snippet in usage)
    assert "independent sigmoids" not in text and "scores are a softmax over the answer vocabulary" in text
    default = cards.render_model_card("vqa", repo_id="org/x", config=tiny_config()).text
    assert "independent sigmoids" in default and ".logits.sigmoid()" in default and "softmax" not in default


@pytest.mark.parametrize("task", sorted(cards.CARD_KINDS))
def test_limitations_and_figures_apply_to_every_card(task):
    kind = cards.CARD_KINDS[task]
    text = cards.render_model_card(task, repo_id="org/x", limitations=["Trained on toy data only."],
                                   figures=[("Curves", "curves.png")]).text
    assert "- Trained on toy data only.\n" in text and "web-crawled" not in text
    assert "## Figures\n\n### Curves\n\n![Curves](curves.png)" in text
    if "image" in kind.usage_examples:
        assert '"toy.png"' in cards.render_model_card(task, repo_id="org/x", example_image="toy.png").text
    else:
        with pytest.raises(ValueError, match="example_image applies to these cards only"):
            cards.render_model_card(task, repo_id="org/x", example_image="toy.png")
    if task != "vqa":
        with pytest.raises(ValueError, match=f"The {task} card has no question"):
            cards.render_model_card(task, repo_id="org/x", example_question="What is it?")
    with pytest.raises(ValueError, match="pairs"):
        cards.render_model_card(task, repo_id="org/x", figures=["curves.png"])
    with pytest.raises(TypeError, match="list of strings"):
        cards.render_model_card(task, repo_id="org/x", limitations="one string")


def test_templates_have_one_source_and_work_with_model_card_from_template(tmp_path):
    assert (ROOT / "model_cards").resolve() == cards.TEMPLATES_DIR.resolve()
    assert {p.name for p in (ROOT / "model_cards").glob("*.md")} == {k.template for k in cards.CARD_KINDS.values()}
    assert "hub/templates/*.md" in (ROOT / "setup.py").read_text()  # shipped as package data
    for kind in cards.CARD_KINDS.values():
        card = ModelCard.from_template(ModelCardData(library_name="transformers", tags=["x"]),
                                       template_path=str(ROOT / "model_cards" / kind.template), repo_id="org/x",
                                       model_name="x", citation_bibtex=cards.CITATION_BIBTEX)
        card.save(tmp_path / kind.template)
        assert ModelCard.load(tmp_path / kind.template).data.tags == ["x"]


# ---------------------------------------------------------------------------------------------------------------
# Loading: without efficientvlm (remote code), from Hub ids offline through the cache, with the library
# ---------------------------------------------------------------------------------------------------------------

ISOLATED_SCRIPT = r'''
import json, sys, traceback


class BlockEfficientVLM:
    """Make efficientvlm unimportable, even though it is installed in site-packages."""

    def find_spec(self, name, path=None, target=None):
        if name == "efficientvlm" or name.startswith("efficientvlm."):
            raise ImportError("efficientvlm is blocked in this process")


sys.meta_path.insert(0, BlockEfficientVLM())
import torch
from PIL import Image
from transformers import (AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageTextToText,
                          AutoModelForPreTraining, AutoModelForVisualQuestionAnswering, AutoProcessor, pipeline)

manifest = json.load(open(sys.argv[1]))
image = Image.open(manifest["image"])
results = {}


def check(name, function):
    try:
        results[name] = function()
    except Exception as error:
        results[name] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}


def vqa(model_id, **kwargs):
    model = AutoModelForVisualQuestionAnswering.from_pretrained(model_id, trust_remote_code=True, **kwargs).eval()
    processor = AutoProcessor.from_pretrained(model_id, trust_remote_code=True, **kwargs)
    with torch.no_grad():
        logits = model(**processor(images=image, text=manifest["question"])).logits[0]
    answers = pipeline("visual-question-answering", model=model_id, trust_remote_code=True, **kwargs)(
        image, manifest["question"], top_k=5)
    return {"model": f"{type(model).__module__}.{type(model).__name__}", "processor": type(processor).__name__,
            "logits": logits.tolist(), "answers": answers}


def auto_classes(folder):
    return {"config": type(AutoConfig.from_pretrained(folder, trust_remote_code=True)).__name__,
            "model": type(AutoModel.from_pretrained(folder, trust_remote_code=True)).__name__,
            "image_processor": type(AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)).__name__,
            "pipeline": type(pipeline("visual-question-answering", model=folder, trust_remote_code=True)).__name__,
            "inferred_task_pipeline": type(pipeline(model=folder, trust_remote_code=True)).__name__}


def refused(function):
    try:
        function()
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return "loaded"


def caption(model_id):
    model = AutoModelForImageTextToText.from_pretrained(model_id, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(model_id, trust_remote_code=True)
    return model.generate(pixel_values=processor(images=image)["pixel_values"]).tolist()


def run_snippets():
    outcome = {}
    for name, code in manifest["snippets"]:
        try:
            exec(compile(code, name, "exec"), {"__name__": "__snippet__"})
            outcome[name] = "ok"
        except Exception as error:
            outcome[name] = f"{type(error).__name__}: {error}\n{traceback.format_exc()}"
    return outcome


check("folder", lambda: vqa(manifest["folder"]))
check("folder_auto_classes", lambda: auto_classes(manifest["folder"]))
check("hub_id", lambda: vqa("org/vqa"))
check("hub_id_revision", lambda: vqa("org/vqa", revision="v2"))
check("captioning", lambda: caption("org/captioning"))
check("pretraining", lambda: type(
    AutoModelForPreTraining.from_pretrained("org/pretraining", trust_remote_code=True)).__name__)
check("without_trust", lambda: refused(lambda: AutoModelForVisualQuestionAnswering.from_pretrained(
    manifest["folder"], trust_remote_code=False)))
check("pickled", lambda: refused(lambda: AutoModelForVisualQuestionAnswering.from_pretrained(
    manifest["pickled"], trust_remote_code=True)))
check("snippets", run_snippets)
results["efficientvlm_imported"] = any(name.split(".")[0] == "efficientvlm" for name in sys.modules)
print(json.dumps(results))
'''


@pytest.fixture(scope="module")
def isolated(hub, tmp_path_factory):
    """One subprocess in which efficientvlm cannot be imported runs every library-free check; offline, with the
    temporary cache as the Hub cache and a working directory outside the repository."""
    work = tmp_path_factory.mktemp("isolated")
    pickled = work / "pickled"
    shutil.copytree(hub.folder, pickled)
    (pickled / "model.safetensors").unlink()
    torch.save(hub.vqa.state_dict(), pickled / "pytorch_model.bin")
    snippets = []
    for repo_id in ("org/vqa", *(f"org/{name}" for name in OTHER_HEADS)):
        readme = (hub.api._tree(repo_id, None) / "README.md").read_text()
        snippets += [(f"{repo_id} snippet {i}", with_test_images(code, hub.images))
                     for i, code in enumerate(card_snippets(readme)) if not needs_library(code)]
    manifest = {"folder": str(hub.folder), "pickled": str(pickled), "image": str(hub.images["rgb.png"]),
                "question": QUESTION, "snippets": snippets}
    (work / "manifest.json").write_text(json.dumps(manifest))
    (work / "check.py").write_text(ISOLATED_SCRIPT)
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "HF_"))}
    environment.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(hub.cache), HF_MODULES_CACHE=str(work / "modules"),
                       HF_HUB_DISABLE_TELEMETRY="1", TOKENIZERS_PARALLELISM="false")
    completed = subprocess.run([sys.executable, "-I", str(work / "check.py"), str(work / "manifest.json")], cwd=work,
                               env=environment, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-5000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _ok(result):
    assert not (isinstance(result, dict) and "error" in result), result.get("traceback", result)
    return result


def test_without_efficientvlm_the_folder_loads_with_remote_code(isolated, hub, processor):
    assert isolated["efficientvlm_imported"] is False
    folder = _ok(isolated["folder"])
    assert folder["model"].startswith("transformers_modules.") and folder["model"].endswith(
        "modeling_efficientvlm.EfficientVLMForVisualQuestionAnswering")
    assert folder["processor"] == "EfficientVLMProcessor"
    expected = vqa_logits(hub.vqa, processor, Image.open(hub.images["rgb.png"]))
    torch.testing.assert_close(torch.tensor(folder["logits"]), expected, atol=1e-5, rtol=1e-4)
    probabilities = expected.sigmoid()
    assert [a["answer"] for a in folder["answers"]] == [ANSWERS[i] for i in probabilities.argsort(descending=True)]
    assert folder["answers"][0]["score"] == pytest.approx(probabilities.max().item(), abs=1e-5)
    assert _ok(isolated["folder_auto_classes"]) == {
        "config": "EfficientVLMConfig", "model": "EfficientVLMModel", "image_processor": "EfficientVLMImageProcessor",
        "pipeline": "EfficientVLMVQAPipeline", "inferred_task_pipeline": "EfficientVLMVQAPipeline"}
    assert "trust_remote_code" in _ok(isolated["without_trust"])


def test_without_efficientvlm_hub_ids_load_offline_from_the_cache(isolated, hub, processor):
    image = Image.open(hub.images["rgb.png"])
    hub_id = _ok(isolated["hub_id"])
    torch.testing.assert_close(torch.tensor(hub_id["logits"]), vqa_logits(hub.vqa, processor, image), atol=1e-5,
                               rtol=1e-4)
    revision = _ok(isolated["hub_id_revision"])
    torch.testing.assert_close(torch.tensor(revision["logits"]), vqa_logits(hub.vqa_v2, processor, image), atol=1e-5,
                               rtol=1e-4)
    assert _ok(isolated["pretraining"]) == "EfficientVLMForPreTraining"
    with torch.no_grad():
        expected = hub.heads["captioning"].generate(pixel_values=processor(images=image)["pixel_values"])
    assert _ok(isolated["captioning"]) == expected.tolist()


def test_the_cards_usage_snippets_run_as_written_without_efficientvlm(isolated):
    outcome = _ok(isolated["snippets"])
    assert len(outcome) == 7  # vqa: pipeline + model; one each for the five other repositories
    assert all(value == "ok" for value in outcome.values()), outcome


@pytest.fixture
def offline_cache(hub, monkeypatch):
    """Point this process's Hub cache at the temporary one, offline (huggingface_hub reads both at call time)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub.cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return hub.cache


def test_with_efficientvlm_hub_ids_load_offline_from_the_cache(hub, processor, offline_cache):
    image = Image.open(hub.images["rgb.png"])
    model = AutoModelForVisualQuestionAnswering.from_pretrained("org/vqa")
    assert type(model) is EfficientVLMForVisualQuestionAnswering  # the library's class: no trust_remote_code needed
    assert type(AutoProcessor.from_pretrained("org/vqa")) is EfficientVLMProcessor
    torch.testing.assert_close(vqa_logits(model, processor, image), vqa_logits(hub.vqa, processor, image))
    v2 = EfficientVLMForVisualQuestionAnswering.from_pretrained("org/vqa", revision="v2")
    torch.testing.assert_close(vqa_logits(v2, processor, image), vqa_logits(hub.vqa_v2, processor, image))
    explicit = EfficientVLMForVisualQuestionAnswering.from_pretrained("org/vqa", cache_dir=offline_cache,
                                                                     local_files_only=True)
    torch.testing.assert_close(vqa_logits(explicit, processor, image), vqa_logits(hub.vqa, processor, image))
    explicit = pipeline("visual-question-answering", model="org/vqa", pipeline_class=EfficientVLMVQAPipeline)
    assert explicit(image, QUESTION, top_k=1)[0]["answer"] in ANSWERS


def _vqa_answers(hub, processor, image):
    """The answers and sigmoid scores the published VQA model gives, best first."""
    probabilities = vqa_logits(hub.vqa, processor, image).sigmoid()
    order = probabilities.argsort(descending=True)[:3]
    return [ANSWERS[i] for i in order], probabilities[order]


def test_with_efficientvlm_a_pushed_repository_answers_through_the_pipeline_without_a_flag(hub, processor,
                                                                                          offline_cache):
    """config.json declares the custom pipeline for users without the library, which transformers would always run
    behind trust_remote_code=True; the library's config sets the entry aside because the registered pipeline is the
    same class, and writes it back on save."""
    image = Image.open(hub.images["rgb.png"])
    expected_answers, expected_scores = _vqa_answers(hub, processor, image)
    for model_id in ("org/vqa", str(hub.folder)):  # a Hub id (from the cache) and a local folder
        vqa = pipeline("visual-question-answering", model=model_id)
        assert type(vqa) is EfficientVLMVQAPipeline  # the installed class, not the repository's copy
        assert type(vqa.model) is EfficientVLMForVisualQuestionAnswering
        answers = vqa(image, QUESTION, top_k=3)
        assert [a["answer"] for a in answers] == expected_answers
        torch.testing.assert_close(torch.tensor([a["score"] for a in answers]), expected_scores, atol=1e-5,
                                   rtol=1e-4)
        # trust_remote_code=True changes nothing: the installed classes win, as for the Auto classes
        assert type(pipeline("visual-question-answering", model=model_id, trust_remote_code=True)) is \
            EfficientVLMVQAPipeline

    config = vqa.model.config
    assert not hasattr(config, "custom_pipelines")
    published = json.loads((hub.folder / "config.json").read_text())["custom_pipelines"]
    assert config.to_dict()["custom_pipelines"] == published
    folder = hub.root / "resaved"
    vqa.model.save_pretrained(folder)  # the entry is written back for users without the library
    assert json.loads((folder / "config.json").read_text())["custom_pipelines"] == published
    # an entry this process does not serve (another class, or another task) stays where transformers reads it
    foreign = {"visual-question-answering": {"impl": "pipeline_other.OtherPipeline", "pt": []},
               "other-task": {"impl": "pipeline_efficientvlm.EfficientVLMVQAPipeline", "pt": []}}
    assert efficientvlm.EfficientVLMConfig(custom_pipelines=foreign).custom_pipelines == foreign


def test_the_cards_library_snippets_run_as_written(hub, offline_cache, capsys):
    ran = []
    for repo_id in ("org/vqa", *(f"org/{name}" for name in OTHER_HEADS)):
        readme = (hub.api._tree(repo_id, None) / "README.md").read_text()
        for code in card_snippets(readme):
            if needs_library(code):
                exec(compile(with_test_images(code, hub.images), repo_id, "exec"), {"__name__": "__snippet__"})
                ran.append(repo_id)
    assert sorted(ran) == sorted(["org/vqa", *(f"org/{name}" for name in OTHER_HEADS)])  # one per card


# ---------------------------------------------------------------------------------------------------------------
# Refused checkpoints
# ---------------------------------------------------------------------------------------------------------------


def test_a_checkpoint_with_pickled_weights_only_is_refused(hub, isolated, tmp_path):
    folder = tmp_path / "pickled"
    hub.vqa.save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    torch.save(hub.vqa.state_dict(), folder / "pytorch_model.bin")
    message = r"pickled weights only \(pytorch_model\.bin\)"
    with pytest.raises(ValueError, match=message):
        EfficientVLMForVisualQuestionAnswering.from_pretrained(folder)
    with pytest.raises(ValueError, match=message):
        AutoModelForVisualQuestionAnswering.from_pretrained(folder)
    with pytest.raises(ValueError, match="safetensors weights only"):
        EfficientVLMForVisualQuestionAnswering.from_pretrained(hub.folder, use_safetensors=False)
    assert re.search(message, isolated["pickled"])  # the shipped remote code refuses it too


def test_a_config_that_does_not_match_the_weights_is_refused(hub, tmp_path):
    folder = tmp_path / "mismatch"
    hub.vqa.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["vision_config"]["intermediate_size"] = [0, 16, 4]
    config["fusion_config"]["num_cross_attention_heads"] = [1, 1]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError) as error:
        EfficientVLMForVisualQuestionAnswering.from_pretrained(folder)
    message = str(error.value)
    assert "vision layer 2, vision_config.intermediate_size[2] = 4" in message
    assert "fusion layer 1, fusion_config.num_cross_attention_heads[1] = 1" in message


# ---------------------------------------------------------------------------------------------------------------
# The efficientvlm command line
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(hub, processor, tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoint") / "vqa"
    hub.vqa.save_pretrained(folder)
    processor.save_pretrained(folder)
    (folder.parent / "report.json").write_text(json.dumps(REPORT))
    (folder.parent / "eval.json").write_text(json.dumps([EVAL]))
    return folder


def test_cli_push_dry_run(checkpoint, hub, tmp_path, capsys):
    out = tmp_path / "repo"
    status = cli.main(["push", str(checkpoint), "org/cli", "--dry-run", str(out), "--tag", "cli-tag",
                       "--dataset", "org/data", "--base-model", "org/teacher",
                       "--eval-results", str(checkpoint.parent / "eval.json"),
                       "--pruning-report", str(checkpoint.parent / "report.json"), "--pruning-figure", str(hub.figure)])
    assert status == 0
    assert "dry run, nothing uploaded" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == set(hub.result.files)
    data = ModelCard.load(out / "README.md").data
    assert "cli-tag" in data.tags and data.datasets == ["org/data"] and data.eval_results[0].metric_value == 76.2
    model = EfficientVLMForVisualQuestionAnswering.from_pretrained(out)
    for name, tensor in hub.vqa.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor)


def test_cli_push_uploads_one_commit_to_a_private_branch(checkpoint, tmp_path, monkeypatch, capsys):
    api = LocalFolderHfApi(tmp_path / "remote")
    monkeypatch.setattr(publish, "HfApi", lambda token=None: api)
    assert cli.main(["push", str(checkpoint), "org/cli", "--private", "--revision", "dev", "--commit-message",
                     "from the CLI"]) == 0
    assert "https://huggingface.co/org/cli/commit/" in capsys.readouterr().out
    assert api.repos["org/cli"]["private"] and set(api.repos["org/cli"]["branches"]) == {"main", "dev"}
    assert [c["message"] for c in api.commits if c["added"]] == ["from the CLI"]
    assert "pipeline_efficientvlm.py" in api.list_repo_files("org/cli", revision="dev")
    assert api.list_repo_files("org/cli") == []


def test_cli_errors_are_clear(checkpoint, tmp_path, capsys):
    no_processor = tmp_path / "no_processor"
    shutil.copytree(checkpoint, no_processor, ignore=shutil.ignore_patterns("processor_config.json", "tokenizer*"))
    assert cli.main(["push", str(no_processor), "org/x", "--dry-run", str(tmp_path / "a")]) == 2
    assert "has no processor" in capsys.readouterr().err
    pickled = tmp_path / "pickled"
    shutil.copytree(checkpoint, pickled)
    torch.save({}, pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    assert cli.main(["push", str(pickled), "org/x", "--dry-run", str(tmp_path / "b")]) == 2
    assert "pickled weights only" in capsys.readouterr().err
    readme = tmp_path / "README.md"
    readme.write_text("---\nlicense: mit\n---\n# card\n")
    assert cli.main(["push", str(checkpoint), "org/x", "--card", str(readme), "--tag", "t", "--dry-run",
                     str(tmp_path / "c")]) == 2
    assert "--card uses a finished card" in capsys.readouterr().err
    assert cli.main(["push", str(checkpoint), "org/x", "--card", str(readme), "--dry-run", str(tmp_path / "d")]) == 0
    assert (tmp_path / "d" / "README.md").read_text().startswith("---\nlicense: mit\n---")


def test_a_new_subcommand_is_one_registry_entry(monkeypatch, capsys):
    def add_arguments(parser):
        parser.add_argument("--port", type=int, default=7860)

    monkeypatch.setattr(cli, "SUBCOMMANDS", [*cli.SUBCOMMANDS, cli.Subcommand(
        "serve", "Start a server.", add_arguments, lambda args: print(f"serving on {args.port}"))])
    assert cli.main(["serve", "--port", "8000"]) == 0
    assert capsys.readouterr().out == "serving on 8000\n"
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "push" in capsys.readouterr().out
    assert efficientvlm.cli is cli
