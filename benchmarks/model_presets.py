"""Parameter counts and latency of the teacher and student presets (random weights), measured in one process.

    python benchmarks/model_presets.py                       # 384 px, batch 1 and 8, VQA head
    python benchmarks/model_presets.py --image-size 224 --repeats 5

Latency is the median wall time of a full VQA forward pass (vision tower, text encoder, fusion, classifier) under
``torch.inference_mode``. Teacher and student are timed alternately in the same process, so the ratio is robust to
the machine's load even when the absolute times are not.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from efficientvlm import EfficientVLMConfig, EfficientVLMForVisualQuestionAnswering


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def time_forward(model, inputs, repeats: int) -> list[float]:
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            model(**inputs)
            times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=384)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--text-length", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--num-labels", type=int, default=3129, help="VQA answer vocabulary (VQAv2 standard: 3129)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    labels = {i: str(i) for i in range(args.num_labels)}
    presets = {
        "teacher (12/6/6)": EfficientVLMConfig(id2label=labels),
        "student (6/3/3)": EfficientVLMConfig.student(id2label=labels),
    }
    models = {}
    for name, config in presets.items():
        config.vision_config.image_size = args.image_size  # fine-tuning resolution, as after interpolation
        models[name] = EfficientVLMForVisualQuestionAnswering(config).eval()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"image {args.image_size} px, text {args.text_length} tokens, median of {args.repeats} runs\n")
    params = {name: count_parameters(m) for name, m in models.items()}
    rows = []
    for batch in args.batch_sizes:
        inputs = {
            "pixel_values": torch.randn(batch, 3, args.image_size, args.image_size),
            "input_ids": torch.randint(1000, 30000, (batch, args.text_length)),
            "attention_mask": torch.ones(batch, args.text_length, dtype=torch.long),
        }
        for model in models.values():  # warm-up
            time_forward(model, inputs, 1)
        times = {name: [] for name in models}
        for _ in range(args.repeats):  # alternate, so both see the same machine load
            for name, model in models.items():
                times[name] += time_forward(model, inputs, 1)
        rows.append((batch, {name: statistics.median(t) for name, t in times.items()}))

    teacher, student = list(models)
    print("| model | parameters | " + " | ".join(f"batch {b} latency" for b, _ in rows) + " |")
    print("|---|---|" + "---|" * len(rows))
    for name in models:
        cells = " | ".join(f"{latency[name] * 1000:.0f} ms" for _, latency in rows)
        print(f"| {name} | {params[name] / 1e6:.1f}M | {cells} |")
    ratio_cells = " | ".join(f"{latency[teacher] / latency[student]:.2f}x" for _, latency in rows)
    print(f"| teacher / student | {params[teacher] / params[student]:.2f}x | {ratio_cells} |")


if __name__ == "__main__":
    main()
