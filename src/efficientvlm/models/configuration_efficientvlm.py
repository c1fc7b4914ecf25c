"""EfficientVLM configuration.

One config with three sub-configs (vision, text, fusion). The config is the single source of truth for every
shape in the model, including the per-layer sizes of a pruned model:

* ``num_attention_heads`` (and, for fusion, ``num_cross_attention_heads``) and ``intermediate_size`` are either
  an ``int`` (the same for every layer) or a ``list`` with one entry per layer;
* ``0`` means that sub-block is absent in that layer: the residual stream passes through unchanged;
* ``head_dim`` is stored explicitly, because removing heads does not change the width of the remaining ones.

Defaults are the paper's teacher, X-VLM_clip: a CLIP ViT-B/16 vision tower (12 layers, 224 px), 6 BERT-base text
layers and 6 fusion layers (self-attention, cross-attention to the image tokens, FFN). ``EfficientVLMConfig.student()``
gives the paper's 6/3/3 student.

This file is shipped to the Hub as remote code: it imports only transformers and the standard library.
"""

from __future__ import annotations

import sys
from typing import Any

from transformers import PreTrainedConfig
from transformers.activations import ACT2FN

#: The three encoders every EfficientVLM model has; each is described by the sub-config ``<modality>_config``.
MODALITIES: tuple[str, ...] = ("vision", "text", "fusion")
#: The answer decoder of generative VQA (``EfficientVLMGenerativeVQAConfig.decoder_config``), a fourth modality.
DECODER = "decoder"
#: Every modality a model may have: the encoders, then the decoder.
ALL_MODALITIES: tuple[str, ...] = (*MODALITIES, DECODER)
#: The modalities whose layers cross-attend (fusion: text over image tokens; decoder: answer over question tokens).
CROSS_ATTENTION_MODALITIES: tuple[str, ...] = ("fusion", DECODER)


def _per_layer(config: PreTrainedConfig, field: str) -> list[int]:
    value = getattr(config, field)
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return [int(value)] * config.num_hidden_layers


class _EncoderConfigMixin:
    """Shared validation and per-layer accessors of the three encoder configs."""

    #: fields that may be an int or a per-layer list
    per_layer_fields: tuple[str, ...] = ("num_attention_heads", "intermediate_size")

    def per_layer(self, field: str) -> list[int]:
        """The value of ``field`` for every layer, as a list of ``num_hidden_layers`` ints."""
        if field not in self.per_layer_fields:
            raise KeyError(f"{field!r} is not a per-layer field of {type(self).__name__}: {self.per_layer_fields}")
        return _per_layer(self, field)

    def _validate_encoder(self) -> None:
        name = type(self).__name__
        for field in ("hidden_size", "head_dim"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name}.{field} must be a positive int, got {value!r}.")
        layers = self.num_hidden_layers
        if not isinstance(layers, int) or isinstance(layers, bool) or layers < 0:
            raise ValueError(f"{name}.num_hidden_layers must be an int >= 0, got {layers!r}.")
        for field in self.per_layer_fields:
            value = getattr(self, field)
            if isinstance(value, (list, tuple)):
                if len(value) != layers:
                    raise ValueError(
                        f"{name}.{field} has {len(value)} entries but num_hidden_layers is {layers}: give one entry "
                        f"per layer, or a single int for all layers."
                    )
                values = list(value)
            else:
                values = [value]
            for i, v in enumerate(values):
                if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                    where = f"[{i}]" if isinstance(value, (list, tuple)) else ""
                    raise ValueError(f"{name}.{field}{where} must be an int >= 0 (0 = sub-block absent), got {v!r}.")
        if self.hidden_act not in ACT2FN:
            raise ValueError(f"{name}.hidden_act={self.hidden_act!r} is unknown; choose one of {sorted(ACT2FN)}.")
        if self.layer_norm_eps <= 0:
            raise ValueError(f"{name}.layer_norm_eps must be > 0, got {self.layer_norm_eps!r}.")


