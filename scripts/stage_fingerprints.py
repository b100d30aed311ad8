"""Print every stage's fingerprint for each build config under configs/ (and a few variants).

Run it before and after a change to the config or stage code: a line that differs means a
rebuild would redo that stage of a finished dataset. Variants turn on the backends the shipped
configs leave off (Robin per region, a SAM package proposer, verifiers, an LLM teacher), so
their settings are covered too. Model paths need not exist (a missing path is an identity).

    python scripts/stage_fingerprints.py > before.txt
"""

from __future__ import annotations

import copy
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

from synthvg.schemas.config import ConfigError, load_config
from synthvg.stages import _stages
from synthvg.stages.base import ShardSpec
from synthvg.stages.dag import shard_fingerprints

ROOT = Path(__file__).resolve().parent.parent
SHARD = ShardSpec(index=0, image_ids=["coco:139", "coco:285"])

VARIANTS: dict[str, tuple[str, dict]] = {
    "real_data+robin_per_region": (
        "real_data.example.yaml",
        {
            "robin": {
                "mode": "per_region",
                "vision_dtype": "float16",
                "max_regions": 50,
                "images_per_batch": 2,
                "device": "cuda",
            }
        },
    ),
    "models+segment_anything": (
        "models.example.yaml",
        {
            "regions": {
                "proposer": "segment_anything",
                "segment_anything": {
                    "checkpoint": "../models/sam_vit_h_4b8939.pth",
                    "whole": {"points_per_batch": 128},
                },
            }
        },
    ),
    "models+precomputed": (
        "models.example.yaml",
        {"regions": {"proposer": "precomputed", "precomputed": {"path": "../proposals/x"}}},
    ),
    "demo+verifiers": (
        "demo.yaml",
        {
            "filters": {
                "backend": "rules",
                "stages": ["teacher", "robin"],
                "vote": "majority",
                "spatial": {"near_keep": 0.07},
                "verifiers": [
                    {"kind": "openai", "model": "gpt-4o-mini", "budget_usd": 3},
                    {"kind": "transformers", "path": "/nonexistent/vlm", "batch_size": 2},
                ],
            },
            "robin": {"backend": "robin", "checkpoint": "/nonexistent/robin"},
        },
    ),
    "demo+openai_teacher+edit": (
        "demo.yaml",
        {
            "teacher": {"backend": "openai", "model": "gpt-4o", "max_concurrency": 3},
            "edit": {"backend": "openai", "source": "teacher", "model": "gpt-4o", "caption": False},
        },
    ),
    "demo+workers8": ("demo.yaml", {"executor": {"workers": 8}, "name": "other"}),
}


def _merge(base: dict, patch: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and "backend" not in v:
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def main() -> int:
    stages = _stages()
    rows: list[tuple[str, str, str]] = []
    configs = {p.stem: (p, None) for p in sorted((ROOT / "configs").glob("*.yaml"))}
    configs.update({k: (ROOT / "configs" / f, patch) for k, (f, patch) in VARIANTS.items()})
    tmp = Path(tempfile.mkdtemp(prefix=".fp-", dir=ROOT))  # a sibling of configs/: same ../
    try:
        for label, (path, patch) in configs.items():
            if patch is not None:
                raw = _merge(yaml.safe_load(path.read_text()), patch)
                path = tmp / path.name
                path.write_text(yaml.safe_dump(raw))
            try:
                cfg = load_config(path)
            except ConfigError as e:
                if patch is not None:
                    raise SystemExit(f"variant {label}: {e}") from None
                continue  # not a build config (training configs)
            for stage, fp in shard_fingerprints(stages, cfg, SHARD).items():
                rows.append((label, stage, fp[:16]))
    finally:
        shutil.rmtree(tmp)
    for row in rows:
        print(*row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
