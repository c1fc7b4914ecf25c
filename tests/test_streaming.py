"""Streamed pre-training pairs (``efficientvlm.data.ImageTextStream``): shard patterns, exactly-once sharding over
processes x DataLoader workers, exact mid-epoch resume, bad samples, ``datasets`` streams, the trainer's resume and a
real two-process ``accelerate launch`` run."""

from __future__ import annotations

import collections
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from PIL import Image
from tests.distillation_helpers import (
    WORDS,
    StandInProcessor,
    narrow_student,
    sample_colour,
    tiny_config,
    write_tar_shards,
)
from torch.utils.data import DataLoader

from efficientvlm.data import BadSampleError, ImageTextStream, expand_shards
from efficientvlm.data import streaming as streaming_module
from efficientvlm.distillation import DistillationConfig, DistillationTrainer, ImageTextPretrainingCollator
from efficientvlm.distillation.trainer import STREAM_STATE_NAME
from efficientvlm.models.modeling_efficientvlm import EfficientVLMForPreTraining

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def keys(loader, limit=None):
    """The ``(shard, key)`` of every example, batch by batch, of the first ``limit`` batches."""
    out = []
    for batch in loader:
        out.append([(example["shard"], example["key"]) for example in batch])
        if limit is not None and len(out) == limit:
            break
    return out


def loader(stream, num_workers=2, batch_size=3):
    return DataLoader(stream, batch_size=batch_size, num_workers=num_workers, collate_fn=list)


# ---- shard patterns ----------------------------------------------------------------------------------------------


def test_shard_patterns_expand_braces_lists_and_globs(tmp_path):
    for name in ("00008.tar", "00009.tar", "00010.tar", "extra-a.tar", "extra-b.tar"):
        (tmp_path / name).write_bytes(b"")
    assert expand_shards(str(tmp_path / "{00008..00010}.tar")) == [str(tmp_path / f"{i:05d}.tar") for i in (8, 9, 10)]
    assert expand_shards(f"{tmp_path}/extra-{{a,b}}.tar::{tmp_path}/0000[89].tar") == [
        str(tmp_path / n) for n in ("extra-a.tar", "extra-b.tar", "00008.tar", "00009.tar")]
    assert expand_shards([tmp_path / "00010.tar", str(tmp_path / "extra-*.tar")]) == [
        str(tmp_path / n) for n in ("00010.tar", "extra-a.tar", "extra-b.tar")]
    with pytest.raises(FileNotFoundError, match=r"2 of the 5 shards do not exist: .*00011.tar, .*00012.tar"):
        expand_shards(str(tmp_path / "{00008..00012}.tar"))
    with pytest.raises(FileNotFoundError, match="No file matches"):
        expand_shards(str(tmp_path / "*.tgz"))
    with pytest.raises(ValueError, match="more than once"):
        expand_shards(f"{tmp_path}/00008.tar::{tmp_path}/*.tar")


# ---- sharding and resuming ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_workers", [2, 0])
def test_an_epoch_yields_every_pair_once_across_processes_and_workers(tmp_path, num_workers):
    _, good = write_tar_shards(tmp_path, [3, 4, 2, 5, 3, 4, 1])  # uneven shards: uneven slots
    seen = collections.Counter()
    per_rank = []
    for rank in range(2):
        stream = ImageTextStream.from_tar_shards(str(tmp_path / "{00000..00006}.tar"), rank=rank, world_size=2,
                                                 num_epochs=2, seed=3)
        examples = [example for batch in loader(stream, num_workers, batch_size=2) for example in batch]
        per_rank.append({(e["shard"], e["key"]) for e in examples})
        for example in examples:
            seen[(example["shard"], example["key"])] += 1
            assert example["caption"] == good[(example["shard"], example["key"])]
            shard, index = int(example["key"][:5]), int(example["key"][5:])
            assert example["image"].mode == "RGB" and example["image"].getpixel((3, 3)) == sample_colour(shard, index)
            assert example["image_id"] == shard * 2**32 + index
    assert set(seen) == set(good) and set(seen.values()) == {2}  # two epochs: every pair exactly twice
    assert not per_rank[0] & per_rank[1]  # each process reads its own shards


