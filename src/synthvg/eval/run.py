"""``synthvg evaluate sgg``: read, map, score, write and print, as one plain function."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from synthvg.eval.inputs import (
    PRED_STAGES,
    BenchmarkName,
    EvalInputError,
    LabelSource,
    RankRule,
    load_ground_truth,
    read_prediction_file,
    read_stage,
    to_predictions,
)
from synthvg.eval.sgg import MatchBy, Missing, SggScores, evaluate
from synthvg.eval.vocab import EmbeddingUnavailable, LabelMapper, minilm_embedder

PRED_FILE_SUFFIXES = (".jsonl", ".parquet")


@dataclass
class PredSource:
    """Where predictions come from: a file, or a dataset root's stage."""

    path: str
    stage: str | None = None  # None: a prediction file

    def describe(self) -> str:
        return self.path if self.stage is None else f"{self.path}:{self.stage}"


def parse_pred(spec: str) -> PredSource:
    """``FILE``, ``ROOT`` or ``ROOT:stage`` (stage one of seed, teacher, robin, edit)."""
    if Path(spec).is_file() or Path(spec).suffix in PRED_FILE_SUFFIXES:
        return PredSource(spec)
    head, sep, tail = spec.rpartition(":")
    if sep and tail in PRED_STAGES:
        return PredSource(head, tail)
    return PredSource(spec, "auto")


def _auto_stage(root: str) -> str:
    from synthvg.storage import connect

    con = connect(root)
    try:
        have = {r[0] for r in con.execute("SELECT DISTINCT stage FROM relations").fetchall()}
    finally:
        con.close()
    for stage in ("edit", "robin", "teacher"):
        if stage in have:
            return stage
    raise EvalInputError(f"{root} has no predicted relations (no edit, robin or teacher rows)")


@dataclass
class SggReport:
    """Everything one evaluation produced, as written to results.json."""

    gt: str
    pred: str
    benchmark: str
    match: str
    ks: list[int]
    rank: str
    missing: str
    iou_threshold: float
    scores: SggScores
    counts: dict[str, int]
    mapping: list[dict]
    notes: list[str] = field(default_factory=list)
    unknown_images: list[str] = field(default_factory=list)
    seconds: float = 0.0
    predicate_names: list[str] = field(default_factory=list)


def evaluate_sgg(
    gt_root: str,
    pred: str | PredSource,
    *,
    match_by: MatchBy = "mask",
    ks: tuple[int, ...] = (20, 50, 100),
    benchmark: BenchmarkName = "auto",
    split: str | None = None,
    rank: RankRule = "auto",
    missing: Missing = "skip",
    embedding: bool = True,
    embedding_threshold: float = 0.6,
    iou_threshold: float = 0.5,
    include_dropped: bool = False,
    labels: LabelSource = "stage",
    allow_empty: bool = False,
) -> SggReport:
    """Score predictions against a ground-truth root with OpenPSG's protocol (docs/EVALUATION.md).

    ``allow_empty``: a source without any relation scores zero instead of being refused (a
    model that was run and said nothing; use with ``missing='zero'``).
    """
    t0 = time.perf_counter()
    source = parse_pred(pred) if isinstance(pred, str) else pred
    gt = load_ground_truth(gt_root, benchmark=benchmark, split=split, match_by=match_by)
    notes: list[str] = []
    embed = None
    if embedding:
        try:
            embed = minilm_embedder()
        except EmbeddingUnavailable as e:
            notes.append(str(e))
    objects = LabelMapper(gt.vocab.classes, "object", embed=embed, threshold=embedding_threshold)
    predicates = LabelMapper(
        gt.vocab.predicates, "predicate", embed=embed, threshold=embedding_threshold, index_base=1
    )
    coco_ids = None
    if source.stage is None:
        raw = read_prediction_file(source.path)
    else:
        stage = _auto_stage(source.path) if source.stage == "auto" else source.stage
        source = PredSource(source.path, stage)
        raw, coco_ids = read_stage(
            source.path, stage, include_dropped=include_dropped, labels=labels
        )
    if not allow_empty and (not raw or not any(img.rows for img in raw.values())):
        raise EvalInputError(f"{source.describe()} holds no predicted relations")
    preds = to_predictions(
        raw,
        gt,
        match_by=match_by,
        rank=rank,
        objects=objects,
        predicates=predicates,
        coco_ids=coco_ids,
    )
    if raw and len(preds.unknown_images) == len(raw):
        raise EvalInputError(
            f"none of the {len(raw)} predicted images is in the ground truth {gt_root} (ids such as {next(iter(raw))!r})"
        )
    scores = evaluate(
        ((t, preds.images.get(iid)) for iid, t in gt.images.items()),
        gt.vocab.num_predicates,
        match_by=match_by,
        ks=ks,
        iou_threshold=iou_threshold,
        missing=missing,
    )
    counts = Counter(gt.counts) + Counter(preds.counts)
    counts["images_evaluated"] = scores.images_evaluated
    counts["images_without_gt"] = scores.images_without_gt
    counts["images_without_prediction"] = scores.images_without_prediction
    return SggReport(
        gt=gt_root,
        pred=source.describe(),
        benchmark=gt.vocab.name,
        match=match_by,
        ks=list(ks),
        rank=next(
            (k.removeprefix("rank_rule_") for k in counts if k.startswith("rank_rule_")), rank
        ),
        missing=missing,
        iou_threshold=iou_threshold,
        scores=scores,
        counts={k: int(v) for k, v in sorted(counts.items()) if not k.startswith("rank_rule_")},
        mapping=objects.records() + predicates.records(),
        notes=notes,
        unknown_images=preds.unknown_images[:100],
        seconds=time.perf_counter() - t0,
        predicate_names=list(gt.vocab.predicates),
    )


