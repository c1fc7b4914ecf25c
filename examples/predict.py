"""Predict on a folder of images with a saved EfficientVLM checkpoint: answer one question about each image (VQA,
through the visual-question-answering pipeline) or caption each image (captioning), and write one JSON line per
image. Nothing is trained.

    python examples/predict.py --model path/or/hub-id --images photos/ --question "what color is the car?"
    python examples/predict.py --model path/to/captioner --images photos/ --task captioning --output out.jsonl

Writes one JSON object per image (``{"image": path, "answers": [...]}`` or ``{"image": path, "caption": ...}``) to
``--output`` or standard output. Unreadable images are reported with their path and skipped only with
``--skip_bad_images``; by default the first one stops the run. A user mistake (a missing folder, an unreadable
image, a bad flag value) prints one error message and exits with status 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoProcessor, pipeline

from efficientvlm import EfficientVLMForCaptioning
from efficientvlm.models.image_processing_efficientvlm import load_image_file
from efficientvlm.scripts import script_parser
from efficientvlm.user_errors import check_checkpoint_argument, run_script

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class PredictArguments:
    model: str = field(metadata={"help": "EfficientVLM checkpoint folder or Hub id"})
    images: str = field(metadata={"help": "folder of images (searched recursively)"})
    task: str = field(default="vqa", metadata={"help": "vqa | captioning"})
    question: str | None = field(default=None, metadata={"help": "VQA: the question asked about every image"})
    top_k: int = field(default=3, metadata={"help": "VQA: answers per image"})
    prompt: str | None = field(default=None, metadata={"help": "captioning: the text captions start with (default: "
                                                               "the processor's, 'a picture of '); left out of the "
                                                               "output"})
    batch_size: int = field(default=8, metadata={"help": "images per forward"})
    output: str | None = field(default=None, metadata={"help": "JSON-lines output file (default: stdout)"})
    skip_bad_images: bool = field(default=False, metadata={"help": "report unreadable images and go on"})


def image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"--images {folder} is not a folder.")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"No image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}.")
    return files


def readable(files: list[Path], skip: bool) -> list[Path]:
    good = []
    for path in files:
        try:
            load_image_file(path)
            good.append(path)
        except (OSError, ValueError) as error:
            if not skip:
                raise
            print(f"skipping {path}: {error}", file=sys.stderr)
    return good


def main(argv: list[str] | None = None) -> list[dict]:
    args, script_args = script_parser((PredictArguments,), __doc__).parse_args_into_dataclasses(args=argv)
    script_args.apply()
    check_checkpoint_argument(args.model, "--model")
    if args.task not in ("vqa", "captioning"):
        raise ValueError(f"--task must be vqa or captioning, got {args.task!r}.")
    files = readable(image_files(Path(args.images)), args.skip_bad_images)
    results = []
    if args.task == "vqa":
        if not args.question or not args.question.strip():
            raise ValueError("--question is required for --task vqa.")
        vqa = pipeline("visual-question-answering", model=args.model)
        answers = vqa([str(f) for f in files], args.question, top_k=args.top_k, batch_size=args.batch_size)
        results = [{"image": str(f), "question": args.question, "answers": a} for f, a in zip(files, answers)]
    elif args.task == "captioning":
        model = EfficientVLMForCaptioning.from_pretrained(args.model).eval()
        processor = AutoProcessor.from_pretrained(args.model)
        for start in range(0, len(files), args.batch_size):
            chunk = files[start:start + args.batch_size]
            inputs = processor.caption_inputs([str(f) for f in chunk], prompt=args.prompt)  # images and prompt
            with torch.no_grad():
                captions = processor.decode_captions(model.generate(**inputs), prompt=args.prompt)  # prompt removed
            results += [{"image": str(f), "caption": c} for f, c in zip(chunk, captions)]
    else:
        raise ValueError(f"--task must be vqa or captioning, got {args.task!r}.")
    lines = "".join(json.dumps(r) + "\n" for r in results)
    if args.output:
        Path(args.output).write_text(lines)
    else:
        sys.stdout.write(lines)
    return results


if __name__ == "__main__":
    sys.exit(run_script(main))
