"""`efficientvlm demo --quick`: every stage runs, and its pruned checkpoint is a normal transformers model."""

import json
import subprocess
import sys

import pytest
from huggingface_hub import ModelCard
from PIL import Image
from transformers import AutoModel, AutoModelForVisualQuestionAnswering, pipeline

from efficientvlm import EfficientVLMModel
from efficientvlm.demo import DemoConfig


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    result = subprocess.run([sys.executable, "-m", "efficientvlm.cli", "demo", "--quick", "--output-dir", str(out)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "| pruned student |" in result.stdout
    return out


def test_demo_writes_results_for_teacher_student_and_pruned_student(demo_dir):
    results = json.loads((demo_dir / "results.json").read_text())
    assert [row["model"] for row in results["rows"]] == ["teacher", "student", "pruned student"]
    teacher, student, pruned = results["rows"]
    assert teacher["percent_of_teacher"] == 100.0 and teacher["speedup_batch1"] == 1.0
    assert student["parameters"] < teacher["parameters"] and pruned["parameters"] <= student["parameters"]
    assert all(0.0 <= row["vqa_accuracy"] <= 1.0 for row in results["rows"])
    assert results["pruning"]["target_sparsity"] == DemoConfig.quick().target_sparsity
    assert (demo_dir / "report" / "pruning_report.png").exists()


def test_pruned_checkpoint_reloads_with_automodel_and_answers_through_the_pipeline(demo_dir, tmp_path):
    assert isinstance(AutoModel.from_pretrained(demo_dir / "pruned"), EfficientVLMModel)
    image = tmp_path / "scene.png"
    Image.new("RGB", (40, 40), "white").save(image)
    vqa = pipeline("visual-question-answering", model=str(demo_dir / "pruned"))
    answers = vqa(str(image), "what color is the circle?", top_k=2)
    assert len(answers) == 2 and all(a["answer"] for a in answers)


def test_hub_folder_has_card_code_and_report(demo_dir):
    hub = demo_dir / "hub"
    names = {p.name for p in hub.iterdir()}
    assert {"README.md", "config.json", "model.safetensors", "processor_config.json", "modeling_efficientvlm.py",
            "pruning_report.json", "pruning_report.png"} <= names
    card = ModelCard.load(hub / "README.md")
    assert card.data.pipeline_tag == "visual-question-answering"
    assert "| pruned student |" in card.text
    model = AutoModelForVisualQuestionAnswering.from_pretrained(hub)
    assert model.config.pruning_info["budget"] == "flops"
