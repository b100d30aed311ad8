"""The released SVG dataset format: export a built dataset to it, import it into a dataset root.

A row per image: ``image_id``, ``metadata`` (struct ``width``, ``height``: ``metadata/width``
in the release's flattened naming), ``regions`` (list of ``{bbox: [x, y, w, h], segmentation:
COCO RLE {size, counts}, area}``), ``scene_graph`` (JSON string ``{"objects": [name, ...],
"relations": [[subject, object, predicate], ...]}``, ids 0-based, ``objects[i]`` is
``regions[i]``), plus ``file_name`` (the image file's name, so an import can find the image).
See docs/EDIT.md for which graph is exported and how an import is stored.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from synthvg.export.svg_import import RELEASE_MODEL, ImportReport, import_svg, read_svg_rows
from synthvg.storage import Dataset, connect, fetch_dicts

#: Graph stages in the order ``--stage auto`` tries them: the most refined graph first.
STAGES = ("edit", "robin", "teacher", "seed")
BOX_DECIMALS = 3

SEGMENTATION = pa.struct([("size", pa.list_(pa.int64())), ("counts", pa.string())])
SVG_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("file_name", pa.string()),
        ("metadata", pa.struct([("width", pa.int64()), ("height", pa.int64())])),
        (
            "regions",
            pa.list_(
                pa.struct(
                    [
                        ("bbox", pa.list_(pa.float64())),
                        ("segmentation", SEGMENTATION),
                        ("area", pa.float64()),
                    ]
                )
            ),
        ),
        ("scene_graph", pa.string()),
    ]
)


@dataclass
class ExportReport:
    stage: str
    images: int = 0
    relations: int = 0
    files: list[str] = field(default_factory=list)


# ---- export ------------------------------------------------------------------------------------


def pick_stage(con, stage: str) -> str:
    """``stage`` itself, or for ``auto`` the first of :data:`STAGES` that wrote relations."""
    if stage != "auto":
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}: choose auto or one of {', '.join(STAGES)}")
        return stage
    written = {r["stage"] for r in fetch_dicts(con, "SELECT DISTINCT stage FROM relations")}
    return next((s for s in STAGES if s in written), "seed")


def _require_relations(con, root: str, asked: str, stage: str) -> None:
    """A graph stage named by the user that wrote nothing is a mistake to report, not an export
    of bare objects (seed graphs are exempt: COCO-like annotations carry objects only)."""
    if asked == "auto" or stage == "seed":
        return
    if not con.execute("SELECT count(*) FROM relations WHERE stage = ?", [stage]).fetchall()[0][0]:
        written = [
            r[0] for r in con.execute("SELECT DISTINCT stage FROM relations ORDER BY 1").fetchall()
        ]
        raise ValueError(
            f"no {stage} relations in {root} (relations come from: {', '.join(written) or 'no stage'}); nothing written"
        )


def _xywh(bbox: dict) -> list[float]:
    x, y = round(bbox["x1"], BOX_DECIMALS), round(bbox["y1"], BOX_DECIMALS)
    return [x, y, round(bbox["x2"] - x, BOX_DECIMALS), round(bbox["y2"] - y, BOX_DECIMALS)]


def _rows(con, image_ids: list[str], stage: str) -> Iterator[dict]:
    """Export rows of ``image_ids`` (images with no object in the graph are left out)."""
    con.register("_chunk", pa.table({"image_id": image_ids}))
    where = "image_id IN (SELECT image_id FROM _chunk)"
    names = {
        (r["image_id"], r["region_id"]): r["description"]
        for r in fetch_dicts(
            con,
            f"SELECT image_id, region_id, first(description ORDER BY description) AS description FROM descriptions "
            f"WHERE stage = ? AND {where} GROUP BY ALL",
            [stage],
        )
    }
    regions: dict[str, list[dict]] = {}
    for r in fetch_dicts(
        con,
        f"SELECT image_id, region_id, bbox, mask, area, label FROM regions WHERE {where} ORDER BY image_id, region_id",
    ):
        # the editor's graph has exactly the objects it named (a merged duplicate has no name)
        if stage != "edit" or (r["image_id"], r["region_id"]) in names:
            regions.setdefault(r["image_id"], []).append(r)
    relations: dict[str, list[dict]] = {}
    for r in fetch_dicts(
        con,
        f"SELECT image_id, subject_id, object_id, predicate FROM relations WHERE stage = ? AND verdict <> 'dropped' AND {where} "
        "ORDER BY image_id, subject_id, object_id, predicate",
        [stage],
    ):
        relations.setdefault(r["image_id"], []).append(r)
    for image in fetch_dicts(
        con, f"SELECT image_id, file_uri, width, height FROM images WHERE {where} ORDER BY image_id"
    ):
        image_id = image["image_id"]
        objects = regions.get(image_id, [])
        if not objects:
            continue
        index = {r["region_id"]: i for i, r in enumerate(objects)}
        triples = [
            [index[r["subject_id"]], index[r["object_id"]], r["predicate"]]
            for r in relations.get(image_id, [])
            if r["subject_id"] in index and r["object_id"] in index
        ]
        graph = {
            "objects": [
                names.get((image_id, r["region_id"])) or r["label"] or "object" for r in objects
            ],
            "relations": triples,
        }
        yield {
            "image_id": image_id,
            "file_name": posixpath.basename(image["file_uri"]),
            "metadata": {"width": image["width"], "height": image["height"]},
            "regions": [
                {"bbox": _xywh(r["bbox"]), "segmentation": r["mask"], "area": r["area"]}
                for r in objects
            ],
            "scene_graph": json.dumps(graph, ensure_ascii=False),
        }


def export_svg(
    root: str | Dataset, out: str | os.PathLike, *, stage: str = "auto", images_per_file: int = 1000
) -> ExportReport:
    """Write ``root``'s graphs as ``out/part-NNNNN.parquet`` (older part files there are replaced).

    ``stage``: whose graph (``edit`` = SVG-FULL, ``robin``, ``teacher``, ``seed``), or ``auto``:
    the first of them that wrote relations. ``root`` may be a :class:`Dataset` read as of a version.
    """
    con = connect(root)
    try:
        report = ExportReport(stage=pick_stage(con, stage))
        _require_relations(
            con, root.url if isinstance(root, Dataset) else root, stage, report.stage
        )
        ids = [r[0] for r in con.sql("SELECT image_id FROM images ORDER BY image_id").fetchall()]
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("part-*.parquet"):
            old.unlink()
        for k in range(0, len(ids), images_per_file):
            rows = list(_rows(con, ids[k : k + images_per_file], report.stage))
            if not rows:
                continue
            path = out / f"part-{len(report.files):05d}.parquet"
            pq.write_table(pa.Table.from_pylist(rows, schema=SVG_SCHEMA), path, compression="zstd")
            report.files.append(str(path))
            report.images += len(rows)
            report.relations += sum(len(json.loads(r["scene_graph"])["relations"]) for r in rows)
    finally:
        con.close()
    return report


__all__ = [
    "RELEASE_MODEL",
    "SVG_SCHEMA",
    "ExportReport",
    "ImportReport",
    "export_svg",
    "import_svg",
    "read_svg_rows",
]
