"""The scene graph an editor sees and changes, and the pure function that applies its edits.

A graph is ``{id: {"name", "bbox", "rel": {predicate: [ids]}}}`` (ids are region ids, bbox is
xyxy), the shape the SG-EDIT prompt shows. Graphs are kept *normal*: target lists sorted and
unique, no empty predicate lists, no self-relations, every target a node of the graph.
:func:`apply_edits` never mutates its input and always returns a normal graph, so applying
edits is easy to test and to reason about.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, TypedDict

Action = Literal["rename", "add", "remove", "same_as"]
#: Edits of one answer are applied in this order (the authors' order, merges last).
PHASES: tuple[Action, ...] = ("rename", "add", "remove", "same_as")


class Node(TypedDict):
    name: str
    bbox: list[float]
    rel: dict[str, list[int]]


Graph = dict[int, Node]


@dataclass(frozen=True)
class Edit:
    """One edit: rename ``subject_id`` to ``name``; add or remove ``subject -[predicate]-> object``;
    or ``same_as``: ``object_id`` is the same object as ``subject_id`` and is merged into it."""

    action: Action
    subject_id: int
    predicate: str | None = None
    object_id: int | None = None
    name: str | None = None


def build_graph(
    regions: Iterable[dict], names: dict[int, str | None], triples: Iterable[tuple[int, int, str]]
) -> Graph:
    """A normal graph over ``regions`` (rows of the regions table); triples whose ends are not
    both nodes are left out."""
    graph: Graph = {}
    for r in sorted(regions, key=lambda r: r["region_id"]):
        b = r["bbox"]
        rid = r["region_id"]
        graph[rid] = {
            "name": names.get(rid) or r.get("label") or "object",
            "bbox": [b["x1"], b["y1"], b["x2"], b["y2"]],
            "rel": {},
        }
    for s, o, p in triples:
        if s in graph and o in graph:
            graph[s]["rel"].setdefault(p, []).append(o)
    return normalise(graph)


def normalise(graph: Graph) -> Graph:
    """In place: drop self-relations, dangling and repeated targets and empty predicates."""
    for sid, node in graph.items():
        rel = {}
        for p, targets in node["rel"].items():
            kept = sorted({t for t in targets if t != sid and t in graph})
            if p.strip() and kept:
                rel[p] = kept
        node["rel"] = dict(sorted(rel.items()))
    return graph


def _merge(graph: Graph, keep: int, dup: int) -> None:
    for p, targets in graph.pop(dup)["rel"].items():
        graph[keep]["rel"].setdefault(p, []).extend(targets)
    for node in graph.values():
        for p, targets in node["rel"].items():
            node["rel"][p] = [keep if t == dup else t for t in targets]


def apply_edits(graph: Graph, edits: Iterable[Edit]) -> Graph:
    """The graph after ``edits``: renames, then adds, then removes, then merges (each phase in
    list order). Edits naming ids that are not nodes, self-relations and empty predicates
    change nothing; removing what is not there changes nothing."""
    out = copy.deepcopy(graph)
    for edit in sorted(edits, key=lambda e: PHASES.index(e.action)):
        s, o, p = edit.subject_id, edit.object_id, (edit.predicate or "").strip()
        if s not in out:
            continue
        if edit.action == "rename":
            if edit.name and edit.name.strip():
                out[s]["name"] = edit.name.strip()
        elif o not in out or o == s:
            continue
        elif edit.action == "add" and p:
            out[s]["rel"].setdefault(p, []).append(o)
        elif edit.action == "remove" and o in out[s]["rel"].get(p, []):
            out[s]["rel"][p] = [t for t in out[s]["rel"][p] if t != o]
        elif edit.action == "same_as":
            _merge(out, s, o)
    return normalise(out)


def triples(graph: Graph) -> list[tuple[int, int, str]]:
    """(subject, object, predicate) of every relation, sorted."""
    return sorted(
        (s, o, p)
        for s, node in graph.items()
        for p, targets in node["rel"].items()
        for o in targets
    )


def has_relation(graph: Graph, s: int, p: str, o: int) -> bool:
    return s in graph and o in graph[s]["rel"].get(p, [])
