"""Model cards for EfficientVLM checkpoints: one Jinja template per kind of checkpoint, rendered with
``huggingface_hub.ModelCard.from_template``.

The templates live in ``efficientvlm/hub/templates/`` (shipped as package data; the top-level ``model_cards/`` folder of
the repository is a link to that folder, so there is one copy). Each template is an ordinary
``ModelCard.from_template`` template; [`render_model_card`] fills in its variables:

* ``card_data`` (the YAML front matter, from ``ModelCardData``), ``repo_id``, ``model_name``, ``summary``;
* ``num_parameters``, ``image_size``, ``architecture_table`` (per-layer sizes read from the config);
* ``eval_table`` (Markdown table of the evaluation results, also in the ``model-index`` metadata);
* ``pruning_section`` (Markdown rendered from a pruning report, see [`render_pruning_section`]);
* ``citation_bibtex``; task specifics: ``num_answers``, ``generative_vqa`` (VQA: the answer decoder head) and
  ``single_label_vqa`` (VQA: a classifier trained with softmax cross-entropy, scored with a softmax),
  ``has_pretraining_heads`` (pre-training);
* what is true of this particular model, from optional ``render_model_card`` keyword arguments (without them the card
  is the generic one):

  - ``example_question_literal`` / ``example_image_literal``: quoted Python string literals for the usage snippets,
    from ``example_question`` (VQA) and ``example_image`` (every card but NLVR2's image pair); empty: the template's
    ``"What color is the car?"`` / ``"path/to/image.jpg"``;
  - ``limitations``: Markdown bullets from ``limitations`` (a list of strings describing the training data and its
    scope), shown instead of the generic bullet about web-crawled pre-training data;
  - ``figures_section``: from ``figures``, ``(title, path)`` pairs, each rendered as a ``### title`` and its image
    under a "Figures" heading (the files are uploaded with ``push_to_hub(..., extra_files=...)``).

Pruning reports come in two formats. The one of ``efficientvlm.pruning.pruning_report`` (modalities carry a
``layers`` list) is rendered as a summary list (target, budget, achieved sparsity, per modality for a dict, learned
expected sparsity), a per-modality table (parameters and FLOPs before → after) and one per-layer table::

    {
        "target_sparsity": 0.6, "budget": "params",
        "achieved_sparsity": 0.6,           # or {"vision": 0.62, "text": 0.1, "fusion": 0.12, "overall": 0.6}
        "learned_expected_sparsity": {...},  # optional, as achieved_sparsity (so is deterministic_rule_sparsity)
        "overall": {"params_before": ..., "params_after": ..., "params_sparsity": ..., "flops_before": ..., ...},
        "modalities": {
            "vision": {"params_before": ..., ..., "layers": [
                {"layer": 0, "heads_before": 4, "heads_after": 2, "ffn_before": 512, "ffn_after": 128,
                 "params_before": ..., "params_after": ..., "flops_before": ..., "flops_after": ...},
                ...]},
            "text": {...},
            "fusion": {..., "layers": [{..., "cross_heads_before": 4, "cross_heads_after": 1, ...}]},
        },
    }

Any other report is rendered flat (everything optional; what is present is rendered, anything else is ignored)::

    {
        "target_sparsity": 0.35,            # any top-level scalar is listed (ints, floats, strings)
        "sparsity": 0.347,
        "params_before": 116_700_000,
        "params_after": 75_900_000,
        "modalities": {                     # one row per modality, in this order
            "vision": {
                "params_before": 43_000_000,     # ints: parameter counts of the prunable part or the encoder
                "params_after": 31_000_000,
                "heads_kept": [12, 9, 7, 4, 3, 0],   # per layer (list) or a total (int)
                "heads_total": 72,               # optional, any key may be a list or a scalar
                "ffn_kept": [3072, 2100, 1400, 900, 400, 0],
                ...                              # any other key becomes an extra column
            },
            "text": {...},
            "fusion": {..., "cross_heads_kept": [...]},
        },
    }
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..models.configuration_efficientvlm import ALL_MODALITIES

TEMPLATES_DIR = Path(__file__).parent / "templates"

LIBRARY_TAGS = ("efficientvlm", "knowledge-distillation", "pruning", "vision-language")

CITATION_BIBTEX = """@inproceedings{wang2023efficientvlm,
  title     = {{EfficientVLM}: Fast and Accurate Vision-Language Models via Knowledge Distillation and
               Modal-adaptive Pruning},
  author    = {Wang, Tiannan and Zhou, Wangchunshu and Zeng, Yan and Zhang, Xinsong},
  booktitle = {Findings of the Association for Computational Linguistics: ACL 2023},
  year      = {2023},
  note      = {arXiv:2210.07795}
}"""


@dataclass(frozen=True)
class CardKind:
    """What differs between the kinds of EfficientVLM checkpoints on the Hub.

    Attributes:
        name: the task name used by ``render_model_card`` and ``efficientvlm push --task``.
        template: file name in ``templates/``.
        pipeline_tag: the Hub pipeline tag, or ``None`` where no Hub task fits the checkpoint.
        tags: task tags added to ``LIBRARY_TAGS``.
        eval_task_type, eval_task_name: defaults of ``EvalResult.task_type`` / ``task_name``.
        usage_examples: what the usage snippets show that ``render_model_card`` can replace (``"image"`` for
            ``example_image``, ``"question"`` for ``example_question``).
    """

    name: str
    template: str
    pipeline_tag: str | None
    tags: tuple[str, ...]
    eval_task_type: str
    eval_task_name: str
    usage_examples: tuple[str, ...] = ("image",)


CARD_KINDS: dict[str, CardKind] = {
    kind.name: kind
    for kind in (
        # No Hub pipeline tag fits a contrastive + matching pre-trained model that needs image and text together.
        CardKind("pretraining", "pretraining.md", None, ("vision-language-pretraining",),
                 "image-text-retrieval", "Image-text retrieval"),
        CardKind("vqa", "vqa.md", "visual-question-answering", ("visual-question-answering",),
                 "visual-question-answering", "Visual question answering", ("image", "question")),
        # The Hub has no image-text retrieval task (zero-shot-image-classification would promise a pipeline that
        # does not exist for this model), so no pipeline tag.
        CardKind("retrieval", "retrieval.md", None, ("image-text-retrieval",),
                 "image-text-retrieval", "Image-text retrieval"),
        # NLVR2 (two images + one statement -> true/false) matches no Hub task.
        CardKind("nlvr2", "nlvr2.md", None, ("nlvr2", "visual-reasoning"),
                 "visual-reasoning", "Visual reasoning (NLVR2)", ()),
        CardKind("captioning", "captioning.md", "image-to-text", ("image-captioning",),
                 "image-to-text", "Image captioning"),
    )
}


def template_path(task: str) -> Path:
    """Path of the Jinja template for ``task`` (``pretraining``, ``vqa``, ``retrieval``, ``nlvr2``, ``captioning``)."""
    return TEMPLATES_DIR / _kind(task).template


def _kind(task: str) -> CardKind:
    if task not in CARD_KINDS:
        raise ValueError(f"Unknown model card task {task!r}; choose one of {sorted(CARD_KINDS)}.")
    return CARD_KINDS[task]


# ---------------------------------------------------------------------------------------------------------------
# Markdown pieces
# ---------------------------------------------------------------------------------------------------------------


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_format_value(v) for v in value)
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {_format_value(v)}" for k, v in value.items())
    return str(value).replace("|", "\\|").replace("\n", " ")


def _format_count(count: int, giga: str = "B") -> str:
    """``93.7M``, ``1.2B`` (``giga="G"`` for FLOPs: ``1.2G``), or the exact count below a million."""
    if count >= 1e9:
        return f"{count / 1e9:.1f}{giga}"
    return f"{count / 1e6:.1f}M" if count >= 1e6 else f"{count:,}"


def _format_sparsity(value: float | Mapping[str, float]) -> str:
    """``60.0%``, or ``vision 62.0%, text 10.0%, overall 60.0%`` for a per-modality dict."""
    if isinstance(value, Mapping):
        return ", ".join(f"{key} {_format_sparsity(v)}" for key, v in value.items() if v is not None)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{100 * value:.1f}%"
    return _format_value(value)


def _before_after(before: Any, after: Any, giga: str = "B") -> str:
    """``4 → 2``; ``""`` when the value does not exist (a sub-block kind the modality does not have)."""
    if before is None and after is None:
        return ""
    return " → ".join(_format_count(v, giga) if isinstance(v, int) and not isinstance(v, bool) else _format_value(v)
                      for v in (before, after))


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


_PRUNING_COLUMNS = {  # known per-modality keys, in display order, with their column titles
    "params_before": "Parameters before",
    "params_after": "Parameters after",
    "heads_kept": "Attention heads kept",
    "heads_total": "Attention heads before",
    "cross_heads_kept": "Cross-attention heads kept",
    "cross_heads_total": "Cross-attention heads before",
    "ffn_kept": "FFN neurons kept",
    "ffn_total": "FFN neurons before",
}
_MODALITY_ORDER = ALL_MODALITIES


def render_pruning_section(report: Mapping[str, Any] | None, figure: str | None = None) -> str:
    """Markdown for a pruning report (either format of the module docstring) and an optional figure.

    A report whose modalities carry ``layers`` (the ``efficientvlm.pruning.pruning_report`` format) is rendered as a
    summary list, a per-modality table and one per-layer table (see [`render_layered_pruning_report`]); any other
    report as its scalars and one row per modality.

    Args:
        report: the pruning report; keys that are absent are left out, unknown per-modality keys become columns.
        figure: path of the figure *inside the repository* (e.g. ``"pruning_report.png"``), linked as an image.

    Returns:
        Markdown, or ``""`` when there is neither a report nor a figure.
    """
    if not report and not figure:
        return ""
    parts = []
    report = dict(report or {})
    if _has_layers(report.get("modalities")):
        parts.append(render_layered_pruning_report(report))
        report = {}
    modalities = report.pop("modalities", None) or {}
    scalars = [(k, v) for k, v in report.items() if not isinstance(v, (Mapping, list, tuple)) and v is not None]
    if scalars:
        parts.append("\n".join(f"- **{key.replace('_', ' ')}**: {_format_value(value)}" for key, value in scalars))
    if modalities:
        names = [m for m in _MODALITY_ORDER if m in modalities] + [m for m in modalities if m not in _MODALITY_ORDER]
        present = {key for stats in modalities.values() for key in (stats or {})}
        columns = [key for key in _PRUNING_COLUMNS if key in present]
        columns += sorted(present - set(_PRUNING_COLUMNS))
        with_ratio = {"params_before", "params_after"} <= present
        header = ["Modality"] + [_PRUNING_COLUMNS.get(key, key.replace("_", " ")) for key in columns]
        header += ["Parameters kept"] if with_ratio else []
        rows = []
        for name in names:
            stats = modalities[name] or {}
            row = [name] + [_format_value(stats[key]) if key in stats else "" for key in columns]
            if with_ratio:
                before, after = stats.get("params_before"), stats.get("params_after")
                row.append(f"{100 * after / before:.1f}%" if before and after is not None else "")
            rows.append(row)
        parts.append(_markdown_table(header, rows))
        if any(isinstance(v, (list, tuple)) for stats in modalities.values() for v in (stats or {}).values()):
            parts.append("Lists give one value per layer, from the first layer to the last.")
    if figure:
        parts.append(f"![Pruning report]({figure})")
    return "\n\n".join(parts)


def _has_layers(modalities: Any) -> bool:
    return isinstance(modalities, Mapping) and any(
        isinstance(stats, Mapping) and isinstance(stats.get("layers"), (list, tuple)) for stats in modalities.values())


def _modality_names(modalities: Mapping[str, Any]) -> list[str]:
    return [m for m in _MODALITY_ORDER if m in modalities] + [m for m in modalities if m not in _MODALITY_ORDER]


_SPARSITY_ITEMS = {  # top-level sparsities of a layered report, in display order, with their labels
    "target_sparsity": "Target sparsity",
    "trained_target_sparsity": "Trained target sparsity",
    "achieved_sparsity": "Achieved sparsity",
    "learned_expected_sparsity": "Learned expected sparsity (L0 gates)",
    "deterministic_rule_sparsity": "Deterministic-rule sparsity (L0 gates)",
}
_BUDGET_LABELS = {"params": "parameters of the encoder layers", "flops": "FLOPs of the encoder layers"}
_LAYER_COLUMNS = (  # per-layer table: (column title, key prefix of <prefix>_before / <prefix>_after)
    ("Self-attention heads", "heads"),
    ("Cross-attention heads", "cross_heads"),
    ("FFN width", "ffn"),
    ("Parameters", "params"),
)
_SUMMARY_KEYS = (*_SPARSITY_ITEMS, "budget", "text_length", "image_tokens", "total_parameters", "family", "overall",
                 "modalities")


def _summary_item(report: Mapping[str, Any], key: str) -> str | None:
    """One bullet of the layered summary, or ``None`` when ``key`` is absent or rendered elsewhere."""
    value = report.get(key)
    if value is None:
        return None
    if key in _SPARSITY_ITEMS:
        return f"- **{_SPARSITY_ITEMS[key]}**: {_format_sparsity(value)}"
    if key == "budget":
        return f"- **Budget**: {value} ({_BUDGET_LABELS.get(value, value)})"
    if key == "text_length" and report.get("image_tokens") is not None:
        return f"- **FLOPs counted for**: {value} text tokens and {report['image_tokens']} image tokens"
    if key == "total_parameters" and isinstance(value, Mapping) and {"before", "after"} <= set(value):
        return f"- **Whole model (embeddings and heads included)**: {_before_after(value['before'], value['after'])}"
    if key == "family" and isinstance(value, (list, tuple)) and value:
        members = [_format_sparsity(m.get("achieved_sparsity", m.get("target_sparsity")))
                   if isinstance(m, Mapping) else _format_sparsity(m) for m in value]
        return f"- **Nested family exported from the same run**: {'; '.join(members)}"
    if key in _SUMMARY_KEYS:
        return None
    return f"- **{key.replace('_', ' ')}**: {_format_value(value)}"


def _layered_summary(report: Mapping[str, Any]) -> str:
    order = ["target_sparsity", "budget", *(k for k in _SUMMARY_KEYS if k not in ("target_sparsity", "budget"))]
    order += [key for key in report if key not in _SUMMARY_KEYS]
    return "\n".join(item for item in (_summary_item(report, key) for key in order) if item)


def _modality_table(report: Mapping[str, Any]) -> str:
    modalities = report["modalities"]
    rows = [(name, modalities[name] or {}) for name in _modality_names(modalities)]
    if isinstance(report.get("overall"), Mapping):
        rows.append(("overall", report["overall"]))
    header = ["Modality", "Parameters", "Parameter sparsity", "FLOPs", "FLOP sparsity"]
    cells = []
    for name, stats in rows:
        cells.append([
            name, _before_after(stats.get("params_before"), stats.get("params_after")),
            _format_sparsity(stats["params_sparsity"]) if stats.get("params_sparsity") is not None else "",
            _before_after(stats.get("flops_before"), stats.get("flops_after"), giga="G"),
            _format_sparsity(stats["flops_sparsity"]) if stats.get("flops_sparsity") is not None else "",
        ])
    return _markdown_table(header, cells)


def _layer_table(modalities: Mapping[str, Any]) -> str:
    rows = []
    for name in _modality_names(modalities):
        for index, layer in enumerate((modalities[name] or {}).get("layers") or ()):
            rows.append([name, str(layer.get("layer", index))] + [
                _before_after(layer.get(f"{prefix}_before"), layer.get(f"{prefix}_after"))
                for _, prefix in _LAYER_COLUMNS])
    return _markdown_table(["Modality", "Layer", *(title for title, _ in _LAYER_COLUMNS)], rows)


def render_layered_pruning_report(report: Mapping[str, Any]) -> str:
    """Markdown for a report in the ``efficientvlm.pruning.pruning_report`` format (modalities with ``layers``).

    Three parts: a summary list (target, budget, achieved sparsity, per modality when the report has a dict, the
    sparsity the L0 gates learned when recorded, and any other top-level value); a per-modality table (parameters and
    FLOPs before → after, with their sparsities, and an ``overall`` row); one per-layer table with a row per modality
    and layer and ``before → after`` cells for self-attention heads, cross-attention heads, FFN width and parameters
    (empty where the modality has no such sub-block).
    """
    parts = [_layered_summary(report), _modality_table(report),
             "Per layer (before → after pruning; an empty cell: the encoder has no such sub-block):",
             _layer_table(report["modalities"])]
    return "\n\n".join(part for part in parts if part)


def render_architecture_table(config: Any) -> str:
    """Per-encoder layer sizes of an ``EfficientVLMConfig`` (the config is the source of truth for every shape)."""
    sizes = config.layer_sizes()
    rows = []
    for modality, fields in sizes.items():
        sub = getattr(config, f"{modality}_config")
        rows.append([
            modality, str(sub.num_hidden_layers), str(sub.hidden_size),
            _format_value(fields["num_attention_heads"]),
            _format_value(fields["num_cross_attention_heads"]) if "num_cross_attention_heads" in fields else "",
            _format_value(fields["intermediate_size"]),
        ])
    header = ["Encoder", "Layers", "Width", "Attention heads per layer", "Cross-attention heads per layer",
              "FFN width per layer"]
    return _markdown_table(header, rows) + "\n\n0 means the sub-block was pruned away in that layer."


def _eval_result(value: EvalResult | Mapping[str, Any], kind: CardKind) -> EvalResult:
    if isinstance(value, EvalResult):
        return value
    if not isinstance(value, Mapping):
        raise TypeError(f"eval_results entries must be EvalResult or dicts of its fields, got {type(value).__name__}.")
    fields = {"task_type": kind.eval_task_type, "task_name": kind.eval_task_name, **value}
    try:
        return EvalResult(**fields)
    except TypeError as error:
        raise ValueError(
            f"Bad evaluation result {dict(value)!r}: give the keyword arguments of huggingface_hub.EvalResult "
            "(dataset_type, dataset_name, metric_type, metric_value; optionally dataset_split, metric_name, ...)."
        ) from error


def render_eval_table(eval_results: Sequence[EvalResult]) -> str:
    """A Markdown table of evaluation results (dataset, split, metric, value)."""
    if not eval_results:
        return ""
    rows = [[r.dataset_name, r.dataset_split or "", r.metric_name or r.metric_type, _format_value(r.metric_value)]
            for r in eval_results]
    return _markdown_table(["Dataset", "Split", "Metric", "Value"], rows)


def render_limitations(limitations: Sequence[str] | None) -> str:
    """Markdown bullets, one per limitation (line breaks inside an item become spaces, so each stays one bullet)."""
    if isinstance(limitations, str):
        raise TypeError("limitations must be a list of strings (one bullet each), not a string.")
    items = [" ".join(str(item).split()) for item in limitations or ()]
    return "\n".join(f"- {item}" for item in items if item)


def render_figures_section(figures: Sequence[tuple[str, str]] | None) -> str:
    """Markdown for ``(title, path in the repository or URL)`` pairs: a ``### title`` and the image for each."""
    parts = []
    for figure in figures or ():
        if not (isinstance(figure, (list, tuple)) and len(figure) == 2):
            raise ValueError(f"figures entries must be (title, path) pairs, got {figure!r}.")
        title, path = (" ".join(str(v).split()) for v in figure)
        if not title or not path:
            raise ValueError(f"figures entries need a title and a path, got {figure!r}.")
        alt = title.replace("[", "(").replace("]", ")")
        parts.append(f"### {title}\n\n![{alt}]({path.replace(' ', '%20')})")
    return "\n\n".join(parts)


