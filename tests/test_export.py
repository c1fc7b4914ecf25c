"""efficientvlm.export and `efficientvlm export`: ONNX graphs equal to PyTorch in ONNX Runtime, int8 and bf16
round trips, the agreement check, the ONNX model in the VQA pipeline, and the CLI's errors.

Every model is tiny and heterogeneous (layers of different sizes, including removed sub-blocks), as pruned
checkpoints are."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline

from efficientvlm import (
    EfficientVLMForCaptioning,
    EfficientVLMForImageTextRetrieval,
    EfficientVLMForNLVR2,
    EfficientVLMForVisualQuestionAnswering,
    EfficientVLMImageProcessor,
    EfficientVLMProcessor,
)
from efficientvlm.cli import main
from efficientvlm.data.shapes import ShapesConfig, make_vqa_dataset
from efficientvlm.export import (
    EfficientVLMOnnxForVisualQuestionAnswering,
    ExportRefused,
    Int8DynamicLinear,
    TorchFlow,
    example_inputs,
    export,
    export_onnx,
    load_exported,
    quantize_int8,
    quantize_onnx,
    save_int8,
    verify_onnx,
)
from tests.tiny_models import tiny_config
from tests.utils import make_tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BATCH_SIZES, TEXT_LENGTHS = (1, 3), (5, 9)


def tiny_model(model_class, tokenizer=None, seed=0):
    text = {}
    if tokenizer is not None:
        text = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
                "bos_token_id": tokenizer.cls_token_id, "eos_token_id": tokenizer.sep_token_id,
                "mask_token_id": tokenizer.mask_token_id}
    config = tiny_config(heterogeneous=True, text_config=text)
    assert 0 in config.vision_config.num_attention_heads and 0 in config.fusion_config.num_cross_attention_heads
    torch.manual_seed(seed)
    return model_class(config).eval()


@pytest.fixture(scope="module")
def vqa_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("vqa")
    tokenizer = make_tiny_tokenizer(root / "tokenizer")
    model = tiny_model(EfficientVLMForVisualQuestionAnswering, tokenizer)
    processor = EfficientVLMProcessor(EfficientVLMImageProcessor(size={"height": 32, "width": 32}), tokenizer)
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    return root / "model", model, processor


@pytest.fixture(scope="module")
def vqa_onnx(vqa_checkpoint, tmp_path_factory):
    _, model, processor = vqa_checkpoint
    return export_onnx(model, tmp_path_factory.mktemp("vqa-onnx"), processor=processor, tolerance=1e-4)


@pytest.fixture(scope="module")
def eval_set(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "shapes-vqa"
    make_vqa_dataset(40, "test", ShapesConfig(image_size=32)).save_to_disk(str(path))
    return path


def _assert_close_everywhere(model, folder, atol=1e-4):
    result = verify_onnx(model, folder, batch_sizes=BATCH_SIZES, text_lengths=TEXT_LENGTHS)
    assert result["batch_sizes"] == list(BATCH_SIZES) and result["text_lengths"] == list(TEXT_LENGTHS)
    assert all(value < atol for value in result["max_abs_diff"].values()), result
    return result


# ---------------------------------------------------------------------------------------------------------------
# ONNX
# ---------------------------------------------------------------------------------------------------------------


def test_vqa_onnx_equals_pytorch_at_two_batch_sizes_and_text_lengths(vqa_checkpoint, vqa_onnx):
    _, model, _ = vqa_checkpoint
    result = _assert_close_everywhere(model, vqa_onnx)
    assert set(result["max_abs_diff"]) == {"logits"}
    manifest = json.loads((vqa_onnx / "onnx_export.json").read_text())
    assert manifest["exporter"] == "dynamo" and manifest["architecture"] == "EfficientVLMForVisualQuestionAnswering"
    assert manifest["verification"]["max_abs_diff"]["logits"] < 1e-4  # export_onnx checked it too
    assert manifest["graphs"][0]["dynamic_axes"]["input_ids"] == {"0": "batch", "1": "text_length"}

    import onnxruntime

    session = onnxruntime.InferenceSession(str(vqa_onnx / "model.onnx"), providers=["CPUExecutionProvider"])
    shapes = {i.name: i.shape for i in session.get_inputs()}
    assert set(shapes) == {"pixel_values", "input_ids", "attention_mask"}
    assert isinstance(shapes["input_ids"][0], str) and isinstance(shapes["input_ids"][1], str)  # dynamic
    assert shapes["pixel_values"][1:] == [3, 32, 32]


def test_legacy_exporter_gives_the_same_graph_outputs(vqa_checkpoint, tmp_path):
    _, model, _ = vqa_checkpoint
    folder = export_onnx(model, tmp_path, exporter="legacy", tolerance=1e-4)
    assert json.loads((folder / "onnx_export.json").read_text())["exporter"] == "legacy"
    _assert_close_everywhere(model, folder)


def test_retrieval_encoders_and_itm_equal_pytorch(tmp_path):
    model = tiny_model(EfficientVLMForImageTextRetrieval)
    folder = export_onnx(model, tmp_path, tolerance=1e-4)
    assert sorted(p.name for p in folder.glob("*.onnx")) == ["itm.onnx", "text.onnx", "vision.onnx"]
    result = _assert_close_everywhere(model, folder)
    assert set(result["max_abs_diff"]) == {"image_embeds", "image_features", "text_embeds", "text_features",
                                           "itm_logits"}

    # the graphs rank a gallery as the model does: ITC similarities of the exported features, then ITM
    onnx_model = load_exported(folder)
    inputs = example_inputs(model.config, "EfficientVLMForImageTextRetrieval", batch=3, text_length=6, seed=5)
    image = onnx_model.run_graph("vision", {"pixel_values": inputs["pixel_values"]})
    text = onnx_model.run_graph("text", inputs)
    with torch.no_grad():
        image_features = model.get_image_features(inputs["pixel_values"]).pooler_output  # CLIP-style: projected,
        text_features = model.get_text_features(inputs["input_ids"], inputs["attention_mask"]).pooler_output
        expected = (torch.nn.functional.normalize(image_features, dim=-1)  # not normalised
                    @ torch.nn.functional.normalize(text_features, dim=-1).t())
    torch.testing.assert_close(image["image_features"] @ text["text_features"].t(), expected, atol=1e-5, rtol=0)


def test_captioning_uncached_decoder_step_decodes_like_generate(tmp_path):
    model = tiny_model(EfficientVLMForCaptioning)
    folder = export_onnx(model, tmp_path, exporter="legacy", tolerance=1e-4)
    manifest = json.loads((folder / "onnx_export.json").read_text())
    assert [g["name"] for g in manifest["graphs"]] == ["vision", "decoder"]
    assert any("uncached" in note for note in manifest["notes"])
    _assert_close_everywhere(model, folder)

    onnx_model = load_exported(folder)
    pixel_values = example_inputs(model.config, "EfficientVLMForCaptioning", batch=2, seed=3)["pixel_values"]
    with torch.no_grad():
        expected = model.generate(pixel_values=pixel_values, num_beams=1, do_sample=False, max_length=6,
                                  min_length=0, eos_token_id=None)
    image_embeds = onnx_model.run_graph("vision", {"pixel_values": pixel_values})["image_embeds"]
    ids = torch.full((2, 1), model.config.text_config.bos_token_id, dtype=torch.long)
    while ids.shape[1] < 6:  # greedy decoding, one uncached decoder call per token
        logits = onnx_model.run_graph("decoder", {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                                                  "image_embeds": image_embeds})["logits"]
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(ids, expected)


def test_nlvr2_image_pairs_export(tmp_path):
    model = tiny_model(EfficientVLMForNLVR2)
    folder = export_onnx(model, tmp_path, exporter="legacy", tolerance=1e-4)
    _assert_close_everywhere(model, folder)
    assert load_exported(folder).sessions["model"].get_inputs()[0].shape[1:] == [2, 3, 32, 32]


def test_onnx_runtime_int8_graphs_stay_close(vqa_checkpoint, vqa_onnx, tmp_path):
    _, model, _ = vqa_checkpoint
    folder = quantize_onnx(vqa_onnx, tmp_path / "int8")
    manifest = json.loads((folder / "onnx_export.json").read_text())
    assert manifest["quantization"]["method"] == "onnxruntime.quantization.quantize_dynamic"
    assert (folder / "processor_config.json").is_file()

    import onnx

    operators = {node.op_type for node in onnx.load(str(folder / "model.onnx")).graph.node}
    assert "DynamicQuantizeLinear" in operators or "MatMulInteger" in operators
    inputs = example_inputs(model.config, "EfficientVLMForVisualQuestionAnswering", batch=3, text_length=9)
    with torch.no_grad():
        expected = model(**inputs).logits
    logits = load_exported(folder)(**inputs).logits
    assert (logits - expected).abs().max() < 0.05
    with pytest.raises(ValueError, match="already quantised"):
        quantize_onnx(folder, tmp_path / "again")


def test_vqa_pipeline_runs_the_onnx_model(vqa_checkpoint, vqa_onnx):
    path, _, _ = vqa_checkpoint
    onnx_model = load_exported(vqa_onnx)
    assert isinstance(onnx_model, EfficientVLMOnnxForVisualQuestionAnswering)
    vqa_onnx_pipe = pipeline("visual-question-answering", model=onnx_model, tokenizer=str(vqa_onnx),
                             image_processor=str(vqa_onnx))
    vqa = pipeline("visual-question-answering", model=str(path))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8))
    for question in ("what color is the circle?", "how many squares are there?"):
        got, expected = vqa_onnx_pipe(image, question, top_k=3), vqa(image, question, top_k=3)
        assert [a["answer"] for a in got] == [a["answer"] for a in expected]
        assert all(abs(a["score"] - b["score"]) < 1e-5 for a, b in zip(got, expected))
    batched = vqa_onnx_pipe([image, image], ["what color is the circle?", "is there a square?"], top_k=1,
                            batch_size=2)  # padded to the longer question
    assert len(batched) == 4 and all(len(answers) == 1 for answers in batched)


# ---------------------------------------------------------------------------------------------------------------
# int8 and bf16
# ---------------------------------------------------------------------------------------------------------------


def test_int8_reloads_and_agrees_with_float32(vqa_checkpoint, eval_set, tmp_path):
    _, model, processor = vqa_checkpoint
    quantized = quantize_int8(model)
    linears = [m for m in quantized.modules() if isinstance(m, Int8DynamicLinear)]
    assert linears and not any(isinstance(m, torch.nn.Linear) for m in quantized.modules())
    save_int8(quantized, tmp_path)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as weights:
        assert weights.get_tensor("classifier.0.weight").dtype == torch.int8
    reloaded = load_exported(tmp_path)
    inputs = example_inputs(model.config, "EfficientVLMForVisualQuestionAnswering", batch=3, text_length=9)
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, quantized(**inputs).logits)  # the saved model is the model
        assert (reloaded(**inputs).logits - model(**inputs).logits).abs().max() < 0.05

    import datasets

    from efficientvlm.evaluation import predict_vqa

    questions = datasets.load_from_disk(str(eval_set))
    float_answers = predict_vqa(model, processor, questions)
    int8_answers = predict_vqa(reloaded, processor, questions)
    agreement = np.mean([a == b for a, b in zip(float_answers, int8_answers)])
    assert agreement >= 0.95


def test_int8_kernels_agree_and_from_pretrained_names_the_loader(vqa_checkpoint, tmp_path):
    _, model, _ = vqa_checkpoint
    linear = torch.nn.Linear(24, 40)
    quantized = Int8DynamicLinear.from_linear(linear)
    x = torch.randn(2, 5, 24)
    dequantized = torch.nn.functional.linear(x, quantized.dequantized_weight(), linear.bias)
    outputs = {}
    for kernel in ("fbgemm", "int_mm"):
        quantized.kernel = kernel
        outputs[kernel] = quantized(x)
        assert (outputs[kernel] - dequantized).abs().max() < 0.05
        assert (outputs[kernel] - linear(x)).abs().max() < 0.1
    save_int8(quantize_int8(model), tmp_path)
    with pytest.raises(ValueError, match="int8 export.*load_exported"):
        EfficientVLMForVisualQuestionAnswering.from_pretrained(tmp_path)


def test_bf16_saves_with_its_dtype_and_reloads(vqa_checkpoint, tmp_path):
    from efficientvlm.export import save_bf16

    _, model, processor = vqa_checkpoint
    save_bf16(model, tmp_path, processor)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    assert next(model.parameters()).dtype == torch.float32  # the input model is left alone
    reloaded = load_exported(tmp_path)
    assert {p.dtype for p in reloaded.parameters()} == {torch.bfloat16}
    inputs = example_inputs(model.config, "EfficientVLMForVisualQuestionAnswering", batch=2)
    with torch.no_grad():
        assert (reloaded(**inputs).logits.float() - model(**inputs).logits).abs().max() < 0.05


# ---------------------------------------------------------------------------------------------------------------
# export(): report and agreement check
# ---------------------------------------------------------------------------------------------------------------


def test_export_writes_every_format_and_the_report(vqa_checkpoint, eval_set, tmp_path, capsys):
    path, model, _ = vqa_checkpoint
    returned = export(path, tmp_path, "int8,bf16,onnx-int8", exporter="legacy", eval_dataset=eval_set,
                      batch_sizes=(1, 2), text_length=6, repeats=1, warmup=0)
    report = json.loads((tmp_path / "export_report.json").read_text())
    assert report == json.loads(json.dumps(returned))
    assert report["formats"] == ["onnx-int8", "int8", "bf16"]
    entries = {entry["format"]: entry for entry in report["entries"]}
    assert list(entries) == ["float32", "onnx-int8", "int8", "bf16"]
    assert not (tmp_path / "onnx").exists()  # the float graphs of onnx-int8 were only an intermediate step
    for name, entry in entries.items():
        assert set(entry["latency_s"]) == {"1", "2"} and all(t > 0 for t in entry["latency_s"].values())
        assert entry["speedup"]["1"] == pytest.approx(entries["float32"]["latency_s"]["1"] / entry["latency_s"]["1"])
        assert entry["size_bytes"] > 0 and set(entry["max_abs_diff"]) == {"logits"}
        assert entry["eval"]["examples"] == 40 and 0 <= entry["eval"]["vqa_accuracy"] <= 1
        if name != "float32":
            assert 0 < entry["max_abs_diff"]["logits"] < 0.05
            assert entry["eval"]["top1_agreement"] >= 0.95 and entry["eval"]["accepted"]
            assert (tmp_path / name).is_dir()
    assert entries["int8"]["size_bytes"] < entries["float32"]["size_bytes"]  # tiny: embeddings stay float32
    assert entries["bf16"]["size_bytes"] < 0.6 * entries["float32"]["size_bytes"]
    # the float32 entry is the checkpoint itself
    assert entries["float32"]["max_abs_diff"]["logits"] == 0 and entries["float32"]["eval"]["top1_agreement"] == 1

    from efficientvlm.export import format_report

    table = format_report(report)
    assert table.count("\n| ") == 5 and "| int8 |" in table and "eval agreement" in table


def _broken_int8(model):
    """A quantisation that broke the answer head: the last classifier layer is zeroed (every answer ties)."""
    quantized = quantize_int8(model)
    quantized.classifier[3].weight.zero_()
    return quantized


def test_export_refuses_a_format_whose_answers_drift(vqa_checkpoint, eval_set, tmp_path, monkeypatch):
    import efficientvlm.export.api as api

    path, _, _ = vqa_checkpoint
    monkeypatch.setattr(api, "quantize_int8", _broken_int8)
    with pytest.raises(ExportRefused, match=r"40 evaluation questions: int8 agrees with float32 on .*allow-disagreement"):
        export(path, tmp_path / "refused", ["int8", "bf16"], eval_dataset=eval_set, batch_sizes=(1,), repeats=1)
    assert not (tmp_path / "refused" / "int8").exists() and (tmp_path / "refused" / "bf16").is_dir()
    report = json.loads((tmp_path / "refused" / "export_report.json").read_text())
    int8 = next(entry for entry in report["entries"] if entry["format"] == "int8")
    assert not int8["eval"]["accepted"] and int8["eval"]["top1_agreement"] < 0.95 and int8["path"] is None

    with pytest.warns(UserWarning, match="Kept although"):
        export(path, tmp_path / "kept", ["int8"], eval_dataset=eval_set, batch_sizes=(1,), repeats=1,
               allow_disagreement=True)
    assert (tmp_path / "kept" / "int8" / "model.safetensors").is_file()


def test_eval_dataset_is_for_vqa_heads(tmp_path):
    model = tiny_model(EfficientVLMForImageTextRetrieval)
    with pytest.raises(ValueError, match="not a VQA head"):
        export(model, tmp_path, ["bf16"], eval_dataset=tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("efficientvlm export: error: ")
    return err


def test_cli_refuses_an_unknown_format(vqa_checkpoint, tmp_path, capsys):
    path, _, _ = vqa_checkpoint
    assert main(["export", str(path), str(tmp_path / "out"), "--format", "onnx", "tflite"]) == 2
    assert "unknown format 'tflite'; choose from onnx, onnx-int8, int8, bf16" in _one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_cli_refuses_a_folder_that_is_not_an_efficientvlm_checkpoint(tmp_path, capsys):
    from transformers import BertConfig

    BertConfig(num_hidden_layers=1, hidden_size=8, num_attention_heads=2, intermediate_size=8).save_pretrained(
        tmp_path / "bert")
    assert main(["export", str(tmp_path / "bert"), str(tmp_path / "out")]) == 2
    assert "is not an EfficientVLM checkpoint: config.json has model_type 'bert'" in _one_line_error(capsys)
    assert main(["export", str(tmp_path / "missing"), str(tmp_path / "out"), "--format", "int8"]) == 2
    assert "has no config.json" in _one_line_error(capsys)


def test_cli_exports_and_prints_the_table(vqa_checkpoint, tmp_path, capsys):
    path, _, _ = vqa_checkpoint
    status = main(["export", str(path), str(tmp_path), "--format", "int8", "bf16", "--batch-sizes", "1",
                   "--repeats", "1", "--threads", "1"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "| float32 |" in printed and "| int8 |" in printed and "| bf16 |" in printed
    assert json.loads((tmp_path / "export_report.json").read_text())["threads"] == 1
    assert isinstance(TorchFlow(load_exported(tmp_path / "int8")).model, EfficientVLMForVisualQuestionAnswering)
