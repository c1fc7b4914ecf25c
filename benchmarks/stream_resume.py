"""Cost of resuming an ``ImageTextStream`` mid-epoch against reading the pairs it passes over.

Writes tar shards in img2dataset's layout into a temporary folder (``--shards`` shards of ``--pairs`` pairs: a
``--size`` px JPEG with a smooth pattern and some noise, a caption and a ``.json`` record each), then times, in one
process and on one slot (one process, no DataLoader workers):

* ``read``: one epoch of the stream, i.e. reading every member and decoding every image (what the Trainer's default
  resume, ``skip_first_batches``, does for the batches it skips, before it also collates them);
* ``resume``: starting the stream at the last pair of the epoch from its ``state_dict`` (the fast-forward reads the
  tar headers and captions of every shard before the position, never the image bytes), up to the first pair it yields;
* ``resume_later``: the same at the last pair of the third epoch: once a shard has been counted, whole epochs are
  passed by arithmetic, so resuming costs at most one scan of the headers of each shard, wherever training stopped
  (the Trainer's default resume re-reads every batch since the start of training).

The modes alternate for ``--repeats`` rounds and the medians are reported, with the process CPU time beside the
wall clock (steadier when other processes share the cores).

    python benchmarks/stream_resume.py                         # 4 shards of 2,500 pairs, 256 px: about a minute
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from efficientvlm.data import ImageTextStream


def write_shards(folder: Path, shards: int, pairs: int, size: int, seed: int = 0) -> int:
    """Shards of ``pairs`` JPEG/caption/json samples; returns the total bytes written."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    total = 0
    for shard in range(shards):
        path = folder / f"{shard:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for index in range(pairs):
                key = f"{shard:05d}{index:04d}"
                colour = rng.uniform(0.3, 1.0, 3)
                pixels = ramp[None, :, None] * colour + rng.normal(0, 8, (size, size, 3))
                buffer = io.BytesIO()
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
                caption = f"a picture number {index} of shard {shard}"
                record = {"key": key, "caption": caption, "status": "success", "width": size, "height": size}
                for extension, data in (("jpg", buffer.getvalue()), ("txt", caption.encode()),
                                        ("json", json.dumps(record).encode())):
                    info = tarfile.TarInfo(f"{key}.{extension}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        total += path.stat().st_size
    return total


def timed(function) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=2500, help="pairs per shard")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (img2dataset's default: 256)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        size = write_shards(Path(folder), args.shards, args.pairs, args.size)
        pattern = f"{folder}/*.tar"
        total = args.shards * args.pairs

        def read():
            assert sum(1 for _ in ImageTextStream.from_tar_shards(pattern, rank=0, world_size=1, num_epochs=1)) == total

        def resume(pairs: int):
            stream = ImageTextStream.from_tar_shards(pattern, rank=0, world_size=1)
            stream.load_state_dict(stream.state_dict(pairs, batch_size=1, num_workers=0))
            next(iter(stream))

        modes = {"read": read, "resume": lambda: resume(total - 1), "resume_later": lambda: resume(3 * total - 1)}
        times = {name: [] for name in modes}
        for _ in range(args.repeats):
            for name, function in modes.items():
                times[name].append(timed(function))
        medians = {name: tuple(statistics.median(t[i] for t in values) for i in (0, 1))
                   for name, values in times.items()}
        print(f"{args.shards} shards x {args.pairs} pairs, {args.size} px JPEG, {size / 2**20:.0f} MiB; "
              f"median of {args.repeats} (wall / CPU)")
        for name, (wall, cpu) in medians.items():
            print(f"  {name:12s} {wall:7.2f} s / {cpu:6.2f} s   ({1e6 * cpu / total:6.1f} us CPU per pair of an epoch)")
        print(f"  read / resume: {medians['read'][0] / medians['resume'][0]:.1f}x wall, "
              f"{medians['read'][1] / medians['resume'][1]:.1f}x CPU")


if __name__ == "__main__":
    main()
