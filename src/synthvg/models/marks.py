"""Set-of-Mark inputs shared by the LLM stages: which regions to show, and the images sent.

Every model-backed stage that talks about regions by number (teacher, editor) marks them the
same way, so an id in a prompt always means the number drawn on the image.
"""

from __future__ import annotations

import io

from PIL import Image

from synthvg.render import draw_regions


def select_regions(regions: list[dict], max_regions: int) -> list[dict]:
    """The largest ``max_regions`` regions, in id order (ids stay the dataset's region ids)."""
    largest = sorted(regions, key=lambda r: (-r["area"], r["region_id"]))[:max_regions]
    return sorted(largest, key=lambda r: r["region_id"])


def jpeg_bytes(image: Image.Image, max_side: int) -> bytes:
    """``image`` as JPEG, downscaled so its longest side is at most ``max_side``."""
    image = image.convert("RGB")
    scale = max_side / max(image.size)
    if scale < 1:
        image = image.resize(
            (round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS
        )
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def marked_image_bytes(image: Image.Image, regions: list[dict], max_side: int) -> bytes:
    """The Set-of-Mark rendering (masks, box outlines, ids) as JPEG."""
    return jpeg_bytes(draw_regions(image, regions), max_side)
