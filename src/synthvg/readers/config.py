"""Seed sources' settings: one section per annotation release, tagged by ``kind``.

Each source knows its files (paths are :data:`~synthvg.config.fields.InputPath` fields, so they
resolve against the config's folder and preflight checks them), which of them decide what it
says (fingerprints hash those), how to open its reader, and which sources a list of release
files stands for (``synthvg ingest``). :data:`SOURCES` is the registry by ``kind``: a new
release is one class here and its reader module, nothing else.
"""

from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, get_args

from pydantic import Discriminator, Field, Tag, model_validator

from synthvg.config.base import Section
from synthvg.config.fields import InputPath, SpeedOnly

if TYPE_CHECKING:
    from synthvg.readers.base import Reader


class SourceSection(Section):
    """What every seed source has besides its files."""

    allow_empty: Annotated[bool, SpeedOnly("decides whether a build starts, not its rows")] = Field(
        False,
        description="the source may yield no images; otherwise `synthvg build` stops (exit 2) when it does",
    )

    # Each source also has ``dataset``: the dataset its rows are labelled with (a class
    # attribute, or a property where the config decides it).

    def main_path(self) -> str:
        """The file (or folder) that names the source in messages."""
        return getattr(self, "annotations")  # noqa: B009  (every file-based source has it)

    def annotation_files(self) -> list[str]:
        """The single files whose content decides what the source says."""
        return [
            p for p in (getattr(self, "annotations", None), getattr(self, "image_data", None)) if p
        ]

    def annotation_folders(self) -> list[str]:
        """Folders of per-image annotation files (fingerprinted by their listing)."""
        return []

    def open_reader(self) -> Reader[Any]:
        """A new reader over the source (raises ``SourceError`` when it cannot be read)."""
        raise NotImplementedError

    @classmethod
    def from_release(cls, files: list[str], folders: list[str], images: str | None) -> list[dict]:
        """The sources (as config mappings) that release files and folders stand for."""
        if folders:
            raise ValueError(
                f"--format {cls.tag()} takes annotation files, not folders: {folders[0]}"
            )
        return [{"kind": cls.tag(), "annotations": f, "images": images} for f in files]

    @classmethod
    def tag(cls) -> str:
        """The ``kind`` that selects this source."""
        return typing.get_args(cls.model_fields["kind"].annotation)[0]


class CocoSource(SourceSection):
    """COCO ``instances_*.json`` (2014 or 2017 names)."""

    kind: Literal["coco"] = "coco"
    annotations: InputPath = Field(description="path to instances_*.json")
    images: InputPath | None = Field(
        None,
        description="folder holding the images named by file_name (none: sizes from the annotations)",
    )
    split: str | None = Field(None, description="override the split (default: from coco_url)")

    dataset: ClassVar[str] = "coco"

    def open_reader(self) -> Reader[Any]:
        from synthvg.readers.coco import CocoReader

        return CocoReader(self.annotations, self.images, self.split)


class LvisSource(SourceSection):
    """LVIS v1 or v0.5 (``lvis_v1_train.json``, ...)."""

    kind: Literal["lvis"]
    annotations: InputPath = Field(description="lvis_v1_{train,val}.json or lvis_v0.5_*.json")
    images: InputPath | None = Field(
        None, description="COCO root holding train2017/ and val2017/ (the file comes from coco_url)"
    )

    dataset: ClassVar[str] = "lvis"

    def open_reader(self) -> Reader[Any]:
        from synthvg.readers.lvis import LvisReader

        return LvisReader(self.annotations, self.images)


