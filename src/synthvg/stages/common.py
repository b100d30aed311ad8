"""What stages share, so that stage modules never import each other: decoding a shard's images
to RGB, running a batched model so that one bad image costs only itself, a region's mask, the
regions later stages see, and which stage wrote a relation.

LLM-backed stages share more in :mod:`synthvg.stages.llm_stage` (kept apart so that the model
stages do not import the OpenAI SDK). Neither module imports a stage module; a test checks that
stage modules import only these, :mod:`synthvg.stages.base` and :mod:`synthvg.stages.dag`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np

from synthvg.config.build import BuildConfig
from synthvg.image_files import ImageFileError, decode, open_header, read_bytes, to_rgb
from synthvg.models.errors import ImageError
from synthvg.stages.base import STAGE_OF_RELATIONS as STAGE_OF_RELATIONS
from synthvg.stages.base import RunContext, StageInputs, StageOutput

T = TypeVar("T")
R = TypeVar("R")
S = TypeVar("S")


def enabled(section: object, kind: type[S]) -> S:
    """A stage's config section as the backend the stage runs with (a stage is only built, and
    only fingerprinted, when its section is not ``backend: none``)."""
    if not isinstance(section, kind):
        raise TypeError(f"expected a {kind.__name__} section, got {type(section).__name__}")
    return section


def load_rgb(
    image: dict, out: StageOutput, ctx: RunContext, max_side: int | None = None
) -> np.ndarray | None:
    """The image as RGB, or None with the reason in ``out.errors`` (unreadable, or no longer the
    size the seeds stage recorded, which masks depend on: checked from the header, before any
    pixel is decoded). With ``max_side``, for stages that work at most at that size, a larger
    image is decoded downscaled (long side still >= ``max_side``), so memory stays bounded."""
    uri = image["file_uri"]
    try:
        img = open_header(read_bytes(uri), uri)
        if img.size != (image["width"], image["height"]):
            reason = f"file is now {img.size[0]}x{img.size[1]}, the images table says {image['width']}x{image['height']}"
            out.errors.append(
                ctx.error("image_size_mismatch", reason, image_id=image["image_id"], source=uri)
            )
            return None
        return to_rgb(decode(img, uri, max_side))
    except ImageFileError as e:
        out.errors.append(ctx.error(e.kind, str(e), image_id=image["image_id"], source=uri))
        return None
    except MemoryError:
        reason = f"ran out of memory converting the {image['width']}x{image['height']} image to RGB"
        out.errors.append(
            ctx.error("image_too_large", reason, image_id=image["image_id"], source=uri)
        )
        return None


def per_image(
    fn: Callable[[list[T]], list[R]],
    items: list[T],
    on_error: Callable[[T, str, str], None],
    kind: str,
) -> list[R | None]:
    """``fn`` over the whole batch; if that fails, over each item alone, so only the items that
    fail by themselves are lost (reported to ``on_error`` as ``ImageError.kind`` or ``kind``)."""
    if len(items) > 1:
        try:
            return list(fn(items))
        except Exception:  # retried one by one below, to find the images at fault
            pass
    out: list[R | None] = []
    for item in items:
        try:
            out.extend(fn([item]))
        except ImageError as e:
            on_error(item, e.kind, str(e))
            out.append(None)
        except Exception as e:  # a model failing on one image must not stop the shard
            on_error(item, kind, f"{type(e).__name__}: {e}")
            out.append(None)
    return out


def regions_for_later_stages(inputs: StageInputs, config: BuildConfig) -> dict[str, list[dict]]:
    """Regions per image that later stages see: kept ones, or all (``regions.feed``).

    When the regions stage did not run there are no checks, and every region is used.
    """
    checks = {(c["image_id"], c["region_id"]): c["kept"] for c in inputs.rows("region_checks")}
    use_all = config.regions.feed == "all" or not checks
    out: dict[str, list[dict]] = {}
    for r in inputs.rows("regions"):
        if use_all or checks.get((r["image_id"], r["region_id"]), False):
            out.setdefault(r["image_id"], []).append(r)
    return out
