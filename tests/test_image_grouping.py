"""Several questions per image: ``image_index`` in the VQA model, ``VQACollator(group_images=True)``, the image-grouped
training order, and the distillation / pruning trainers on such batches."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import TrainingArguments

from efficientvlm import EfficientVLMForVisualQuestionAnswering
from efficientvlm.data import (
    ImageGroupedSampler,
    ImageGroupedTrainer,
    ShapesConfig,
    VQACollator,
    answer_vocabulary,
    build_tokenizer,
    make_vqa_dataset,
)
from efficientvlm.data.sampling import image_grouped_sampler
from efficientvlm.distillation import DistillationConfig, DistillationTrainer
from efficientvlm.models import EfficientVLMImageProcessor, EfficientVLMProcessor
from efficientvlm.pruning import ModalAdaptivePruningTrainer, PruningConfig
from efficientvlm.student import create_student
from efficientvlm.tasks import small_config

from .tiny_models import tiny_config, tiny_inputs

SHAPES = ShapesConfig(image_size=32, seed=0)
IMAGE_INDEX = torch.tensor([0, 0, 1, 2, 2, 2])


def _grouped_and_repeated(seed: int = 0):
    """A tiny VQA model, inputs with 3 images for 6 questions (``image_index``), and the same inputs with each
    question's image repeated in ``pixel_values``."""
    torch.manual_seed(seed)
    model = EfficientVLMForVisualQuestionAnswering(tiny_config()).eval()
    inputs = tiny_inputs(EfficientVLMForVisualQuestionAnswering, model.config, batch=6, seed=seed)
    grouped = dict(inputs, pixel_values=inputs["pixel_values"][:3], image_index=IMAGE_INDEX)
    repeated = dict(inputs, pixel_values=inputs["pixel_values"][:3][IMAGE_INDEX])
    return model, grouped, repeated


def test_image_index_equals_repeated_images_logits_loss_gradients():
    model, grouped, repeated = _grouped_and_repeated()
    results = []
    for inputs in (grouped, repeated):
        model.zero_grad(set_to_none=True)
        out = model(**inputs, output_hidden_states=True, output_attentions=True)
        out.loss.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        results.append((out, grads))
    (g_out, g_grads), (r_out, r_grads) = results
    torch.testing.assert_close(g_out.logits, r_out.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(g_out.loss, r_out.loss, rtol=0, atol=1e-5)
    assert g_grads.keys() == r_grads.keys() and any(name.startswith("efficientvlm.vision") for name in g_grads)
    for name in g_grads:
        torch.testing.assert_close(g_grads[name], r_grads[name], rtol=1e-4, atol=1e-5, msg=name)
    # vision states: one row per image; text and fusion states: one row per question
    assert g_out.vision_hidden_states[-1].shape[0] == 3 and r_out.vision_hidden_states[-1].shape[0] == 6
    for g, r in zip(g_out.vision_hidden_states, r_out.vision_hidden_states):
        torch.testing.assert_close(g[IMAGE_INDEX], r, rtol=0, atol=1e-5)
    for g, r in zip(g_out.fusion_cross_attentions, r_out.fusion_cross_attentions):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-5)


def test_identity_image_index_is_bit_identical_to_none():
    model, _, repeated = _grouped_and_repeated(seed=1)
    with torch.no_grad():
        plain = model(**repeated).logits
        indexed = model(**repeated, image_index=torch.arange(6)).logits
    assert torch.equal(plain, indexed)


@pytest.mark.parametrize("image_index, problem", [
    (torch.tensor([0, 0, 1, 2, 2, 3]), r"rows 0\.\.3 but there are 3 images"),
    (torch.tensor([0, -1, 1, 2, 2, 2]), r"rows -1\.\.2 but there are 3 images"),
    (torch.tensor([0, 1, 2]), r"shape \(3,\) but the batch has 6 texts"),
    (torch.zeros(6, 1, dtype=torch.long), r"shape \(6, 1\) but the batch has 6 texts"),
    (torch.tensor([0.0, 0, 1, 2, 2, 2]), r"must hold integers .* torch.float32"),
    ([0, 0, 1, 2, 2, 2], r"must be a torch.LongTensor .* got list"),
])
def test_bad_image_index_is_a_clear_error(image_index, problem):
    model, grouped, _ = _grouped_and_repeated()
    with pytest.raises(ValueError, match=problem):
        model(**dict(grouped, image_index=image_index))


