"""The ``efficientvlm`` command line: ``efficientvlm <subcommand> [options]``.

Subcommands live in ``SUBCOMMANDS``. Each one is a name, a help line, a function that adds its arguments to an
``argparse`` parser, and a function that runs it and returns the exit status. Adding one is a three-line change::

    from .demo import add_demo_arguments, run_demo
    ...
    Subcommand("demo", "Start the demo.", add_demo_arguments, run_demo),   # one more entry in SUBCOMMANDS

A user mistake (a ``ValueError`` or ``OSError``: a bad value, a missing file, no Hub token, no network) is reported
as one error message on standard error with exit status 2; ``efficientvlm --debug ...`` (or ``--debug`` after the
subcommand, or ``EFFICIENTVLM_DEBUG=1``) shows the traceback instead. Other exceptions are bugs and always show it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .demo import add_demo_arguments, run_demo
from .export.commands import add_export_arguments, run_export
from .hub.commands import add_push_arguments, run_push
from .user_errors import DEBUG_FLAG, USER_ERROR_STATUS, USER_ERRORS, debug_requested, format_user_error


@dataclass(frozen=True)
class Subcommand:
    """One ``efficientvlm`` subcommand."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


SUBCOMMANDS: list[Subcommand] = [
    Subcommand("demo", "Run the whole method (teacher, distillation, modal-adaptive pruning, evaluation, speed) on "
               "the synthetic shapes VQA benchmark, offline.", add_demo_arguments, run_demo),
    Subcommand("push", "Publish a checkpoint folder to the Hugging Face Hub (model, processor, card, code).",
               add_push_arguments, run_push),
    Subcommand("export", "Export a checkpoint to ONNX, ONNX int8, int8 or bf16, check each against float32 and "
               "report size, latency and output differences.", add_export_arguments, run_export),
]


def build_parser() -> argparse.ArgumentParser:
    """The ``efficientvlm`` parser with one sub-parser per entry of ``SUBCOMMANDS``."""
    parser = argparse.ArgumentParser(prog="efficientvlm", description="EfficientVLM command line tools.")
    debug_help = "show the full traceback of an error instead of one message"
    parser.add_argument(DEBUG_FLAG, action="store_true", help=debug_help)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for subcommand in SUBCOMMANDS:
        sub = subparsers.add_parser(subcommand.name, help=subcommand.help, description=subcommand.help)
        sub.add_argument(DEBUG_FLAG, action="store_true", default=argparse.SUPPRESS, help=debug_help)
        subcommand.add_arguments(sub)
        sub.set_defaults(_run=subcommand.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``efficientvlm`` console script; returns the exit status (2 for a user mistake)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args._run(args) or 0
    except USER_ERRORS as error:
        if args.debug or debug_requested():
            raise
        print(format_user_error(f"efficientvlm {args.command}", error), file=sys.stderr)
        return USER_ERROR_STATUS
    except KeyboardInterrupt:
        print(f"efficientvlm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
