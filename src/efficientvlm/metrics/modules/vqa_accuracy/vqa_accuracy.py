"""`evaluate` wrapper of :func:`efficientvlm.metrics.vqa.vqa_accuracy` (load with ``efficientvlm.metrics.load``)."""

import datasets
import evaluate

from efficientvlm.metrics.vqa import vqa_accuracy

_DESCRIPTION = """VQA accuracy with the official answer normalisation: an answer scores min(1, #annotators who
gave it / 3), averaged over the ten leave-one-annotator-out subsets when 10 answers are given."""

_INPUTS = """
Args:
    predictions (`list` of `str`): one predicted answer per question.
    references (`list` of `list` of `str`): the annotators' answers of each question (10 for VQAv2).
Returns:
    vqa_accuracy (`float`): mean accuracy, a fraction in [0, 1].
Example:
    >>> metric = efficientvlm.metrics.load("vqa_accuracy")
    >>> metric.compute(predictions=["Two"], references=[["2"] * 10])
    {'vqa_accuracy': 1.0}
"""

_CITATION = """@inproceedings{antol2015vqa, title={{VQA}: Visual Question Answering},
author={Antol, Stanislaw and others}, booktitle={ICCV}, year={2015}}"""


class VqaAccuracy(evaluate.Metric):
    """VQA accuracy (see :func:`efficientvlm.metrics.vqa.vqa_accuracy`)."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.List(datasets.Value("string"))}
            ),
        )

    def _compute(self, predictions, references):
        return {"vqa_accuracy": vqa_accuracy(predictions, references)}
