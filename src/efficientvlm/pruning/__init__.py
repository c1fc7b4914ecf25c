"""Modal-adaptive pruning of EfficientVLM models: L0 gates, their Lagrangian, materialisation and reports.

``ModalAdaptivePruningTrainer`` (with ``PruningConfig``) does all of it inside a ``transformers.Trainer`` while
distilling from a task teacher::

    trainer = ModalAdaptivePruningTrainer(model=student, teacher_model=teacher, args=PruningConfig(...), ...)
    trainer.train()
    pruned = trainer.prune()                       # smaller dense model of exactly the target size
    small, smaller = trainer.prune_family([0.35, 0.5])   # more sizes from the same run, nested
    save_report(trainer.pruning_report(pruned), output_dir)

One-shot, without L0 training (then recover with ``DistillationTrainer``)::

    pruned = one_shot_prune(student, calibration_batches, target_sparsity=0.5, budget="flops")

The building blocks, for other training loops (see ``ModalAdaptiveL0Module``)::

    l0 = ModalAdaptiveL0Module(model.config, target_sparsity=0.25, warmup_steps=steps_per_epoch)
    l0_optimizer = l0.create_optimizer(lr=0.01)
    for step, batch in enumerate(loader):
        zs = l0()                                    # sampled gates (training mode)
        with l0.applied(model, zs):
            loss = model(**batch).loss + l0.lagrangian(l0.target_at(step))
            loss.backward()
        optimizer.step(); l0_optimizer.step(); l0.clamp_()
        optimizer.zero_grad(); l0_optimizer.zero_grad()
    pruned = materialize(model, l0.budget_gates())        # exactly the target size
    save_report(pruning_report(model, pruned, target=0.25), output_dir)
    pruned.save_pretrained(output_dir)
"""

from .budget import select_structure, select_structures, sparsity_of
from .gates import HardConcreteGate, deterministic_gates, keep_probability, sample_hard_concrete
from .l0 import PRUNABLE_STRUCTURES, ModalAdaptiveL0Module, apply_gates, clear_gates, gates_applied
from .materialize import keep_lists_from_gates, materialize, prune_model
from .report import plot_report, pruning_report, save_report
from .structure import ALL_MODALITIES, MODALITIES, layer_sizes, model_modalities, prunable_parameter_count
from .config import PruningConfig  # noqa: E402  (imports the distillation package, which imports the models)
from .trainer import L0_OPTIMIZER_NAME, L0_STATE_NAME, ModalAdaptivePruningTrainer  # noqa: E402
from .importance import importance_scores, one_shot_prune, per_unit_of_cost  # noqa: E402

__all__ = [
    "L0_OPTIMIZER_NAME",
    "L0_STATE_NAME",
    "ALL_MODALITIES",
    "MODALITIES",
    "ModalAdaptivePruningTrainer",
    "PruningConfig",
    "PRUNABLE_STRUCTURES",
    "HardConcreteGate",
    "ModalAdaptiveL0Module",
    "apply_gates",
    "clear_gates",
    "deterministic_gates",
    "gates_applied",
    "importance_scores",
    "keep_lists_from_gates",
    "keep_probability",
    "layer_sizes",
    "materialize",
    "model_modalities",
    "one_shot_prune",
    "per_unit_of_cost",
    "plot_report",
    "prunable_parameter_count",
    "prune_model",
    "pruning_report",
    "sample_hard_concrete",
    "save_report",
    "select_structure",
    "select_structures",
    "sparsity_of",
]
