"""Model cards for EfficientVLM checkpoints: one Jinja template per kind of checkpoint, rendered with
``huggingface_hub.ModelCard.from_template``.

The templates live in ``efficientvlm/hub/templates/`` (shipped as package data; the top-level ``model_cards/`` folder of
the repository is a link to that folder, so there is one copy). Each template is an ordinary
``ModelCard.from_template`` template; [`render_model_card`] fills in its variables:

* ``card_data`` (the YAML front matter, from ``ModelCardData``), ``repo_id``, ``model_name``, ``summary``;
* ``num_parameters``, ``image_size``, ``architecture_table`` (per-layer sizes read from the config);
* ``eval_table`` (Markdown table of the evaluation results, also in the ``model-index`` metadata);
* ``pruning_section`` (Markdown rendered from a pruning report, see [`render_pruning_section`]);
* ``citation_bibtex``; task specifics: ``num_answers`` (VQA), ``has_pretraining_heads`` (pre-training).

Pruning report format (everything optional; what is present is rendered, anything else is ignored)::

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

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

TEMPLATES_DIR = Path(__file__).parent / "templates"

LIBRARY_TAGS = ("efficientvlm", "knowledge-distillation", "pruning", "vision-language")

CITATION_BIBTEX = """@article{wang2022efficientvlm,
  title         = {{EfficientVLM}: Fast and Accurate Vision-Language Models via Knowledge Distillation and
                   Modal-adaptive Pruning},
  author        = {Wang, Tiannan and Zhou, Wangchunshu and Zeng, Yan and Zhang, Xinsong},
  journal       = {arXiv preprint arXiv:2210.07795},
  year          = {2022},
  eprint        = {2210.07795},
  archivePrefix = {arXiv},
  primaryClass  = {cs.CV},
  url           = {https://arxiv.org/abs/2210.07795}
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
    """

    name: str
    template: str
    pipeline_tag: str | None
    tags: tuple[str, ...]
    eval_task_type: str
    eval_task_name: str


CARD_KINDS: dict[str, CardKind] = {
    kind.name: kind
    for kind in (
        # No Hub pipeline tag fits a contrastive + matching pre-trained model that needs image and text together.
        CardKind("pretraining", "pretraining.md", None, ("vision-language-pretraining",),
                 "image-text-retrieval", "Image-text retrieval"),
        CardKind("vqa", "vqa.md", "visual-question-answering", ("visual-question-answering",),
                 "visual-question-answering", "Visual question answering"),
        # The Hub has no image-text retrieval task (zero-shot-image-classification would promise a pipeline that
        # does not exist for this model), so no pipeline tag.
        CardKind("retrieval", "retrieval.md", None, ("image-text-retrieval",),
                 "image-text-retrieval", "Image-text retrieval"),
        # NLVR2 (two images + one statement -> true/false) matches no Hub task.
        CardKind("nlvr2", "nlvr2.md", None, ("nlvr2", "visual-reasoning"),
                 "visual-reasoning", "Visual reasoning (NLVR2)"),
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


def _format_count(count: int) -> str:
    return f"{count / 1e6:.1f}M" if count >= 1e6 else f"{count:,}"


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
_MODALITY_ORDER = ("vision", "text", "fusion", "decoder")


def render_pruning_section(report: Mapping[str, Any] | None, figure: str | None = None) -> str:
    """Markdown for a pruning report (format: see the module docstring) and an optional figure.

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


def render_architecture_table(config: Any) -> str:
    """Per-encoder layer sizes of an ``EfficientVLMConfig`` (the config is the source of truth for every shape)."""
    sizes = config.layer_sizes()
    rows = []
    for modality, fields in sizes.items():
        sub = getattr(config, f"{modality}_config")
        rows.append([
            modality, str(sub.num_hidden_layers), str(sub.hidden_size),
            _format_value(fields["num_attention_heads"]),
            _format_value(fields.get("num_cross_attention_heads", "")) if modality == "fusion" else "",
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

    Returns:
        A ``huggingface_hub.ModelCard``; ``card.save(path)`` writes ``README.md``.
    """
    kind = _kind(task)
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
        "eval_table": render_eval_table(results),
        "pruning_section": render_pruning_section(pruning_report, pruning_figure),
        "citation_bibtex": CITATION_BIBTEX,
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
    "render_model_card",
    "render_pruning_section",
    "template_path",
]
