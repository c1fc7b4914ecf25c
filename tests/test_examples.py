"""The README's first command: the quick start runs end to end and answers through the pipeline."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_runs_and_answers(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), "--output-dir", str(tmp_path / "model")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Q: what color is the circle?" in result.stdout
    assert (tmp_path / "model" / "model.safetensors").exists()
    assert (tmp_path / "model" / "processor_config.json").exists()


def _load_example(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


TINY = ["--dataset", "shapes", "--shapes_train_size", "16", "--shapes_eval_size", "6", "--shapes_image_size", "32",
        "--hidden_size", "32", "--vision_layers", "1", "--text_layers", "1", "--fusion_layers", "1", "--max_steps", "2",
        "--per_device_train_batch_size", "4", "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true"]


def test_finetune_every_task_then_predict_on_a_folder(tmp_path):
    import json

    import pytest
    from PIL import Image

    finetune = _load_example("finetune")
    expected = {"vqa": "vqa_accuracy", "nlvr2": "nlvr2_accuracy", "retrieval": "r_mean", "captioning": "cider"}
    for task, metric in expected.items():
        metrics = finetune.main(["--task", task, "--output_dir", str(tmp_path / task), *TINY])
        assert metric in metrics
        saved = json.loads((tmp_path / task / "eval_results.json").read_text())
        assert saved == pytest.approx(metrics)
        assert (tmp_path / task / "model.safetensors").exists()
        assert not (tmp_path / task / "runs").exists()  # --report_to none wins over the TensorBoard default

    images = tmp_path / "images"
    (images / "nested").mkdir(parents=True)
    Image.new("RGB", (40, 40), "red").save(images / "a.png")
    Image.new("L", (40, 40)).save(images / "nested" / "b.jpg")
    predict = _load_example("predict")
    answers = predict.main(["--model", str(tmp_path / "vqa"), "--images", str(images), "--question",
                            "what color is the circle?", "--top_k", "2", "--output", str(tmp_path / "vqa.jsonl")])
    assert [Path(r["image"]).name for r in answers] == ["a.png", "b.jpg"]
    assert all(len(r["answers"]) == 2 for r in answers)
    assert len((tmp_path / "vqa.jsonl").read_text().splitlines()) == 2
    captions = predict.main(["--model", str(tmp_path / "captioning"), "--images", str(images), "--task",
                             "captioning", "--output", str(tmp_path / "captions.jsonl")])
    assert all(isinstance(r["caption"], str) for r in captions)
    (images / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.png"):
        predict.main(["--model", str(tmp_path / "vqa"), "--images", str(images), "--question", "what color?"])
    skipped = predict.main(["--model", str(tmp_path / "vqa"), "--images", str(images), "--question", "what color?",
                            "--skip_bad_images", "true", "--output", str(tmp_path / "skip.jsonl")])
    assert len(skipped) == 2


def test_prune_example_creates_prunes_and_saves_a_reloadable_student(tmp_path):
    import json

    from transformers import AutoModelForVisualQuestionAnswering

    finetune = _load_example("finetune")
    finetune.main(["--task", "vqa", "--output_dir", str(tmp_path / "teacher"),
                   *TINY])
    prune = _load_example("prune")
    result = prune.main([
        "--task", "vqa", "--dataset", "shapes", "--shapes_train_size", "16", "--shapes_eval_size", "6",
        "--shapes_image_size", "32", "--teacher_name_or_path", str(tmp_path / "teacher"),
        "--student_layers", "1,1,1", "--target_sparsity", "0.3", "--lagrangian_warmup_steps", "2",
        "--reg_learning_rate", "0.2", "--max_steps", "4", "--per_device_train_batch_size", "4",
        "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true", "--use_cpu", "true",
        "--output_dir", str(tmp_path / "pruned"), "--export_sparsities", "0.2,0.4",
    ])
    assert "vqa_accuracy" in result["metrics"]
    assert result["report"]["target_sparsity"] == 0.3
    assert abs(result["report"]["achieved_sparsity"] - 0.3) <= 0.01  # the asked size, after only 4 steps
    family = result["report"]["family"]
    assert [m["target_sparsity"] for m in family] == [0.2, 0.4]
    for member in family:
        assert abs(member["achieved_sparsity"]["overall"] - member["target_sparsity"]) <= 0.01
        assert "vqa_accuracy" in member["metrics"]
        assert AutoModelForVisualQuestionAnswering.from_pretrained(tmp_path / "pruned" / member["path"])
    assert family[0]["parameters"] > family[1]["parameters"]
    assert (tmp_path / "pruned" / "pruning_report_family.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="strictly increasing"):
        prune.main(["--task", "vqa", "--dataset", "shapes", "--teacher_name_or_path", str(tmp_path / "teacher"),
                    "--student_layers", "1,1,1", "--export_sparsities", "0.4,0.2", "--use_cpu", "true",
                    "--output_dir", str(tmp_path / "bad")])
    # a teacher checkpoint without the VQA head (random there) fails at load, before any data is made
    from efficientvlm.models.modeling_efficientvlm import EfficientVLMModel

    EfficientVLMModel.from_pretrained(tmp_path / "teacher").save_pretrained(tmp_path / "base")
    with pytest.raises(ValueError, match=r"random initialisation: classifier\.0\.bias"):
        prune.main(["--task", "vqa", "--dataset", "shapes", "--teacher_name_or_path", str(tmp_path / "base"),
                    "--student_layers", "1,1,1", "--use_cpu", "true", "--output_dir", str(tmp_path / "bad")])
    out = tmp_path / "pruned"
    assert (out / "pruning_report.json").exists() and (out / "pruning_report.png").exists()
    assert json.loads((out / "eval_results.json").read_text()) == result["metrics"]
    reloaded = AutoModelForVisualQuestionAnswering.from_pretrained(out)
    assert reloaded.config.pruning_info["target_sparsity"] == 0.3


def test_a_user_mistake_is_one_error_line_and_debug_shows_the_traceback(tmp_path):
    (tmp_path / "images").mkdir()
    Image = pytest.importorskip("PIL.Image")
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.png")
    command = [sys.executable, str(ROOT / "examples" / "predict.py"), "--model", "/nonexistent", "--images",
               str(tmp_path / "images"), "--question", "what color?"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "predict.py: error: --model /nonexistent: no such folder (resolved as '/nonexistent'), and not a Hub id. "
        "Pass a checkpoint folder written by save_pretrained() or a Hub id such as org/name. (--debug shows the "
        "traceback)"]
    result = subprocess.run([*command, "--debug"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" in result.stderr and "FileNotFoundError" in result.stderr


@pytest.mark.parametrize(
    ("script", "argv", "message"),
    [
        ("finetune", ["--model_name_or_path", "./runs/missing", "--output_dir", "out"],
         "--model_name_or_path ./runs/missing: no such folder"),
        ("finetune", ["--task", "vqa", "--dataset", "files", "--output_dir", "out"],
         "--dataset files needs --train_file and --image_root"),
        ("prune", ["--task", "vqa", "--teacher_name_or_path", "/no/teacher", "--output_dir", "out"],
         "--teacher_name_or_path /no/teacher: no such folder"),
        ("pretrain_distill", ["--teacher_name_or_path", "/no/teacher", "--train_file", "x.json", "--output_dir", "out"],
         "--teacher_name_or_path /no/teacher: no such folder"),
        ("predict", ["--model", "EXISTING", "--images", "/no/images", "--question", "q"],
         "--images /no/images is not a folder"),
    ],
)
def test_example_scripts_report_user_mistakes_in_one_line(script, argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "existing").mkdir()
    (tmp_path / "existing" / "config.json").write_text("{}")
    module = _load_example(script)
    argv = [str(tmp_path / "existing") if a == "EXISTING" else a for a in argv]
    assert module.run_script(module.main, argv, prog=f"{script}.py") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{script}.py: error: ") and message in lines[0], lines


def test_finetune_with_the_same_seed_gives_the_same_model(tmp_path):
    from safetensors.torch import load_file

    finetune = _load_example("finetune")
    for run in ("a", "b"):
        finetune.main(["--task", "vqa", "--output_dir", str(tmp_path / run), "--seed", "1", *TINY])
    first, second = (load_file(tmp_path / run / "model.safetensors") for run in ("a", "b"))
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
    finetune.main(["--task", "vqa", "--output_dir", str(tmp_path / "c"), "--seed", "2", *TINY])
    other = load_file(tmp_path / "c" / "model.safetensors")
    assert any(not torch.equal(first[name], other[name]) for name in first)


def test_finetune_with_lora_saves_the_merged_model_as_a_plain_checkpoint(tmp_path, caplog):
    import logging

    from safetensors.torch import load_file
    from transformers import AutoModelForVisualQuestionAnswering

    from efficientvlm import EfficientVLMForVisualQuestionAnswering

    finetune = _load_example("finetune")
    with caplog.at_level(logging.INFO, logger="finetune"):
        metrics = finetune.main(["--task", "vqa", "--output_dir", str(tmp_path / "text_fusion"), "--lora_r", "4",
                                 "--lora_encoders", "text", "fusion", "--seed", "1", *TINY])
    assert "vqa_accuracy" in metrics
    assert any(message.startswith("LoRA (r=4, text+fusion): ") for message in caplog.messages)
    files = {path.name for path in (tmp_path / "text_fusion").iterdir()}
    assert "model.safetensors" in files and not any(name.startswith("adapter_") for name in files)
    model = AutoModelForVisualQuestionAnswering.from_pretrained(tmp_path / "text_fusion")  # strict: plain weights
    assert type(model) is EfficientVLMForVisualQuestionAnswering
    assert not any("lora" in name for name, _ in model.named_parameters())

    # Same seed, same initial model (--seed is set before it is built): a run with adapters on the fusion encoder
    # only leaves the same weights as the first run wherever neither trained (vision, embeddings), and other text
    # layers (the first run merged its text adapters into them).
    finetune.main(["--task", "vqa", "--output_dir", str(tmp_path / "fusion"), "--lora_r", "4", "--lora_encoders",
                   "fusion", "--seed", "1", *TINY])
    first, second = (load_file(tmp_path / run / "model.safetensors") for run in ("text_fusion", "fusion"))
    assert first.keys() == second.keys()
    untouched = [name for name in first if ".vision_model." in name or ".embeddings." in name]
    assert untouched and all(torch.equal(first[name], second[name]) for name in untouched)
    merged_text = [name for name in first if ".text_model.encoder.layers." in name and name.endswith("proj.weight")]
    assert merged_text and all(not torch.equal(first[name], second[name]) for name in merged_text)

    with pytest.raises(ValueError, match=r"--lora_encoders: unknown \['audio'\]"):
        finetune.main(["--task", "vqa", "--output_dir", str(tmp_path / "bad"), "--lora_r", "4",
                       "--lora_encoders", "audio", *TINY])


@pytest.mark.parametrize("script", ["finetune", "prune", "pretrain_distill", "predict"])
def test_help_opens_with_the_scripts_description_and_lists_threads(script, capsys):
    from efficientvlm.scripts import description

    module = _load_example(script)
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    usage, _, rest = help_text.partition("\n\n")
    assert usage.startswith("usage: ") and usage.endswith(" [options]")  # one line, not pages of TrainingArguments
    paragraph = " ".join(rest.split("\n\n")[0].split())
    assert paragraph.startswith(description(module.__doc__))  # the docstring's first paragraph, first after usage
    assert len(description(module.__doc__)) > 200
    assert "--threads THREADS" in help_text
    trains = script != "predict"
    assert ("Training logs go to TensorBoard" in paragraph) is trains
    assert ("--report_to" in help_text) is trains


def test_training_scripts_log_to_tensorboard_by_default_and_set_threads(tmp_path):
    from transformers.integrations import is_tensorboard_available

    from efficientvlm.scripts import default_report_to

    finetune = _load_example("finetune")
    default_run = [a for a in TINY if a not in ("--report_to", "none")]
    assert len(default_run) == len(TINY) - 2
    with pytest.raises(ValueError, match=r"--threads must be >= 0 \(0 = torch's default\), got -1"):
        finetune.main(["--task", "vqa", "--output_dir", str(tmp_path / "bad"), "--threads", "-1", *default_run])
    if not is_tensorboard_available():
        assert default_report_to() == "none"
        pytest.skip("neither tensorboard nor tensorboardX is installed: the scripts default to --report_to none")
    assert default_report_to() == "tensorboard"
    threads = torch.get_num_threads()
    try:
        finetune.main(["--task", "vqa", "--output_dir", str(tmp_path / "run"), "--logging_steps", "1",
                       "--threads", "1", *default_run])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    events = list((tmp_path / "run" / "runs").glob("*/events.out.tfevents.*"))
    assert len(events) == 1
    assert b"train/loss" in events[0].read_bytes()  # the Trainer's logged scalars (logging_steps 1), by tag


def test_finetune_and_prune_the_generative_vqa_head(tmp_path, capsys):
    """--vqa_head generative: built from a classifier checkpoint's encoders (decoder = its fusion layers), kept by a
    later run without --vqa_head, loaded by the Auto class and the pipeline, and pruned under a generative teacher
    with the decoder as a fourth modality; impossible combinations are one-line errors."""
    from safetensors.torch import load_file
    from transformers import AutoModelForVisualQuestionAnswering, pipeline

    from efficientvlm import EfficientVLMForGenerativeVQA
    from efficientvlm.data import ShapesConfig, answer_vocabulary
    from efficientvlm.tasks import TaskHeadArguments

    finetune = _load_example("finetune")
    finetune.main(["--task", "vqa", "--output_dir", str(tmp_path / "classifier"), *TINY])
    # learning rate 0: the saved generative model is what the script built from the classifier checkpoint
    metrics = finetune.main(["--task", "vqa", "--vqa_head", "generative", "--model_name_or_path",
                             str(tmp_path / "classifier"), "--output_dir", str(tmp_path / "generative"),
                             "--learning_rate", "0", *TINY])
    assert "vqa_accuracy" in metrics  # ranked over the answer list
    classifier = load_file(tmp_path / "classifier" / "model.safetensors")
    generative = load_file(tmp_path / "generative" / "model.safetensors")
    encoders = [name for name in classifier if name.startswith("efficientvlm.")]
    assert encoders and all(torch.equal(classifier[name], generative[name]) for name in encoders)
    fusion = "efficientvlm.fusion_model.encoder.layers.0."
    copied = [name for name in classifier if name.startswith(fusion)]
    decoder = "answer_decoder.encoder.layers.0."
    assert copied and all(torch.equal(classifier[name], generative[name.replace(fusion, decoder)]) for name in copied)
    model = AutoModelForVisualQuestionAnswering.from_pretrained(tmp_path / "generative")
    assert type(model) is EfficientVLMForGenerativeVQA
    assert model.config.answer_list == answer_vocabulary(ShapesConfig(image_size=32))

    # without --vqa_head a generative checkpoint keeps its head (trained further, not replaced by a classifier)
    finetune.main(["--task", "vqa", "--model_name_or_path", str(tmp_path / "generative"), "--output_dir",
                   str(tmp_path / "again"), *TINY])
    again = load_file(tmp_path / "again" / "model.safetensors")
    assert again.keys() == generative.keys() and not any(name.startswith("classifier.") for name in again)
    answers = pipeline("visual-question-answering", model=str(tmp_path / "again"))(
        _red_image(), "what color is the circle?", top_k=2)
    assert len(answers) == 2 and {a["answer"] for a in answers} <= set(model.config.answer_list)

    bad = ["--task", "vqa", "--vqa_head", "classifier", "--model_name_or_path", str(tmp_path / "generative"),
           "--output_dir", str(tmp_path / "bad"), *TINY]
    capsys.readouterr()
    assert finetune.run_script(finetune.main, bad, prog="finetune.py") == 2
    line, = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("finetune.py: error: --vqa_head classifier: ")
    assert "EfficientVLMForGenerativeVQA" in line and "leave --vqa_head out" in line
    with pytest.raises(ValueError, match="the nlvr2 task has one head"):
        finetune.main(["--task", "nlvr2", "--vqa_head", "generative", "--output_dir", str(tmp_path / "bad"), *TINY])

    prune = _load_example("prune")
    common = ["--task", "vqa", "--dataset", "shapes", "--shapes_train_size", "16", "--shapes_eval_size", "6",
              "--shapes_image_size", "32", "--max_steps", "4", "--per_device_train_batch_size", "4",
              "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true", "--use_cpu", "true"]
    result = prune.main([*common, "--teacher_name_or_path", str(tmp_path / "again"), "--student_layers", "1,1,1,1",
                         "--target_sparsity", "0.3", "--lagrangian_warmup_steps", "2", "--reg_learning_rate", "0.2",
                         "--output_dir", str(tmp_path / "pruned")])
    assert "vqa_accuracy" in result["metrics"]
    assert set(result["report"]["modalities"]) == {"vision", "text", "fusion", "decoder"}
    assert abs(result["report"]["achieved_sparsity"] - 0.3) <= 0.01
    pruned = AutoModelForVisualQuestionAnswering.from_pretrained(tmp_path / "pruned")
    assert type(pruned) is EfficientVLMForGenerativeVQA and pruned.config.pruning_info["target_sparsity"] == 0.3

    # a student checkpoint without an answer decoder becomes a generative student (decoder from its fusion layers)
    teacher, student, _ = prune.load_models("vqa", TaskHeadArguments(), prune.ModelArguments(
        teacher_name_or_path=str(tmp_path / "again"), model_name_or_path=str(tmp_path / "classifier")))
    assert type(student) is EfficientVLMForGenerativeVQA and student.config.answer_list == teacher.config.answer_list
    with pytest.raises(ValueError, match=r"--vqa_head classifier: .* an EfficientVLMForGenerativeVQA \(generative\)"):
        prune.main([*common, "--vqa_head", "classifier", "--teacher_name_or_path", str(tmp_path / "again"),
                    "--student_layers", "1,1,1", "--output_dir", str(tmp_path / "bad")])
    with pytest.raises(ValueError, match=r"classifier\) checkpoint, not a trained EfficientVLMForGenerativeVQA"):
        prune.main([*common, "--vqa_head", "generative", "--teacher_name_or_path", str(tmp_path / "classifier"),
                    "--student_layers", "1,1,1", "--output_dir", str(tmp_path / "bad")])
    with pytest.raises(ValueError, match=r"three or four layer counts, vision,text,fusion\[,decoder\]"):
        prune.main([*common, "--teacher_name_or_path", str(tmp_path / "again"), "--student_layers", "1,1",
                    "--output_dir", str(tmp_path / "bad")])


def _red_image():
    from PIL import Image

    return Image.new("RGB", (32, 32), "red")
