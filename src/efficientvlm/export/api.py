"""``export()``: a checkpoint to deployment formats, each checked against the float32 model, with a report.

    from efficientvlm.export import export
    report = export("pruned-vqa", "deploy", formats=["onnx", "onnx-int8", "int8", "bf16"],
                    eval_dataset="shapes-vqa-test")      # refuses a format whose answers drift (see below)

Formats (one sub-folder of the output folder each):

* ``onnx``: the head's graphs in ONNX (``efficientvlm.export.onnx.export_onnx``), verified in ONNX Runtime;
* ``onnx-int8``: the same graphs after ONNX Runtime's dynamic quantisation (``quantize_onnx``);
* ``int8``: the PyTorch model with int8 Linear layers (``efficientvlm.export.int8``), reloadable with
  ``load_exported`` / ``load_int8``;
* ``bf16``: the PyTorch model cast to bfloat16 and saved with ``save_pretrained`` (``config.dtype`` records it, so
  ``from_pretrained`` reloads it in bfloat16).

Every format is reloaded from disk and compared with the float32 model on the same seeded inputs (the head's
graphs, ``efficientvlm.export.graphs``): largest absolute difference of every output, top-1 agreement of the
head's last output (answers, ITM decisions, next tokens), size of its weight files, and latency at each batch size,
all models timed round-robin in one process (``efficientvlm.evaluation.measure_latency``). With
``eval_dataset`` (a ``datasets`` folder or dataset of VQA rows ``image``, ``question`` and optionally ``answers``,
such as ``efficientvlm.data.make_vqa_dataset``), each format's answers are also compared with the float32
model's on the whole set: a format whose top-1 agreement is below ``min_agreement`` is refused - its folder is
removed and ``ExportRefused`` is raised after the report is written - unless ``allow_disagreement=True``, which
keeps it with a warning. The report is written to ``<output_dir>/export_report.json``; ``format_report`` prints it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from .graphs import HEAD_GRAPHS, TorchFlow, architecture_of, example_inputs
from .int8 import is_int8_folder, load_int8, quantize_int8, save_int8

FORMATS = ("onnx", "onnx-int8", "int8", "bf16")
REPORT_NAME = "export_report.json"
_WEIGHT_SUFFIXES = (".safetensors", ".onnx", ".onnx.data")


class ExportRefused(ValueError):
    """A quantised format's answers agree with the float32 model's less often than asked."""


# ---------------------------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------------------------


def check_checkpoint(checkpoint: str | os.PathLike) -> str:
    """The architecture of an exportable EfficientVLM checkpoint folder, read from its ``config.json``.

    Raises:
        ValueError: the folder has no ``config.json``, is not an EfficientVLM checkpoint, is already an export, or
            holds a model class that does not export.
    """
    folder = Path(checkpoint)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{folder} is not an EfficientVLM checkpoint: it has no config.json (pass a folder written "
                         "by model.save_pretrained()).")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{folder} is not an EfficientVLM checkpoint: its config.json is not JSON "
                         f"({error}).") from None
    if config.get("model_type") != "efficientvlm":
        raise ValueError(f"{folder} is not an EfficientVLM checkpoint: config.json has model_type "
                         f"{config.get('model_type')!r}.")
    if is_int8_folder(folder) or (folder / "onnx_export.json").is_file():
        raise ValueError(f"{folder} is already an export; export from the float32 checkpoint.")
    architecture = (config.get("architectures") or ["EfficientVLMModel"])[0]
    if architecture not in HEAD_GRAPHS:
        raise ValueError(f"{folder} holds a {architecture}; export one of the task heads ({', '.join(HEAD_GRAPHS)}).")
    return architecture


def load_checkpoint(checkpoint: str | os.PathLike):
    """The float32 model (of the head class in ``config.architectures``) and, if saved there, the processor.

    Raises:
        ValueError: see ``check_checkpoint``.
    """
    import efficientvlm
    from transformers import AutoProcessor

    folder = Path(checkpoint)
    architecture = check_checkpoint(folder)
    model = getattr(efficientvlm, architecture).from_pretrained(folder, dtype=torch.float32).eval()
    processor = None
    if any((folder / name).is_file() for name in ("processor_config.json", "preprocessor_config.json")):
        processor = AutoProcessor.from_pretrained(folder)
    return model, processor


def save_bf16(model: nn.Module, output_dir: str | os.PathLike, processor=None) -> Path:
    """``model`` cast to bfloat16 and saved with ``save_pretrained`` (``config.dtype = bfloat16``); the input model
    is left unchanged."""
    import copy

    output_dir = Path(output_dir)
    copy.deepcopy(model).to(torch.bfloat16).save_pretrained(output_dir)
    if processor is not None:
        processor.save_pretrained(output_dir)
    return output_dir


def load_exported(folder: str | os.PathLike, **onnx_kwargs):
    """Load any export folder: ONNX (an ``EfficientVLMOnnxModel``; VQA: ``EfficientVLMOnnxForVisualQuestionAnswering``,
    ``onnx_kwargs`` go to its ``from_pretrained``), int8 (``load_int8``) or a ``save_pretrained`` folder (bf16 or
    float32, in its saved dtype)."""
    import efficientvlm

    from .onnx import is_onnx_folder, load_onnx

    folder = Path(folder)
    if is_onnx_folder(folder):
        return load_onnx(folder, **onnx_kwargs)
    if is_int8_folder(folder):
        return load_int8(folder)
    config = efficientvlm.EfficientVLMConfig.from_pretrained(folder)
    architecture = (config.architectures or ["EfficientVLMModel"])[0]
    return getattr(efficientvlm, architecture).from_pretrained(folder, dtype="auto").eval()


# ---------------------------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------------------------


def _write_format(fmt: str, model, processor, folder: Path, scratch: Path, onnx_options: dict) -> Path:
    from .onnx import export_onnx, quantize_onnx

    if fmt == "onnx":
        return export_onnx(model, folder, processor=processor, **onnx_options)
    if fmt == "onnx-int8":
        source = folder.parent / "onnx"
        if not (source / "onnx_export.json").is_file():
            source = export_onnx(model, scratch / "onnx", processor=processor, **onnx_options)
        return quantize_onnx(source, folder)
    if fmt == "int8":
        save_int8(quantize_int8(model), folder)
        if processor is not None:
            processor.save_pretrained(folder)
        return folder
    if fmt == "bf16":
        return save_bf16(model, folder, processor)
    raise ValueError(f"Unknown format {fmt!r}; choose from {', '.join(FORMATS)}.")


def _runner(fmt: str, folder: Path, num_threads: int | None) -> nn.Module:
    """The format reloaded from disk, run as the head's graphs (``forward(**inputs) -> {output: tensor}``)."""
    if fmt.startswith("onnx"):
        from .onnx import EfficientVLMOnnxModel

        return EfficientVLMOnnxModel.from_pretrained(folder, num_threads=num_threads)
    return TorchFlow(load_exported(folder))


