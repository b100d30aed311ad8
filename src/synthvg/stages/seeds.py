"""Seeds: images and their human annotations, joined into one region table per image.

Planning reads the annotation files once, lists the images and cuts them into shards; the
per-shard work opens each image (decoding it fully, so corrupt files are caught here), hashes
it, and converts every annotation to an xyxy box and a COCO RLE mask.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import os
from dataclasses import dataclass

import fsspec
from PIL import Image, UnidentifiedImageError

from synthvg import masks
from synthvg.readers.coco import CocoIndex, SourceError, coco_split, load_coco
from synthvg.schemas import Box, ErrorRecord, ImageRecord, RegionRecord, RegionSource
from synthvg.schemas.config import BuildConfig, CocoSource
from synthvg.stages.base import RunContext, ShardSpec, Stage, StageInputs, StageOutput


def coco_image_id(native_id: int) -> str:
    return f"coco:{native_id}"


@dataclass
class BuildPlan:
    """The shards of a build and the faults found while planning."""

    shards: list[ShardSpec]
    errors: list[ErrorRecord]

    @property
    def image_count(self) -> int:
        return sum(len(s.image_ids) for s in self.shards)


def _file_digest(path: str) -> str:
    st = os.stat(path)
    return _digest_cached(path, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _digest_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load_sources(config: BuildConfig, ctx: RunContext) -> tuple[list[tuple[CocoSource, CocoIndex]], list[ErrorRecord]]:
    loaded, errors = [], []
    for source in config.seeds.sources:
        try:
            index = load_coco(source.annotations)
        except SourceError as e:
            errors.append(ctx.error("bad_annotation_file", str(e), source=source.annotations))
            continue
        for p in index.problems:
            errors.append(
                ctx.error(
                    p.kind,
                    p.reason,
                    image_id=coco_image_id(p.image_id) if p.image_id is not None else None,
                    source=source.annotations,
                )
            )
        loaded.append((source, index))
    return loaded, errors


def plan_build(config: BuildConfig, run_id: str) -> BuildPlan:
    """List every image of every source (sorted, limited) and cut it into shards."""
    ctx = RunContext(run_id=run_id, stage="plan")
    loaded, errors = _load_sources(config, ctx)
    native_ids = sorted({i for _, index in loaded for i in index.images})
    if config.limit is not None:
        native_ids = native_ids[: config.limit]
    image_ids = [coco_image_id(i) for i in native_ids]
    size = config.shard_size
    shards = [ShardSpec(index=k, image_ids=image_ids[k * size : (k + 1) * size]) for k in range(math.ceil(len(image_ids) / size))]
    return BuildPlan(shards=shards, errors=errors)


def read_image(uri: str) -> tuple[bytes, Image.Image]:
    """Read and fully decode an image; raises ValueError with a person-readable reason."""
    try:
        with fsspec.open(uri, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ValueError(f"image file not found: {uri}") from None
    except OSError as e:
        raise ValueError(f"cannot read image file {uri}: {e}") from None
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot decode image {uri} (corrupt or truncated?): {e}") from None
    return data, img


class SeedsStage(Stage):
    name = "seeds"
    version = "1"
    writes = ("images", "regions")

    @classmethod
    def fingerprint_payload(cls, config: BuildConfig) -> dict:
        # The annotation files' content decides the output, not just their paths.
        sources = [
            {**s.model_dump(mode="json"), "sha256": _file_digest(s.annotations) if os.path.exists(s.annotations) else None}
            for s in config.seeds.sources
        ]
        return {"sources": sources, "min_region_area": config.seeds.min_region_area}

    def process(self, shard: ShardSpec, inputs: StageInputs, ctx: RunContext) -> StageOutput:
        out = StageOutput()
        loaded, _ = _load_sources(self.config, ctx)  # cached per process; plan already logged problems
        for image_id in shard.image_ids:
            native = int(image_id.split(":", 1)[1])
            found = [(s, idx) for s, idx in loaded if native in idx.images]
            if not found:
                out.errors.append(ctx.error("image_vanished", "image no longer listed by any source", image_id=image_id))
                continue
            self._seed_image(image_id, native, found, out, ctx)
        return out

    def _seed_image(self, image_id: str, native: int, found, out: StageOutput, ctx: RunContext) -> None:
        source, index = found[0]
        info = index.images[native]
        uri = os.path.join(source.images, info["file_name"]) if "://" not in source.images else f"{source.images.rstrip('/')}/{info['file_name']}"
        try:
            data, img = read_image(uri)
        except ValueError as e:
            out.errors.append(ctx.error("bad_image", str(e), image_id=image_id, source=uri))
            return
        width, height = info["width"], info["height"]
        if img.size != (width, height):
            out.errors.append(
                ctx.error(
                    "image_size_mismatch",
                    f"file is {img.size[0]}x{img.size[1]} but the annotations say {width}x{height}; image skipped",
                    image_id=image_id,
                    source=uri,
                )
            )
            return
        out.add(
            "images",
            ImageRecord(
                image_id=image_id,
                sources=sorted({"coco"}),
                coco_id=native,
                file_uri=uri,
                width=width,
                height=height,
                split=source.split or coco_split(info),
                content_hash=hashlib.sha256(data).hexdigest(),
            ),
        )
        region_id = 0
        for src, idx in found:
            for ann in idx.annotations.get(native, []):
                region = self._region(image_id, region_id, ann, idx, width, height, ctx, out, src.annotations)
                if region is not None:
                    out.add("regions", region)
                    region_id += 1

    def _region(self, image_id, region_id, ann, index: CocoIndex, width, height, ctx, out, source) -> RegionRecord | None:
        ann_ref = f"{source}#annotation={ann.get('id')}"
        x, y, w, h = (float(v) for v in ann["bbox"])
        if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
            out.errors.append(ctx.error("zero_area", f"box {ann['bbox']} has no area; region skipped", image_id=image_id, source=ann_ref))
            return None
        box = Box(x1=x, y1=y, x2=x + w, y2=y + h)
        clipped = masks.clip_box(box, width, height)
        if clipped.area <= 0:
            out.errors.append(ctx.error("box_outside_image", f"box {ann['bbox']} lies outside the {width}x{height} image; region skipped", image_id=image_id, source=ann_ref))
            return None
        if clipped != box:
            out.errors.append(ctx.error("box_clipped", f"box {ann['bbox']} extends past the {width}x{height} image; clipped", image_id=image_id, source=ann_ref))
        mask = None
        if ann.get("segmentation") is not None:
            try:
                mask = masks.segmentation_to_rle(ann["segmentation"], height, width)
            except (ValueError, TypeError, KeyError) as e:
                out.errors.append(ctx.error("bad_segmentation", f"{e}; region kept with its box only", image_id=image_id, source=ann_ref))
        area = masks.area(mask) if mask is not None else clipped.area
        if area < self.config.seeds.min_region_area:
            out.errors.append(ctx.error("zero_area", f"region area {area:.1f}px is below min_region_area; region skipped", image_id=image_id, source=ann_ref))
            return None
        category = index.categories.get(ann.get("category_id"))
        return RegionRecord(
            image_id=image_id,
            region_id=region_id,
            bbox=clipped,
            mask=mask,
            area=area,
            label=category,
            descriptions=[],
            is_crowd=bool(ann.get("iscrowd", 0)),
            sources=[RegionSource(dataset="coco", annotation_id=str(ann.get("id")), category=category)],
        )
