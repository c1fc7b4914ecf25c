"""What the example scripts share on the command line: one parser for their argument dataclasses.

``script_parser(dataclasses, __doc__)`` is an ``HfArgumentParser`` whose ``--help`` opens (after a one-line usage)
with the script's first docstring paragraph, which adds ``--threads`` (``ScriptArguments``, parsed last) and, for a training script (one of
the dataclasses is a ``TrainingArguments``), logs to TensorBoard by default when ``tensorboard`` or ``tensorboardX``
is installed (transformers' own ``report_to`` default is ``"none"``); a ``--report_to`` on the command line wins::

    parser = script_parser((TaskArguments, TrainingArguments), __doc__)
    task_args, training_args, script_args = parser.parse_args_into_dataclasses(args=argv)
    script_args.apply()  # torch threads, before anything is built

User mistakes in these arguments are ``ValueError``s that ``efficientvlm.user_errors.run_script`` reports in one line.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field

from transformers import HfArgumentParser, TrainingArguments
from transformers.integrations import is_tensorboard_available


@dataclass
class ScriptArguments:
    """Arguments every example script takes."""

    threads: int = field(default=0, metadata={"help": "torch threads (torch.set_num_threads) for the whole run; 0 = "
                                                      "torch's default (as many as the machine has cores)"})

    def __post_init__(self):
        if self.threads < 0:
            raise ValueError(f"--threads must be >= 0 (0 = torch's default), got {self.threads}.")

    def apply(self) -> None:
        """Set torch's intra-op threads to ``--threads`` (nothing for 0)."""
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)


def default_report_to() -> str:
    """``"tensorboard"`` when transformers can write TensorBoard event files (tensorboard or tensorboardX is
    installed), else ``"none"``."""
    return "tensorboard" if is_tensorboard_available() else "none"


def description(doc: str) -> str:
    """The first paragraph of a docstring, as one line for argparse to wrap."""
    first = inspect.cleandoc(doc or "").split("\n\n", 1)[0]
    return " ".join(first.split())


def script_parser(dataclass_types: Sequence[type], doc: str) -> HfArgumentParser:
    """An ``HfArgumentParser`` for ``dataclass_types`` plus ``ScriptArguments`` (last), described by ``doc``'s first
    paragraph; for a training script, ``--report_to`` defaults to ``default_report_to()``."""
    text = description(doc)
    training = any(isinstance(t, type) and issubclass(t, TrainingArguments) for t in dataclass_types)
    if training:
        text += (" Training logs go to TensorBoard (output_dir/runs/) when tensorboard or tensorboardX is installed"
                 f" ({'it is' if is_tensorboard_available() else 'neither is'} here); --report_to changes that,"
                 " e.g. --report_to none.")
    # a one-line usage, so that the description opens --help (TrainingArguments alone would fill pages of usage);
    # the options, required ones marked, follow it
    parser = HfArgumentParser((*dataclass_types, ScriptArguments), description=text, usage="%(prog)s [options]")
    if training:
        parser.set_defaults(report_to=default_report_to())
    return parser


__all__ = ["ScriptArguments", "default_report_to", "description", "script_parser"]