class RefcocoSource(SourceSection):
    """RefCOCO, RefCOCO+ or RefCOCOg: a refs pickle and its ``instances.json``."""

    kind: Literal["refcoco"]
    refs: InputPath = Field(description="refs(unc).p, refs(umd).p or refs(google).p")
    instances: InputPath | None = Field(
        None, description="the matching instances.json (default: the one beside refs)"
    )
    name: Literal["refcoco", "refcoco+", "refcocog"] | None = Field(
        None, description="which dataset (default: the refs file's folder name, as released)"
    )
    images: InputPath | None = Field(
        None, description="folder of the COCO train2014 images (COCO_train2014_*.jpg)"
    )

    @property
    def dataset(self) -> str:
        folder = Path(self.refs).parent.name.lower()
        return self.name or (folder if folder in ("refcoco", "refcoco+", "refcocog") else "refcoco")

    def main_path(self) -> str:
        return self.refs

    def annotation_files(self) -> list[str]:
        return [
            self.refs,
            self.instances or os.path.join(os.path.dirname(self.refs), "instances.json"),
        ]

    def open_reader(self) -> Reader[Any]:
        from synthvg.readers.refcoco import RefcocoReader

        return RefcocoReader(self.refs, self.instances, self.images, self.dataset)

    @classmethod
    def from_release(cls, files: list[str], folders: list[str], images: str | None) -> list[dict]:
        refs = files + [str(r) for d in folders for r in sorted(Path(d).glob("refs(*).p"))]
        if not refs:
            raise ValueError("no refs(<splitBy>).p file given or found in the folders given")
        return [{"kind": "refcoco", "refs": r, "images": images} for r in refs]


class VgSource(SourceSection):
    """Visual Genome v1.2 / v1.4: a folder of the release's files, or the files one by one."""

    kind: Literal["vg"]
    root: InputPath | None = Field(
        None, description="folder holding image_data.json, objects.json, ... (official names)"
    )
    image_data: InputPath | None = None
    objects: InputPath | None = None
    attributes: InputPath | None = None
    relationships: InputPath | None = None
    region_descriptions: InputPath | None = None
    scene_graphs: InputPath | None = None
    images: InputPath | None = Field(None, description="folder holding VG_100K/ and VG_100K_2/")
    version: str = Field(
        "1.4", description="release version, written to relations.model (visual-genome-1.4)"
    )

    #: the release's files (readers.vg.FILES), each a key of its own
    FILES: ClassVar[tuple[str, ...]] = (
        "image_data",
        "objects",
        "attributes",
        "relationships",
        "region_descriptions",
        "scene_graphs",
    )
    dataset: ClassVar[str] = "vg"

    @model_validator(mode="after")
    def _some_file(self) -> VgSource:
        if self.root is None and all(getattr(self, f) is None for f in self.FILES):
            raise ValueError("give `root` (the folder of the release files) or at least one file")
        return self

    def files(self) -> dict[str, str]:
        """The release files by name: those in ``root``, then those given one by one."""
        from synthvg.readers.vg import release_files

        found = release_files(self.root) if self.root else {}
        found.update({n: v for n in self.FILES if (v := getattr(self, n)) is not None})
        return found

    def main_path(self) -> str:
        files = self.files()
        return files.get("image_data") or next(iter(files.values()), self.root or "")

    def annotation_files(self) -> list[str]:
        return list(self.files().values())

    def open_reader(self) -> Reader[Any]:
        from synthvg.readers.base import SourceError
        from synthvg.readers.vg import VgReader

        files = self.files()
        if not files:
            raise SourceError(
                f"no Visual Genome release files (image_data.json, objects.json, ...) in {self.root}"
            )
        return VgReader(files, self.images, self.version)

    @classmethod
    def from_release(cls, files: list[str], folders: list[str], images: str | None) -> list[dict]:
        source: dict[str, Any] = {
            "kind": "vg",
            "images": images,
            "root": folders[0] if folders else None,
        }
        for f in files:
            name = next((n for n in cls.FILES if Path(f).name.startswith(n)), None)
            if name is None:
                raise ValueError(
                    f"{f} is not a Visual Genome release file ({', '.join(n + '.json' for n in cls.FILES)})"
                )
            source[name] = f
        return [source]


