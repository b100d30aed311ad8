"""Robin's prompts (ChatML, the release's wording) and image preprocessing.

Every string here is the release's, byte for byte: a fine-tuned model answers its training
prompts, not paraphrases of them. Box text uses the original image size, masks stay
unpadded; only the image is padded to a square (``pad`` aspect ratio).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

PROMPT_VERSION = "robin/release-v1"
SYSTEM = "You are a helpful assistant."
HOLISTIC_QUESTION = "Generate an extremely detailed scene graph for given regions."
IMAGE, MASK, POS = "<image>", "<mask>", "<pos>"
IM_END = "<|im_end|>"
#: The release pads with the CLIP mean colour and normalises with CLIP's statistics.
PAD_COLOUR = (122, 116, 104)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def description_question(k: int) -> str:
    return f"Generate a description for: region{k}."


def relationships_question(k: int) -> str:
    return f"Generate list of relationships for: region{k}."


def grounding_question(text: str) -> str:
    """Referring-expression grounding, LLaVA-1.5's wording (answered with :func:`box_text`).
    Not a release string: the release's training data is not public."""
    return (
        f"Please provide the bounding box coordinate of the region this sentence describes: {text}."
    )


def grounding_message(text: str) -> str:
    """The first user turn of a grounding example: the image, no region list."""
    return f"{IMAGE}\n{grounding_question(text)}"


def box_text(box: tuple[float, float, float, float], width: int, height: int) -> str:
    """xyxy on a 0-1000 grid of the original image, truncated as the release does."""
    x1, y1, x2, y2 = box
    return (
        f"<|box_start|>({int(x1 / width * 1000)},{int(y1 / height * 1000)}),"
        f"({int(x2 / width * 1000)},{int(y2 / height * 1000)})<|box_end|>"
    )


def first_message(
    boxes: list[tuple[float, float, float, float]], width: int, height: int, question: str
) -> str:
    """The first user turn: the image, every region as ``regionK <mask><pos> box``, the question."""
    listed = ", ".join(
        f"region{k} {MASK}{POS} {box_text(b, width, height)}" for k, b in enumerate(boxes, 1)
    )
    return (
        f"{IMAGE}\nThis provides an overview of the picture.\n"
        f"There are {len(boxes)} regions in the image: {listed}.\n {question}"
    )


Answer = str | list[int]


def chatml_segments(turns: Sequence[tuple[str, Answer | None]]) -> list[Answer]:
    """A conversation ending with an open assistant turn, as text pieces; an earlier answer
    may be token ids (what the model generated), kept as they are rather than re-tokenised
    from decoded text, which need not give the same tokens or the same length."""
    parts: list[Answer] = [f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"]
    for user, answer in turns:
        parts.append(f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
        if answer is not None:
            parts += [answer, "<|im_end|>\n"]
    return parts


def chatml(turns: list[tuple[str, str | None]]) -> str:
    """The ChatML text of a conversation whose answers are text."""
    return "".join(chatml_segments(turns))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Preprocessed:
    pixels: torch.Tensor  # [3, S, S], normalised
    width: int
    height: int


def preprocess_image(rgb: np.ndarray, size: int) -> Preprocessed:
    """Pad to a centred square with the mean colour, resize (bicubic), normalise."""
    height, width = rgb.shape[:2]
    side = max(width, height)
    square = Image.new("RGB", (side, side), PAD_COLOUR)
    square.paste(Image.fromarray(rgb), ((side - width) // 2, (side - height) // 2))
    resized = (
        np.asarray(square.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    )
    normalised = (resized - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
    return Preprocessed(torch.from_numpy(normalised).permute(2, 0, 1).contiguous(), width, height)
