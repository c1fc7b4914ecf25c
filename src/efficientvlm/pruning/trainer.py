"""``ModalAdaptivePruningTrainer``: distil a task teacher into a student while learning which heads, FFN neurons and
sub-blocks of its three encoders to remove under one sparsity budget.

Each training step samples hard-concrete gates from the trainer's ``ModalAdaptiveL0Module``, sets them on the
student's pruning hooks for the step's forward *and* backward (gradient checkpointing replays the forward), and adds
the Lagrangian ``lambda_1 (s - t) + lambda_2 (s - t)^2`` to the distillation loss. The gates (``log_alpha``) and the
multipliers live outside the model, in their own AdamW (the multipliers maximised), stepped at every optimizer
step: the model's LR schedule, weight decay and gradient clipping never touch them. Checkpoints carry the gates, the
multipliers and their optimizer state, so a run resumes where it stopped.

The exported structure is *budget-exact*: ``prune()`` spreads the target over the three encoders in the proportions
the gates learned and removes, in each, the units with the lowest keep probabilities until the model has exactly the
asked size (``ModalAdaptiveL0Module.budget_gates``), whatever the run length; evaluation during training uses that
same structure. ``prune(target_sparsity=x)`` and ``prune_family([x1, x2, ...])`` export other sizes, nested, from the
same run.
"""

from __future__ import annotations

import logging
import os

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..distillation.trainer import DistillationTrainer
from .config import PruningConfig
from .l0 import Gates, ModalAdaptiveL0Module, gates_applied
from .materialize import materialize
from .report import pruning_report
from .structure import MODALITIES

L0_STATE_NAME = "pruning_gates.safetensors"
L0_OPTIMIZER_NAME = "pruning_gates_optimizer.pt"
#: learned expected sparsity this far from the trained target: the gates had not converged (warned at export)
CONVERGENCE_TOLERANCE = 0.03

logger = logging.getLogger(__name__)


