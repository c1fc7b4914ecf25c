"""int8 dynamic quantisation of the Linear layers, saved as safetensors and reloaded without re-quantising.

``quantize_int8(model)`` replaces every ``nn.Linear`` of an EfficientVLM model (attention projections, FFNs, ITC
projections, task heads, the LM head) by an ``Int8DynamicLinear``: the weight is stored in int8 with one symmetric
scale per output channel (``scale = max |w_row| / 127``, zero point 0); the activations are quantised on the fly at
every call (dynamic quantisation), so no calibration data is needed. Embeddings, the patch-embedding convolution,
LayerNorms and attention products stay in float32.

Kernels. On the CPU the layer runs torch's fbgemm/x86 dynamic-quantised linear kernel
(``torch.ops.quantized.linear_dynamic``, what ``torch.ao.quantization.quantize_dynamic`` uses; activations quantised
per tensor to 7-bit unsigned integers, ``reduce_range=True`` as there), with the weight packed once at the first
call. When that kernel is not available it falls back to ``torch._int_mm`` (activations quantised per token,
symmetric), and on other devices to a float matmul with the dequantised weight (the same numbers, no speed-up).

Why not torchao: torchao 0.18 installs with torch 2.13 and ``Int8DynamicActivationInt8WeightConfig`` quantises
correctly, but on the CPU in eager mode it was 1.41x (batch 1) / 1.96x (batch 8) faster than float32 on the pruned
93M student at 384 px, against 2.48x / 2.54x for these fbgemm kernels (one thread, one process, round-robin); its
speed needs ``torch.compile``. Installed, it also adds about 3 s to every ``import transformers`` model load
(transformers imports it eagerly). Why not ``quantize_dynamic`` itself: its modules keep the weight in packed
parameters that safetensors cannot store, and ``torch.ao.quantization`` is deprecated for removal.

The saved folder (``save_int8``): ``config.json`` with an ``int8_quantization`` record (scheme and the quantised
module names), ``model.safetensors`` holding plain tensors (``<module>.weight`` int8, ``<module>.weight_scale``
float32, ``<module>.bias``) and everything else in float32. ``load_int8(folder)`` rebuilds the model class from the
config, swaps in ``Int8DynamicLinear`` for the recorded modules and loads the tensors strictly.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

INT8_CONFIG_KEY = "int8_quantization"
INT8_SCHEME = {
    "method": "dynamic int8 (efficientvlm.export.int8)",
    "weights": "int8, symmetric, one scale per output channel",
    "activations": "quantised at every call (CPU: fbgemm per-tensor uint8, reduce_range)",
    "layers": "every torch.nn.Linear",
}
WEIGHTS_NAME = "model.safetensors"


def _fbgemm_available() -> bool:
    engines = getattr(torch.backends, "quantized", None)
    return (engines is not None and hasattr(torch.ops.quantized, "linear_dynamic")
            and any(e in engines.supported_engines for e in ("x86", "fbgemm")))


class Int8DynamicLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` stored in int8 (per-output-channel scales) and ``x`` quantised at every call.

    Buffers (all in the ``state_dict``): ``weight`` int8 ``(out, in)``, ``weight_scale`` float32 ``(out,)``,
    ``bias`` float32 ``(out,)`` or ``None``. The dequantised weight is ``weight * weight_scale[:, None]``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self._packed = None  # fbgemm packed weight, built at the first CPU call
        self.kernel = "fbgemm" if _fbgemm_available() else "int_mm"

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear) -> Int8DynamicLinear:
        """Quantise a float ``nn.Linear`` (symmetric, per output channel)."""
        weight = linear.weight.detach().float()
        module = cls(linear.in_features, linear.out_features, linear.bias is not None).to(weight.device)
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127
        module.weight.copy_(torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8))
        module.weight_scale.copy_(scale)
        if linear.bias is not None:
            module.bias.copy_(linear.bias.detach().float())
        return module

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight.float() * self.weight_scale[:, None]

    def _load_from_state_dict(self, *args, **kwargs):
        self._packed = None  # new weights: pack again
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, recurse=True):
        self._packed = None  # moved or cast: pack again
        return super()._apply(fn, recurse)

    def _pack(self):
        with warnings.catch_warnings():  # torch marks quantized tensor creation as deprecated; the kernels remain
            warnings.simplefilter("ignore")
            qweight = torch._make_per_channel_quantized_tensor(
                self.weight, self.weight_scale.double(), torch.zeros(self.out_features, dtype=torch.long), 0)
            self._packed = torch.ops.quantized.linear_prepack(qweight, self.bias)
        return self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if x.device.type != "cpu":
            bias = None if self.bias is None else self.bias.to(dtype)
            return F.linear(x, self.dequantized_weight().to(dtype), bias)
        x = x.float()
        if self.kernel == "fbgemm":
            packed = self._packed if self._packed is not None else self._pack()
            y = torch.ops.quantized.linear_dynamic(x, packed, reduce_range=True)
        else:  # per-token symmetric int8 activations, int32 accumulation
            rows = x.reshape(-1, self.in_features)
            x_scale = rows.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127
            quantized = torch.round(rows / x_scale).clamp(-127, 127).to(torch.int8)
            y = torch._int_mm(quantized, self.weight.t()).float() * (x_scale * self.weight_scale)
            if self.bias is not None:
                y = y + self.bias
            y = y.reshape(*x.shape[:-1], self.out_features)
        return y.to(dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, kernel={self.kernel}")


def linear_module_names(model: nn.Module) -> list[str]:
    """Names of every ``nn.Linear`` (the layers ``quantize_int8`` replaces)."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]


