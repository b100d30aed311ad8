"""Teacher: names subjects and their relations for each image.

Backends: ``rules`` (weight-free spatial relations from geometry, ``generator='rules'``) and
``openai`` (a GPT-4V-class model behind any OpenAI-compatible endpoint, ``generator='model'``).
Both write ``relations`` rows with ``stage='teacher'``; the model also writes ``descriptions``.
"""

from __future__ import annotations

from synthvg.config.build import BuildConfig
from synthvg.config.teacher import OpenAITeacherConfig
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
from synthvg.stages.common import region_mask, regions_for_later_stages
from synthvg.stages.llm_stage import answer, estimate, make_client, open_image, redact_logs


class TeacherStage(Stage):
    name = "teacher"
    version = "1"
    writes = ("relations", "descriptions")
    reads = ("images", "regions", "region_checks")

    @classmethod
    def dry_run_mode(cls, config: BuildConfig) -> str:
        return "paid" if isinstance(config.teacher, OpenAITeacherConfig) else "free"

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
        if isinstance(config.teacher, OpenAITeacherConfig):
            redact_logs()
            client = make_client(config.teacher, config, scope="teacher")
            self.llm: LLMTeacher | None = LLMTeacher(config.teacher, None, client=client)
            self.rules = None
        else:
            self.llm = None
            self.rules = RuleTeacher(config.teacher)

    def process(self, shard: ShardSpec, inputs: StageInputs, ctx: RunContext) -> StageOutput:
        regions = regions_for_later_stages(inputs, self.config)
        images = inputs.rows("images")
        if self.llm is not None:
            return self._process_llm(images, regions, ctx)
        return self._process_rules(images, regions, ctx)

    def _relation(
        self, ctx, image_id, s, o, predicate, raw, category, generator, score, model, prompt_version
    ):
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

    def _process_rules(self, images, regions, ctx) -> StageOutput:
        out = StageOutput()
        for image in images:
            image_id = image["image_id"]
            geoms = [
                RegionGeom(
                    r["region_id"],
                    Box(**r["bbox"]),
                    region_mask(r, image["height"], image["width"]),
                    r["area"],
                )
                for r in regions.get(image_id, [])
            ]
            for t in self.rules.relate(geoms):
                out.add(
                    "relations",
                    self._relation(
                        ctx,
                        image_id,
                        t.subject_id,
                        t.object_id,
                        t.predicate,
                        t.predicate,
                        "spatial",
                        "rules",
                        t.score,
                        self.rules.name,
                        self.rules.version,
                    ),
                )
        return out

    def _llm_jobs(
        self, images, regions, ctx, out: StageOutput
    ) -> list[tuple[str, list[dict], dict]]:
        """(image_id, regions shown, request) per image that can be asked; the rest -> errors."""
        jobs = []
        for image in images:
            image_id = image["image_id"]
            shown = select_regions(regions.get(image_id, []), self.llm.config.max_regions)
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
            jobs.append((image_id, shown, self.llm.request(pixels, shown)))
        return jobs

    def estimate(
        self, shard: ShardSpec, inputs: StageInputs, ctx: RunContext
    ) -> dict[str, float] | None:
        if self.llm is None:
            return None
        jobs = self._llm_jobs(
            inputs.rows("images"), regions_for_later_stages(inputs, self.config), ctx, StageOutput()
        )
        return estimate(self.llm.client, [req for _, _, req in jobs])

    def _process_llm(self, images, regions, ctx) -> StageOutput:
        out = StageOutput()
        teacher = self.llm
        jobs = self._llm_jobs(images, regions, ctx, out)
        batch_name = f"teacher-{self.config.name}-shard-{ctx.shard:05d}"
        results, out.metrics = answer(
            teacher.client,
            teacher.config,
            [req for _, _, req in jobs],
            batch_name,
            ctx,
            self.config.out,
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
                    self._relation(
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