class EfficientVLMVisionConfig(_EncoderConfigMixin, PreTrainedConfig):
    r"""Vision tower: a pre-LayerNorm CLIP ViT.

    Args:
        hidden_size: width of the residual stream.
        num_hidden_layers: number of transformer layers.
        num_attention_heads: heads per layer (int, or a list with one entry per layer; 0 = no attention block).
        head_dim: width of one attention head.
        intermediate_size: FFN width (int or per-layer list; 0 = no FFN block).
        hidden_act: FFN activation (CLIP uses ``quick_gelu``).
        image_size: the resolution the position embeddings were trained for. Other resolutions are handled by
            interpolating the position embeddings (see ``EfficientVLMModel.resize_position_embeddings``).
        patch_size: side of a square patch.
        num_channels: image channels.
        layer_norm_eps: LayerNorm epsilon.
        attention_dropout: dropout on attention probabilities.
        initializer_range: recorded like CLIP's and BERT's configs record it; the modules of an EfficientVLM model
            are initialised with the top-level ``EfficientVLMConfig.initializer_range``.
    """

    model_type = "efficientvlm_vision"
    base_config_key = "vision_config"

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int | list[int] = 12
    head_dim: int = 64
    intermediate_size: int | list[int] = 3072
    hidden_act: str = "quick_gelu"
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        self._validate_encoder()
        for field in ("image_size", "patch_size", "num_channels"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"EfficientVLMVisionConfig.{field} must be a positive int, got {value!r}.")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"EfficientVLMVisionConfig.image_size={self.image_size} is not a multiple of "
                f"patch_size={self.patch_size}."
            )
        super().__post_init__(**kwargs)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


#: The special-token defaults of ``EfficientVLMTextConfig``: bert-base-uncased's [PAD], [CLS], [SEP] and [MASK].
_BERT_SPECIAL_TOKENS = {"pad_token_id": 0, "bos_token_id": 101, "eos_token_id": 102, "mask_token_id": 103}