def _replace(model: nn.Module, names: list[str], make) -> None:
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, make(getattr(parent, child)))


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (float32, eval mode) whose ``nn.Linear`` layers are ``Int8DynamicLinear``.

    Tied output embeddings (the MLM / captioning decoder) are quantised as a separate int8 matrix; the word
    embeddings stay in float32. ``model.config`` of the copy records the scheme under ``int8_quantization``.
    """
    import copy

    quantized = copy.deepcopy(model).float().eval()
    names = linear_module_names(quantized)
    if not names:
        raise ValueError(f"{type(model).__name__} has no torch.nn.Linear layer to quantise.")
    _replace(quantized, names, Int8DynamicLinear.from_linear)
    setattr(quantized.config, INT8_CONFIG_KEY, {**INT8_SCHEME, "modules": names})
    return quantized


def save_int8(model: nn.Module, output_dir: str | Path) -> Path:
    """Write a model from ``quantize_int8`` as ``config.json`` + ``model.safetensors`` (plain int8 / float tensors)."""
    from safetensors.torch import save_file

    record = getattr(model.config, INT8_CONFIG_KEY, None)
    if not record:
        raise ValueError("save_int8 needs a model from quantize_int8 (config.int8_quantization is missing).")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(output_dir)
    state = {}
    seen: dict[int, str] = {}
    for key, tensor in model.state_dict().items():
        pointer = tensor.data_ptr()
        # safetensors refuses tensors that share memory (tied weights): store a copy
        state[key] = tensor.detach().clone().contiguous() if pointer in seen else tensor.detach().contiguous()
        seen.setdefault(pointer, key)
    save_file(state, str(output_dir / WEIGHTS_NAME), metadata={"format": "pt", INT8_CONFIG_KEY: json.dumps(record)})
    return output_dir


def is_int8_folder(folder: str | Path) -> bool:
    config = Path(folder) / "config.json"
    return config.is_file() and INT8_CONFIG_KEY in json.loads(config.read_text(encoding="utf-8"))


def load_int8(folder: str | Path) -> nn.Module:
    """Reload a folder written by ``save_int8``: the architecture in ``config.json``, int8 layers, strict loading."""
    import efficientvlm
    from safetensors.torch import load_file

    folder = Path(folder)
    config = efficientvlm.EfficientVLMConfig.from_pretrained(folder)
    record = getattr(config, INT8_CONFIG_KEY, None)
    if not record:
        raise ValueError(f"{folder} is not an int8 export (config.json has no {INT8_CONFIG_KEY!r} record).")
    architecture = (config.architectures or ["EfficientVLMModel"])[0]
    model_class = getattr(efficientvlm, architecture, None)
    if model_class is None:
        raise ValueError(f"{folder}: unknown EfficientVLM architecture {architecture!r} in config.json.")
    model = model_class(config).eval()
    _replace(model, list(record["modules"]),
             lambda linear: Int8DynamicLinear(linear.in_features, linear.out_features, linear.bias is not None))
    model.load_state_dict(load_file(str(folder / WEIGHTS_NAME)), strict=True)
    model.name_or_path = str(folder)
    return model


__all__ = ["Int8DynamicLinear", "is_int8_folder", "linear_module_names", "load_int8", "quantize_int8", "save_int8"]