def test_each_epoch_reads_a_slots_shards_in_a_new_order(tmp_path):
    write_tar_shards(tmp_path, [2] * 8)
    stream = ImageTextStream.from_tar_shards(str(tmp_path / "*.tar"), world_size=1, rank=0, num_epochs=4, seed=0)
    shards = [example["shard"] for example in stream][::2]  # two pairs per shard
    epochs = [shards[i:i + 8] for i in range(0, 32, 8)]
    assert all(sorted(epoch) == sorted(epochs[0]) for epoch in epochs)
    assert len({tuple(epoch) for epoch in epochs}) > 1
    in_order = ImageTextStream.from_tar_shards(str(tmp_path / "*.tar"), world_size=1, rank=0, num_epochs=2,
                                               shuffle=False)
    assert [example["shard"] for example in in_order][::2] == sorted(epochs[0]) * 2


def test_resume_continues_the_uninterrupted_stream_exactly(tmp_path):
    write_tar_shards(tmp_path, [3, 4, 2, 5, 3, 4, 1, 2, 3, 2])
    pattern = str(tmp_path / "*.tar")

    def stream():
        return ImageTextStream.from_tar_shards(pattern, rank=1, world_size=2, seed=5)

    full = keys(loader(stream()), limit=24)  # about four epochs of this process's shards
    assert len({key for batch in full for key in batch}) < 24 * 3  # it went round more than once
    for consumed in (1, 4, 7, 11, 17):  # every worker offset, mid-shard, at and across epoch ends
        resumed = stream()
        resumed.load_state_dict(stream().state_dict(consumed, batch_size=3, num_workers=2))
        assert keys(loader(resumed), limit=24 - consumed) == full[consumed:], consumed


def test_resume_decodes_no_image_it_does_not_yield(tmp_path, monkeypatch):
    write_tar_shards(tmp_path, [5, 4, 6], bad={(0, 1): "no_caption", (1, 0): "empty_caption", (2, 2): "no_image"})
    pattern = str(tmp_path / "*.tar")
    make = dict(rank=0, world_size=1, seed=1, on_error="skip")
    full = keys(loader(ImageTextStream.from_tar_shards(pattern, **make), num_workers=0, batch_size=2), limit=20)
    decoded = []
    real = streaming_module._decode_image
    monkeypatch.setattr(streaming_module, "_decode_image", lambda value: decoded.append(1) or real(value))
    resumed = ImageTextStream.from_tar_shards(pattern, **make)
    resumed.load_state_dict(resumed.state_dict(13, batch_size=2, num_workers=0))  # 26 pairs: past the first epoch
    assert keys(loader(resumed, num_workers=0, batch_size=2), limit=7) == full[13:]
    assert len(decoded) <= 7 * 2 + 2  # what it yielded, and at most one batch of read-ahead
    other_size = ImageTextStream.from_tar_shards(pattern, **make)  # another batch size: the same next pairs
    other_size.load_state_dict(resumed.state_dict(13, batch_size=2, num_workers=0))
    flat = [key for batch in keys(loader(other_size, num_workers=0, batch_size=3), limit=4) for key in batch]
    assert flat == [key for batch in full[13:19] for key in batch]


