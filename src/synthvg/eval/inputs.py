"""Ground truth from a dataset root, predictions from a root's stage or a prediction file.

Both end up as per-image :class:`~synthvg.eval.sgg.ImageTruth` / ``ImagePrediction`` over one
:class:`~synthvg.eval.vocab.Vocabulary`; whatever could not be used is counted, never dropped
silently. Prediction file format (docs/EVALUATION.md): one row per image, JSONL or Parquet, with
``image_id``, ``boxes`` ([x1, y1, x2, y2] per object), ``labels``, optional ``masks`` (COCO RLE
``{size, counts}``), optional ``object_scores``, and per relation row ``subjects``, ``objects``
(0-based object indices), ``predicates`` and optional ``scores``.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, overload

import numpy as np

from synthvg.eval.sgg import ImagePrediction, ImageTruth, MatchBy
from synthvg.eval.vocab import LabelMapper, Vocabulary, from_ground_truth, psg, vg150
from synthvg.storage import connect, fetch_dicts

RankRule = Literal["auto", "order", "score"]
LabelSource = Literal["stage", "region"]
BenchmarkName = Literal["auto", "psg", "vg150", "ground-truth"]
PRED_STAGES = ("seed", "teacher", "robin", "edit")


class EvalInputError(ValueError):
    """Input the evaluation cannot use at all (one line, for the command line)."""


@dataclass
class GroundTruth:
    vocab: Vocabulary
    images: dict[str, ImageTruth]  # in dataset order
    sizes: dict[str, tuple[int, int]]  # image_id -> (height, width)
    coco_ids: dict[int, str]  # coco id -> image_id, to join roots built from other sources
    counts: Counter = field(default_factory=Counter)


@dataclass
class Predictions:
    images: dict[str, ImagePrediction]
    counts: Counter = field(default_factory=Counter)
    unknown_images: list[str] = field(default_factory=list)


@overload
def _rle(mask: dict) -> dict: ...
@overload
def _rle(mask: None) -> None: ...
def _rle(mask: dict | None) -> dict | None:
    if mask is None:
        return None
    counts = mask["counts"]
    return {
        "size": [int(v) for v in mask["size"]],
        "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
    }


def _box(b: dict | None) -> list[float]:
    return [0.0, 0.0, 0.0, 0.0] if b is None else [b["x1"], b["y1"], b["x2"], b["y2"]]


def _pick_vocab(name: BenchmarkName, con) -> Vocabulary:
    labels = [
        r[0]
        for r in con.execute(
            "SELECT DISTINCT label FROM regions WHERE label IS NOT NULL"
        ).fetchall()
    ]
    preds = [
        r[0]
        for r in con.execute(
            "SELECT DISTINCT coalesce(predicate_raw, predicate) FROM relations WHERE stage = 'seed'"
        ).fetchall()
    ]
    if name == "auto":
        datasets = {
            r[0]
            for r in con.execute(
                "SELECT DISTINCT s.dataset FROM (SELECT unnest(sources) AS s FROM regions)"
            ).fetchall()
        }
        name = (
            "psg" if "psg" in datasets else "vg150" if {"vg", "gqa"} & datasets else "ground-truth"
        )
    if name == "psg":
        return psg()
    if name == "vg150":
        return vg150(sorted(set(labels)))
    return from_ground_truth(labels, preds)


def load_ground_truth(
    root: str,
    *,
    benchmark: BenchmarkName = "auto",
    split: str | None = None,
    match_by: MatchBy = "mask",
) -> GroundTruth:
    """The seed relations and regions of an ingested PSG / VG root, mapped to the benchmark's labels.

    ``split`` keeps the images that have a region annotated in that source split (PSG ``test``).
    """
    con = connect(root)
    try:
        n_rel = fetch_dicts(con, "SELECT count(*) AS n FROM relations WHERE stage = 'seed'")[0]["n"]
        if n_rel == 0:
            raise EvalInputError(
                f"{root} has no ground-truth relations (no seed relations: ingest PSG or VG with `synthvg ingest`)"
            )
        vocab = _pick_vocab(benchmark, con)
        images = fetch_dicts(con, "SELECT image_id, width, height, coco_id FROM images")
        if split is not None:
            keep = {
                r[0]
                for r in con.execute(
                    "SELECT DISTINCT image_id FROM (SELECT image_id, unnest(sources) AS s FROM regions) WHERE s.split = ?",
                    [split],
                ).fetchall()
            }
            images = [i for i in images if i["image_id"] in keep]
            if not images:
                raise EvalInputError(f"{root} has no image with a region of split {split!r}")
        regions = defaultdict(list)
        for r in fetch_dicts(
            con,
            "SELECT image_id, region_id, bbox, mask, label FROM regions ORDER BY image_id, region_id",
        ):
            regions[r["image_id"]].append(r)
        rels = defaultdict(list)
        for r in fetch_dicts(
            con,
            "SELECT image_id, subject_id, object_id, coalesce(predicate_raw, predicate) AS p "
            "FROM relations WHERE stage = 'seed'",
        ):
            rels[r["image_id"]].append(r)
    finally:
        con.close()
    objects = LabelMapper(vocab.classes, "object")
    predicates = LabelMapper(vocab.predicates, "predicate", index_base=1)
    counts: Counter = Counter()
    out: dict[str, ImageTruth] = {}
    with_mask = 0
    for img in images:
        iid = img["image_id"]
        regs = regions.get(iid, [])
        index = {r["region_id"]: i for i, r in enumerate(regs)}
        triplets: list[tuple[int, int, int]] = []
        for rel in rels.get(iid, []):
            s, o, p = (
                index.get(rel["subject_id"]),
                index.get(rel["object_id"]),
                predicates(rel["p"]),
            )
            if s is None or o is None:
                counts["gt_relations_dangling"] += 1
            elif p < 0 or objects(regs[s]["label"]) < 0 or objects(regs[o]["label"]) < 0:
                counts["gt_relations_outside_vocabulary"] += 1
            elif (s, o, p) not in triplets:  # test-time dedup of identical (s, o, p)
                triplets.append((s, o, p))
        if not triplets:
            counts["gt_images_without_relations"] += 1
        masks = None
        if match_by == "mask" and triplets:
            found = [_rle(r["mask"]) for r in regs]
            with_mask += sum(m is not None for m in found)
            counts["gt_regions_without_mask"] += sum(m is None for m in found)
            masks = [m if m is not None else _empty_rle(img["height"], img["width"]) for m in found]
        out[iid] = ImageTruth(
            labels=np.array([objects(r["label"]) for r in regs], dtype=np.int64),
            boxes=np.array([_box(r["bbox"]) for r in regs], dtype=np.float64).reshape(-1, 4),
            rels=np.array(triplets, dtype=np.int64).reshape(-1, 3),
            masks=masks,
        )
    if match_by == "mask" and with_mask == 0:
        raise EvalInputError(
            f"{root}: the ground truth's regions have no masks (VG, GQA): use --match box"
        )
    counts["gt_images"] = len(out)
    counts["gt_relations"] = sum(len(t.rels) for t in out.values())
    coco_ids = {int(i["coco_id"]): i["image_id"] for i in images if i["coco_id"] is not None}
    sizes = {i["image_id"]: (int(i["height"]), int(i["width"])) for i in images}
    return GroundTruth(vocab, out, sizes, coco_ids, counts)


def _mask_at(mask: dict | None, h: int, w: int) -> dict:
    """A prediction's mask as a compressed RLE (uncompressed ``counts`` lists are accepted), checked to decode."""
    from pycocotools import mask as mask_utils

    if mask is None:
        return _empty_rle(h, w)
    if isinstance(mask["counts"], list):
        runs = np.asarray(mask["counts"], dtype=np.int64)
        rle = None
    else:
        rle = _rle(mask)
        runs = rle_runs(rle["counts"])
    # pycocotools loops forever on counts that do not cover the image exactly: check first
    if (runs < 0).any() or int(runs.sum()) != h * w:
        raise ValueError("RLE counts do not cover the image")
    return rle if rle is not None else mask_utils.frPyObjects(dict(mask), h, w)


