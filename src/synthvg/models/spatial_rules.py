"""Rule-based checks of spatial relations over boxes, masks and depth (see docs/FILTERS.md).

Each rule is a small function of the two regions that answers keep, drop or abstain, with a
reason and a signed margin (how far the evidence is past the decision line, in the rule's
unit). A predicate without a rule is never called verified: the filter stage marks it
"unverified". Thresholds come from :class:`SpatialRulesConfig`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from synthvg.schemas import RLE, Box
from synthvg.schemas.config import SpatialRulesConfig

Decision = Literal["keep", "drop", "abstain"]


@dataclass(frozen=True)
class Geom:
    """What the rules know about a region. ``depth``: relative, larger = nearer (Depth-Anything)."""

    box: Box
    area: float
    mask: RLE | None = None
    depth: float | None = None

    @property
    def cx(self) -> float:
        return (self.box.x1 + self.box.x2) / 2

    @property
    def cy(self) -> float:
        return (self.box.y1 + self.box.y2) / 2


@dataclass(frozen=True)
class Context:
    width: int
    height: int
    config: SpatialRulesConfig
    #: |s & o| / |s| and |s & o| / |o| when masks are known (computed once per pair by the caller)
    s_in_o: float | None = None
    o_in_s: float | None = None

    @property
    def diagonal(self) -> float:
        return math.hypot(self.width, self.height)


@dataclass(frozen=True)
class RuleResult:
    decision: Decision
    rule: str
    reason: str
    margin: float | None = None


Rule = Callable[[Geom, Geom, Context], RuleResult]


def _three_way(
    rule: str, value: float, keep_above: float, drop_below: float, what: str
) -> RuleResult:
    """keep when value > keep_above, drop when value < drop_below, abstain between."""
    if value > keep_above:
        return RuleResult(
            "keep", rule, f"{what} = {value:.3f} > {keep_above:g}", value - keep_above
        )
    if value < drop_below:
        return RuleResult(
            "drop", rule, f"{what} = {value:.3f} < {drop_below:g}", value - drop_below
        )
    return RuleResult(
        "abstain",
        rule,
        f"{what} = {value:.3f} is within [{drop_below:g}, {keep_above:g}]: ambiguous",
        None,
    )


def left_of(s: Geom, o: Geom, c: Context) -> RuleResult:
    tol = c.config.position_tolerance
    return _three_way(
        "left_of",
        (o.cx - s.cx) / c.width,
        tol,
        -tol,
        "(object centre x - subject centre x) / width",
    )


def right_of(s: Geom, o: Geom, c: Context) -> RuleResult:
    return _rename(left_of(o, s, c), "right_of")


def above(s: Geom, o: Geom, c: Context) -> RuleResult:
    tol = c.config.position_tolerance
    return _three_way(
        "above",
        (o.cy - s.cy) / c.height,
        tol,
        -tol,
        "(object centre y - subject centre y) / height",
    )


def below(s: Geom, o: Geom, c: Context) -> RuleResult:
    return _rename(above(o, s, c), "below")


def on(s: Geom, o: Geom, c: Context) -> RuleResult:
    """s rests on o: s overlaps o horizontally, s's bottom lies in o's upper part, s is higher."""
    a, b = s.box, o.box
    overlap = max(0.0, min(a.x2, b.x2) - max(a.x1, b.x1)) / max(a.width, 1e-9)
    if a.y1 > b.y2 or overlap == 0.0:
        return RuleResult(
            "drop",
            "on",
            f"subject is below the object or beside it (horizontal overlap {overlap:.2f})",
            -1.0,
        )
    if s.cy >= o.cy:
        return RuleResult(
            "drop", "on", "subject's centre is not above the object's", (o.cy - s.cy) / c.height
        )
    band_top = b.y1 - c.config.on_max_gap * b.height
    band_bottom = b.y1 + c.config.on_max_depth * b.height
    if overlap >= c.config.on_min_overlap and band_top <= a.y2 <= band_bottom:
        return RuleResult(
            "keep",
            "on",
            f"bottom edge rests on the object's upper part, horizontal overlap {overlap:.2f}",
            overlap - c.config.on_min_overlap,
        )
    return RuleResult(
        "abstain",
        "on",
        f"contact not clear (overlap {overlap:.2f}, bottom at {a.y2:.0f}, object top {b.y1:.0f})",
        None,
    )


def under(s: Geom, o: Geom, c: Context) -> RuleResult:
    return _rename(on(o, s, c), "under")


def inside(s: Geom, o: Geom, c: Context) -> RuleResult:
    cover = c.s_in_o if c.s_in_o is not None else _box_cover(s.box, o.box)
    return _three_way(
        "inside",
        cover,
        c.config.inside_keep,
        c.config.inside_drop,
        "fraction of the subject within the object",
    )


def contains(s: Geom, o: Geom, c: Context) -> RuleResult:
    swapped = Context(c.width, c.height, c.config, s_in_o=c.o_in_s, o_in_s=c.s_in_o)
    return _rename(inside(o, s, swapped), "contains")


def in_front_of(s: Geom, o: Geom, c: Context) -> RuleResult:
    if s.depth is None or o.depth is None:
        return RuleResult(
            "abstain", "in_front_of", "no depth for one of the regions (run the depth stage)", None
        )
    m = c.config.depth_margin
    return _three_way(
        "in_front_of", s.depth - o.depth, m, -m, "subject depth - object depth (larger = nearer)"
    )


def behind(s: Geom, o: Geom, c: Context) -> RuleResult:
    return _rename(in_front_of(o, s, c), "behind")


def _gap(a: Box, b: Box) -> float:
    dx = max(0.0, max(a.x1, b.x1) - min(a.x2, b.x2))
    dy = max(0.0, max(a.y1, b.y1) - min(a.y2, b.y2))
    return math.hypot(dx, dy)


def _distance(
    rule: str, gap: float, keep_max: float, drop_min: float, closer_is_true: bool = True
) -> RuleResult:
    """Decide on the box gap as a fraction of the image diagonal."""
    what = f"box gap = {gap:.3f} of the image diagonal"
    close, far = gap <= keep_max, gap >= drop_min
    if (close and closer_is_true) or (far and not closer_is_true):
        bound = keep_max if closer_is_true else drop_min
        return RuleResult(
            "keep", rule, f"{what} ({'<=' if closer_is_true else '>='} {bound:g})", abs(gap - bound)
        )
    if (far and closer_is_true) or (close and not closer_is_true):
        bound = drop_min if closer_is_true else keep_max
        return RuleResult(
            "drop",
            rule,
            f"{what} ({'>=' if closer_is_true else '<='} {bound:g})",
            -abs(gap - bound),
        )
    return RuleResult(
        "abstain", rule, f"{what} is between {keep_max:g} and {drop_min:g}: ambiguous", None
    )


def next_to(s: Geom, o: Geom, c: Context) -> RuleResult:
    return _distance(
        "next_to", _gap(s.box, o.box) / c.diagonal, c.config.next_to_keep, c.config.next_to_drop
    )


def near(s: Geom, o: Geom, c: Context) -> RuleResult:
    return _distance(
        "near", _gap(s.box, o.box) / c.diagonal, c.config.near_keep, c.config.near_drop
    )


def far_from(s: Geom, o: Geom, c: Context) -> RuleResult:
    return _distance(
        "far_from",
        _gap(s.box, o.box) / c.diagonal,
        c.config.near_keep,
        c.config.near_drop,
        closer_is_true=False,
    )


def _box_cover(a: Box, b: Box) -> float:
    inter = max(0.0, min(a.x2, b.x2) - max(a.x1, b.x1)) * max(
        0.0, min(a.y2, b.y2) - max(a.y1, b.y1)
    )
    return inter / max(a.area, 1e-9)


def _rename(r: RuleResult, rule: str) -> RuleResult:
    return RuleResult(r.decision, rule, r.reason, r.margin)


#: Normalised predicate -> rule. Extend here (and in docs/FILTERS.md) for new predicates.
RULES: dict[str, Rule] = {
    "left of": left_of,
    "right of": right_of,
    "above": above,
    "over": above,
    "below": below,
    "on": on,
    "sitting on": on,
    "standing on": on,
    "lying on": on,
    "under": under,
    "inside": inside,
    "contains": contains,
    "in front of": in_front_of,
    "behind": behind,
    "next to": next_to,
    "near": near,
    "far from": far_from,
}


def degenerate(g: Geom) -> str | None:
    if not all(math.isfinite(v) for v in (g.box.x1, g.box.y1, g.box.x2, g.box.y2)):
        return "box has non-finite coordinates"
    if g.box.width <= 0 or g.box.height <= 0:
        return "box has no area"
    if g.area <= 0:
        return "mask is empty"
    return None


def check(predicate: str, s: Geom, o: Geom, c: Context) -> RuleResult | None:
    """The rule's answer for ``predicate`` (None: no rule covers it)."""
    rule = RULES.get(predicate)
    if rule is None:
        return None
    for who, g in (("subject", s), ("object", o)):
        problem = degenerate(g)
        if problem:
            return RuleResult("abstain", rule.__name__, f"{who} {problem}", None)
    return rule(s, o, c)
