"""SG-EDIT: a GPT-4o-class editor that answers only the edits a scene graph needs.

The editor sees the original image, a Set-of-Mark rendering of the graph's regions, an
optional dense caption (its own cached request), the image size and the graph as
``{id: {name, bbox, rel: {predicate: [ids]}}}``. It answers :class:`EditAnswer`
(``{edit: [{obj_id, name, add: [{rel, obj_ids}], remove: [{rel, obj_ids}]}]}``, the authors'
schema). :func:`validate_edits` never trusts it: every requested edit is checked against the
graph as the edits before it left it, and is either applied or rejected with a reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from synthvg.llm import LLMClient, image_part, text_part
from synthvg.models.marks import jpeg_bytes, marked_image_bytes
from synthvg.models.scene_graph import PHASES, Edit, Graph, apply_edits, has_relation
from synthvg.predicates import normalise
from synthvg.prompts import Prompt, load_prompt
from synthvg.schemas.config import OpenAIEditConfig

SAME_AS = "same as"


class RelEdit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rel: str = Field(description="predicate, 1-4 words")
    obj_ids: list[int] = Field(description="ids of the target objects")


class ObjectEdit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    obj_id: int = Field(description="id of the object edited (the subject of add/remove)")
    name: str = Field(description="corrected, specific name; empty keeps the current name")
    add: list[RelEdit]
    remove: list[RelEdit]


class EditAnswer(BaseModel):
    """The whole answer for one image: only what changes."""

    model_config = ConfigDict(extra="forbid")

    edit: list[ObjectEdit]


@dataclass(frozen=True)
class LoggedEdit:
    """One requested edit and what became of it (a row of the ``edits`` table)."""

    edit: Edit
    predicate_raw: str | None
    old_name: str | None
    applied: bool
    reason: str | None = None


@dataclass
class EditOutcome:
    graph: Graph
    log: list[LoggedEdit] = field(default_factory=list)

    @property
    def applied(self) -> list[Edit]:
        return [e.edit for e in self.log if e.applied]


def requested_edits(answer: EditAnswer, graph: Graph) -> list[tuple[Edit, str | None]]:
    """The answer as single edits (one per target), with the predicate as written.

    Predicates are normalised; a removal may also name a predicate exactly as the graph
    spells it. ``same as`` in ``add`` is a merge, not a relation.
    """
    out: list[tuple[Edit, str | None]] = []
    for item in answer.edit:
        s = item.obj_id
        if item.name.strip():
            out.append((Edit("rename", s, name=item.name.strip()), None))
        for rel in item.add:
            p = normalise(rel.rel)
            action: Literal["same_as", "add"] = "same_as" if p == SAME_AS else "add"
            out.extend((Edit(action, s, predicate=p, object_id=o), rel.rel) for o in rel.obj_ids)
        for rel in item.remove:
            node: Any = graph.get(s, {"rel": {}})
            p = rel.rel.strip() if rel.rel.strip() in node["rel"] else normalise(rel.rel)
            out.extend((Edit("remove", s, predicate=p, object_id=o), rel.rel) for o in rel.obj_ids)
    return out


def _rejection(original: Graph, state: Graph, edit: Edit) -> str | None:
    """Why ``edit`` cannot change ``state`` (None: it can)."""
    s, o, p = edit.subject_id, edit.object_id, edit.predicate or ""
    if s not in original:
        return "unknown_object_id"
    if s not in state:
        return "merged_away"
    if edit.action == "rename":
        name = (edit.name or "").strip()
        return "empty_name" if not name else "unchanged" if state[s]["name"] == name else None
    if o not in original:
        return "unknown_target_id"
    if o == s:
        return "self_relation"
    if o not in state:
        return "merged_away"
    if edit.action == "add":
        if not p:
            return "empty_predicate"
        return "already_present" if has_relation(state, s, p, o) else None
    if edit.action == "remove":
        return None if has_relation(state, s, p, o) else "not_present"
    return None


def validate_edits(graph: Graph, requested: list[tuple[Edit, str | None]]) -> EditOutcome:
    """Apply each requested edit in :data:`PHASES` order when it changes the graph; log all.

    The outcome's graph equals ``apply_edits(graph, outcome.applied)``.
    """
    state = graph
    log = []
    for edit, raw in sorted(requested, key=lambda e: PHASES.index(e[0].action)):
        reason = _rejection(graph, state, edit)
        old = (
            state[edit.subject_id]["name"]
            if edit.action == "rename" and edit.subject_id in state
            else None
        )
        if reason is None:
            state = apply_edits(state, [edit])
        log.append(LoggedEdit(edit, raw, old, reason is None, reason))
    return EditOutcome(graph=state, log=log)


def graph_json(graph: Graph) -> str:
    """The graph as the prompt shows it (boxes rounded to whole pixels)."""
    shown = {
        str(i): {"name": n["name"], "bbox": [round(v) for v in n["bbox"]], "rel": n["rel"]}
        for i, n in graph.items()
    }
    return json.dumps(shown, ensure_ascii=False, separators=(",", ":"))


class LLMEditor:
    """Builds the caption and edit requests of an image; loads once per worker."""

    def __init__(
        self, config: OpenAIEditConfig, cache_dir: str | None, *, client: LLMClient | None = None
    ):
        self.config = config
        self.prompt: Prompt = load_prompt(config.prompt)
        self.caption_prompt: Prompt | None = (
            load_prompt(config.caption_prompt) if config.caption else None
        )
        self.client = client or LLMClient(config, cache_dir=cache_dir)

    @property
    def prompt_version(self) -> str:
        """The edit prompt's version, plus the caption prompt's when a caption is asked for."""
        if self.caption_prompt is None:
            return self.prompt.version
        return f"{self.prompt.version}+{self.caption_prompt.version}"

    def _image(self, image: Image.Image) -> dict:
        return image_part(
            jpeg_bytes(image, self.config.image_max_side), "image/jpeg", detail=self.config.detail
        )

    def caption_request(self, image: Image.Image) -> dict:
        """Keyword arguments for ``LLMClient.complete``: a dense caption, plain text."""
        assert self.caption_prompt is not None
        user = self.caption_prompt.render_user(width=image.width, height=image.height)
        return {
            "messages": [
                {"role": "system", "content": self.caption_prompt.system},
                {"role": "user", "content": [text_part(user), self._image(image)]},
            ]
        }

    def edit_request(
        self, image: Image.Image, regions: list[dict], graph: Graph, caption: str | None
    ) -> dict:
        """Keyword arguments for ``LLMClient.complete`` (also what a dry run prices)."""
        user = self.prompt.render_user(
            caption_block=f"Dense caption of the image: {caption.strip()}\n\n"
            if caption and caption.strip()
            else "",
            width=image.width,
            height=image.height,
            graph=graph_json(graph),
        )
        marked = marked_image_bytes(image, regions, self.config.image_max_side)
        return {
            "messages": [
                {"role": "system", "content": self.prompt.system},
                {
                    "role": "user",
                    "content": [
                        text_part(user),
                        self._image(image),
                        image_part(marked, "image/jpeg", detail=self.config.detail),
                    ],
                },
            ],
            "response_format": EditAnswer,
        }