def rle_runs(counts: bytes) -> np.ndarray:
    """The run lengths of a compressed COCO RLE string (pycocotools' rleFrString, vectorised).

    Each value is 5-bit groups (little end first) in chars offset by 48, bit 0x20 = more follows,
    bit 0x10 of the last group = negative; from the fourth value on, values are deltas to the
    value two before.
    """
    c = np.frombuffer(counts, dtype=np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return c
    if (c < 0).any() or (c > 63).any():
        raise ValueError("not a compressed RLE string")
    ends = np.flatnonzero((c & 0x20) == 0)
    if ends.size == 0 or ends[-1] != c.size - 1:
        raise ValueError("compressed RLE string is cut short")
    starts = np.r_[0, ends[:-1] + 1]
    lengths = ends - starts + 1
    if lengths.max() > 12:
        raise ValueError("compressed RLE value too long")
    k = np.arange(c.size) - np.repeat(starts, lengths)
    values = np.add.reduceat((c & 0x1F) << (5 * k), starts)
    values = np.where((c[ends] & 0x10) != 0, values | (-1 << (5 * lengths)), values)
    runs = values.copy()
    runs[1::2] = np.cumsum(values[1::2])
    runs[2::2] = np.cumsum(values[2::2])
    return runs


def _empty_rle(h: int, w: int) -> dict:
    from pycocotools import mask as mask_utils

    return mask_utils.encode(np.zeros((h, w), dtype=np.uint8, order="F"))


@dataclass
class RawImage:
    """One image's predictions before mapping: objects and relation rows in generation order."""

    boxes: list[list[float]]
    labels: list[str | None]
    masks: list[dict | None] | None
    object_scores: list[float] | None
    rows: list[tuple[int, int, str, float | None]]  # subject, object, predicate, score


def read_stage(
    root: str, stage: str, *, include_dropped: bool = False, labels: LabelSource = "stage"
) -> tuple[dict[str, RawImage], dict[str, int]]:
    """A root stage's relations (generation order = row order in its shards) and their regions.

    An object's label is the stage's own description of the region when it wrote one, else the
    region's label (``labels='region'``: always the region's label). Returns the images and each
    image's COCO id (to join other roots).
    """
    if stage not in PRED_STAGES:
        raise EvalInputError(f"unknown stage {stage!r}: one of {', '.join(PRED_STAGES)}")
    con = connect(root)
    try:
        sql = "SELECT image_id, subject_id, object_id, coalesce(predicate_raw, predicate) AS p, score FROM relations WHERE stage = ?"
        rows = fetch_dicts(
            con, sql + ("" if include_dropped else " AND verdict <> 'dropped'"), [stage]
        )
        names = (
            {}
            if labels == "region"
            else {
                (r["image_id"], r["region_id"]): r["description"]
                for r in fetch_dicts(
                    con,
                    "SELECT image_id, region_id, description FROM descriptions WHERE stage = ?",
                    [stage],
                )
            }
        )
        wanted = sorted({r["image_id"] for r in rows})
        regions = {
            (r["image_id"], r["region_id"]): r
            for r in fetch_dicts(
                con,
                "SELECT image_id, region_id, bbox, mask, label FROM regions WHERE list_contains(?, image_id)",
                [wanted],
            )
        }
        coco = {
            r["image_id"]: r["coco_id"]
            for r in fetch_dicts(
                con,
                "SELECT image_id, coco_id FROM images WHERE list_contains(?, image_id)",
                [wanted],
            )
        }
    finally:
        con.close()
    by_image: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_image[r["image_id"]].append(r)
    out: dict[str, RawImage] = {}
    for iid, rels in by_image.items():
        ids: dict[int, int] = {}
        masks: list[dict | None] = []
        img = RawImage([], [], masks, None, [])
        for rel in rels:
            ends = []
            for rid in (rel["subject_id"], rel["object_id"]):
                if rid not in ids:
                    reg = regions.get((iid, rid))
                    ids[rid] = len(img.boxes)
                    img.boxes.append(_box(reg["bbox"] if reg else None))
                    img.labels.append(names.get((iid, rid)) or (reg["label"] if reg else None))
                    masks.append(_rle(reg["mask"]) if reg else None)
                ends.append(ids[rid])
            img.rows.append((ends[0], ends[1], rel["p"], rel["score"]))
        out[iid] = img
    return out, {k: int(v) for k, v in coco.items() if v is not None}


def read_prediction_file(path: str) -> dict[str, RawImage]:
    """A JSONL or Parquet prediction file (format in the module doc), keyed by its image ids."""
    p = Path(path)
    if not p.is_file():
        raise EvalInputError(f"prediction file not found: {path}")
    try:
        if p.suffix == ".parquet":
            import pyarrow.parquet as pq

            records = pq.read_table(p).to_pylist()
        else:
            records = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as e:
        raise EvalInputError(
            f"cannot read prediction file {path}: {str(e).splitlines()[0]}"
        ) from None
    out: dict[str, RawImage] = {}
    for n, rec in enumerate(records, 1):
        if not isinstance(rec, dict) or "image_id" not in rec:
            raise EvalInputError(
                f"{path}: row {n} has no image_id (see docs/EVALUATION.md for the format)"
            )
        subjects, objects, preds = (
            rec.get("subjects") or [],
            rec.get("objects") or [],
            rec.get("predicates") or [],
        )
        scores = rec.get("scores")
        if not (len(subjects) == len(objects) == len(preds)) or (
            scores is not None and len(scores) != len(preds)
        ):
            raise EvalInputError(
                f"{path}: row {n} (image {rec['image_id']}): subjects, objects, predicates and scores differ in length"
            )
        out[str(rec["image_id"])] = RawImage(
            boxes=[list(map(float, b)) for b in rec.get("boxes") or []],
            labels=list(rec.get("labels") or []),
            masks=rec.get("masks"),
            object_scores=rec.get("object_scores"),
            rows=[
                (
                    int(s),
                    int(o),
                    str(q),
                    None if scores is None or scores[i] is None else float(scores[i]),
                )
                for i, (s, o, q) in enumerate(zip(subjects, objects, preds, strict=True))
            ],
        )
    return out


def resolve_image(given: str, gt: GroundTruth, coco_id: int | None = None) -> str | None:
    """The ground-truth image a prediction's id names: the same id, the same native id, or the same COCO id."""
    if given in gt.images:
        return given
    native = given.split(":", 1)[-1]
    same = [i for i in gt.images if i.split(":", 1)[-1] == native]
    if len(same) == 1:
        return same[0]
    if coco_id is None and native.isdigit():
        coco_id = int(native)
    return gt.coco_ids.get(coco_id) if coco_id is not None else None


def to_predictions(
    raw: dict[str, RawImage],
    gt: GroundTruth,
    *,
    match_by: MatchBy,
    rank: RankRule = "auto",
    objects: LabelMapper,
    predicates: LabelMapper,
    coco_ids: dict[str, int] | None = None,
) -> Predictions:
    """Map, rank and check every image's predictions against the ground truth."""
    counts: Counter = Counter()
    out: dict[str, ImagePrediction] = {}
    unknown: list[str] = []
    n_pred = gt.vocab.num_predicates
    all_scored = all(s is not None for img in raw.values() for *_, s in img.rows)
    rule = ("score" if all_scored else "order") if rank == "auto" else rank
    if rule == "score" and not all_scored:
        raise EvalInputError("--rank score needs a score on every prediction row; use --rank order")
    counts[f"rank_rule_{rule}"] = 1
    for given, img in raw.items():
        iid = resolve_image(given, gt, (coco_ids or {}).get(given))
        if iid is None:
            unknown.append(given)
            counts["pred_images_unknown"] += 1
            counts["pred_rows_of_unknown_images"] += len(img.rows)
            continue
        if iid in out:
            counts["pred_images_duplicate"] += 1
            continue
        n_obj = len(img.boxes)
        if (
            len(img.labels) != n_obj
            or (img.masks is not None and len(img.masks) != n_obj)
            or (img.object_scores is not None and len(img.object_scores) != n_obj)
            or any(len(b) != 4 for b in img.boxes)
        ):
            counts["pred_images_bad_objects"] += 1
            continue
        masks = None
        if match_by == "mask":
            if img.masks is None:
                raise EvalInputError(
                    f"predictions for {given} have no masks: use --match box, or give masks"
                )
            h, w = gt.sizes[iid]
            if any(m is not None and [int(v) for v in m["size"]] != [h, w] for m in img.masks):
                counts["pred_images_mask_size_mismatch"] += 1
                continue
            counts["pred_objects_without_mask"] += sum(m is None for m in img.masks)
            try:
                masks = [_mask_at(m, h, w) for m in img.masks]
            except (TypeError, ValueError, KeyError):
                counts["pred_images_bad_masks"] += 1
                continue
        rows = [r for r in img.rows if 0 <= r[0] < n_obj and 0 <= r[1] < n_obj]
        counts["pred_rows_bad_index"] += len(img.rows) - len(rows)
        if rule == "score":
            rows = sorted(rows, key=lambda r: -(r[3] or 0.0))  # stable: ties keep generation order
        labels = np.array([objects(lb) for lb in img.labels], dtype=np.int64)
        counts["pred_objects_unmapped"] += int((labels < 0).sum())
        preds = np.array([predicates(r[2]) for r in rows], dtype=np.int64)
        counts["pred_rows_unmapped_predicate"] += int((preds < 0).sum())
        counts["pred_rows"] += len(rows)
        n = len(rows)
        score = (
            np.array([r[3] for r in rows], dtype=np.float64)
            if rule == "score"
            else 1.0 - np.arange(n) / max(n, 1)
        )
        dists = np.zeros((n, n_pred + 1))
        ok = preds > 0
        dists[np.flatnonzero(ok), preds[ok]] = score[ok]
        out[iid] = ImagePrediction(
            labels=labels,
            boxes=np.array(img.boxes, dtype=np.float64).reshape(-1, 4),
            pairs=np.array([(r[0], r[1]) for r in rows], dtype=np.int64).reshape(-1, 2),
            predicates=preds,
            dists=dists,
            object_scores=np.array(img.object_scores, dtype=np.float64)
            if img.object_scores is not None
            else None,
            masks=masks,
        )
    counts["pred_images"] = len(out)
    return Predictions(out, counts, unknown)
