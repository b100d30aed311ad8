"""Scene-graph generation recall exactly as OpenPSG's ``sgg_eval`` computes it (mode ``sgdet``).

The algorithm (see docs/EVALUATION.md for the full protocol and where it comes from):

* an image whose ground truth has no relation, or whose prediction has no relation row, is
  left out of every average (not counted as 0), unless ``missing='zero'`` asks otherwise;
* prediction rows are used in the order given (ranking is the caller's job); with the graph
  constraint each row carries one predicate;
* a row matches a ground-truth triplet when subject label, predicate and object label are equal
  and both the subject's and the object's IoU are >= the threshold (mask IoU, or mmdet's float32
  box IoU without the +1 pixel); one row may match several triplets and several rows one triplet;
* R@K of an image = ground-truth triplets matched by the first K rows / ground-truth triplets;
  R@K = mean over the evaluated images;
* mR@K: per image and per predicate c present in its ground truth, hits_c / count_c is
  collected; a predicate's recall is the mean of what was collected for it (0.0 when it never
  occurs), and mR@K is the sum over all predicates of the benchmark divided by their number;
* no graph constraint: every (row, predicate) pair scored obj_s * obj_o * dist[predicate], the
  first 100 by score (ties broken as OpenPSG's numpy calls break them), then the same matching.

Matching is vectorised: IoUs are computed once per (predicted object, ground-truth object) and
looked up per triplet, which gives the same booleans as OpenPSG's per-triplet loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pycocotools import mask as mask_utils

MatchBy = Literal["mask", "box"]
Missing = Literal["skip", "zero"]
#: OpenPSG keeps the first 100 (pair, predicate) scores for no-graph-constraint recall.
NGC_TOP = 100


@dataclass
class ImageTruth:
    """Ground truth of one image: objects and relations as indices (predicates 1-based)."""

    labels: np.ndarray  # (n_obj,) int class indices
    boxes: np.ndarray  # (n_obj, 4) xyxy
    rels: np.ndarray  # (n_rel, 3) int: subject index, object index, predicate (1-based)
    masks: list[dict] | None = None  # COCO RLE dicts (pycocotools form), one per object


@dataclass
class ImagePrediction:
    """Predictions of one image, rows already in rank order.

    ``predicates`` holds each row's graph-constrained predicate (1-based; -1 = outside the
    benchmark's vocabulary, never matches). ``dists`` (n_rows, n_predicates + 1) are the rows'
    predicate score distributions with the background column 0, as OpenPSG's ``rel_dists``;
    used only for no-graph-constraint recall.
    """

    labels: np.ndarray  # (n_obj,) int class indices; -1 = outside the benchmark's labels
    boxes: np.ndarray  # (n_obj, 4) xyxy
    pairs: np.ndarray  # (n_rows, 2) int
    predicates: np.ndarray  # (n_rows,) int
    dists: np.ndarray  # (n_rows, n_predicates + 1)
    object_scores: np.ndarray | None = None  # (n_obj,); 1.0 when absent
    masks: list[dict] | None = None


@dataclass
class SggScores:
    """What :func:`evaluate` measured; recall values are fractions (0..1)."""

    ks: list[int]
    num_predicates: int
    recall: dict[int, float]
    mean_recall: dict[int, float]
    ng_recall: dict[int, float]
    ng_mean_recall: dict[int, float]
    per_predicate: dict[int, list[float]]  # K -> recall of predicate 1..P (graph constraint)
    ng_per_predicate: dict[int, list[float]]
    images_evaluated: int
    images_without_gt: int
    images_without_prediction: int
    per_image: dict[int, list[float]] = field(
        default_factory=dict
    )  # K -> recall per evaluated image


def box_iou_mmdet(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """mmdet 2.x ``bbox_overlaps`` (mode iou): float32, area (x2-x1)(y2-y1), union >= 1e-6."""
    a = np.asarray(a, dtype=np.float32).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float32).reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    overlap = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - overlap
    union = np.maximum(union, np.float32(1e-6))
    return overlap / union


def mask_iou(a: list[dict], b: list[dict]) -> np.ndarray:
    """|A and B| / |A or B| of every pair (pycocotools on RLE, float64 like OpenPSG's count ratio)."""
    if not a or not b:
        return np.zeros((len(a), len(b)))
    return np.asarray(mask_utils.iou(a, b, [0] * len(b)), dtype=np.float64).reshape(len(a), len(b))


def match_matrix(
    gt: ImageTruth,
    pred: ImagePrediction,
    pairs: np.ndarray,
    predicates: np.ndarray,
    iou: np.ndarray,
    threshold: float,
) -> np.ndarray:
    """(n_rows, n_gt_rels) booleans: row i matches ground-truth triplet j (OpenPSG's pred_to_gt)."""
    s, o = pairs[:, 0], pairs[:, 1]
    gs, go, gp = gt.rels[:, 0], gt.rels[:, 1], gt.rels[:, 2]
    same = (
        (pred.labels[s][:, None] == gt.labels[gs][None, :])
        & (predicates[:, None] == gp[None, :])
        & (pred.labels[o][:, None] == gt.labels[go][None, :])
    )
    ok = iou >= threshold
    return same & ok[s][:, gs] & ok[o][:, go]


def _ngc_rows(pred: ImagePrediction) -> tuple[np.ndarray, np.ndarray]:
    """The first 100 (row, predicate) pairs by obj_s * obj_o * dist, with OpenPSG's numpy calls."""
    obj_scores = pred.object_scores if pred.object_scores is not None else np.ones(len(pred.labels))
    per_rel = obj_scores[pred.pairs].prod(1)
    overall = per_rel[:, None] * pred.dists[:, 1:]
    sorted_inds = np.argsort(overall, axis=-1)[:, ::-1]
    sorted_scores = np.sort(overall, axis=-1)[:, ::-1]
    # nogc_thres_num defaults to every predicate: the whole sorted row takes part.
    flat = np.argsort(-sorted_scores.ravel())
    rows, cols = np.unravel_index(flat, sorted_scores.shape)
    return rows, sorted_inds[rows, cols] + 1


def _recall_lists(
    match: np.ndarray,
    gt_preds: np.ndarray,
    ks: Sequence[int],
    num_predicates: int,
    recalls: dict[int, list[float]],
    collect: dict[int, list[list[float]]],
) -> None:
    n_gt = len(gt_preds)
    counts = np.bincount(gt_preds, minlength=num_predicates + 1)
    present = np.flatnonzero(counts[1:]) + 1
    for k in ks:
        hit = match[:k].any(0)
        recalls[k].append(float(hit.sum()) / float(n_gt))
        hits = np.bincount(gt_preds[hit], minlength=num_predicates + 1)
        for c in present:
            collect[k][c].append(float(hits[c] / counts[c]))


def _mean_recall(collect: list[list[float]], num_predicates: int) -> tuple[float, list[float]]:
    per = [float(np.mean(collect[c])) if collect[c] else 0.0 for c in range(1, num_predicates + 1)]
    total = 0.0
    for r in per:  # summed in predicate order, as OpenPSG does
        total += r
    return total / float(num_predicates), per


def object_iou(gt: ImageTruth, pred: ImagePrediction, match_by: MatchBy) -> np.ndarray:
    """IoU of every predicted object with every ground-truth object."""
    if match_by == "mask":
        if gt.masks is None or pred.masks is None:
            raise ValueError(
                "mask matching needs masks on both the ground truth and the predictions"
            )
        return mask_iou(pred.masks, gt.masks)
    return box_iou_mmdet(pred.boxes, gt.boxes).astype(np.float64)


def evaluate(
    pairs: Iterable[tuple[ImageTruth, ImagePrediction | None]],
    num_predicates: int,
    *,
    match_by: MatchBy = "mask",
    ks: Sequence[int] = (20, 50, 100),
    iou_threshold: float = 0.5,
    missing: Missing = "skip",
) -> SggScores:
    """R@K, mR@K, ng-R@K and ng-mR@K over (ground truth, prediction) pairs, in dataset order.

    ``missing='skip'`` is OpenPSG: an image with ground-truth relations but no prediction row is
    left out; ``'zero'`` counts it with recall 0 for every K and every predicate it holds.
    """
    ks = list(ks)
    recalls: dict[int, list[float]] = {k: [] for k in ks}
    ng_recalls: dict[int, list[float]] = {k: [] for k in ks}
    collect: dict[int, list[list[float]]] = {k: [[] for _ in range(num_predicates + 1)] for k in ks}
    ng_collect: dict[int, list[list[float]]] = {
        k: [[] for _ in range(num_predicates + 1)] for k in ks
    }
    without_gt = without_pred = 0
    for gt, pred in pairs:
        if len(gt.rels) == 0:
            without_gt += 1
            continue
        gt_preds = np.asarray(gt.rels[:, 2], dtype=np.int64)
        if pred is None or len(pred.pairs) == 0:
            without_pred += 1
            if missing == "zero":
                empty = np.zeros((0, len(gt_preds)), dtype=bool)
                _recall_lists(empty, gt_preds, ks, num_predicates, recalls, collect)
                _recall_lists(empty, gt_preds, ks, num_predicates, ng_recalls, ng_collect)
            continue
        iou = object_iou(gt, pred, match_by)
        match = match_matrix(gt, pred, pred.pairs, pred.predicates, iou, iou_threshold)
        _recall_lists(match, gt_preds, ks, num_predicates, recalls, collect)
        rows, preds = _ngc_rows(pred)
        rows, preds = rows[:NGC_TOP], preds[:NGC_TOP]
        ng_match = match_matrix(gt, pred, pred.pairs[rows], preds, iou, iou_threshold)
        _recall_lists(ng_match, gt_preds, ks, num_predicates, ng_recalls, ng_collect)
    mr, per = {}, {}
    ng_mr, ng_per = {}, {}
    for k in ks:
        mr[k], per[k] = _mean_recall(collect[k], num_predicates)
        ng_mr[k], ng_per[k] = _mean_recall(ng_collect[k], num_predicates)
    return SggScores(
        ks=ks,
        num_predicates=num_predicates,
        recall={k: float(np.mean(v)) if v else 0.0 for k, v in recalls.items()},
        mean_recall=mr,
        ng_recall={k: float(np.mean(v)) if v else 0.0 for k, v in ng_recalls.items()},
        ng_mean_recall=ng_mr,
        per_predicate=per,
        ng_per_predicate=ng_per,
        images_evaluated=len(recalls[ks[0]]) if ks else 0,
        images_without_gt=without_gt,
        images_without_prediction=without_pred,
        per_image={k: list(v) for k, v in recalls.items()},
    )