def test_a_changed_layout_or_worker_count_cannot_resume(tmp_path):
    write_tar_shards(tmp_path, [2, 2, 2, 2])
    pattern = str(tmp_path / "*.tar")
    state = ImageTextStream.from_tar_shards(pattern, rank=0, world_size=2).state_dict(3, 2, 2)
    json.dumps(state)  # checkpoint-ready
    with pytest.raises(ValueError, match=r"seed: 0 then, 1 now.*world_size: 2 then, 1 now"):
        ImageTextStream.from_tar_shards(pattern, rank=0, world_size=1, seed=1).load_state_dict(state)
    resumed = ImageTextStream.from_tar_shards(pattern, rank=0, world_size=2)
    resumed.load_state_dict(state)
    with pytest.raises(ValueError, match="stopped with 2 DataLoader workers per process and resumes with 0"):
        next(iter(resumed))
    with pytest.raises(ValueError, match=r"4 tar shards .* cannot feed 2 process\(es\) x 4 DataLoader worker"):
        resumed.check_workers(4)


# ---- bad samples -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, reason", [("no_caption", r"no caption \(no .txt member; found .png, .json\)"),
                                          ("empty_caption", "an empty caption"),
                                          ("no_image", "no image member"),
                                          ("corrupt_image", "the image does not decode")])
def test_a_bad_sample_names_its_shard_and_key(tmp_path, kind, reason):
    paths, _ = write_tar_shards(tmp_path, [3, 3], bad={(1, 2): kind})
    stream = ImageTextStream.from_tar_shards([str(p) for p in paths], rank=0, world_size=1, num_epochs=1,
                                             shuffle=False)
    with pytest.raises(BadSampleError, match=rf"shard {paths[1]}, sample '000010002': {reason}.*on_error='skip'"):
        list(stream)


def test_bad_samples_are_skipped_and_counted_when_asked(tmp_path, caplog):
    paths, good = write_tar_shards(tmp_path, [4, 4], bad={(0, 0): "corrupt_image", (1, 1): "no_caption",
                                                          (1, 3): "empty_caption"})
    stream = ImageTextStream.from_tar_shards(str(tmp_path / "*.tar"), rank=0, world_size=1, num_epochs=1,
                                             on_error="skip")
    with caplog.at_level(logging.WARNING, logger="efficientvlm.data.streaming"):
        pairs = {(e["shard"], e["key"]) for e in stream}
    assert pairs == set(good) and stream.skipped == 3
    assert f"Skipped shard {paths[1]}, sample '000010003': an empty caption" in caplog.text
    assert "(3 skipped so far by this DataLoader worker)" in caplog.text
    write_tar_shards(tmp_path / "empty", [2], bad={(0, 0): "no_image", (0, 1): "no_caption"})
    with pytest.raises(BadSampleError, match="without one usable pair"):
        list(ImageTextStream.from_tar_shards(str(tmp_path / "empty" / "*.tar"), rank=0, world_size=1,
                                             num_epochs=1, on_error="skip"))


# ---- datasets streams --------------------------------------------------------------------------------------------


def write_parquet_folder(folder: Path, files: int, rows: int) -> dict:
    """``files`` parquet files of ``rows`` rows each (an image column, a caption column and a key); returns
    ``{key: caption}``."""
    folder.mkdir(parents=True)
    captions = {}
    for f in range(files):
        keys_, images, texts = [], [], []
        for r in range(rows):
            key = f"{f}-{r}"
            keys_.append(key)
            images.append(Image.new("RGB", (8, 8), sample_colour(f, r)))
            texts.append(" ".join(WORDS[(f + r + j) % 13] for j in range(2)))
            captions[key] = texts[-1]
        features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string"),
                                      "key": datasets.Value("string")})
        datasets.Dataset.from_dict({"image": images, "caption": texts, "key": keys_},
                                   features=features).to_parquet(str(folder / f"part-{f}.parquet"))
    return captions


