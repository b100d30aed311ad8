"""Teacher: names subjects and their relations for each image.

Backends: ``rules`` (weight-free spatial relations from geometry, ``generator='rules'``) and
``openai`` (a GPT-4V-class model behind any OpenAI-compatible endpoint, ``generator='model'``).
Both write ``relations`` rows with ``stage='teacher'``; the model also writes ``descriptions``.
"""

from __future__ import annotations

import logging
import os

from synthvg.llm import (
    BatchJob,
    BudgetExceeded,
    LLMResult,
    LLMRetryExhausted,
    install_log_redaction,
)
from synthvg.llm.client import DEFAULT_OUTPUT_ESTIMATE
from synthvg.models.llm_teacher import LLMTeacher, select_regions
from synthvg.models.rule_teacher import RegionGeom, RuleTeacher
from synthvg.schemas import Box, DescriptionRecord, RelationRecord
from synthvg.schemas.config import BuildConfig, OpenAITeacherConfig
from synthvg.schemas.records import relation_id
from synthvg.stages.base import RunContext, ShardSpec, Stage, StageInputs, StageOutput
from synthvg.stages.regions import region_mask
from synthvg.stages.seeds import read_image
from synthvg.storage import Dataset


class ShardStopped(RuntimeError):
    """The shard cannot finish now (budget spent, endpoint down). Answers so far are cached,
    so running the build again resumes without paying for them twice."""


def regions_for_later_stages(inputs: StageInputs, config: BuildConfig) -> dict[str, list[dict]]:
    """Regions per image that later stages see: kept ones, or all (``regions.feed``).

    When the regions stage did not run there are no checks, and every region is used.
    """
    checks = {(c["image_id"], c["region_id"]): c["kept"] for c in inputs.rows("region_checks")}
    use_all = config.regions.feed == "all" or not checks
    out: dict[str, list[dict]] = {}
    for r in inputs.rows("regions"):
        if use_all or checks.get((r["image_id"], r["region_id"]), False):
            out.setdefault(r["image_id"], []).append(r)
    return out


def llm_cache_dir(root: str) -> str:
    """Request cache beside a local dataset; under the user's cache for remote roots."""
    ds = Dataset(root)
    if ds.is_local:
        return os.path.join(ds.path, "cache", "llm")
    return os.path.join(os.path.expanduser("~/.cache/synthvg/llm"), ds.url.replace("://", "_").replace("/", "_"))


