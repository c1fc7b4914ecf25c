"""``config.problem_type`` picks the VQA classifier's loss, the pipeline's scores and the logits KD distribution."""

from __future__ import annotations

import math

import pytest
import torch
from tests.distillation_helpers import tiny_batch, tiny_config
from tests.test_distillation import logged_terms, make_args

from efficientvlm import EfficientVLMConfig, EfficientVLMForVisualQuestionAnswering
from efficientvlm.distillation import DistillationTrainer
from efficientvlm.models.modeling_efficientvlm import vqa_classification_loss
from efficientvlm.student import create_student

SINGLE = "single_label_classification"


def test_single_label_loss_is_soft_target_cross_entropy_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 1.0], [1.0, 2.0, 3.0]])
    # one answer; two answers with scores 0.6 and 0.3 (normalised to 2/3, 1/3); no answer in the vocabulary
    labels = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.0, 0.3], [0.0, 0.0, 0.0]])

    def log_softmax(row, i):
        return row[i] - math.log(sum(math.exp(x) for x in row))

    rows = [logits[r].tolist() for r in range(3)]
    expected = (-log_softmax(rows[0], 0) - (2 / 3 * log_softmax(rows[1], 0) + 1 / 3 * log_softmax(rows[1], 2))
                + 0.0) / 3  # the question without an answer in the vocabulary adds 0 and still counts in the mean
    assert vqa_classification_loss(logits, labels, SINGLE).item() == pytest.approx(expected, rel=1e-6)
    # the default stays binary cross-entropy times the number of labels (ViLT / BUTD)
    bce = sum(-(y * math.log(1 / (1 + math.exp(-x))) + (1 - y) * math.log(1 - 1 / (1 + math.exp(-x))))
              for xs, ys in zip(rows, labels.tolist()) for x, y in zip(xs, ys)) / 9 * 3
    for problem_type in (None, "multi_label_classification"):
        assert vqa_classification_loss(logits, labels, problem_type).item() == pytest.approx(bce, rel=1e-6)


def test_the_model_trains_with_the_loss_its_config_names():
    torch.manual_seed(0)
    model = EfficientVLMForVisualQuestionAnswering(tiny_config(problem_type=SINGLE)).eval()
    inputs = tiny_batch(EfficientVLMForVisualQuestionAnswering)
    outputs = model(**inputs)
    assert outputs.loss.item() == pytest.approx(
        vqa_classification_loss(outputs.logits, inputs["labels"], SINGLE).item(), rel=1e-6)
    model.config.problem_type = None
    assert model(**inputs).loss.item() == pytest.approx(
        vqa_classification_loss(outputs.logits, inputs["labels"], None).item(), rel=1e-6)


def test_problem_type_round_trips_and_regression_is_refused(tmp_path):
    torch.manual_seed(0)
    model = EfficientVLMForVisualQuestionAnswering(tiny_config(problem_type=SINGLE))
    model.save_pretrained(tmp_path)
    assert EfficientVLMForVisualQuestionAnswering.from_pretrained(tmp_path).config.problem_type == SINGLE
    assert create_student(model, 2, 1, 1).config.problem_type == SINGLE
    with pytest.raises(ValueError, match="problem_type='regression' is not supported.*single_label_classification"):
        EfficientVLMConfig(problem_type="regression")


def test_distillation_compares_softmax_distributions_for_a_single_label_head(tmp_path):
    torch.manual_seed(0)
    teacher = EfficientVLMForVisualQuestionAnswering(tiny_config(problem_type=SINGLE))
    student = create_student(teacher, 2, 1, 1)
    with torch.no_grad():  # logits far enough from the teacher's for the two KL forms to differ
        student.classifier[-1].weight.add_(torch.randn_like(student.classifier[-1].weight))
    trainer = DistillationTrainer(model=student, args=make_args(tmp_path), teacher_model=teacher)
    inputs = tiny_batch(EfficientVLMForVisualQuestionAnswering)
    _, terms = logged_terms(trainer, inputs)
    with torch.no_grad():
        s, t = student(**inputs).logits, teacher(**inputs).logits
    kl = (t.softmax(-1) * (t.log_softmax(-1) - s.log_softmax(-1))).sum(-1).mean()
    assert terms["kd_logits"] == pytest.approx(kl.item(), rel=1e-4)
    # the multi-label head's per-label Bernoulli KL differs on the same logits
    bernoulli = (torch.sigmoid(t) * (torch.nn.functional.logsigmoid(t) - torch.nn.functional.logsigmoid(s))
                 + torch.sigmoid(-t) * (torch.nn.functional.logsigmoid(-t) - torch.nn.functional.logsigmoid(-s))
                 ).sum(-1).mean()
    assert abs(bernoulli.item() - kl.item()) > 1e-3


def test_a_student_with_another_problem_type_is_refused(tmp_path):
    torch.manual_seed(0)
    teacher = EfficientVLMForVisualQuestionAnswering(tiny_config(problem_type=SINGLE))
    student = create_student(teacher, 2, 1, 1)
    student.config.problem_type = "multi_label_classification"
    with pytest.raises(ValueError, match="problem_type='single_label_classification'.*create_student"):
        DistillationTrainer(model=student, args=make_args(tmp_path), teacher_model=teacher)
    student.config.problem_type = SINGLE
    DistillationTrainer(model=student, args=make_args(tmp_path), teacher_model=teacher)
