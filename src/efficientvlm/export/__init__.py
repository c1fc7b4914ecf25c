"""Deployment: export EfficientVLM checkpoints to ONNX, int8 and bfloat16, checked against the float32 model.

    efficientvlm export CHECKPOINT OUTPUT_DIR --format onnx onnx-int8 int8 bf16 [--eval-dataset DIR]

or, in Python::

    from efficientvlm.export import export, load_exported
    report = export("pruned-vqa", "deploy", formats=["onnx", "int8"])
    model = load_exported("deploy/int8")                 # or deploy/onnx: an ONNX Runtime model

Modules: ``graphs`` (what each head is exported as), ``onnx`` (ONNX export, ONNX Runtime quantisation and
models; needs the ``export`` extra), ``int8`` (int8 Linear layers in PyTorch, safetensors), ``api`` (``export``,
the report, ``load_exported``), ``commands`` (the CLI). ONNX names are imported lazily, so that ``import
efficientvlm.export`` works without onnx installed.
"""

from .api import (
    FORMATS,
    ExportRefused,
    check_formats,
    export,
    folder_size,
    format_report,
    load_checkpoint,
    load_exported,
    save_bf16,
)
from .graphs import HEAD_GRAPHS, TorchFlow, example_inputs
from .int8 import Int8DynamicLinear, is_int8_folder, load_int8, quantize_int8, save_int8

_ONNX_NAMES = ("EfficientVLMOnnxForVisualQuestionAnswering", "EfficientVLMOnnxModel", "export_onnx", "is_onnx_folder",
               "load_onnx", "quantize_onnx", "verify_onnx")


def __getattr__(name):
    if name in _ONNX_NAMES:
        from . import onnx

        return getattr(onnx, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FORMATS",
    "HEAD_GRAPHS",
    "ExportRefused",
    "Int8DynamicLinear",
    "TorchFlow",
    "check_formats",
    "example_inputs",
    "export",
    "folder_size",
    "format_report",
    "is_int8_folder",
    "load_checkpoint",
    "load_exported",
    "load_int8",
    "quantize_int8",
    "save_bf16",
    "save_int8",
    *_ONNX_NAMES,
]
