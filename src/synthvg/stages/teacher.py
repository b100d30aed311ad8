"""Teacher: names subjects and their relations for each image.

Backends: ``rules`` (weight-free spatial relations from geometry, ``generator='rules'``) and
``openai`` (a GPT-4V-class model behind any OpenAI-compatible endpoint, ``generator='model'``).
Both write ``relations`` rows with ``stage='teacher'``; the model also writes ``descriptions``.
"""

from __future__ import annotations

from typing import Any, Protocol

from synthvg import masks
from synthvg.config.build import BuildConfig
from synthvg.config.teacher import OpenAITeacherConfig
from synthvg.models.backends import Registry
from synthvg.models.llm_teacher import LLMTeacher
from synthvg.models.marks import select_regions
from synthvg.models.rule_teacher import RegionGeom, RuleTeacher
from synthvg.schemas import Box, DescriptionRecord, RelationRecord
from synthvg.schemas.records import relation_id
from synthvg.stages.base import (
    RunContext,
    ShardSpec,
    Stage,
    StageInputs,
    StageOutput,
)
from synthvg.stages.common import regions_for_later_stages
from synthvg.stages.llm_stage import answer, estimate, make_client, open_image, redact_logs


class TeacherBackend(Protocol):
    """What every teacher backend does: relations (and descriptions) for a shard's images."""

    def relate(
        self, images: list[dict], regions: dict[str, list[dict]], ctx: RunContext
    ) -> StageOutput:
        """Rows for ``images``, given the regions later stages see, per image."""
        ...

    def estimate(
        self, images: list[dict], regions: dict[str, list[dict]], ctx: RunContext
    ) -> dict[str, float] | None:
        """What :meth:`relate` would spend, without spending it (None: it costs nothing)."""
        ...


#: Teacher backends by ``teacher.backend``.
TEACHERS: Registry[TeacherBackend] = Registry("teacher.backend")


def _relation(
    ctx: RunContext,
    image_id: str,
    s: int,
    o: int,
    predicate: str,
    raw: str,
    category: str,
    generator: str,
    score: float | None,
    model: str | None,
    prompt_version: str | None,
) -> RelationRecord:
    return RelationRecord(
        relation_id=relation_id(image_id, "teacher", s, o, predicate),
        image_id=image_id,
        subject_id=s,
        object_id=o,
        predicate=predicate,
        predicate_raw=raw,
        category=category,
        stage="teacher",
        generator=generator,
        score=score,
        model=model,
        prompt_version=prompt_version,
        run_id=ctx.run_id,
    )


@TEACHERS.register("rules")
class RulesTeacher:
    """Spatial relations from geometry, ``generator='rules'``."""

    def __init__(self, section: Any, build: BuildConfig):
        self.teacher = RuleTeacher(section)

    def relate(
        self, images: list[dict], regions: dict[str, list[dict]], ctx: RunContext
    ) -> StageOutput:
        out = StageOutput()
        for image in images:
            image_id = image["image_id"]
            geoms = [
                RegionGeom(
                    r["region_id"],
                    Box(**r["bbox"]),
                    masks.region_mask(r, image["height"], image["width"]),
                    r["area"],
                )
                for r in regions.get(image_id, [])
            ]
            for t in self.teacher.relate(geoms):
                out.add(
                    "relations",
                    _relation(
                        ctx,
                        image_id,
                        t.subject_id,
                        t.object_id,
                        t.predicate,
                        t.predicate,
                        "spatial",
                        "rules",
                        t.score,
                        self.teacher.name,
                        self.teacher.version,
                    ),
                )
        return out

    def estimate(
        self, images: list[dict], regions: dict[str, list[dict]], ctx: RunContext
    ) -> dict[str, float] | None:
        return None


