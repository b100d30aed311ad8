"""Time the regions stage's IoU filter alone: images/s at ~20 annotated regions x ~100 proposals.

Masks are realistic blobs at 640x480 (star-shaped outlines with low-frequency wobble, the way
object masks look), built once; proposals are jittered copies of the annotations (some match,
some do not) plus unrelated blobs. Methods, side by side on the same masks, all checked equal:
  rle          pycocotools RLE IoU (the stage's usual path)
  dense bits   decode to packed bits, popcount the ANDs (the stage's fallback)
  dense numpy  decode to bool arrays, one float32 matrix product (the naive dense way)
  auto         picks rle or dense bits by a cost estimate (what the stage calls)
  filter       the stage's whole filter: auto IoU, then best proposal and kept per region
Repeats are interleaved across methods and the best of them is reported: on a shared machine
the fastest run is the one least disturbed by other processes.
A second set of noise masks (every pixel a coin flip) shows why the fallback exists.

Usage: python benchmarks/bench_iou.py [--images N] [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np
from pycocotools import mask as mask_utils

from synthvg import masks
from synthvg.schemas import RLE
from synthvg.stages.regions import check_regions

H, W = 480, 640


def blob(rng: np.random.Generator, cy: float, cx: float, r: float) -> np.ndarray:
    """A star-shaped blob: radius r wobbling with four random low harmonics."""
    yy, xx = np.mgrid[:H, :W]
    theta = np.arctan2(yy - cy, xx - cx)
    wobble = sum(
        rng.uniform(0, 0.15) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in range(2, 6)
    )
    return np.hypot(yy - cy, xx - cx) < r * (1 + wobble)


def image_masks(
    rng: np.random.Generator, regions: int, proposals: int
) -> tuple[list[RLE], list[RLE]]:
    shapes = [(rng.uniform(0, H), rng.uniform(0, W), rng.uniform(12, 150)) for _ in range(regions)]
    ann = [masks.encode(blob(rng, *s)) for s in shapes]
    props = []
    for i in range(proposals):
        if i < proposals * 0.6:  # a jittered, rescaled copy of an annotation
            cy, cx, r = shapes[i % regions]
            props.append(
                masks.encode(
                    blob(
                        rng,
                        cy + rng.normal(0, 4),
                        cx + rng.normal(0, 4),
                        r * rng.uniform(0.85, 1.15),
                    )
                )
            )
        else:
            props.append(
                masks.encode(blob(rng, rng.uniform(0, H), rng.uniform(0, W), rng.uniform(8, 120)))
            )
    return ann, props


def noise_masks(
    rng: np.random.Generator, regions: int, proposals: int
) -> tuple[list[RLE], list[RLE]]:
    return (
        [masks.encode(rng.random((H, W)) < 0.5) for _ in range(regions)],
        [masks.encode(rng.random((H, W)) < 0.5) for _ in range(proposals)],
    )


def numpy_dense(a: list[RLE], b: list[RLE]) -> np.ndarray:
    da = np.stack([mask_utils.decode(masks.to_coco(r)).ravel() for r in a]).astype(np.float32)
    db = np.stack([mask_utils.decode(masks.to_coco(r)).ravel() for r in b]).astype(np.float32)
    inter = da @ db.T
    union = da.sum(1)[:, None] + db.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


METHODS = {
    "rle": lambda a, b: masks.iou_matrix(a, b, "rle"),
    "dense bits": lambda a, b: masks.iou_matrix(a, b, "dense"),
    "dense numpy": numpy_dense,
    "auto": lambda a, b: masks.iou_matrix(a, b, "auto"),
    "filter": lambda a, b: check_regions(a, b, 0.5),
}


def run(data: list[tuple[list[RLE], list[RLE]]], repeat: int) -> dict[str, float]:
    """Best images/s per method over ``repeat`` interleaved runs, after checking every method
    against the RLE result."""
    reference = [METHODS["rle"](a, b) for a, b in data]
    for name, fn in METHODS.items():
        for (a, b), ref in zip(data, reference, strict=True):
            got = fn(a, b)
            if name == "filter":
                assert [c[0] for c in got] == best_per_region(ref), name
            else:
                np.testing.assert_allclose(got, ref, atol=1e-6, err_msg=name)
    times: dict[str, list[float]] = {name: [] for name in METHODS}
    for _ in range(repeat):
        for name, fn in METHODS.items():
            time.sleep(0.5)  # BLAS threads spin on after a matrix product; let them park first
            t0 = time.perf_counter()
            for a, b in data:
                fn(a, b)
            times[name].append(time.perf_counter() - t0)
    return {name: len(data) / min(t) for name, t in times.items()}


def best_per_region(ious: np.ndarray) -> list[float]:
    """Each region's best IoU, as the filter must report it."""
    return [float(row.max()) for row in ious]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10)
    ap.add_argument("--regions", type=int, default=20)
    ap.add_argument("--proposals", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    blobs = [image_masks(rng, args.regions, args.proposals) for _ in range(args.images)]
    noise = [noise_masks(rng, 5, 20) for _ in range(3)]
    runs = blobs[0][0] + blobs[0][1]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cpus, Python {platform.python_version()}, numpy {np.__version__}"
    )
    print(
        f"blob masks: {args.images} images of {W}x{H}, {args.regions} regions x {args.proposals} proposals, "
        f"mean RLE counts {statistics.mean(len(r.counts) for r in runs):.0f} chars; "
        f"noise masks: 3 images, 5 x 20"
    )
    print()
    print("| method | blob masks, images/s | noise masks, images/s |")
    print("|---|---:|---:|")
    b, n = run(blobs, args.repeat), run(noise, args.repeat)
    for name in METHODS:
        print(f"| {name} | {b[name]:.1f} | {n[name]:.2f} |")
    print()
    print("every method's IoU matrix equals the RLE one (atol 1e-6)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