def _check_usage_examples(kind: CardKind, **examples: Any) -> None:
    for what, value in examples.items():
        if value is not None and what not in kind.usage_examples:
            cards = sorted(k.name for k in CARD_KINDS.values() if what in k.usage_examples)
            raise ValueError(f"The {kind.name} card has no {what} in its usage snippets; example_{what} applies to "
                             f"these cards only: {', '.join(cards)}.")


def _python_literal(value: str | os.PathLike | None, what: str) -> str:
    """A double-quoted Python string literal for a usage snippet (``""`` when not given: the template's default)."""
    if value is None:
        return ""
    text = os.fspath(value)
    if not text.strip():
        raise ValueError(f"{what} must not be empty.")
    return json.dumps(text, ensure_ascii=False)  # a JSON string is a valid Python string literal


# ---------------------------------------------------------------------------------------------------------------
# Rendering and merging
# ---------------------------------------------------------------------------------------------------------------


def render_model_card(
    task: str,
    *,
    repo_id: str,
    config: Any | None = None,
    num_parameters: int | None = None,
    base_model: str | Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    eval_results: Sequence[EvalResult | Mapping[str, Any]] | None = None,
    pruning_report: Mapping[str, Any] | None = None,
    pruning_figure: str | None = None,
    license: str | None = None,
    language: str | Sequence[str] | None = "en",
    tags: Sequence[str] = (),
    summary: str | None = None,
    model_name: str | None = None,
    architecture: str | None = None,
    example_question: str | None = None,
    example_image: str | os.PathLike | None = None,
    limitations: Sequence[str] | None = None,
    figures: Sequence[tuple[str, str]] | None = None,
) -> ModelCard:
    """Render the model card of an EfficientVLM checkpoint.

    Args:
        task: kind of checkpoint: ``pretraining``, ``vqa``, ``retrieval``, ``nlvr2`` or ``captioning``.
        repo_id: Hub id the card is written for (used in the usage snippets).
        config: the model's ``EfficientVLMConfig``, for the architecture table, image size and VQA answer count.
        num_parameters: parameter count shown in the card.
        base_model: Hub id of the teacher (the model this one was distilled / pruned from).
        datasets: Hub ids of the training / evaluation datasets.
        eval_results: ``huggingface_hub.EvalResult`` objects, or dicts of its keyword arguments (``task_type`` and
            ``task_name`` default to the task's). Written to the ``model-index`` metadata and a table.
        pruning_report: pruning report dict (format in the module docstring).
        pruning_figure: path of the pruning figure inside the repository (the caller uploads the file).
        license: the checkpoint's license id (no default: it depends on the weights it was trained from; the official
            X-VLM weights are ``bsd-3-clause``).
        language: card metadata.
        tags: extra tags, after the library's and the task's.
        summary: free text placed under the title.
        model_name: the name in the title and the ``model-index``; defaults to the repository name.
        architecture: the model class name (``config.architectures[0]``); a bare ``EfficientVLMModel`` gets the
            pre-training card without the ITC/ITM/MLM usage.
        example_question: the question in the usage snippets of the VQA card (default: ``"What color is the
            car?"``); give one the model can answer. Only the ``vqa`` card asks a question.
        example_image: path or URL of the image in the usage snippets (default: ``"path/to/image.jpg"``). Every card
            but ``nlvr2`` (which takes an image pair) has one image in its snippets.
        limitations: bullets describing the training data and its scope (what the model was trained on, what it
            cannot be expected to handle), rendered in the Limitations section *instead of* the generic bullet about
            web-crawled pre-training data; the card's other limitations stay.
        figures: ``(title, path)`` pairs rendered as a "Figures" section (a ``### title`` heading and the image for
            each); ``path`` is a path inside the repository (upload the file, e.g. with ``push_to_hub(...,
            extra_files=...)``) or a URL.

    Returns:
        A ``huggingface_hub.ModelCard``; ``card.save(path)`` writes ``README.md``.
    """
    kind = _kind(task)
    _check_usage_examples(kind, question=example_question, image=example_image)
    model_name = model_name or repo_id.split("/")[-1]
    results = [_eval_result(r, kind) for r in eval_results or ()]
    if isinstance(datasets, str):
        datasets = [datasets]
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=kind.pipeline_tag,
        license=license,
        language=list(language) if isinstance(language, (list, tuple)) else language,
        tags=_unique([*LIBRARY_TAGS, *kind.tags, *tags]),
        base_model=list(base_model) if isinstance(base_model, (list, tuple)) else base_model,
        datasets=list(datasets) if datasets else None,
        eval_results=results or None,
        model_name=model_name,
    )
    variables = {
        "repo_id": repo_id,
        "model_name": model_name,
        "summary": summary or "",
        "num_parameters": _format_count(num_parameters) if num_parameters else "",
        "architecture_table": render_architecture_table(config) if config is not None else "",
        "image_size": config.vision_config.image_size if config is not None else "",
        "num_answers": getattr(config, "num_labels", "") if config is not None else "",
        "has_pretraining_heads": architecture != "EfficientVLMModel",
        "generative_vqa": getattr(config, "decoder_config", None) is not None,
        "single_label_vqa": getattr(config, "problem_type", None) == "single_label_classification",
        "eval_table": render_eval_table(results),
        "pruning_section": render_pruning_section(pruning_report, pruning_figure),
        "citation_bibtex": CITATION_BIBTEX,
        "example_question_literal": _python_literal(example_question, "example_question"),
        "example_image_literal": _python_literal(example_image, "example_image"),
        "limitations": render_limitations(limitations),
        "figures_section": render_figures_section(figures),
    }
    return ModelCard.from_template(card_data, template_path=str(template_path(task)), **variables)