def test_fewer_images_than_texts_without_image_index_names_the_fix():
    model, grouped, _ = _grouped_and_repeated()
    grouped.pop("image_index")
    with pytest.raises(ValueError, match="3 images but 6 texts.*image_index"):
        model(**grouped)


# ---- collator and training order ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes_setup(tmp_path_factory):
    tokenizer = build_tokenizer(tmp_path_factory.mktemp("vocab"), SHAPES)
    processor = EfficientVLMProcessor(EfficientVLMImageProcessor(size={"height": 32, "width": 32}), tokenizer)
    answers = answer_vocabulary(SHAPES)
    label2id = {a: i for i, a in enumerate(answers)}
    return processor, answers, label2id, make_vqa_dataset(32, split_seed="train", config=SHAPES, questions_per_image=4)


def test_collator_puts_each_image_once_and_indexes_it(shapes_setup):
    processor, _, label2id, data = shapes_setup
    rows = [data[i] for i in (5, 4, 9, 6, 10, 0)]  # images 1, 1, 2, 1, 2, 0
    grouped = VQACollator(processor, label2id, group_images=True)(rows)
    plain = VQACollator(processor, label2id)(rows)
    assert grouped["image_index"].tolist() == [0, 0, 1, 0, 1, 2]
    assert grouped["pixel_values"].shape[0] == 3
    torch.testing.assert_close(grouped["pixel_values"][grouped["image_index"]], plain["pixel_values"], rtol=0,
                               atol=0)
    for key in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(grouped[key], plain[key])
    assert "image_index" not in plain


def test_collator_without_image_ids_names_the_column(shapes_setup):
    processor, _, label2id, data = shapes_setup
    rows = [{k: v for k, v in data[i].items() if k != "image_id"} for i in range(3)]
    with pytest.raises(ValueError, match="groups rows by 'image_id'.*row 0.*group_images=False"):
        VQACollator(processor, label2id, group_images=True)(rows)