def folder_size(folder: str | os.PathLike) -> int:
    """Bytes of the weight files (safetensors, ONNX graphs and their external data) in ``folder``."""
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES))


def check_formats(formats) -> list[str]:
    """The requested formats in a canonical order; ``ValueError`` naming an unknown one."""
    names = [f.strip() for value in ([formats] if isinstance(formats, str) else formats) for f in value.split(",")]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise ValueError(f"unknown format {unknown[0] if unknown else ''!r}; choose from {', '.join(FORMATS)}.")
    return [f for f in FORMATS if f in names]


def export(source, output_dir: str | os.PathLike, formats=("onnx",), *, processor=None, eval_dataset=None,
           min_agreement: float = 0.95, allow_disagreement: bool = False, exporter: str = "dynamo",
           opset: int | None = None, tolerance: float = 1e-3, batch_sizes=(1, 8), text_length: int = 20,
           repeats: int = 5, warmup: int = 1, num_threads: int | None = None, eval_batch_size: int = 32,
           seed: int = 0) -> dict:
    """Export ``source`` (a checkpoint folder, or a float32 model with ``processor``) to ``formats`` under
    ``output_dir`` and report on each (see the module docstring).

    Args:
        formats: any of ``onnx``, ``onnx-int8``, ``int8``, ``bf16`` (a list, or one comma-separated string).
        eval_dataset: VQA rows to compare answers on (a ``datasets`` folder or ``Dataset``); needs a VQA head and a
            processor.
        min_agreement: smallest accepted fraction of ``eval_dataset`` questions where a format's top-1 answer equals
            the float32 model's.
        allow_disagreement: keep a format below ``min_agreement`` (with a warning) instead of refusing it.
        exporter, opset, tolerance: for the ONNX formats (``export_onnx``).
        batch_sizes, text_length, repeats, warmup: latency measurement (median of ``repeats`` round-robin rounds).
        num_threads: torch and ONNX Runtime threads while timing (default: torch's current setting).

    Returns:
        The report (also written to ``output_dir/export_report.json``).

    Raises:
        ValueError: not an exportable checkpoint, an unknown format, ``eval_dataset`` for a non-VQA head.
        ExportRefused: a format below ``min_agreement`` (its folder is removed; the report is written first).
    """
    from ..evaluation import measure_latency

    formats = check_formats(formats)
    if isinstance(source, nn.Module):
        if next(source.parameters()).dtype != torch.float32:
            raise ValueError("export() compares every format with the float32 model: pass it in float32.")
        model = source.eval()
    else:
        model, loaded_processor = load_checkpoint(source)
        processor = processor or loaded_processor
    architecture = architecture_of(model)
    dataset = _eval_dataset(eval_dataset, architecture, processor)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    threads = num_threads or torch.get_num_threads()
    onnx_options = {"exporter": exporter, "opset": opset, "tolerance": tolerance}

    folders = {}
    with tempfile.TemporaryDirectory() as scratch:
        for fmt in formats:
            folders[fmt] = _write_format(fmt, model, processor, output_dir / fmt, Path(scratch), onnx_options)
    runners = {"float32": TorchFlow(model), **{fmt: _runner(fmt, folders[fmt], threads) for fmt in formats}}

    from_folder = not isinstance(source, nn.Module)
    folders_of = {"float32": Path(source) if from_folder else None, **folders}
    entries = {name: {"format": name, "path": None if folders_of[name] is None else str(folders_of[name]),
                      "size_bytes": _model_bytes(model) if folders_of[name] is None else folder_size(folders_of[name])}
               for name in runners}
    # outputs on seeded probe inputs, compared with float32
    for batch in batch_sizes:
        probe = example_inputs(model.config, architecture, batch, text_length, seed=seed)
        with torch.no_grad():
            outputs = {name: runner(**probe) for name, runner in runners.items()}
        reference = outputs["float32"]
        primary = list(reference)[-1]
        for name, output in outputs.items():
            entry = entries[name]
            diffs = entry.setdefault("max_abs_diff", {})
            for key, value in reference.items():
                diffs[key] = max(diffs.get(key, 0.0), float((output[key].float() - value.float()).abs().max()))
            same = (output[primary].float().argmax(-1) == reference[primary].float().argmax(-1)).float()
            entry.setdefault("_agree", []).append(same.flatten())
    for entry in entries.values():
        entry["top1_agreement_probe"] = float(torch.cat(entry.pop("_agree")).mean())

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for batch in batch_sizes:
            latency = measure_latency(runners, lambda: example_inputs(model.config, architecture, batch, text_length,
                                                                      seed=seed), repeats=repeats, warmup=warmup)
            for name, seconds in latency.items():
                entries[name].setdefault("latency_s", {})[str(batch)] = seconds
                entries[name].setdefault("speedup", {})[str(batch)] = latency["float32"] / seconds
    finally:
        torch.set_num_threads(previous_threads)

    refused = []
    if dataset is not None:
        predictions = {name: _predict(runner, processor, dataset, model.config.id2label, eval_batch_size)
                       for name, runner in runners.items()}
        references = _references(dataset)
        for name, answers in predictions.items():
            agreement = sum(a == b for a, b in zip(answers, predictions["float32"])) / len(answers)
            evaluation = {"examples": len(answers), "top1_agreement": agreement}
            if references is not None:
                from ..metrics import vqa_accuracy

                evaluation["vqa_accuracy"] = vqa_accuracy(answers, references)
            if name != "float32":
                evaluation["accepted"] = agreement >= min_agreement
                if not evaluation["accepted"]:
                    refused.append((name, agreement))
            entries[name]["eval"] = evaluation

    report = {
        "architecture": architecture, "source": str(source) if not isinstance(source, nn.Module) else None,
        "formats": formats, "threads": threads, "batch_sizes": list(batch_sizes), "text_length": text_length,
        "repeats": repeats, "image_size": model.config.vision_config.image_size, "torch": torch.__version__,
        "min_agreement": min_agreement if dataset is not None else None, "entries": list(entries.values()),
    }
    if refused and not allow_disagreement:
        for name, _ in refused:
            shutil.rmtree(folders[name], ignore_errors=True)
            entries[name]["path"] = None
    (output_dir / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if refused:
        detail = "; ".join(f"{name} agrees with float32 on {agreement:.1%}" for name, agreement in refused)
        message = (f"top-1 answers to the {len(dataset)} evaluation questions: {detail}, below "
                   f"min_agreement={min_agreement:.1%}")
        if not allow_disagreement:
            raise ExportRefused(f"Refused: {message}; the refused folders were removed (keep them with "
                                "--allow-disagreement / allow_disagreement=True).")
        warnings.warn(f"Kept although {message}.", stacklevel=2)
    return report


def _model_bytes(model: nn.Module) -> int:
    """Bytes of the model's tensors, tied ones counted once."""
    tensors = {t.data_ptr(): t for t in model.state_dict().values()}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _eval_dataset(eval_dataset, architecture: str, processor):
    if eval_dataset is None:
        return None
    if architecture != "EfficientVLMForVisualQuestionAnswering":
        raise ValueError(f"eval_dataset compares VQA answers; {architecture} is not a VQA head.")
    if processor is None:
        raise ValueError("eval_dataset needs the processor: save it in the checkpoint folder "
                         "(processor.save_pretrained) or pass processor=.")
    if isinstance(eval_dataset, (str, os.PathLike)):
        import datasets

        path = Path(eval_dataset)
        if not path.exists():
            raise ValueError(f"eval_dataset {path} does not exist (a folder written by Dataset.save_to_disk).")
        eval_dataset = datasets.load_from_disk(str(path))
    missing = {"image", "question"} - set(eval_dataset.column_names)
    if missing or len(eval_dataset) == 0:
        raise ValueError(f"eval_dataset needs VQA rows with 'image' and 'question' columns; it has "
                         f"{eval_dataset.column_names} and {len(eval_dataset)} rows.")
    return eval_dataset


def _references(dataset):
    if "answers" not in dataset.column_names:
        return None
    return [list(answers) for answers in dataset.with_format(None)["answers"]]


@torch.no_grad()
def _predict(runner: nn.Module, processor, dataset, id2label, batch_size: int) -> list[str]:
    from ..data.collators import VQACollator

    collator = VQACollator(processor, label2id={})
    answers = []
    for start in range(0, len(dataset), batch_size):
        rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        batch = collator([{"image": row["image"], "question": row["question"]} for row in rows])
        logits = runner(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"],
                        attention_mask=batch["attention_mask"])["logits"]
        answers += [id2label[int(i)] for i in logits.float().argmax(-1)]
    return answers


# ---------------------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------------------


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def format_report(report: dict) -> str:
    """The report as a Markdown table (one row per format, float32 first)."""
    batches = [str(b) for b in report["batch_sizes"]]
    has_eval = any("eval" in entry for entry in report["entries"])
    header = ["format", "size"] + [f"latency b{b}" for b in batches] + [f"speed-up b{b}" for b in batches]
    header += ["max abs diff", "top-1 agreement (probe)"]
    if has_eval:
        header += ["eval agreement", "eval VQA accuracy", "accepted"]
    lines = [f"{report['architecture']}, {report['image_size']} px, text {report['text_length']} tokens, "
             f"{report['threads']} thread(s), median of {report['repeats']} round-robin runs", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for entry in report["entries"]:
        cells = [entry["format"], _mib(entry["size_bytes"])]
        cells += [f"{1000 * entry['latency_s'][b]:.1f} ms" for b in batches]
        cells += [f"{entry['speedup'][b]:.2f}x" for b in batches]
        cells += [f"{max(entry['max_abs_diff'].values()):.2g}", f"{entry['top1_agreement_probe']:.1%}"]
        if has_eval:
            evaluation = entry.get("eval", {})
            accuracy = evaluation.get("vqa_accuracy")
            cells += [f"{evaluation['top1_agreement']:.1%}" if evaluation else "-",
                      "-" if accuracy is None else f"{100 * accuracy:.1f}",
                      {True: "yes", False: "no"}.get(evaluation.get("accepted"), "-")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


__all__ = [
    "FORMATS",
    "ExportRefused",
    "check_checkpoint",
    "check_formats",
    "export",
    "folder_size",
    "format_report",
    "load_checkpoint",
    "load_exported",
    "save_bf16",
]