class GqaSource(SourceSection):
    """GQA scene graphs (``train_sceneGraphs.json`` or ``val_sceneGraphs.json``)."""

    kind: Literal["gqa"]
    annotations: InputPath = Field(description="a *_sceneGraphs.json file")
    images: InputPath | None = Field(None, description="folder of the GQA images (<id>.jpg)")
    image_data: InputPath | None = Field(
        None, description="VG image_data.json, to map GQA ids to COCO ids without a vg source"
    )
    version: str = Field("1.1", description="release version, written to relations.model (gqa-1.1)")

    dataset: ClassVar[str] = "gqa"

    def open_reader(self) -> Reader[Any]:
        from synthvg.readers.gqa import GqaReader

        return GqaReader(self.annotations, self.images, f"gqa-{self.version}", self.image_data)


class PsgSource(SourceSection):
    """PSG (OpenPSG ``psg.json``) with the COCO panoptic PNGs."""

    kind: Literal["psg"]
    annotations: InputPath = Field(description="psg.json")
    panoptic: InputPath | None = Field(
        None, description="folder pan_seg_file_name is relative to (default: images)"
    )
    images: InputPath | None = Field(
        None, description="COCO root: file_name (train2017/...) is relative to it"
    )

    dataset: ClassVar[str] = "psg"

    @model_validator(mode="after")
    def _has_masks(self) -> PsgSource:
        if self.panoptic is None and self.images is None:
            raise ValueError(
                "PSG masks are in the COCO panoptic PNGs: give `panoptic` (or `images`)"
            )
        return self

    def annotation_folders(self) -> list[str]:
        return [p for p in (self.panoptic or self.images,) if p]

    def open_reader(self) -> Reader[Any]:
        from synthvg.readers.psg import PsgReader

        return PsgReader(self.annotations, self.panoptic, self.images)

    @classmethod
    def from_release(cls, files: list[str], folders: list[str], images: str | None) -> list[dict]:
        panoptic = folders[0] if folders else None
        return [
            {"kind": "psg", "annotations": f, "panoptic": panoptic, "images": images} for f in files
        ]


class Ade20kSource(SourceSection):
    """ADE20K 2021: per-image ``<name>.json`` and ``<name>_seg.png`` (stage-2 builds)."""

    kind: Literal["ade20k"]
    root: InputPath = Field(description="ADE20K_2021_17_01/images/ADE or any folder below it")
    images: InputPath | None = Field(
        None, description="folder mirroring root that holds the .jpg files (usually root)"
    )

    dataset: ClassVar[str] = "ade20k"

    def main_path(self) -> str:
        return self.root

    def annotation_files(self) -> list[str]:
        return []

    def annotation_folders(self) -> list[str]:
        return [self.root]

    def open_reader(self) -> Reader[Any]:
        from synthvg.readers.ade20k import Ade20kReader

        return Ade20kReader(self.root, self.images)

    @classmethod
    def from_release(cls, files: list[str], folders: list[str], images: str | None) -> list[dict]:
        return [{"kind": "ade20k", "root": d, "images": images} for d in folders + files]


def _kind_tag(value: Any) -> str:
    """Discriminate sources on ``kind``, defaulting to coco (the first configs had no kind)."""
    return value.get("kind", "coco") if isinstance(value, dict) else getattr(value, "kind", "coco")


SeedSource = Annotated[
    Annotated[CocoSource, Tag("coco")]
    | Annotated[LvisSource, Tag("lvis")]
    | Annotated[RefcocoSource, Tag("refcoco")]
    | Annotated[VgSource, Tag("vg")]
    | Annotated[GqaSource, Tag("gqa")]
    | Annotated[PsgSource, Tag("psg")]
    | Annotated[Ade20kSource, Tag("ade20k")],
    Discriminator(_kind_tag),
]

#: Every source section by its ``kind`` (the tags of :data:`SeedSource`).
SOURCES: dict[str, type[SourceSection]] = {
    cls.tag(): cls
    for cls in (
        CocoSource,
        LvisSource,
        RefcocoSource,
        VgSource,
        GqaSource,
        PsgSource,
        Ade20kSource,
    )
}
DatasetName = Literal[
    "coco", "lvis", "refcoco", "refcoco+", "refcocog", "psg", "vg", "gqa", "ade20k"
]
DATASETS: tuple[str, ...] = get_args(DatasetName)
