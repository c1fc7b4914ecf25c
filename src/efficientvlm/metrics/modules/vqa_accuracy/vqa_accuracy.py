"""`evaluate` wrapper of :func:`efficientvlm.metrics.vqa.vqa_accuracy_breakdown`.

Load it with ``efficientvlm.metrics.load("vqa_accuracy")``.
"""

import datasets
import evaluate

from efficientvlm.metrics.vqa import vqa_accuracy_breakdown

_DESCRIPTION = """VQA accuracy as the official VQA evaluation (vqaEval.py of the VQA API) computes it, by default: the
prediction is normalised (punctuation, lower case, number words, articles, contractions), the annotators' answers
only get the punctuation step and only when they disagree, and an answer scores the mean over annotators of
min(1, #other annotators who gave it / 3). official=False gives the smoothed variant (both sides fully normalised;
min(1, #annotators / 3) with fewer than 10 answers). See the docstring of efficientvlm.metrics.vqa."""

_INPUTS = """
Args:
    predictions (`list` of `str`): one predicted answer per question.
    references (`list` of `list` of `str`): the annotators' answers of each question (10 for VQAv2).
    official (`bool`, optional): the official evaluation's rules (default True) or the smoothed ones (False).
    question_types (`list` of `str`, optional): one per question, over all batches added; adds
        `per_question_type`.
    answer_types (`list` of `str`, optional): one per question ("yes/no", "number", "other" in VQAv2); adds
        `per_answer_type`.
Returns:
    vqa_accuracy (`float`): mean accuracy, a fraction in [0, 1] (the official script prints round(100 * x, 2)).
    per_question_type, per_answer_type (`dict`, when the types are given): {type: mean accuracy of its questions}.
Example:
    >>> metric = efficientvlm.metrics.load("vqa_accuracy")
    >>> metric.compute(predictions=["Two"], references=[["2"] * 10])
    {'vqa_accuracy': 1.0}
"""

_CITATION = """@inproceedings{antol2015vqa, title={{VQA}: Visual Question Answering},
author={Antol, Stanislaw and others}, booktitle={ICCV}, year={2015}}"""


class VqaAccuracy(evaluate.Metric):
    """VQA accuracy (see :func:`efficientvlm.metrics.vqa.vqa_accuracy_breakdown`)."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.List(datasets.Value("string"))}
            ),
        )

    def _compute(self, predictions, references, official=True, question_types=None, answer_types=None):
        result = vqa_accuracy_breakdown(
            predictions, [list(r) for r in references], question_types=question_types, answer_types=answer_types,
            official=official,
        )
        result.pop("per_question")
        return result