@TEACHERS.register("openai")
class LLMTeacherBackend:
    """A GPT-4V-class model behind any OpenAI-compatible endpoint, ``generator='model'``."""

    def __init__(self, section: OpenAITeacherConfig, build: BuildConfig):
        redact_logs()
        client = make_client(section, build, scope="teacher")
        self.teacher = LLMTeacher(section, None, client=client)
        self.build = build

    def _jobs(
        self,
        images: list[dict],
        regions: dict[str, list[dict]],
        ctx: RunContext,
        out: StageOutput,
    ) -> list[tuple[str, list[dict], dict]]:
        """(image_id, regions shown, request) per image that can be asked; the rest -> errors."""
        jobs = []
        for image in images:
            image_id = image["image_id"]
            shown = select_regions(regions.get(image_id, []), self.teacher.config.max_regions)
            if len(shown) < 2:
                out.errors.append(
                    ctx.error(
                        "too_few_regions",
                        f"{len(shown)} region(s): nothing to relate",
                        image_id=image_id,
                    )
                )
                continue
            pixels = open_image(image, ctx, out)
            if pixels is None:
                continue
            jobs.append((image_id, shown, self.teacher.request(pixels, shown)))
        return jobs

    def estimate(
        self, images: list[dict], regions: dict[str, list[dict]], ctx: RunContext
    ) -> dict[str, float] | None:
        jobs = self._jobs(images, regions, ctx, StageOutput())
        return estimate(self.teacher.client, [req for _, _, req in jobs])

    def relate(
        self, images: list[dict], regions: dict[str, list[dict]], ctx: RunContext
    ) -> StageOutput:
        out = StageOutput()
        teacher = self.teacher
        jobs = self._jobs(images, regions, ctx, out)
        batch_name = f"teacher-{self.build.name}-shard-{ctx.shard:05d}"
        results, out.metrics = answer(
            teacher.client,
            teacher.config,
            [req for _, _, req in jobs],
            batch_name,
            ctx,
            self.build.out,
        )
        version = teacher.prompt.version
        for (image_id, shown, _), result in zip(jobs, results, strict=True):
            if isinstance(result, BaseException):
                out.errors.append(
                    ctx.error(
                        "teacher_failed", f"{type(result).__name__}: {result}", image_id=image_id
                    )
                )
                continue
            reply = teacher.check(result, shown)
            for kind, detail in reply.checked.dropped:
                out.errors.append(
                    ctx.error(
                        f"teacher_{kind}",
                        detail,
                        image_id=image_id,
                        source=f"request {result.request_key[:16]}",
                    )
                )
            for rel in reply.checked.relations:
                out.add(
                    "relations",
                    _relation(
                        ctx,
                        image_id,
                        rel.subject_id,
                        rel.object_id,
                        rel.predicate,
                        rel.predicate_raw,
                        rel.category,
                        "model",
                        None,
                        result.model,
                        version,
                    ),
                )
            for region_id, text in sorted(reply.checked.descriptions.items()):
                out.add(
                    "descriptions",
                    DescriptionRecord(
                        image_id=image_id,
                        region_id=region_id,
                        description=text,
                        stage="teacher",
                        generator="model",
                        model=result.model,
                        prompt_version=version,
                        run_id=ctx.run_id,
                    ),
                )
        return out


class TeacherStage(Stage):
    name = "teacher"
    order = 40
    version = "1"
    writes = ("relations", "descriptions")
    reads = ("images", "regions", "region_checks")

    @classmethod
    def dry_run_mode(cls, config: BuildConfig) -> str:
        return "paid" if isinstance(config.teacher, OpenAITeacherConfig) else "free"

    @classmethod
    def light(cls, config: BuildConfig) -> bool:
        return config.teacher.backend == "rules"

    @classmethod
    def fingerprint_payload(cls, config: BuildConfig) -> dict:
        payload = {**super().fingerprint_payload(config), "feed": config.regions.feed}
        if isinstance(config.teacher, OpenAITeacherConfig):
            from synthvg.prompts import load_prompt

            # Where the key lives, budgets and rate limits are marked SpeedOnly; the prompt's
            # text counts, not only its name.
            payload["prompt_sha256"] = load_prompt(config.teacher.prompt).sha256
        return payload

    def __init__(self, config: BuildConfig):
        super().__init__(config)
        self.backend: TeacherBackend = TEACHERS.create(
            config.teacher.backend, config.teacher, config
        )

    def process(self, shard: ShardSpec, inputs: StageInputs, ctx: RunContext) -> StageOutput:
        regions = regions_for_later_stages(inputs, self.config)
        return self.backend.relate(inputs.rows("images"), regions, ctx)

    def estimate(
        self, shard: ShardSpec, inputs: StageInputs, ctx: RunContext
    ) -> dict[str, float] | None:
        regions = regions_for_later_stages(inputs, self.config)
        return self.backend.estimate(inputs.rows("images"), regions, ctx)
