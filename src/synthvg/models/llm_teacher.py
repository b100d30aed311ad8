"""The GPT-4V-class teacher: Set-of-Mark prompting through the shared OpenAI-compatible client.

For each image the teacher sees the image with every region's mask, box and numeric id drawn
on it (Set-of-Mark), and a text list of the regions. It answers :class:`TeacherAnswer` JSON,
which is checked by :func:`check_answer` before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image
from pydantic import ValidationError

from synthvg.llm import LLMClient, LLMResult, image_part, text_part
from synthvg.llm.structured import json_schema_format
from synthvg.models.marks import marked_image_bytes
from synthvg.models.teacher_answer import (
    CATEGORIES,
    CheckedAnswer,
    SubjectAnswer,
    TeacherAnswer,
    check_answer,
)
from synthvg.prompts import Prompt, load_prompt
from synthvg.schemas.config import OpenAITeacherConfig


@dataclass
class TeacherReply:
    checked: CheckedAnswer
    result: LLMResult


def region_list(regions: list[dict]) -> str:
    lines = []
    for r in regions:
        b = r["bbox"]
        name = r.get("label") or (r.get("descriptions") or ["region"])[0]
        lines.append(
            f"{r['region_id']}: {name}, box [{b['x1']:.0f}, {b['y1']:.0f}, {b['x2']:.0f}, {b['y2']:.0f}]"
        )
    return "\n".join(lines)


def parse_answer(obj: dict) -> tuple[TeacherAnswer, list[tuple[str, str]]]:
    """Lenient parse: unknown categories and malformed subjects are dropped with a reason."""
    dropped: list[tuple[str, str]] = []
    subjects = []
    for raw in obj.get("subjects", []) if isinstance(obj, dict) else []:
        if not isinstance(raw, dict):
            dropped.append(("malformed_subject", f"not an object: {str(raw)[:80]}"))
            continue
        known = {k: v for k, v in raw.items() if k in SubjectAnswer.model_fields}
        for k in set(raw) - set(known):
            dropped.append(
                (
                    "unknown_category",
                    f"subject {raw.get('subject_id')}: key {k!r} is not one of {CATEGORIES}",
                )
            )
        for c in CATEGORIES:
            known.setdefault(c, [])
        known.setdefault("description", "")
        try:
            subjects.append(SubjectAnswer.model_validate(known))
        except ValidationError as e:
            dropped.append(
                ("malformed_subject", f"subject {raw.get('subject_id')}: {e.errors()[0]['msg']}")
            )
    return TeacherAnswer(subjects=subjects), dropped


class LLMTeacher:
    """Builds one request per image and checks each answer; loads once per worker."""

    def __init__(
        self, config: OpenAITeacherConfig, cache_dir: str | None, *, client: LLMClient | None = None
    ):
        self.config = config
        self.prompt: Prompt = load_prompt(config.prompt)
        self.client = client or LLMClient(config, cache_dir=cache_dir)

    @property
    def name(self) -> str:
        return self.config.model

    def messages(self, image: Image.Image, regions: list[dict]) -> list[dict]:
        user = self.prompt.render_user(
            width=image.width,
            height=image.height,
            region_list=region_list(regions),
            min_subjects=min(self.config.min_subjects, len(regions)),
            max_subjects=self.config.max_subjects,
        )
        jpeg = marked_image_bytes(image, regions, self.config.image_max_side)
        return [
            {"role": "system", "content": self.prompt.system},
            {
                "role": "user",
                "content": [
                    text_part(user),
                    image_part(jpeg, "image/jpeg", detail=self.config.detail),
                ],
            },
        ]

    def request(self, image: Image.Image, regions: list[dict]) -> dict:
        """Keyword arguments for ``LLMClient.complete`` (also what a dry run prices)."""
        return {
            "messages": self.messages(image, regions),
            "response_format": json_schema_format(TeacherAnswer),
        }

    def check(self, result: LLMResult, regions: list[dict]) -> TeacherReply:
        answer, dropped = parse_answer(result.parsed or {})
        checked = check_answer(answer, {r["region_id"] for r in regions}, self.config.min_subjects)
        checked.dropped[:0] = dropped
        return TeacherReply(checked=checked, result=result)
