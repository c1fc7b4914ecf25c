"""``ModalAdaptivePruningTrainer``: distil a task teacher into a student while learning which heads, FFN neurons and
sub-blocks of its three encoders to remove under one sparsity budget.

Each training step samples hard-concrete gates from the trainer's ``ModalAdaptiveL0Module``, sets them on the
student's pruning hooks for the step's forward *and* backward (gradient checkpointing replays the forward), and adds
the Lagrangian ``lambda_1 (s - t) + lambda_2 (s - t)^2`` to the distillation loss. The gates (``log_alpha``) and the
multipliers live outside the model, in their own AdamW (the multipliers maximised), stepped at every optimizer
step: the model's LR schedule, weight decay and gradient clipping never touch them. Checkpoints carry the gates, the
multipliers and their optimizer state (``checkpointed_state``: written on save, restored by ``train`` on resume under
every backend, DeepSpeed included), so a run resumes where it stopped.

The gates are set on the student's own layers (their gate buffers), so they reach the forward however the student is
wrapped; ``prune()`` gathers the full parameters of a sharded student first (FSDP, DeepSpeed ZeRO-3) and prunes an
unwrapped copy.

Mixed precision and non-finite values: before each optimizer step the gates' and multipliers' gradients are averaged
over processes and, under fp16, unscaled by the GradScaler (``scaler.unscale_(l0_optimizer)``, so their overflow
also lowers the scale); they are checked with the model's (``DistillationTrainer``'s numerics check). Their step is
skipped whenever the model's was (the GradScaler found an overflow, or ``skip_nonfinite_batches`` dropped the step)
and whenever their own unscaled gradients are not finite, so an overflow never reaches ``log_alpha`` or the
multipliers.

The exported structure is *budget-exact*: ``prune()`` spreads the target over the three encoders in the proportions
the gates learned and removes, in each, the units with the lowest keep probabilities until the model has exactly the
asked size (``ModalAdaptiveL0Module.budget_gates``), whatever the run length; evaluation during training uses that
same structure. ``prune(target_sparsity=x)`` and ``prune_family([x1, x2, ...])`` export other sizes, nested, from the
same run.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from transformers import TrainerCallback

from ..distillation.numerics import all_finite
from ..distillation.trainer import DistillationTrainer
from .config import PruningConfig
from .distributed import full_model
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
    """Steps the gates' optimizer after every optimizer step of the model (``step_gates``: skipped with the model's);
    sets the Lagrangian warm-up from ``lagrangian_warmup_steps`` or, by default, ``lagrangian_warmup_ratio`` of the
    run."""

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
        self.checkpointed_state.register(
            L0_STATE_NAME, self.l0_module,
            missing="it was not written by ModalAdaptivePruningTrainer, so the pruning gates cannot be restored. "
                    "Resume from one of this trainer's checkpoints.")
        self.checkpointed_state.register(L0_OPTIMIZER_NAME, self.l0_optimizer)
        self._scale_before_step: float | None = None  # the GradScaler's scale before this optimizer step
        self._final_gates_cache = None
        self.add_callback(_GateOptimizerStep(self))

    # ---- gates ---------------------------------------------------------------------------------------------------

    @property
    def gates_frozen(self) -> bool:
        step = self.args.freeze_gates_step
        return step is not None and self.state.global_step >= step

    def _student(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def _full_student(self) -> nn.Module:
        """The unwrapped student with every parameter whole: itself, or under FSDP / ZeRO-3 a copy loaded with the
        gathered parameters (a collective: every process calls ``prune()``, and every process gets the model)."""
        return full_model(self.model_wrapped)

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

    def _prepare_auxiliary_gradients(self) -> None:
        """Before the numerics check and the model's optimizer step: average the gates' and multipliers' gradients
        over processes (so every rank keeps identical gates) and, under fp16 loss scaling, unscale them with the
        GradScaler, which also records their overflow for its next scale update."""
        if self.gates_frozen:
            return
        if self.accelerator.num_processes > 1:
            for parameter in self.l0_module.parameters():
                if parameter.grad is not None:
                    torch.distributed.all_reduce(parameter.grad, op=torch.distributed.ReduceOp.SUM)
                    parameter.grad /= self.accelerator.num_processes
        scaler = self._loss_scaler()
        self._scale_before_step = scaler.get_scale() if scaler is not None else None
        if scaler is not None:
            scaler.unscale_(self.l0_optimizer)

    def _step_gradients(self):
        """The model's and projections' gradients, and the gates' and multipliers'."""
        yield from super()._step_gradients()
        for name, parameter in self.l0_module.named_parameters():
            yield f"l0_module.{name}", parameter.grad

    def gate_step_overflowed(self) -> bool:
        """After the model's ``optimizer.step()``, under fp16 loss scaling: whether this step overflowed, in the
        model's gradients or in the gates' own.

        Accelerate's ``optimizer_step_was_skipped`` alone misses it with fused optimizers (transformers' default
        ``adamw_torch_fused``): the GradScaler lets them skip the update inside their own ``step()``, which
        Accelerate then counts as taken. So the scale is compared too: ``GradScaler.update()`` lowers it exactly
        when an overflow was found in any optimizer it unscaled (the model's, and the gates' in
        ``_prepare_auxiliary_gradients``). The gates' unscaled gradients are also checked directly."""
        scaler = self._loss_scaler()
        if scaler is None:
            return False  # no loss scaling: the numerics check before the step has covered every gradient
        if self.accelerator.optimizer_step_was_skipped:
            return True
        if self._scale_before_step is not None and scaler.get_scale() < self._scale_before_step:
            return True
        return not bool(all_finite(p.grad for p in self.l0_module.parameters()))

    def _discard_step_gradients(self) -> None:
        super()._discard_step_gradients()
        self.l0_optimizer.zero_grad(set_to_none=True)

    def step_gates(self) -> None:
        """After the model's optimizer step: update ``log_alpha`` (descent) and the multipliers (ascent) from the
        accumulated gradients (averaged over processes and unscaled before the step), clamp ``log_alpha``.

        Skipped - gates and multipliers unchanged - when the gates are frozen, when ``skip_nonfinite_batches``
        dropped the step, and under fp16 when the GradScaler found an overflow (``gate_step_overflowed``)."""
        skip = self.gates_frozen or self._step_discarded or self.gate_step_overflowed()
        if not skip:
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
        from one run; warns when the gates had not converged to the trained target. Under FSDP and DeepSpeed ZeRO-3
        the full parameters are gathered first, on every process (call it on every process)."""
        info = self.pruning_info(target_sparsity)
        self._warn_if_not_converged(info)
        return materialize(self._full_student(), self.final_gates(target_sparsity), pruning_info=info)

    def prune_family(self, targets) -> list[nn.Module]:
        """One materialised model per target (strictly increasing), nested: every unit removed for a target is also
        removed for the larger ones (``efficientvlm.pruning.select_structures``)."""
        family = [_detached(zs) for zs in self.l0_module.budget_gates(list(targets))]
        infos = [{**self.pruning_info(target, zs), "family": list(targets)} for target, zs in zip(targets, family)]
        self._warn_if_not_converged(infos[0])  # learned and trained sparsity are the same for every member
        student = self._full_student()
        return [materialize(student, zs, pruning_info=info) for zs, info in zip(family, infos)]

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
        report = pruning_report(self._full_student(), pruned, target, budget=self.args.budget,
                                text_length=self.args.budget_text_length)
        info = pruned.config.pruning_info
        report["learned_expected_sparsity"] = info.get("learned_expected_sparsity")
        report["deterministic_rule_sparsity"] = info.get("deterministic_rule_sparsity")
        return report

    # ---- logging ---------------------------------------------------------------------------------------------

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

    def _checkpoint_tensors(self):
        """The distillation trainer's, plus the gates, multipliers and their optimizer state."""
        yield from super()._checkpoint_tensors()
        for name, value in self.l0_module.state_dict().items():
            yield f"l0_module.{name}", value
        for index, state in self.l0_optimizer.state_dict()["state"].items():
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    yield f"l0_optimizer.state.{index}.{key}", value


def _detached(zs: Gates) -> Gates:
    return {modality: [{key: value.detach() for key, value in layer.items()} for layer in layers]
            for modality, layers in zs.items()}


__all__ = ["ModalAdaptivePruningTrainer", "L0_STATE_NAME", "L0_OPTIMIZER_NAME"]
