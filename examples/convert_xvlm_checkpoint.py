"""Convert an official X-VLM_clip (teacher) or EfficientVLM checkpoint into an efficientvlm checkpoint folder.

    python examples/convert_xvlm_checkpoint.py \
        --checkpoint model_state_step_199999.th --vocab_file bert-base-uncased/vocab.txt \
        --output_dir xvlm-clip-teacher

The folder then loads with ``AutoModel.from_pretrained`` (after ``import efficientvlm``) and can be published with
``efficientvlm push``. Every tensor that could not be placed is listed (and written to ``conversion_report.json``);
``--strict`` turns any of them into an error. The logic lives in ``efficientvlm.hub.convert``. Weights the checkpoint
lacks are initialised from ``--seed``. A user mistake (a missing file, a bad flag value) prints one error message and
exits with status 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser, set_seed

from efficientvlm.hub.convert import HEAD_CLASSES, convert_official_checkpoint
from efficientvlm.user_errors import run_script


@dataclass
class ConversionArguments:
    checkpoint: str = field(metadata={"help": "Official checkpoint (a PyTorch state dict, maybe {'model': ...})."})
    vocab_file: str = field(metadata={"help": "vocab.txt of bert-base-uncased (the official tokenizer)."})
    output_dir: str = field(metadata={"help": "Folder to write the converted model, processor and report to."})
    head: str = field(default="auto", metadata={
        "help": "Head class: 'auto' (pretraining if the MLM head is present, retrieval if only ITC/ITM heads are, "
                "else the bare model), 'model', 'pretraining' or 'retrieval'.",
        "choices": ["auto", *sorted(HEAD_CLASSES)]})
    fusion_layer: int | None = field(default=None, metadata={
        "help": "Number of BERT layers forming the text encoder; the rest are fusion layers (default: half)."})
    head_dim: int = field(default=64, metadata={"help": "Width of one attention head (heads = query rows / head_dim)."})
    strict: bool = field(default=False, metadata={
        "help": "Fail if any tensor cannot be placed or any model weight is missing."})
    seed: int = field(default=0, metadata={"help": "Seed of the initialisation of weights the checkpoint lacks."})


def main(argv: list[str] | None = None) -> int:
    (args,) = HfArgumentParser(ConversionArguments).parse_args_into_dataclasses(args=argv)
    set_seed(args.seed)  # before the model is built
    result = convert_official_checkpoint(args.checkpoint, args.vocab_file, head=args.head,
                                         fusion_layer=args.fusion_layer, head_dim=args.head_dim, strict=args.strict)
    print(result.report)
    result.save_pretrained(args.output_dir)
    print(f"Saved {type(result.model).__name__} and its processor to {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
