"""`efficientvlm demo --quick`: every stage runs, and its pruned checkpoint is a normal transformers model."""

import dataclasses
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
    assert "| pruned student |" in result.stdout and "| image-blind baseline |" in result.stdout
    assert "Accuracy per question type" in result.stdout and "Accuracy by the number of objects" in result.stdout
    return out


def test_demo_writes_every_row_of_the_experiment(demo_dir):
    results = json.loads((demo_dir / "results.json").read_text())
    assert [row["model"] for row in results["rows"]] == [
        "image-blind baseline", "teacher", "student without KD", "student with KD", "pruned, fixed split",
        "pruned student"]
    rows = {row["model"]: row for row in results["rows"]}
    teacher, plain, student, fixed, pruned = (rows[name] for name in (
        "teacher", "student without KD", "student with KD", "pruned, fixed split", "pruned student"))
    assert teacher["percent_of_teacher"] == 100.0 and teacher["speedup_batch1"] == 1.0
    assert student["parameters"] < teacher["parameters"] and plain["parameters"] == student["parameters"]
    assert pruned["parameters"] <= student["parameters"] and pruned["flops"] < student["flops"] < teacher["flops"]
    assert all(0.0 <= row["vqa_accuracy"] <= 1.0 for row in results["rows"])
    # per question type, for every row, the baseline included
    for name in rows:
        assert {f"vqa_accuracy_{t}" for t in ("color", "shape", "count", "exist", "position")} <= set(
            results["accuracy"][name]), name
    assert "speedup_batch1" not in rows["image-blind baseline"]  # nothing to time
    quick = DemoConfig.quick()
    assert results["pruning"]["target_sparsity"] == quick.target_sparsity
    # exported sizes: the asked budget overall (learned split) and per encoder (fixed split)
    assert abs(results["pruning"]["achieved_sparsity"]["overall"] - quick.target_sparsity) <= 0.01
    assert set(fixed["target_sparsity"]) == {"vision", "text", "fusion"}
    for modality in ("vision", "text", "fusion"):
        assert abs(fixed["achieved_sparsity"][modality] - quick.target_sparsity) <= 0.03
    assert "learned_expected_sparsity" in results["pruning"]
    # accuracy by the number of objects in the scene, for every row: overall per count, and colour / shape questions
    # on one-object scenes against scenes of several
    quick_counts = {str(n) for n in range(1, quick.max_objects + 1)}
    for name in rows:
        by_objects = results["accuracy_by_objects"][name]
        assert set(by_objects) & quick_counts and all(0.0 <= v <= 1.0 for v in by_objects.values()), name
        assert {"color 1", "color 2+"} & set(by_objects), name


def test_demo_writes_curves_figures_and_trainer_states(demo_dir):
    for stage in ("teacher", "student-no-kd", "student-kd", "pruning-fixed", "pruning-adaptive"):
        folder = demo_dir / "runs" / stage
        assert list(folder.glob("events.out.tfevents.*")), stage
        state = json.loads((folder / "trainer_state.json").read_text())
        assert any("eval_vqa_accuracy" in entry for entry in state["log_history"]), stage
    last = [e for e in json.loads((demo_dir / "runs" / "pruning-adaptive" / "trainer_state.json").read_text())[
        "log_history"] if "expected_sparsity" in e][-1]
    assert {"sparsity", "target_sparsity", "lambda_1", "lambda_2", "kd_loss", "task_loss"} <= set(last)
    for figure in ("training_curves.png", "accuracy_vs_latency.png", "pruning_report.png"):
        assert (demo_dir / "report" / figure).read_bytes()[:4] == b"\x89PNG", figure


@pytest.mark.parametrize("flags, message", [
    (["--budget", "foo"], "--budget"),
    (["--target-sparsity", "1.5"], "--target-sparsity"),
    (["--teacher-layers", "6", "2"], "--teacher-layers"),
    (["--student-layers", "4", "1", "1", "--teacher-layers", "2", "2", "2"], "--student-layers"),
    (["--image-size", "60", "--patch-size", "8"], "--image-size"),
    (["--questions-per-image", "0"], "--questions-per-image"),
    (["--vqa-loss", "hinge"], "--vqa-loss"),
    (["--vqa-loss", "softmax", "--vqa-head", "generative"], "--vqa-loss"),
])
def test_bad_flags_fail_before_any_work_naming_the_flag(flags, message, tmp_path):
    result = subprocess.run([sys.executable, "-m", "efficientvlm.cli", "demo", *flags, "--output-dir",
                             str(tmp_path / "out")], capture_output=True, text=True, timeout=600)
    assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
    # nothing was started: no output folder, no data generated (no timing asserted: the machines are shared)
    assert not (tmp_path / "out").exists()
    assert "[1/7]" not in result.stderr


def test_help_describes_every_flag():
    from efficientvlm.cli import build_parser

    text = " ".join(build_parser()._subparsers._group_actions[0].choices["demo"].format_help().split())
    for spec in dataclasses.fields(DemoConfig):
        flag = "--" + spec.name.replace("_", "-")
        assert flag in text, flag
    assert "(default:" in text and "same for the students with and without KD" in text


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
    assert "| pruned student |" in card.text and "| image-blind baseline |" in card.text
    assert "synthetic" in card.text and "web-crawled" not in card.text
    assert "![Training curves (every stage)](training_curves.png)" in card.text
    assert "| vision | 0 |" in card.text  # the per-layer pruning table
    assert card.text.count("@inproceedings{wang2023efficientvlm") == 1 and "@article" not in card.text
    assert {"training_curves.png", "accuracy_vs_latency.png", "example_scene.png"} <= names
    model = AutoModelForVisualQuestionAnswering.from_pretrained(hub)
    assert model.config.pruning_info["budget"] == "flops"


