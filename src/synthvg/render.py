"""Draw an image's regions (masks, boxes, numeric ids) and its relations, for people to look at.

:func:`draw_regions` is the marking step on its own (also what Set-of-Mark prompting needs);
:func:`render_scene_graph` adds a side panel listing the relations.
"""

from __future__ import annotations

import colorsys
import typing
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from synthvg import masks
from synthvg.image_files import read_image
from synthvg.schemas.vocabulary import RelationStage
from synthvg.storage import Snapshot, connect, fetch_dicts

if TYPE_CHECKING:
    from synthvg.schemas import Box


class Corners(NamedTuple):
    """A row's box as drawn (the :class:`~synthvg.schemas.Box` fields, without a record)."""

    x1: float
    y1: float
    x2: float
    y2: float


def palette(i: int) -> tuple[int, int, int]:
    """Distinct, stable colours: golden-ratio hue steps."""
    h = (i * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.75, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def load_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def draw_regions(image: Image.Image, regions: list[dict], alpha: float = 0.35) -> Image.Image:
    """Overlay each region's mask, box outline and id. ``regions``: rows of the regions table."""
    pixels = np.array(image.convert("RGB"))
    for r in regions:
        if r.get("mask") is None:
            continue
        m = masks.decode_row(r["mask"])
        if m.shape != pixels.shape[:2]:
            continue
        rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        if not rows.size:
            continue
        # Blend inside the mask's bounding window only: most masks cover a small part.
        window = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        inside, part = m[window], pixels[window]
        colour = np.array(palette(r["region_id"]), dtype=np.float32)
        part[inside] = (1 - alpha) * part[inside] + alpha * colour
    out = Image.fromarray(pixels)
    draw = ImageDraw.Draw(out)
    text_font = load_font(max(12, min(out.size) // 40))
    boxes = [Corners(**r["bbox"]) for r in regions]
    labels = [str(r["region_id"]) for r in regions]
    sizes: list[tuple[int, int]] = []
    for label in labels:
        x0, y0, x1, y1 = draw.textbbox((0, 0), label, font=text_font)
        sizes.append((round(x1 - x0) + 4, round(y1 - y0) + 2))
    for r, b in zip(
        regions, boxes, strict=True
    ):  # every outline first, so no box line crosses a tag
        draw.rectangle([b.x1, b.y1, b.x2, b.y2], outline=palette(r["region_id"]), width=2)
    for r, label, (tx, ty) in zip(
        regions, labels, tag_positions(boxes, sizes, out.size), strict=True
    ):
        box = draw.textbbox((tx, ty), label, font=text_font)
        draw.rectangle([box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1], fill=(0, 0, 0))
        draw.text((tx, ty), label, fill=palette(r["region_id"]), font=text_font)
    return out


def tag_positions(
    boxes: Sequence[Corners | Box], sizes: list[tuple[int, int]], image_size: tuple[int, int]
) -> list[tuple[float, float]]:
    """Where each region's id tag goes: its box's top-left corner, else the first of its other
    corners or of the places below the top-left that no earlier tag covers (small objects side
    by side would otherwise print their ids over each other)."""
    width, height = image_size
    placed: list[tuple[float, float, float, float]] = []
    out = []
    for b, (w, h) in zip(boxes, sizes, strict=True):
        candidates = [
            (b.x1 + 2, b.y1 + 2),
            (b.x2 - w - 2, b.y1 + 2),
            (b.x1 + 2, b.y2 - h - 2),
            (b.x2 - w - 2, b.y2 - h - 2),
        ]
        candidates += [(b.x1 + 2, b.y1 + 2 + k * (h + 2)) for k in range(1, 8)] + [
            (b.x1 + 2 + k * (w + 2), b.y1 + 2) for k in range(1, 8)
        ]
        spots = [(min(max(x, 0), width - w), min(max(y, 0), height - h)) for x, y in candidates]
        free = next(
            (
                (x, y)
                for x, y in spots
                if not any(
                    x < px2 and px1 < x + w and y < py2 and py1 < y + h
                    for px1, py1, px2, py2 in placed
                )
            ),
            spots[0],
        )
        placed.append((free[0], free[1], free[0] + w, free[1] + h))
        out.append(free)
    return out


def render_scene_graph(
    image: Image.Image,
    regions: list[dict],
    relations: list[dict],
    max_relations: int = 40,
    dropped: int = 0,
) -> Image.Image:
    """The marked image with a panel listing regions' labels and relations beside it.

    ``dropped``: how many relations the filters dropped and the caller left out; the panel says
    so, and marks unverified relations (no filter kept or dropped them) with ``?``.
    """
    marked = draw_regions(image, regions)
    text_font = load_font(14)
    names = {r["region_id"]: (r.get("label") or "region") for r in regions}
    lines = ["REGIONS"] + [f"{rid}: {name}" for rid, name in sorted(names.items())][:30]
    if len(names) > 30:
        lines.append(f"... {len(names) - 30} more")
    lines += ["", f"RELATIONS ({len(relations)})"]
    for rel in relations[:max_relations]:
        s, o = rel["subject_id"], rel["object_id"]
        mark = "? " if rel.get("verdict") == "unverified" else ""
        lines.append(
            f"{mark}{s} {names.get(s, '?')} -[{rel['predicate']}]-> {o} {names.get(o, '?')}"
        )
    if len(relations) > max_relations:
        lines.append(f"... {len(relations) - max_relations} more")
    lines += ["", *relation_legend(relations, dropped)]
    line_h = 18
    panel_w = 420
    height = max(marked.height, line_h * (len(lines) + 2))
    canvas = Image.new("RGB", (marked.width + panel_w, height), (250, 250, 250))
    canvas.paste(marked, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, text in enumerate(lines):
        draw.text((marked.width + 10, 10 + i * line_h), text, fill=(20, 20, 20), font=text_font)
    return canvas


def relation_legend(relations: list[dict], dropped: int) -> list[str]:
    """What the relation list shows and what it hides, in words."""
    unverified = sum(rel.get("verdict") == "unverified" for rel in relations)
    return [
        f"shown: kept and unverified; {dropped} dropped by the filters hidden",
        f"? = unverified ({unverified}): no filter kept or dropped it",
    ]


def render_image_from_dataset(
    root: str | Snapshot, image_id: str, stage: str | None = None
) -> Image.Image:
    """Look an image up in a built dataset (a path, or a :class:`~synthvg.storage.Snapshot`)
    and render it with its regions and relations."""
    stages = typing.get_args(RelationStage)
    if stage is not None and stage not in stages:
        raise ValueError(f"unknown stage {stage!r}: relations come from {', '.join(stages)}")
    con = connect(root)
    try:
        images = fetch_dicts(con, "SELECT * FROM images WHERE image_id = ?", [image_id])
        if not images:
            sample = [
                r["image_id"]
                for r in fetch_dicts(con, "SELECT image_id FROM images ORDER BY image_id LIMIT 5")
            ]
            url = root.url if isinstance(root, Snapshot) else root
            raise KeyError(f"no image {image_id!r} in {url}; ids look like {sample}")
        image = images[0]
        regions = fetch_dicts(
            con, "SELECT * FROM regions WHERE image_id = ? ORDER BY region_id", [image_id]
        )
        where = "image_id = ?" + (" AND stage = ?" if stage else "")
        params = [image_id, stage] if stage else [image_id]
        relations = fetch_dicts(
            con,
            f"SELECT * FROM relations WHERE {where} AND verdict <> 'dropped' ORDER BY subject_id, object_id, predicate",
            params,
        )
        dropped = con.execute(
            f"SELECT count(*) FROM relations WHERE {where} AND verdict = 'dropped'", params
        ).fetchall()[0][0]
    finally:
        con.close()
    _, img = read_image(image["file_uri"])
    return render_scene_graph(img, regions, relations, dropped=dropped)
