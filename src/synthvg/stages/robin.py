"""Robin: dense relations and refined descriptions for every region of every image.

Regions are what later stages see (``regions.feed``): annotated regions, and for images
without annotations the regions stage's proposals (``regions.uncovered``). Writes
``relations`` and ``descriptions`` with ``stage='robin'``, and every model call's raw text
to ``generations`` so what the parser dropped stays auditable.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Any

from synthvg import masks
from synthvg.config.build import BuildConfig
from synthvg.config.fields import output_settings
from synthvg.config.robin import RobinModelConfig
from synthvg.models.errors import ModelLoadError
from synthvg.models.identity import path_identity
from synthvg.predicates import category_of, normalise
from synthvg.schemas import DescriptionRecord, GenerationRecord, RelationRecord
from synthvg.schemas.records import relation_id
from synthvg.stages.base import (
    RunContext,
    ShardSpec,
    Stage,
    StageInputs,
    StageOutput,
    shared_model,
)
from synthvg.stages.common import (
    enabled,
    load_rgb,
    per_image,
    regions_for_later_stages,
)


def _decoded_mask(region: dict, height: int, width: int):
    """A region's full-size mask; decoded lazily, since regions beyond ``max_regions`` never need one."""
    return masks.decode(masks.region_mask(region, height, width)).astype(bool)


