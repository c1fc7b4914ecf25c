"""Cost of a distillation step against plain fine-tuning of the same student.

Times, on the same batches and in one process (the modes are interleaved round by round and the median is kept, so
that load from other processes hits every mode alike):

* ``plain``: ``transformers.Trainer.training_step`` of the student (forward, backward) plus the optimizer step;
* ``teacher``: the teacher's forward as ``DistillationTrainer`` runs it (no grad, hidden states and attention maps);
* ``student_states``: the plain step with hidden states and attention maps requested (attention maps switch the
  forward from SDPA to eager attention), to show where the overhead of distillation comes from;
* ``distill``: ``DistillationTrainer.training_step`` plus the optimizer step.

and reports ``distill / plain`` and ``distill / (plain + teacher)``; the goal is that distillation costs no more
than one teacher forward on top of plain training (the second ratio <= 1.1). Times are given by the wall clock and
by the process's CPU time; the latter is steadier when other processes share the cores.

Peak memory: each mode also runs in a fresh subprocess. On CUDA it reports ``torch.cuda.max_memory_allocated``;
on the CPU, the peak resident set size (``VmRSS`` of ``/proc/self/status``, sampled every millisecond by a thread)
while the steps run, as the increase over the RSS just before them ("step memory": activations, gradients,
optimizer state, teacher outputs) and as the absolute peak of the process (models, Python and libraries included).

    python benchmarks/distillation_step.py                   # small default sizes: a few minutes on 2 CPU cores
    python benchmarks/distillation_step.py --paper-sizes     # X-VLM_clip teacher (ViT-B/16 @224, 6+6 BERT) -> 6/3/3
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import torch
from transformers import Trainer, TrainingArguments

from efficientvlm.distillation import DistillationConfig, DistillationTrainer, masked_positions
from efficientvlm.models.configuration_efficientvlm import EfficientVLMConfig
from efficientvlm.models.modeling_efficientvlm import EfficientVLMForPreTraining
from efficientvlm.student import create_student

MODES = ("plain", "teacher", "student_states", "distill")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paper-sizes", action="store_true",
                        help="Teacher 12 vision / 6 text / 6 fusion layers of width 768 at 224 px, student 6/3/3.")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--text-length", type=int, default=30, help="Tokens per caption (the paper caps at 40).")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--width", type=int, default=256, help="Hidden width of every teacher encoder.")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=30522)
    parser.add_argument("--teacher-layers", type=int, nargs=3, default=[6, 4, 4], metavar=("V", "T", "F"))
    parser.add_argument("--student-layers", type=int, nargs=3, default=None, metavar=("V", "T", "F"),
                        help="Default: half the teacher's.")
    parser.add_argument("--rounds", type=int, default=10, help="Timed rounds (each runs every mode once).")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's).")
    parser.add_argument("--no-memory", action="store_true", help="Skip the per-mode memory subprocesses.")
    parser.add_argument("--json", help="Also write the results to this file.")
    parser.add_argument("--memory-mode", choices=MODES, help=argparse.SUPPRESS)  # internal: one mode, memory only
    args = parser.parse_args(argv)
    if args.paper_sizes:
        args.image_size, args.patch_size, args.width, args.heads = 224, 16, 768, 12
        args.teacher_layers = [12, 6, 6]
    if args.student_layers is None:
        args.student_layers = [max(1, n // 2) for n in args.teacher_layers]
    return args


def build(args: argparse.Namespace):
    """Teacher, student (layers copied from the teacher) and one synthetic pre-training batch."""
    torch.manual_seed(0)
    shared = dict(hidden_size=args.width, num_attention_heads=args.heads, head_dim=args.width // args.heads,
                  intermediate_size=4 * args.width)
    config = EfficientVLMConfig(
        vision_config=dict(shared, num_hidden_layers=args.teacher_layers[0], image_size=args.image_size,
                           patch_size=args.patch_size),
        text_config=dict(shared, num_hidden_layers=args.teacher_layers[1], vocab_size=args.vocab_size),
        fusion_config=dict(shared, num_hidden_layers=args.teacher_layers[2]),
    )
    teacher = EfficientVLMForPreTraining(config)
    student = create_student(teacher, *args.student_layers).train()
    batch, length = args.batch_size, args.text_length
    ids = torch.randint(104, args.vocab_size, (batch, length))  # above BERT's special tokens
    ids[:, 0], ids[:, -1] = 101, 102
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[batch // 2:, -length // 4:] = 0  # half the captions are a quarter shorter
    chosen = torch.rand(batch, length) < 0.25  # the paper's 25%, without its cap of 8 per caption
    chosen[:, 0] = chosen[:, -1] = False
    chosen &= mask.bool()
    inputs = {
        "pixel_values": torch.randn(batch, 3, args.image_size, args.image_size),
        "input_ids": ids, "attention_mask": mask,
        "mlm_input_ids": ids.masked_fill(chosen, 103), "mlm_labels": ids.masked_fill(~chosen, -100),
    }
    inputs["mlm_positions"] = masked_positions(inputs["mlm_labels"])  # as ImageTextPretrainingCollator does
    return teacher, student, inputs


def make_steps(args: argparse.Namespace, modes=MODES) -> dict:
    """Mode -> a callable running one step of that mode on the device."""
    teacher, student, inputs = build(args)
    output_dir = tempfile.mkdtemp()
    common = dict(output_dir=output_dir, report_to=[], use_cpu=not torch.cuda.is_available(), disable_tqdm=True)
    steps = {}
    if "plain" in modes or "student_states" in modes:
        plain = Trainer(model=copy.deepcopy(student), args=TrainingArguments(**common))
        plain.create_optimizer()
        plain.current_gradient_accumulation_steps = 1  # set by the training loop, which this bypasses
        batch = plain._prepare_inputs(inputs)

        def plain_step(states: bool = False):
            step_inputs = {**batch, "output_hidden_states": True, "output_attentions": True} if states else batch
            plain.training_step(plain.model, step_inputs)
            plain.optimizer.step()
            plain.model.zero_grad(set_to_none=True)

        steps["plain"] = plain_step
        steps["student_states"] = lambda: plain_step(states=True)
    if "distill" in modes or "teacher" in modes:
        distiller = DistillationTrainer(model=copy.deepcopy(student), args=DistillationConfig(**common),
                                        teacher_model=teacher)
        distiller.create_optimizer()
        distiller.current_gradient_accumulation_steps = 1
        batch = distiller._prepare_inputs(inputs)
        negatives = torch.roll(torch.arange(args.batch_size), 1).to(distiller.args.device)
        teacher_inputs = {key: value for key, value in batch.items() if key not in ("mlm_labels", "mlm_positions")}
        teacher_inputs.update(itm_negative_text_index=negatives, itm_negative_image_index=negatives.flip(0),
                              **distiller._output_flags)

        def distill_step():
            distiller.training_step(distiller.model, batch)
            distiller.optimizer.step()
            distiller.model.zero_grad(set_to_none=True)

        def teacher_forward():
            with torch.no_grad():
                distiller.teacher_model(**teacher_inputs)

        steps["distill"], steps["teacher"] = distill_step, teacher_forward
    return {mode: steps[mode] for mode in modes}


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_modes(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Median seconds per step of every mode, interleaved round by round: ``{"wall": {...}, "cpu": {...}}``.

    ``cpu`` is the process's CPU time (all threads, ``time.process_time``): on a machine shared with other
    processes it measures the work of a step more steadily than the wall clock does (on CUDA it means little).
    """
    steps = make_steps(args)
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    times = {clock: {mode: [] for mode in steps} for clock in ("wall", "cpu")}
    for _ in range(args.rounds):
        for mode, step in steps.items():
            synchronize()
            wall, cpu = time.perf_counter(), time.process_time()
            step()
            synchronize()
            times["wall"][mode].append(time.perf_counter() - wall)
            times["cpu"][mode].append(time.process_time() - cpu)
    return {clock: {mode: statistics.median(values) for mode, values in by_mode.items()}
            for clock, by_mode in times.items()}


