"""Captioning speed: ``generate()`` with the key/value cache, without it, and transformers' BLIP of similar size.

    python benchmarks/captioning_cache.py                          # student 6/3/3, width 768, 384 px, beam 3, 20 tokens
    python benchmarks/captioning_cache.py --batch-sizes 1 4 --repeats 5 --json out.json
    python benchmarks/captioning_cache.py --smoke                  # tiny models, seconds

Models, all with random weights built from configs (nothing is downloaded), in eval mode, under ``torch.no_grad``:

* **cached**: ``EfficientVLMForCaptioning`` of the paper's student (6 vision / 3 text / 3 fusion layers, width 768)
  at ``--image-size``, BERT's vocabulary size, ``generate()`` with its default cache: the image is
  encoded once, its cross-attention keys and values are computed once per image, and each step runs only the new
  token through the decoder;
* **uncached**: the same model with ``use_cache=False``, which reruns the whole prefix (and the cross-attention keys
  and values of every beam) at every step - what ``generate()`` did before the cache;
* **BLIP**: ``BlipForConditionalGeneration`` with a 6-layer ViT (width 768, same image size and patch) and a 6-layer
  BERT decoder whose every layer has cross-attention (twice the student's 3), with transformers' own cache;
* **vision**: the student's vision tower alone (``encode_image``), the part of a ``generate()`` call that no cache
  shortens.

Every model decodes from one start token with the same settings (``--num-beams``, exactly ``--new-tokens`` new
tokens: the end token is held back so that random weights cannot stop early), so all do the same number of steps.
Timing: the median wall time of one ``generate()`` call per model and batch size, the models called one after the
other, round after round, in one process on ``--threads`` threads (default 1: steadier ratios on shared cores), after
``--warmup`` untimed rounds. The ratios between models are the figures to compare; absolute times follow the
machine's load. The cached and uncached sequences are also compared token for token (reported as
``same_sequences``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from transformers import BlipConfig, BlipForConditionalGeneration
from transformers.utils import logging as transformers_logging

from efficientvlm import EfficientVLMConfig, EfficientVLMForCaptioning

MODELS = ("cached", "uncached", "blip", "vision")


def build_models(smoke: bool, image_size: int) -> dict[str, torch.nn.Module]:
    """The EfficientVLM captioner (shared by "cached" and "uncached") and a BLIP captioner of similar size."""
    if smoke:
        width, heads, ffn, layers, vocab, patch = 32, 2, 64, (2, 1, 1), 128, 8
    else:
        width, heads, ffn, layers, vocab, patch = 768, 12, 3072, (6, 3, 3), 30522, 16
    encoder = {"hidden_size": width, "num_attention_heads": heads, "head_dim": width // heads, "intermediate_size": ffn}
    vision_layers, text_layers, fusion_layers = layers
    config = EfficientVLMConfig(
        vision_config={**encoder, "num_hidden_layers": vision_layers, "image_size": image_size, "patch_size": patch},
        text_config={**encoder, "num_hidden_layers": text_layers, "vocab_size": vocab},
        fusion_config={**encoder, "num_hidden_layers": fusion_layers, "num_cross_attention_heads": heads},
    )
    blip_config = BlipConfig(
        vision_config={"hidden_size": width, "intermediate_size": ffn, "num_hidden_layers": vision_layers,
                       "num_attention_heads": heads, "image_size": image_size, "patch_size": patch},
        text_config={"hidden_size": width, "encoder_hidden_size": width, "intermediate_size": ffn,
                     "num_hidden_layers": text_layers + fusion_layers, "num_attention_heads": heads,
                     "vocab_size": vocab + 2, "bos_token_id": vocab, "sep_token_id": 102, "pad_token_id": 0},
    )
    torch.manual_seed(0)
    ours = EfficientVLMForCaptioning(config).eval()
    blip = BlipForConditionalGeneration(blip_config).eval()
    return {"efficientvlm": ours, "blip": blip}


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=384)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1])
    parser.add_argument("--num-beams", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=str, default=None, help="also write the results to this file")
    parser.add_argument("--smoke", action="store_true", help="tiny models, 32 px, 2 rounds: checks the script runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.image_size, args.repeats, args.warmup, args.new_tokens = 32, 2, 0, min(args.new_tokens, 4)

    threads, verbosity = torch.get_num_threads(), transformers_logging.get_verbosity()
    torch.set_num_threads(args.threads)
    transformers_logging.set_verbosity_error()  # not the notes on min/max lengths given both ways
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)
        transformers_logging.set_verbosity(verbosity)


def _run(args) -> dict:
    built = build_models(args.smoke, args.image_size)
    ours, blip = built["efficientvlm"], built["blip"]
    decoding = {"num_beams": args.num_beams, "max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens}
    generators = {
        "cached": lambda pixels: ours.generate(pixel_values=pixels, use_cache=True, **decoding),
        "uncached": lambda pixels: ours.generate(pixel_values=pixels, use_cache=False, **decoding),
        "blip": lambda pixels: blip.generate(pixel_values=pixels, **decoding),
        "vision": lambda pixels: ours.efficientvlm.encode_image(pixels).last_hidden_state,
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()}")
    print(f"image {args.image_size} px, beam {args.num_beams}, {args.new_tokens} new tokens, median of {args.repeats} "
          f"rounds (round-robin, after {args.warmup} warm-up)\n")
    parameters = {"efficientvlm": count_parameters(ours), "blip": count_parameters(blip)}
    rows = []
    with torch.no_grad():
        for batch in args.batch_sizes:
            pixels = torch.randn(batch, 3, args.image_size, args.image_size, generator=torch.Generator().manual_seed(0))
            times: dict[str, list[float]] = {name: [] for name in MODELS}
            outputs = {}
            for round_index in range(args.warmup + args.repeats):
                for name in MODELS:
                    start = time.perf_counter()
                    outputs[name] = generators[name](pixels)
                    elapsed = time.perf_counter() - start
                    if round_index >= args.warmup:
                        times[name].append(elapsed)
            median = {name: statistics.median(values) for name, values in times.items()}
            rows.append({
                "batch_size": batch,
                "seconds": median,
                "uncached_over_cached": median["uncached"] / median["cached"],
                "cached_over_blip": median["cached"] / median["blip"],
                "uncached_over_blip": median["uncached"] / median["blip"],
                "same_sequences": outputs["cached"].tolist() == outputs["uncached"].tolist(),
                "generated_length": outputs["cached"].shape[1],
            })

    print("| batch | cached | uncached | BLIP | vision tower | uncached / cached | cached / BLIP | uncached / BLIP "
          "| same sequences |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        s = row["seconds"]
        print(f"| {row['batch_size']} | {s['cached']:.3f} s | {s['uncached']:.3f} s | {s['blip']:.3f} s | "
              f"{s['vision']:.3f} s | {row['uncached_over_cached']:.2f}x | {row['cached_over_blip']:.2f}x | "
              f"{row['uncached_over_blip']:.2f}x | {'yes' if row['same_sequences'] else 'NO'} |")
    print(f"\nparameters: EfficientVLM {parameters['efficientvlm'] / 1e6:.1f}M, BLIP {parameters['blip'] / 1e6:.1f}M")
    result = {
        "settings": {"image_size": args.image_size, "batch_sizes": args.batch_sizes, "num_beams": args.num_beams,
                     "new_tokens": args.new_tokens, "repeats": args.repeats, "warmup": args.warmup,
                     "threads": torch.get_num_threads(), "smoke": args.smoke, "torch": torch.__version__},
        "parameters": parameters,
        "rows": rows,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
