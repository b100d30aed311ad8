"""What every reader produces: one source's view of one image, in that source's own pixels.

Readers only translate formats. Scaling to the image file, clipping, mask decoding and merging
happen once, in :mod:`synthvg.readers.join`, so every source gets the same treatment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from synthvg.schemas import RegionSource

#: Problems kept per file: a broken release file must not fill memory with error rows.
MAX_PROBLEMS = 10_000


class SourceError(ValueError):
    """An annotation source that cannot be used at all (missing, unreadable, wrong shape)."""


@dataclass(frozen=True)
class Problem:
    """One bad record: where (file and record), what kind, why. It never stops the file."""

    kind: str
    reason: str
    source: str | None = None
    #: The image concerned, in the source's own ids (None: not tied to an image).
    native_id: int | str | None = None


class ProblemLog(list[Problem]):
    """A list of problems that stops growing at :data:`MAX_PROBLEMS` and says how many it left out."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.left_out = 0

    def add(
        self, kind: str, reason: str, record: str | None = None, native_id: int | str | None = None
    ) -> None:
        if len(self) >= MAX_PROBLEMS:
            self.left_out += 1
            return
        source = f"{self.path}#{record}" if record else self.path
        self.append(Problem(kind, reason, source, native_id))

    def finish(self) -> ProblemLog:
        if self.left_out:
            self.append(
                Problem(
                    "too_many_problems",
                    f"{self.left_out} more bad records were not listed",
                    self.path,
                )
            )
            self.left_out = 0
        return self


@dataclass
class SourceImage:
    """An image as one source knows it."""

    dataset: str
    native_id: int | str
    width: int | None
    height: int | None
    #: Path of the image file relative to the source's image folder.
    file_name: str | None
    #: Where the annotations say the file can be downloaded.
    url: str | None = None
    split: str | None = None
    coco_id: int | None = None
    vg_id: int | None = None
    gqa_id: str | None = None
    psg_id: int | None = None


@dataclass
class SourceRegion:
    """One annotated region in its source's pixels; its box may lie partly outside the image."""

    key: str
    #: xyxy in the source's pixels.
    box: tuple[float, float, float, float]
    source: RegionSource
    label: str | None = None
    #: A COCO segmentation (polygons or RLE dict) or an already decoded :class:`RLE`.
    segmentation: object = None
    descriptions: list[str] = field(default_factory=list)
    attributes: list[str] = field(default_factory=list)
    is_crowd: bool = False
    #: Other names (synonyms, synsets) that help decide whether two sources name the same thing.
    names: tuple[str, ...] = ()
    #: Regions with the same link are one annotation seen by several sources (COCO ann ids).
    link: str | None = None
    #: A description-only region (VG region description): it joins the region it overlaps most.
    phrase: bool = False


@dataclass(frozen=True)
class SourceRelation:
    key: str
    subject: str
    object: str
    predicate: str


@dataclass
class ImageSeeds:
    """Everything one source says about one image."""

    image: SourceImage
    regions: list[SourceRegion] = field(default_factory=list)
    relations: list[SourceRelation] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


NativeId = TypeVar("NativeId", int, str)


class Reader(Protocol[NativeId]):
    """An indexed annotation source: lists its images, reads one image's annotations on demand.
    ``NativeId`` is the type of the source's own image ids (COCO: ``int``, ADE20K: ``str``)."""

    @property
    def dataset(self) -> str:
        """The dataset name written to ``images.sources`` and ``regions.sources.dataset``."""
        ...

    @property
    def family(self) -> str:
        """``coco`` (ids are COCO image ids), ``vg`` (VG image ids) or ``ade20k`` (file names)."""
        ...

    @property
    def model(self) -> str:
        """``relations.model`` for this source's relations (``visual-genome-1.4``)."""
        ...

    @property
    def native_type(self) -> type[NativeId]: ...

    @property
    def images(self) -> str | None:
        """Folder the image files live under (None: use the sizes the annotations give)."""
        ...

    @property
    def problems(self) -> list[Problem]:
        """Faults found while indexing (plan time)."""
        ...

    def native_ids(self) -> list[NativeId]: ...

    def has(self, native_id: NativeId) -> bool: ...

    def read(self, native_id: NativeId) -> ImageSeeds: ...


def xywh_box(x: float, y: float, w: float, h: float) -> tuple[float, float, float, float]:
    return (float(x), float(y), float(x) + float(w), float(y) + float(h))


def are_numbers(*values: object) -> bool:
    """All ints or finite floats (bools are not numbers here, nor NaN or infinity: a JSON file
    may hold ``NaN``, and one such coordinate must cost only its annotation)."""
    for v in values:
        if type(v) is not int and (type(v) is not float or not math.isfinite(v)):
            return False
    return True


def as_flag(value: object) -> bool | None:
    """A 0/1 flag (``iscrowd``) as a bool; None for anything else. ``"no"`` is not False:
    ``bool("no")`` would make it a crowd."""
    if type(value) is bool:
        return value
    return bool(value) if type(value) is int and value in (0, 1) else None


def is_box(values: object, n: int = 4) -> bool:
    return isinstance(values, list | tuple) and len(values) == n and are_numbers(*values)