class EfficientVLMTextConfig(_EncoderConfigMixin, PreTrainedConfig):
    r"""Text encoder: post-LayerNorm BERT layers (self-attention, FFN) with BERT embeddings.

    Args:
        vocab_size: WordPiece vocabulary size (bert-base-uncased: 30522).
        hidden_size, num_hidden_layers, num_attention_heads, head_dim, intermediate_size: as for vision.
        hidden_act: FFN activation.
        hidden_dropout_prob: dropout on sub-block outputs and embeddings.
        attention_probs_dropout_prob: dropout on attention probabilities.
        max_position_embeddings: longest sequence.
        type_vocab_size: number of token types.
        layer_norm_eps: LayerNorm epsilon.
        pad_token_id, bos_token_id, eos_token_id, mask_token_id: special tokens of the tokenizer ([PAD], [CLS],
            [SEP], [MASK] for BERT). The captioning decoder starts from ``bos_token_id`` and stops at
            ``eos_token_id``. An id outside the vocabulary is an error, except a default (bert-base-uncased's 0,
            101, 102, 103) with a smaller ``vocab_size``: that one becomes ``None`` (unknown), so that a config with
            a small vocabulary builds from the defaults.
        initializer_range: recorded like CLIP's and BERT's configs record it; the modules of an EfficientVLM model
            are initialised with the top-level ``EfficientVLMConfig.initializer_range``.
    """

    model_type = "efficientvlm_text"
    base_config_key = "text_config"

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 6
    num_attention_heads: int | list[int] = 12
    head_dim: int = 64
    intermediate_size: int | list[int] = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    bos_token_id: int | None = 101
    eos_token_id: int | None = 102
    mask_token_id: int | None = 103
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        self._validate_encoder()
        for field in ("vocab_size", "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"EfficientVLMTextConfig.{field} must be a positive int, got {value!r}.")
        for field in ("pad_token_id", "bos_token_id", "eos_token_id", "mask_token_id"):
            value = getattr(self, field)
            if value is not None and value >= self.vocab_size and value == _BERT_SPECIAL_TOKENS[field]:
                setattr(self, field, None)  # bert-base-uncased's id, not in this vocabulary
                continue
            if value is not None and not 0 <= value < self.vocab_size:
                raise ValueError(
                    f"EfficientVLMTextConfig.{field}={value} is outside the vocabulary (vocab_size={self.vocab_size})."
                )
        super().__post_init__(**kwargs)


class EfficientVLMFusionConfig(_EncoderConfigMixin, PreTrainedConfig):
    r"""Fusion (cross-modal) encoder: post-LayerNorm BERT layers with self-attention over the text, cross-attention
    from the text to the image tokens, and an FFN. It continues the text residual stream, so its ``hidden_size``
    equals the text encoder's; the cross-attention keys and values read the vision tower's output
    (``encoder_hidden_size``, filled in from the vision config).

    Args:
        num_cross_attention_heads: cross-attention heads per layer (int or per-layer list; 0 = no cross-attention).
        other fields: as for the text config.
    """

    model_type = "efficientvlm_fusion"
    base_config_key = "fusion_config"
    per_layer_fields = ("num_attention_heads", "num_cross_attention_heads", "intermediate_size")

    hidden_size: int = 768
    num_hidden_layers: int = 6
    num_attention_heads: int | list[int] = 12
    num_cross_attention_heads: int | list[int] = 12
    head_dim: int = 64
    intermediate_size: int | list[int] = 3072
    encoder_hidden_size: int | None = None
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        self._validate_encoder()
        if self.encoder_hidden_size is not None and self.encoder_hidden_size <= 0:
            raise ValueError(
                f"EfficientVLMFusionConfig.encoder_hidden_size must be positive, got {self.encoder_hidden_size!r}."
            )
        super().__post_init__(**kwargs)


def _serves(task: str, spec: Any) -> bool:
    """Whether transformers' pipeline registry in this process maps ``task`` to the class a ``custom_pipelines``
    entry names (``{"impl": "module.Class", ...}``): same class name, defined in a module of that name."""
    pipelines = sys.modules.get("transformers.pipelines")  # not imported yet: nothing registered a pipeline
    registry = getattr(pipelines, "PIPELINE_REGISTRY", None)
    registered = getattr(registry, "supported_tasks", {}).get(task)
    impl = spec.get("impl") if isinstance(spec, dict) else None
    if not registered or not isinstance(impl, str) or "." not in impl:
        return False
    module, name = impl.rsplit(".", 1)
    cls = registered.get("impl")
    return getattr(cls, "__name__", None) == name and getattr(cls, "__module__", "").split(".")[-1] == module


_SUB_CONFIGS = {
    "vision_config": EfficientVLMVisionConfig,
    "text_config": EfficientVLMTextConfig,
    "fusion_config": EfficientVLMFusionConfig,
}


class EfficientVLMConfig(PreTrainedConfig):
    r"""Configuration of an EfficientVLM model (teacher, student or pruned student).

    Args:
        vision_config: dict or ``EfficientVLMVisionConfig``.
        text_config: dict or ``EfficientVLMTextConfig``.
        fusion_config: dict or ``EfficientVLMFusionConfig``.
        projection_dim: width of the image-text contrastive (ITC) projections.
        itc_temperature: initial ITC temperature (learnable; clamped to [0.001, 0.5] as in X-VLM). Not called
            ``temperature``, which transformers' generation would read as a sampling temperature.
        initializer_range: std of the normal init of every weight of the three encoders and the heads (the
            sub-configs' values are not used for initialisation). BERT's 0.02 suits fine-tuning pre-trained weights;
            training from scratch on little data learns faster from a larger one (``efficientvlm demo`` uses 0.1).
        tie_word_embeddings: tie the MLM / captioning output layer to the word embeddings.
        caption_label_smoothing: label smoothing of ``EfficientVLMForCaptioning``'s language-modelling loss, in
            [0, 1); the paper fine-tunes captioning with 0.1 (the default); 0 gives plain cross-entropy.
        use_bbox_head: give ``EfficientVLMForPreTraining`` X-VLM's box-regression head (``bbox_head``), trained on
            batches with region texts (``target_bbox``). Off by default, as in X-VLM (``use_bbox_loss``): a head that
            a batch does not use leaves DDP's gradient buckets unreduced unless ``find_unused_parameters`` is set.
        problem_type: the VQA classifier's loss (transformers' field): ``None`` / ``"multi_label_classification"``
            (binary cross-entropy on soft scores, the default) or ``"single_label_classification"`` (softmax
            cross-entropy, for data with one answer per question); see ``EfficientVLMForVisualQuestionAnswering``.
        pruning_info: optional record of what pruning did (target, achieved sparsity per modality, parameter
            counts). Informational only: shapes are always read from the sub-configs.

    Custom pipelines. A repository written by ``efficientvlm push`` declares its ``visual-question-answering``
    pipeline in ``custom_pipelines`` (with the pipeline's code in the repository), so that users without the library
    get it with ``pipeline(..., trust_remote_code=True)``. transformers gives such an entry precedence over the
    pipeline registry and then always demands ``trust_remote_code=True``. So where this process's registry already
    serves the task with the very class the entry names (``import efficientvlm`` registers it), the entry is set
    aside when the config is built: ``pipeline("visual-question-answering", model=repo)`` then takes the installed
    pipeline, with no flag. It is not lost: ``to_dict`` (and so ``save_pretrained``) writes it back.

    Example:

    ```python
    >>> from efficientvlm import EfficientVLMConfig, EfficientVLMModel
    >>> teacher_config = EfficientVLMConfig()            # X-VLM_clip teacher: 12 vision / 6 text / 6 fusion layers
    >>> student_config = EfficientVLMConfig.student()    # EfficientVLM student: 6 / 3 / 3
    >>> pruned = EfficientVLMConfig(vision_config={"num_hidden_layers": 2, "num_attention_heads": [12, 3],
    ...                                            "intermediate_size": [3072, 0]})
    ```
    """

    model_type = "efficientvlm"
    sub_configs_defaults = _SUB_CONFIGS

    vision_config: dict | EfficientVLMVisionConfig | None = None
    text_config: dict | EfficientVLMTextConfig | None = None
    fusion_config: dict | EfficientVLMFusionConfig | None = None
    projection_dim: int = 256
    itc_temperature: float = 0.07
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True
    caption_label_smoothing: float = 0.1
    use_bbox_head: bool = False
    pruning_info: dict | None = None

    def __post_init__(self, **kwargs):
        for key, cls in _SUB_CONFIGS.items():
            value = getattr(self, key)
            if value is None:
                value = cls()
            elif isinstance(value, dict):
                value = cls(**value)
            elif not isinstance(value, cls):
                raise ValueError(f"EfficientVLMConfig.{key} must be a dict or {cls.__name__}, got {type(value)}.")
            setattr(self, key, value)
        if self.fusion_config.encoder_hidden_size is None:
            self.fusion_config.encoder_hidden_size = self.vision_config.hidden_size
        elif self.fusion_config.encoder_hidden_size != self.vision_config.hidden_size:
            raise ValueError(
                f"fusion_config.encoder_hidden_size={self.fusion_config.encoder_hidden_size} does not match "
                f"vision_config.hidden_size={self.vision_config.hidden_size}: the cross-attention reads the vision "
                f"tower's output."
            )
        if self.fusion_config.hidden_size != self.text_config.hidden_size:
            raise ValueError(
                f"fusion_config.hidden_size={self.fusion_config.hidden_size} differs from "
                f"text_config.hidden_size={self.text_config.hidden_size}: the fusion encoder continues the text "
                f"residual stream, so the widths must be equal."
            )
        if not isinstance(self.projection_dim, int) or self.projection_dim <= 0:
            raise ValueError(f"EfficientVLMConfig.projection_dim must be a positive int, got {self.projection_dim!r}.")
        if not 0 < self.itc_temperature:
            raise ValueError(f"EfficientVLMConfig.itc_temperature must be > 0, got {self.itc_temperature!r}.")
        smoothing = self.caption_label_smoothing
        if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)) or not 0 <= smoothing < 1:
            raise ValueError(f"EfficientVLMConfig.caption_label_smoothing must be in [0, 1) (the paper: 0.1), got "
                             f"{smoothing!r}.")
        problem_type = self.problem_type
        if problem_type not in (None, "multi_label_classification", "single_label_classification"):
            raise ValueError(
                f"EfficientVLMConfig.problem_type={problem_type!r} is not supported: the VQA classifier trains with "
                "'multi_label_classification' (binary cross-entropy on soft scores, the default: VQAv2's ten answers) "
                "or 'single_label_classification' (softmax cross-entropy, for one answer per question)."
            )
        super().__post_init__(**kwargs)
        if self.id2label and not self.label2id:  # transformers 5 fills label2id only through num_labels
            self.label2id = {label: index for index, label in self.id2label.items()}
        self._set_aside_installed_pipelines()

    def _set_aside_installed_pipelines(self) -> None:
        """Move the ``custom_pipelines`` entries that this process's pipeline registry already serves with the same
        class into ``_installed_custom_pipelines`` (see the class docstring)."""
        declared = getattr(self, "custom_pipelines", None)
        if not isinstance(declared, dict) or not declared:
            return
        installed = {task: spec for task, spec in declared.items() if _serves(task, spec)}
        if not installed:
            return
        self._installed_custom_pipelines = installed
        remaining = {task: spec for task, spec in declared.items() if task not in installed}
        if remaining:
            self.custom_pipelines = remaining
        else:
            del self.custom_pipelines

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        installed = output.pop("_installed_custom_pipelines", None)
        if installed:  # written back, so that a saved config still declares them for users without the library
            output["custom_pipelines"] = {**installed, **(output.get("custom_pipelines") or {})}
        return output

    @classmethod
    def student(cls, vision_layers: int = 6, text_layers: int = 3, fusion_layers: int = 3, **kwargs: Any):
        """The paper's student (6 vision, 3 text, 3 fusion layers) with the teacher's widths.

        Keyword arguments update the top-level config; sub-config dicts are merged into the student layer counts.
        """
        sub = {
            "vision_config": {"num_hidden_layers": vision_layers},
            "text_config": {"num_hidden_layers": text_layers},
            "fusion_config": {"num_hidden_layers": fusion_layers},
        }
        for key in sub:
            extra = kwargs.pop(key, None) or {}
            if isinstance(extra, PreTrainedConfig):
                extra = extra.to_dict()
            sub[key] = {**extra, **sub[key]}
        return cls(**sub, **kwargs)

    def layer_sizes(self) -> dict[str, dict[str, list[int]]]:
        """Per-modality, per-layer sizes: ``{"vision": {"num_attention_heads": [...], ...}, ...}``."""
        return {
            modality: {field: sub.per_layer(field) for field in sub.per_layer_fields}
            for modality, sub in ((modality, getattr(self, f"{modality}_config")) for modality in MODALITIES)
        }


