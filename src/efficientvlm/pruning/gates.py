"""Hard-concrete L0 gates (Louizos et al., 2018), as used by CoFi and EfficientVLM.

A gate ``z`` in ``[0, 1]`` is a stretched and clipped binary-concrete variable with a learned location
``log_alpha``::

    u ~ U(eps, 1 - eps)
    s = sigmoid((log u - log(1 - u) + log_alpha) / beta)
    z = clamp(s * (r - l) + l, 0, 1)                     # training: a sample, differentiable in log_alpha
    P(z != 0) = sigmoid(log_alpha - beta * log(-l / r))  # keep probability, for the expected model size

with ``l = -0.1``, ``r = 1.1``, ``beta = 2/3``, ``eps = 1e-6``. Stretching past [0, 1] and clipping gives exact
zeros and ones a positive probability.

Evaluation uses the paper's deterministic rule, per *gate group* (the heads of one attention block, the neurons of
one FFN, or a single block gate): ``n0 = round(sum P(z = 0))`` gates with the lowest ``sigmoid(0.8 * log_alpha /
beta)`` are set to 0 and **all others to 1**. The official code (like CoFi) keeps the survivors at their
fractional score; hard 1s are used here so that the gated model is exactly the pruned model and nothing needs
folding into the weights (``materialize`` still folds fractional gates if it is given some).

``log_alpha`` is clamped to ``[log 0.01, log 100]`` after every optimiser step (``HardConcreteGate.clamp_``),
which bounds every keep probability to ``[0.047, 0.998]``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

LIMIT_LEFT = -0.1
LIMIT_RIGHT = 1.1
BETA = 2.0 / 3.0
EPSILON = 1e-6
LOG_ALPHA_MIN = math.log(0.01)
LOG_ALPHA_MAX = math.log(100.0)
#: the official code's "magical number": scores for the deterministic rule are sigmoid(0.8 * log_alpha / beta)
EVAL_SCORE_FACTOR = 0.8

_KEEP_SHIFT = BETA * math.log(-LIMIT_LEFT / LIMIT_RIGHT)  # log_alpha offset of P(z != 0): negative (-1.599)


def sample_hard_concrete(log_alpha: torch.Tensor) -> torch.Tensor:
    """One stochastic gate per entry of ``log_alpha``, differentiable with respect to ``log_alpha``."""
    u = torch.rand_like(log_alpha) * (1 - 2 * EPSILON) + EPSILON
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / BETA)
    return (s * (LIMIT_RIGHT - LIMIT_LEFT) + LIMIT_LEFT).clamp(0.0, 1.0)


def keep_probability(log_alpha: torch.Tensor) -> torch.Tensor:
    """``P(z != 0)`` for each gate (differentiable)."""
    return torch.sigmoid(log_alpha - _KEEP_SHIFT)


def deterministic_gates(log_alpha: torch.Tensor) -> torch.Tensor:
    """The evaluation gates of one gate group (the last dimension of ``log_alpha``), hard 0/1.

    ``n0 = round(sum P(z = 0))`` gates with the lowest ``sigmoid(0.8 * log_alpha / beta)`` are 0, the rest 1 (ties
    go to the lower index). Computed on device, without a host sync.
    """
    num_zeros = torch.round((1 - keep_probability(log_alpha)).sum(dim=-1, keepdim=True))
    score = torch.sigmoid(log_alpha * (EVAL_SCORE_FACTOR / BETA))
    rank = score.argsort(dim=-1, stable=True).argsort(dim=-1)  # 0 = lowest score
    return (rank >= num_zeros).to(log_alpha.dtype)


def log_alpha_from_droprate(droprate: float) -> float:
    """The initial ``log_alpha = log((1 - p) / p)`` for a drop rate ``p`` (the official ``droprate_init``)."""
    if not 0 < droprate < 1:
        raise ValueError(f"droprate_init must be in (0, 1), got {droprate}.")
    return math.log((1 - droprate) / droprate)


class HardConcreteGate(nn.Module):
    """A group of ``size`` hard-concrete gates with a learned ``log_alpha`` each.

    Args:
        size: number of gates (heads of a block, neurons of an FFN, or 1 for a block gate).
        droprate_init: initial ``log_alpha = log((1 - p) / p) + N(0, init_std)``. The default ``p = 0.01``
            (``log_alpha`` about 4.6, the upper clamp) starts every gate at keep probability 0.998, i.e. about 0
            expected sparsity; the official code's FFN init ``p = 0.5`` starts at 0.83 (17% expected sparsity).
        init_std: noise on the initial ``log_alpha`` (breaks ties of the deterministic rule, as in the official
            code).

    ``forward()`` returns a sample in training mode and the deterministic gates in eval mode.
    """

    def __init__(self, size: int, droprate_init: float = 0.01, init_std: float = 0.01):
        super().__init__()
        if size <= 0:
            raise ValueError(f"A gate group needs at least one gate, got size={size}.")
        mean = log_alpha_from_droprate(droprate_init)
        self.log_alpha = nn.Parameter(torch.randn(size) * init_std + mean)

    def forward(self) -> torch.Tensor:
        return self.sample() if self.training else self.deterministic()

    def sample(self) -> torch.Tensor:
        """Stochastic gates (differentiable)."""
        return sample_hard_concrete(self.log_alpha)

    def deterministic(self) -> torch.Tensor:
        """The hard 0/1 evaluation gates (no gradient)."""
        return deterministic_gates(self.log_alpha.detach())

    def keep_probability(self) -> torch.Tensor:
        """``P(z != 0)`` per gate (differentiable)."""
        return keep_probability(self.log_alpha)

    @torch.no_grad()
    def clamp_(self) -> None:
        """Clamp ``log_alpha`` to ``[log 0.01, log 100]`` in place (call after every optimiser step)."""
        self.log_alpha.clamp_(LOG_ALPHA_MIN, LOG_ALPHA_MAX)

    def extra_repr(self) -> str:
        return f"size={self.log_alpha.numel()}"
