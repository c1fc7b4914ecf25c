"""``PruningConfig``: the training arguments of ``ModalAdaptivePruningTrainer``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..distillation.config import DistillationConfig
from .l0 import PRUNABLE_STRUCTURES
from .structure import ALL_MODALITIES, BUDGETS, model_modalities

#: default warm-up of the sparsity target, as a fraction of the run's optimizer steps
LAGRANGIAN_WARMUP_RATIO = 0.3


def _names(value: str | list[str] | tuple[str, ...], allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    names = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
    names = [n for n in names if n]
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise ValueError(f"{what}={value!r}: choose one or more of {', '.join(allowed)} (comma-separated).")
    return tuple(names)


@dataclass
class PruningConfig(DistillationConfig):
    """``DistillationConfig`` plus the knobs of modal-adaptive L0 pruning (EfficientVLM, paper Sec. 3).

    Example:

    ```python
    >>> args = PruningConfig(output_dir="out", target_sparsity=0.35, budget="flops", reg_learning_rate=0.05)
    >>> args.pruned_structures(), args.pruned_modalities()
    (('heads', 'ffn'), ('vision', 'text', 'fusion'))
    ```
    """

    target_sparsity: float = field(
        default=0.25,
        metadata={"help": "Fraction of the prunable size (see --budget) to remove, shared by all pruned modalities: "
                          "the model learns how to split it (modal-adaptive). The paper: 0.25 for retrieval, NLVR2 "
                          "and captioning, 0.35 for VQA."},
    )
    target_sparsity_per_modality: dict | str | None = field(
        default=None,
        metadata={"help": "Fixed per-modality targets instead of one shared budget, for comparison: a dict or JSON "
                          "string such as '{\"vision\": 0.4, \"text\": 0.2, \"fusion\": 0.2}'. Overrides "
                          "--target_sparsity."},
    )
    lagrangian_warmup_steps: int | None = field(
        default=None,
        metadata={"help": "Optimizer steps over which the target ramps linearly from 0 to its final value. Default "
                          "(None): --lagrangian_warmup_ratio of the run's optimizer steps."},
    )
    lagrangian_warmup_ratio: float = field(
        default=LAGRANGIAN_WARMUP_RATIO,
        metadata={"help": "The target's warm-up as a fraction of the run's optimizer steps (used when "
                          "--lagrangian_warmup_steps is not given), so it is never longer than the run. The paper "
                          "ramps over one of 10-20 epochs (5 to 10 percent); a longer ramp leaves the gates time to "
                          "follow."},
    )
    reg_learning_rate: float = field(
        default=0.1,
        metadata={"help": "Learning rate of the gates' log_alpha (AdamW, no weight decay, no schedule, no clipping). "
                          "Default 0.1 (the paper's NLVR2 value; 0.01 for the other tasks): AdamW moves log_alpha by "
                          "about this much per step and the gates start at log_alpha 4.6, so at 0.01 a run shorter "
                          "than ~500 steps cannot learn its sparsity (README: expected sparsity vs step)."},
    )
    lambda_learning_rate: float | None = field(
        default=0.03,
        metadata={"help": "Learning rate of the Lagrange multipliers lambda_1, lambda_2, which are maximised "
                          "(gradient ascent). Slower than the gates' by default: multipliers that grow as fast as the "
                          "gates move push the sparsity far past the target in short runs. None: --reg_learning_rate "
                          "(the paper)."},
    )
    prune_structures: str = field(
        default="heads,ffn",
        metadata={"help": "What gets gates: 'heads' (self- and cross-attention heads), 'ffn' (FFN neurons), 'blocks' "
                          "(whole attention / cross-attention / FFN sub-blocks; comma-separated). With 'heads,ffn' (the "
                          "paper's setting) a sub-block still vanishes when all its heads or neurons close. 'blocks' "
                          "adds one gate per sub-block; its keep probability lowers the expected size while the "
                          "deterministic gate stays open until it falls below 1/2, so the final sparsity can then "
                          "undershoot the target."},
    )
    prune_modalities: str = field(
        default="vision,text,fusion,decoder",
        metadata={"help": "Encoders that are pruned (comma-separated): vision, text, fusion, and decoder (the answer "
                          "decoder of generative VQA); the others stay whole. Modalities the model does not have (the "
                          "decoder, for every head but generative VQA) are skipped."},
    )
    budget: str = field(
        default="params",
        metadata={"help": "What the sparsity counts: 'params' (the paper: parameters of heads and FFNs) or 'flops' "
                          "(multiply-adds of one forward at --budget_text_length text tokens and the model's image "
                          "size, so vision, with the most tokens, is priced by its compute).",
                  "choices": list(BUDGETS)},
    )
    budget_text_length: int = field(
        default=40, metadata={"help": "Text tokens per example assumed by the FLOPs budget."},
    )
    droprate_init: float = field(
        default=0.01,
        metadata={"help": "Initial drop probability of every gate; 0.01 starts at ~0 expected sparsity (log_alpha "
                          "4.6, the upper clamp). The official code uses 0.5 for FFN neurons."},
    )
    freeze_gates_step: int | None = field(
        default=None,
        metadata={"help": "From this optimizer step on, the forward uses the deterministic (final) gates and the gates "
                          "and multipliers stop training, so the last steps fine-tune the pruned structure (the "
                          "paper's --stop_prune_epoch for VQA). Default (None): never."},
    )

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.target_sparsity_per_modality, str):
            try:
                self.target_sparsity_per_modality = json.loads(self.target_sparsity_per_modality)
            except json.JSONDecodeError as error:
                raise ValueError(f"target_sparsity_per_modality is not valid JSON: {error}") from error
        if self.reg_learning_rate <= 0:
            raise ValueError(f"reg_learning_rate must be > 0, got {self.reg_learning_rate}.")
        if not 0 <= self.lagrangian_warmup_ratio <= 1:
            raise ValueError(f"lagrangian_warmup_ratio must be in [0, 1] (a fraction of the run), got "
                             f"{self.lagrangian_warmup_ratio}.")
        if self.lagrangian_warmup_steps is not None and self.lagrangian_warmup_steps < 0:
            raise ValueError(f"lagrangian_warmup_steps must be >= 0, got {self.lagrangian_warmup_steps}.")
        if self.freeze_gates_step is not None and self.freeze_gates_step < 0:
            raise ValueError(f"freeze_gates_step must be >= 0, got {self.freeze_gates_step}.")
        self.pruned_structures()
        self.pruned_modalities()
        if self.budget not in BUDGETS:
            raise ValueError(f"budget={self.budget!r}: choose one of {BUDGETS}.")

    def lagrangian_warmup(self, total_steps: int) -> int:
        """Warm-up steps of the target for a run of ``total_steps`` optimizer steps."""
        if self.lagrangian_warmup_steps is not None:
            return self.lagrangian_warmup_steps
        return max(1, round(self.lagrangian_warmup_ratio * total_steps)) if total_steps > 0 else 0

    def pruned_structures(self) -> tuple[str, ...]:
        return _names(self.prune_structures, PRUNABLE_STRUCTURES, "prune_structures")

    def pruned_modalities(self, config=None) -> tuple[str, ...]:
        """The modalities named by ``prune_modalities``; with the model's ``config``, those the model has."""
        names = _names(self.prune_modalities, ALL_MODALITIES, "prune_modalities")
        if config is None:
            return names
        present = tuple(name for name in names if name in model_modalities(config))
        if not present:
            raise ValueError(f"prune_modalities={self.prune_modalities!r}: the model has none of them (its modalities: "
                             f"{', '.join(model_modalities(config))}).")
        return present

    def target(self) -> float | dict[str, float]:
        """The pruning target: one shared float, or the fixed per-modality dict."""
        return self.target_sparsity_per_modality or self.target_sparsity


__all__ = ["PruningConfig"]
