"""Scene graphs from Robin: the holistic and the per-region modes over whole images.

**Holistic** (the release's "extremely detailed scene graph" prompt): one call per group of
regions, answered as ``Objects: / Relations:`` text. **Per-region** (the release's two-turn
prompt): per region, "describe regionK", then, with that answer in the history, "list
regionK's relationships"; each step is batched over every region of every image.

**Long prompts.** Each region costs ~20 prompt tokens on top of the image tokens, so an
image with many regions would overflow ``tokenizer_model_max_length``, which the release
silently truncates. Here: (1) regions are taken largest first and at most ``max_regions``
per image (the rest are reported as capped); (2) the regions taken are split into the fewest
groups whose prompts fit (per-region mode reserves room for the longest description and the second turn), each
group one set of calls with its own region numbering. Relations only link regions of one
group, so groups are made only when one prompt cannot hold them all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from synthvg.models.robin.inference import Generation, RobinCall, RobinEngine, RobinImage, Sampling
from synthvg.models.robin.parse import parse_description, parse_relationships, parse_scene_graph
from synthvg.models.robin.prompt import (
    HOLISTIC_QUESTION,
    Answer,
    description_question,
    first_message,
    relationships_question,
)


@dataclass
class RegionInput:
    region_id: int
    mask: Callable[
        [], np.ndarray
    ]  # H x W bool; called only for regions a prompt lists (not capped ones)
    box: tuple[float, float, float, float]  # xyxy pixels
    area: float


@dataclass
class ImageJob:
    image_id: str
    rgb: np.ndarray
    regions: list[RegionInput]


@dataclass
class CallLog:
    """One model call, kept for audit: what was asked, what came back, what parsing made of it."""

    turn: str  # scene_graph | description | relationships
    region_ids: list[int]  # the regions listed in the prompt, region1 first
    subject_id: int | None
    generation: Generation | None
    error: str | None = None
    problems: list[str] = field(default_factory=list)


@dataclass
class ImageGraph:
    image_id: str
    descriptions: dict[int, str] = field(default_factory=dict)  # region_id -> text
    relations: list[tuple[int, int, str]] = field(
        default_factory=list
    )  # (subject, object, raw predicate)
    calls: list[CallLog] = field(default_factory=list)
    capped: list[int] = field(default_factory=list)  # region ids beyond max_regions
    unfit: list[int] = field(default_factory=list)  # region ids no prompt could hold


class RobinGraphs:
    def __init__(
        self,
        engine: RobinEngine,
        *,
        mode: str,
        sampling: Sampling,
        max_new_tokens: int,
        description_max_tokens: int,
        max_regions: int,
    ):
        self.engine, self.mode, self.sampling = engine, mode, sampling
        self.max_new_tokens, self.description_max_tokens, self.max_regions = (
            max_new_tokens,
            description_max_tokens,
            max_regions,
        )

    # -- planning ----------------------------------------------------------------------------
    def _fits(self, job: ImageJob, regions: list[RegionInput]) -> bool:
        height, width = job.rgb.shape[:2]
        boxes = [r.box for r in regions]
        turns: list[tuple[str, Answer | None]]
        if self.mode == "holistic":
            turns, reserve = [(first_message(boxes, width, height, HOLISTIC_QUESTION), None)], 0
        else:  # the longer, second turn, with room for the longest description
            n = len(regions)
            turns = [
                (first_message(boxes, width, height, description_question(n)), []),
                (relationships_question(n), None),
            ]
            reserve = self.description_max_tokens
        return (
            self.engine.prompt_length(self.engine.prompt_ids(turns)) + reserve
            <= self.engine.max_prompt_tokens
        )

    def plan(self, job: ImageJob) -> tuple[list[list[RegionInput]], list[int], list[int]]:
        """(groups of regions, capped region ids, region ids that fit no prompt)."""
        ranked = sorted(job.regions, key=lambda r: (-r.area, r.region_id))
        taken, capped = (
            ranked[: self.max_regions],
            [r.region_id for r in ranked[self.max_regions :]],
        )
        groups: list[list[RegionInput]] = []
        rest = taken
        while rest:
            lo, hi = (
                0,
                len(rest),
            )  # the longest prefix that fits: binary search, lengths grow with it
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if self._fits(job, rest[:mid]):
                    lo = mid
                else:
                    hi = mid - 1
            if lo == 0:
                return groups, capped, [r.region_id for r in rest]
            groups.append(rest[:lo])
            rest = rest[lo:]
        return groups, capped, []

    # -- running -----------------------------------------------------------------------------
    def run(self, jobs: list[ImageJob]) -> list[ImageGraph]:
        images: list = []
        graphs: list[ImageGraph] = []
        units: list = []  # units: (graph, image index, group)
        for job in jobs:
            graph = ImageGraph(job.image_id)
            graphs.append(graph)
            groups, graph.capped, graph.unfit = self.plan(job)
            if not groups:
                continue
            index = len(images)
            used = [r for g in groups for r in g]
            images.append(RobinImage(job.rgb, [r.mask() for r in used], [r.box for r in used]))
            offset = 0
            for g in groups:
                units.append(
                    (graph, index, g, list(range(offset, offset + len(g))), job.rgb.shape[:2])
                )
                offset += len(g)
        if units:
            (self._holistic if self.mode == "holistic" else self._per_region)(images, units)
        return graphs

    def _message(self, group, size, question) -> str:
        height, width = size
        return first_message([r.box for r in group], width, height, question)

    def _holistic(self, images, units) -> None:
        calls = [
            RobinCall(
                index,
                slots,
                [(self._message(g, size, HOLISTIC_QUESTION), None)],
                self.max_new_tokens,
            )
            for _, index, g, slots, size in units
        ]
        for (graph, _, g, _, _), result in zip(
            units, self.engine.generate(images, calls, self.sampling), strict=True
        ):
            log = self._log(graph, "scene_graph", g, None, result)
            if isinstance(result, Exception):
                continue
            parsed = parse_scene_graph(result.text, len(g))
            log.problems = parsed.problems
            for k, text in parsed.objects.items():
                graph.descriptions.setdefault(g[k - 1].region_id, text)
            graph.relations += [
                (g[r.subject - 1].region_id, g[r.object - 1].region_id, r.predicate)
                for r in parsed.relations
            ]

    def _per_region(self, images, units) -> None:
        firsts = [
            (graph, index, g, slots, k, self._message(g, size, description_question(k)))
            for graph, index, g, slots, size in units
            for k in range(1, len(g) + 1)
        ]
        calls = [
            RobinCall(index, slots, [(msg, None)], self.description_max_tokens)
            for _, index, _, slots, _, msg in firsts
        ]
        seconds = []
        for (graph, index, g, slots, k, msg), result in zip(
            firsts, self.engine.generate(images, calls, self.sampling), strict=True
        ):
            self._log(graph, "description", g, g[k - 1].region_id, result)
            if isinstance(result, Exception):
                continue
            if text := parse_description(result.text, k):
                graph.descriptions[g[k - 1].region_id] = text
            turns: list[tuple[str, Answer | None]] = [
                (msg, result.token_ids),
                (relationships_question(k), None),
            ]
            seconds.append((graph, g, k, RobinCall(index, slots, turns, self.max_new_tokens)))
        results = self.engine.generate(images, [c for *_, c in seconds], self.sampling)
        for (graph, g, k, _), result in zip(seconds, results, strict=True):
            log = self._log(graph, "relationships", g, g[k - 1].region_id, result)
            if isinstance(result, Exception):
                continue
            parsed = parse_relationships(result.text, k, len(g))
            log.problems = parsed.problems
            graph.relations += [
                (g[r.subject - 1].region_id, g[r.object - 1].region_id, r.predicate)
                for r in parsed.relations
            ]

    @staticmethod
    def _log(graph: ImageGraph, turn: str, group, subject: int | None, result) -> CallLog:
        failed = isinstance(result, Exception)
        log = CallLog(
            turn,
            [r.region_id for r in group],
            subject,
            None if failed else result,
            f"{type(result).__name__}: {result}" if failed else None,
        )
        graph.calls.append(log)
        return log
