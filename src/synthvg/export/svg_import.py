"""``synthvg import``: SVG-format Parquet files (see :mod:`synthvg.export.svg`) into a new root.

Two paths write the same rows. The vectorised one reads each file in batches of
:data:`BATCH_ROWS` rows with pyarrow, one batch ahead on a thread of its own, where it parses
each scene graph once in Python (``orjson``: the strict reading ``json.loads`` agrees with);
DuckDB gets the graphs as plain JSON and, in one query over all its threads, unnests the
relation items and classifies them (each distinct raw predicate is normalised once in Python
and looked up with Arrow), then hashes the relation ids on every thread; regions are flattened
and checked with pyarrow (masks stay in Arrow), mask areas come from batched pycocotools calls,
repeated triples are dropped with one numpy sort, the tables are built as Arrow columns
(:func:`synthvg.schemas.table_from_columns`), no record per row. The per-row path
(:class:`_Importer`, pydantic records) takes the rows whose output the vectorised path could
not reproduce exactly: a scene graph that is no JSON object of string names and a relation
list (Python-literal graphs are turned into JSON when that keeps their meaning), booleans as
ids or non-string predicates, regions without a 4-number box, odd segmentations, and whole
files whose columns have other types (polygon or uncompressed-RLE segmentations, a
``scene_graph`` struct). The faults the vectorised path finds are described by the same
messages (one function each) and segmentation faults by the same code the per-row path runs.

A row's outputs (image, regions, names, relations, errors) go to the shard it would reach in
a row-by-row import: row ``r`` belongs to shard ``(usable images before r) // shard_size``, and
each shard's rows are written in input order. A full shard is committed on a thread of its own
while the next batches are flattened (:class:`_Writer`).
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import os
import queue
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel

from synthvg import masks
from synthvg.predicates import normalise
from synthvg.runs import PLAN_FILE, new_run_id, stable_hash
from synthvg.schemas import (
    Box,
    DescriptionRecord,
    ErrorRecord,
    ImageRecord,
    RegionRecord,
    RegionSource,
    RelationRecord,
    schema_of,
    table_from_columns,
    to_table,
)
from synthvg.schemas.records import relation_id
from synthvg.storage import Dataset, build_lock
from synthvg.storage.dataset import utcnow

#: The ``model`` written for imported relations and names.
RELEASE_MODEL = "svg-release"
#: Rows read and flattened at a time (memory stays bounded whatever the files hold).
BATCH_ROWS = 5000
#: Images per shard when the caller names none: each (shard, stage) commit costs ~0.1-0.3 s of
#: Delta transaction and fsyncs, so an import of released data wants few, large shards.
DEFAULT_SHARD_SIZE = 10_000

_TABLES: dict[str, type[BaseModel]] = {
    "images": ImageRecord,
    "regions": RegionRecord,
    "relations": RelationRecord,
    "descriptions": DescriptionRecord,
    "errors": ErrorRecord,
}
_ORDER = [("_idx", "ascending"), ("_seq", "ascending")]
T = TypeVar("T")
#: A relation item's status in the vectorised path: kept, rejected (an error), or sending its
#: row the per-row way.
_OK, _BAD, _ODD = 0, 1, 2
#: ``_seq`` of a bad relation's error: after the row's region errors, in relation order.
_RELATION_SEQ = 1 << 40


@dataclass
class ImportReport:
    root: str
    images: int = 0
    regions: int = 0
    relations: int = 0
    errors: int = 0
    shards: int = 0


def _row_dict(row: dict, path: str) -> dict:
    """A row as the per-row path reads it: ``width``/``height`` from a ``metadata`` struct or
    from flat ``metadata/width`` (or ``metadata.width``) columns, and ``_source``."""
    meta = row.get("metadata") or {}
    for key in ("width", "height"):
        row[key] = meta.get(key, row.get(f"metadata/{key}", row.get(f"metadata.{key}")))
    row["_source"] = path
    return row


def read_svg_rows(paths: Iterable[str]) -> Iterator[dict]:
    """Rows of released or exported SVG Parquet files, with ``width``/``height`` read from a
    ``metadata`` struct or from flat ``metadata/width`` (or ``metadata.width``) columns."""
    for path in paths:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
            for row in batch.to_pylist():
                yield _row_dict(row, path)


def _scene_graph(value) -> dict:
    """The scene graph of a row: a JSON string (some releases hold Python reprs) or a mapping."""
    if isinstance(value, dict):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return ast.literal_eval(value)


def _relation_error(item, n: int) -> str:
    return f"relation {item!r}: needs two different object ids below {n} and a predicate; skipped"


def _mismatch_error(objects: int, regions: int) -> str:
    return f"{objects} objects but {regions} regions; the extra ones are skipped"


def _segmentation_error(i: int, e: Exception) -> str:
    return f"region {i}: {e}; kept with its box only"


BAD_METADATA = "no integer metadata width/height; image skipped"
DUPLICATE = "image listed twice; the later row is skipped"


def _image_id(raw_id: str) -> str:
    return raw_id if ":" in raw_id else f"svg:{raw_id}"


# ---- the per-row path -----------------------------------------------------------------------


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

    def file(self, name: str) -> tuple[str, str]:
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
        image_id = _image_id(raw_id)
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
            self.error(shard, "svg_bad_metadata", BAD_METADATA, image_id, source)
            return False
        uri, digest = self.file(row.get("file_name") or raw_id)
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
                _mismatch_error(len(objects), len(regions)),
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
                self.error(shard, "svg_bad_relation", _relation_error(item, n), image_id, source)
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
                self.error(shard, "bad_segmentation", _segmentation_error(i, e), image_id, source)
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


def _per_row(
    importer: _Importer, rows: list[tuple[int, dict, bool]]
) -> tuple[dict[str, pa.Table], dict[int, bool]]:
    """Rows ``(idx, row, duplicate)`` through the per-row path: each table with ``_idx`` (the
    row) and ``_seq`` (order within it), and which rows gave an image."""
    shard = _Shard()
    owner: dict[str, list[int]] = {name: [] for name in _TABLES}
    usable: dict[int, bool] = {}
    for idx, row, duplicate in rows:
        before = {name: len(getattr(shard, name)) for name in _TABLES}
        if duplicate:
            importer.error(
                shard,
                "svg_duplicate_image",
                DUPLICATE,
                str(row["image_id"]),
                row["_source"],
            )
            usable[idx] = False
        else:
            usable[idx] = importer.add(row, shard)
        for name in _TABLES:
            owner[name] += [idx] * (len(getattr(shard, name)) - before[name])
    tables = {}
    for name, model in _TABLES.items():
        records = getattr(shard, name)
        tables[name] = _tag(to_table(model, records), owner[name], list(range(len(records))))
    return tables, usable


def _tag(table: pa.Table, idx, seq) -> pa.Table:
    """``table`` with its rows' ``_idx`` (input row) and ``_seq`` (order within the row)."""

    def column(values) -> pa.Array:
        if isinstance(values, pa.ChunkedArray):
            return values.combine_chunks().cast(pa.int64())
        return pa.array(values, pa.int64())

    return table.append_column("_idx", column(idx)).append_column("_seq", column(seq))


