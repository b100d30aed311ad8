"""LLaVA-SG's entities: the N masks that become graph nodes.

Two sources:

- a dataset's regions (any stage: seed annotations, proposals, SVG's): :func:`dataset_entities`;
- the paper's perception chain (pipeline.md): a **tagger** names what is in the image, an
  **open-vocabulary detector** finds boxes for those names (OWLv2/OWL-ViT or Grounding DINO,
  from a local transformers directory), and **SAM** segments inside each box (box prompts):
  :class:`PerceptionChain`. The tagger is an interface (:class:`Tagger`); the default,
  :class:`LabelTagger`, gives the dataset's labels of the image (RAM is not in transformers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from synthvg import masks as mask_ops
from synthvg.models.errors import ModelLoadError
from synthvg.models.hf_dir import model_type_of
from synthvg.schemas import RLE, Box


@dataclass
class Entity:
    label: str
    box: Box
    mask: RLE
    score: float = 1.0
    region_id: int | None = None


class Tagger(Protocol):
    def tags(self, image: Image.Image, image_id: str | None = None) -> list[str]:
        """Names of what the image shows (deduplicated, in a stable order)."""
        ...


class LabelTagger:
    """The dataset's labels of each image (its regions' labels), the default tagger."""

    def __init__(self, labels: dict[str, list[str]]):
        self.labels = labels

    @classmethod
    def from_root(cls, root: str) -> LabelTagger:
        from synthvg.storage import connect

        con = connect(root)
        try:
            rows = con.execute(
                "SELECT image_id, list(DISTINCT label ORDER BY label) FROM regions "
                "WHERE label IS NOT NULL GROUP BY image_id"
            ).fetchall()
        finally:
            con.close()
        return cls({image_id: list(labels) for image_id, labels in rows})

    def tags(self, image: Image.Image, image_id: str | None = None) -> list[str]:
        return list(self.labels.get(image_id or "", []))


def dataset_entities(root: str, image_id: str, *, table: str = "regions") -> list[Entity]:
    """The image's regions (seed annotations merged with what later stages added) or the
    regions stage's ``proposals`` as entities; a region with only a box gets its box as mask."""
    from synthvg.masks import region_mask
    from synthvg.storage import connect
    from synthvg.storage.query import fetch_dicts

    sql = {
        "regions": "SELECT region_id, bbox, mask, label FROM regions WHERE image_id = ? ORDER BY region_id",
        "proposals": "SELECT proposal_id AS region_id, bbox, mask, NULL AS label FROM proposals "
        "WHERE image_id = ? ORDER BY proposal_id",
    }
    if table not in sql:
        raise ValueError(f"entities come from regions or proposals, not {table!r}")
    con = connect(root)
    try:
        size = con.execute(
            "SELECT width, height FROM images WHERE image_id = ?", [image_id]
        ).fetchone()
        if size is None:
            raise ValueError(f"image {image_id!r} is not in {root}")
        rows = fetch_dicts(con, sql[table], [image_id])
    finally:
        con.close()
    width, height = size
    return [
        Entity(
            r["label"] or "object",
            Box(**r["bbox"]),
            region_mask(r, height, width),
            1.0,
            r["region_id"],
        )
        for r in rows
    ]


