"""ONNX export of EfficientVLM heads, ONNX Runtime's dynamic int8 quantisation, and ONNX Runtime models.

Needs the ``export`` extra (``pip install "efficientvlm[export]"``: onnx, onnxruntime, onnxscript).

    folder = export_onnx(model, "vqa-onnx", processor=processor)     # graphs + manifest + config + processor
    quantize_onnx("vqa-onnx", "vqa-onnx-int8")                      # MatMul weights in int8 (ONNX Runtime)
    onnx_model = EfficientVLMOnnxForVisualQuestionAnswering.from_pretrained("vqa-onnx")
    vqa = pipeline("visual-question-answering", model=onnx_model)   # tokenizer / image processor from the folder

The graphs and their inputs are described in ``efficientvlm.export.graphs``. ``export_onnx`` exports them with
``torch.onnx.export`` - by default the ``torch.export``-based exporter (``exporter="dynamo"``, which needs
onnxscript), or the deprecated TorchScript one (``exporter="legacy"``, several times faster to export) - then
runs every graph in ONNX Runtime against the PyTorch model at two batch sizes and two text lengths, and refuses
(``ValueError``) an export whose outputs differ by more than ``tolerance``. The folder holds ``<graph>.onnx`` files,
``onnx_export.json`` (the manifest: architecture, graphs, inputs, outputs, dynamic axes, exporter, the verification),
``config.json`` and, when given, the processor files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import warnings
from pathlib import Path

import torch
from torch import nn

from .graphs import (
    GraphSpec,
    TorchFlow,
    architecture_of,
    example_inputs,
    graph_inputs,
    graphs_for,
    output_axes,
    run_flow,
)

MANIFEST_NAME = "onnx_export.json"
EXPORTERS = ("dynamo", "legacy")
LEGACY_OPSET = 17
DECODER_NOTE = ("The captioning decoder graph is uncached: it takes the whole prefix (input_ids, attention_mask) "
                "and the image tokens and returns the logits of every position; decode by calling it once per "
                "token and reading the last position. (The PyTorch model's generate() uses a key/value cache, "
                "transformers' EncoderDecoderCache; the graph is exported from a forward call without one, and has "
                "no past or present key/value inputs or outputs, so every step recomputes the prefix and the "
                "image tokens' cross-attention keys and values.)")
_ONNX_HELP = 'ONNX export needs the export extra: pip install "efficientvlm[export]" (onnx, onnxruntime, onnxscript).'


def _require(*modules: str) -> None:
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"{', '.join(missing)} not installed. {_ONNX_HELP}")


# ---------------------------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------------------------


def _export_graph(spec: GraphSpec, module: nn.Module, inputs: dict, path: Path, architecture: str, config,
                  exporter: str, opset: int | None) -> None:
    args = graph_inputs(spec, inputs)
    axes = {name: output_axes(architecture, name) for name in (*spec.inputs, *spec.outputs)}
    if exporter == "dynamo":
        dims = {}
        max_text = config.text_config.max_position_embeddings
        for name in set(axis for spec_axes in axes.values() for axis in spec_axes.values()):
            dims[name] = torch.export.Dim(name, min=1, max=max_text if name == "text_length" else 2**20)
        dynamic_shapes = {name: {axis: dims[axis_name] for axis, axis_name in axes[name].items()}
                          for name in spec.inputs}
        weights = sum(p.numel() * p.element_size() for p in module.parameters())
        registration = logging.getLogger("torch.onnx._internal.exporter._registration")
        level = registration.level
        registration.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping torchvision::nms", ...
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(module, args, str(path), input_names=list(spec.inputs),
                                  output_names=list(spec.outputs), dynamic_shapes=dynamic_shapes, dynamo=True,
                                  optimize=True, verbose=False, opset_version=opset,
                                  external_data=weights > 1.5 * 2**30)
        finally:
            registration.setLevel(level)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer and deprecation warnings: the graph is verified below
            torch.onnx.export(module, args, str(path), input_names=list(spec.inputs),
                              output_names=list(spec.outputs), dynamic_axes=axes, dynamo=False,
                              opset_version=opset or LEGACY_OPSET, do_constant_folding=True)


def export_onnx(model: nn.Module, output_dir: str | os.PathLike, *, processor=None, exporter: str = "dynamo",
                opset: int | None = None, verify: bool = True, tolerance: float = 1e-3,
                verify_batch_sizes: tuple[int, int] = (1, 3), verify_text_lengths: tuple[int, int] = (5, 9)) -> Path:
    """Export ``model``'s graphs (``efficientvlm.export.graphs``) to ONNX files in ``output_dir``.

    Args:
        model: an EfficientVLM task head in float32 (a pruned, heterogeneous one exports like any other).
        output_dir: created if missing; existing graph files are overwritten.
        processor: saved beside the graphs (the ONNX Runtime model's pipeline loads it from there).
        exporter: ``"dynamo"`` (``torch.export``-based, the default) or ``"legacy"`` (TorchScript-based, deprecated
            by PyTorch; faster to export).
        opset: ONNX opset (default: the exporter's).
        verify: run the graphs in ONNX Runtime at ``verify_batch_sizes`` x ``verify_text_lengths`` and compare
            every output with the PyTorch model; the maximum absolute differences go into the manifest.
        tolerance: largest accepted absolute difference; beyond it the export raises ``ValueError``.

    Returns:
        ``output_dir``.
    """
    _require("onnx", "onnxruntime", *(["onnxscript"] if exporter == "dynamo" else []))
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter={exporter!r}: choose one of {EXPORTERS}.")
    architecture = architecture_of(model)
    specs = graphs_for(architecture)
    parameter = next(model.parameters())
    if parameter.dtype != torch.float32 or parameter.device.type != "cpu":
        raise ValueError(f"export_onnx takes a float32 model on the CPU, got {parameter.dtype} on "
                         f"{parameter.device}: use model.float().cpu().")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    flow = TorchFlow(model)
    example = example_inputs(model.config, architecture, batch=2, text_length=7)
    with torch.no_grad():
        tensors = {**example, **flow(**example)}
        for spec in specs:
            _export_graph(spec, flow.graphs[spec.name], tensors, output_dir / f"{spec.name}.onnx", architecture,
                          model.config, exporter, opset)
    manifest = {
        "format": "onnx",
        "architecture": architecture,
        "exporter": exporter,
        "opset": opset,
        "torch_version": torch.__version__,
        "image_size": model.config.vision_config.image_size,
        "max_text_length": model.config.text_config.max_position_embeddings,
        "graphs": [{"name": spec.name, "file": f"{spec.name}.onnx", "inputs": list(spec.inputs),
                    "outputs": list(spec.outputs),
                    "dynamic_axes": {name: output_axes(architecture, name) for name in (*spec.inputs, *spec.outputs)}}
                   for spec in specs],
        "notes": [DECODER_NOTE] if architecture == "EfficientVLMForCaptioning" else [],
        "quantization": None,
    }
    model.config.save_pretrained(output_dir)
    if processor is not None:
        processor.save_pretrained(output_dir)
    _write_manifest(output_dir, manifest)
    if verify:
        differences = verify_onnx(model, output_dir, batch_sizes=verify_batch_sizes, text_lengths=verify_text_lengths)
        manifest["verification"] = differences
        _write_manifest(output_dir, manifest)
        worst = max(differences["max_abs_diff"].values())
        if worst > tolerance:
            raise ValueError(f"The ONNX graphs in {output_dir} differ from the PyTorch model by up to {worst:.3g} "
                             f"(tolerance {tolerance:g}): {differences['max_abs_diff']}.")
    return output_dir


def _write_manifest(folder: Path, manifest: dict) -> None:
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def read_manifest(folder: str | os.PathLike) -> dict:
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise ValueError(f"{folder} is not an ONNX export of efficientvlm (no {MANIFEST_NAME}).")
    return json.loads(path.read_text(encoding="utf-8"))


def is_onnx_folder(folder: str | os.PathLike) -> bool:
    return (Path(folder) / MANIFEST_NAME).is_file()


@torch.no_grad()
def verify_onnx(model: nn.Module, folder: str | os.PathLike, batch_sizes=(1, 3), text_lengths=(5, 9),
                seed: int = 0) -> dict:
    """Largest absolute difference of every output between ONNX Runtime (``folder``) and ``model``, over the
    combinations of ``batch_sizes`` and ``text_lengths``."""
    flow = TorchFlow(model)
    onnx_model = EfficientVLMOnnxModel.from_pretrained(folder)
    worst: dict[str, float] = {}
    for batch in batch_sizes:
        for length in text_lengths:
            inputs = example_inputs(model.config, architecture_of(model), batch, length, seed=seed + batch + length)
            expected, actual = flow(**inputs), onnx_model(**inputs)
            for name, value in expected.items():
                difference = float((actual[name].float() - value.float()).abs().max())
                worst[name] = max(worst.get(name, 0.0), difference)
    return {"batch_sizes": list(batch_sizes), "text_lengths": list(text_lengths), "max_abs_diff": worst}


# ---------------------------------------------------------------------------------------------------------------
# ONNX Runtime quantisation
# ---------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _without_root_log(text: str):
    """Drop root-logger records containing ``text`` for the duration."""
    class _Drop(logging.Filter):
        def filter(self, record):
            return text not in record.getMessage()

    drop, root = _Drop(), logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)



def quantize_onnx(onnx_dir: str | os.PathLike, output_dir: str | os.PathLike, *, per_channel: bool = True) -> Path:
    """ONNX Runtime's dynamic quantisation of every graph in an ``export_onnx`` folder: the weights of MatMul /
    Gemm nodes become int8, activations are quantised at run time (``onnxruntime.quantization.quantize_dynamic``,
    ``QInt8`` weights, per output channel by default). The other files are copied; the manifest records it."""
    _require("onnx", "onnxruntime")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    onnx_dir, output_dir = Path(onnx_dir), Path(output_dir)
    manifest = read_manifest(onnx_dir)
    if manifest.get("quantization"):
        raise ValueError(f"{onnx_dir} is already quantised ({manifest['quantization']['method']}).")
    output_dir.mkdir(parents=True, exist_ok=True)
    graph_files = {graph["file"] for graph in manifest["graphs"]}
    for path in onnx_dir.iterdir():
        if path.is_file() and path.name not in graph_files and not path.name.endswith(".onnx.data"):
            shutil.copy2(path, output_dir / path.name)
    for graph in manifest["graphs"]:
        # ONNX Runtime logs a root-logger advice to run its pre-processing first (shape inference and graph
        # optimisation for static quantisation); dynamic quantisation of these graphs does not need it
        with warnings.catch_warnings(), _without_root_log("pre-processing before quantization"):
            warnings.simplefilter("ignore")
            quantize_dynamic(str(onnx_dir / graph["file"]), str(output_dir / graph["file"]),
                             weight_type=QuantType.QInt8, per_channel=per_channel,
                             extra_options={"MatMulConstBOnly": True}, use_external_data_format=False)
    manifest["quantization"] = {"method": "onnxruntime.quantization.quantize_dynamic",
                                "weights": "int8" + (", per output channel" if per_channel else ", per tensor"),
                                "activations": "uint8, quantised at run time"}
    manifest.pop("verification", None)
    _write_manifest(output_dir, manifest)
    return output_dir


# ---------------------------------------------------------------------------------------------------------------
# ONNX Runtime models
# ---------------------------------------------------------------------------------------------------------------


class EfficientVLMOnnxModel(nn.Module):
    """An exported EfficientVLM head run by ONNX Runtime (CPU).

    ``forward(**inputs)`` runs the head's graphs in flow order (``efficientvlm.export.graphs``) on the named
    inputs and returns ``{output name: torch tensor}``; ``run_graph(name, **inputs)`` runs one graph. The module has
    no parameters; ``config`` is the exported model's config.
    """

    def __init__(self, folder: str | os.PathLike, manifest: dict, config, sessions: dict):
        super().__init__()
        self.folder, self.manifest, self.config, self.sessions = Path(folder), manifest, config, sessions
        self.specs = tuple(GraphSpec(g["name"], None, tuple(g["inputs"]), tuple(g["outputs"]))
                           for g in manifest["graphs"])
        self.name_or_path = str(folder)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, *, num_threads: int | None = None, providers=None,
                        session_options=None):
        """Load an ``export_onnx`` / ``quantize_onnx`` folder.

        Args:
            num_threads: ONNX Runtime intra-op threads (default: ONNX Runtime's, all cores); 1 also makes the
                inter-op pool single-threaded.
            providers: ONNX Runtime execution providers (default ``["CPUExecutionProvider"]``).
            session_options: an ``onnxruntime.SessionOptions`` (overrides ``num_threads``).
        """
        _require("onnxruntime")
        import onnxruntime

        import efficientvlm

        folder = Path(folder)
        manifest = read_manifest(folder)
        if session_options is None:
            session_options = onnxruntime.SessionOptions()
            if num_threads:
                session_options.intra_op_num_threads = num_threads
                session_options.inter_op_num_threads = 1
        sessions = {graph["name"]: onnxruntime.InferenceSession(str(folder / graph["file"]), session_options,
                                                                  providers=providers or ["CPUExecutionProvider"])
                    for graph in manifest["graphs"]}
        config = efficientvlm.EfficientVLMConfig.from_pretrained(folder)
        config._name_or_path = str(folder)  # pipeline() loads the tokenizer and image processor from here
        return cls(folder, manifest, config, sessions)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    input_modalities = ["image", "text"]

    def can_generate(self) -> bool:
        return False

    def run_graph(self, spec: GraphSpec | str, inputs: dict) -> dict[str, torch.Tensor]:
        spec = spec if isinstance(spec, GraphSpec) else next(s for s in self.specs if s.name == spec)
        feed = {}
        for name in spec.inputs:
            value = inputs[name]
            if isinstance(value, torch.Tensor):
                value = value.detach().cpu()
                value = value.float() if value.is_floating_point() else value.long()
                value = value.numpy()
            feed[name] = value
        outputs = self.sessions[spec.name].run(list(spec.outputs), feed)
        return {name: torch.from_numpy(value) for name, value in zip(spec.outputs, outputs)}

    def forward(self, **inputs) -> dict[str, torch.Tensor]:
        names = {name for spec in self.specs for name in spec.inputs}
        if "attention_mask" in names and inputs.get("attention_mask") is None and "input_ids" in inputs:
            inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        return run_flow(self.specs, self.run_graph, inputs)


class EfficientVLMOnnxForVisualQuestionAnswering(EfficientVLMOnnxModel):
    """An exported VQA head in ONNX Runtime, with the PyTorch head's call: ``model(pixel_values=, input_ids=,
    attention_mask=).logits``. ``EfficientVLMVQAPipeline`` (``pipeline("visual-question-answering", model=...)``)
    accepts it and applies the same pre- and post-processing as for the PyTorch model."""

    def forward(self, pixel_values=None, input_ids=None, attention_mask=None, token_type_ids=None, **kwargs):
        from ..models.modeling_efficientvlm import EfficientVLMHeadOutput

        if token_type_ids is not None and bool((token_type_ids != 0).any()):
            raise ValueError("The exported VQA graph takes one text segment: token_type_ids must be all 0 (the "
                             "processor does not return them).")
        if pixel_values is None or input_ids is None:
            raise ValueError("Pass pixel_values and input_ids (from EfficientVLMProcessor).")
        outputs = super().forward(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
        return EfficientVLMHeadOutput(logits=outputs["logits"])


ONNX_MODEL_CLASSES = {"EfficientVLMForVisualQuestionAnswering": EfficientVLMOnnxForVisualQuestionAnswering}


def load_onnx(folder: str | os.PathLike, **kwargs) -> EfficientVLMOnnxModel:
    """The ONNX Runtime model class matching the exported architecture (VQA: the pipeline-ready one)."""
    architecture = read_manifest(folder)["architecture"]
    return ONNX_MODEL_CLASSES.get(architecture, EfficientVLMOnnxModel).from_pretrained(folder, **kwargs)


__all__ = [
    "EXPORTERS",
    "EfficientVLMOnnxForVisualQuestionAnswering",
    "EfficientVLMOnnxModel",
    "export_onnx",
    "is_onnx_folder",
    "load_onnx",
    "quantize_onnx",
    "read_manifest",
    "verify_onnx",
]