# ---- the vectorised path --------------------------------------------------------------------


def _parse(text) -> tuple[object, str]:
    """(the graph as :func:`_scene_graph` reads it, how: ``"strict"`` (orjson), ``"json"`` or
    ``"literal"`` (a Python literal)); (None, "") when it reads none (the per-row path then says
    why)."""
    try:
        return orjson.loads(text), "strict"  # what it reads, json.loads reads the same
    except Exception:
        pass
    try:
        return json.loads(text), "json"
    except json.JSONDecodeError:
        pass
    except Exception:  # None, nesting too deep, ...
        return None, ""
    try:
        return ast.literal_eval(text), "literal"
    except Exception:
        return None, ""


def _plain(graph, strict_text: str | None = None) -> str | bytes | None:
    """``graph`` as JSON that DuckDB reads as the per-row path reads ``graph`` (a mapping with
    ``objects``, a list of strings, and ``relations``, a list or absent/None), or None.

    ``strict_text``, the text orjson read ``graph`` from, is itself that JSON when neither key
    can appear twice (orjson keeps the last of repeated keys, DuckDB the first): each is
    written once and no key hides behind a ``\\u`` escape. Writing the graph again took 13% of
    the import's time under the GIL."""
    if type(graph) is not dict:
        return None
    objects, relations = graph.get("objects"), graph.get("relations")
    if type(objects) is not list or (objects and set(map(type, objects)) != {str}):
        return None
    if relations is not None and type(relations) is not list:
        return None
    if (
        strict_text is not None
        and relations is not None
        and strict_text.count('"objects"') == 1
        and strict_text.count('"relations"') == 1
        and "\\u" not in strict_text
    ):
        return strict_text
    try:  # items that are not JSON-able (sets, big integers, lone surrogates): per row
        return orjson.dumps({"objects": objects, "relations": relations or []})
    except (TypeError, orjson.JSONEncodeError):
        return None


