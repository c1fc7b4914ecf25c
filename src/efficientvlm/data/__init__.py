"""Data for EfficientVLM: the synthetic ``shapes`` benchmark, loaders for the real annotation formats, collators
(``VQACollator(group_images=True)`` with ``ImageGroupedSampler`` encodes each image once for all its questions in a
batch), and ``ImageTextStream`` for pre-training pairs streamed from tar shards or ``datasets`` streams."""

from .collators import (
    CaptioningCollator,
    GenerativeVQACollator,
    NLVR2Collator,
    RetrievalCollator,
    VQACollator,
    answer_weights,
    vqa_soft_labels,
)
from .loaders import (
    AnnotationError,
    LazyImageDecoder,
    MissingImageError,
    build_answer_vocabulary,
    coco_image_filename,
    load_karpathy,
    load_nlvr2,
    load_vqav2,
    load_xvlm_caption_groups,
    load_xvlm_caption_pairs,
    load_xvlm_nlvr2,
    load_xvlm_vqa,
    retrieval_targets,
)
from .shapes import (
    ShapesConfig,
    answer_vocabulary,
    build_tokenizer,
    make_caption_dataset,
    make_nlvr2_dataset,
    make_vqa_dataset,
    text_vocabulary,
)
from .sampling import ImageGroupedSampler, ImageGroupedSamplingMixin, ImageGroupedTrainer
from .streaming import BadSampleError, ImageTextStream, expand_shards

__all__ = [
    "AnnotationError",
    "BadSampleError",
    "CaptioningCollator",
    "GenerativeVQACollator",
    "ImageGroupedSampler",
    "ImageGroupedSamplingMixin",
    "ImageGroupedTrainer",
    "ImageTextStream",
    "LazyImageDecoder",
    "MissingImageError",
    "NLVR2Collator",
    "RetrievalCollator",
    "ShapesConfig",
    "VQACollator",
    "answer_vocabulary",
    "answer_weights",
    "build_answer_vocabulary",
    "build_tokenizer",
    "coco_image_filename",
    "expand_shards",
    "load_karpathy",
    "load_nlvr2",
    "load_vqav2",
    "load_xvlm_caption_groups",
    "load_xvlm_caption_pairs",
    "load_xvlm_nlvr2",
    "load_xvlm_vqa",
    "make_caption_dataset",
    "make_nlvr2_dataset",
    "make_vqa_dataset",
    "retrieval_targets",
    "text_vocabulary",
    "vqa_soft_labels",
]
