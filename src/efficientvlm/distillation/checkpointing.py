"""Trainer-owned state that is not part of the model (distillation projections, pruning gates and multipliers, their
optimizer), saved in every checkpoint and restored on resume - the same way under DDP, FSDP and DeepSpeed.

transformers restores a checkpoint in different places depending on the backend: ``_load_from_checkpoint`` before
the model is prepared in a single process and under DDP, after it is prepared under FSDP, and never under DeepSpeed
(``deepspeed_load_checkpoint`` loads the engine instead). Overriding those private hooks therefore loses this state
under DeepSpeed. ``CheckpointedState`` uses two public mechanisms instead:

* saving: it is a ``TrainerCallback``; ``on_save`` (called on every process right after the Trainer wrote
  ``checkpoint-<step>``) adds one file per registered entry to that folder, from the main process;
* loading: the trainer's ``train(resume_from_checkpoint=...)`` calls ``load(folder)`` before handing over to
  ``Trainer.train``, whatever the backend. These entries are never wrapped or sharded (they live outside the model
  and its optimizer), so every process loads the same files.

Modules are stored as safetensors, optimizers with ``torch.save`` (their state holds Python values).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR


@dataclass
class _Entry:
    obj: nn.Module | torch.optim.Optimizer
    missing: str | None  # error message when a checkpoint lacks the file; None: optional


class CheckpointedState(TrainerCallback):
    """Named modules and optimizers that a trainer checkpoints beside the model (see the module docstring).

    Args:
        trainer: the trainer whose checkpoints carry the state (for its output folder and device).

    ``register(file_name, module_or_optimizer, missing=...)`` adds an entry; ``load(folder)`` restores every entry
    from a checkpoint folder.
    """

    def __init__(self, trainer):
        self.trainer = trainer
        self.entries: dict[str, _Entry] = {}

    def register(self, file_name: str, obj: nn.Module | torch.optim.Optimizer, missing: str | None = None) -> None:
        """Save ``obj`` as ``file_name`` in every checkpoint and restore it on resume. ``missing``: the error raised
        when resuming from a checkpoint without that file (``None``: such checkpoints resume without it)."""
        self.entries[file_name] = _Entry(obj, missing)

    def checkpoint_folder(self, state) -> str:
        """The folder the Trainer just wrote for ``state.global_step``."""
        trainer = self.trainer
        run_dir = trainer._get_output_dir(trial=getattr(trainer, "_trial", None))
        return os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")

    def on_save(self, args, state, control, **kwargs):
        folder = self.checkpoint_folder(state)
        if not args.should_save or not os.path.isdir(folder):  # no checkpoint was written at this step
            return
        for file_name, entry in self.entries.items():
            path = os.path.join(folder, file_name)
            if isinstance(entry.obj, nn.Module):
                save_file({key: value.detach().cpu().contiguous() for key, value in entry.obj.state_dict().items()},
                          path)
            else:
                torch.save(entry.obj.state_dict(), path)

    def load(self, folder: str) -> None:
        """Restore every entry from checkpoint ``folder`` (raises for a missing required file before loading any)."""
        for file_name, entry in self.entries.items():
            if entry.missing is not None and not os.path.isfile(os.path.join(folder, file_name)):
                raise ValueError(f"{folder} has no {file_name}: {entry.missing}")
        device = self.trainer.args.device
        for file_name, entry in self.entries.items():
            path = os.path.join(folder, file_name)
            if not os.path.isfile(path):
                continue
            if isinstance(entry.obj, nn.Module):
                # read on the CPU and copied onto the parameters' device (safetensors refuses 'cpu:0', a DDP CPU device)
                entry.obj.load_state_dict(load_file(path))
            else:
                entry.obj.load_state_dict(torch.load(path, map_location=device, weights_only=True))


__all__ = ["CheckpointedState"]
