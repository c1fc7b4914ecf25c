"""`evaluate` wrapper of :func:`efficientvlm.metrics.caption.bleu_scores` (load with ``efficientvlm.metrics.load``)."""

import datasets
import evaluate

from efficientvlm.metrics.caption import bleu_scores

_DESCRIPTION = """Corpus-level BLEU-1..4 with multiple references and the brevity penalty (Papineni et al.), as in
coco-caption, on efficientvlm's simple tokenizer (lower-case, punctuation stripped). No smoothing."""

_INPUTS = """
Args:
    predictions (`list` of `str`): one generated caption per image.
    references (`list` of `list` of `str`): the reference captions of each image.
    max_n (`int`, optional): highest n-gram order, default 4.
Returns:
    bleu_1 ... bleu_{max_n} (`float`): cumulative BLEU scores in [0, 1]; `bleu` is BLEU-{max_n}.
"""

_CITATION = """@inproceedings{papineni2002bleu, title={{BLEU}: a Method for Automatic Evaluation of Machine
Translation}, author={Papineni, Kishore and Roukos, Salim and Ward, Todd and Zhu, Wei-Jing}, booktitle={ACL},
year={2002}}"""


class Bleu(evaluate.Metric):
    """Corpus BLEU (see :func:`efficientvlm.metrics.caption.bleu_scores`)."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.List(datasets.Value("string"))}
            ),
        )

    def _compute(self, predictions, references, max_n=4):
        scores = bleu_scores(predictions, references, max_n=max_n)
        return {"bleu": scores[f"bleu_{max_n}"], **scores}