class OpenVocabDetector:
    """Boxes for text queries from a local OWLv2 / OWL-ViT or Grounding DINO directory."""

    KINDS = ("owlv2", "owlvit", "grounding-dino")

    def __init__(self, path: str, *, threshold: float = 0.1, device: str = "cpu"):
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        key = "llava_sg.perception.detector"
        self.kind = model_type_of(path, key)
        if self.kind not in self.KINDS:
            raise ModelLoadError(
                f"{key}: {path} holds a {self.kind!r} model, not one of {self.KINDS}"
            )
        self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        self.model = (
            AutoModelForZeroShotObjectDetection.from_pretrained(path, local_files_only=True)
            .to(device)
            .eval()
        )
        self.threshold, self.device = threshold, torch.device(device)

    @torch.inference_mode()
    def detect(self, image: Image.Image, tags: list[str]) -> list[tuple[Box, float, str]]:
        if not tags:
            return []
        size = [(image.height, image.width)]
        if self.kind == "grounding-dino":
            text = ". ".join(t.lower() for t in tags) + "."
            inputs = self.processor(images=image, text=text, return_tensors="pt").to(self.device)
            out = self.model(**inputs)
            res = self.processor.post_process_grounded_object_detection(
                out, inputs.input_ids, threshold=self.threshold, target_sizes=size
            )[0]
        else:
            inputs = self.processor(
                text=[tags],
                images=image,
                return_tensors="pt",
                padding="max_length",
                truncation=True,
            ).to(self.device)
            out = self.model(**inputs)
            res = self.processor.post_process_grounded_object_detection(
                out, threshold=self.threshold, target_sizes=size, text_labels=[tags]
            )[0]
        names = res.get("text_labels") or res.get("labels")
        found = []
        for box, score, name in zip(
            res["boxes"].tolist(), res["scores"].tolist(), names, strict=True
        ):
            b = mask_ops.clip_box(
                Box(x1=box[0], y1=box[1], x2=box[2], y2=box[3]), image.width, image.height
            )
            if b.x2 > b.x1 and b.y2 > b.y1:
                found.append((b, float(score), str(name)))
        return found


class SamBoxSegmenter:
    """SAM from a local transformers directory, prompted with boxes (one mask per box)."""

    def __init__(self, path: str, *, device: str = "cpu"):
        from transformers import SamModel, SamProcessor

        key = "llava_sg.perception.sam"
        if (kind := model_type_of(path, key)) != "sam":
            raise ModelLoadError(f"{key}: {path} holds a {kind!r} model, not SAM")
        self.processor = SamProcessor.from_pretrained(path, local_files_only=True)
        self.model = (
            SamModel.from_pretrained(path, local_files_only=True).to(device).eval()  # type: ignore[arg-type]
        )
        self.device = torch.device(device)

    @torch.inference_mode()
    def segment(self, image: Image.Image, boxes: list[Box]) -> list[RLE]:
        if not boxes:
            return []
        inputs = self.processor(
            images=image,
            input_boxes=[[[b.x1, b.y1, b.x2, b.y2] for b in boxes]],
            return_tensors="pt",
        ).to(self.device)
        out = self.model(**inputs, multimask_output=False)
        masks = self.processor.image_processor.post_process_masks(
            out.pred_masks.cpu(),
            inputs["original_sizes"].cpu(),
            inputs["reshaped_input_sizes"].cpu(),
        )[0][:, 0]
        return [mask_ops.encode(np.asarray(m, dtype=bool)) for m in masks.numpy()]


class PerceptionChain:
    """Tagger -> open-vocabulary detector -> SAM box prompts, with box NMS across tags."""

    def __init__(
        self,
        tagger: Tagger,
        detector: OpenVocabDetector,
        segmenter: SamBoxSegmenter,
        *,
        nms_threshold: float = 0.7,
        max_entities: int = 100,
    ):
        self.tagger, self.detector, self.segmenter = tagger, detector, segmenter
        self.nms_threshold, self.max_entities = nms_threshold, max_entities

    def entities(self, image: Image.Image, image_id: str | None = None) -> list[Entity]:
        image = image.convert("RGB")
        found = self.detector.detect(image, self.tagger.tags(image, image_id))
        if not found:
            return []
        boxes = np.array([[b.x1, b.y1, b.x2, b.y2] for b, _, _ in found], dtype=np.float64)
        keep = mask_ops.nms(boxes, np.array([s for _, s, _ in found]), self.nms_threshold)
        keep = keep[: self.max_entities]
        masks = self.segmenter.segment(image, [found[i][0] for i in keep])
        return [
            Entity(found[i][2], found[i][0], m, found[i][1])
            for i, m in zip(keep, masks, strict=True)
        ]
