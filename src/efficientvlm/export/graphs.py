"""The graphs an EfficientVLM head is exported as, and how they chain.

Each head is exported as one or more *graphs*: small ``nn.Module`` wrappers with tensor-only inputs and outputs
(what ``torch.onnx.export`` needs), named in ``HEAD_GRAPHS``:

* ``EfficientVLMForVisualQuestionAnswering``: ``model`` (pixel_values, input_ids, attention_mask -> logits);
* ``EfficientVLMForNLVR2``: ``model`` (pixel_values ``(batch, 2, 3, H, W)``, input_ids, attention_mask -> logits);
* ``EfficientVLMForImageTextRetrieval`` and ``EfficientVLMForPreTraining`` (ITC and ITM; the MLM head is not
  exported): ``vision`` (pixel_values -> image_embeds, image_features), ``text`` (input_ids, attention_mask ->
  text_embeds, text_features) and ``itm`` (image_embeds, text_embeds, attention_mask -> itm_logits): encode a
  gallery once, rank by ``image_features @ text_features.T``, re-score the top candidates with ``itm``;
* ``EfficientVLMForCaptioning``: ``vision`` (pixel_values -> image_embeds) and ``decoder`` (input_ids,
  attention_mask, image_embeds -> logits ``(batch, text_length, vocab)``). The decoder step is *uncached*: it
  recomputes the whole prefix (and the image tokens' cross-attention keys and values) at every step, as PyTorch's
  ``generate(use_cache=False)`` does; greedy decoding calls it once per token with the prefix so far and takes the
  last position's logits. The PyTorch model's cache (``EncoderDecoderCache``, what ``generate()`` uses by default)
  is a Python object, not tensors: ``CaptionDecoderGraph`` calls ``forward`` without one, so the graph has no past or
  present key/value inputs and outputs. A cached graph would take and return those per-layer tensors.

Every input has a dynamic batch axis and every text input a dynamic length axis (up to
``text_config.max_position_embeddings``); the image size is fixed at the config's ``vision_config.image_size``.
``token_type_ids`` are not inputs: the processor never returns them (one text segment, all zeros).

A head's graphs form a *flow*: running them in order, each graph reading its inputs from the caller's tensors and
the earlier graphs' outputs (``run_flow``), gives every output of the head; export, verification, the export
report and the ONNX Runtime wrapper all use it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn


class VQAGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values, input_ids, attention_mask):
        return self.model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask).logits


class ImageEncoderGraph(nn.Module):
    def __init__(self, model, features: bool):
        super().__init__()
        self.model, self.features = model, features

    def forward(self, pixel_values):
        image_embeds = self.model.efficientvlm.encode_image(pixel_values).last_hidden_state
        if not self.features:
            return image_embeds
        return image_embeds, self.model.image_features(image_embeds)


class TextEncoderGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        text_embeds = self.model.efficientvlm.encode_text(input_ids, attention_mask).last_hidden_state
        return text_embeds, self.model.text_features(text_embeds)


class ITMGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image_embeds, text_embeds, attention_mask):
        return self.model.itm_logits(image_embeds, text_embeds, attention_mask)[0]


class CaptionDecoderGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, image_embeds):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, image_embeds=image_embeds).logits


@dataclass(frozen=True)
class GraphSpec:
    """One exported graph: its name (file ``<name>.onnx``), wrapper, input and output names."""

    name: str
    build: Callable[[nn.Module], nn.Module]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


_VQA = (GraphSpec("model", VQAGraph, ("pixel_values", "input_ids", "attention_mask"), ("logits",)),)
_CONTRASTIVE = (
    GraphSpec("vision", lambda m: ImageEncoderGraph(m, features=True), ("pixel_values",),
              ("image_embeds", "image_features")),
    GraphSpec("text", TextEncoderGraph, ("input_ids", "attention_mask"), ("text_embeds", "text_features")),
    GraphSpec("itm", ITMGraph, ("image_embeds", "text_embeds", "attention_mask"), ("itm_logits",)),
)
_CAPTIONING = (
    GraphSpec("vision", lambda m: ImageEncoderGraph(m, features=False), ("pixel_values",), ("image_embeds",)),
    GraphSpec("decoder", CaptionDecoderGraph, ("input_ids", "attention_mask", "image_embeds"), ("logits",)),
)

#: architecture name -> its graphs, in flow order
HEAD_GRAPHS: dict[str, tuple[GraphSpec, ...]] = {
    "EfficientVLMForVisualQuestionAnswering": _VQA,
    "EfficientVLMForNLVR2": _VQA,
    "EfficientVLMForImageTextRetrieval": _CONTRASTIVE,
    "EfficientVLMForPreTraining": _CONTRASTIVE,
    "EfficientVLMForCaptioning": _CAPTIONING,
}

#: dynamic axes of every input / output name (axis -> name)
DYNAMIC_AXES: dict[str, dict[int, str]] = {
    "pixel_values": {0: "batch"}, "input_ids": {0: "batch", 1: "text_length"},
    "attention_mask": {0: "batch", 1: "text_length"}, "image_embeds": {0: "batch"},
    "image_features": {0: "batch"}, "text_embeds": {0: "batch", 1: "text_length"}, "text_features": {0: "batch"},
    "itm_logits": {0: "batch"}, "logits": {0: "batch"},
}
CAPTION_LOGITS_AXES = {0: "batch", 1: "text_length"}


def architecture_of(model: nn.Module) -> str:
    return type(model).__name__


def graphs_for(architecture: str) -> tuple[GraphSpec, ...]:
    """The graphs of a head, or a ``ValueError`` naming the heads that export."""
    if architecture not in HEAD_GRAPHS:
        raise ValueError(f"{architecture} cannot be exported: export one of the task heads "
                         f"({', '.join(HEAD_GRAPHS)}).")
    return HEAD_GRAPHS[architecture]


def output_axes(architecture: str, name: str) -> dict[int, str]:
    if architecture == "EfficientVLMForCaptioning" and name == "logits":
        return CAPTION_LOGITS_AXES
    return DYNAMIC_AXES[name]


def example_inputs(config, architecture: str, batch: int = 2, text_length: int = 7, seed: int = 0) -> dict:
    """Seeded random inputs of the flow (images, token ids with the last text padded, mask)."""
    generator = torch.Generator().manual_seed(seed)
    vc, tc = config.vision_config, config.text_config
    text_length = min(text_length, tc.max_position_embeddings)
    image_shape = (batch, 2, vc.num_channels) if architecture == "EfficientVLMForNLVR2" else (batch, vc.num_channels)
    pixel_values = torch.randn(*image_shape, vc.image_size, vc.image_size, generator=generator)
    low = min(5, tc.vocab_size - 1)
    input_ids = torch.randint(low, tc.vocab_size, (batch, text_length), generator=generator)
    if tc.bos_token_id is not None:
        input_ids[:, 0] = tc.bos_token_id
    attention_mask = torch.ones(batch, text_length, dtype=torch.long)
    if batch > 1 and text_length > 2:  # the last text is padded
        attention_mask[-1, -2:] = 0
        input_ids[-1, -2:] = tc.pad_token_id or 0
    return {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention_mask}


def graph_inputs(spec: GraphSpec, tensors: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return tuple(tensors[name] for name in spec.inputs)


def run_flow(specs: tuple[GraphSpec, ...], run_graph: Callable[[GraphSpec, dict], dict],
             inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Run a head's graphs in order; ``run_graph(spec, {input name: tensor})`` returns ``{output name: tensor}``.
    Returns every graph output."""
    tensors = dict(inputs)
    outputs = {}
    for spec in specs:
        result = run_graph(spec, {name: tensors[name] for name in spec.inputs})
        tensors.update(result)
        outputs.update(result)
    return outputs


class TorchFlow(nn.Module):
    """A PyTorch model run as its export graphs (the reference the exported graphs are compared with).

    ``forward(**inputs)`` returns ``{output name: tensor}`` for every graph output of the head.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.specs = graphs_for(architecture_of(model))
        self.model = model.eval()
        self.graphs = nn.ModuleDict({spec.name: spec.build(model) for spec in self.specs})

    def run_graph(self, spec: GraphSpec, inputs: dict) -> dict:
        outputs = self.graphs[spec.name](**inputs)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return dict(zip(spec.outputs, outputs))

    @torch.no_grad()
    def forward(self, **inputs) -> dict[str, torch.Tensor]:
        return run_flow(self.specs, self.run_graph, inputs)


__all__ = ["HEAD_GRAPHS", "GraphSpec", "TorchFlow", "example_inputs", "graphs_for", "run_flow"]
