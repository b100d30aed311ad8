"""What a GPT-4V-class teacher must answer, and how an answer is checked before it is used.

The schema is sent as a JSON-schema ``response_format`` (or spelled out in the prompt for
endpoints without structured output). Validation never trusts the model: unknown region ids,
self-relations, empty predicates and duplicates are dropped, each with a reason an analyst
can count.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from synthvg.predicates import normalise

CATEGORIES = ("spatial", "interactional", "functional", "social", "emotional")


class RelationItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    object_id: int = Field(description="id of the other region, from the list")
    predicate: str = Field(description="short predicate, 1-4 words")


class SubjectAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subject_id: int = Field(description="id of the subject region")
    description: str = Field(description="one precise sentence about the region")
    spatial: list[RelationItem]
    interactional: list[RelationItem]
    functional: list[RelationItem]
    social: list[RelationItem]
    emotional: list[RelationItem]


class TeacherAnswer(BaseModel):
    """The whole answer for one image."""

    model_config = ConfigDict(extra="forbid")

    subjects: list[SubjectAnswer]


@dataclass(frozen=True)
class CheckedRelation:
    subject_id: int
    object_id: int
    predicate: str
    predicate_raw: str
    category: str


@dataclass
class CheckedAnswer:
    relations: list[CheckedRelation] = field(default_factory=list)
    descriptions: dict[int, str] = field(default_factory=dict)
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (kind, detail)


def check_answer(answer: TeacherAnswer, region_ids: set[int], min_subjects: int) -> CheckedAnswer:
    """Keep what is valid; record every dropped item with a reason."""
    out = CheckedAnswer()
    seen: set[tuple[int, int, str]] = set()
    for subj in answer.subjects:
        s = subj.subject_id
        if s not in region_ids:
            out.dropped.append(("unknown_subject_id", f"subject {s} is not a listed region"))
            continue
        if subj.description.strip():
            out.descriptions.setdefault(s, subj.description.strip())
        for category in CATEGORIES:
            for item in getattr(subj, category):
                predicate = normalise(item.predicate)
                where = f"{s} -[{item.predicate}]-> {item.object_id} ({category})"
                if item.object_id not in region_ids:
                    out.dropped.append(
                        ("unknown_object_id", f"{where}: object is not a listed region")
                    )
                elif item.object_id == s:
                    out.dropped.append(("self_relation", f"{where}: a region related to itself"))
                elif not predicate:
                    out.dropped.append(("empty_predicate", f"{where}: empty predicate"))
                elif (s, item.object_id, predicate) in seen:
                    out.dropped.append(("duplicate_relation", f"{where}: repeated"))
                else:
                    seen.add((s, item.object_id, predicate))
                    out.relations.append(
                        CheckedRelation(s, item.object_id, predicate, item.predicate, category)
                    )
    subjects = {r.subject_id for r in out.relations} | set(out.descriptions)
    if len(subjects) < min(min_subjects, len(region_ids)):
        out.dropped.append(
            ("too_few_subjects", f"{len(subjects)} valid subjects, asked for >= {min_subjects}")
        )
    return out
