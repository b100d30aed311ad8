"""Seeds: images and their human annotations from every configured source, joined per image.

Planning indexes every source (one streaming pass per file, cached per process), gives each
real image one id (:mod:`synthvg.readers.identity`), applies the selection rule and cuts the
sorted ids into shards. A shard re-reads only its images' records from each source, attaches
the image file (decoded, so corrupt files are caught here; huge ones in bounded memory or
refused over ``max_image_pixels``, see :mod:`synthvg.image_files`) or, without one, the sizes
the annotations give, and joins the sources into regions and seed relations
(:mod:`synthvg.readers.join`). Bad input becomes error rows, costing only its image or
annotation; the build goes on. Only a source that yields no images at all stops it
(:func:`check_sources`), unless the source allows it.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from dataclasses import dataclass

from synthvg.config.build import BuildConfig
from synthvg.config.fields import output_settings
from synthvg.config.seeds import MAX_IMAGE_PIXELS, SeedsConfig
from synthvg.image_files import ImageFileError, check_image
from synthvg.image_files import read_image as read_image  # where stages looked for it first
from synthvg.readers.base import ImageSeeds
from synthvg.readers.identity import sort_key
from synthvg.readers.join import Joiner, View
from synthvg.readers.merge import Merger
from synthvg.readers.names import NameMatcher
from synthvg.readers.sources import (
    Opened,
    SeedSources,
    annotation_files,
    annotation_folders,
    open_sources,
)
from synthvg.schemas import ErrorRecord, ImageRecord
from synthvg.stages.base import RunContext, ShardSpec, Stage, StageInputs, StageOutput


@dataclass
class BuildPlan:
    """The shards of a build and the faults found while planning."""

    shards: list[ShardSpec]
    errors: list[ErrorRecord]

    @property
    def image_count(self) -> int:
        return sum(len(s.image_ids) for s in self.shards)


def _file_digest(path: str) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return _digest_cached(path, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _digest_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _folder_digest(path: str) -> str | None:
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError:
        return None
    return _listing_cached(path, mtime)


@functools.lru_cache(maxsize=16)
def _listing_cached(path: str, mtime_ns: int) -> str:
    """A folder of per-image files (PSG PNGs, ADE20K JSONs): its names, sizes and mtimes."""
    h = hashlib.sha256()
    for folder, dirs, files in os.walk(path):
        dirs.sort()
        for f in sorted(files):
            st = os.stat(os.path.join(folder, f))
            h.update(
                f"{os.path.relpath(os.path.join(folder, f), path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode()
            )
    return h.hexdigest()


def _plan_errors(sources: SeedSources, ctx: RunContext) -> list[ErrorRecord]:
    errors = [
        ctx.error("bad_annotation_file", s.failure, source=s.path)
        for s in sources.sources
        if s.failure
    ]
    for opened, p in sources.problems:
        image_id = (
            sources.identity.image_id(opened.opened_reader.family, p.native_id)
            if p.native_id is not None
            else None
        )
        errors.append(
            ctx.error(p.kind, p.reason, image_id=image_id, source=p.source or opened.path)
        )
    return errors


def select_images(
    config: SeedsConfig, available: dict[str, set[str]], ctx: RunContext
) -> tuple[list[str], list[ErrorRecord]]:
    """The selection rule: every image, or those every required dataset annotates, or listed ids."""
    errors: list[ErrorRecord] = []
    required = set(config.select.require)
    ids = [i for i, datasets in available.items() if required <= datasets]
    wanted = list(config.select.ids)
    if config.select.ids_file:
        try:
            with open(config.select.ids_file) as f:
                wanted += [line.strip() for line in f if line.strip() and not line.startswith("#")]
        except OSError as e:
            errors.append(
                ctx.error(
                    "bad_selection",
                    f"cannot read select.ids_file: {e}; no image selected",
                    source=config.select.ids_file,
                )
            )
            return [], errors
    if config.select.ids or config.select.ids_file:
        chosen = set(ids)
        for i in dict.fromkeys(wanted):
            if i not in chosen:
                errors.append(
                    ctx.error(
                        "unknown_image",
                        "selected image is not among the sources' images (or lacks a required source)",
                        image_id=i,
                    )
                )
        ids = [i for i in dict.fromkeys(wanted) if i in chosen]
    return sorted(ids, key=sort_key), errors


class EmptySource(ValueError):
    """A source yields no images and its config does not say it may (``allow_empty``)."""


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _emptiness(opened: Opened) -> str | None:
    """Why a source yields no images (None: it yields some)."""
    kind, images = opened.config.kind, getattr(opened.config, "images", None)
    if opened.failure:
        return (
            f"{kind} source: {opened.failure}"
            if opened.path in opened.failure
            else f"{kind} source {opened.path}: {opened.failure}"
        )
    if not opened.opened_reader.native_ids():
        return f"{kind} source {opened.path} lists no images"
    if images and _is_local(images) and not os.path.isdir(images.removeprefix("file://")):
        return f"{kind} source {opened.path}: images folder {images} not found"
    return None


def check_sources(config: SeedsConfig) -> SeedSources:
    """The opened sources; raises :class:`EmptySource` (one line) when one yields no images.

    A mistyped path or an empty or truncated file would otherwise give a dataset without that
    source and exit 0. A source that may legitimately be empty says ``allow_empty: true``; it
    then stops only itself, with a ``bad_annotation_file`` row when it cannot be read.
    """
    sources = open_sources(config.sources)
    empty = [why for s in sources.sources if not s.config.allow_empty and (why := _emptiness(s))]
    if empty:
        more = f" (and {len(empty) - 1} more source(s) like it)" if len(empty) > 1 else ""
        raise EmptySource(
            f"{empty[0]}{more}; fix the path or set `allow_empty: true` on the source"
        )
    return sources


def plan_build(config: BuildConfig, run_id: str) -> BuildPlan:
    """Index every source, select the images (sorted, limited) and cut them into shards."""
    ctx = RunContext(run_id=run_id, stage="plan")
    sources = check_sources(config.seeds)
    errors = _plan_errors(sources, ctx)
    image_ids, selection_errors = select_images(config.seeds, sources.image_datasets(), ctx)
    errors += selection_errors
    if config.limit is not None:
        image_ids = image_ids[: config.limit]
    size = config.shard_size
    shards = [
        ShardSpec(index=k, image_ids=image_ids[k * size : (k + 1) * size])
        for k in range(math.ceil(len(image_ids) / size))
    ]
    return BuildPlan(shards=shards, errors=errors)


def _join_path(folder: str, name: str) -> str:
    return f"{folder.rstrip('/')}/{name}" if "://" in folder else os.path.join(folder, name)


class SeedsStage(Stage):
    name = "seeds"
    order = 10
    version = "2"
    writes = ("images", "regions", "relations")

    def __init__(self, config: BuildConfig):
        super().__init__(config)
        merge = config.seeds.merge
        merger = Merger(merge.iou, merge.phrase_iou, merge.names, NameMatcher(merge.aliases))
        self.joiner = Joiner(merger, config.seeds.min_region_area)

    @classmethod
    def light(cls, config: BuildConfig) -> bool:
        # Annotations only: image files are decoded (to catch corrupt ones), ~5-10 ms each.
        return all(getattr(source, "images", None) is None for source in config.seeds.sources)

    @classmethod
    def fingerprint_payload(cls, config: BuildConfig) -> dict:
        # The annotation files' content decides the output, not just their paths.
        sources = [
            {
                **output_settings(s),
                "sha256": {p: _file_digest(p) for p in annotation_files(s)},
                "listing": {p: _folder_digest(p) for p in annotation_folders(s)},
            }
            for s in config.seeds.sources
        ]
        # `select` (SpeedOnly) only decides which images exist, and the shards' image ids are
        # hashed anyway; the sources are above, with their files' content.
        seeds = output_settings(config.seeds)
        del seeds["sources"]
        if seeds["max_image_pixels"] == MAX_IMAGE_PIXELS:
            del seeds[
                "max_image_pixels"
            ]  # the default refuses what Pillow always refused: no output changes
        return {"sources": sources, **seeds}

    def process(self, shard: ShardSpec, inputs: StageInputs, ctx: RunContext) -> StageOutput:
        out = StageOutput()
        sources = open_sources(self.config.seeds.sources)  # cached: planning indexed them already
        for image_id in shard.image_ids:
            listed = sources.views(image_id)
            if not listed:
                out.errors.append(
                    ctx.error(
                        "image_vanished", "image no longer listed by any source", image_id=image_id
                    )
                )
                continue
            try:
                views = self._views(image_id, listed, out, ctx)
                if (
                    views
                ):  # else every source's record was unusable: its bad_annotation rows say why
                    self._seed_image(image_id, views, out, ctx)
            except (
                Exception
            ) as e:  # one image's fault (out of memory, a bug on odd input) costs only that image
                out.errors.append(
                    ctx.error(
                        "seed_failed", f"image skipped: {type(e).__name__}: {e}", image_id=image_id
                    )
                )
        return out

    @staticmethod
    def _views(
        image_id: str, listed: list[tuple[Opened, int | str]], out: StageOutput, ctx: RunContext
    ) -> list[tuple[Opened, ImageSeeds]]:
        views = []
        for opened, native in listed:
            try:
                seeds = opened.opened_reader.read(native)
            except (ValueError, KeyError, TypeError, OSError) as e:
                out.errors.append(
                    ctx.error(
                        "bad_annotation",
                        f"{opened.opened_reader.dataset} record unusable: {type(e).__name__}: {e}",
                        image_id=image_id,
                        source=opened.path,
                    )
                )
                continue
            out.errors.extend(
                ctx.error(p.kind, p.reason, image_id=image_id, source=p.source or opened.path)
                for p in seeds.problems
            )
            views.append((opened, seeds))
        return views

    def _seed_image(
        self,
        image_id: str,
        views: list[tuple[Opened, ImageSeeds]],
        out: StageOutput,
        ctx: RunContext,
    ) -> None:
        attached = self._attach(image_id, views, out, ctx)
        if attached is None:
            return
        uri, width, height, content_hash = attached
        joined = self.joiner.join(
            image_id,
            [View(s, o.path, o.opened_reader.model) for o, s in views],
            width,
            height,
            ctx.run_id,
        )
        out.errors.extend(
            ctx.error(p.kind, p.reason, image_id=image_id, source=p.source) for p in joined.problems
        )
        images = [s.image for _, s in views]
        coco_id = int(image_id.split(":", 1)[1]) if image_id.startswith("coco:") else None
        out.add(
            "images",
            ImageRecord(
                image_id=image_id,
                sources=sorted(set(joined.datasets)),
                coco_id=coco_id,
                vg_id=next((i.vg_id for i in images if i.vg_id is not None), None),
                gqa_id=next((i.gqa_id for i in images if i.gqa_id is not None), None),
                psg_id=next((i.psg_id for i in images if i.psg_id is not None), None),
                file_uri=uri,
                width=width,
                height=height,
                split=next((i.split for i in images if i.split), None),
                content_hash=content_hash,
            ),
        )
        out.add("regions", *joined.regions)
        out.add("relations", *joined.relations)

    def _attach(
        self,
        image_id: str,
        views: list[tuple[Opened, ImageSeeds]],
        out: StageOutput,
        ctx: RunContext,
    ) -> tuple[str, int, int, str] | None:
        """(file uri, width, height, sha256) of the image, or None (with an error) to skip it.

        The first source with an image folder gives the file; without one, the first source
        that knows the size gives it, and the file stays where the annotations say it is.
        """
        max_pixels = self.config.seeds.max_image_pixels
        for opened, seeds in views:
            img = seeds.image
            if opened.opened_reader.images is None or not img.file_name:
                continue
            uri = _join_path(opened.opened_reader.images, img.file_name)
            try:
                checked = check_image(uri, max_pixels)
            except ImageFileError as e:
                out.errors.append(ctx.error(e.kind, str(e), image_id=image_id, source=uri))
                return None
            if (
                img.width
                and img.height
                and (checked.width, checked.height) != (img.width, img.height)
            ):
                out.errors.append(
                    ctx.error(
                        "image_size_mismatch",
                        f"file is {checked.width}x{checked.height} but the annotations say {img.width}x{img.height}; image skipped",
                        image_id=image_id,
                        source=uri,
                    )
                )
                return None
            return uri, checked.width, checked.height, checked.sha256
        sized = next(
            (
                (s.image, w, h)
                for _, s in views
                if (w := s.image.width) is not None
                and (h := s.image.height) is not None
                and w
                and h
            ),
            None,
        )
        if sized is None:
            out.errors.append(
                ctx.error(
                    "image_size_unknown",
                    "no source gives this image's size and no image folder is set (--images / `images:`); image skipped",
                    image_id=image_id,
                )
            )
            return None
        image, width, height = sized
        uri = (
            next((s.image.url for _, s in views if s.image.url), None)
            or image.file_name
            or image_id
        )
        return uri, width, height, ""