def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def measure_memory(args: argparse.Namespace) -> dict[str, float]:
    """Peak memory of ``args.memory_mode`` alone, in MiB (run in a fresh process)."""
    step = make_steps(args, modes=(args.memory_mode,))[args.memory_mode]
    steps = args.warmup + 2
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return {"step_mib": (peak - before) / 2**20, "peak_mib": peak / 2**20}
    before, peak, done = _rss_bytes(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    for _ in range(steps):
        step()
    done.set()
    sampler.join()
    return {"step_mib": (peak[0] - before) / 2**20, "peak_mib": peak[0] / 2**20}


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_mode:
        print(json.dumps(measure_memory(args)))
        return {}
    teacher, student, _ = build(args)
    params = {name: sum(p.numel() for p in model.parameters()) / 1e6
              for name, model in (("teacher", teacher), ("student", student))}
    del teacher, student
    device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device {device}; teacher {params['teacher']:.1f}M / student {params['student']:.1f}M parameters; "
          f"layers {args.teacher_layers} -> {args.student_layers}, width {args.width}, batch {args.batch_size}, "
          f"{args.image_size}px / patch {args.patch_size}, {args.text_length} tokens, vocab {args.vocab_size}")
    seconds = time_modes(args)
    memory = {}
    if not args.no_memory:
        forwarded = list(argv if argv is not None else sys.argv[1:])
        if "--json" in forwarded:
            del forwarded[forwarded.index("--json"):forwarded.index("--json") + 2]
        for mode in MODES:
            result = subprocess.run([sys.executable, os.path.abspath(__file__), *forwarded, "--memory-mode", mode],
                                    capture_output=True, text=True, check=True)
            memory[mode] = json.loads(result.stdout.strip().splitlines()[-1])
    labels = {"plain": "plain fine-tuning step", "teacher": "teacher forward (states)",
              "student_states": "student step, states requested", "distill": "distillation step"}
    kind = "CUDA allocated" if torch.cuda.is_available() else "RSS"
    header = f"{'mode':34s} {'wall ms':>9s} {'CPU ms':>9s}"
    print(header + (f" {'step ' + kind + ' MiB':>20s} {'peak ' + kind + ' MiB':>20s}" if memory else ""))
    for mode in MODES:
        line = f"{labels[mode]:34s} {1000 * seconds['wall'][mode]:9.1f} {1000 * seconds['cpu'][mode]:9.1f}"
        if memory:
            line += f" {memory[mode]['step_mib']:20.1f} {memory[mode]['peak_mib']:20.1f}"
        print(line)
    ratios = {
        clock: {"distill/plain": t["distill"] / t["plain"],
                "distill/(plain+teacher)": t["distill"] / (t["plain"] + t["teacher"]),
                "student_states/plain": t["student_states"] / t["plain"]}
        for clock, t in seconds.items()
    }
    for name in ratios["wall"]:
        print(f"{name:34s} {ratios['wall'][name]:9.3f} {ratios['cpu'][name]:9.3f}")
    results = {"args": vars(args), "params_m": params, "seconds": seconds, "memory_mib": memory, "ratios": ratios}
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return results


if __name__ == "__main__":
    main()
