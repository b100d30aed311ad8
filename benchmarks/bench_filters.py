"""Rule-filter throughput on CPU: relations judged per second, side by side in one run.

Variants over the same synthetic relations (random boxes and masks on 640x480 images):
  rules only      the rule functions on boxes (no masks, no I/O)
  stage           FiltersStage.process: predicate normalisation, mask coverage for inside /
                  contains, verdict records (what a build runs per shard, minus Parquet I/O)

Usage: python benchmarks/bench_filters.py [--relations N]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import time

from synthvg import masks
from synthvg.models.spatial_rules import RULES, Context, Geom, check
from synthvg.schemas import Box
from synthvg.schemas.config import BuildConfig, SpatialRulesConfig
from synthvg.schemas.records import relation_id
from synthvg.stages.base import RunContext, ShardSpec
from synthvg.stages.filters import FiltersStage

W, H = 640, 480
PREDICATES = sorted(RULES)


class Inputs:
    """The StageInputs interface over in-memory rows."""

    def __init__(self, tables: dict[str, list[dict]]):
        self.tables = tables

    def rows(self, name: str) -> list[dict]:
        return self.tables.get(name, [])


def synthetic(
    n_relations: int, regions_per_image: int = 20, seed: int = 0
) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    n_images = max(1, n_relations // 40)
    images, regions, relations = [], [], []
    for i in range(n_images):
        image_id = f"bench:{i}"
        images.append({"image_id": image_id, "width": W, "height": H, "file_uri": ""})
        for r in range(regions_per_image):
            x1, y1 = rng.uniform(0, W - 40), rng.uniform(0, H - 40)
            x2, y2 = x1 + rng.uniform(10, 200), y1 + rng.uniform(10, 200)
            box = Box(x1=x1, y1=y1, x2=min(x2, W), y2=min(y2, H))
            rle = masks.box_to_rle(box, H, W)
            regions.append(
                {
                    "image_id": image_id,
                    "region_id": r,
                    "bbox": box.model_dump(),
                    "area": masks.area(rle),
                    "mask": rle.model_dump(),
                    "label": "thing",
                }
            )
    for k in range(n_relations):
        image_id = f"bench:{k % n_images}"
        s, o = rng.sample(range(regions_per_image), 2)
        p = PREDICATES[k % len(PREDICATES)]
        relations.append(
            {
                "relation_id": relation_id(image_id, "teacher", s, o, p),
                "image_id": image_id,
                "subject_id": s,
                "object_id": o,
                "predicate": p,
                "predicate_raw": p,
                "category": "spatial",
                "stage": "teacher",
            }
        )
    return {"images": images, "regions": regions, "relations": relations}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--relations", type=int, default=20000)
    args = ap.parse_args()
    tables = synthetic(args.relations)
    regions = {(r["image_id"], r["region_id"]): r for r in tables["regions"]}
    ctx = Context(W, H, SpatialRulesConfig())

    t0 = time.perf_counter()
    decisions = []
    for rel in tables["relations"]:
        s, o = (regions[(rel["image_id"], rel[k])] for k in ("subject_id", "object_id"))
        gs, go = (Geom(Box(**r["bbox"]), r["area"]) for r in (s, o))
        decisions.append(check(rel["predicate"], gs, go, ctx).decision)
    rules_s = time.perf_counter() - t0

    cfg = BuildConfig.model_validate(
        {
            "out": "/tmp/unused",
            "seeds": {"sources": [{"annotations": "a", "images": "i"}]},
            "filters": {"backend": "rules"},
        }
    )
    stage = FiltersStage(cfg)
    t0 = time.perf_counter()
    out = stage.process(
        ShardSpec(index=0, image_ids=[i["image_id"] for i in tables["images"]]),
        Inputs(tables),
        RunContext("bench", "filters", 0),
    )
    stage_s = time.perf_counter() - t0
    verdicts = out.tables["relation_verdicts"]
    assert len(verdicts) == args.relations

    n = args.relations
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cpus, Python {platform.python_version()}; one thread"
    )
    print(
        f"{n} spatial relations over {len(tables['images'])} images, {len(PREDICATES)} predicates"
    )
    print(f"{'variant':<12}{'seconds':>10}{'relations/s':>14}")
    print(f"{'rules only':<12}{rules_s:>10.3f}{n / rules_s:>14.0f}")
    print(f"{'stage':<12}{stage_s:>10.3f}{n / stage_s:>14.0f}")
    counts = {v: sum(x.verdict == v for x in verdicts) for v in ("kept", "dropped", "unverified")}
    print(f"verdicts: {counts}; stage / rules-only time = {stage_s / rules_s:.1f}x")


if __name__ == "__main__":
    main()
