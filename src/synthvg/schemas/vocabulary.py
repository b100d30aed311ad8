"""The words the tables use (relation categories, stages, verdicts, generators, edit actions):
plain ``Literal`` types, importable without pydantic (``synthvg show`` checks ``--stage``
against them and needs no record)."""

from __future__ import annotations

from typing import Literal

Category = Literal["spatial", "interactional", "functional", "social", "emotional", "other"]
CATEGORIES: tuple[str, ...] = (
    "spatial",
    "interactional",
    "functional",
    "social",
    "emotional",
    "other",
)
RelationStage = Literal["seed", "teacher", "robin", "edit"]
Verdict = Literal["kept", "dropped", "unverified"]
Generator = Literal["human", "rules", "model"]
EditAction = Literal["rename", "add", "remove", "same_as"]