def test_a_datasets_stream_is_split_over_processes_and_workers_and_resumes(tmp_path):
    captions = write_parquet_folder(tmp_path / "pairs", files=5, rows=3)
    seen = collections.Counter()
    for rank in range(2):
        stream = ImageTextStream.from_datasets(str(tmp_path / "pairs"), key_column="key", rank=rank, world_size=2,
                                               num_epochs=1)
        for batch in loader(stream, num_workers=2, batch_size=2):
            for example in batch:
                seen[example["key"]] += 1
                assert example["caption"] == captions[example["key"]] and example["image"].size == (8, 8)
    assert dict(seen) == {key: 1 for key in captions}

    def stream():
        return ImageTextStream.from_datasets(str(tmp_path / "pairs"), key_column="key", rank=0, world_size=2)

    full = keys(loader(stream(), batch_size=2), limit=12)
    for consumed in (3, 8):
        resumed = stream()
        resumed.load_state_dict(stream().state_dict(consumed, batch_size=2, num_workers=2))
        assert keys(loader(resumed, batch_size=2), limit=12 - consumed) == full[consumed:]
    with pytest.raises(ValueError, match="no column 'text'"):
        ImageTextStream.from_datasets(str(tmp_path / "pairs"), caption_column="text")


# ---- the trainer -------------------------------------------------------------------------------------------------


class RecordingTrainer(DistillationTrainer):
    """Records the ``image_ids`` of every batch it trains on."""

    seen: list

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.seen.append(inputs["image_ids"].tolist())
        return super().training_step(model, inputs, num_items_in_batch)


def train_on_stream(tmp_path, output_dir, max_steps, resume=None, stop_at=None, ignore_data_skip=True,
                    num_workers=2):
    from transformers import TrainerCallback

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if stop_at is not None and state.global_step >= stop_at:
                control.should_training_stop = True

    torch.manual_seed(0)
    teacher = EfficientVLMForPreTraining(tiny_config())
    student = narrow_student(teacher.config, EfficientVLMForPreTraining)
    stream = ImageTextStream.from_tar_shards(str(tmp_path / "shards" / "*.tar"), seed=2)
    args = DistillationConfig(output_dir=str(output_dir), per_device_train_batch_size=2, max_steps=max_steps,
                              gradient_accumulation_steps=2, save_strategy="steps", save_steps=3, report_to=[],
                              disable_tqdm=True, use_cpu=True, seed=0, dataloader_num_workers=num_workers,
                              ignore_data_skip=ignore_data_skip)
    trainer = RecordingTrainer(model=student, args=args, teacher_model=teacher, train_dataset=stream,
                               data_collator=ImageTextPretrainingCollator(StandInProcessor(), max_length=8),
                               callbacks=[StopAt()])
    trainer.seen = []
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def test_the_trainer_checkpoints_the_stream_and_resumes_after_the_last_batch(tmp_path):
    write_tar_shards(tmp_path / "shards", [3, 4, 2, 5])
    full = train_on_stream(tmp_path, tmp_path / "full", max_steps=6).seen
    assert len(full) == 12 and len({i for batch in full for i in batch}) == 14  # 48 pairs: over three epochs
    part = train_on_stream(tmp_path, tmp_path / "part", max_steps=6, stop_at=3).seen
    checkpoint = tmp_path / "part" / "checkpoint-3"
    state = json.loads((checkpoint / STREAM_STATE_NAME).read_text())
    assert (state["batches"], state["batch_size"], state["num_workers"]) == (6, 2, 2)
    resumed = train_on_stream(tmp_path, tmp_path / "part", max_steps=6, resume=str(checkpoint))
    assert part == full[:6] and resumed.seen == full[6:] and resumed.state.global_step == 6
    with pytest.raises(ValueError, match="ignore_data_skip=True"):
        train_on_stream(tmp_path, tmp_path / "part", max_steps=6, resume=str(checkpoint), ignore_data_skip=False)