class TeacherStage(Stage):
    name = "teacher"
    version = "1"
    writes = ("relations", "descriptions")

    @classmethod
    def skip_reason(cls, config: BuildConfig) -> str | None:
        if config.teacher.backend == "none":
            return "no teacher backend configured (teacher.backend: none)"
        return None

    @classmethod
    def fingerprint_payload(cls, config: BuildConfig) -> dict:
        payload = {**super().fingerprint_payload(config), "feed": config.regions.feed}
        if isinstance(config.teacher, OpenAITeacherConfig):
            from synthvg.prompts import load_prompt

            # Where the key lives, budgets and rate limits do not change answers; the prompt does.
            payload["config"] = config.teacher.model_dump(
                mode="json",
                include={"backend", "model", "base_url", "temperature", "max_tokens", "prompt", "min_subjects",
                         "max_subjects", "max_regions", "image_max_side", "detail", "structured_output"},
            )
            payload["prompt_sha256"] = load_prompt(config.teacher.prompt).sha256
        return payload

    def __init__(self, config: BuildConfig):
        super().__init__(config)
        if isinstance(config.teacher, OpenAITeacherConfig):
            for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs"):
                install_log_redaction(logging.getLogger(name))  # keys never reach a log or the API
            self.llm: LLMTeacher | None = LLMTeacher(config.teacher, llm_cache_dir(config.out))
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

    def _relation(self, ctx, image_id, s, o, predicate, raw, category, generator, score, model, prompt_version):
        return RelationRecord(
            relation_id=relation_id(image_id, "teacher", s, o, predicate),
            image_id=image_id, subject_id=s, object_id=o, predicate=predicate, predicate_raw=raw,
            category=category, stage="teacher", generator=generator, score=score, model=model,
            prompt_version=prompt_version, run_id=ctx.run_id,
        )

    def _process_rules(self, images, regions, ctx) -> StageOutput:
        out = StageOutput()
        for image in images:
            image_id = image["image_id"]
            geoms = [
                RegionGeom(r["region_id"], Box(**r["bbox"]), region_mask(r, image["height"], image["width"]), r["area"])
                for r in regions.get(image_id, [])
            ]
            for t in self.rules.relate(geoms):
                out.add("relations", self._relation(
                    ctx, image_id, t.subject_id, t.object_id, t.predicate, t.predicate, "spatial",
                    "rules", t.score, self.rules.name, self.rules.version,
                ))
        return out

    def _llm_jobs(self, images, regions, ctx, out: StageOutput) -> list[tuple[str, list[dict], dict]]:
        """(image_id, regions shown, request) per image that can be asked; the rest -> errors."""
        jobs = []
        for image in images:
            image_id = image["image_id"]
            shown = select_regions(regions.get(image_id, []), self.llm.config.max_regions)
            if len(shown) < 2:
                out.errors.append(ctx.error("too_few_regions", f"{len(shown)} region(s): nothing to relate", image_id=image_id))
                continue
            try:
                _, pixels = read_image(image["file_uri"])
            except ValueError as e:
                out.errors.append(ctx.error("bad_image", str(e), image_id=image_id, source=image["file_uri"]))
                continue
            jobs.append((image_id, shown, self.llm.request(pixels, shown)))
        return jobs

    def estimate(self, shard: ShardSpec, inputs: StageInputs, ctx: RunContext) -> dict[str, float] | None:
        if self.llm is None:
            return None
        client = self.llm.client
        prepared = [client.prepare(**req) for _, _, req in self._llm_jobs(inputs.rows("images"), regions_for_later_stages(inputs, self.config), ctx, StageOutput())]
        todo = [p for p in prepared if client.cache is None or p.key not in client.cache]
        return {
            "requests": float(len(prepared)),
            "cached": float(len(prepared) - len(todo)),
            "prompt_tokens": float(sum(p.est_prompt_tokens for p in todo)),
            "completion_tokens": float(sum(p.max_output_tokens or DEFAULT_OUTPUT_ESTIMATE for p in todo)),
            "cost_usd": sum(client.estimate_cost(p) for p in todo),
        }

    def _run_batch(self, requests: list[dict], ctx: RunContext) -> set[str]:
        """Answer the uncached requests through the Batch API; returns the keys it answered."""
        client, cfg = self.llm.client, self.llm.config
        todo = {k for r in requests if (k := client.prepare(**r).key) not in client.cache}
        if not todo:
            return set()
        job = BatchJob(client, name=f"teacher-{self.config.name}-shard-{ctx.shard:05d}", poll_seconds=cfg.batch_poll_seconds)
        report = job.run(requests, timeout=cfg.batch_wait_seconds)
        if not report.done:
            raise ShardStopped(
                f"batch {', '.join(report.batch_ids)} still has {report.pending} requests pending; "
                "run the build again to pick it up where it is"
            )
        return todo

    def _process_llm(self, images, regions, ctx) -> StageOutput:
        out = StageOutput()
        teacher = self.llm
        jobs = self._llm_jobs(images, regions, ctx, out)
        batched = self._run_batch([req for _, _, req in jobs], ctx) if teacher.config.batch else set()
        results = teacher.client.run_all([lambda req=req: teacher.client.complete(**req) for _, _, req in jobs])
        stop = [r for r in results if isinstance(r, BudgetExceeded | LLMRetryExhausted)]
        answered = [r for r in results if isinstance(r, LLMResult)]
        price = teacher.config.price(teacher.config.model)
        batch_cost = sum(
            price.cost(r.usage.prompt_tokens, r.usage.completion_tokens, teacher.config.batch_price_factor)
            for r in answered
            if r.request_key in batched
        ) if price else 0.0
        out.metrics = {
            "requests": float(len(jobs)),
            "cached": float(sum(r.cached and r.request_key not in batched for r in answered)),
            "batched": float(len(batched)),
            "prompt_tokens": float(sum(r.usage.prompt_tokens for r in answered if not r.cached or r.request_key in batched)),
            "completion_tokens": float(sum(r.usage.completion_tokens for r in answered if not r.cached or r.request_key in batched)),
            "cost_usd": sum(r.cost_usd for r in answered) + batch_cost,
        }
        if stop:
            raise ShardStopped(
                f"{len(stop)} of {len(jobs)} images not answered ({type(stop[0]).__name__}: {stop[0]}); "
                f"{len(answered)} answers are cached and will not be paid for again"
            )
        version = teacher.prompt.version
        for (image_id, shown, _), result in zip(jobs, results, strict=True):
            if isinstance(result, BaseException):
                out.errors.append(ctx.error("teacher_failed", f"{type(result).__name__}: {result}", image_id=image_id))
                continue
            reply = teacher.check(result, shown)
            for kind, detail in reply.checked.dropped:
                out.errors.append(ctx.error(f"teacher_{kind}", detail, image_id=image_id, source=f"request {result.request_key[:16]}"))
            for rel in reply.checked.relations:
                out.add("relations", self._relation(
                    ctx, image_id, rel.subject_id, rel.object_id, rel.predicate, rel.predicate_raw,
                    rel.category, "model", None, result.model, version,
                ))
            for region_id, text in sorted(reply.checked.descriptions.items()):
                out.add("descriptions", DescriptionRecord(
                    image_id=image_id, region_id=region_id, description=text, stage="teacher",
                    generator="model", model=result.model, prompt_version=version, run_id=ctx.run_id,
                ))
        return out
