"""efficientvlm: EfficientVLM (distillation + modal-adaptive pruning) as native Hugging Face classes.

Importing the package registers the model family with the Auto classes (``AutoConfig``, ``AutoModel``,
``AutoModelForVisualQuestionAnswering`` - the classifier or, for ``EfficientVLMGenerativeVQAConfig`` checkpoints, the
generative answer decoder -, ``AutoModelForPreTraining``, ``AutoImageProcessor``, ``AutoProcessor``) and
the ``visual-question-answering`` pipeline, which transformers 5 no longer ships.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForPreTraining,
    AutoModelForVisualQuestionAnswering,
    AutoProcessor,
)
from transformers import pipelines as _pipelines

from .models import (
    EfficientVLMConfig,
    EfficientVLMDecoderConfig,
    EfficientVLMForCaptioning,
    EfficientVLMForGenerativeVQA,
    EfficientVLMForImageTextRetrieval,
    EfficientVLMForNLVR2,
    EfficientVLMForPreTraining,
    EfficientVLMForVisualQuestionAnswering,
    EfficientVLMFusionConfig,
    EfficientVLMGenerativeVQAConfig,
    EfficientVLMImageProcessor,
    EfficientVLMModel,
    EfficientVLMPreTrainedModel,
    EfficientVLMProcessor,
    EfficientVLMTextConfig,
    EfficientVLMVisionConfig,
    EfficientVLMVQAPipeline,
)
from .lora import default_lora_targets, lora_config
from .student import create_student, uniform_layer_choice

__version__ = "0.1.0.dev0"

VQA_TASK = "visual-question-answering"


def _register() -> None:
    AutoConfig.register(EfficientVLMConfig.model_type, EfficientVLMConfig, exist_ok=True)
    AutoModel.register(EfficientVLMConfig, EfficientVLMModel, exist_ok=True)
    AutoModelForPreTraining.register(EfficientVLMConfig, EfficientVLMForPreTraining, exist_ok=True)
    AutoModelForVisualQuestionAnswering.register(
        EfficientVLMConfig, EfficientVLMForVisualQuestionAnswering, exist_ok=True
    )
    AutoImageProcessor.register(
        EfficientVLMConfig, image_processor_classes={"pil": EfficientVLMImageProcessor}, exist_ok=True
    )
    AutoProcessor.register(EfficientVLMConfig, EfficientVLMProcessor, exist_ok=True)
    # Generative VQA has its own config class, so that AutoModelForVisualQuestionAnswering picks the head from the
    # checkpoint's model_type (classifier: "efficientvlm", answer decoder: "efficientvlm_generative_vqa").
    generative = EfficientVLMGenerativeVQAConfig
    AutoConfig.register(generative.model_type, generative, exist_ok=True)
    AutoModelForVisualQuestionAnswering.register(generative, EfficientVLMForGenerativeVQA, exist_ok=True)
    # AutoModel gives the bare encoders, as for every other head. AutoModel.register insists that the model's
    # config_class is the registered config, which EfficientVLMModel's (the parent class) is not: map it directly.
    AutoModel._model_mapping.register(generative, EfficientVLMModel, exist_ok=True)
    AutoImageProcessor.register(
        generative, image_processor_classes={"pil": EfficientVLMImageProcessor}, exist_ok=True
    )
    AutoProcessor.register(generative, EfficientVLMProcessor, exist_ok=True)
    # transformers 5 lists "visual-question-answering" as a removed task and refuses it before consulting the
    # pipeline registry; give the name back to this library's pipeline.
    getattr(_pipelines, "REMOVED_TASKS", {}).pop(VQA_TASK, None)
    _pipelines.PIPELINE_REGISTRY.register_pipeline(
        VQA_TASK, pipeline_class=EfficientVLMVQAPipeline, pt_model=AutoModelForVisualQuestionAnswering,
        type="multimodal",
    )


_register()

__all__ = [
    "EfficientVLMConfig",
    "EfficientVLMVisionConfig",
    "EfficientVLMTextConfig",
    "EfficientVLMFusionConfig",
    "EfficientVLMDecoderConfig",
    "EfficientVLMGenerativeVQAConfig",
    "EfficientVLMPreTrainedModel",
    "EfficientVLMModel",
    "EfficientVLMForPreTraining",
    "EfficientVLMForVisualQuestionAnswering",
    "EfficientVLMForImageTextRetrieval",
    "EfficientVLMForNLVR2",
    "EfficientVLMForCaptioning",
    "EfficientVLMForGenerativeVQA",
    "EfficientVLMImageProcessor",
    "EfficientVLMProcessor",
    "EfficientVLMVQAPipeline",
    "create_student",
    "default_lora_targets",
    "lora_config",
    "uniform_layer_choice",
]
