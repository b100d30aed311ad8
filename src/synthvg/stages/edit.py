"""Edit (SG-EDIT): a GPT-4o-class editor refines one stage's scene graphs into SVG-FULL.

For each image the stage builds the graph of the configured source (``robin``, ``teacher``,
``seed`` or their ``union``: relations the filters did not drop, over the regions fed to later
stages), asks for a dense caption (optional, cached like every request), asks the editor for
edits, validates and applies them. It writes the edited graph as ``relations`` and
``descriptions`` rows with ``stage='edit'``, and every requested edit, applied or rejected,
as an ``edits`` row. See docs/EDIT.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from synthvg.config.build import BuildConfig
from synthvg.config.edit import OpenAIEditConfig
from synthvg.config.fields import output_settings
from synthvg.llm import LLMResult
from synthvg.models.llm_editor import (
    EditAnswer,
    EditOutcome,
    LLMEditor,
    requested_edits,
    validate_edits,
)
from synthvg.models.marks import select_regions
from synthvg.models.scene_graph import Graph, build_graph, triples
from synthvg.schemas import DescriptionRecord, EditRecord, RelationRecord
from synthvg.schemas.records import relation_id
from synthvg.stages.base import RunContext, ShardSpec, Stage, StageInputs, StageOutput
from synthvg.stages.common import STAGE_OF_RELATIONS, enabled, regions_for_later_stages
from synthvg.stages.llm_stage import (
    add_metrics,
    answer,
    estimate,
    make_client,
    open_image,
    redact_logs,
)

#: Which ``relations.stage`` values each ``edit.source`` reads.
SOURCE_STAGES = {
    "robin": ("robin",),
    "teacher": ("teacher",),
    "seed": ("seed",),
    "union": ("seed", "teacher", "robin"),
}
#: Descriptions that name objects, latest stage first (else the region's label).
NAME_STAGES = ("robin", "teacher")


@dataclass
class _Job:
    image_id: str
    image: Image.Image
    shown: list[dict]
    graph: Graph
    #: (subject, object, predicate) -> (category, predicate_raw) of the source relations.
    source: dict[tuple[int, int, str], tuple[str, str]]


class EditStage(Stage):
    name = "edit"
    order = 70
    version = "1"
    writes = ("relations", "descriptions", "edits")
    reads = ("images", "regions", "region_checks", "relations", "descriptions", "relation_verdicts")

    @classmethod
    def read_from(cls, config: BuildConfig, table: str) -> tuple[str, ...] | None:
        if table == "relations":
            source = enabled(config.edit, OpenAIEditConfig).source
            return tuple(STAGE_OF_RELATIONS[s] for s in SOURCE_STAGES[source])
        if table == "descriptions":
            return tuple(STAGE_OF_RELATIONS[s] for s in NAME_STAGES)
        return None

    @classmethod
    def dry_run_mode(cls, config: BuildConfig) -> str:
        return "paid"

    @classmethod
    def skip_reason(cls, config: BuildConfig) -> str | None:
        edit = config.edit
        if edit.backend == "none":
            return super().skip_reason(config)
        if (
            edit.source in ("robin", "teacher")
            and getattr(config.stage_config(edit.source), "backend", "none") == "none"
        ):
            return (
                f"edit.source is {edit.source} but {edit.source}.backend is none: there is no "
                f"{edit.source} graph to edit (choose another edit.source, or union)"
            )
        return None

    @classmethod
    def fingerprint_payload(cls, config: BuildConfig) -> dict:
        from synthvg.prompts import load_prompt

        edit = config.edit
        assert isinstance(edit, OpenAIEditConfig)
        # Where the key lives, budgets and rate limits are marked SpeedOnly; prompts count by
        # their text. The caption prompt counts only when a caption is asked for (below).
        settings = output_settings(edit)
        del settings["caption_prompt"]
        payload = {
            "feed": config.regions.feed,
            "config": settings,
            "prompt_sha256": load_prompt(edit.prompt).sha256,
        }
        if edit.caption:
            payload["caption_prompt_sha256"] = load_prompt(edit.caption_prompt).sha256
        return payload

    def __init__(self, config: BuildConfig):
        super().__init__(config)
        assert isinstance(config.edit, OpenAIEditConfig)
        redact_logs()
        self.editor = LLMEditor(
            config.edit, None, client=make_client(config.edit, config, scope="edit")
        )

    # ---- inputs --------------------------------------------------------------------------------

    def _jobs(self, inputs: StageInputs, ctx: RunContext, out: StageOutput) -> list[_Job]:
        """One job per image that can be edited; the rest become error rows."""
        regions = regions_for_later_stages(inputs, self.config)
        verdicts = {v["relation_id"]: v["verdict"] for v in inputs.rows("relation_verdicts")}
        stages = SOURCE_STAGES[self.editor.config.source]
        relations: dict[str, list[dict]] = {}
        for r in inputs.rows("relations"):
            if r["stage"] in stages and verdicts.get(r["relation_id"], r["verdict"]) != "dropped":
                relations.setdefault(r["image_id"], []).append(r)
        names: dict[tuple[str, int], str] = {}
        for stage in NAME_STAGES:
            for d in inputs.rows("descriptions"):
                if d["stage"] == stage:
                    names.setdefault((d["image_id"], d["region_id"]), d["description"])
        jobs = []
        for image in inputs.rows("images"):
            image_id = image["image_id"]
            shown = select_regions(regions.get(image_id, []), self.editor.config.max_regions)
            if not shown:
                out.errors.append(
                    ctx.error("too_few_regions", "no region: nothing to edit", image_id=image_id)
                )
                continue
            pixels = open_image(image, ctx, out)
            if pixels is None:
                continue
            rels = relations.get(image_id, [])
            graph = build_graph(
                shown,
                {r["region_id"]: names.get((image_id, r["region_id"])) for r in shown},
                ((r["subject_id"], r["object_id"], r["predicate"]) for r in rels),
            )
            unseen = sum(r["subject_id"] not in graph or r["object_id"] not in graph for r in rels)
            if unseen:
                out.errors.append(
                    ctx.error(
                        "edit_relations_not_shown",
                        f"{unseen} source relation(s) involve regions not shown (beyond edit.max_regions or not fed "
                        "to later stages) or relate a region to itself; they are not in the edited graph",
                        image_id=image_id,
                    )
                )
            source = {
                (r["subject_id"], r["object_id"], r["predicate"]): (
                    r["category"],
                    r["predicate_raw"],
                )
                for r in rels
            }
            jobs.append(_Job(image_id, pixels, shown, graph, source))
        return jobs

    def _captions(
        self, jobs: list[_Job], ctx: RunContext, out: StageOutput, *, send: bool = True
    ) -> dict[str, str]:
        """Dense captions by image (none when captions are off; only cached ones when not ``send``)."""
        editor = self.editor
        if editor.caption_prompt is None or not jobs:
            return {}
        requests = [editor.caption_request(job.image) for job in jobs]
        if not send:
            cache = editor.client.cache
            cached = [
                (j, r)
                for j, r in zip(jobs, requests, strict=True)
                if cache is not None and editor.client.prepare(**r).key in cache
            ]
            results = editor.client.map_complete([r for _, r in cached])
            return {
                j.image_id: res.content
                for (j, _), res in zip(cached, results, strict=True)
                if isinstance(res, LLMResult)
            }
        results, metrics = answer(
            editor.client,
            editor.config,
            requests,
            f"edit-caption-{self.config.name}-shard-{ctx.shard:05d}",
            ctx,
            self.config.out,
        )
        add_metrics(out.metrics, {**metrics, "captions": metrics["requests"]})
        captions = {}
        for job, result in zip(jobs, results, strict=True):
            if isinstance(result, BaseException):
                out.errors.append(
                    ctx.error(
                        "edit_caption_failed",
                        f"{type(result).__name__}: {result}; edited without a caption",
                        image_id=job.image_id,
                    )
                )
            else:
                captions[job.image_id] = result.content
        return captions

    def estimate(
        self, shard: ShardSpec, inputs: StageInputs, ctx: RunContext
    ) -> dict[str, float] | None:
        """Captions not yet cached are priced, and their edit requests priced without them."""
        editor = self.editor
        jobs = self._jobs(inputs, ctx, StageOutput())
        totals = (
            estimate(editor.client, [editor.caption_request(j.image) for j in jobs])
            if editor.caption_prompt
            else {}
        )
        captions = self._captions(jobs, ctx, StageOutput(), send=False)
        edits = [
            editor.edit_request(j.image, j.shown, j.graph, captions.get(j.image_id)) for j in jobs
        ]
        return add_metrics(totals, estimate(editor.client, edits))

    # ---- the shard -----------------------------------------------------------------------------

    def process(self, shard: ShardSpec, inputs: StageInputs, ctx: RunContext) -> StageOutput:
        out = StageOutput()
        editor = self.editor
        jobs = self._jobs(inputs, ctx, out)
        captions = self._captions(jobs, ctx, out)
        requests = [
            editor.edit_request(j.image, j.shown, j.graph, captions.get(j.image_id)) for j in jobs
        ]
        results, metrics = answer(
            editor.client,
            editor.config,
            requests,
            f"edit-{self.config.name}-shard-{ctx.shard:05d}",
            ctx,
            self.config.out,
        )
        add_metrics(out.metrics, metrics)
        for job, result in zip(jobs, results, strict=True):
            if isinstance(result, BaseException):
                out.errors.append(
                    ctx.error(
                        "edit_failed", f"{type(result).__name__}: {result}", image_id=job.image_id
                    )
                )
                continue
            outcome = validate_edits(
                job.graph, requested_edits(EditAnswer.model_validate(result.parsed), job.graph)
            )
            self._write(job, outcome, result.model, ctx, out)
            add_metrics(
                out.metrics,
                {
                    "edits_applied": float(len(outcome.applied)),
                    "edits_rejected": float(len(outcome.log) - len(outcome.applied)),
                },
            )
        return out

    def _write(
        self, job: _Job, outcome: EditOutcome, model: str, ctx: RunContext, out: StageOutput
    ) -> None:
        version = self.editor.prompt_version
        image_id = job.image_id
        added = {
            (e.edit.subject_id, e.edit.object_id, e.edit.predicate): e.predicate_raw
            for e in outcome.log
            if e.applied and e.edit.action == "add"
        }
        by_predicate = {p: c for (_, _, p), (c, _) in job.source.items()}
        for s, o, p in triples(outcome.graph):
            category, raw = job.source.get(
                (s, o, p), (by_predicate.get(p, "other"), added.get((s, o, p)) or p)
            )
            out.add(
                "relations",
                RelationRecord(
                    relation_id=relation_id(image_id, "edit", s, o, p),
                    image_id=image_id,
                    subject_id=s,
                    object_id=o,
                    predicate=p,
                    predicate_raw=raw,
                    category=category,
                    stage="edit",
                    generator="model",
                    model=model,
                    prompt_version=version,
                    run_id=ctx.run_id,
                ),
            )
        for region_id, node in outcome.graph.items():
            out.add(
                "descriptions",
                DescriptionRecord(
                    image_id=image_id,
                    region_id=region_id,
                    description=node["name"],
                    stage="edit",
                    generator="model",
                    model=model,
                    prompt_version=version,
                    run_id=ctx.run_id,
                ),
            )
        for e in outcome.log:
            out.add(
                "edits",
                EditRecord(
                    image_id=image_id,
                    region_id=e.edit.subject_id,
                    action=e.edit.action,
                    predicate=e.edit.predicate if e.edit.action in ("add", "remove") else None,
                    predicate_raw=e.predicate_raw,
                    object_id=e.edit.object_id,
                    old_name=e.old_name,
                    new_name=e.edit.name,
                    applied=e.applied,
                    reason=e.reason,
                    source=self.editor.config.source,
                    model=model,
                    prompt_version=version,
                    run_id=ctx.run_id,
                ),
            )