class _GateOptimizerStep(TrainerCallback):
    """Steps the gates' optimizer at every optimizer step of the model, then clamps ``log_alpha``; sets the
    Lagrangian warm-up from ``lagrangian_warmup_steps`` or, by default, ``lagrangian_warmup_ratio`` of the run."""

    def __init__(self, trainer: ModalAdaptivePruningTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer.l0_module.warmup_steps = args.lagrangian_warmup(state.max_steps)

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.trainer.step_gates()


class ModalAdaptivePruningTrainer(DistillationTrainer):
    """Fine-tune-prune a student with modal-adaptive L0 gates while distilling from a task teacher.

    Args:
        model: the student (any EfficientVLM task head), full size.
        args: a ``PruningConfig``.
        teacher_model: the task teacher (see ``DistillationTrainer``).
        **kwargs: everything else ``transformers.Trainer`` takes.

    Attributes:
        l0_module: the ``ModalAdaptiveL0Module`` (gates and multipliers; not part of the model).
        l0_optimizer: its AdamW.

    Logged in training, besides the distillation terms: ``lagrangian``; ``expected_sparsity`` (learned, from the keep
    probabilities) overall and ``expected_sparsity_<modality>``; ``sparsity`` (of the structure ``prune()`` would
    export, i.e. at the final target) and ``sparsity_<modality>``; ``deterministic_rule_sparsity`` (the paper's
    per-layer rule); ``target_sparsity`` (the ramped target); ``lambda_1``, ``lambda_2``; ``heads_kept``,
    ``cross_heads_kept``, ``ffn_kept`` (fractions of units kept in the exported structure).
    """

    def __init__(self, model=None, args: PruningConfig | None = None, teacher_model=None, **kwargs):
        if not isinstance(args, PruningConfig):
            raise TypeError(f"ModalAdaptivePruningTrainer needs args=PruningConfig(...), got {type(args).__name__}.")
        super().__init__(model=model, args=args, teacher_model=teacher_model, **kwargs)
        self.l0_module = ModalAdaptiveL0Module(
            model.config, args.target(), prune=args.pruned_structures(), modalities=args.pruned_modalities(),
            budget=args.budget, warmup_steps=args.lagrangian_warmup_steps or 0, text_length=args.budget_text_length,
            droprate_init=args.droprate_init,
        ).to(self.args.device)
        self.l0_optimizer = self.l0_module.create_optimizer(args.reg_learning_rate, args.lambda_learning_rate)
        self._final_gates_cache = None
        self.add_callback(_GateOptimizerStep(self))

    # ---- gates ---------------------------------------------------------------------------------------------------

    @property
    def gates_frozen(self) -> bool:
        step = self.args.freeze_gates_step
        return step is not None and self.state.global_step >= step

    def _student(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def training_step(self, model: nn.Module, inputs, num_items_in_batch=None):
        """One micro-batch with freshly sampled gates (the exported structure once the gates are frozen)."""
        self.l0_module.train(not self.gates_frozen)
        zs = self.l0_module() if not self.gates_frozen else self.final_gates()
        with gates_applied(self._student(), zs):
            return super().training_step(model, inputs, num_items_in_batch)

    def prediction_step(self, model: nn.Module, inputs, prediction_loss_only: bool, ignore_keys=None):
        """Evaluation forward with the exported structure (``final_gates()``): the model that ``prune()`` returns."""
        with gates_applied(self._student(), self.final_gates()):
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

    def extra_loss_terms(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """In training, while the gates learn: the Lagrangian sparsity constraint at the ramped target."""
        if not model.training or self.gates_frozen:
            return {}
        return {"lagrangian": self.l0_module.lagrangian(self.l0_module.target_at(self.state.global_step))}

    def step_gates(self) -> None:
        """Update ``log_alpha`` (descent) and the multipliers (ascent) from the accumulated gradients, clamp
        ``log_alpha``. Gradients are averaged over processes first, so every rank keeps identical gates."""
        if not self.gates_frozen:
            if self.accelerator.num_processes > 1:
                for parameter in self.l0_module.parameters():
                    if parameter.grad is not None:
                        torch.distributed.all_reduce(parameter.grad, op=torch.distributed.ReduceOp.SUM)
                        parameter.grad /= self.accelerator.num_processes
            self.l0_optimizer.step()
            self.l0_module.clamp_()
        self.l0_optimizer.zero_grad(set_to_none=True)

    # ---- materialisation -----------------------------------------------------------------------------------------

    def final_gates(self, target_sparsity: float | dict | None = None) -> Gates:
        """The hard 0/1 gates of the structure ``prune()`` exports at ``target_sparsity`` (default: the trained
        target): the target split between the encoders as the gates learned, and in each the units with the lowest
        keep probabilities removed until the exact size meets its share (``ModalAdaptiveL0Module.budget_gates``)."""
        key = (repr(target_sparsity), self._l0_version())  # recomputed only when the gates changed
        if self._final_gates_cache is None or self._final_gates_cache[0] != key:
            self._final_gates_cache = (key, _detached(self.l0_module.budget_gates(target_sparsity)))
        return self._final_gates_cache[1]

    def _l0_version(self) -> tuple:
        """Changes whenever a log_alpha is modified in place (optimizer step, clamp, checkpoint load)."""
        return tuple(p._version for p in self.l0_module.gate_parameters())

    def pruning_info(self, target_sparsity: float | dict | None = None, zs: Gates | None = None) -> dict:
        """What was asked and what came out: target, budget, the exported structure's exact sparsity (overall and
        per modality; of ``zs`` when given, else of ``final_gates(target_sparsity)``), the sparsity the gates had
        learned (expected, from the keep probabilities) and that of the paper's deterministic per-layer rule."""
        l0 = self.l0_module
        target = self.args.target() if target_sparsity is None else target_sparsity
        zs = self.final_gates(target_sparsity) if zs is None else zs

        def rounded(values):
            return {key: round(float(value), 6) for key, value in values.items()}

        with torch.no_grad():
            return {
                "method": "modal-adaptive L0 pruning (EfficientVLM), budget-exact export",
                "target_sparsity": target,
                "trained_target_sparsity": self.args.target(),
                "budget": self.args.budget,
                "pruned_structures": list(self.args.pruned_structures()),
                "pruned_modalities": list(self.args.pruned_modalities()),
                "achieved_sparsity": rounded(l0.expected_sparsity(zs=zs)),
                "learned_expected_sparsity": rounded(l0.expected_sparsity()),
                "deterministic_rule_sparsity": rounded(l0.expected_sparsity(zs=_detached(l0.deterministic()))),
            }

    def prune(self, target_sparsity: float | dict | None = None) -> nn.Module:
        """The materialised model at ``target_sparsity`` (default: the trained target): the budget-exact gates
        (``final_gates``) folded into the weights, Linear layers sliced, removed sub-blocks gone, and a config with
        the per-layer sizes (``config.pruning_info`` records the run). Any target in ``[0, 1)`` can be exported
        from one run; warns when the gates had not converged to the trained target."""
        info = self.pruning_info(target_sparsity)
        self._warn_if_not_converged(info)
        return materialize(self._student(), self.final_gates(target_sparsity), pruning_info=info)

    def prune_family(self, targets) -> list[nn.Module]:
        """One materialised model per target (strictly increasing), nested: every unit removed for a target is also
        removed for the larger ones (``efficientvlm.pruning.select_structures``)."""
        family = [_detached(zs) for zs in self.l0_module.budget_gates(list(targets))]
        infos = [{**self.pruning_info(target, zs), "family": list(targets)} for target, zs in zip(targets, family)]
        self._warn_if_not_converged(infos[0])  # learned and trained sparsity are the same for every member
        return [materialize(self._student(), zs, pruning_info=info) for zs, info in zip(family, infos)]

    def _warn_if_not_converged(self, info: dict) -> None:
        learned, trained = info["learned_expected_sparsity"], info["trained_target_sparsity"]
        gaps = ({"overall": trained} if not isinstance(trained, dict) else trained).items()
        for key, target in gaps:
            if abs(learned[key] - target) > CONVERGENCE_TOLERANCE:
                logger.warning(
                    "The pruning gates had not converged: their expected %s sparsity%s is %.3f, the trained target "
                    "%.3f. The exported model has the asked size anyway (the lowest-scored units were removed), but "
                    "the gates did not learn to do without them. Train longer, or let the sparsity move faster: a "
                    "shorter --lagrangian_warmup_ratio, a larger --reg_learning_rate / --lambda_learning_rate.",
                    self.args.budget, "" if key == "overall" else f" of {key}", learned[key], target)

    def pruning_report(self, pruned: nn.Module | None = None) -> dict:
        """Per modality and layer: heads (self, cross) and FFN width kept, parameters and FLOPs before and after,
        target vs achieved (see ``efficientvlm.pruning.pruning_report``)."""
        pruned = self.prune() if pruned is None else pruned
        target = pruned.config.pruning_info.get("target_sparsity", self.args.target())
        report = pruning_report(self._student(), pruned, target, budget=self.args.budget,
                                text_length=self.args.budget_text_length)
        info = pruned.config.pruning_info
        report["learned_expected_sparsity"] = info.get("learned_expected_sparsity")
        report["deterministic_rule_sparsity"] = info.get("deterministic_rule_sparsity")
        return report

    # ---- logging and checkpoints ---------------------------------------------------------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and not any(key.endswith("_runtime") for key in logs):
            logs.update(self._gate_statistics())
        super().log(logs, start_time)

    @torch.no_grad()
    def _gate_statistics(self) -> dict[str, float]:
        l0 = self.l0_module
        stats = {}
        for key, value in l0.expected_sparsity().items():
            stats["expected_sparsity" if key == "overall" else f"expected_sparsity_{key}"] = float(value)
        final = self.final_gates()
        for key, value in l0.expected_sparsity(zs=final).items():
            stats["sparsity" if key == "overall" else f"sparsity_{key}"] = float(value)
        stats["deterministic_rule_sparsity"] = float(l0.expected_sparsity(zs=_detached(l0.deterministic()))["overall"])
        target = l0.target_at(self.state.global_step)
        if isinstance(target, dict):
            stats.update({f"target_sparsity_{m}": t for m, t in target.items()})
        else:
            stats["target_sparsity"] = target
        stats["lambda_1"] = float(l0.lambda_1.sum())
        stats["lambda_2"] = float(l0.lambda_2.sum())
        for unit in ("heads", "cross_heads", "ffn"):
            gates = [layer[unit] for modality in MODALITIES for layer in final.get(modality, []) if unit in layer]
            if gates:
                stats[f"{unit}_kept"] = float(torch.cat([g.reshape(-1) for g in gates]).ne(0).float().mean())
        return stats

    def _save_checkpoint(self, model: nn.Module, trial) -> None:
        """The distillation checkpoint plus the gates, multipliers (safetensors) and their optimizer state."""
        if self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            os.makedirs(folder, exist_ok=True)
            state = {key: value.detach().cpu().contiguous() for key, value in self.l0_module.state_dict().items()}
            save_file(state, os.path.join(folder, L0_STATE_NAME))
            torch.save(self.l0_optimizer.state_dict(), os.path.join(folder, L0_OPTIMIZER_NAME))
        super()._save_checkpoint(model, trial)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """The distillation resume plus the gates, multipliers and their optimizer state."""
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = os.path.join(resume_from_checkpoint, L0_STATE_NAME)
        if not os.path.isfile(path):
            raise ValueError(
                f"{resume_from_checkpoint} has no {L0_STATE_NAME}: it was not written by ModalAdaptivePruningTrainer, "
                "so the pruning gates cannot be restored. Resume from one of this trainer's checkpoints."
            )
        # read on the CPU and copied onto the parameters' device (safetensors refuses 'cpu:0', a DDP CPU device)
        self.l0_module.load_state_dict(load_file(path))
        optimizer_path = os.path.join(resume_from_checkpoint, L0_OPTIMIZER_NAME)
        if os.path.isfile(optimizer_path):
            self.l0_optimizer.load_state_dict(torch.load(optimizer_path, map_location=self.args.device,
                                                         weights_only=True))


def _detached(zs: Gates) -> Gates:
    return {modality: [{key: value.detach() for key, value in layer.items()} for layer in layers]
            for modality, layers in zs.items()}


__all__ = ["ModalAdaptivePruningTrainer", "L0_STATE_NAME", "L0_OPTIMIZER_NAME"]
