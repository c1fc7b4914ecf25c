"""Quick start: build an EfficientVLM student, save it as a Hub-style folder, answer a question with the pipeline.

    python examples/quickstart.py [--output-dir quickstart-model] [--image path/to/image.png]

Everything runs offline: the WordPiece vocabulary is written locally and the image is drawn with PIL. The
weights are random, so the answers are too - this shows the plumbing (config, model, processor, save/load,
``pipeline("visual-question-answering")``), not accuracy. Training and pruning come from the trainers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, ImageDraw
from transformers import BertTokenizer, pipeline, set_seed

import efficientvlm  # noqa: F401  (registers the Auto classes and the VQA pipeline)
from efficientvlm import (
    EfficientVLMConfig,
    EfficientVLMForVisualQuestionAnswering,
    EfficientVLMImageProcessor,
    EfficientVLMProcessor,
)
from efficientvlm.user_errors import run_script

WORDS = ("what color is the shape circle square triangle how many are there a an of in on left right red green "
         "blue yellow yes no one two three ?").split()
ANSWERS = ["red", "green", "blue", "yellow", "circle", "square", "triangle", "yes", "no", "1", "2", "3"]


def build_tokenizer(directory: Path) -> BertTokenizer:
    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return BertTokenizer(vocab=str(directory / "vocab.txt"), do_lower_case=True, model_max_length=40)


def draw_image(path: Path) -> Path:
    image = Image.new("RGB", (224, 224), "white")
    ImageDraw.Draw(image).ellipse((60, 60, 160, 160), fill="red")
    image.save(path)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=Path("quickstart-model"))
    parser.add_argument("--image", type=Path, default=None)
    parser.add_argument("--question", default="what color is the circle?")
    args = parser.parse_args(argv)

    tokenizer = build_tokenizer(args.output_dir / "vocab")
    # The paper's student (6 vision / 3 text / 3 fusion layers) at a reduced width, so it builds in a second.
    config = EfficientVLMConfig.student(
        vision_config={"hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 1024},
        text_config={"hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 1024,
                     "vocab_size": len(tokenizer), "bos_token_id": tokenizer.cls_token_id,
                     "eos_token_id": tokenizer.sep_token_id, "mask_token_id": tokenizer.mask_token_id},
        fusion_config={"hidden_size": 256, "num_attention_heads": 4, "num_cross_attention_heads": 4,
                       "intermediate_size": 1024},
        id2label=dict(enumerate(ANSWERS)),
    )
    set_seed(0)  # before the model is built
    model = EfficientVLMForVisualQuestionAnswering(config)
    processor = EfficientVLMProcessor(EfficientVLMImageProcessor(), tokenizer)
    model.save_pretrained(args.output_dir)
    processor.save_pretrained(args.output_dir)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"saved a {n_params / 1e6:.1f}M-parameter EfficientVLM VQA model + processor to {args.output_dir}/")

    vqa = pipeline("visual-question-answering", model=str(args.output_dir))
    image = args.image or draw_image(args.output_dir / "red_circle.png")
    answers = vqa(str(image), args.question, top_k=3)
    print(f"Q: {args.question}")
    for answer in answers:
        print(f"   {answer['answer']:>10s}  {answer['score']:.3f}   (random weights: untrained answers)")


if __name__ == "__main__":
    sys.exit(run_script(main))
