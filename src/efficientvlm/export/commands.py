"""``efficientvlm export``: a checkpoint folder to ONNX / ONNX int8 / int8 / bf16, with a size-latency-accuracy report.

Exit status: 0 on success; 2 for a bad command line (unknown format, a folder that is not an EfficientVLM
checkpoint, a missing evaluation set), with a one-line error; 1 when a format is refused by the agreement check or
the export fails.
"""

from __future__ import annotations

import argparse
import sys

from .api import FORMATS


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``efficientvlm export``."""
    parser.add_argument("checkpoint", metavar="CHECKPOINT",
                        help="float32 checkpoint folder (model.save_pretrained, and the processor for --eval-dataset "
                             "and the pipeline)")
    parser.add_argument("output_dir", metavar="OUTPUT_DIR",
                        help="one sub-folder per format is written here, and export_report.json")
    parser.add_argument("--format", dest="formats", nargs="+", default=["onnx"], metavar="FORMAT",
                        help=f"one or more of {', '.join(FORMATS)} (space- or comma-separated; default: onnx). "
                             "onnx: the head's graphs, verified in ONNX Runtime; onnx-int8: ONNX Runtime's dynamic "
                             "int8 quantisation of them; int8: PyTorch with int8 Linear layers; bf16: bfloat16 "
                             "weights")
    check = parser.add_argument_group("accuracy check (VQA heads)")
    check.add_argument("--eval-dataset", metavar="DIR",
                       help="a datasets folder (Dataset.save_to_disk) of VQA rows: image, question[, answers]; each "
                            "format's top-1 answers are compared with the float32 model's")
    check.add_argument("--min-agreement", type=float, default=0.95,
                       help="refuse a format whose answers agree with float32 on fewer of the questions "
                            "(default: 0.95)")
    check.add_argument("--allow-disagreement", action="store_true",
                       help="keep such a format, with a warning, instead of refusing it")
    onnx = parser.add_argument_group("ONNX")
    onnx.add_argument("--exporter", choices=("dynamo", "legacy"), default="dynamo",
                      help="torch.onnx exporter: dynamo (torch.export-based, default) or legacy (TorchScript, "
                           "deprecated by PyTorch, faster to export)")
    onnx.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    onnx.add_argument("--tolerance", type=float, default=1e-3,
                      help="largest accepted difference between ONNX Runtime and PyTorch outputs (default: 1e-3)")
    timing = parser.add_argument_group("report")
    timing.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], help="latency batch sizes")
    timing.add_argument("--text-length", type=int, default=20, help="text tokens of the timed inputs")
    timing.add_argument("--repeats", type=int, default=5, help="timed round-robin rounds (median)")
    timing.add_argument("--threads", type=int, help="torch and ONNX Runtime threads while timing (default: torch's)")


def _usage_error(message: str) -> int:
    print(f"efficientvlm export: error: {message}", file=sys.stderr)
    return 2


def run_export(args: argparse.Namespace) -> int:
    """Run ``efficientvlm export``."""
    from pathlib import Path

    from .api import ExportRefused, check_checkpoint, check_formats, export, format_report

    try:
        formats = check_formats(args.formats)
        check_checkpoint(args.checkpoint)
        if args.eval_dataset is not None and not Path(args.eval_dataset).exists():
            raise ValueError(f"--eval-dataset {args.eval_dataset} does not exist (a folder written by "
                             "Dataset.save_to_disk).")
        if not 0 <= args.min_agreement <= 1:
            raise ValueError(f"--min-agreement {args.min_agreement} must be in [0, 1].")
    except ValueError as error:
        return _usage_error(str(error))
    try:
        report = export(args.checkpoint, args.output_dir, formats, eval_dataset=args.eval_dataset,
                        min_agreement=args.min_agreement, allow_disagreement=args.allow_disagreement,
                        exporter=args.exporter, opset=args.opset, tolerance=args.tolerance,
                        batch_sizes=tuple(args.batch_sizes), text_length=args.text_length, repeats=args.repeats,
                        num_threads=args.threads)
    except (ExportRefused, ImportError) as error:
        print(f"efficientvlm export: error: {error}", file=sys.stderr)
        return 1
    print(format_report(report))
    print(f"\n{', '.join(formats)} -> {args.output_dir} (report: {Path(args.output_dir) / 'export_report.json'})")
    return 0
