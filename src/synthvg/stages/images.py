"""What model stages share: decoding a shard's images to RGB, and running a batched model so
that one bad image costs only itself."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
from PIL import Image

from synthvg.models.errors import ImageError
from synthvg.stages.base import RunContext, StageOutput
from synthvg.stages.seeds import read_image

T = TypeVar("T")
R = TypeVar("R")


def to_rgb(img: Image.Image) -> np.ndarray:
    """H x W x 3 uint8 from any mode: grayscale is repeated, alpha dropped, 16-bit and float
    images scaled down (PIL alone would clip them to white). EXIF orientation is not applied:
    annotations are in the file's stored orientation."""
    if img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        img = Image.fromarray(((a - lo) / (hi - lo or 1.0) * 255).astype(np.uint8))
    elif img.mode.startswith("I"):
        a = np.asarray(img, dtype=np.int64)
        img = Image.fromarray(np.clip(a // 257 if a.max() > 255 else a, 0, 255).astype(np.uint8))
    return np.asarray(img.convert("RGB"))


def load_rgb(image: dict, out: StageOutput, ctx: RunContext) -> np.ndarray | None:
    """The image as RGB, or None with the reason in ``out.errors`` (unreadable, or no longer the
    size the seeds stage recorded, which masks depend on)."""
    uri = image["file_uri"]
    try:
        _, img = read_image(uri)
    except ValueError as e:
        out.errors.append(ctx.error("bad_image", str(e), image_id=image["image_id"], source=uri))
        return None
    if img.size != (image["width"], image["height"]):
        reason = f"file is now {img.size[0]}x{img.size[1]}, the images table says {image['width']}x{image['height']}"
        out.errors.append(ctx.error("image_size_mismatch", reason, image_id=image["image_id"], source=uri))
        return None
    return to_rgb(img)


def per_image(
    fn: Callable[[Sequence[T]], list[R]],
    items: Sequence[T],
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
