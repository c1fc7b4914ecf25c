"""The benchmark scripts run end to end (tiny models; no timing is asserted - speed belongs in benchmarks/)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_pruning_speed_smoke(tmp_path, capsys):
    bench = _load_benchmark("pruning_speed")
    threads = torch.get_num_threads()
    out = tmp_path / "pruning_speed.json"
    returned = bench.main(["--smoke", "--json", str(out)])
    assert torch.get_num_threads() == threads  # the smoke run's single thread is not left behind
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["settings"]["batch_sizes"] == [1, 2]
    assert len(result["rows"]) == len(returned["rows"]) == 9

    rows = {(row["pattern"], row["target"]): row for row in result["rows"]}
    assert set(rows) == {(p, s) for p in bench.PATTERNS for s in (0.25, 0.5, 0.75)}
    for (pattern, target), row in rows.items():
        # every row of both Markdown tables is printed
        assert sum(line.startswith(f"| {pattern} | {round(100 * target)}% |") for line in printed.splitlines()) == 2
        for batch in ("1", "2"):
            timing = row["latency"][batch]
            assert timing["masked"] > 0 and timing["materialised"] > 0
            assert timing["speedup"] == timing["masked"] / timing["materialised"]
            assert set(row["peak_memory"][batch]) == {"masked", "materialised"}
        assert row["max_abs_diff"] < 1e-4  # the materialised model is the masked model
        assert row["parameters"] < result["dense"]["parameters"]
        assert row["flops_ratio"] > 1 and row["flops"] * row["flops_ratio"] == pytest.approx(result["dense"]["flops"])
        if pattern == "random":
            assert abs(row["params_sparsity"]["overall"] - target) < 0.05
    for target in (0.25, 0.5, 0.75):  # a FLOPs-budget pattern buys more FLOPs per pruned parameter
        flops_budget, uniform = rows[("flops-budget", target)], rows[("random", target)]
        assert flops_budget["flops_sparsity"]["vision"] > uniform["flops_sparsity"]["vision"]
        assert (flops_budget["flops_sparsity"]["overall"] - flops_budget["params_sparsity"]["overall"]
                > uniform["flops_sparsity"]["overall"] - uniform["params_sparsity"]["overall"])
    assert "| dense (no gates) | 0% |" in printed


def test_gpu_check_runs_its_bf16_check_on_the_cpu_and_skips_the_rest_without_cuda(tmp_path, capsys):
    check = _load_benchmark("gpu_check")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = check.main(["--cpu", "--steps", "4", "--json", str(tmp_path / "gpu_check.json")])
    finally:
        torch.set_num_threads(threads)
    assert results["bf16_pruning"]["status"] == "passed", results["bf16_pruning"]["details"]
    assert {name: r["status"] for name, r in results.items() if name != "bf16_pruning"} == \
        {name: "skipped" for name in check.CHECKS if name != "bf16_pruning"}
    assert json.loads((tmp_path / "gpu_check.json").read_text())["results"]["bf16_pruning"]["status"] == "passed"
    assert "| bf16_pruning | passed |" in capsys.readouterr().out
    if not torch.cuda.is_available():
        assert {r["status"] for r in check.main(["--only", "fp16_overflow"]).values()} == {"skipped"}


def test_deploy_smoke(tmp_path, capsys):
    bench = _load_benchmark("deploy")
    threads = torch.get_num_threads()
    out = tmp_path / "deploy.json"
    returned = bench.main(["--smoke", "--json", str(out)])
    assert torch.get_num_threads() == threads  # the run's single thread is not left behind
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result == json.loads(json.dumps(returned))
    assert result["settings"]["threads"] == 1 and result["settings"]["batch_sizes"] == [1, 2]
    rows = result["models"]
    assert list(rows) == ["ViLT-B/32", "teacher", "student", "pruned, uniform", "pruned, FLOPs budget",
                          "pruned + int8", "pruned + bf16", "pruned, ONNX Runtime", "pruned, ONNX Runtime int8"]
    for name, row in rows.items():
        assert sum(line.startswith(f"| {name} |") for line in printed.splitlines()) == 1
        for batch in ("1", "2"):
            assert row["latency_s"][batch] > 0
            assert row["ratio_to_reference"][batch] == pytest.approx(
                row["latency_s"][batch] / rows["ViLT-B/32"]["latency_s"][batch])
    # both pruned students have the asked size; the FLOPs-budget split takes more of the vision tower
    uniform, flops = rows["pruned, uniform"], rows["pruned, FLOPs budget"]
    assert abs(uniform["parameters"] - flops["parameters"]) < 0.02 * uniform["parameters"]
    assert uniform["parameters"] < rows["student"]["parameters"] < rows["teacher"]["parameters"]

    def vision_units(row):
        return sum(map(sum, row["layer_sizes"]["vision"].values()))

    assert vision_units(flops) < vision_units(uniform)
    assert flops["params_sparsity"] == pytest.approx(uniform["params_sparsity"])
    # the deployed forms compute the FLOPs-budget model's logits
    assert rows["pruned, ONNX Runtime"]["max_abs_diff"] < 1e-4
    for name in ("pruned + int8", "pruned + bf16", "pruned, ONNX Runtime int8"):
        assert 0 < rows[name]["max_abs_diff"] < 0.05
    assert len(result["goals"]) == 2 and all(isinstance(met, bool) for met in result["goals"].values())
    assert sum(line.startswith("goal ") for line in printed.splitlines()) == 2

def test_captioning_cache_smoke(tmp_path, capsys):
    bench = _load_benchmark("captioning_cache")
    threads = torch.get_num_threads()
    result = bench.main(["--smoke", "--batch-sizes", "1", "2", "--json", str(tmp_path / "captioning.json")])
    assert torch.get_num_threads() == threads
    assert json.loads((tmp_path / "captioning.json").read_text()) == json.loads(json.dumps(result))
    assert result["settings"]["batch_sizes"] == [1, 2] and result["settings"]["threads"] == 1
    assert set(result["parameters"]) == {"efficientvlm", "blip"}
    printed = capsys.readouterr().out
    for row in result["rows"]:
        seconds = row["seconds"]
        assert set(seconds) == set(bench.MODELS) and min(seconds.values()) > 0
        assert row["uncached_over_cached"] == seconds["uncached"] / seconds["cached"]
        assert row["cached_over_blip"] == seconds["cached"] / seconds["blip"]
        assert row["same_sequences"]  # the cache does not change what is generated
        assert row["generated_length"] == 1 + 4  # the start token and exactly --new-tokens tokens
        assert f"| {row['batch_size']} | " in printed


def test_generative_vqa_cache_smoke(tmp_path, capsys):
    bench = _load_benchmark("generative_vqa_cache")
    threads = torch.get_num_threads()
    result = bench.main(["--smoke", "--json", str(tmp_path / "generative.json")])
    assert torch.get_num_threads() == threads
    assert json.loads((tmp_path / "generative.json").read_text()) == json.loads(json.dumps(result))
    assert result["settings"]["threads"] == 1 and result["settings"]["k"] == 12
    printed = capsys.readouterr().out
    assert [row["variant"] for row in result["rows"]] == ["rank", "rank (decoder only)", "generate (greedy)",
                                                          "generate (beam 3)"]
    for row in result["rows"]:
        seconds = row["seconds"]
        assert set(seconds) == {"cached", "uncached"} and min(seconds.values()) > 0
        assert row["uncached_over_cached"] == seconds["uncached"] / seconds["cached"]
        assert row["same"]  # the cache changes neither the ranking nor what is generated
        assert f"| 2 | {row['variant']} | " in printed


def test_vqa_heads_smoke(tmp_path, capsys):
    bench = _load_benchmark("vqa_heads")
    threads = torch.get_num_threads()
    result = bench.main(["--smoke", "--output-dir", str(tmp_path), "--pretrain-steps", "2"])
    assert torch.get_num_threads() == threads
    rows = {row["model"]: row for row in result["rows"]}
    assert set(rows) == {"image-blind baseline", *(f"{head} {model}" for head in ("classifier", "generative")
                                                   for model in ("teacher", "student with KD", "pruned student"))}
    assert rows["generative teacher"]["layers"] == "2/2/2/2" and rows["classifier teacher"]["layers"] == "2/2/2"
    assert "decoder" in rows["generative pruned student"]["achieved_sparsity"]
    assert all(0 <= row["vqa_accuracy"] <= 1 for row in rows.values())
    assert all(row["latency_ms_batch1"] > 0 for name, row in rows.items() if name != "image-blind baseline")
    assert json.loads((tmp_path / "vqa_heads.json").read_text())["rows"] == json.loads(json.dumps(result["rows"]))
    assert "| generative pruned student |" in capsys.readouterr().out
