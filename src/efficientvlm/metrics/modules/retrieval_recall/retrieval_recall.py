"""`evaluate` wrapper of :func:`efficientvlm.metrics.retrieval.retrieval_recall`.

Load it with ``efficientvlm.metrics.load("retrieval_recall")``.
"""

import datasets
import evaluate

from efficientvlm.metrics.retrieval import retrieval_recall

_DESCRIPTION = """Image-text retrieval recall@K in both directions (ALBEF / X-VLM `itm_eval` keys, percentages).
One example per image: its row of image->text similarities and the indices of its gold texts. A gold text
tied with a non-gold text is ranked after it (pessimistic ties)."""

_INPUTS = """
Args:
    predictions (`list` of `list` of `float`): per image, the similarity to every text (the rows of the
        [n_img, n_txt] score matrix, all in the same text order).
    references (`list` of `list` of `int`): per image, the indices of its gold texts.
    txt2img (`list` of `int`, optional): gold image of every text; by default derived from `references`
        (every text must then be gold for exactly one image).
    ks (`tuple` of `int`, optional): cut-offs, default (1, 5, 10).
Returns:
    txt_r1, txt_r5, txt_r10, txt_r_mean (image->text), img_r1, img_r5, img_r10, img_r_mean (text->image),
    r_mean: percentages.
"""

_CITATION = """@inproceedings{li2021albef, title={Align before Fuse: Vision and Language Representation Learning
with Momentum Distillation}, author={Li, Junnan and others}, booktitle={NeurIPS}, year={2021}}"""


class RetrievalRecall(evaluate.Metric):
    """Retrieval recall@K (see :func:`efficientvlm.metrics.retrieval.retrieval_recall`)."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=datasets.Features(
                {
                    "predictions": datasets.List(datasets.Value("float64")),
                    "references": datasets.List(datasets.Value("int64")),
                }
            ),
        )

    def _compute(self, predictions, references, txt2img=None, ks=(1, 5, 10)):
        img2txt = [list(r) for r in references]
        if txt2img is None:
            n_txt = len(predictions[0]) if len(predictions) else 0
            owner = [-1] * n_txt
            for img, texts in enumerate(img2txt):
                for t in texts:
                    if not 0 <= t < n_txt:
                        raise ValueError(f"image {img} lists text {t}, outside [0, {n_txt})")
                    if owner[t] != -1:
                        raise ValueError(f"text {t} is gold for images {owner[t]} and {img}; pass txt2img")
                    owner[t] = img
            missing = [t for t, img in enumerate(owner) if img == -1]
            if missing:
                raise ValueError(f"texts {missing[:5]} are gold for no image; pass txt2img")
            txt2img = owner
        return retrieval_recall(predictions, txt2img, img2txt, ks=tuple(ks))
