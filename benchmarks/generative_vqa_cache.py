"""Generative VQA speed: answer-list ranking and ``generate()`` with the key/value cache and without it.

    python benchmarks/generative_vqa_cache.py                  # width 256, 6/3/3/3 layers, 128 answers, k = 128
    python benchmarks/generative_vqa_cache.py --batch-sizes 1 8 --repeats 5 --json out.json
    python benchmarks/generative_vqa_cache.py --smoke          # tiny model, seconds

The model is an ``EfficientVLMForGenerativeVQA`` with random weights built from a config (nothing is downloaded):
the paper's student depth (6 vision / 3 text / 3 fusion / 3 decoder layers) at a small width (``--hidden-size``,
heads of 64, FFN 4x), ``--image-size`` px images (patch 16), ``--question-length`` question tokens, a vocabulary of
``--vocab-size`` and an answer list of ``--answers`` random answers of 1-3 tokens, ranked with ``k`` = ``--k``
(the paper's 128). Timed, in eval mode under ``torch.no_grad``:

* **rank**: a full forward that ranks the answer list (the encoders, the first-token step, the ``k`` candidates
  re-scored), with the cache (the default: the question's cross-attention keys and values computed once per
  question and shared by its ``k`` candidates, which continue from the cached ``[CLS]``) and with ``use_cache=False``
  (every candidate against its own copy of the question, from ``[CLS]``);
* **rank (decoder only)**: ``rank_answers`` on already fused questions, the part the cache changes;
* **generate**: ``generate()`` from ``[CLS]``, greedy and beam ``--num-beams``, exactly ``--new-tokens`` new tokens
  (the end token is held back so that random weights cannot stop early), with the cache (each step runs the new
  token only; the question's keys and values once per question, shared by its beams) and with ``use_cache=False``
  (the whole answer so far and every beam's question keys and values at every step).

Timing: ``efficientvlm.evaluation.measure_latency`` - the median of ``--repeats`` calls per variant, the cached and
uncached variants called one after the other, round after round, in one process on ``--threads`` threads (default 1:
steadier ratios on shared cores), after ``--warmup`` untimed rounds. The ratios are the figures to compare; absolute
times follow the machine's load. The cached and uncached results are also compared (``same``: identical ranked
answers and scores within 1e-4, identical generated sequences).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
from torch import nn
from transformers.utils import logging as transformers_logging

from efficientvlm import EfficientVLMGenerativeVQAConfig, EfficientVLMForGenerativeVQA
from efficientvlm.evaluation import measure_latency


class _Call(nn.Module):
    """A model called through one of its methods, for ``measure_latency`` (which calls ``module(**inputs)``)."""

    def __init__(self, model: nn.Module, method):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, **inputs):
        return self.method(self.model, **inputs)


def build_model(args) -> EfficientVLMForGenerativeVQA:
    width, heads = args.hidden_size, max(1, args.hidden_size // 64)
    common = {"hidden_size": width, "num_attention_heads": heads, "head_dim": width // heads,
              "intermediate_size": 4 * width}
    layers = (2, 1, 1, 1) if args.smoke else (6, 3, 3, 3)
    generator = torch.Generator().manual_seed(0)
    answers = {}
    while len(answers) < args.answers:  # distinct random answers of 1-3 tokens (ids from 5: not special tokens)
        length = int(torch.randint(1, 4, (1,), generator=generator))
        tokens = torch.randint(5, args.vocab_size, (length,), generator=generator).tolist()
        answers.setdefault(" ".join(map(str, tokens)), tokens)
    config = EfficientVLMGenerativeVQAConfig(
        vision_config={**common, "num_hidden_layers": layers[0], "image_size": args.image_size, "patch_size": 16},
        text_config={**common, "num_hidden_layers": layers[1], "vocab_size": args.vocab_size, "pad_token_id": 0,
                     "bos_token_id": 2, "eos_token_id": 3},
        fusion_config={**common, "num_hidden_layers": layers[2], "num_cross_attention_heads": heads},
        decoder_config={**common, "num_hidden_layers": layers[3], "num_cross_attention_heads": heads},
        id2label=dict(enumerate(answers)), answer_token_ids=list(answers.values()), rank_k=args.k,
        max_answer_length=args.new_tokens + 1, projection_dim=min(256, width),
    )
    torch.manual_seed(0)
    return EfficientVLMForGenerativeVQA(config).eval()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--question-length", type=int, default=16)
    parser.add_argument("--vocab-size", type=int, default=2000)
    parser.add_argument("--answers", type=int, default=128)
    parser.add_argument("--k", type=int, default=128)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--num-beams", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=str, default=None, help="also write the results to this file")
    parser.add_argument("--smoke", action="store_true", help="a tiny model, 2 rounds: checks the script runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.hidden_size, args.image_size, args.vocab_size, args.answers, args.k = 64, 32, 100, 12, 12
        args.batch_sizes, args.repeats, args.warmup, args.new_tokens = [2], 2, 0, 3

    threads, verbosity = torch.get_num_threads(), transformers_logging.get_verbosity()
    torch.set_num_threads(args.threads)
    transformers_logging.set_verbosity_error()  # not the notes on min/max lengths given both ways
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)
        transformers_logging.set_verbosity(verbosity)


def _run(args) -> dict:
    model = build_model(args)
    tokens = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens}
    variants = {
        "rank": lambda m, use_cache, **x: m(**x, use_cache=use_cache),
        "rank (decoder only)": lambda m, use_cache, question_embeds, attention_mask: m.rank_answers(
            question_embeds, attention_mask, use_cache=use_cache),
        "generate (greedy)": lambda m, use_cache, **x: m.generate(**x, use_cache=use_cache, num_beams=1, **tokens),
        f"generate (beam {args.num_beams})": lambda m, use_cache, **x: m.generate(
            **x, use_cache=use_cache, num_beams=args.num_beams, **tokens),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()}")
    print(f"width {args.hidden_size}, {args.image_size} px, {args.question_length} question tokens, {args.answers} "
          f"answers, k = {model.config.rank_k}, {args.new_tokens} new tokens; median of {args.repeats} rounds "
          f"(round-robin, after {args.warmup} warm-up), {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
          "parameters\n")
    rows = []
    with torch.no_grad():
        for batch in args.batch_sizes:
            generator = torch.Generator().manual_seed(batch)
            question = {
                "pixel_values": torch.randn(batch, 3, args.image_size, args.image_size, generator=generator),
                "input_ids": torch.randint(5, args.vocab_size, (batch, args.question_length), generator=generator),
                "attention_mask": torch.ones(batch, args.question_length, dtype=torch.long),
            }
            question["input_ids"][:, 0] = 2
            question["attention_mask"][-1, args.question_length // 2:] = 0  # one padded question
            fused = {"question_embeds": model.efficientvlm(**question).last_hidden_state,
                     "attention_mask": question["attention_mask"]}
            for name, call in variants.items():
                inputs = fused if name == "rank (decoder only)" else question
                pair = {cached: _Call(model, lambda m, cached=cached, **x: call(m, cached, **x))
                        for cached in (True, False)}
                seconds = measure_latency({"cached": pair[True], "uncached": pair[False]}, lambda: inputs,
                                          repeats=args.repeats, warmup=args.warmup)
                rows.append({"batch_size": batch, "variant": name, "seconds": seconds,
                             "uncached_over_cached": seconds["uncached"] / seconds["cached"],
                             "same": _same(pair[True](**inputs), pair[False](**inputs))})
    print("| batch | variant | cached | uncached | uncached / cached | same results |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        s = row["seconds"]
        print(f"| {row['batch_size']} | {row['variant']} | {1e3 * s['cached']:.1f} ms | {1e3 * s['uncached']:.1f} ms | "
              f"{row['uncached_over_cached']:.2f}x | {'yes' if row['same'] else 'NO'} |")
    result = {"settings": {k: v for k, v in vars(args).items() if k != "json"} | {
        "threads": torch.get_num_threads(), "torch": torch.__version__}, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


def _same(cached, uncached) -> bool:
    """Ranking: the same ranked answers and scores (1e-4); generation: the same sequences."""
    if isinstance(cached, torch.Tensor):
        return cached.tolist() == uncached.tolist()
    if isinstance(cached, tuple):  # rank_answers: (scores, ranked)
        cached, uncached = {"logits": cached[0], "ranked_answer_ids": cached[1]}, \
            {"logits": uncached[0], "ranked_answer_ids": uncached[1]}
    finite = torch.isfinite(cached["logits"])
    return (torch.equal(cached["ranked_answer_ids"], uncached["ranked_answer_ids"])
            and torch.equal(finite, torch.isfinite(uncached["logits"]))
            and bool(torch.allclose(cached["logits"][finite], uncached["logits"][finite], rtol=0, atol=1e-4)))


if __name__ == "__main__":
    main()