class RobinStage(Stage):
    name = "robin"
    order = 60
    version = "1"
    writes = ("relations", "descriptions", "generations")
    reads = ("images", "regions", "region_checks")

    @classmethod
    def dry_run_mode(cls, config: BuildConfig) -> str:
        return "model"

    @classmethod
    def fingerprint_payload(cls, config: BuildConfig) -> dict:
        payload = {**super().fingerprint_payload(config), "feed": config.regions.feed}
        if isinstance(config.robin, RobinModelConfig):
            payload["config"] = output_settings(config.robin)
            payload["model"] = path_identity(config.robin.checkpoint)
        return payload

    def __init__(self, config: BuildConfig):
        super().__init__(config)
        try:
            import torch

            from synthvg.models.robin.graphs import RobinGraphs
            from synthvg.models.robin.inference import RobinEngine, Sampling
            from synthvg.models.runtime import resolve_device, resolve_dtype
        except ImportError as e:
            raise ModelLoadError(
                f"robin needs the models extra (pip install 'synthvg[models]'): {e}"
            ) from None
        rc = enabled(config.robin, RobinModelConfig)
        self.robin = rc
        device = resolve_device(rc.device)
        vision_dtype = (
            torch.float16
            if rc.vision_dtype == "auto" and device.type == "cuda"
            else resolve_dtype(rc.vision_dtype, device)
        )
        # What the loaded model depends on (not the sampling settings): another temperature
        # or mode reuses it.
        engine_args: dict[str, Any] = {
            "device": device,
            "lm_dtype": resolve_dtype(rc.dtype, device),
            "vision_dtype": vision_dtype,
            "batch_size": rc.batch_size,
            "max_prompt_tokens": rc.max_prompt_tokens,
            "attn_implementation": rc.attn_implementation,
            "allow_unexpected_keys": rc.allow_unexpected_keys,
        }
        engine = shared_model(  # loads once per worker
            self,
            "engine",
            {
                "model": path_identity(rc.checkpoint),
                **{k: str(v) for k, v in engine_args.items()},
            },
            lambda: RobinEngine(rc.checkpoint, **engine_args),
        )
        self.graphs = RobinGraphs(
            engine,
            mode=rc.mode,
            sampling=Sampling(rc.temperature, rc.top_p, rc.seed),
            max_new_tokens=rc.max_new_tokens,
            description_max_tokens=rc.description_max_tokens,
            max_regions=rc.max_regions,
        )
        self.model_name = os.path.basename(os.path.normpath(rc.checkpoint))
        self.prompt_version = f"robin/{rc.mode}@release-v1"

    def process(self, shard: ShardSpec, inputs: StageInputs, ctx: RunContext) -> StageOutput:
        out = StageOutput()
        regions = regions_for_later_stages(inputs, self.config)
        todo = []
        for image in inputs.rows("images"):
            if regions.get(image["image_id"]):
                todo.append(image)
            else:
                out.errors.append(
                    ctx.error("no_regions", "no regions to describe", image_id=image["image_id"])
                )
        step = self.robin.images_per_batch
        for start in range(0, len(todo), step):
            jobs = [
                job
                for image in todo[start : start + step]
                if (job := self._job(image, regions, out, ctx))
            ]

            def failed(job, kind, reason):
                out.errors.append(ctx.error(kind, reason, image_id=job.image_id))

            for graph in per_image(self.graphs.run, jobs, failed, "robin_failed"):
                if graph is not None:
                    self._record(graph, out, ctx)
        return out

    def _job(self, image: dict, regions: dict[str, list[dict]], out: StageOutput, ctx: RunContext):
        from synthvg.models.robin.graphs import ImageJob, RegionInput

        rgb = load_rgb(image, out, ctx)
        if rgb is None:
            return None
        h, w = image["height"], image["width"]
        return ImageJob(
            image["image_id"],
            rgb,
            [
                RegionInput(
                    r["region_id"],
                    partial(_decoded_mask, r, h, w),
                    (r["bbox"]["x1"], r["bbox"]["y1"], r["bbox"]["x2"], r["bbox"]["y2"]),
                    r["area"],
                )
                for r in regions[image["image_id"]]
            ],
        )

    def _record(self, graph, out: StageOutput, ctx: RunContext) -> None:
        image_id, common = (
            graph.image_id,
            {"model": self.model_name, "prompt_version": self.prompt_version, "run_id": ctx.run_id},
        )
        if graph.capped:
            out.errors.append(
                ctx.error(
                    "regions_capped",
                    f"{len(graph.capped)} smallest region(s) beyond robin.max_regions={self.robin.max_regions} not described: {graph.capped[:20]}",
                    image_id=image_id,
                )
            )
        if graph.unfit:
            out.errors.append(
                ctx.error(
                    "prompt_too_long",
                    f"{len(graph.unfit)} region(s) fit in no prompt of at most {self.graphs.engine.max_prompt_tokens} tokens",
                    image_id=image_id,
                )
            )
        for call in graph.calls:
            g = call.generation
            out.add(
                "generations",
                GenerationRecord(
                    image_id=image_id,
                    stage="robin",
                    turn=call.turn,
                    region_ids=call.region_ids,
                    subject_id=call.subject_id,
                    text=g.text if g else None,
                    prompt_tokens=g.prompt_tokens if g else None,
                    new_tokens=g.new_tokens if g else None,
                    finished=g.finished if g else None,
                    error=call.error,
                    problems=call.problems,
                    **common,
                ),
            )
            if call.error:
                out.errors.append(ctx.error("robin_call_failed", call.error, image_id=image_id))
        for region_id, text in sorted(graph.descriptions.items()):
            out.add(
                "descriptions",
                DescriptionRecord(
                    image_id=image_id,
                    region_id=region_id,
                    description=text,
                    stage="robin",
                    generator="model",
                    **common,
                ),
            )
        seen = set()
        for s, o, raw in graph.relations:
            predicate = normalise(raw)
            rid = relation_id(image_id, "robin", s, o, predicate)
            if not predicate or rid in seen:
                continue
            seen.add(rid)
            out.add(
                "relations",
                RelationRecord(
                    relation_id=rid,
                    image_id=image_id,
                    subject_id=s,
                    object_id=o,
                    predicate=predicate,
                    predicate_raw=raw,
                    category=category_of(predicate),
                    stage="robin",
                    generator="model",
                    **common,
                ),
            )
        out.metrics["robin_calls"] = out.metrics.get("robin_calls", 0) + len(graph.calls)
        out.metrics["robin_new_tokens"] = out.metrics.get("robin_new_tokens", 0) + sum(
            c.generation.new_tokens for c in graph.calls if c.generation
        )
