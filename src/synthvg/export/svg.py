"""The released SVG dataset format: export a built dataset to it, import it into a dataset root.

A row per image: ``image_id``, ``metadata`` (struct ``width``, ``height``: ``metadata/width``
in the release's flattened naming), ``regions`` (list of ``{bbox: [x, y, w, h], segmentation:
COCO RLE {size, counts}, area}``), ``scene_graph`` (JSON string ``{"objects": [name, ...],
"relations": [[subject, object, predicate], ...]}``, ids 0-based, ``objects[i]`` is
``regions[i]``), plus ``file_name`` (the image file's name, so an import can find the image).
See docs/EDIT.md for which graph is exported and how an import is stored.
"""

from __future__ import annotations

import ast
import hashlib
import itertools
import json
import os
import posixpath
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from synthvg import masks
from synthvg.predicates import normalise
from synthvg.schemas import (
    Box,
    DescriptionRecord,
    ErrorRecord,
    ImageRecord,
    RegionRecord,
    RegionSource,
    RelationRecord,
    to_table,
)
from synthvg.schemas.records import relation_id
from synthvg.storage import Dataset, build_lock, connect, fetch_dicts
from synthvg.storage.dataset import utcnow

#: Graph stages in the order ``--stage auto`` tries them: the most refined graph first.
STAGES = ("edit", "robin", "teacher", "seed")
#: The ``model`` written for imported relations and names.
RELEASE_MODEL = "svg-release"
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


# ---- import ------------------------------------------------------------------------------------


@dataclass
class ImportReport:
    root: str
    images: int = 0
    regions: int = 0
    relations: int = 0
    errors: int = 0
    shards: int = 0


def read_svg_rows(paths: Iterable[str]) -> Iterator[dict]:
    """Rows of released or exported SVG Parquet files, with ``width``/``height`` read from a
    ``metadata`` struct or from flat ``metadata/width`` (or ``metadata.width``) columns."""
    for path in paths:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
            for row in batch.to_pylist():
                meta = row.get("metadata") or {}
                for key in ("width", "height"):
                    row[key] = meta.get(key, row.get(f"metadata/{key}", row.get(f"metadata.{key}")))
                row["_source"] = path
                yield row


def _scene_graph(value) -> dict:
    """The scene graph of a row: a JSON string (some releases hold Python reprs) or a mapping."""
    if isinstance(value, dict):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return ast.literal_eval(value)


@dataclass
class _Shard:
    images: list[ImageRecord] = field(default_factory=list)
    regions: list[RegionRecord] = field(default_factory=list)
    relations: list[RelationRecord] = field(default_factory=list)
    descriptions: list[DescriptionRecord] = field(default_factory=list)
    errors: list[ErrorRecord] = field(default_factory=list)


class _Importer:
    def __init__(self, run_id: str, images_dir: str | None):
        self.run_id = run_id
        self.images_dir = images_dir

    def error(
        self, shard: _Shard, kind: str, reason: str, image_id: str | None, source: str
    ) -> None:
        shard.errors.append(
            ErrorRecord(
                run_id=self.run_id,
                stage="import",
                image_id=image_id,
                source=source,
                kind=kind,
                reason=reason,
                created_at=utcnow(),
            )
        )

    def _file(self, name: str) -> tuple[str, str]:
        """(file_uri, sha256 of the file or '' when it is not at hand)."""
        if self.images_dir is None:
            return name, ""
        uri = os.path.join(self.images_dir, name)
        if not os.path.isfile(uri):
            return uri, ""
        with open(uri, "rb") as f:
            return uri, hashlib.sha256(f.read()).hexdigest()

    def add(self, row: dict, shard: _Shard) -> bool:
        raw_id, source = str(row["image_id"]), row["_source"]
        image_id = raw_id if ":" in raw_id else f"svg:{raw_id}"
        width, height = row["width"], row["height"]
        try:
            graph = _scene_graph(row["scene_graph"])
            objects, relations = list(graph["objects"]), list(graph.get("relations") or [])
        except (ValueError, SyntaxError, TypeError, KeyError) as e:
            self.error(
                shard,
                "svg_bad_scene_graph",
                f"{type(e).__name__}: {e}; image skipped",
                image_id,
                source,
            )
            return False
        if not isinstance(width, int) or not isinstance(height, int):
            self.error(
                shard,
                "svg_bad_metadata",
                "no integer metadata width/height; image skipped",
                image_id,
                source,
            )
            return False
        uri, digest = self._file(row.get("file_name") or raw_id)
        shard.images.append(
            ImageRecord(
                image_id=image_id,
                sources=["svg"],
                file_uri=uri,
                width=width,
                height=height,
                content_hash=digest,
            )
        )
        regions = row.get("regions") or []
        if len(objects) != len(regions):
            self.error(
                shard,
                "svg_objects_regions_mismatch",
                f"{len(objects)} objects but {len(regions)} regions; the extra ones are skipped",
                image_id,
                source,
            )
        for i, (obj, region) in enumerate(zip(objects, regions, strict=False)):
            name = str(obj.get("name", obj)) if isinstance(obj, dict) else str(obj)
            shard.regions.append(
                self._region(image_id, i, name, region, width, height, shard, source)
            )
            shard.descriptions.append(
                DescriptionRecord(
                    image_id=image_id,
                    region_id=i,
                    description=name,
                    stage="edit",
                    generator="model",
                    model=RELEASE_MODEL,
                    run_id=self.run_id,
                )
            )
        seen: set[tuple[int, int, str]] = set()
        n = min(len(objects), len(regions))
        for item in relations:
            try:
                s, o, raw = item
                ok = (
                    isinstance(s, int)
                    and isinstance(o, int)
                    and 0 <= s < n
                    and 0 <= o < n
                    and s != o
                    and normalise(str(raw))
                )
            except (TypeError, ValueError):
                ok = False
            if not ok:
                self.error(
                    shard,
                    "svg_bad_relation",
                    f"relation {item!r}: needs two different object ids below {n} and a predicate; skipped",
                    image_id,
                    source,
                )
                continue
            p = normalise(str(raw))
            if (s, o, p) in seen:
                continue
            seen.add((s, o, p))
            shard.relations.append(
                RelationRecord(
                    relation_id=relation_id(image_id, "edit", s, o, p),
                    image_id=image_id,
                    subject_id=s,
                    object_id=o,
                    predicate=p,
                    predicate_raw=str(raw),
                    category="other",
                    stage="edit",
                    generator="model",
                    model=RELEASE_MODEL,
                    run_id=self.run_id,
                )
            )
        return True

    def _region(self, image_id, i, name, region, width, height, shard, source) -> RegionRecord:
        x, y, w, h = (float(v) for v in region["bbox"])
        mask = None
        if region.get("segmentation"):
            try:
                mask = masks.segmentation_to_rle(region["segmentation"], height, width)
            except (ValueError, TypeError, KeyError) as e:
                self.error(
                    shard,
                    "bad_segmentation",
                    f"region {i}: {e}; kept with its box only",
                    image_id,
                    source,
                )
        box = Box(x1=x, y1=y, x2=x + w, y2=y + h)
        return RegionRecord(
            image_id=image_id,
            region_id=i,
            bbox=box,
            mask=mask,
            area=masks.area(mask) if mask is not None else float(region.get("area") or box.area),
            label=name,
            sources=[RegionSource(dataset="svg", annotation_id=str(i))],
        )


