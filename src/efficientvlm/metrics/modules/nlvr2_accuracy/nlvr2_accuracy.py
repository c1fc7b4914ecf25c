"""`evaluate` wrapper of :func:`efficientvlm.metrics.nlvr2.nlvr2_accuracy` (load with ``efficientvlm.metrics.load``)."""

import datasets
import evaluate

from efficientvlm.metrics.nlvr2 import nlvr2_accuracy

_DESCRIPTION = "NLVR2 accuracy: the fraction of statements whose predicted truth value (0/1) equals the label."

_INPUTS = """
Args:
    predictions (`list` of `int`): predicted labels, 1 = true, 0 = false.
    references (`list` of `int`): gold labels, 1 = true, 0 = false.
Returns:
    nlvr2_accuracy (`float`): a fraction in [0, 1].
"""

_CITATION = """@inproceedings{suhr2019nlvr2, title={A Corpus for Reasoning about Natural Language Grounded in
Photographs}, author={Suhr, Alane and others}, booktitle={ACL}, year={2019}}"""


class Nlvr2Accuracy(evaluate.Metric):
    """NLVR2 accuracy (see :func:`efficientvlm.metrics.nlvr2.nlvr2_accuracy`)."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        return {"nlvr2_accuracy": nlvr2_accuracy(predictions, references)}