def test_the_trainer_refuses_a_stream_that_ends_or_belongs_to_another_process(tmp_path):
    write_tar_shards(tmp_path, [2, 2])
    teacher = EfficientVLMForPreTraining(tiny_config())
    for stream, match in ((ImageTextStream.from_tar_shards(str(tmp_path / "*.tar"), num_epochs=1), "num_epochs=None"),
                          (ImageTextStream.from_tar_shards(str(tmp_path / "*.tar"), rank=1, world_size=2),
                           "built for rank 1 of 2 processes")):
        trainer = DistillationTrainer(model=narrow_student(teacher.config, EfficientVLMForPreTraining),
                                      teacher_model=teacher, train_dataset=stream,
                                      args=DistillationConfig(output_dir=str(tmp_path / "o"), max_steps=1,
                                                              use_cpu=True, report_to=[]))
        with pytest.raises(ValueError, match=match):
            trainer.get_train_dataloader()


def test_accelerate_launch_two_processes_two_workers_read_every_pair_once_and_resume(tmp_path):
    write_tar_shards(tmp_path / "shards", [3] * 8)  # 24 pairs, 8 shards over 2 processes x 2 workers
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests"), str(ROOT)]),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(port), str(ROOT / "tests" / "ddp_stream_worker.py"), str(tmp_path)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # 4 batches of 3 per process are one epoch: 2 shards of 3 pairs per slot, 2 slots per process
    ids = [i for rank in ranks for batch in rank["full"][:4] for i in batch]
    assert sorted(ids) == sorted(s * 2**32 + i for s in range(8) for i in range(3))  # every pair once
    for rank in ranks:
        assert rank["part"] + rank["resumed"] == rank["full"]  # the resumed run continued the stream exactly


# ---- the example script ------------------------------------------------------------------------------------------


def test_pretrain_distill_example_streams_shards_and_resumes(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import pretrain_distill
    finally:
        sys.path.pop(0)
    torch.manual_seed(0)
    EfficientVLMForPreTraining(tiny_config()).save_pretrained(tmp_path / "teacher")
    monkeypatch.setattr(pretrain_distill, "load_processor", lambda path: StandInProcessor())
    write_tar_shards(tmp_path / "shards", [3, 2, 4, 3])
    common = ["--teacher_name_or_path", str(tmp_path / "teacher"), "--vision_layers", "2", "--text_layers", "1",
              "--fusion_layers", "1", "--per_device_train_batch_size", "2", "--max_length", "8",
              "--report_to", "none", "--use_cpu", "--disable_tqdm", "true", "--dataloader_num_workers", "2"]
    shards = ["--train_shards", str(tmp_path / "shards" / "{00000..00003}.tar")]
    out = tmp_path / "student"
    trainer = pretrain_distill.main([*common, *shards, "--output_dir", str(out), "--max_steps", "3",
                                     "--save_steps", "2", "--logging_steps", "1"])
    assert isinstance(trainer.train_dataset, ImageTextStream) and trainer.state.global_step == 3
    assert any("kd_logits_mlm" in entry for entry in trainer.state.log_history)
    assert json.loads((out / "checkpoint-2" / STREAM_STATE_NAME).read_text())["batches"] == 2
    assert EfficientVLMForPreTraining.from_pretrained(out).config.vision_config.num_hidden_layers == 2
    resumed = pretrain_distill.main([*common, *shards, "--output_dir", str(out), "--max_steps", "3",
                                     "--resume_from_checkpoint", str(out / "checkpoint-2")])
    assert resumed.state.global_step == 3 and resumed.args.ignore_data_skip
    write_parquet_folder(tmp_path / "parquet", files=2, rows=3)
    streamed = pretrain_distill.main([*common, "--train_stream", str(tmp_path / "parquet"), "--output_dir",
                                      str(tmp_path / "from-datasets"), "--max_steps", "1", "--save_strategy", "no"])
    assert streamed.state.global_step == 1
    with pytest.raises(ValueError, match="exactly one of --train_file, --train_shards or --train_stream"):
        pretrain_distill.main([*common, *shards, "--train_stream", "x", "--output_dir", str(tmp_path / "bad")])
    with pytest.raises(ValueError, match="--max_steps"):
        pretrain_distill.main([*common, *shards, "--output_dir", str(tmp_path / "bad")])
