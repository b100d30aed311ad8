"""A small dataset for the explorer's tests, committed through the storage's own path: every
table the explorer shows has rows, and model/annotation strings carry HTML to escape."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
from helpers import TINYCOCO
from PIL import Image

from synthvg import masks
from synthvg.schemas import (
    Box,
    DescriptionRecord,
    EditRecord,
    ErrorRecord,
    GenerationRecord,
    ImageRecord,
    RegionRecord,
    RegionSource,
    RelationRecord,
    RelationVerdictRecord,
    to_table,
)
from synthvg.schemas.records import relation_id
from synthvg.storage import Dataset
from synthvg.storage.dataset import utcnow

XSS_PREDICATE = "<script>alert(1)</script>"
XSS_LABEL = '"><img src=x onerror=alert(1)>'
A, B, C = "coco:17627", "coco:37777", "coco:6818"  # A: everything; B: an error row; C: bare
FILES = {
    i: TINYCOCO / "images" / "train2017" / f"{int(i.split(':')[1]):012d}.jpg" for i in (A, B, C)
}
RUN = "20260101T000000Z-test00"


def _region(
    image_id: str, rid: int, label: str, box: tuple[int, int, int, int], hw
) -> RegionRecord:
    h, w = hw
    m = np.zeros((h, w), bool)
    x1, y1, x2, y2 = box
    m[y1:y2, x1:x2] = True
    m[y1 + (y2 - y1) // 2 :, x1 : x1 + (x2 - x1) // 3] = False  # not just a box
    rle = masks.encode(m)
    return RegionRecord(
        image_id=image_id,
        region_id=rid,
        bbox=Box(x1=x1, y1=y1, x2=x2, y2=y2),
        mask=rle,
        area=masks.area(rle),
        label=label,
        descriptions=[f"the {label}"],
        sources=[RegionSource(dataset="coco", annotation_id=str(100 + rid), category=label)],
    )


def _rel(
    image_id: str, stage: str, s: int, o: int, predicate: str, category="spatial"
) -> RelationRecord:
    return RelationRecord(
        relation_id=relation_id(image_id, stage, s, o, predicate),
        image_id=image_id,
        subject_id=s,
        object_id=o,
        predicate=predicate,
        predicate_raw=predicate.upper() if stage == "robin" else predicate,
        category=category,
        stage=stage,
        generator="human" if stage == "seed" else "model",
        model="human" if stage == "seed" else f"{stage}-model",
        run_id=RUN,
    )


def build_explorer_dataset(root: Path) -> Dataset:
    ds = Dataset(root)
    ds.init()
    sizes = {i: Image.open(f).size for i, f in FILES.items()}  # (w, h)
    hw = {i: (h, w) for i, (w, h) in sizes.items()}
    images = [
        ImageRecord(
            image_id=i,
            sources=["coco"],
            coco_id=int(i.split(":")[1]),
            file_uri=str(FILES[i]),
            width=sizes[i][0],
            height=sizes[i][1],
            split="train2017",
            content_hash="",
        )
        for i in (A, B, C)
    ]
    regions = [
        _region(A, 0, "person", (10, 10, 120, 200), hw[A]),
        _region(A, 1, XSS_LABEL, (100, 50, 260, 180), hw[A]),
        _region(A, 2, "dog", (200, 120, 320, 260), hw[A]),
        _region(B, 0, "cat", (5, 5, 90, 90), hw[B]),
    ]
    now = utcnow()

    def commit(stage: str, tables: dict, metrics=None) -> None:
        ds.commit_shard(
            stage,
            0,
            f"fp-{stage}",
            {k: to_table(type(v[0]), v) for k, v in tables.items()},
            run_id=RUN,
            image_count=3,
            started_at=now,
            metrics=metrics,
        )

    err = ErrorRecord(
        run_id=RUN,
        stage="seeds",
        shard=0,
        image_id=B,
        source="instances.json#annotation=7",
        kind="bad_annotation",
        reason="segmentation <img src=x onerror=alert(2)> is not a polygon",
        created_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    )
    commit(
        "seeds",
        {
            "images": images,
            "regions": regions,
            "relations": [_rel(A, "seed", 0, 1, "on")],
            "errors": [err],
        },
    )
    teacher = [
        _rel(A, "teacher", 0, 2, XSS_PREDICATE, "other"),
        _rel(A, "teacher", 1, 2, "left of"),
        _rel(B, "teacher", 0, 0, "near"),
    ]
    commit("teacher", {"relations": teacher})
    verdicts = [
        RelationVerdictRecord(
            relation_id=teacher[1].relation_id,
            image_id=A,
            verdict="dropped",
            verdict_reason="subject centre is 40 px right of the object's",
            verdict_score=-40.0,
            verified_by="rule:left_of",
            run_id=RUN,
        ),
        RelationVerdictRecord(
            relation_id=teacher[0].relation_id,
            image_id=A,
            verdict="kept",
            verdict_reason="verifier said yes to <b>this</b>",
            verdict_score=0.9,
            verified_by="vqa:test",
            run_id=RUN,
        ),
    ]
    commit("filters", {"relation_verdicts": verdicts})
    robin_text = f"region1 HOLDING region2\nregion3 {XSS_PREDICATE} region9"
    commit(
        "robin",
        {
            "relations": [_rel(A, "robin", 0, 1, "holding", "interactional")],
            "generations": [
                GenerationRecord(
                    image_id=A,
                    stage="robin",
                    turn="scene_graph",
                    region_ids=[0, 1, 2],
                    text=robin_text,
                    prompt_tokens=700,
                    new_tokens=20,
                    finished=True,
                    problems=["unknown region id region9 in: region3 <script>x</script> region9"],
                    model="robin-test",
                    prompt_version="robin/holistic@release-v1",
                    run_id=RUN,
                )
            ],
        },
    )
    commit(
        "edit",
        {
            "relations": [
                _rel(A, "edit", 0, 1, "holding", "interactional"),
                _rel(A, "edit", 2, 0, "next to"),
            ],
            "descriptions": [
                DescriptionRecord(
                    image_id=A,
                    region_id=r,
                    description=n,
                    stage="edit",
                    generator="model",
                    model="editor",
                    run_id=RUN,
                )
                for r, n in ((0, "man"), (1, "frisbee"), (2, "puppy"))
            ],
            "edits": [
                EditRecord(
                    image_id=A,
                    region_id=2,
                    action="rename",
                    old_name="dog",
                    new_name="puppy",
                    applied=True,
                    source="robin",
                    model="editor",
                    run_id=RUN,
                ),
                EditRecord(
                    image_id=A,
                    region_id=0,
                    action="add",
                    predicate=XSS_PREDICATE,
                    predicate_raw=XSS_PREDICATE,
                    object_id=2,
                    applied=False,
                    reason="already_present",
                    source="robin",
                    model="editor",
                    run_id=RUN,
                ),
            ],
        },
        metrics={"cost_usd": 0.0123},
    )
    return ds
