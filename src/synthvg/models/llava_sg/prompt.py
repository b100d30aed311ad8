"""LLaVA-SG's conversation layout (LLaVA-1.5's Vicuna v1 template) and its special tokens.

A conversation is ``SYSTEM USER: <image><sg><text>\\nQ ASSISTANT: A</s>USER: Q2 ASSISTANT: A2</s>``;
the image, the graph and the prompt markers go at the start of the first user turn. Labels are
on the answers and their end-of-sequence token only.
"""

from __future__ import annotations

from collections.abc import Sequence

IMAGE, SG, TEXT = "<image>", "<sg>", "<text>"
SPECIAL_TOKENS = (IMAGE, SG, TEXT)
SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
MARKERS = IMAGE + SG + TEXT


def token_ids(tokenizer) -> tuple[int, int, int]:
    ids = tokenizer.convert_tokens_to_ids
    return ids(IMAGE), ids(SG), ids(TEXT)


def segments(turns: Sequence[tuple[str, str | None]], with_image: bool) -> list[tuple[str, bool]]:
    """(text, is_answer) pieces of a conversation; the last answer may be None (a prompt)."""
    out: list[tuple[str, bool]] = []
    for i, (question, answer) in enumerate(turns):
        q = question.replace(IMAGE, "").strip()
        if i == 0:
            q = f"{SYSTEM} USER: {MARKERS if with_image else ''}\n{q}"
        else:
            q = f"USER: {q}"
        out.append((f"{q} ASSISTANT:", False))
        if answer is not None:
            out.append((f" {answer.strip()}", True))
    return out


def encode(
    tokenizer, turns: Sequence[tuple[str, str | None]], with_image: bool
) -> tuple[list[int], list[int]]:
    """(ids, labels): labels on answers and the end-of-sequence after each, -100 elsewhere."""
    ids: list[int] = []
    labels: list[int] = []
    eos = tokenizer.eos_token_id
    for text, is_answer in segments(turns, with_image):
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        if is_answer:
            labels += piece + [eos]
            ids.append(eos)
        else:
            labels += [-100] * len(piece)
    return ids, labels


def relation_question(subject: str, object_: str) -> str:
    return f"What is the relationship between {subject} and {object_}?"


def choice_question(subject: str, object_: str, choices: list[str]) -> str:
    letters = "\n".join(f"{chr(65 + i)}. {c}" for i, c in enumerate(choices))
    return (
        f"{relation_question(subject, object_)}\n{letters}\n"
        "Answer with the option's letter from the given choices directly."
    )


def verify_question(subject: str, predicate: str, object_: str) -> str:
    return f"Is the {subject} {predicate} the {object_}? Answer yes or no."
