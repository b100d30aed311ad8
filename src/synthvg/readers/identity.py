"""One image id per real image, whichever source names it.

COCO, LVIS, RefCOCO and PSG use COCO image ids: their images are ``coco:<id>``. VG and GQA use
VG ids (GQA's are VG's, as strings); VG's ``image_data.json`` gives the COCO id of ~51K of
them, which are then ``coco:<coco id>`` too, the rest ``vg:<id>``. ADE20K images are
``ade20k:<name>``. A COCO id that two VG images claim goes to the smaller VG id.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from synthvg.readers.base import Problem

PREFIX_ORDER = ("coco", "vg", "gqa", "ade20k")


class Identity:
    """Maps between each source's native ids and the build's image ids."""

    def __init__(self, coco_ids: Iterable[Mapping[int, int]]):
        self.vg_to_coco: dict[int, int] = {}
        self.coco_to_vg: dict[int, int] = {}
        self.problems: list[Problem] = []
        for mapping in coco_ids:
            for vg_id, coco_id in sorted(mapping.items()):
                have = self.coco_to_vg.get(coco_id)
                if have is None:
                    self.coco_to_vg[coco_id] = vg_id
                    self.vg_to_coco[vg_id] = coco_id
                elif have != vg_id:
                    self.problems.append(
                        Problem(
                            "duplicate_image",
                            f"VG images {have} and {vg_id} both claim COCO image {coco_id}; {vg_id} stays vg:{vg_id}",
                            native_id=vg_id,
                        )
                    )

    def image_id(self, family: str, native: int | str) -> str:
        if family == "coco":
            return f"coco:{native}"
        if family == "vg":
            if isinstance(native, str):
                if not native.isdigit():
                    return f"gqa:{native}"
                native = int(native)
            coco = self.vg_to_coco.get(native)
            return f"coco:{coco}" if coco is not None else f"vg:{native}"
        return f"{family}:{native}"

    def native(self, family: str, image_id: str) -> int | str | None:
        """The id a source of ``family`` knows ``image_id`` by (None: it cannot know it)."""
        prefix, _, rest = image_id.partition(":")
        if family == "coco":
            return int(rest) if prefix == "coco" else None
        if family == "vg":
            if prefix == "coco":
                return self.coco_to_vg.get(int(rest))
            if prefix == "vg":
                return int(rest) if int(rest) not in self.vg_to_coco else None
            return rest if prefix == "gqa" else None
        return rest if prefix == family else None


def sort_key(image_id: str) -> tuple:
    """Image ids in a fixed order: by dataset, then by number (``coco:9`` before ``coco:10``)."""
    prefix, _, rest = image_id.partition(":")
    rank = PREFIX_ORDER.index(prefix) if prefix in PREFIX_ORDER else len(PREFIX_ORDER)
    return (rank, prefix, 0, int(rest), "") if rest.isdigit() else (rank, prefix, 1, 0, rest)
