"""``efficientvlm push``: publish a saved checkpoint folder (``save_pretrained`` of a model and its processor)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .cards import CARD_KINDS

_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


def add_push_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``efficientvlm push``."""
    parser.add_argument("checkpoint_dir", metavar="CHECKPOINT_DIR",
                        help="folder written by model.save_pretrained() and processor.save_pretrained()")
    parser.add_argument("repo_id", metavar="REPO_ID", help="Hub repository, e.g. my-org/efficientvlm-vqa")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--revision", help="branch to push to (created from the default branch if missing)")
    parser.add_argument("--commit-message", help="commit message")
    parser.add_argument("--dry-run", metavar="DIR",
                        help="write the exact repository folder to DIR (empty or new) and upload nothing")
    parser.add_argument("--token", help="Hub token (default: the stored login)")
    card = parser.add_argument_group("model card (rendered unless --card is given)")
    card.add_argument("--card", metavar="README.md", help="use this model card as it is")
    card.add_argument("--task", choices=sorted(CARD_KINDS),
                      help="kind of card (default: from the checkpoint's head class)")
    card.add_argument("--base-model", help="Hub id of the teacher")
    card.add_argument("--dataset", action="append", help="Hub id of a dataset (repeatable)")
    card.add_argument("--eval-results", metavar="JSON",
                      help="JSON file: a list of huggingface_hub.EvalResult keyword-argument dicts")
    card.add_argument("--license", help="license id of the weights (none by default; conversions of the official "
                                        "X-VLM weights: bsd-3-clause)")
    card.add_argument("--tag", action="append", help="extra tag (repeatable)")
    card.add_argument("--summary", help="text placed under the card's title")
    card.add_argument("--pruning-report", metavar="JSON", help="pruning report, uploaded and rendered in the card")
    card.add_argument("--pruning-figure", metavar="PNG", help="pruning figure, uploaded and shown in the card")


def load_checkpoint(checkpoint_dir: str | Path) -> tuple[Any, Any]:
    """Load the model (of the head class in ``config.architectures``) and the processor of a checkpoint folder.

    Raises:
        ValueError: the folder is not an EfficientVLM checkpoint, or it has no processor files.
    """
    import efficientvlm
    from transformers import AutoConfig, AutoProcessor

    folder = Path(checkpoint_dir)
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder} has no config.json: pass a folder written by model.save_pretrained().")
    config = AutoConfig.from_pretrained(folder)
    if not isinstance(config, efficientvlm.EfficientVLMConfig):  # the generative VQA config is a subclass
        raise ValueError(f"{folder} holds a {config.model_type!r} model, not an EfficientVLM one.")
    architecture = (config.architectures or ["EfficientVLMModel"])[0]
    model_class = getattr(efficientvlm, architecture, None)
    if model_class is None:
        raise ValueError(f"{folder}: unknown EfficientVLM architecture {architecture!r} in config.json.")
    if not any((folder / name).is_file() for name in _PROCESSOR_FILES):
        raise ValueError(f"{folder} has no processor ({' / '.join(_PROCESSOR_FILES)}): save it next to the model "
                         "with processor.save_pretrained(folder).")
    return model_class.from_pretrained(folder), AutoProcessor.from_pretrained(folder)


def run_push(args: argparse.Namespace) -> int:
    """Run ``efficientvlm push``: the card flags, the folder, the Hub token and connection are checked before the
    model is loaded."""
    from . import publish
    from .publish import push_to_hub

    card_kwargs = {
        "task": args.task, "base_model": args.base_model, "datasets": args.dataset, "license": args.license,
        "tags": args.tag, "summary": args.summary,
        "eval_results": json.loads(Path(args.eval_results).read_text(encoding="utf-8")) if args.eval_results else None,
    }
    card_kwargs = {key: value for key, value in card_kwargs.items() if value is not None}
    if args.card and card_kwargs:
        flags = ", ".join("--" + key.replace("_", "-") for key in card_kwargs)
        raise ValueError(f"--card uses a finished card; drop {flags}.")
    if not (Path(args.checkpoint_dir) / "config.json").is_file():
        raise ValueError(f"{args.checkpoint_dir} has no config.json: pass a folder written by model.save_pretrained().")
    api = None
    if args.dry_run is None:  # token and network first: seconds, before the model is loaded
        api = publish.HfApi(token=args.token)
        publish.check_hub_access(api, args.token)
    model, processor = load_checkpoint(args.checkpoint_dir)
    result = push_to_hub(
        model, processor, args.repo_id, card=args.card, private=args.private, revision=args.revision,
        commit_message=args.commit_message, dry_run_dir=args.dry_run, token=args.token,
        pruning_report=args.pruning_report, pruning_figure=args.pruning_figure, api=api, **card_kwargs,
    )
    where = f"{result.folder} (dry run, nothing uploaded)" if result.folder else result.commit.commit_url
    print(f"{args.repo_id}: {len(result.files)} files -> {where}")
    for name in result.files:
        print(f"  {name}")
    return 0