def test_sampler_shuffles_images_and_keeps_their_rows_together():
    image_ids = [i // 3 for i in range(30)]  # 10 images, 3 rows each
    sampler = ImageGroupedSampler(image_ids, seed=7)
    first = list(sampler)
    assert sorted(first) == list(range(30)) and len(sampler) == 30
    for start in range(0, 30, 3):
        rows = first[start:start + 3]
        assert len({image_ids[r] for r in rows}) == 1 and rows == sorted(rows)
    assert [first[i] // 3 for i in range(0, 30, 3)] != list(range(10))  # images are shuffled
    assert list(ImageGroupedSampler(image_ids, seed=7)) == first  # a function of seed and epoch
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_sampler_is_chosen_only_when_the_collator_groups(shapes_setup):
    processor, _, label2id, data = shapes_setup
    def args(strategy="random"):
        return SimpleNamespace(train_sampling_strategy=strategy, seed=3, data_seed=None)

    grouping = VQACollator(processor, label2id, group_images=True)
    sampler = image_grouped_sampler(data, grouping, args())
    assert isinstance(sampler, ImageGroupedSampler) and sampler.seed == 3
    assert image_grouped_sampler(data, VQACollator(processor, label2id), args()) is None
    assert image_grouped_sampler(data, grouping, args("sequential")) is None  # the dataset's own order
    with pytest.raises(ValueError, match="group_by_length.*scatters the questions"):
        image_grouped_sampler(data, grouping, args("group_by_length"))
    with pytest.raises(ValueError, match="no 'image_id' column.*remove_unused_columns=False"):
        image_grouped_sampler(data.remove_columns("image_id"), grouping, args())


# ---- trainers ----------------------------------------------------------------------------------------------------


def _teacher_and_student(processor, answers):
    torch.manual_seed(0)
    config = small_config(processor.tokenizer, (2, 1, 1), hidden_size=32, head_dim=16, image_size=32, patch_size=8,
                          labels=answers)
    teacher = EfficientVLMForVisualQuestionAnswering(config).eval()
    return teacher, create_student(teacher, 1, 1, 1)


def _args(config_class, tmp_path, **extra):
    return config_class(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=2, learning_rate=1e-3,
                        save_strategy="no", logging_steps=1, report_to=[], disable_tqdm=True, use_cpu=True, seed=0,
                        remove_unused_columns=False, **extra)


def test_trainers_batch_whole_images(shapes_setup, tmp_path):
    processor, answers, label2id, data = shapes_setup
    teacher, student = _teacher_and_student(processor, answers)
    collator = VQACollator(processor, label2id, group_images=True)
    trainers = [ImageGroupedTrainer(model=student, args=_args(TrainingArguments, tmp_path), train_dataset=data,
                                    data_collator=collator),
                DistillationTrainer(model=student, args=_args(DistillationConfig, tmp_path), teacher_model=teacher,
                                    train_dataset=data, data_collator=collator)]
    for trainer in trainers:
        batches = list(trainer.get_train_dataloader())
        assert len(batches) == 4
        for batch in batches:  # 8 questions, 4 per image: two whole images
            assert batch["pixel_values"].shape[0] == 2 and batch["image_index"].tolist() == [0] * 4 + [1] * 4
        assert [b["image_index"].shape[0] for b in batches] == [8] * 4


def test_distillation_on_grouped_batches_equals_repeated_images(shapes_setup, tmp_path):
    """KD on the vision states compares teacher and student per image; with equally many questions per image the
    loss is the one of the same batch with repeated images, term by term."""
    processor, answers, label2id, data = shapes_setup
    teacher, student = _teacher_and_student(processor, answers)
    trainer = DistillationTrainer(model=student, args=_args(DistillationConfig, tmp_path), teacher_model=teacher,
                                  train_dataset=data, data_collator=VQACollator(processor, label2id,
                                                                                group_images=True))
    assert {"kd_hidden_vision", "kd_attn_vision", "kd_attn_fusion_cross"} <= set(trainer.term_weights)
    rows = [data[i] for i in range(8)]
    grouped = VQACollator(processor, label2id, group_images=True)(rows)
    plain = VQACollator(processor, label2id)(rows)
    student.eval()
    results = []
    with torch.no_grad():
        for batch in (grouped, plain):
            flags = dict(output_hidden_states=True, output_attentions=True)
            student_out = student(**batch, **flags)
            teacher_out = teacher(**{k: v for k, v in batch.items() if k != "labels"}, **flags)
            results.append((trainer.compute_loss(student, dict(batch)),
                            trainer.distillation_terms(batch, student_out, teacher_out)))
    (g_loss, g_terms), (p_loss, p_terms) = results
    torch.testing.assert_close(g_loss, p_loss, rtol=0, atol=1e-5)
    assert g_terms.keys() == p_terms.keys()
    for name in g_terms:
        torch.testing.assert_close(g_terms[name], p_terms[name], rtol=0, atol=1e-5, msg=name)

    student.train()
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "kd_hidden_vision" in entry]
    assert len(logged) == 2 and all(torch.isfinite(torch.tensor(entry["loss"])) for entry in logged)


def test_pruning_trainer_on_grouped_batches(shapes_setup, tmp_path):
    processor, answers, label2id, data = shapes_setup
    teacher, student = _teacher_and_student(processor, answers)
    trainer = ModalAdaptivePruningTrainer(
        model=student, teacher_model=teacher, train_dataset=data,
        data_collator=VQACollator(processor, label2id, group_images=True),
        args=_args(PruningConfig, tmp_path, task="vqa", target_sparsity=0.5, budget="flops"))
    assert isinstance(trainer._get_train_sampler(), ImageGroupedSampler)
    trainer.train()
    pruned = trainer.prune().eval()
    batch = VQACollator(processor, label2id, group_images=True)([data[i] for i in range(8)])
    repeated = dict(batch, pixel_values=batch["pixel_values"][batch.pop("image_index")])
    batch = VQACollator(processor, label2id, group_images=True)([data[i] for i in range(8)])
    with torch.no_grad():
        torch.testing.assert_close(pruned(**batch).logits, pruned(**repeated).logits, rtol=0, atol=1e-5)
    assert pruned.config.pruning_info["achieved_sparsity"]["overall"] == pytest.approx(0.5, abs=0.01)
