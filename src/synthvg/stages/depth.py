"""Depth: a relative depth map per image, and per region the median and spread inside its mask.

Depth is Depth-Anything's relative depth scaled to [0, 1] within each image, larger = nearer
(``models.depth_anything``), which is what the spatial rules for "in front of" and "behind"
compare. With ``save_maps`` each map is also written as a 16-bit PNG under
``ROOT/depth_maps/`` and linked from the ``images`` view (``depth_uri``).
"""

from __future__ import annotations

import io
import re

import numpy as np
from PIL import Image

from synthvg import masks
from synthvg.config.build import BuildConfig
from synthvg.config.depth import DepthAnythingConfig
from synthvg.config.fields import output_settings
from synthvg.models.amg import work_size
from synthvg.models.backends import DEPTH, DepthModel
from synthvg.models.identity import path_identity
from synthvg.schemas import DepthMapRecord, RegionDepthRecord
from synthvg.stages.base import (
    RunContext,
    ShardSpec,
    Stage,
    StageInputs,
    StageOutput,
    shared_model,
    stable_hash,
)
from synthvg.stages.common import enabled, load_rgb, per_image
from synthvg.storage import Dataset


def depth_stats(depth: np.ndarray, mask: np.ndarray) -> tuple[float | None, float | None]:
    """(median, interquartile range) of ``depth`` inside ``mask``; (None, None) when empty.
    A mask at another size than the map is resized to it first (nearest neighbour)."""
    if mask.shape != depth.shape:
        mask = np.asarray(
            Image.fromarray(mask.astype(np.uint8)).resize(
                depth.shape[::-1], Image.Resampling.NEAREST
            )
        ).astype(bool)
    values = depth[mask]
    if values.size == 0:
        return None, None
    q25, q50, q75 = np.percentile(values, [25, 50, 75])
    return float(q50), float(q75 - q25)


def depth_png(depth: np.ndarray) -> bytes:
    """A [0, 1] map as a 16-bit grayscale PNG (value / 65535 = depth): 0.2-0.5 MB at 640x480,
    where float32 would take 1.2 MB, with 1/65535 resolution."""
    buf = io.BytesIO()
    Image.fromarray(np.round(np.clip(depth, 0.0, 1.0) * 65535).astype(np.uint16)).save(
        buf, format="PNG"
    )
    return buf.getvalue()


def map_path(image_id: str, model_key: str) -> str:
    """Where an image's map lives under the dataset root; the model's key keeps maps of
    different depth configs apart."""
    return f"depth_maps/{model_key}/{re.sub(r'[^A-Za-z0-9._-]', '_', image_id)}.png"


class DepthStage(Stage):
    name = "depth"
    order = 30
    version = "1"
    writes = ("region_depth", "depth_maps")
    reads = ("images", "regions")

    @classmethod
    def skip_reason(cls, config: BuildConfig) -> str | None:
        if config.depth.backend == "none":
            return "no depth backend configured (depth.backend: none); depth_median stays NULL"
        return None

    @classmethod
    def dry_run_mode(cls, config: BuildConfig) -> str:
        return "model"

    @classmethod
    def fingerprint_payload(cls, config: BuildConfig) -> dict:
        d = enabled(config.depth, DepthAnythingConfig)
        return {"config": output_settings(d), "model": path_identity(d.path)}

    def __init__(self, config: BuildConfig):
        super().__init__(config)
        self.depth = enabled(config.depth, DepthAnythingConfig)
        self.model: DepthModel = shared_model(  # loads once per worker, and per depth settings
            self,
            "model",
            {"config": self.depth, "model": path_identity(self.depth.path)},
            lambda: DEPTH.create(self.depth.backend, self.depth, config),
        )
        self.dataset = Dataset(config.out)
        self.model_key = stable_hash(self.fingerprint_payload(config))[:12]

    def process(self, shard: ShardSpec, inputs: StageInputs, ctx: RunContext) -> StageOutput:
        out = StageOutput()
        regions_by_image = inputs.by_image("regions")
        images = inputs.rows("images")
        step = self.depth.batch_size

        def failed(image: dict, kind: str, reason: str) -> None:
            out.errors.append(
                ctx.error(kind, reason, image_id=image["image_id"], source=image["file_uri"])
            )

        def predict(batch: list[tuple[dict, np.ndarray]]) -> list[np.ndarray]:
            sizes = [work_size(i["height"], i["width"], self.depth.max_side) for i, _ in batch]
            return self.model.predict([rgb for _, rgb in batch], sizes)

        for start in range(0, len(images), step):
            # the model sees the image at most at max_side (work_size): decode no larger
            batch = [
                (i, rgb)
                for i in images[start : start + step]
                if (rgb := load_rgb(i, out, ctx, self.depth.max_side)) is not None
            ]
            maps = per_image(
                predict,
                batch,
                lambda item, kind, reason: failed(item[0], kind, reason),
                "depth_failed",
            )
            for (image, _), depth in zip(batch, maps, strict=True):
                if depth is not None:
                    self._record(image, depth, regions_by_image.get(image["image_id"], []), out)
        return out

    def _record(
        self, image: dict, depth: np.ndarray, regions: list[dict], out: StageOutput
    ) -> None:
        image_id = image["image_id"]
        for r in regions:
            median, spread = depth_stats(
                depth, masks.decode(masks.region_mask(r, image["height"], image["width"]))
            )
            out.add(
                "region_depth",
                RegionDepthRecord(
                    image_id=image_id,
                    region_id=r["region_id"],
                    depth_median=median,
                    depth_spread=spread,
                    depth_model=self.model.name,
                ),
            )
        if self.depth.save_maps:
            rel = map_path(image_id, self.model_key)
            self.dataset.write_file(rel, depth_png(depth))
            out.add(
                "depth_maps",
                DepthMapRecord(
                    image_id=image_id, depth_uri=self.dataset.uri(rel), depth_model=self.model.name
                ),
            )
