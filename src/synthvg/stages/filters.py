"""Filters: rules over geometry for spatial relations, VQA verification for the rest.

Every relation of the configured stages gets a verdict row (``relation_verdicts``): kept or
dropped with the deciding rule or verifiers and their evidence, or unverified with the reason
nothing could decide (no rule for the predicate, no depth, a degenerate region, no verifier,
a verifier that failed or answered neither yes nor no). The ``relations`` view applies them;
``svg_relations`` is what the teacher proposed and the filters kept.
"""

from __future__ import annotations

import hashlib
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from synthvg import masks
from synthvg.config.build import BuildConfig
from synthvg.config.fields import output_settings
from synthvg.config.filters import OpenAIVerifierConfig, RuleFiltersConfig, Verifier
from synthvg.models.backends import VERIFIERS
from synthvg.models.identity import path_identity
from synthvg.models.spatial_rules import RULES, Context, Geom, check, contains, inside
from synthvg.models.vqa import OpenAIVerifier, Question, VQAVerifier, combine, mark_pair
from synthvg.predicates import load_synonyms, normalise

if TYPE_CHECKING:
    from PIL import Image
from synthvg.prompts import load_prompt
from synthvg.schemas import RLE, Box, RelationVerdictRecord
from synthvg.stages.base import (
    RunContext,
    ShardSpec,
    Stage,
    StageInputs,
    StageOutput,
    shared_model,
)
from synthvg.stages.common import STAGE_OF_RELATIONS, enabled
from synthvg.stages.llm_stage import (
    add_metrics,
    begin_shard,
    estimate,
    open_image,
    redact_logs,
    stop_on_failures,
)

_VERDICT = {"keep": "kept", "drop": "dropped", "abstain": "unverified"}


def make_verifier(cfg: Verifier, build: BuildConfig) -> VQAVerifier:
    return VERIFIERS.create(cfg.kind, cfg, build)


