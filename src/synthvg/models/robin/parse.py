"""Parse Robin's scene-graph text into validated objects and relations (and render it back).

Robin answers the holistic prompt ("Generate an extremely detailed scene graph for given
regions.") with::

    Objects:
    region1: <description>

    Relations:
    region1: region2 <predicate>, region5 <predicate>

and, in per-region mode, one description turn and one ``region{j} {predicate}, ...`` turn per
region. Region ids are 1-based and must lie in ``1..n_regions``. The release's parser splits on
every comma, trusts every id and keeps duplicates and self-loops; this one is stricter and never
raises. Rules (each dropped or odd thing becomes a short line in ``ParsedGraph.problems``):

* Lines: CRLF / CR are newlines; whitespace inside a line is collapsed; blank lines are skipped;
  one list bullet (``-``, ``*``, ``+``, ``•``, ``1.``, ``1)``) is stripped, since chat models
  love lists.
* Region ids: ``region3``, ``Region 3``, ``<region3>`` (any case, one optional space) all mean 3;
  a number glued to letters (``region3a``) is not an id. Ids outside ``1..n_regions`` are
  dropped (so ``n_regions <= 0`` drops everything); huge digit strings are just out of range.
* Headers ``Objects:`` / ``Relations:`` (also ``Relationships``; any case; ``#``/``*``/``_``
  markdown around them) switch sections. A ``regionK: text`` line before any Relations header
  is an object line, after it a relation line. Without a Relations header a line whose body
  parses entirely as relation items is a relation line, else an object line (models sometimes
  drop the headers). Other lines are reported as not understood.
* ``**region1:** text`` / ``**region1**: text``: markdown around the prefix is ignored.
* Objects: description whitespace-collapsed, surrounding quotes removed; the first description
  of a region wins (later ones and empty ones are problems).
* Relation items are split only at a ``,`` or ``;`` followed by a region id, so predicates that
  contain commas ("sitting on, and leaning against") survive. Each item is ``regionJ
  predicate``; the predicate is whitespace-collapsed, trailing ``.`` ``;`` ``,`` removed, case
  kept. Items without a predicate, not starting with an id, with out-of-range ids, self-loops
  and duplicates (same subject, object and case-insensitive predicate; the first is kept) are
  dropped. A relation line with an empty body means "no relations" and is not a problem.
* Every pattern runs on one collapsed line and no two adjacent quantified parts can match the
  same character, so matching is linear in the input (no catastrophic backtracking).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = [
    "ParsedGraph",
    "ParsedRelation",
    "parse_description",
    "parse_relationships",
    "parse_scene_graph",
    "render_relationships",
    "render_scene_graph",
]

_CLIP = 80
_MAX_ID_DIGITS = 9  # larger ids are out of range anyway; also keeps int() away from huge strings

# A region reference; group 1 is its digits. The lookahead refuses ids glued to more word chars.
_REF = r"(?:< ?)?region ?([0-9]+)(?: ?>)?(?![0-9A-Za-z_])"
# "regionK:" at the start of a line, with optional markdown emphasis; group 1 the leading markup.
_PREFIX = re.compile(r"([*_`]*) ?" + _REF + r"[*_` ]*:", re.IGNORECASE)
_ITEM = re.compile(_REF + r"(.*)", re.IGNORECASE | re.DOTALL)
_ITEM_SPLIT = re.compile(r"[,;] ?(?=(?:< ?)?region ?[0-9])", re.IGNORECASE)
_BULLET = re.compile(r"(?:[-*+•]|[0-9]{1,3}[.)]) ")
_HEADERS = {
    "objects": "objects",
    "object": "objects",
    "relations": "relations",
    "relation": "relations",
    "relationships": "relations",
    "relationship": "relations",
}
_QUOTES = {'"': '"', "'": "'", "`": "`", "“": "”", "‘": "’", "«": "»"}


@dataclass(frozen=True)
class ParsedRelation:
    """``subject -[predicate]-> object``; ids are the 1-based region numbers of the text."""

    subject: int
    object: int
    predicate: str


@dataclass
class ParsedGraph:
    """What was understood (valid, unique), what was not (``problems``) and the input (``raw``)."""

    objects: dict[int, str] = field(default_factory=dict)
    relations: list[ParsedRelation] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    raw: str = ""


def _q(s: str) -> str:
    """A fragment quoted for a problem line, at most ~80 characters."""
    return repr(s if len(s) <= _CLIP else s[: _CLIP - 3] + "...")


def _num(digits: str) -> int | None:
    d = digits.lstrip("0") or "0"
    return int(d) if len(d) <= _MAX_ID_DIGITS else None


def _label(digits: str) -> str:
    n = _num(digits)
    if n is not None:
        return f"region{n}"
    return "region" + (digits if len(digits) <= 20 else digits[:17] + "...")


def _collapse(s: str) -> str:
    return " ".join(s.split())


def _lines(text: str) -> list[tuple[int, str]]:
    """(1-based line number, collapsed line without bullet) for every non-blank line."""
    out = []
    for no, line in enumerate(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"), 1):
        s = _collapse(line)
        m = _BULLET.match(s)
        if m:
            s = s[m.end() :]
        if s:
            out.append((no, s))
    return out


def _header(s: str) -> str | None:
    return _HEADERS.get(s.strip("#*_`:> ").casefold())


def _split_prefix(s: str) -> tuple[str, str] | None:
    """``(digits, body)`` of a ``regionK: body`` line, else None."""
    m = _PREFIX.match(s)
    if m is None:
        return None
    lead, body = m.group(1), s[m.end() :].lstrip()
    if lead and body.startswith(lead):  # "**region1:** text"
        body = body[len(lead) :].lstrip()
    return m.group(2), body


def _clean_text(s: str) -> str:
    """Whitespace collapsed, matching surrounding quotes (any number of layers) removed."""
    s = _collapse(s)
    i, j = 0, len(s)  # peel layers by index: slicing in a loop would be quadratic
    while j - i >= 2 and _QUOTES.get(s[i]) == s[j - 1]:
        i, j = i + 1, j - 1
        while i < j and s[i] == " ":
            i += 1
        while j > i and s[j - 1] == " ":
            j -= 1
    return s[i:j]


def _clean_predicate(s: str) -> str:
    return _collapse(s).rstrip(".;, ")


def _items(body: str) -> list[tuple[str | None, str, str]]:
    """``(target digits or None if not an item, predicate, item text)`` for each relation item."""
    out: list[tuple[str | None, str, str]] = []
    for piece in _ITEM_SPLIT.split(body):
        piece = piece.strip()
        if not piece:
            continue
        m = _ITEM.match(piece)
        if m is None:
            out.append((None, "", piece))
        else:
            out.append((m.group(1), _clean_predicate(m.group(2)), piece))
    return out


def _looks_like_relations(body: str) -> bool:
    items = _items(body)
    return bool(items) and all(d is not None and p for d, p, _ in items)


class _Builder:
    def __init__(self, n_regions: int, raw: str) -> None:
        self.n = n_regions
        self.graph = ParsedGraph(raw=raw)
        self._seen: set[tuple[int, int, str]] = set()

    def problem(self, msg: str) -> None:
        self.graph.problems.append(msg)

    def valid(self, digits: str, where: str, consequence: str = "") -> int | None:
        """The region number if it is in range; else None and a problem."""
        num = _num(digits)
        if num is not None and 1 <= num <= self.n:
            return num
        if self.n >= 1:
            msg = f"{where}: {_label(digits)} is not one of region1..region{self.n}"
        else:
            msg = f"{where}: {_label(digits)} dropped, there are no regions (n_regions={self.n})"
        self.problem(msg + consequence)
        return None

    def add_object(self, no: int, digits: str, body: str) -> None:
        where = f"object line {no}"
        num = self.valid(digits, where)
        if num is None:
            return
        desc = _clean_text(body)
        if not desc:
            self.problem(f"{where}: region{num} has an empty description, dropped")
        elif num in self.graph.objects:
            self.problem(
                f"{where}: region{num} described again, later description {_q(desc)} dropped"
            )
        else:
            self.graph.objects[num] = desc

    def add_items(self, where: str, subject: int, body: str) -> None:
        for digits, pred, piece in _items(body):
            if digits is None:
                self.problem(f"{where}: item {_q(piece)} is not 'regionJ predicate', dropped")
                continue
            obj = self.valid(digits, where)
            if obj is None:
                continue
            arrow = f"region{subject} -> region{obj}"
            if not pred:
                self.problem(f"{where}: {arrow} has no predicate, dropped")
            elif obj == subject:
                self.problem(f"{where}: self-loop {arrow} {_q(pred)} dropped")
            else:
                key = (subject, obj, pred.casefold())
                if key in self._seen:
                    self.problem(f"{where}: duplicate relation {arrow} {_q(pred)} dropped")
                else:
                    self._seen.add(key)
                    self.graph.relations.append(ParsedRelation(subject, obj, pred))

    def add_relation_line(self, no: int, digits: str, body: str) -> None:
        where = f"relation line {no}"
        subject = self.valid(digits, where, ", line dropped")
        if subject is not None:
            self.add_items(where, subject, body)


def parse_scene_graph(text: str, n_regions: int) -> ParsedGraph:
    """Objects and relations of Robin's holistic answer ``text`` for ``n_regions`` regions."""
    b = _Builder(n_regions, text)
    lines = _lines(text)
    has_relations_header = any(_header(s) == "relations" for _, s in lines)
    section = "objects"
    for no, s in lines:
        head = _header(s)
        if head is not None:
            section = head
            continue
        pre = _split_prefix(s)
        if pre is None:
            b.problem(f"line {no} not understood: {_q(s)}")
            continue
        digits, body = pre
        if section == "relations" or (not has_relations_header and _looks_like_relations(body)):
            b.add_relation_line(no, digits, body)
        else:
            b.add_object(no, digits, body)
    return b.graph