def _is_int(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_null(t)  # null: a column of Nones


def _is_str(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _pick(array, rows: np.ndarray):
    """``array.take(rows)``, or ``array`` itself when ``rows`` is every row in order (large
    mask strings are not copied for nothing)."""
    if len(rows) == len(array) and (not len(rows) or (rows[0] == 0 and rows[-1] == len(rows) - 1)):
        return array  # rows are increasing and distinct: all of them
    return array.take(pa.array(rows))


def _present(struct: pa.DataType, name: str) -> bool:
    """``struct`` has a field ``name`` that is not all-null by type (a column of Nones)."""
    return struct.get_field_index(name) >= 0 and not pa.types.is_null(struct.field(name).type)


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)


def _fast_layout(schema: pa.Schema) -> bool:
    """Whether the vectorised path reads this file's columns exactly as the per-row path does
    (else every row of the file takes the per-row path)."""
    names = set(schema.names)
    if "image_id" not in names or "scene_graph" not in names:
        return False
    if not (
        _is_str(schema.field("image_id").type) or pa.types.is_integer(schema.field("image_id").type)
    ):
        return False
    if not _is_str(schema.field("scene_graph").type):
        return False
    if "file_name" in names and not (
        _is_str(schema.field("file_name").type) or pa.types.is_null(schema.field("file_name").type)
    ):
        return False
    for key in ("width", "height"):
        for flat in (f"metadata/{key}", f"metadata.{key}"):
            if flat in names and not _is_int(schema.field(flat).type):
                return False
    if "metadata" in names:
        meta = schema.field("metadata").type
        if not pa.types.is_struct(meta):
            return False
        for key in ("width", "height"):
            if meta.get_field_index(key) >= 0 and not _is_int(meta.field(key).type):
                return False
    if "regions" in names:
        regions = schema.field("regions").type
        if not _is_list(regions) or not pa.types.is_struct(regions.value_type):
            return False
        region = regions.value_type
        if region.get_field_index("bbox") < 0:
            return False
        bbox = region.field("bbox").type
        if not _is_list(bbox) or not (
            pa.types.is_floating(bbox.value_type) or _is_int(bbox.value_type)
        ):
            return False
        if _present(region, "segmentation"):
            seg = region.field("segmentation").type
            if not pa.types.is_struct(seg) or {
                seg.field(i).name for i in range(seg.num_fields)
            } != {
                "size",
                "counts",
            }:
                return False
            if not _is_list(seg.field("size").type) or not _is_int(
                seg.field("size").type.value_type
            ):
                return False
            if not _is_str(seg.field("counts").type):
                return False
        if _present(region, "area"):
            area = region.field("area").type
            if not (pa.types.is_floating(area) or _is_int(area)):
                return False
    return True


def _dimension(batch: pa.Table, key: str) -> pa.Array:
    """``width`` or ``height`` as :func:`_row_dict` picks it (``_fast_layout`` checked types)."""
    n = batch.num_rows
    flat = pa.nulls(n, pa.int64())
    for name in (f"metadata/{key}", f"metadata.{key}"):
        if name in batch.column_names:
            flat = batch.column(name).combine_chunks().cast(pa.int64())
            break
    if "metadata" not in batch.column_names:
        return flat
    meta = batch.column("metadata").combine_chunks()
    if meta.type.get_field_index(key) < 0:
        return flat
    return pc.if_else(meta.is_valid(), pc.struct_field(meta, key).cast(pa.int64()), flat)


class _Regions:
    """A batch's regions flattened with pyarrow (no copy of their masks): the row each belongs
    to, its position there, and the checks that keep a row on the vectorised path."""

    def __init__(self, regions: pa.Array):
        self.flat = pc.list_flatten(regions)  # a null list holds no region
        self.parent = pc.list_parent_indices(regions).to_numpy()
        self.lengths = pc.list_value_length(regions).fill_null(0).to_numpy().astype(np.int64)
        starts = np.cumsum(self.lengths) - self.lengths
        self.position = np.arange(len(self.parent)) - starts[self.parent]
        region = self.flat.type
        self.bbox = pc.struct_field(self.flat, "bbox")
        self.seg = (
            pc.struct_field(self.flat, "segmentation") if _present(region, "segmentation") else None
        )
        self.area = pc.struct_field(self.flat, "area") if _present(region, "area") else None

    @staticmethod
    def _full(lists: pa.Array, length: int) -> np.ndarray:
        """Each list is valid, ``length`` long and holds no null."""
        nulls = np.bincount(
            pc.list_parent_indices(lists).to_numpy()[
                pc.list_flatten(lists).is_null().to_numpy(zero_copy_only=False)
            ],
            minlength=len(lists),
        )
        counts = pc.list_value_length(lists).fill_null(-1).to_numpy()
        return lists.is_valid().to_numpy(zero_copy_only=False) & (counts == length) & (nulls == 0)

    def odd_rows(self, rows: int) -> np.ndarray:
        """Rows holding a region the per-row path reads another way (a null region, a box that
        is not 4 numbers, a segmentation without a 2-number size or counts): it takes them."""
        ok = self.flat.is_valid().to_numpy(zero_copy_only=False) & self._full(self.bbox, 4)
        if self.seg is not None:
            present = self.seg.is_valid().to_numpy(zero_copy_only=False)
            size = pc.struct_field(self.seg, "size")
            counts = pc.struct_field(self.seg, "counts")
            ok &= ~present | (
                self._full(size, 2) & counts.is_valid().to_numpy(zero_copy_only=False)
            )
        return np.bincount(self.parent[~ok], minlength=rows) > 0

    def zipped(
        self,
        usable: np.ndarray,
        objects: list[list[str]],
        idx0: int,
        ids: pa.Array,
        width: pa.Array,
        height: pa.Array,
    ) -> dict[str, pa.Array]:
        """The regions of usable rows that have an object (``zip(objects, regions)``), with
        their row's id and size and their object's name."""
        names = pa.array(objects, pa.list_(pa.string()))
        count = pc.list_value_length(names).to_numpy().astype(np.int64)
        parent = self.parent
        sel = np.flatnonzero(usable[parent] & (self.position < count[parent]))
        rows = pa.array(parent[sel])
        position = self.position[sel]
        bbox = pc.list_flatten(_pick(self.bbox, sel)).cast(pa.float64(), safe=False)
        bbox = bbox.to_numpy()
        bbox = bbox.reshape(-1, 4)
        name_at = np.asarray(names.offsets)[:-1][parent[sel]] + position
        none = pa.nulls(len(sel))
        return {
            "idx": pa.array(parent[sel] + idx0),
            "image_id": ids.take(rows),
            "width": width.take(rows),
            "height": height.take(rows),
            "region_id": pa.array(position),
            "name": pc.list_flatten(names).take(pa.array(name_at)),
            "x": pa.array(bbox[:, 0]),
            "y": pa.array(bbox[:, 1]),
            "w": pa.array(bbox[:, 2]),
            "h": pa.array(bbox[:, 3]),
            "seg_size": _pick(pc.struct_field(self.seg, "size"), sel)
            if self.seg is not None
            else none.cast(pa.list_(pa.int64())),
            "counts": _pick(pc.struct_field(self.seg, "counts"), sel)
            if self.seg is not None
            else none.cast(pa.string()),
            "area": _pick(self.area, sel).cast(pa.float64(), safe=False)
            if self.area is not None
            else none.cast(pa.float64()),
        }


class _Vectorised:
    """One import's DuckDB connection and the per-batch flattening."""

    def __init__(self, importer: _Importer):
        import duckdb

        self.importer = importer
        self.con = duckdb.connect()
        self.threads = int(self.con.execute("SELECT current_setting('threads')").fetchall()[0][0])

    def close(self) -> None:
        self.con.close()

    def batch(self, read: _Read) -> tuple[dict[str, pa.Table], np.ndarray]:
        """The tables of a batch's rows (``_idx``/``_seq`` tagged) and which rows gave an image."""
        batch, idx0, slow = read.batch, read.idx0, read.slow
        n = batch.num_rows
        ids = [_image_id(r) for r in read.raw_ids]
        width, height = _dimension(batch, "width"), _dimension(batch, "height")
        regions = (
            batch.column("regions").combine_chunks()
            if "regions" in batch.column_names
            else pa.nulls(n, pa.list_(pa.struct([("bbox", pa.list_(pa.float64()))])))
        )
        flat = _Regions(regions)
        slow |= flat.odd_rows(n)
        meta_ok = ~(width.is_null().to_numpy(zero_copy_only=False)) & ~(
            height.is_null().to_numpy(zero_copy_only=False)
        )
        clean = np.flatnonzero(~slow & meta_ok)
        items = self._items(
            pa.table(
                {
                    "idx": pa.array(clean + idx0),
                    "image_id": pa.array([ids[i] for i in clean], pa.string()),
                    "sg": pa.array([read.plain[i] for i in clean], pa.string()),
                    "nreg": pa.array(flat.lengths[clean]),
                }
            )
        )
        status = items["status"].to_numpy()
        odd = np.unique(items["idx"].to_numpy()[status == _ODD])
        if len(odd):
            slow[odd - idx0] = True
            items = items.filter(pa.array(~np.isin(items["idx"].to_numpy(), odd)))
            status = items["status"].to_numpy()
        usable = ~slow & meta_ok
        bad_relations = items.filter(pa.array(status == _BAD)).select(["idx", "k", "n"]).to_pylist()
        relations = _first_of_each(
            items if (status == _OK).all() else items.filter(pa.array(status == _OK))
        )
        relations = relations.append_column("relation_id", self._relation_ids(relations))

        errors: list[tuple[int, int, str, str]] = []  # (idx, seq, kind, reason)
        for row in np.flatnonzero(~slow & ~meta_ok).tolist():
            errors.append((idx0 + row, 0, "svg_bad_metadata", BAD_METADATA))
        names = [len(o) for o in read.objects]
        for row in np.flatnonzero(usable).tolist():
            if names[row] != flat.lengths[row]:
                errors.append(
                    (
                        idx0 + row,
                        0,
                        "svg_objects_regions_mismatch",
                        _mismatch_error(names[row], int(flat.lengths[row])),
                    )
                )
        parsed: dict[int, list] = {}
        for bad in bad_relations:
            idx, k, nn = bad["idx"], bad["k"], bad["n"]
            if idx not in parsed:
                i = idx - idx0
                graph = read.literal[i] if i in read.literal else json.loads(read.texts[i])
                parsed[idx] = list(graph.get("relations") or [])  # type: ignore[union-attr]
            errors.append(
                (idx, _RELATION_SEQ + k, "svg_bad_relation", _relation_error(parsed[idx][k], nn))
            )
        region_rows = flat.zipped(
            usable, read.objects, idx0, pa.array(ids, pa.string()), width, height
        )
        region_table, region_errors = self._regions(region_rows)
        errors += region_errors

        keep = np.flatnonzero(usable)
        files = [
            self.importer.file(fn or read.raw_ids[i]) for i, fn in self._file_names(batch, keep)
        ]
        run_id = self.importer.run_id
        tables = {
            "images": _tag(
                table_from_columns(
                    ImageRecord,
                    {
                        "image_id": [ids[i] for i in keep],
                        "sources": pa.scalar(["svg"], pa.list_(pa.string())),
                        "file_uri": [f[0] for f in files],
                        "width": width.take(keep),
                        "height": height.take(keep),
                        "content_hash": [f[1] for f in files],
                    },
                    len(keep),
                ),
                keep + idx0,
                np.zeros(len(keep), dtype=np.int64),
            ),
            "regions": region_table,
            "descriptions": _tag(
                table_from_columns(
                    DescriptionRecord,
                    {
                        "image_id": region_rows["image_id"],
                        "region_id": region_rows["region_id"],
                        "description": region_rows["name"],
                        "stage": "edit",
                        "generator": "model",
                        "model": RELEASE_MODEL,
                        "run_id": run_id,
                    },
                    len(region_rows["idx"]),
                ),
                region_rows["idx"],
                region_rows["region_id"],
            ),
            "relations": _tag(
                table_from_columns(
                    RelationRecord,
                    {
                        "relation_id": relations["relation_id"],
                        "image_id": relations["image_id"],
                        "subject_id": relations["s"],
                        "object_id": relations["o"],
                        "predicate": relations["p"],
                        "predicate_raw": relations["raw"],
                        "category": "other",
                        "stage": "edit",
                        "generator": "model",
                        "model": RELEASE_MODEL,
                        "run_id": run_id,
                    },
                    relations.num_rows,
                ),
                relations["idx"],
                relations["k"],
            ),
            "errors": _tag(
                table_from_columns(
                    ErrorRecord,
                    {
                        "run_id": run_id,
                        "stage": "import",
                        "image_id": [ids[e[0] - idx0] for e in errors],
                        "source": read.path,
                        "kind": [e[2] for e in errors],
                        "reason": [e[3] for e in errors],
                        "created_at": pa.scalar(
                            utcnow(), schema_of(ErrorRecord).field("created_at").type
                        ),
                    },
                    len(errors),
                ),
                [e[0] for e in errors],
                [e[1] for e in errors],
            ),
        }
        back = np.flatnonzero(slow)
        if len(back):  # the rows the per-row path takes, as read_svg_rows reads them
            picked = batch.take(back).to_pylist()
            per_row, gave = _per_row(
                self.importer,
                [
                    (idx0 + int(i), _row_dict(row, read.path), bool(read.duplicate[i]))
                    for i, row in zip(back, picked, strict=True)
                ],
            )
            for name in tables:
                tables[name] = pa.concat_tables([tables[name], per_row[name]])
            for idx, ok in gave.items():
                usable[idx - idx0] = ok
        return tables, usable

    def _items(self, rows: pa.Table) -> pa.Table:
        """The relation items of ``rows`` (their scene graphs as plain JSON, ``sg``) in
        (``idx``, ``k``) order with their ``status`` and predicate: ``p`` (normalised), ``raw``
        and ``pid`` (equal for equal ``p``: repeats compare integers)."""
        # One query on every thread (DuckDB scans an Arrow table's batches in parallel and keeps
        # their order through parsing, unnesting and projections: no join, no sort). Each graph
        # is parsed once; relation items are classified from their elements' JSON text
        # (integers as written back, strings quoted): _BAD is what the per-row path rejects (an
        # empty predicate too, below); _ODD items (booleans as ids, predicates that are not
        # strings) send their row the per-row way.
        self.con.register("batch_rows", _parts(rows, self.threads))
        try:
            items = self.con.sql(
                """SELECT idx, k, n, image_id, s, o, x[1] AS xs, x[2] AS xo, x[3] AS t, CASE
                     WHEN x IS NULL OR len(x) <> 3 THEN 1
                     WHEN x[1] IN ('true', 'false') OR x[2] IN ('true', 'false') THEN 2
                     WHEN s IS NULL OR o IS NULL THEN 1
                     WHEN s < 0 OR s >= n OR o < 0 OR o >= n OR s = o THEN 1
                     WHEN NOT coalesce(starts_with(x[3], '"'), false) THEN 2
                     ELSE 0 END::TINYINT AS status
                   FROM (
                     SELECT *,
                       CASE WHEN CAST(TRY_CAST(x[1] AS BIGINT) AS VARCHAR) = x[1]
                            THEN TRY_CAST(x[1] AS BIGINT) END AS s,
                       CASE WHEN CAST(TRY_CAST(x[2] AS BIGINT) AS VARCHAR) = x[2]
                            THEN TRY_CAST(x[2] AS BIGINT) END AS o
                     FROM (
                       SELECT idx, image_id, n, unnest(rels) AS x, unnest(range(len(rels))) AS k
                       FROM (
                         SELECT idx, image_id, least(len(g.objects), nreg) AS n,
                           g.relations::VARCHAR[][] AS rels
                         FROM (
                           SELECT *, from_json(
                             sg, '{"objects": ["VARCHAR"], "relations": [["JSON"]]}') AS g
                           FROM batch_rows
                         )
                       )
                     )
                   )"""
            ).to_arrow_table()
        finally:
            self.con.unregister("batch_rows")
        if not _ordered(items["idx"].to_numpy(), items["k"].to_numpy()):
            items = items.sort_by([("idx", "ascending"), ("k", "ascending")])
        # each distinct predicate (a JSON string) once: its text, normalised in Python
        texts = pc.unique(items["t"].combine_chunks())
        texts = texts.filter(pc.starts_with(texts, '"').fill_null(False))
        raws = [orjson.loads(t) for t in texts.to_pylist()]
        normalised = [normalise(r) for r in raws]
        number = {p: j for j, p in enumerate(dict.fromkeys(normalised))}
        at = pc.index_in(items["t"], value_set=texts)
        p = pa.array(normalised, pa.string()).take(at)
        status = items["status"].to_numpy().copy()
        status[(status == _OK) & pc.equal(p, "").fill_null(False).to_numpy()] = _BAD
        return (
            items.drop_columns(["t", "status"])
            .append_column("status", pa.array(status))
            .append_column("p", p)
            .append_column("raw", pa.array(raws, pa.string()).take(at))
            .append_column("pid", pa.array([number[q] for q in normalised], pa.int64()).take(at))
        )

    def _relation_ids(self, relations: pa.Table) -> pa.ChunkedArray:
        """Each relation's ``relation_id`` (sha256 in DuckDB, on every thread: an Arrow scan's
        projection keeps the row order, and the echoed ``idx``/``k`` prove it)."""
        self.con.register(
            "hashed",
            _parts(relations.select(["idx", "k", "image_id", "xs", "xo", "p"]), self.threads),
        )
        try:
            out = self.con.sql(
                "SELECT idx, k, sha256(concat(image_id, '|edit|', xs, '|', xo, '|', p))[1:20] "
                "FROM hashed"
            ).to_arrow_table()
        finally:
            self.con.unregister("hashed")
        for column in ("idx", "k"):
            if not out[column].equals(relations[column]):
                raise RuntimeError("DuckDB returned relation ids out of order")
        return out.column(2)

    @staticmethod
    def _file_names(batch: pa.Table, keep: np.ndarray) -> Iterator[tuple[int, str | None]]:
        names = (
            batch.column("file_name").take(keep).to_pylist()
            if "file_name" in batch.column_names
            else [None] * len(keep)
        )
        return zip((int(i) for i in keep), names, strict=True)

    def _regions(self, r: dict[str, pa.Array]) -> tuple[pa.Table, list[tuple[int, int, str, str]]]:
        """The regions table of the zipped regions, and their segmentation errors."""
        n = len(r["idx"])
        x, y = r["x"].to_numpy(), r["y"].to_numpy()
        x2, y2 = x + r["w"].to_numpy(), y + r["h"].to_numpy()
        dx, dy = x2 - x, y2 - y
        box_area = np.where(0.0 > dx, 0.0, dx) * np.where(0.0 > dy, 0.0, dy)  # Box.area exactly
        given = r["area"].to_numpy(zero_copy_only=False).astype(np.float64)  # None -> nan
        given_null = r["area"].is_null().to_numpy(zero_copy_only=False)
        area = np.where(given_null | (given == 0.0), box_area, given)
        has_seg = r["counts"].is_valid().to_numpy(zero_copy_only=False)
        has_mask = np.zeros(n, dtype=bool)
        errors = []
        seg_rows = np.flatnonzero(has_seg)
        converted: dict[int, str] = {}  # counts segmentation_to_rle gave a region
        if len(seg_rows):
            sizes = pc.list_flatten(_pick(r["seg_size"], seg_rows)).to_numpy().reshape(-1, 2)
            heights = _pick(r["height"], seg_rows).to_numpy()
            widths = _pick(r["width"], seg_rows).to_numpy()
            seg_counts = _pick(r["counts"], seg_rows)
            # segmentation_to_rle's compressed-RLE case, when it cannot fail: the size is the
            # image's and the counts are ASCII; any other segmentation is handed to it below
            happy = (
                (sizes[:, 0] == heights)
                & (sizes[:, 1] == widths)
                & pc.string_is_ascii(seg_counts).to_numpy(zero_copy_only=False)
            )
            happy_rows = seg_rows[happy]
            if len(happy_rows):  # their masks are their own counts at the image's size
                encoded = _pick(r["counts"], happy_rows).cast(pa.binary()).to_pylist()
                hw = zip(heights[happy].tolist(), widths[happy].tolist(), strict=True)
                area[happy_rows] = masks.areas(
                    [{"size": [h, w], "counts": c} for (h, w), c in zip(hw, encoded, strict=True)]
                )
                has_mask[happy_rows] = True
            for j in np.flatnonzero(~happy).tolist():
                row = int(seg_rows[j])
                try:
                    rle = masks.segmentation_to_rle(
                        {"size": sizes[j].tolist(), "counts": seg_counts[j].as_py()},
                        int(heights[j]),
                        int(widths[j]),
                    )
                except (ValueError, TypeError, KeyError) as e:
                    i = int(r["region_id"][row].as_py())
                    errors.append(
                        (
                            int(r["idx"][row].as_py()),
                            1 + i,
                            "bad_segmentation",
                            _segmentation_error(i, e),
                        )
                    )
                    continue
                converted[row] = rle.counts
                area[row] = masks.area(rle)
                has_mask[row] = True
        counts = pc.if_else(pa.array(has_mask), r["counts"].fill_null(""), "")
        if converted:  # not reached with a compressed RLE: kept so the rule has one place
            patched = counts.to_pylist()
            for row, text in converted.items():
                patched[row] = text
            counts = pa.array(patched, pa.string())
        mask_size = pa.ListArray.from_arrays(
            pa.array(np.arange(0, 2 * n + 1, 2, dtype=np.int32)),
            pa.array(
                np.column_stack([r["height"].to_numpy(), r["width"].to_numpy()]).ravel()
                if n
                else [],
                pa.int64(),
            ),
        )
        mask = pa.StructArray.from_arrays(
            [mask_size, counts],
            fields=list(schema_of(RegionRecord).field("mask").type),
            mask=pa.array(~has_mask),
        )
        source_type = schema_of(RegionRecord).field("sources").type.value_type
        sources = pa.ListArray.from_arrays(
            pa.array(np.arange(n + 1, dtype=np.int32)),
            pa.StructArray.from_arrays(
                [
                    pa.repeat(pa.scalar("svg"), n),
                    r["region_id"].cast(pa.string()),
                    pa.nulls(n, pa.string()),
                    pa.nulls(n, pa.string()),
                ],
                fields=list(source_type),
            ),
        )
        bbox = pa.StructArray.from_arrays(
            [pa.array(v) for v in (x, y, x2, y2)],
            fields=list(schema_of(RegionRecord).field("bbox").type),
        )
        table = table_from_columns(
            RegionRecord,
            {
                "image_id": r["image_id"],
                "region_id": r["region_id"],
                "bbox": bbox,
                "mask": mask,
                "area": pa.array(area),
                "label": r["name"],
                "sources": sources,
            },
            n,
        )
        return _tag(table, r["idx"], r["region_id"]), errors


# ---- the import -----------------------------------------------------------------------------


@dataclass
class _Pending:
    """The shard being filled: its tables' parts, its images, whether any row landed in it."""

    parts: dict[str, list[pa.Table]] = field(default_factory=lambda: {t: [] for t in _TABLES})
    image_ids: list[str] = field(default_factory=list)
    rows: int = 0


@dataclass
class _Read:
    """A batch as :func:`_read` hands it over: its rows, their ids as read (``duplicate``: the
    id came before) and, for a file the vectorised path reads, each scene graph parsed once in
    Python: ``plain`` JSON for DuckDB and the ``objects`` names, or ``slow`` (the per-row path
    takes the row: duplicates too, one error row)."""

    path: str
    idx0: int
    batch: pa.Table
    fast: bool
    raw_ids: list[str]
    duplicate: np.ndarray
    slow: np.ndarray
    texts: list = field(default_factory=list)
    plain: list[str | bytes | None] = field(default_factory=list)
    objects: list[list[str]] = field(default_factory=list)
    literal: dict[int, object] = field(default_factory=dict)


def _read(paths: list[str]) -> Iterator[_Read]:
    """Each file's batches in order, their ids checked against the ones before, their graphs
    parsed (the Python half of the vectorised path, which :func:`_ahead` runs on a thread of
    its own while the batch before is flattened)."""
    seen: set[str] = set()
    idx0 = 0
    for path in paths:
        parquet = pq.ParquetFile(path)
        fast = _fast_layout(parquet.schema_arrow)
        for record_batch in parquet.iter_batches(batch_size=BATCH_ROWS):
            batch = pa.Table.from_batches([record_batch])
            n = batch.num_rows
            raw_ids = [str(v) for v in batch.column("image_id").to_pylist()]
            duplicate = np.zeros(n, dtype=bool)
            for i, raw in enumerate(raw_ids):
                if raw in seen:
                    duplicate[i] = True
                else:
                    seen.add(raw)
            read = _Read(path, idx0, batch, fast, raw_ids, duplicate, duplicate.copy())
            if fast:
                read.texts = batch.column("scene_graph").to_pylist()
                read.plain = [None] * n
                read.objects = [[]] * n  # the names of the rows the vectorised path takes
                for i, text in enumerate(read.texts):
                    if read.slow[i]:
                        continue
                    graph, how = _parse(text)
                    read.plain[i] = _plain(graph, text if how == "strict" else None)
                    if read.plain[i] is None:
                        read.slow[i] = True
                        continue
                    read.objects[i] = graph["objects"]  # type: ignore[index]
                    if how == "literal":
                        read.literal[i] = graph
            yield read
            idx0 += n


def _ahead(items: Iterator[T], depth: int = 1) -> Generator[T, None, None]:
    """``items``, produced on a thread of its own at most ``depth`` ahead of the consumer (its
    errors are raised here; closing this generator stops the thread)."""
    done = object()
    out: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> None:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def produce() -> None:
        try:
            for item in items:
                put((item, None))
                if stop.is_set():
                    return
            put((done, None))
        except BaseException as e:  # handed to the consumer
            put((done, e))

    thread = threading.Thread(target=produce, name="synthvg-import-read", daemon=True)
    thread.start()
    try:
        while True:
            item, error = out.get()
            if error is not None:
                raise error
            if item is done:
                return
            yield item
    finally:
        stop.set()
        thread.join()


def import_svg(
    paths: list[str],
    root: str,
    *,
    images_dir: str | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
) -> ImportReport:
    """Store SVG-format rows as a new dataset root: ``images`` and ``regions`` (the ``seeds``
    stage's shards) and the graph as ``stage='edit'`` relations and names (the ``edit``
    stage's), with ``model='svg-release'``, so SQL, ``svg_full`` and export work on it."""
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

    def write(index: int, pending: _Pending) -> None:
        tables = {name: _in_order(pa.concat_tables(parts)) for name, parts in pending.parts.items()}
        _commit(
            dataset, index, tables, len(pending.image_ids), run_id, stable_hash([run_id, index])
        )
        for name in ("images", "regions", "relations", "errors"):
            setattr(report, name, getattr(report, name) + tables[name].num_rows)

    writer = _Writer()

    def commit(pending: _Pending) -> None:
        writer.submit(write, len(plan), pending)
        plan.append({"index": len(plan), "image_ids": pending.image_ids})

    vectorised = _Vectorised(importer)
    try:
        with build_lock(dataset, run_id), writer:
            pending = _Pending()
            with contextlib.closing(_ahead(_read(paths))) as reads:
                for read in reads:
                    if read.fast:
                        tables, usable = vectorised.batch(read)
                    else:
                        rows = [
                            (read.idx0 + i, _row_dict(row, read.path), bool(read.duplicate[i]))
                            for i, row in enumerate(read.batch.to_pylist())
                        ]
                        tables, gave = _per_row(importer, rows)
                        usable = np.array([gave[idx] for idx, _, _ in rows], dtype=bool)
                    pending = _distribute(tables, usable, read.idx0, pending, shard_size, commit)
            if pending.rows:
                commit(pending)
            writer.wait()
            dataset.write_json(dataset.abspath(PLAN_FILE), {"shards": plan})
            from synthvg.storage.versions import compact

            compact(dataset)  # one commit-log file, not two per shard: opening the root stays fast
    finally:
        vectorised.close()
    report.shards = len(plan)
    return report


class _Writer:
    """Commits shards one at a time, in order, on a thread of its own: Parquet encoding and
    Delta transactions (which let go of the GIL) overlap the next batches' flattening. One
    shard at most waits for it (memory stays bounded); its failure is raised on the next
    ``submit`` or ``wait``, and leaving the ``with`` waits for the commit in flight."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="synthvg-import-commit")
        self._pending: Future[None] | None = None

    def submit(self, fn: Callable[..., None], *args: object) -> None:
        self.wait()
        self._pending = self._pool.submit(fn, *args)

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._pending is not None:
                self._pending.exception()  # waits; the caller's error is the one raised
        finally:
            self._pool.shutdown()


def _distribute(
    tables: dict[str, pa.Table],
    usable: np.ndarray,
    idx0: int,
    pending: _Pending,
    shard_size: int,
    commit,
) -> _Pending:
    """Hand a batch's rows to shards: row ``r`` goes where a row-by-row import would put it,
    shard ``(usable images before r) // shard_size``; a shard is committed once full."""
    before = len(pending.image_ids) + np.cumsum(usable) - usable
    offset = before // shard_size
    image_ids = {
        int(i): v
        for i, v in zip(
            tables["images"]["_idx"].to_numpy(),
            tables["images"]["image_id"].to_pylist(),
            strict=True,
        )
    }
    idx = {name: t["_idx"].to_numpy() for name, t in tables.items()}
    for j in np.unique(offset):
        rows = np.flatnonzero(offset == j)
        lo, hi = idx0 + rows[0], idx0 + rows[-1] + 1
        for name, t in tables.items():
            inside = (idx[name] >= lo) & (idx[name] < hi)
            pending.parts[name].append(t.filter(pa.array(inside)) if not inside.all() else t)
        pending.image_ids += [image_ids[idx0 + int(i)] for i in rows if usable[i]]
        pending.rows += len(rows)
        if len(pending.image_ids) >= shard_size:
            commit(pending)
            pending = _Pending()
    return pending


def _first_of_each(relations: pa.Table) -> pa.Table:
    """The first of each (image, subject, object, predicate number) in (``idx``, ``k``) order."""
    idx, s, o, pid = (relations[c].to_numpy() for c in ("idx", "s", "o", "pid"))
    if not len(idx):
        return relations
    idx = idx - idx.min()
    bits = [int(v.max()).bit_length() for v in (idx, s, o, pid)]
    if sum(bits) <= 62:  # one integer key: a single stable sort
        key = np.zeros(len(idx), dtype=np.int64)
        for v, b in zip((idx, s, o, pid), bits, strict=True):
            key = (key << b) | v
        order = np.argsort(key, kind="stable")
        first = np.ones(len(order), dtype=bool)
        first[1:] = key[order][1:] != key[order][:-1]
    else:
        order = np.lexsort((pid, o, s, idx))  # stable: equal keys keep their item order
        keys = np.stack([idx[order], s[order], o[order], pid[order]])
        first = np.ones(len(order), dtype=bool)
        first[1:] = np.any(keys[:, 1:] != keys[:, :-1], axis=0)
    if first.all():
        return relations
    keep = np.zeros(len(order), dtype=bool)
    keep[order[first]] = True
    return relations.filter(pa.array(keep))


def _ordered(major: np.ndarray, minor: np.ndarray) -> bool:
    """Whether the keys (``major``, ``minor``) strictly increase."""
    step = np.diff(major)
    return bool(np.all((step > 0) | ((step == 0) & (np.diff(minor) > 0))))


def _parts(table: pa.Table, parts: int) -> pa.Table:
    """``table`` in ``parts`` record batches: DuckDB scans an Arrow table's batches in parallel."""
    size = max(1, -(-table.num_rows // parts))
    return pa.Table.from_batches(
        table.combine_chunks().to_batches(max_chunksize=size), table.schema
    )


def _in_order(table: pa.Table) -> pa.Table:
    """``table`` sorted by (``_idx``, ``_seq``), without them (sorting only when needed: the
    vectorised path's parts come in order, the per-row path's rows are mixed in)."""
    if not _ordered(table["_idx"].to_numpy(), table["_seq"].to_numpy()):
        table = table.sort_by(_ORDER)
    return table.drop_columns(["_idx", "_seq"])


def _commit(
    dataset: Dataset, index: int, tables: dict[str, pa.Table], images: int, run_id: str, fp: str
) -> None:
    started = utcnow()
    seeds = {"images": tables["images"], "regions": tables["regions"]}
    if tables["errors"].num_rows:
        seeds["errors"] = tables["errors"]
    graph = {"relations": tables["relations"], "descriptions": tables["descriptions"]}
    for stage, data in (("seeds", seeds), ("edit", graph)):
        dataset.commit_shard(
            stage, index, fp, data, run_id=run_id, image_count=images, started_at=started
        )


__all__ = [
    "DEFAULT_SHARD_SIZE",
    "RELEASE_MODEL",
    "ImportReport",
    "import_svg",
    "read_svg_rows",
]