def merge_card_metadata(card: ModelCard, existing: ModelCard) -> ModelCard:
    """Keep the metadata of the card already on the Hub when a new card replaces it.

    Lists (``tags``, ``datasets``, ``metrics``, ``language``, ``base_model``) are united, new entries first. Other
    fields take the new card's value when it sets one, else the existing value (so keys added on the Hub, such as
    ``widget`` or ``co2_eq_emissions``, survive). Evaluation results are united too; a new result replaces an
    existing one for the same task, dataset, split and metric. The Markdown body is the new card's.

    Returns:
        ``card``, with its metadata updated in place.
    """
    new, old = card.data, existing.data
    for key, old_value in vars(old).items():
        if key in ("eval_results", "model_name", "ignore_metadata_errors") or old_value is None:
            continue
        new_value = getattr(new, key, None)
        if isinstance(old_value, (list, tuple)) or isinstance(new_value, (list, tuple)):
            setattr(new, key, _unique([*_as_list(new_value), *_as_list(old_value)]))
        elif new_value is None:
            setattr(new, key, old_value)
    if old.eval_results:
        def identity(r: EvalResult):
            return (r.task_type, r.dataset_type, r.dataset_config, r.dataset_split, r.metric_type, r.metric_config)

        new_ids = {identity(r) for r in new.eval_results or ()}
        kept = [r for r in old.eval_results if identity(r) not in new_ids]
        if kept:
            new.eval_results = [*(new.eval_results or ()), *kept]
            new.model_name = new.model_name or old.model_name
    return card


def load_card(path: str | os.PathLike, ignore_metadata_errors: bool = False) -> ModelCard:
    """Load a ``README.md`` model card from a local file."""
    return ModelCard.load(Path(path), ignore_metadata_errors=ignore_metadata_errors)


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _unique(values: Sequence[Any]) -> list:
    seen, result = set(), []
    for value in values:
        key = repr(value)
        if key not in seen:
            seen.add(key)
            result.append(value)
    return result


__all__ = [
    "CARD_KINDS",
    "CITATION_BIBTEX",
    "CardKind",
    "LIBRARY_TAGS",
    "TEMPLATES_DIR",
    "load_card",
    "merge_card_metadata",
    "render_architecture_table",
    "render_eval_table",
    "render_figures_section",
    "render_layered_pruning_report",
    "render_limitations",
    "render_model_card",
    "render_pruning_section",
    "template_path",
]
