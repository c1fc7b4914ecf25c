"""Create a student from a teacher by copying chosen layers (the paper's initialisation of EfficientVLM)."""

from __future__ import annotations

import copy
import numbers
from collections.abc import Sequence

import torch

from .models.configuration_efficientvlm import EfficientVLMConfig
from .models.modeling_efficientvlm import EfficientVLMPreTrainedModel

_STACKS = {  # modality -> (sub-config attribute, module path of the layer list inside the base model)
    "vision": ("vision_config", "vision_model.encoder.layers"),
    "text": ("text_config", "text_model.encoder.layers"),
    "fusion": ("fusion_config", "fusion_model.encoder.layers"),
    "decoder": ("decoder_config", "answer_decoder.encoder.layers"),  # generative VQA; in the head, not the base
}


def uniform_layer_choice(num_teacher_layers: int, num_student_layers: int) -> list[int]:
    """Every other layer, as the paper does: student layer ``i`` <- teacher layer ``(i + 1) * L / n - 1``.

    For 12 -> 6 this is the odd layers ``[1, 3, 5, 7, 9, 11]``; for 6 -> 3 it is ``[1, 3, 5]``.
    """
    if not 0 <= num_student_layers <= num_teacher_layers:
        raise ValueError(
            f"A student cannot have {num_student_layers} layers when the teacher has {num_teacher_layers}."
        )
    return [round((i + 1) * num_teacher_layers / num_student_layers) - 1 for i in range(num_student_layers)]


def _is_index(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _resolve_choice(modality: str, teacher_layers: int, choice: int | Sequence[int]) -> list[int]:
    """The teacher layers the student's ``modality`` encoder copies; errors name the argument and the encoder."""
    where = f"{modality}_layers={choice!r}"
    if _is_index(choice):
        if not 0 <= choice <= teacher_layers:
            raise ValueError(
                f"{where}: the student's {modality} encoder cannot have {choice} layers when the teacher's {modality} "
                f"encoder has {teacher_layers}. Give a number from 0 to {teacher_layers}, or a list of teacher "
                f"{modality} layer indices."
            )
        return uniform_layer_choice(teacher_layers, int(choice))
    if isinstance(choice, (str, bytes)) or not isinstance(choice, Sequence):
        raise TypeError(f"{where}: give the number of {modality} layers (an int) or a list of teacher {modality} "
                        f"layer indices, not a {type(choice).__name__}.")
    for i in choice:
        if not _is_index(i):
            raise TypeError(f"{where}: teacher layer indices must be integers, got {i!r} ({type(i).__name__}).")
        if not 0 <= i < teacher_layers:
            raise ValueError(f"{where}: teacher {modality} layer {i} does not exist (the teacher's {modality} encoder "
                             f"has {teacher_layers} layers: 0 to {teacher_layers - 1}).")
    return [int(i) for i in choice]


def create_student(teacher: EfficientVLMPreTrainedModel, vision_layers: int | Sequence[int] = 6,
                   text_layers: int | Sequence[int] = 3, fusion_layers: int | Sequence[int] = 3,
                   decoder_layers: int | Sequence[int] = 3):
    """A smaller model of the teacher's class whose layers are copies of chosen teacher layers.

    Args:
        teacher: any EfficientVLM model (base model or task head).
        vision_layers, text_layers, fusion_layers: a number of layers (taken uniformly: every other layer for a
            half-depth student, as in the paper) or an explicit list of teacher layer indices.
        decoder_layers: the same for the answer decoder of a generative VQA teacher (the paper: 6 -> 3); ignored
            for other heads.

    Raises:
        ValueError: more layers than the teacher's encoder has, or an index of a layer it does not have (the
            message names the argument and the encoder).
        TypeError: a layer count or index that is not an integer.

    Returns:
        A model of ``type(teacher)`` in the teacher's train/eval mode; embeddings, LayerNorms outside the layers, projections and task
        heads are copied, and ``config.student_of`` records which teacher layer each student layer came from.
    """
    config: EfficientVLMConfig = copy.deepcopy(teacher.config)
    choices = {}
    for modality, choice in (("vision", vision_layers), ("text", text_layers), ("fusion", fusion_layers),
                             ("decoder", decoder_layers)):
        attr, _ = _STACKS[modality]
        sub = getattr(config, attr, None)
        if sub is None:  # no answer decoder
            continue
        chosen = _resolve_choice(modality, sub.num_hidden_layers, choice)
        choices[modality] = chosen
        for field in sub.per_layer_fields:
            value = getattr(sub, field)
            if isinstance(value, (list, tuple)):
                setattr(sub, field, [value[i] for i in chosen])
        sub.num_hidden_layers = len(chosen)
    config.student_of = {"teacher": teacher.config.name_or_path or None, "layers": choices}
    config.pruning_info = None

    student = type(teacher)(config)
    teacher_state = teacher.state_dict()
    student_state = {}
    base_prefix = f"{teacher.base_model_prefix}." if teacher.base_model is not teacher else ""
    layer_prefixes = {modality: (base_prefix if modality != "decoder" else "") + path + "."
                      for modality, (_, path) in _STACKS.items() if modality in choices}
    for key, value in teacher_state.items():
        for modality, prefix in layer_prefixes.items():
            if key.startswith(prefix):
                index, rest = key[len(prefix):].split(".", 1)
                chosen = choices[modality]
                if int(index) in chosen:
                    for j, i in enumerate(chosen):  # a teacher layer may be chosen more than once
                        if i == int(index):
                            student_state[f"{prefix}{j}.{rest}"] = value
                break
        else:
            student_state[key] = value
    with torch.no_grad():
        result = student.load_state_dict(student_state, strict=False)
    missing = [k for k in result.missing_keys if k not in _tied_targets(student)]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"create_student: state dicts do not line up (missing {missing}, "
                           f"unexpected {result.unexpected_keys}).")
    student.tie_weights()
    return student.train(teacher.training)


def _tied_targets(model) -> set[str]:
    keys = getattr(model, "_tied_weights_keys", None) or {}
    return set(keys) if model.config.tie_word_embeddings else set()
