"""VQA verification: ask a VLM a yes/no question built from a triple, read P(yes).

The image is sent with only the two regions drawn (subject red, object blue, with their ids).
P(yes) comes from the first answer token's logprobs when the backend gives them (the yes
tokens' probability mass over yes + no), else from the answer text (yes 1, no 0). An answer
that is neither, or a verifier that fails, gives None: the relation stays "unverified".
Several verifiers combine by a configured vote.
"""

from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass
from typing import Protocol

from PIL import Image, ImageDraw

from synthvg.llm import LLMClient, LLMResult, image_part, text_part
from synthvg.prompts import load_prompt
from synthvg.render import load_font
from synthvg.schemas import Box
from synthvg.schemas.config import OpenAIVerifierConfig

SUBJECT_COLOR = (230, 30, 30)
OBJECT_COLOR = (30, 90, 230)


@dataclass(frozen=True)
class Question:
    image: Image.Image
    subject_id: int
    object_id: int
    subject: str
    predicate: str
    object: str
    masks: tuple = ()  # the subject's and the object's masks (RLE), for verifiers that take entities


class VQAVerifier(Protocol):
    name: str
    threshold: float

    def p_yes(self, questions: list[Question]) -> list[float | None | BaseException]:
        """P(yes) per question (None: no usable answer), in order."""
        ...


def mark_pair(
    image: Image.Image,
    subject: Box,
    object_: Box,
    subject_id: int,
    object_id: int,
    max_side: int = 768,
) -> Image.Image:
    """The image with just the two regions outlined and numbered, downscaled to ``max_side``."""
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    width = max(2, min(out.size) // 150)
    text_font = load_font(max(12, min(out.size) // 30))
    for box, rid, color in (
        (subject, subject_id, SUBJECT_COLOR),
        (object_, object_id, OBJECT_COLOR),
    ):
        draw.rectangle([box.x1, box.y1, box.x2, box.y2], outline=color, width=width)
        draw.text((box.x1 + width + 1, box.y1 + width), str(rid), fill=color, font=text_font)
    scale = max_side / max(out.size)
    if scale < 1:
        out = out.resize(
            (round(out.width * scale), round(out.height * scale)), Image.Resampling.LANCZOS
        )
    return out


def question_messages(prompt_name: str, q: Question) -> list[dict]:
    prompt = load_prompt(prompt_name)
    text = prompt.render_user(
        subject_id=q.subject_id,
        object_id=q.object_id,
        subject=q.subject,
        predicate=q.predicate,
        object=q.object,
    )
    buf = io.BytesIO()
    q.image.save(buf, format="JPEG", quality=90)
    return [
        {"role": "system", "content": prompt.system},
        {"role": "user", "content": [text_part(text), image_part(buf.getvalue(), "image/jpeg")]},
    ]


def _is(token: str, word: str) -> bool:
    return token.strip().strip(".!,").lower() == word


def p_yes_from_logprobs(logprobs: dict | None) -> float | None:
    """Yes-mass over yes + no mass among the first token's alternatives (None: no evidence)."""
    content = (logprobs or {}).get("content") or []
    if not content:
        return None
    first = content[0]
    alternatives = first.get("top_logprobs") or [
        {"token": first.get("token", ""), "logprob": first.get("logprob", 0.0)}
    ]
    yes = sum(math.exp(a["logprob"]) for a in alternatives if _is(a["token"], "yes"))
    no = sum(math.exp(a["logprob"]) for a in alternatives if _is(a["token"], "no"))
    if yes + no == 0:
        return None
    if len(alternatives) == 1:  # only the chosen token: its probability is all we know
        return yes if yes else 1.0 - no
    return yes / (yes + no)


def p_yes_from_text(text: str) -> float | None:
    words = text.strip().split()
    if not words:
        return None
    first = words[0].strip(".!,").lower()
    return 1.0 if first == "yes" else 0.0 if first == "no" else None


class OpenAIVerifier:
    """Yes/no questions through the shared OpenAI-compatible client (cached, rate limited)."""

    def __init__(
        self,
        config: OpenAIVerifierConfig,
        cache_dir: str | None,
        *,
        client: LLMClient | None = None,
    ):
        self.config = config
        self.threshold = config.threshold
        self.name = f"vqa:{config.model}"
        self.client = client or LLMClient(config, cache_dir=cache_dir)

    def request(self, q: Question) -> dict:
        """Keyword arguments for ``LLMClient.complete`` (also what a dry run prices)."""
        return self._request(q)

    def _request(self, q: Question) -> dict:
        params: dict = {
            "messages": question_messages(self.config.prompt, q),
            "max_tokens": 1,
            "temperature": 0.0,
        }
        if self.config.logprobs:
            params.update(logprobs=True, top_logprobs=5)
        return params

    def _p(self, result: LLMResult | BaseException) -> float | None | BaseException:
        if isinstance(result, BaseException):
            return result
        p = p_yes_from_logprobs(result.logprobs) if self.config.logprobs else None
        return p if p is not None else p_yes_from_text(result.content)

    def p_yes(self, questions: list[Question]) -> list[float | None | BaseException]:
        requests = [self._request(q) for q in questions]
        results = self.client.run_all(
            [functools.partial(self.client.complete, **r) for r in requests]
        )
        return [self._p(r) for r in results]


def combine(
    votes: list[tuple[str, float | None | BaseException, float]], rule: str
) -> tuple[str, float | None, str]:
    """(verdict, score, reason) from each verifier's (name, P(yes) or failure, threshold)."""
    usable = [(n, p, t) for n, p, t in votes if isinstance(p, float)]
    failed = [
        f"{n}: {p if isinstance(p, BaseException) else 'answered neither yes nor no'}"
        for n, p, _ in votes
        if not isinstance(p, float)
    ]
    if not usable:
        return "unverified", None, "; ".join(failed) or "no verifier answered"
    yes = [n for n, p, t in usable if p >= t]
    mean = sum(p for _, p, _ in usable) / len(usable)
    detail = ", ".join(f"{n} P(yes)={p:.2f}" for n, p, _ in usable) + (
        f"; {'; '.join(failed)}" if failed else ""
    )
    if rule == "mean":
        keep = mean >= sum(t for *_, t in usable) / len(usable)
    elif rule == "any":
        keep = bool(yes)
    elif rule == "majority":
        keep = len(yes) * 2 > len(usable)
    else:  # all: every verifier that answered says yes, and none failed
        if failed:
            return "unverified", mean, f"vote 'all' needs every verifier: {detail}"
        keep = len(yes) == len(usable)
    return ("kept" if keep else "dropped"), mean, f"vote '{rule}': {detail}"