def default_out(source: PredSource) -> Path:
    """``<pred root>/eval/sgg-<stage>/``, or ``<file folder>/eval/<file stem>/``."""
    if source.stage is None:
        return Path(source.path).parent / "eval" / Path(source.path).stem
    return Path(source.path) / "eval" / f"sgg-{source.stage}"


def write_results(report: SggReport, out: str | Path) -> list[Path]:
    """results.json (metrics, counts, settings, mapping), per_predicate.parquet, mapping.parquet."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    s = report.scores
    data = asdict(report)
    data["scores"] = {
        "recall": s.recall,
        "mean_recall": s.mean_recall,
        "ng_recall": s.ng_recall,
        "ng_mean_recall": s.ng_mean_recall,
        "images_evaluated": s.images_evaluated,
        "num_predicates": s.num_predicates,
    }
    files = [out / "results.json", out / "per_predicate.parquet", out / "mapping.parquet"]
    files[0].write_text(json.dumps(data, indent=2, default=str))
    rows = [
        {
            "predicate": name,
            "k": k,
            "recall": s.per_predicate[k][i],
            "ng_recall": s.ng_per_predicate[k][i],
        }
        for k in s.ks
        for i, name in enumerate(report.predicate_names)
    ]
    pq.write_table(
        pa.Table.from_pylist(
            rows,
            schema=pa.schema(
                [
                    ("predicate", pa.string()),
                    ("k", pa.int64()),
                    ("recall", pa.float64()),
                    ("ng_recall", pa.float64()),
                ]
            ),
        ),
        files[1],
    )
    pq.write_table(
        pa.Table.from_pylist(
            report.mapping,
            schema=pa.schema(
                [
                    ("kind", pa.string()),
                    ("text", pa.string()),
                    ("label", pa.string()),
                    ("method", pa.string()),
                    ("similarity", pa.float64()),
                ]
            ),
        ),
        files[2],
    )
    return files


def format_table(report: SggReport) -> str:
    """The metrics as a labelled table (percent, two decimals), then what was counted."""
    s = report.scores
    head = f"{'metric':<8}" + "".join(f"{'@' + str(k):>9}" for k in s.ks)
    lines = [
        f"scene-graph generation: {report.pred} against {report.gt}",
        f"benchmark {report.benchmark} ({s.num_predicates} predicates), match {report.match} IoU >= {report.iou_threshold:g}, "
        f"rank {report.rank}, images without predictions: {report.missing}",
        "",
        head,
    ]
    for name, values in (
        ("R", s.recall),
        ("mR", s.mean_recall),
        ("ng-R", s.ng_recall),
        ("ng-mR", s.ng_mean_recall),
    ):
        lines.append(f"{name:<8}" + "".join(f"{100 * values[k]:>9.2f}" for k in s.ks))
    lines.append("")
    lines.append(
        "counted: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in report.counts.items() if v)
    )
    methods = Counter((m["kind"], m["method"]) for m in report.mapping)
    if methods:
        lines.append(
            "labels read: "
            + ", ".join(f"{kind} {method} {n}" for (kind, method), n in sorted(methods.items()))
        )
    if not s.images_evaluated:
        lines.append(
            "no image was evaluated: every image lacked ground-truth relations or usable predictions (see the counts)"
        )
    lines.extend(report.notes)
    return "\n".join(lines)
