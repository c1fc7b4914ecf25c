"""The EfficientVLM model family. Every module here is also shipped to the Hub as remote code."""

from .configuration_efficientvlm import (
    EfficientVLMConfig,
    EfficientVLMDecoderConfig,
    EfficientVLMFusionConfig,
    EfficientVLMGenerativeVQAConfig,
    EfficientVLMTextConfig,
    EfficientVLMVisionConfig,
)
from .image_processing_efficientvlm import EfficientVLMImageProcessor
from .modeling_efficientvlm import (
    EfficientVLMForCaptioning,
    EfficientVLMForGenerativeVQA,
    EfficientVLMForImageTextRetrieval,
    EfficientVLMForNLVR2,
    EfficientVLMForPreTraining,
    EfficientVLMForVisualQuestionAnswering,
    EfficientVLMModel,
    EfficientVLMPreTrainedModel,
)
from .pipeline_efficientvlm import EfficientVLMVQAPipeline
from .processing_efficientvlm import EfficientVLMProcessor