def import_svg(
    paths: list[str], root: str, *, images_dir: str | None = None, shard_size: int = 1000
) -> ImportReport:
    """Store SVG-format rows as a new dataset root: ``images`` and ``regions`` (the ``seeds``
    stage's shards) and the graph as ``stage='edit'`` relations and names (the ``edit``
    stage's), with ``model='svg-release'``, so SQL, ``svg_full`` and export work on it."""
    from synthvg.pipeline import PLAN_FILE, new_run_id
    from synthvg.stages.base import stable_hash

    for path in paths:  # before anything is written: a wrong file leaves no half-made root
        try:
            pq.read_schema(path)
        except (pa.ArrowInvalid, OSError) as e:
            raise ValueError(f"{path} is not a Parquet file ({e})") from None
    dataset = Dataset(root)
    dataset.init()
    if list(dataset.manifests()):
        raise FileExistsError(f"{root} already holds a dataset; import into a new folder")
    run_id = new_run_id()
    importer = _Importer(run_id, images_dir)
    report = ImportReport(root=root)
    plan: list[dict] = []
    seen: set[str] = set()
    with build_lock(dataset, run_id):
        shard = _Shard()
        for row in itertools.chain(read_svg_rows(paths), [None]):
            if row is not None and str(row["image_id"]) in seen:
                importer.error(
                    shard,
                    "svg_duplicate_image",
                    "image listed twice; the later row is skipped",
                    str(row["image_id"]),
                    row["_source"],
                )
            elif row is not None:
                seen.add(str(row["image_id"]))
                importer.add(row, shard)
            if len(shard.images) >= shard_size or (row is None and (shard.images or shard.errors)):
                _commit(dataset, len(plan), shard, run_id, stable_hash([run_id, len(plan)]))
                plan.append({"index": len(plan), "image_ids": [i.image_id for i in shard.images]})
                for name in ("images", "regions", "relations", "errors"):
                    setattr(report, name, getattr(report, name) + len(getattr(shard, name)))
                shard = _Shard()
        dataset.write_json(dataset.abspath(PLAN_FILE), {"shards": plan})
        from synthvg.storage.versions import compact

        compact(dataset)  # one commit-log file, not two per shard: opening the root stays fast
    report.shards = len(plan)
    return report


def _commit(dataset: Dataset, index: int, shard: _Shard, run_id: str, fp: str) -> None:
    started = utcnow()
    seeds = {
        "images": to_table(ImageRecord, shard.images),
        "regions": to_table(RegionRecord, shard.regions),
    }
    if shard.errors:
        seeds["errors"] = to_table(ErrorRecord, shard.errors)
    graph = {
        "relations": to_table(RelationRecord, shard.relations),
        "descriptions": to_table(DescriptionRecord, shard.descriptions),
    }
    for stage, tables in (("seeds", seeds), ("edit", graph)):
        dataset.commit_shard(
            stage,
            index,
            fp,
            tables,
            run_id=run_id,
            image_count=len(shard.images),
            started_at=started,
        )


__all__ = [
    "SVG_SCHEMA",
    "ExportReport",
    "ImportReport",
    "export_svg",
    "import_svg",
    "read_svg_rows",
]