@pytest.fixture(scope="module")
def generative_demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-generative")
    result = subprocess.run([sys.executable, "-m", "efficientvlm.cli", "demo", "--quick", "--vqa-head", "generative",
                             "--output-dir", str(out)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "| layers V/T/F/D |" in result.stdout.replace(" model ", "").replace("|layers", "| layers")
    return out


def test_demo_runs_every_stage_with_the_generative_head(generative_demo_dir, tmp_path):
    from efficientvlm import EfficientVLMForGenerativeVQA

    results = json.loads((generative_demo_dir / "results.json").read_text())
    rows = {row["model"]: row for row in results["rows"]}
    assert rows["teacher"]["layers"] == "2/2/2/2" and rows["student with KD"]["layers"] == "1/1/1/1"
    quick = DemoConfig.quick()
    assert abs(results["pruning"]["achieved_sparsity"]["overall"] - quick.target_sparsity) <= 0.01
    assert "decoder" in results["pruning"]["achieved_sparsity"]  # the decoder is pruned under the same budget
    assert set(rows["pruned, fixed split"]["target_sparsity"]) == {"vision", "text", "fusion", "decoder"}
    state = json.loads((generative_demo_dir / "runs" / "student-kd" / "trainer_state.json").read_text())
    assert any("kd_attn_decoder_cross" in entry for entry in state["log_history"])
    assert any("eval_loss" in entry for entry in state["log_history"])
    model = AutoModelForVisualQuestionAnswering.from_pretrained(generative_demo_dir / "pruned")
    assert isinstance(model, EfficientVLMForGenerativeVQA)
    image = tmp_path / "scene.png"
    Image.new("RGB", (40, 40), "white").save(image)
    answers = pipeline("visual-question-answering", model=str(generative_demo_dir / "pruned"))(
        str(image), "what color is the circle?", top_k=2)
    assert len(answers) == 2 and all(a["answer"] in model.config.label2id for a in answers)
    assert "generative answer decoder" in ModelCard.load(generative_demo_dir / "hub" / "README.md").text


def test_questions_per_image_trains_on_whole_images(tmp_path):
    """--questions-per-image k: k questions per training image, each image once per batch (image_index)."""
    from efficientvlm.data import ShapesConfig, answer_vocabulary, build_tokenizer, make_vqa_dataset
    from efficientvlm.demo import _Stages, build_teacher, vqa_collator
    from efficientvlm.models import EfficientVLMImageProcessor, EfficientVLMProcessor
    from efficientvlm.tasks import small_config

    cfg = DemoConfig.quick(questions_per_image=4, output_dir=str(tmp_path))
    shapes = ShapesConfig(image_size=cfg.image_size, seed=0, max_objects=cfg.max_objects)
    train = make_vqa_dataset(64, split_seed="train", config=shapes, questions_per_image=cfg.questions_per_image)
    validation = make_vqa_dataset(8, split_seed="validation", config=shapes)
    tokenizer = build_tokenizer(tmp_path / "vocab", shapes)
    processor = EfficientVLMProcessor(EfficientVLMImageProcessor(size={"height": cfg.image_size,
                                                                       "width": cfg.image_size}), tokenizer)
    answers = answer_vocabulary(shapes)
    config = small_config(tokenizer, cfg.teacher_layers, cfg.hidden_size, cfg.head_dim, cfg.image_size,
                          cfg.patch_size, answers)
    stages = _Stages(cfg, tmp_path, train, validation, vqa_collator(cfg, processor, answers))
    trainer = stages.run("teacher", build_teacher(cfg, config, tokenizer, answers), 1.0)
    assert trainer.state.global_step == 4
    for batch in trainer.get_train_dataloader():  # 16 questions about 4 images
        assert batch["pixel_values"].shape[0] == 4 and batch["image_index"].tolist() == sorted(
            batch["image_index"].tolist()) and len(batch["input_ids"]) == 16


def test_speedup_is_the_median_of_per_round_ratios():
    """A latency is the median over the rounds; a speed-up the median of each round's teacher / model ratio, so that a
    round slowed for every model (load on shared cores) does not skew it."""
    from efficientvlm.demo import _latency_and_speedup

    rounds = {"teacher": [0.010, 0.020, 0.012, 0.030], "pruned": [0.004, 0.010, 0.003, 0.010]}
    milliseconds, speedup = _latency_and_speedup(rounds, "pruned")
    assert milliseconds == pytest.approx(1000 * (0.004 + 0.010) / 2)  # median of 0.003, 0.004, 0.010, 0.010
    assert speedup == pytest.approx((2.5 + 3.0) / 2)  # ratios 2.5, 2.0, 4.0, 3.0 -> median 2.75
    assert _latency_and_speedup(rounds, "teacher")[1] == 1.0
    with pytest.raises(ValueError):  # rounds of different lengths are a bug, not data
        _latency_and_speedup({"teacher": [0.01], "pruned": [0.01, 0.02]}, "pruned")
