"""Knowledge-distillation loss terms: pure functions of student and teacher tensors.

Every term is a mean over the *valid* positions of a batch (padding excluded), computed in float32 whatever the
dtype of its inputs, with no host synchronisation. Conventions:

* ``logits_kd_loss``: ``tau^2 * KL(softmax(t / tau) || softmax(s / tau))`` per row, averaged over valid rows. The
  ``tau^2`` factor (Hinton et al., DistilBERT) keeps gradient sizes independent of ``tau``; at the paper's
  ``tau = 1`` it is the plain KL of the official code.
* ``multilabel_logits_kd_loss``: the same for sigmoid (multi-label) heads such as the VQA classifier, which is
  trained with binary cross-entropy on soft scores: the KL between the teacher's and the student's Bernoulli
  distributions, summed over labels (as the VQA task loss is), averaged over rows. It is 0 when the logits agree
  (a soft-target BCE would bottom out at the teacher's entropy instead).
* ``hidden_state_mse``: mean squared error over valid tokens and features, optionally through a learned
  projection of the student's states to the teacher's width (TinyBERT's ``W_h``).
* ``attention_map_mse``: TinyBERT / EfficientVLM-style MSE of post-softmax attention probabilities, summed over
  valid keys and averaged over heads and valid queries. Without padding this is ``MSE * key_length``, the
  official code's scaling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ``values`` over the positions where ``mask`` is non-zero (``mask`` has ``values``' shape).

    An all-zero mask gives 0, not NaN.
    """
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def logits_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None,
                   temperature: float = 1.0) -> torch.Tensor:
    """``tau^2 * KL(softmax(t / tau) || softmax(s / tau))`` over the last dimension, averaged over rows.

    Args:
        student_logits, teacher_logits: ``(..., num_classes)``, e.g. ITM ``(pairs, 2)`` or MLM ``(batch, seq, vocab)``.
        mask: ``(...)``: 1 for rows to distil (non-padding tokens), 0 elsewhere; ``None`` = every row.
        temperature: ``tau``.
    """
    _check_same_shape("logits", student_logits, teacher_logits)
    student_log_probs = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = F.kl_div(student_log_probs, teacher_log_probs, reduction="none", log_target=True).sum(-1)
    return masked_mean(kl, mask) * temperature**2


def multilabel_logits_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                              mask: torch.Tensor | None = None, temperature: float = 1.0) -> torch.Tensor:
    """``tau^2 * sum_labels KL(Bernoulli(sigmoid(t / tau)) || Bernoulli(sigmoid(s / tau)))``, averaged over rows.

    For multi-label heads trained with binary cross-entropy (the VQA classifier). Arguments as for
    ``logits_kd_loss``.
    """
    _check_same_shape("logits", student_logits, teacher_logits)
    student, teacher = student_logits.float() / temperature, teacher_logits.float() / temperature
    teacher_prob = torch.sigmoid(teacher)
    kl = (teacher_prob * (F.logsigmoid(teacher) - F.logsigmoid(student))
          + (1 - teacher_prob) * (F.logsigmoid(-teacher) - F.logsigmoid(-student)))
    return masked_mean(kl.sum(-1), mask) * temperature**2


def hidden_state_mse(student_states: torch.Tensor, teacher_states: torch.Tensor, mask: torch.Tensor | None = None,
                     projection: nn.Module | None = None) -> torch.Tensor:
    """Mean squared error between hidden states over valid tokens and all features.

    Args:
        student_states: ``(batch, seq, student_width)``.
        teacher_states: ``(batch, seq, teacher_width)``.
        mask: ``(batch, seq)``: 1 for real tokens, 0 for padding; ``None`` = every token (image patches).
        projection: maps the student's width to the teacher's (e.g. an ``nn.Linear``); needed when they differ.
    """
    if projection is not None:
        student_states = projection(student_states)
    if student_states.shape[-1] != teacher_states.shape[-1]:
        raise ValueError(
            f"Student hidden states have width {student_states.shape[-1]} but the teacher's {teacher_states.shape[-1]}:"
            " pass a projection (DistillationTrainer creates one per modality when the widths differ)."
        )
    _check_same_shape("hidden states", student_states, teacher_states)
    squared_error = (student_states.float() - teacher_states.float()).pow(2).mean(-1)
    return masked_mean(squared_error, mask)


def attention_map_mse(student_attentions: torch.Tensor, teacher_attentions: torch.Tensor,
                      query_mask: torch.Tensor | None = None, key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Squared error of attention probabilities, summed over valid keys, averaged over heads and valid queries.

    When the student and teacher have different numbers of heads (a pruned student), their head-averaged maps are
    compared instead.

    Args:
        student_attentions: ``(batch, heads_s, queries, keys)`` post-softmax probabilities.
        teacher_attentions: ``(batch, heads_t, queries, keys)``.
        query_mask: ``(batch, queries)``: 1 for real query tokens; ``None`` = all.
        key_mask: ``(batch, keys)``: 1 for real key tokens; ``None`` = all (image tokens of cross-attention).
    """
    student, teacher = student_attentions.float(), teacher_attentions.float()
    if student.shape[1] != teacher.shape[1]:
        student, teacher = student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)
    _check_same_shape("attention maps", student, teacher)
    squared_error = (student - teacher).pow(2)
    if key_mask is not None:
        squared_error = squared_error * key_mask[:, None, None, :].to(squared_error.dtype)
    per_query = squared_error.sum(-1).mean(1)  # (batch, queries)
    return masked_mean(per_query, query_mask)


def _check_same_shape(what: str, student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.shape != teacher.shape:
        raise ValueError(f"Student and teacher {what} differ in shape: {tuple(student.shape)} vs "
                         f"{tuple(teacher.shape)}.")


__all__ = ["masked_mean", "logits_kd_loss", "multilabel_logits_kd_loss", "hidden_state_mse", "attention_map_mse"]