class EfficientVLMDecoderConfig(EfficientVLMFusionConfig):
    r"""Answer decoder of generative VQA (``EfficientVLMGenerativeVQAConfig``): post-LayerNorm BERT layers with
    *causal* self-attention over the answer tokens, cross-attention from the answer to the fused question states and
    an FFN - the fusion layer's sub-blocks, so it is pruned and sized like the fusion encoder (int or per-layer list,
    0 = sub-block absent). ``encoder_hidden_size`` is the width of the question states it cross-attends to (the
    fusion encoder's, filled in by ``EfficientVLMGenerativeVQAConfig``); ``hidden_size`` equals the text encoder's,
    since the decoder reads the text embeddings' vocabulary and its layers start as copies of the fusion layers.

    The paper: 6 decoder layers in the teacher, 3 in the student.
    """

    model_type = "efficientvlm_decoder"
    base_config_key = "decoder_config"

    num_hidden_layers: int = 6


class EfficientVLMGenerativeVQAConfig(EfficientVLMConfig):
    r"""Configuration of ``EfficientVLMForGenerativeVQA``: an ``EfficientVLMConfig`` plus the answer decoder and the
    answer list the model ranks.

    Args:
        decoder_config: dict or ``EfficientVLMDecoderConfig`` (per-layer sizes of the answer decoder).
        id2label: the answer list, ``{index: answer}`` (as for the classifier head, so the pipeline and the
            evaluation read answers the same way); ``answer_token_ids`` holds the same answers tokenised.
        answer_token_ids: per answer of ``id2label``, its token ids without special tokens (the model adds
            ``text_config.bos_token_id`` before and ``eos_token_id`` after). Written by
            ``EfficientVLMForGenerativeVQA.set_answer_list(answers, tokenizer)``; needed to rank answers.
        rank_k: answers re-scored per question at inference: the ``k`` answers whose first token is most likely
            (the paper: 128); the answer list's size re-scores every answer.
        max_answer_length: most tokens of an answer sequence including ``[CLS]`` and ``[SEP]`` (answer-list
            tokenisation, training answers in ``GenerativeVQACollator`` and the default length of ``generate()``).
        other fields: as ``EfficientVLMConfig``.

    Example:

    ```python
    >>> from efficientvlm import EfficientVLMGenerativeVQAConfig
    >>> teacher = EfficientVLMGenerativeVQAConfig()            # 12/6/6 encoders, 6 decoder layers
    >>> student = EfficientVLMGenerativeVQAConfig.student()    # 6/3/3 encoders, 3 decoder layers
    ```
    """

    model_type = "efficientvlm_generative_vqa"
    sub_configs_defaults = {**_SUB_CONFIGS, "decoder_config": EfficientVLMDecoderConfig}

    decoder_config: dict | EfficientVLMDecoderConfig | None = None
    answer_token_ids: list[list[int]] | None = None
    rank_k: int = 128
    max_answer_length: int = 10

    def __post_init__(self, **kwargs):
        value = self.decoder_config
        if value is None:
            value = EfficientVLMDecoderConfig()
        elif isinstance(value, dict):
            value = EfficientVLMDecoderConfig(**value)
        elif not isinstance(value, EfficientVLMDecoderConfig):
            raise ValueError(f"EfficientVLMGenerativeVQAConfig.decoder_config must be a dict or "
                             f"EfficientVLMDecoderConfig, got {type(value)}.")
        self.decoder_config = value
        super().__post_init__(**kwargs)
        text_width, fusion_width = self.text_config.hidden_size, self.fusion_config.hidden_size
        if value.hidden_size != text_width:
            raise ValueError(
                f"decoder_config.hidden_size={value.hidden_size} differs from text_config.hidden_size={text_width}: "
                "the answer decoder embeds answers with the text vocabulary and starts from the fusion layers."
            )
        if value.encoder_hidden_size is None:
            value.encoder_hidden_size = fusion_width
        elif value.encoder_hidden_size != fusion_width:
            raise ValueError(
                f"decoder_config.encoder_hidden_size={value.encoder_hidden_size} does not match "
                f"fusion_config.hidden_size={fusion_width}: the decoder cross-attends to the fused question states."
            )
        if not isinstance(self.rank_k, int) or isinstance(self.rank_k, bool) or self.rank_k < 1:
            raise ValueError(f"EfficientVLMGenerativeVQAConfig.rank_k must be an int >= 1, got {self.rank_k!r}.")
        if not isinstance(self.max_answer_length, int) or self.max_answer_length < 3:
            raise ValueError(f"EfficientVLMGenerativeVQAConfig.max_answer_length must be an int >= 3 ([CLS], one "
                             f"token, [SEP]), got {self.max_answer_length!r}.")
        if self.answer_token_ids is not None:
            self.answer_token_ids = [[int(t) for t in ids] for ids in self.answer_token_ids]
            answers = len(self.id2label or {})
            if len(self.answer_token_ids) != answers:
                raise ValueError(
                    f"answer_token_ids has {len(self.answer_token_ids)} entries but id2label {answers} answers: "
                    "set both with EfficientVLMForGenerativeVQA.set_answer_list(answers, tokenizer)."
                )
            empty = [i for i, ids in enumerate(self.answer_token_ids) if not ids]
            if empty:
                raise ValueError(f"answer_token_ids[{empty[0]}] (answer {self.id2label[empty[0]]!r}) is empty: "
                                 "every answer needs at least one token.")

    @classmethod
    def student(cls, vision_layers: int = 6, text_layers: int = 3, fusion_layers: int = 3, decoder_layers: int = 3,
                **kwargs: Any):
        """The paper's student: 6 vision, 3 text, 3 fusion and 3 decoder layers with the teacher's widths."""
        decoder = kwargs.pop("decoder_config", None) or {}
        if isinstance(decoder, PreTrainedConfig):
            decoder = decoder.to_dict()
        return super().student(vision_layers, text_layers, fusion_layers,
                               decoder_config={**decoder, "num_hidden_layers": decoder_layers}, **kwargs)

    @classmethod
    def from_encoder_config(cls, config: EfficientVLMConfig, decoder_layers: int | None = None, **kwargs: Any):
        """A generative VQA config with the encoders of ``config`` and a decoder shaped like its fusion encoder
        (the official code initialises the decoder from the fusion layers; ``decoder_layers`` changes the depth of
        a uniform fusion encoder). ``kwargs`` set further fields (``rank_k``, ``id2label``, ...)."""
        meta = ("model_type", "transformers_version", "architectures", "auto_map", "custom_pipelines")
        values = {k: v for k, v in config.to_dict().items() if k not in meta and k != "decoder_config"}
        decoder = {k: v for k, v in values["fusion_config"].items() if k not in (*meta, "encoder_hidden_size")}
        if decoder_layers is not None and decoder_layers != decoder["num_hidden_layers"]:
            per_layer = [f for f in EfficientVLMDecoderConfig.per_layer_fields if isinstance(decoder[f], list)]
            if per_layer:
                raise ValueError(f"The fusion encoder has per-layer sizes ({', '.join(per_layer)}): give the decoder "
                                 "its own decoder_config instead of decoder_layers.")
            decoder["num_hidden_layers"] = decoder_layers
        return cls(**{**values, "decoder_config": decoder, **kwargs})

    @property
    def answer_list(self) -> list[str]:
        """The answers in index order (``id2label``)."""
        return [self.id2label[i] for i in range(len(self.id2label or {}))]

    def layer_sizes(self) -> dict[str, dict[str, list[int]]]:
        sizes = super().layer_sizes()
        sizes["decoder"] = {field: self.decoder_config.per_layer(field)
                            for field in self.decoder_config.per_layer_fields}
        return sizes


__all__ = ["ALL_MODALITIES", "CROSS_ATTENTION_MODALITIES", "DECODER", "MODALITIES", "EfficientVLMConfig", "EfficientVLMVisionConfig", "EfficientVLMTextConfig", "EfficientVLMFusionConfig",
           "EfficientVLMDecoderConfig", "EfficientVLMGenerativeVQAConfig"]
