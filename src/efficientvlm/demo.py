"""``efficientvlm demo``: the paper's method and its claims, measured on the synthetic shapes VQA benchmark, on a CPU.

Every row of the table is evaluated on the same held-out questions, and the timed models run round-robin in one
process, so accuracies and speed-ups are comparable:

1. **Image-blind baseline**: the most frequent training answer of each question type - the floor a model that
   does not look at the image reaches.
2. **Teacher**: a small X-VLM-style model (vision / text / fusion layers), pre-trained on the captions of one-object
   scenes with its own ITC, ITM (hard negatives) and MLM heads - which teaches it to tie colour and shape words to
   what the image shows - then trained on the task. With ``--questions-per-image`` k > 1 every stage sees k
   questions about each training image, in batches that hold each image once (``VQACollator(group_images=True)``):
   the vision tower encodes it once for all its questions.
3. **Student without KD** and **student with KD**: ``create_student`` copies every other teacher layer; the same
   schedule trains one on the task loss alone (the paper's X-VLM_small baseline) and one with
   ``DistillationTrainer`` (task loss + logits, hidden-state and attention-map KD). Does distillation help?
4. **Pruned, fixed split** and **pruned, modal-adaptive**: ``ModalAdaptivePruningTrainer`` fine-tune-prunes the
   distilled student under the teacher, once with the same target for each encoder and once with one budget whose
   split between vision, text and fusion is learned; ``prune()`` exports exactly the asked size. Does adaptivity
   help?

Outputs in ``--output-dir``: checkpoints (``teacher/``, ``student/``, ``pruned/``: model + processor), TensorBoard
event files and ``trainer_state.json`` per stage under ``runs/<stage>/``, ``report/`` (pruning report, training
curves, accuracy-vs-latency figure), a Hub-ready ``hub/`` folder (model card with the table and figures) and
``results.json``. ``--quick`` is a seconds-long smoke run of every stage (CI).

``--vqa-head generative`` runs every stage with the paper's VQA model (``EfficientVLMForGenerativeVQA``) instead of
the classifier: an answer decoder with as many layers as the fusion encoder, initialised from the fusion layers (and
from the pre-training MLM head), trained on the weighted answer likelihood; evaluation ranks the answer list;
distillation adds the decoder's logits, hidden states and attention maps, and pruning gates the decoder as a fourth
modality under the same budget. Its training logs the validation loss per epoch (ranking-based accuracy is measured
on the held-out questions at the end).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import shutil
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch.utils.flop_counter import FlopCounterMode
from transformers import TrainingArguments
from transformers.utils import logging as hf_logging

from .data import ShapesConfig, answer_vocabulary, build_tokenizer, make_caption_dataset, make_vqa_dataset
from .data.shapes import QUESTION_TYPES, Scene
from .data.collators import GenerativeVQACollator, VQACollator
from .data.sampling import ImageGroupedTrainer
from .distillation import DistillationConfig, DistillationTrainer
from .distillation.data import ImageTextPretrainingCollator
from .evaluation import evaluate_vqa, measure_latency, predict_vqa
from .hub import push_to_hub
from .metrics import vqa_accuracy_breakdown
from .models import (
    EfficientVLMForGenerativeVQA,
    EfficientVLMForPreTraining,
    EfficientVLMForVisualQuestionAnswering,
    EfficientVLMGenerativeVQAConfig,
    EfficientVLMImageProcessor,
    EfficientVLMProcessor,
)
from .pruning import ModalAdaptivePruningTrainer, PruningConfig, save_report
from .pruning.structure import ALL_MODALITIES, BUDGETS, model_modalities
from .student import create_student
from .tasks import small_config

logger = logging.getLogger("efficientvlm.demo")

#: ``--vqa-head`` choices: the classifier over the answer vocabulary, or the paper's generative answer decoder
VQA_HEADS = ("classifier", "generative")
VQA_LOSSES = {"bce": "multi_label_classification", "softmax": "single_label_classification"}  # -> config.problem_type


def _flag(default, help: str, **metadata):
    return field(default=default, metadata={"help": help, **metadata})


@dataclass
class DemoConfig:
    """Data, model sizes, schedule and measurement of the demo; ``efficientvlm demo --help`` lists them as flags."""

    output_dir: str = _flag("efficientvlm-demo", "folder for checkpoints, logs, figures and results.json")
    seed: int = _flag(0, "seed of the data, the initialisations and the training order")
    image_size: int = _flag(64, "image side in pixels (shapes scenes are drawn at this size)")
    patch_size: int = _flag(8, "vision patch size in pixels (image_size must be a multiple)")
    max_objects: int = _flag(3, "most shapes per scene (1 to 10)")
    small_radius: float = _flag(0.12, "radius of small shapes, a fraction of the image side (0.12 at 64 px: shapes "
                                      "of about 15 px, two patches across)")
    large_radius: float = _flag(0.2, "radius of large shapes, a fraction of the image side")
    noise_prob: float = _flag(0.0, "fraction of images with Gaussian pixel noise")
    train_size: int = _flag(32000, "training questions (--questions-per-image of them per image: 8,000 images by "
                                   "default)")
    questions_per_image: int = _flag(4, "training questions asked about each training image; above 1 a batch holds "
                                        "each image once and the vision tower encodes it once for all its questions "
                                        "(VQACollator(group_images=True), images shuffled, not rows; the generative "
                                        "head trains on the same questions but encodes the image once per question). "
                                        "Measured on the teacher stage at lr 3e-4 (one training thread, the default "
                                        "data and pre-training): 4 (32,000 questions on 8,000 images, 2.5 epochs, "
                                        "2,500 steps in the time of 1,000 at 1) gave 74.7% and 72.7% against 68.3% "
                                        "and 69.2% at 1 (8,000 questions, 4 epochs; seeds 0 and 1); 8 gave 72.0% "
                                        "(seed 0), 4 on 12,000 images 74.1%")
    validation_size: int = _flag(300, "validation questions, evaluated after every epoch for the curves")
    test_size: int = _flag(1000, "held-out test questions: every row of the table is measured on them")
    hidden_size: int = _flag(128, "width of the three encoders")
    head_dim: int = _flag(32, "width of an attention head (hidden_size must be a multiple)")
    initializer_range: float = _flag(0.1, "std of the teacher's weight initialisation (BERT's 0.02 starts the question "
                                          "-> [CLS] path at about 1% of the fused state: a long plateau from scratch)")
    dropout: float = _flag(0.0, "dropout of the text and fusion encoders")
    pretrain_images: int = _flag(2000, "images of the pre-training stage (each with its captions)")
    pretrain_steps: int = _flag(300, "optimizer steps of image-text pre-training (ITC + ITM with hard negatives + "
                                     "MLM on the scenes' captions) before the teacher's VQA training; 0 skips it")
    pretrain_regions: int = _flag(0, "region texts per pre-training image ('the red circle') with the object's box, "
                                     "for X-VLM's box regression (L1 + GIoU); 0 leaves it out (measured on seed 0 with "
                                     "the defaults: 1 or 2 per image lowered the teacher from 64.0% to 59.4% and "
                                     "57.2%)")
    pretrain_max_objects: int = _flag(1, "most shapes per pre-training scene: captions of one-object scenes tie each "
                                         "colour and shape word to what the image shows (a curriculum)")
    teacher_layers: tuple[int, int, int] = _flag((6, 2, 2), "teacher layers: vision text fusion", nargs=3)
    student_layers: tuple[int, int, int] = _flag((3, 1, 1), "student layers: vision text fusion, at most the "
                                                                  "teacher's (every other teacher layer)", nargs=3)
    batch_size: int = _flag(32, "training batch size")
    learning_rate: float = _flag(3e-4, "peak learning rate of every stage (linear warm-up over 10%, cosine decay). "
                                       "Measured on the pre-training and teacher stages (one training thread, "
                                       "defaults otherwise): 3e-4 gave a teacher of 68.3% and 69.2% (seeds 0 and 1) "
                                       "against 61.3% and 63.2% at 1e-3; 1.5e-4 gave 66.0% (seed 0)")
    teacher_epochs: float = _flag(2.5, "epochs of the teacher's VQA training")
    student_epochs: float = _flag(1.0, "epochs of student training, the same for the students with and without KD")
    prune_epochs: float = _flag(0.75, "epochs of fine-tune-pruning, the same for the fixed and the learned split")
    target_sparsity: float = _flag(0.7, "fraction of the prunable size (see --budget) to remove, in [0, 1)")
    budget: str = _flag("flops", "what the sparsity counts: 'flops' (one forward, vision priced by its tokens) or "
                                 "'params' (the paper)", choices=BUDGETS)
    reg_learning_rate: float = _flag(0.3, "learning rate of the pruning gates (faster than the library's default "
                                          "0.1: a trained student resists pruning, and the run is short)")
    lambda_learning_rate: float = _flag(0.3, "learning rate of the Lagrange multipliers")
    latency_batch_sizes: tuple[int, ...] = _flag((1, 16), "batch sizes timed", nargs="+")
    latency_repeats: int = _flag(30, "timed rounds per batch size: every model runs once per round, in rotating "
                                     "order; a latency is the median over the rounds and a speed-up the median of the "
                                     "per-round ratios to the teacher, which cancels load that drifts between rounds")
    threads: int = _flag(1, "torch threads for evaluation and timing (1 measures steadily on shared cores; 0 = "
                            "torch's choice)")
    train_threads: int = _flag(2, "torch threads while training (0 = torch's choice)")
    repo_id: str = _flag("your-name/efficientvlm-shapes-vqa-pruned", "Hub id written into the model card")
    vqa_loss: str = _flag("bce", "loss of the classifier head: 'bce' (binary cross-entropy on soft scores, the VQAv2 "
                                 "convention) or 'softmax' (cross-entropy, config.problem_type="
                                 "'single_label_classification', matching one answer per question). Measured on the "
                                 "teacher stage (one training thread, defaults otherwise): at lr 1e-3, 64.8% against "
                                 "61.3% on seed 0 and 63.0% against 63.2% on seed 1; at lr 3e-4, 69.7% against 68.3% "
                                 "and 69.7% against 69.2%: not a clear gain, so the default stays 'bce'",
                          choices=tuple(VQA_LOSSES))
    vqa_head: str = _flag("classifier", "VQA head: 'classifier' (over the answer vocabulary) or 'generative' (the "
                                        "paper's answer decoder, as deep as the fusion encoder, ranking the answer "
                                        "list; distilled and pruned too)", choices=VQA_HEADS)

    @classmethod
    def quick(cls, **overrides) -> DemoConfig:
        """A run of seconds that exercises every stage (CI)."""
        small = dict(image_size=32, train_size=128, validation_size=32, test_size=48, hidden_size=32, head_dim=16,
                     pretrain_images=32, pretrain_steps=4,
                     teacher_layers=(2, 2, 2), student_layers=(1, 1, 1), batch_size=16, teacher_epochs=1.0,
                     student_epochs=1.0, prune_epochs=2.0, learning_rate=1e-3, reg_learning_rate=0.2,
                     latency_batch_sizes=(1, 4), latency_repeats=2, train_threads=1)
        return replace(cls(**small), **overrides)

    def __post_init__(self):
        self.teacher_layers = tuple(self.teacher_layers)
        self.student_layers = tuple(self.student_layers)
        self.latency_batch_sizes = tuple(self.latency_batch_sizes)
        self.validate()

    def validate(self) -> None:
        """Check every flag before any work; the error names the flag and what it accepts."""

        def fail(name: str, message: str):
            raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)!r}: {message}")

        for name in ("image_size", "patch_size", "train_size", "validation_size", "test_size", "hidden_size",
                     "head_dim", "batch_size", "latency_repeats", "pretrain_images", "questions_per_image"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                fail(name, "must be a positive integer.")
        for name in ("learning_rate", "reg_learning_rate", "lambda_learning_rate", "teacher_epochs",
                     "student_epochs", "prune_epochs", "initializer_range"):
            if not getattr(self, name) > 0:
                fail(name, "must be > 0.")
        if not 0 <= self.dropout < 1:
            fail("dropout", "must be in [0, 1).")
        for name in ("threads", "train_threads", "pretrain_steps", "pretrain_regions"):
            if getattr(self, name) < 0:
                fail(name, "must be >= 0 (0 = torch's choice)." if "threads" in name else "must be >= 0.")
        if self.budget not in BUDGETS:
            fail("budget", f"choose one of {', '.join(BUDGETS)}.")
        if self.vqa_head not in VQA_HEADS:
            fail("vqa_head", f"choose one of {', '.join(VQA_HEADS)}.")
        if self.vqa_loss not in VQA_LOSSES:
            fail("vqa_loss", f"choose one of {', '.join(VQA_LOSSES)}.")
        if self.vqa_loss != "bce" and self.vqa_head != "classifier":
            fail("vqa_loss", "applies to the classifier head only (the generative head is trained on the answer "
                             "likelihood); leave it at 'bce' with --vqa-head generative.")
        for name in ("small_radius", "large_radius"):
            if not 0 < getattr(self, name) < 0.3:
                fail(name, "must be in (0, 0.3): a fraction of the image side.")
        if not 0 <= self.noise_prob <= 1:
            fail("noise_prob", "must be in [0, 1].")
        if not 0 <= self.target_sparsity < 1:
            fail("target_sparsity", "must be in [0, 1): the fraction of the prunable size to remove.")
        for name in ("max_objects", "pretrain_max_objects"):
            if not 1 <= getattr(self, name) <= 10:
                fail(name, "must be between 1 and 10.")
        if self.image_size % self.patch_size:
            fail("image_size", f"must be a multiple of --patch-size {self.patch_size}.")
        if self.hidden_size % self.head_dim:
            fail("hidden_size", f"must be a multiple of --head-dim {self.head_dim}.")
        for name in ("teacher_layers", "student_layers"):
            layers = getattr(self, name)
            if len(layers) != 3 or not all(isinstance(n, int) and n >= 1 for n in layers):
                fail(name, "give three positive layer counts: vision text fusion, e.g. 6 2 2.")
        if any(s > t for s, t in zip(self.student_layers, self.teacher_layers)):
            fail("student_layers", f"the student copies teacher layers, so it cannot be deeper than the teacher "
                                   f"{self.teacher_layers}.")
        if not self.latency_batch_sizes or any(b <= 0 for b in self.latency_batch_sizes):
            fail("latency_batch_sizes", "give one or more positive batch sizes.")


# ---- stages -------------------------------------------------------------------------------------------------------

ROWS = ("image-blind baseline", "teacher", "student without KD", "student with KD", "pruned, fixed split",
        "pruned student")
"""Row names of the table. "pruned student" is the modal-adaptive one (the method; results.json's historical key)."""


def _predicted_answers(logits, labels) -> torch.Tensor:
    """Keep only the arg-max answer of each evaluation batch (the outputs may also carry hidden states for KD)."""
    return (logits[0] if isinstance(logits, tuple) else logits).argmax(-1)


def _vqa_accuracy_metric(prediction) -> dict[str, float]:
    """Soft VQA accuracy of the arg-max answer, from the Trainer's predictions and soft-score labels (the collator's
    targets; on shapes, whose ten answers agree and are already normalised, equal to the official accuracy)."""
    answers, labels = prediction.predictions, prediction.label_ids
    return {"vqa_accuracy": float(np.mean(labels[np.arange(len(labels)), answers]))}


@contextlib.contextmanager
def _tensorboard_dir(path: Path):
    """transformers' TensorBoardCallback writes to $TENSORBOARD_LOGGING_DIR (else output_dir/runs/<date>)."""
    previous = os.environ.get("TENSORBOARD_LOGGING_DIR")
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(path)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TENSORBOARD_LOGGING_DIR", None)
        else:
            os.environ["TENSORBOARD_LOGGING_DIR"] = previous


class _Stages:
    """Trains the demo's models, one ``transformers`` trainer per stage, with the same data and logging."""

    def __init__(self, cfg: DemoConfig, out: Path, train, validation, collator):
        self.cfg, self.out, self.train, self.validation, self.collator = cfg, out, train, validation, collator
        self.history: dict[str, list[dict]] = {}

    def run(self, stage: str, model, epochs: float, trainer_class=ImageGroupedTrainer, args_class=TrainingArguments,
            teacher=None, train_dataset=None, collator=None, **extra):
        """Train ``model`` for ``epochs`` as ``stage`` (logs in ``runs/<stage>/``); returns the trainer. The VQA
        stages are evaluated on the validation questions after every epoch; other data (``train_dataset`` and
        ``collator``, e.g. pre-training captions) is not."""
        cfg = self.cfg
        folder = self.out / "runs" / stage
        vqa = train_dataset is None
        generative = vqa and cfg.vqa_head == "generative"
        train_dataset = self.train if vqa else train_dataset
        if generative:  # the answer weights are the labels: validation loss per epoch, no gathered logits
            extra = {"label_names": ["answer_weights"], "prediction_loss_only": True, **extra}
        steps = extra.get("max_steps") or int(epochs * -(-len(train_dataset) // cfg.batch_size))
        args = args_class(
            output_dir=str(folder), per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=64,
            num_train_epochs=epochs, learning_rate=cfg.learning_rate, warmup_steps=0.1, weight_decay=0.01,
            lr_scheduler_type="cosine", logging_steps=max(1, min(10, steps // 20)),
            eval_strategy="epoch" if vqa else "no", save_strategy="no", report_to=["tensorboard"], seed=cfg.seed,
            use_cpu=True, dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True, **extra)
        trainer_kwargs = {} if teacher is None else {"teacher_model": teacher}
        if generative:
            trainer_kwargs.update(eval_dataset=self.validation)
        elif vqa:
            trainer_kwargs.update(eval_dataset=self.validation, compute_metrics=_vqa_accuracy_metric,
                                  preprocess_logits_for_metrics=_predicted_answers)
        with _tensorboard_dir(folder):
            trainer = trainer_class(model=model, args=args, train_dataset=train_dataset,
                                    data_collator=collator or self.collator, **trainer_kwargs)
            started = time.perf_counter()
            trainer.train()
        trainer.state.save_to_json(str(folder / "trainer_state.json"))
        self.history[stage] = trainer.state.log_history
        minutes = (time.perf_counter() - started) / 60
        logger.info("    %s: %.1f min, %d steps", stage, minutes, trainer.state.global_step)
        model.eval()
        return trainer


def _blind_baseline(train, test) -> tuple[dict[str, str], list[str]]:
    """The image-blind baseline: each question type's most frequent training answer (``question type -> answer``),
    and its answer to every ``test`` question (a type the training set lacks gets the most frequent answer)."""
    plain_train = train.with_format(None)
    counts: dict[str, Counter] = {}
    for qtype, answer in zip(plain_train["question_type"], plain_train["answer"]):
        counts.setdefault(qtype, Counter())[answer] += 1
    majority = {qtype: counter.most_common(1)[0][0] for qtype, counter in counts.items()}
    fallback = Counter(plain_train["answer"]).most_common(1)[0][0]
    return majority, [majority.get(qtype, fallback) for qtype in test.with_format(None)["question_type"]]


def _accuracy_by_objects(predictions: dict[str, list[str]], test) -> dict[str, dict[str, float]]:
    """Per model, VQA accuracy on the held-out scenes of each number of objects (``"1"``, ``"2"``, ...) and per
    question type on one-object scenes and on scenes of several (``"color 1"``, ``"color 2+"``, ...). With one object
    a colour or shape question names the only object, so only scenes of two or more show whether a model reads
    *which* object the question asks about."""
    plain = test.with_format(None)
    objects = [str(len(Scene.from_json(scene).objects)) for scene in plain["scene"]]
    per_type = [f"{qtype} {'1' if n == '1' else '2+'}" for qtype, n in zip(plain["question_type"], objects)]
    references = [list(a) for a in plain["answers"]]
    result = {}
    for name, predicted in predictions.items():
        result[name] = {**vqa_accuracy_breakdown(predicted, references, question_types=objects)["per_question_type"],
                        **vqa_accuracy_breakdown(predicted, references, question_types=per_type)["per_question_type"]}
    return result


def _latency_and_speedup(rounds: dict[str, list[float]], name: str) -> tuple[float, float]:
    """``name``'s latency in ms (median over the rounds) and its speed-up over the teacher: the median of the
    per-round ratios, so that load which drifts between rounds (shared cores) cancels out of each ratio."""
    ratios = [teacher / model for teacher, model in zip(rounds["teacher"], rounds[name], strict=True)]
    return 1000 * statistics.median(rounds[name]), statistics.median(ratios)


def _forward_flops(model, inputs) -> int:
    """Multiply-accumulates of one forward (FlopCounterMode counts 2 FLOPs per MAC; eager attention, because CPU
    fused attention kernels are not counted)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**inputs, output_attentions=True)
    return counter.get_total_flops() // 2


def _layers(model) -> str:
    """Layers per encoder, ``V/T/F`` (``V/T/F/D`` with an answer decoder)."""
    c = model.config
    return "/".join(str(getattr(c, f"{m}_config").num_hidden_layers) for m in model_modalities(c))


@dataclass
class DemoData:
    """The demo's data and its processing: the shapes generator's config, the three splits, tokenizer, processor and
    answer list."""

    shapes: ShapesConfig
    train: object
    validation: object
    test: object
    tokenizer: object
    processor: EfficientVLMProcessor
    answers: list[str]


def build_data(cfg: DemoConfig, out: Path) -> DemoData:
    """The shapes splits (training with ``cfg.questions_per_image`` questions per image), a tokenizer over the
    generator's vocabulary (saved under ``out/vocab``), the processor and the answer list."""
    shapes = ShapesConfig(image_size=cfg.image_size, seed=cfg.seed, max_objects=cfg.max_objects,
                          small_radius=cfg.small_radius, large_radius=cfg.large_radius, noise_prob=cfg.noise_prob)
    train = make_vqa_dataset(cfg.train_size, split_seed="train", config=shapes,
                             questions_per_image=cfg.questions_per_image)
    validation = make_vqa_dataset(cfg.validation_size, split_seed="validation", config=shapes)
    test = make_vqa_dataset(cfg.test_size, split_seed="test", config=shapes)
    tokenizer = build_tokenizer(out / "vocab", shapes)
    processor = EfficientVLMProcessor(
        EfficientVLMImageProcessor(size={"height": cfg.image_size, "width": cfg.image_size}), tokenizer)
    return DemoData(shapes, train, validation, test, tokenizer, processor, answer_vocabulary(shapes))


def teacher_config(cfg: DemoConfig, tokenizer, answers):
    """The teacher's encoder config: ``cfg``'s layers, width, heads and image, the initialisation std, dropout."""
    config = small_config(tokenizer, cfg.teacher_layers, cfg.hidden_size, cfg.head_dim, cfg.image_size,
                          cfg.patch_size, answers)
    config.initializer_range = cfg.initializer_range  # the std every module is initialised with
    config.problem_type = VQA_LOSSES[cfg.vqa_loss] if cfg.vqa_head == "classifier" else None
    for sub in (config.text_config, config.fusion_config):
        sub.hidden_dropout_prob = sub.attention_probs_dropout_prob = cfg.dropout
    return config


def vqa_collator(cfg: DemoConfig, processor, answers):
    """The training collator of ``--vqa-head``: soft-score labels, or the weighted answers of the decoder."""
    if cfg.vqa_head == "generative":
        return GenerativeVQACollator(processor)
    return VQACollator(processor, {a: i for i, a in enumerate(answers)}, group_images=cfg.questions_per_image > 1)


def build_teacher(cfg: DemoConfig, config, tokenizer, answers):
    """The VQA teacher of ``--vqa-head`` on the encoders of ``config``. The generative one gets an answer decoder
    shaped like, and initialised from, the fusion layers, and ranks ``answers``."""
    if cfg.vqa_head == "classifier":
        return EfficientVLMForVisualQuestionAnswering(config)
    teacher = EfficientVLMForGenerativeVQA(EfficientVLMGenerativeVQAConfig.from_encoder_config(config))
    teacher.set_answer_list(answers, tokenizer)
    teacher.init_decoder_from_fusion()
    return teacher


def load_pretrained(teacher, pretrained) -> None:
    """Copy the pre-trained encoders into the teacher; a generative teacher also takes the MLM head as its answer
    decoder's LM head and re-initialises its decoder from the pre-trained fusion layers (the official init)."""
    teacher.efficientvlm.load_state_dict(pretrained.efficientvlm.state_dict())
    if isinstance(teacher, EfficientVLMForGenerativeVQA):
        teacher.lm_head.load_state_dict(pretrained.lm_head.state_dict())
        teacher.init_decoder_from_fusion()


def run(cfg: DemoConfig) -> dict:
    """Run the demo; returns the results (also written to ``<output_dir>/results.json``)."""
    cfg.validate()
    started = time.perf_counter()
    eval_threads = cfg.threads or torch.get_num_threads()
    train_threads = cfg.train_threads or torch.get_num_threads()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)

    logger.info("[1/7] data: %d training (on %d images), %d validation and %d held-out shapes VQA questions (%d px)",
                cfg.train_size, -(-cfg.train_size // cfg.questions_per_image), cfg.validation_size, cfg.test_size,
                cfg.image_size)
    data = build_data(cfg, out)
    shapes, train, validation, test = data.shapes, data.train, data.validation, data.test
    tokenizer, processor, answers = data.tokenizer, data.processor, data.answers
    collator = vqa_collator(cfg, processor, answers)
    stages = _Stages(cfg, out, train, validation, collator)

    logger.info("[2/7] image-blind baseline: the most frequent answer of each question type")
    majority, blind_answers = _blind_baseline(train, test)
    predictions = {"image-blind baseline": blind_answers}

    torch.set_num_threads(train_threads)
    config = teacher_config(cfg, tokenizer, answers)
    torch.manual_seed(cfg.seed)
    teacher = build_teacher(cfg, config, tokenizer, answers)
    if cfg.pretrain_steps:
        logger.info("[3/7] teacher: image-text pre-training (ITC, ITM with hard negatives, MLM) on the captions of "
                    "%d scenes of 1-%d objects, %d steps", cfg.pretrain_images, cfg.pretrain_max_objects,
                    cfg.pretrain_steps)
        captions = make_caption_dataset(cfg.pretrain_images, split_seed="train", one_row_per_caption=True,
                                        regions_per_image=cfg.pretrain_regions,
                                        config=replace(shapes, max_objects=cfg.pretrain_max_objects))
        torch.manual_seed(cfg.seed)
        pretraining_config = copy.deepcopy(config)
        pretraining_config.use_bbox_head = cfg.pretrain_regions > 0  # the box head only with region texts
        pretrained = EfficientVLMForPreTraining(pretraining_config)
        stages.run("pretraining", pretrained, 1.0, train_dataset=captions,
                   collator=ImageTextPretrainingCollator(processor), max_steps=cfg.pretrain_steps)
        load_pretrained(teacher, pretrained)
    logger.info("[3/7] teacher: VQA training of the %s (%s) %s model", _layers(teacher),
                "/".join(model_modalities(teacher.config)), cfg.vqa_head)
    stages.run("teacher", teacher, cfg.teacher_epochs)

    logger.info("[4/7] students: every other teacher layer, trained with the same schedule without and with KD")
    layers = {"decoder_layers": cfg.student_layers[2]}  # generative: the decoder as deep as the fusion encoder
    student_plain = create_student(teacher, *cfg.student_layers, **layers)
    stages.run("student-no-kd", student_plain, cfg.student_epochs)
    student = create_student(teacher, *cfg.student_layers, **layers)
    stages.run("student-kd", student, cfg.student_epochs, DistillationTrainer, DistillationConfig, teacher=teacher,
               task="vqa")

    logger.info("[5/7] pruning the distilled student to %.0f%% of its %s: fixed split, then modal-adaptive",
                100 * cfg.target_sparsity, cfg.budget)
    steps = int(cfg.prune_epochs * -(-len(train) // cfg.batch_size))
    pruning = dict(task="vqa", target_sparsity=cfg.target_sparsity, budget=cfg.budget,
                   reg_learning_rate=cfg.reg_learning_rate, lambda_learning_rate=cfg.lambda_learning_rate,
                   freeze_gates_step=max(1, (3 * steps) // 4),
                   budget_text_length=12)
    fixed_split = {m: cfg.target_sparsity for m in model_modalities(student.config)}
    pruned = {}
    for name, stage, extra in (("pruned, fixed split", "pruning-fixed", {"target_sparsity_per_modality": fixed_split}),
                               ("pruned student", "pruning-adaptive", {})):
        trainer = stages.run(stage, copy.deepcopy(student), cfg.prune_epochs, ModalAdaptivePruningTrainer,
                             PruningConfig, teacher=teacher, **pruning, **extra)
        pruned[name] = (trainer.prune().eval(), trainer)
    adaptive, adaptive_trainer = pruned["pruned student"]
    report = adaptive_trainer.pruning_report(adaptive)

    torch.set_num_threads(eval_threads)
    logger.info("[6/7] evaluation on %d held-out questions; FLOPs; latency (round-robin, same process, %d thread%s)",
                cfg.test_size, eval_threads, "" if eval_threads == 1 else "s")
    models = {"teacher": teacher, "student without KD": student_plain, "student with KD": student,
              "pruned, fixed split": pruned["pruned, fixed split"][0], "pruned student": adaptive}
    predictions.update({name: predict_vqa(model, processor, test) for name, model in models.items()})
    accuracy = {name: evaluate_vqa(None, None, test, predictions=answers)
                for name, answers in predictions.items()}
    by_objects = _accuracy_by_objects(predictions, test)
    example = processor(images=[test[0]["image"]], text=[test[0]["question"]])
    questions = [test[i]["question"] for i in range(max(cfg.latency_batch_sizes))]
    images = [test[i]["image"] for i in range(max(cfg.latency_batch_sizes))]
    latency = {}
    for batch in cfg.latency_batch_sizes:
        inputs = processor(images=images[:batch], text=questions[:batch])
        latency[batch] = measure_latency(models, lambda: inputs, repeats=cfg.latency_repeats, per_round=True)

    teacher_accuracy = accuracy["teacher"]["vqa_accuracy"]
    rows = []
    for name in ROWS:
        model = models.get(name)
        row = {"model": name, "layers": _layers(model) if model is not None else "-",
               "parameters": sum(p.numel() for p in model.parameters()) if model is not None else 0,
               "flops": _forward_flops(model, example) if model is not None else 0,
               "vqa_accuracy": accuracy[name]["vqa_accuracy"],
               "percent_of_teacher": (100 * (accuracy[name]["vqa_accuracy"] / teacher_accuracy)
                                      if teacher_accuracy else 0.0)}
        for batch in cfg.latency_batch_sizes:
            if model is not None:
                milliseconds, speedup = _latency_and_speedup(latency[batch], name)
                row[f"latency_ms_batch{batch}"], row[f"speedup_batch{batch}"] = milliseconds, speedup
        if name in pruned:
            info = pruned[name][0].config.pruning_info
            row["target_sparsity"] = info["target_sparsity"]
            row["achieved_sparsity"] = info["achieved_sparsity"]
            row["learned_expected_sparsity"] = info["learned_expected_sparsity"]
        rows.append(row)
    table = markdown_table(rows, cfg.latency_batch_sizes)
    types_table = accuracy_by_type_table(rows, accuracy)
    objects_table = accuracy_by_objects_table(rows, by_objects)
    sparsity_table = sparsity_by_modality_table(rows, cfg.budget)

    logger.info("[7/7] writing checkpoints, figures, the Hub-ready folder and results.json")
    teacher.save_pretrained(out / "teacher")
    processor.save_pretrained(out / "teacher")
    student.save_pretrained(out / "student")
    processor.save_pretrained(out / "student")
    adaptive.save_pretrained(out / "pruned")
    processor.save_pretrained(out / "pruned")
    report_json, report_png = save_report(report, out / "report")
    curves_png = out / "report" / "training_curves.png"
    plot_training_curves(stages.history).savefig(curves_png, dpi=110, bbox_inches="tight")
    tradeoff_png = out / "report" / "accuracy_vs_latency.png"
    plot_accuracy_vs_latency(rows, cfg.latency_batch_sizes[0]).savefig(tradeoff_png, dpi=110, bbox_inches="tight")
    results = {"config": asdict(cfg), "rows": rows, "accuracy": accuracy, "accuracy_by_objects": by_objects,
               "blind_baseline_answers": majority,
               "pruning": adaptive.config.pruning_info,
               "pruning_fixed_split": pruned["pruned, fixed split"][0].config.pruning_info,
               "threads": {"training": train_threads, "evaluation": eval_threads},
               "minutes": (time.perf_counter() - started) / 60}
    tables = (f"{table}\n\nAccuracy per question type (held-out):\n\n{types_table}\n\nAccuracy by the number of "
              f"objects in the scene (held-out; with one object a colour or shape question names the only object, so "
              f"only scenes of two or more test whether a model reads which object the question asks about):\n\n"
              f"{objects_table}\n\nSparsity ({cfg.budget}) of the "
              f"encoder layers, exported vs target (and learned by the gates):\n\n{sparsity_table}")
    _write_hub_folder(cfg, adaptive, processor, report, report_png, curves_png, tradeoff_png, tables, rows, test,
                      out / "hub")
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"\n{tables}\n")
    print(f"pruned student: {out / 'pruned'}   Hub-ready folder: {out / 'hub'}   results: {out / 'results.json'}   "
          f"figures: {out / 'report'}   time: {results['minutes']:.1f} min (seed {cfg.seed})")
    return results


# ---- tables and figures -------------------------------------------------------------------------------------------


def markdown_table(rows: list[dict], batch_sizes) -> str:
    """The main table: size, FLOPs, accuracy, % of teacher, latency and speed-up per row."""
    with_decoder = any(r["layers"].count("/") == 3 for r in rows)
    header = ["model", "layers V/T/F/D" if with_decoder else "layers V/T/F", "parameters", "MFLOPs", "VQA accuracy",
              "% of teacher"]
    header += [f"latency b{b}" for b in batch_sizes] + [f"speed-up b{b}" for b in batch_sizes]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        timed = f"latency_ms_batch{batch_sizes[0]}" in r
        cells = [r["model"], r["layers"], f"{r['parameters'] / 1e6:.2f}M" if r["parameters"] else "-",
                 f"{r['flops'] / 1e6:.1f}" if r["flops"] else "-", f"{100 * r['vqa_accuracy']:.1f}",
                 f"{r['percent_of_teacher']:.1f}%"]
        cells += [f"{r[f'latency_ms_batch{b}']:.1f} ms" if timed else "-" for b in batch_sizes]
        cells += [f"{r[f'speedup_batch{b}']:.2f}x" if timed else "-" for b in batch_sizes]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def accuracy_by_type_table(rows: list[dict], accuracy: dict) -> str:
    types = [t for t in QUESTION_TYPES if any(f"vqa_accuracy_{t}" in a for a in accuracy.values())]
    lines = ["| model | overall | " + " | ".join(types) + " |", "|" + "---|" * (len(types) + 2)]
    for r in rows:
        a = accuracy[r["model"]]
        lines.append(f"| {r['model']} | {100 * a['vqa_accuracy']:.1f} | "
                     + " | ".join(f"{100 * a.get(f'vqa_accuracy_{t}', float('nan')):.1f}" for t in types) + " |")
    return "\n".join(lines)


def accuracy_by_objects_table(rows: list[dict], by_objects: dict) -> str:
    """Per model: accuracy on scenes of 1, 2, ... objects, and colour and shape questions on one-object scenes
    against scenes of several objects."""
    counts = sorted({k for a in by_objects.values() for k in a if k.isdigit()}, key=int)
    header = [f"{n} object{'s' * (n != '1')}" for n in counts]
    split = [t for t in ("color", "shape") if any(f"{t} 1" in a for a in by_objects.values())]
    header += [f"{t}: 1 / 2+ objects" for t in split]
    lines = ["| model | " + " | ".join(header) + " |", "|" + "---|" * (len(header) + 1)]

    def pct(value):
        return "-" if value is None else f"{100 * value:.1f}"

    for r in rows:
        a = by_objects.get(r["model"])
        if a is None:
            continue
        cells = [pct(a.get(n)) for n in counts]
        cells += [f"{pct(a.get(f'{t} 1'))} / {pct(a.get(f'{t} 2+'))}" for t in split]
        lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sparsity_by_modality_table(rows: list[dict], budget: str) -> str:
    present = {m for r in rows for m in r.get("achieved_sparsity", {})}
    modalities = [m for m in ALL_MODALITIES if m in present]
    lines = ["| model | target | overall | " + " | ".join(modalities) + " | learned (expected) overall |",
             "|" + "---|" * (len(modalities) + 4)]
    for r in rows:
        if "achieved_sparsity" not in r:
            continue
        target = r["target_sparsity"]
        target_text = (", ".join(f"{m} {100 * v:.0f}%" for m, v in target.items()) if isinstance(target, dict)
                       else f"{100 * target:.0f}% overall")
        a = r["achieved_sparsity"]
        lines.append(f"| {r['model']} | {target_text} | {100 * a['overall']:.1f}% | "
                     + " | ".join(f"{100 * a[m]:.1f}%" for m in modalities)
                     + f" | {100 * r['learned_expected_sparsity']['overall']:.1f}% |")
    return "\n".join(lines)


def plot_training_curves(history: dict[str, list[dict]]) -> Figure:
    """Task loss, KD loss, validation accuracy per epoch, sparsity (learned, exported, target) and the Lagrange
    multipliers of every stage, from the trainers' log histories."""
    figure = Figure(figsize=(15, 8), layout="constrained")
    axes = figure.subplots(2, 3).flatten()
    panels = [("task loss", ("task_loss", "loss")), ("KD loss", ("kd_loss",)),
              ("validation VQA accuracy (generative head: validation loss)", ("eval_vqa_accuracy", "eval_loss"))]
    for ax, (title, keys) in zip(axes, panels):
        for stage, logs in history.items():
            points = [(e["step"], next(e[k] for k in keys if k in e)) for e in logs
                      if any(k in e for k in keys) and "train_runtime" not in e]
            if points:
                ax.plot(*zip(*points), marker="o" if title.startswith("validation") else ".", label=stage)
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.legend(fontsize="small")
    for ax, stage in zip(axes[3:5], ("pruning-fixed", "pruning-adaptive")):
        logs = [e for e in history.get(stage, []) if "expected_sparsity" in e or "expected_sparsity_vision" in e]
        for key, style in (("expected_sparsity", "-"), ("sparsity", "--"), ("target_sparsity", ":")):
            for suffix in ("", "_vision", "_text", "_fusion", "_decoder"):
                points = [(e["step"], e[key + suffix]) for e in logs if key + suffix in e]
                if points:
                    ax.plot(*zip(*points), style, marker=".", label=(key + suffix).replace("_", " "))
        ax.set_title(f"{stage}: sparsity\n(learned = expected, exported, target)")
        ax.set_xlabel("optimizer step")
        ax.legend(fontsize="x-small", ncol=2)
    for stage in ("pruning-fixed", "pruning-adaptive"):
        for key in ("lambda_1", "lambda_2"):
            points = [(e["step"], e[key]) for e in history.get(stage, []) if key in e]
            if points:
                axes[5].plot(*zip(*points), marker=".", label=f"{stage} {key}")
    axes[5].set_title("Lagrange multipliers")
    axes[5].set_xlabel("optimizer step")
    axes[5].legend(fontsize="small")
    return figure


def plot_accuracy_vs_latency(rows: list[dict], batch: int) -> Figure:
    """Held-out accuracy against batch-``batch`` latency of every timed row; the image-blind floor as a line."""
    figure = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = figure.subplots()
    for r in rows:
        if f"latency_ms_batch{batch}" in r:
            ax.scatter(r[f"latency_ms_batch{batch}"], 100 * r["vqa_accuracy"], s=40)
            ax.annotate(r["model"], (r[f"latency_ms_batch{batch}"], 100 * r["vqa_accuracy"]), fontsize="small",
                        xytext=(4, 4), textcoords="offset points")
        else:
            ax.axhline(100 * r["vqa_accuracy"], color="grey", linestyle=":", label=r["model"])
    ax.set_xlabel(f"latency at batch {batch} (ms, same process, round-robin)")
    ax.set_ylabel("held-out VQA accuracy (%)")
    ax.legend(fontsize="small", loc="lower right")
    return figure


def _write_hub_folder(cfg, pruned, processor, report, report_png, curves_png, tradeoff_png, tables, rows, test,
                      folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    summary = (
        "An EfficientVLM student for the synthetic *shapes* VQA benchmark, produced by `efficientvlm demo`: a teacher "
        "pre-trained on the scenes' captions and trained on the benchmark, a half-depth student distilled from it, "
        "then modal-adaptive pruning to exactly "
        f"{100 * cfg.target_sparsity:.0f}% of the {cfg.budget} of its encoder layers. Every row below is measured in "
        f"one process on the same {cfg.test_size} held-out questions (seed {cfg.seed}); latency on "
        f"{cfg.threads or 'all'} CPU thread(s), round-robin.\n\n{tables}\n"
    )
    pruned_row = next(r for r in rows if r["model"] == "pruned student")
    example = test[0]
    example_png = report_png.parent / "example_scene.png"
    example["image"].save(example_png)
    limitations = [
        "Trained and evaluated only on *shapes*, a synthetic benchmark drawn by `efficientvlm.data.shapes`: "
        f"{cfg.image_size} px scenes of 1-{cfg.max_objects} coloured circles, squares and triangles on a light "
        "background. It has never seen a photograph; real images are out of scope.",
        "It answers five kinds of question (colour, shape, count, existence, position) phrased as the generator "
        f"phrases them, from a {len(pruned.config.id2label)}-answer vocabulary "
        f"({', '.join(pruned.config.id2label[i] for i in range(len(pruned.config.id2label)))}).",
        "The models are small and trained for minutes on a CPU: the figures show the method's behaviour (distillation, "
        "budget-exact modal-adaptive pruning, speed-up) on a task where it can be checked, not the accuracy of the "
        "paper's models on VQAv2.",
    ]
    push_to_hub(
        pruned, processor, cfg.repo_id, dry_run_dir=folder, task="vqa", summary=summary, license="apache-2.0",
        pruning_report=report, pruning_figure=str(report_png),
        eval_results=[{"dataset_type": "shapes-vqa", "dataset_name": "shapes VQA (synthetic, held-out split)",
                       "dataset_split": "test", "metric_type": "accuracy", "metric_name": "VQA accuracy",
                       "metric_value": round(100 * pruned_row["vqa_accuracy"], 2)}],
        example_question=example["question"], example_image="example_scene.png", limitations=limitations,
        figures=[("Training curves (every stage)", "training_curves.png"),
                 ("Accuracy against latency (every row of the table)", "accuracy_vs_latency.png")],
        extra_files={"training_curves.png": curves_png, "accuracy_vs_latency.png": tradeoff_png,
                     "example_scene.png": example_png},
    )


# ---- command line -----------------------------------------------------------------------------------------------


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``efficientvlm demo``: ``--quick`` and one per ``DemoConfig`` field, with its help text."""
    parser.add_argument("--quick", action="store_true", help="a seconds-long run of every stage (CI), with small "
                                                             "data and models; other flags still apply")
    for spec in fields(DemoConfig):
        flag = "--" + spec.name.replace("_", "-")
        meta = spec.metadata
        default = " ".join(map(str, spec.default)) if isinstance(spec.default, tuple) else spec.default
        help_text = f"{meta['help']} (default: {default})".replace("%", "%%")  # argparse formats help with %
        if "nargs" in meta:
            parser.add_argument(flag, type=int, nargs=meta["nargs"], default=None, metavar="N", help=help_text)
        else:
            parser.add_argument(flag, type=type(spec.default), default=None, choices=meta.get("choices"),
                                help=help_text)


def run_demo(args: argparse.Namespace) -> int:
    overrides = {spec.name: value for spec in fields(DemoConfig)
                 if (value := getattr(args, spec.name, None)) is not None}
    cfg = DemoConfig.quick(**overrides) if args.quick else DemoConfig(**overrides)  # validates every flag first
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    hf_logging.set_verbosity_warning()
    run(cfg)
    return 0


__all__ = ["DemoConfig", "run", "add_demo_arguments", "run_demo"]
