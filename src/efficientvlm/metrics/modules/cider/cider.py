"""`evaluate` wrapper of :func:`efficientvlm.metrics.caption.cider_d` (load with ``efficientvlm.metrics.load``)."""

import datasets
import evaluate

from efficientvlm.metrics.caption import cider_d

_DESCRIPTION = """CIDEr-D as computed by coco-caption (pycocoevalcap): TF-IDF n-gram (1..4) cosine similarity with
clipping and a Gaussian length penalty (sigma 6), x10, document frequencies from the evaluated references.
Captions are tokenised by efficientvlm's simple tokenizer (lower-case, punctuation stripped), not PTB."""

_INPUTS = """
Args:
    predictions (`list` of `str`): one generated caption per image.
    references (`list` of `list` of `str`): the reference captions of each image.
    n (`int`, optional): maximum n-gram order, default 4.
    sigma (`float`, optional): length-penalty width, default 6.0.
Returns:
    cider (`float`): corpus CIDEr-D on the coco-caption scale (papers report 100x this value).
"""

_CITATION = """@inproceedings{vedantam2015cider, title={{CIDEr}: Consensus-based Image Description Evaluation},
author={Vedantam, Ramakrishna and Zitnick, C. Lawrence and Parikh, Devi}, booktitle={CVPR}, year={2015}}"""


class Cider(evaluate.Metric):
    """CIDEr-D (see :func:`efficientvlm.metrics.caption.cider_d`)."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.List(datasets.Value("string"))}
            ),
        )

    def _compute(self, predictions, references, n=4, sigma=6.0):
        return {"cider": cider_d(predictions, references, n=n, sigma=sigma)}
