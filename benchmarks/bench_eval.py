"""Time scene-graph recall (synthvg.eval.evaluate): 10K images x 100 predicted triplets with masks.

Synthetic but realistically shaped input at 640x480: object masks are star-shaped blobs (as in
bench_iou.py) drawn from a pool built once; each image has ~12 ground-truth objects and ~15
ground-truth triplets over PSG's 56 predicates; predictions have 20 objects (12 jittered copies
of the ground-truth objects, most with the right label, 8 unrelated) and 100 relation rows with
full 56-way score distributions (so no-graph-constraint recall ranks 5,600 candidates per image).
Timed: the whole metric (R@K, mR@K, ng-R@K, ng-mR@K at K = 20, 50, 100) with mask matching
and with box matching, one process; the input is built before the clock starts.

Usage: python benchmarks/bench_eval.py [--images N] [--pool N]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np
from bench_iou import H, W, blob
from pycocotools import mask as mask_utils

from synthvg.eval.sgg import ImagePrediction, ImageTruth, evaluate

N_PRED, N_CLASSES = 56, 133


def pool(rng: np.random.Generator, n: int) -> tuple[list[dict], list[dict], np.ndarray]:
    """n blob masks and a jittered twin of each (IoU mostly >= 0.5), with their boxes."""
    base, twin = [], []
    for _ in range(n):
        cy, cx, r = rng.uniform(0, H), rng.uniform(0, W), rng.uniform(12, 150)
        base.append(mask_utils.encode(np.asfortranarray(blob(rng, cy, cx, r).astype(np.uint8))))
        twin.append(
            mask_utils.encode(
                np.asfortranarray(
                    blob(
                        rng,
                        cy + rng.normal(0, 4),
                        cx + rng.normal(0, 4),
                        r * rng.uniform(0.85, 1.15),
                    ).astype(np.uint8)
                )
            )
        )
    boxes = mask_utils.toBbox(base)
    boxes[:, 2:] += boxes[:, :2]
    return base, twin, boxes


def images(
    rng: np.random.Generator, n: int, base, twin, boxes
) -> list[tuple[ImageTruth, ImagePrediction]]:
    out = []
    for _ in range(n):
        gt_idx = rng.choice(len(base), 12, replace=False)
        labels = rng.integers(0, N_CLASSES, 12)
        pairs = rng.integers(0, 12, (15, 2))
        rels = np.column_stack((pairs, rng.integers(1, N_PRED + 1, 15)))
        other = rng.choice(len(base), 8, replace=False)
        p_masks = [twin[i] for i in gt_idx] + [base[i] for i in other]
        p_boxes = np.concatenate((boxes[gt_idx] + rng.normal(0, 3, (12, 4)), boxes[other]))
        p_labels = np.concatenate(
            (
                np.where(rng.random(12) < 0.8, labels, rng.integers(0, N_CLASSES, 12)),
                rng.integers(0, N_CLASSES, 8),
            )
        )
        dists = rng.random((100, N_PRED + 1))
        dists[:, 0] = 0
        # a third of the rows repeat a ground-truth pair, so there is something to find
        p_pairs = rng.integers(0, 20, (100, 2))
        p_pairs[:33] = pairs[rng.integers(0, 15, 33)]
        out.append(
            (
                ImageTruth(labels, boxes[gt_idx], rels, [base[i] for i in gt_idx]),
                ImagePrediction(
                    p_labels, p_boxes, p_pairs, 1 + dists[:, 1:].argmax(1), dists, masks=p_masks
                ),
            )
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--pool", type=int, default=150)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    data = images(rng, args.images, *pool(rng, args.pool))
    build = time.perf_counter() - t0
    print(
        f"# {platform.machine()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}, numpy {np.__version__}; "
        f"input built in {build:.1f}s"
    )
    print("| match | images | triplets | s | images/s | R@20 | mR@20 | ng-R@20 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for match_by in ("mask", "box"):
        t0 = time.perf_counter()
        s = evaluate(data, N_PRED, match_by=match_by)
        dt = time.perf_counter() - t0
        print(
            f"| {match_by} | {len(data)} | {100 * len(data)} | {dt:.1f} | {len(data) / dt:.0f} | "
            f"{100 * s.recall[20]:.2f} | {100 * s.mean_recall[20]:.2f} | {100 * s.ng_recall[20]:.2f} |"
        )


if __name__ == "__main__":
    main()