def parse_description(text: str, region: int | None = None) -> str:
    """The description in a per-region answer: whitespace collapsed, a leading ``regionK:``
    naming ``region`` (any region when None) and surrounding quotes removed; "" if none is left."""
    s = _collapse(text)
    pre = _split_prefix(s)
    if pre is not None and (region is None or _num(pre[0]) == region):
        s = pre[1]
    return _clean_text(s)


def parse_relationships(text: str, subject: int, n_regions: int) -> ParsedGraph:
    """Relations of ``subject`` from a per-region answer ``region{j} {predicate}, ...``; a leading
    ``region{subject}:`` is accepted, a line prefixed with another region is dropped."""
    b = _Builder(n_regions, text)
    if not 1 <= subject <= n_regions:
        b.valid(str(subject) if subject >= 0 else "0", "subject", ", all relations dropped")
        return b.graph
    for no, s in _lines(text):
        if _header(s) is not None:
            continue
        pre = _split_prefix(s)
        if pre is not None:
            if _num(pre[0]) != subject:
                b.problem(
                    f"relation line {no}: prefix {_label(pre[0])}: does not name region{subject}, line dropped"
                )
                continue
            s = pre[1]
        b.add_items(f"relation line {no}", subject, s)
    return b.graph


def render_scene_graph(objects: dict[int, str], relations: list[ParsedRelation]) -> str:
    """The release's text for a graph: objects in key order, relations grouped by subject in
    order of first appearance. Whitespace (newlines too) is collapsed so each entry stays on
    its line."""
    lines = ["Objects:"]
    lines += [f"region{k}: {_collapse(str(objects[k]))}" for k in sorted(objects)]
    lines += ["", "Relations:"]
    groups: dict[int, list[ParsedRelation]] = {}
    for r in relations:
        groups.setdefault(r.subject, []).append(r)
    lines += [f"region{s}: " + render_relationships(items) for s, items in groups.items()]
    return "\n".join(lines)


def render_relationships(relations: list[ParsedRelation]) -> str:
    """One subject's per-region answer: ``region{j} {predicate}, ...`` (the subject is implied)."""
    return ", ".join(f"region{r.object} {_collapse(r.predicate)}" for r in relations)
