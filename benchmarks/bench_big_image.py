"""Peak memory of a build over one very large image, per stage mix.

Makes an N x N image (default 12000) from a tinycoco photo scaled up (so it has real content,
not a flat colour), writes it as JPEG or PNG with one COCO annotation, and builds it with the
demo config (Felzenszwalb regions, rule teacher and filters) in a child process, so the
child's peak RSS (``ru_maxrss``) is the build's own. ``--src`` points the child at another
checkout's ``src`` (the code before a change), for before/after figures.

Usage: python benchmarks/bench_big_image.py [--side 12000] [--format jpeg|png] [--src DIR] [--stages seeds|all]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "data" / "tinycoco" / "images" / "val2017" / "000000444010.jpg"

CHILD = """
import json, resource, sys, time
from synthvg.pipeline import run_build
from synthvg.schemas.config import BuildConfig
cfg = BuildConfig.model_validate(json.loads(sys.argv[1]))
t0 = time.perf_counter()
run = run_build(cfg)
print(json.dumps({"status": run.status, "seconds": round(time.perf_counter() - t0, 1),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                  "errors": sum(s.errors for s in run.stages),
                  "failed": sum(s.shards_failed for s in run.stages)}))
"""


def make_image(folder: Path, side: int, fmt: str) -> Path:
    """In a child process: the parent must stay small, since a child's ``ru_maxrss`` starts at
    its parent's RSS when it was spawned (Linux keeps the high-water mark across exec)."""
    path = folder / f"big.{'jpg' if fmt == 'jpeg' else 'png'}"
    save = "quality=90" if fmt == "jpeg" else "compress_level=1"
    code = (
        f"from PIL import Image; Image.open({str(PHOTO)!r}).convert('RGB')"
        f".resize(({side}, {side}), Image.BILINEAR).save({str(path)!r}, {save})"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    return path


def config(folder: Path, image: Path, side: int, stages: str) -> dict:
    ann = folder / "instances.json"
    ann.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": image.name, "width": side, "height": side}],
                "annotations": [
                    {
                        "id": 1,
                        "image_id": 1,
                        "category_id": 1,
                        "iscrowd": 0,
                        "bbox": [side / 4, side / 4, side / 2, side / 2],
                        "segmentation": [
                            [
                                side / 4,
                                side / 4,
                                3 * side / 4,
                                side / 4,
                                3 * side / 4,
                                3 * side / 4,
                                side / 4,
                                3 * side / 4,
                            ]
                        ],
                    }
                ],
                "categories": [{"id": 1, "name": "thing"}],
            }
        )
    )
    cfg: dict = {
        "out": str(folder / "root"),
        "seeds": {"sources": [{"annotations": str(ann), "images": str(folder)}]},
    }
    if stages == "seeds":
        cfg |= {"regions": {"proposer": "none"}, "teacher": {"backend": "none"}}
    else:
        cfg |= {
            "regions": {"proposer": "felzenszwalb", "feed": "all"},
            "teacher": {"backend": "rules"},
            "filters": {"backend": "rules"},
        }
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=12000)
    ap.add_argument("--format", choices=["jpeg", "png"], default="jpeg")
    ap.add_argument("--src", default=str(REPO / "src"), help="the src folder the build runs from")
    ap.add_argument("--stages", choices=["seeds", "all"], default="all")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        image = make_image(folder, args.side, args.format)
        made = time.perf_counter() - t0
        env = {**os.environ, "PYTHONPATH": args.src}
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                CHILD,
                json.dumps(config(folder, image, args.side, args.stages)),
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        if out.returncode:
            print(out.stderr[-3000:], file=sys.stderr)
        result = (
            json.loads(out.stdout.strip().splitlines()[-1])
            if out.returncode == 0
            else {"exit": out.returncode}
        )
        print(
            json.dumps(
                {
                    "side": args.side,
                    "format": args.format,
                    "file_mb": round(image.stat().st_size / 2**20, 1),
                    "stages": args.stages,
                    "src": args.src,
                    "made_s": round(made, 1),
                    **result,
                }
            )
        )


if __name__ == "__main__":
    main()