class FiltersStage(Stage):
    name = "filters"
    order = 50
    version = "1"
    writes = ("relation_verdicts",)
    reads = ("images", "regions", "region_depth", "relations", "descriptions")

    @classmethod
    def read_from(cls, config: BuildConfig, table: str) -> tuple[str, ...] | None:
        # Relations (and their descriptions) of the stages it judges, whatever else wrote some.
        if table in ("relations", "descriptions"):
            stages = enabled(config.filters, RuleFiltersConfig).stages
            return tuple(STAGE_OF_RELATIONS[s] for s in stages)
        return None

    @classmethod
    def fingerprint_payload(cls, config: BuildConfig) -> dict:
        f = enabled(config.filters, RuleFiltersConfig)
        verifiers = [
            output_settings(v)
            | {"prompt_sha256": load_prompt(v.prompt).sha256}
            | ({"weights": path_identity(p)} if (p := getattr(v, "path", None)) else {})
            for v in f.verifiers
        ]
        synonyms = hashlib.sha256(Path(f.synonyms).read_bytes()).hexdigest() if f.synonyms else None
        settings = output_settings(f)
        del settings["verifiers"], settings["synonyms"]  # below: with their files' identity
        return {
            "config": settings,
            "verifiers": verifiers,
            "synonyms": synonyms,
        }

    @classmethod
    def dry_run_mode(cls, config: BuildConfig) -> str:
        verifiers = getattr(config.filters, "verifiers", [])
        if any(not isinstance(v, OpenAIVerifierConfig) for v in verifiers):
            return "model"
        return "paid" if verifiers else "free"

    @classmethod
    def light(cls, config: BuildConfig) -> bool:
        return cls.dry_run_mode(config) == "free"  # rules only, no verifier

    def __init__(self, config: BuildConfig):
        super().__init__(config)
        self.filters = enabled(config.filters, RuleFiltersConfig)
        if any(isinstance(v, OpenAIVerifierConfig) for v in self.filters.verifiers):
            redact_logs()
        # Local models load once per worker and per their settings; an endpoint's client writes
        # its cache under the build's root, so it belongs to this instance.
        self.verifiers = [
            make_verifier(v, config)
            if isinstance(v, OpenAIVerifierConfig)
            else shared_model(
                self,
                f"verifier:{i}",
                {"config": v, "model": path_identity(v.path)},
                partial(make_verifier, v, config),
            )
            for i, v in enumerate(self.filters.verifiers)
        ]
        self.synonyms = load_synonyms(self.filters.synonyms)

    def process(self, shard: ShardSpec, inputs: StageInputs, ctx: RunContext) -> StageOutput:
        out = StageOutput()
        pending, names, verdict = self._decide_by_rules(inputs, ctx, out)
        self._verify(pending, names, verdict, out, ctx)
        counts = {"kept": 0.0, "dropped": 0.0, "unverified": 0.0}
        for v in out.tables.get("relation_verdicts", []):
            if isinstance(v, RelationVerdictRecord):
                counts[v.verdict] += 1
        out.metrics = add_metrics(counts, out.metrics)
        return out

    def estimate(
        self, shard: ShardSpec, inputs: StageInputs, ctx: RunContext
    ) -> dict[str, float] | None:
        """The VQA questions the OpenAI-compatible verifiers would be asked, priced; rules cost nothing."""
        clients = [v for v in self.verifiers if isinstance(v, OpenAIVerifier)]
        if not clients:
            return None
        out = StageOutput()
        pending, names, verdict = self._decide_by_rules(inputs, ctx, out)
        _, questions = self._questions(pending, names, verdict, out, ctx)
        totals: dict[str, float] = {}
        for v in clients:
            add_metrics(totals, estimate(v.client, [v.request(q) for q in questions]))
        return totals

    def _decide_by_rules(self, inputs: StageInputs, ctx: RunContext, out: StageOutput):
        """Verdicts of everything rules decide, into ``out``; (relations for the verifiers, region
        names, the verdict writer)."""
        images = {i["image_id"]: i for i in inputs.rows("images")}
        regions = {(r["image_id"], r["region_id"]): r for r in inputs.rows("regions")}
        depth = {
            (d["image_id"], d["region_id"]): d["depth_median"] for d in inputs.rows("region_depth")
        }
        names = {
            (r["image_id"], r["region_id"]): r.get("label") or "object" for r in regions.values()
        }
        for d in inputs.rows("descriptions"):
            names[(d["image_id"], d["region_id"])] = d["description"]
        relations = [r for r in inputs.rows("relations") if r["stage"] in self.filters.stages]
        pending: list[tuple[dict, dict, dict]] = []  # non-spatial relations for the verifiers

        def verdict(rel: dict, v: str, reason: str, by: str, score: float | None = None) -> None:
            out.add(
                "relation_verdicts",
                RelationVerdictRecord(
                    relation_id=rel["relation_id"],
                    image_id=rel["image_id"],
                    verdict=v,
                    verdict_reason=reason,
                    verdict_score=score,
                    verified_by=by,
                    run_id=ctx.run_id,
                ),
            )

        for rel in relations:
            image = images.get(rel["image_id"])
            s = regions.get((rel["image_id"], rel["subject_id"]))
            o = regions.get((rel["image_id"], rel["object_id"]))
            if image is None or s is None or o is None:
                missing = (
                    "image"
                    if image is None
                    else f"region {rel['subject_id'] if s is None else rel['object_id']}"
                )
                verdict(rel, "unverified", f"{missing} does not exist in this dataset", "filters")
                continue
            predicate = normalise(rel["predicate_raw"], self.synonyms) or rel["predicate"]
            if rel["category"] == "spatial":
                self._spatial(rel, predicate, image, s, o, depth, verdict)
            elif self.verifiers:
                pending.append((rel, image, {"s": s, "o": o, "predicate": predicate}))
            else:
                verdict(
                    rel,
                    "unverified",
                    f"no VQA verifier configured for {rel['category']} relations",
                    "filters",
                )
        return pending, names, verdict

    def _spatial(self, rel, predicate, image, s, o, depth, verdict) -> None:
        if predicate not in RULES:
            verdict(rel, "unverified", f"no spatial rule for predicate {predicate!r}", "filters")
            return
        gs, go = (
            Geom(
                Box(**r["bbox"]),
                r["area"],
                RLE(**r["mask"]) if r.get("mask") else None,
                depth.get((r["image_id"], r["region_id"])),
            )
            for r in (s, o)
        )
        s_in_o = o_in_s = None
        needs_masks = RULES[predicate] in (inside, contains)  # RLE work only where it decides
        if (
            needs_masks
            and gs.mask is not None
            and go.mask is not None
            and gs.area > 0
            and go.area > 0
        ):
            s_in_o = float(masks.coverage_matrix([gs.mask], [go.mask])[0, 0])
            o_in_s = float(masks.coverage_matrix([go.mask], [gs.mask])[0, 0])
        result = check(
            predicate,
            gs,
            go,
            Context(image["width"], image["height"], self.filters.spatial, s_in_o, o_in_s),
        )
        if result is None:  # RULES covers the predicate (checked above)
            return
        verdict(rel, _VERDICT[result.decision], result.reason, f"rule:{result.rule}", result.margin)

    def _questions(
        self, pending, names, verdict, out: StageOutput, ctx: RunContext
    ) -> tuple[list[dict], list[Question]]:
        """(relations asked, their questions); relations whose image cannot be read get a verdict."""
        pixels: dict[str, Image.Image | None] = {}
        questions: list[Question] = []
        asked: list[dict] = []
        for rel, image, q in pending:
            if image["image_id"] not in pixels:
                pixels[image["image_id"]] = open_image(image, ctx, out)
            img = pixels[image["image_id"]]
            if img is None:
                verdict(rel, "unverified", "image could not be read", "filters")
                continue
            s, o = q["s"], q["o"]
            questions.append(
                Question(
                    image=mark_pair(
                        img, Box(**s["bbox"]), Box(**o["bbox"]), s["region_id"], o["region_id"]
                    ),
                    subject_id=s["region_id"],
                    object_id=o["region_id"],
                    subject=names[(rel["image_id"], s["region_id"])],
                    predicate=q["predicate"],
                    object=names[(rel["image_id"], o["region_id"])],
                    masks=tuple(
                        masks.region_mask(r, image["height"], image["width"]) for r in (s, o)
                    ),
                )
            )
            asked.append(rel)
        return asked, questions

    def _verify(self, pending, names, verdict, out: StageOutput, ctx: RunContext) -> None:
        if not pending:
            return
        asked, questions = self._questions(pending, names, verdict, out, ctx)
        answers = []
        for v in self.verifiers:
            if isinstance(v, OpenAIVerifier):
                begin_shard(v.client, self.config.out, ctx)
                before = v.client.usage.paid_requests
                try:
                    ps = v.p_yes(questions)
                    # A failure that is not this question's own fault never becomes "unverified".
                    stop_on_failures(v.client, self.config.out, ctx, ps)
                finally:
                    if v.client.ledger is not None:
                        v.client.ledger.flush()
                add_metrics(
                    out.metrics,
                    {
                        "requests": float(len(questions)),
                        "paid_requests": float(v.client.usage.paid_requests - before),
                    },
                )
            else:
                ps = v.p_yes(questions)
            answers.append((v.name, v.threshold, ps))
        by = "+".join(v.name for v in self.verifiers)
        for i, rel in enumerate(asked):
            decision, score, reason = combine(
                [(name, ps[i], t) for name, t, ps in answers], self.filters.vote
            )
            verdict(rel, decision, reason, by, score)
