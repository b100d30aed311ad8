"""A PSG release (``psg.json`` + panoptic PNGs) for the bundled tinycoco images, for tests and checks.

Real PSG cannot be downloaded here, so this writes OpenPSG's format around COCO images the
repository ships: one segment per COCO annotation of the image (its mask painted into a
panoptic PNG, larger instances first), classes and predicates PSG's own lists, and relations
chosen by a fixed rule over the segments (each segment with the next one: 'beside'; a small
one inside a larger one's box: 'on'), every image in ``test_image_ids``. The relations are
synthetic ground truth: they exercise the evaluation, they are not a benchmark.

    python scripts/tiny_psg.py OUT_DIR [N_IMAGES]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TINYCOCO = REPO / "data" / "tinycoco"


def write_tiny_psg(out: str | Path, n_images: int = 2, split: str = "val2017") -> dict:
    """Write ``OUT/psg.json`` and ``OUT/panoptic_val2017/*.png``; returns the psg source of a
    build config (annotations, panoptic, images)."""
    from pycocotools import mask as mask_utils

    from synthvg.eval.vocab import psg

    out = Path(out)
    vocab = psg()
    ann = json.loads((TINYCOCO / "annotations" / f"instances_{split}.json").read_text())
    names = {c["id"]: c["name"] for c in ann["categories"]}
    by_image: dict[int, list[dict]] = {}
    for a in ann["annotations"]:
        if names[a["category_id"]] in vocab.classes and a["area"] >= 100:
            by_image.setdefault(a["image_id"], []).append(a)
    images = [
        i
        for i in sorted(ann["images"], key=lambda i: i["id"])
        if len(by_image.get(i["id"], [])) >= 2
    ]
    records = []
    pred = {p: i for i, p in enumerate(vocab.predicates)}
    for image in images[:n_images]:
        anns = sorted(by_image[image["id"]], key=lambda a: -a["area"])[:12]
        h, w = image["height"], image["width"]
        ids = np.zeros((h, w), np.int64)
        for i, a in enumerate(anns):
            seg = a["segmentation"]
            rle = (
                mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
                if isinstance(seg, list)
                else mask_utils.frPyObjects(seg, h, w)
            )
            ids[mask_utils.decode(rle).astype(bool)] = i + 1
        png = out / f"panoptic_{split}" / f"{image['id']:012d}.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(
            np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
        ).save(png)
        present = [i for i in range(len(anns)) if (ids == i + 1).any()]
        rels = [[s, o, pred["beside"]] for s, o in zip(present, present[1:], strict=False)]
        for s in present:
            for o in present:
                bs, bo = anns[s]["bbox"], anns[o]["bbox"]
                if (
                    s != o
                    and bs[0] >= bo[0]
                    and bs[1] >= bo[1]
                    and bs[0] + bs[2] <= bo[0] + bo[2]
                    and bs[1] + bs[3] <= bo[1] + bo[3]
                ):
                    rels.append([s, o, pred["on"]])
        records.append(
            {
                "file_name": f"{split}/{image['file_name']}",
                "height": h,
                "width": w,
                "image_id": str(image["id"]),
                "coco_image_id": str(image["id"]),
                "pan_seg_file_name": f"panoptic_{split}/{image['id']:012d}.png",
                "segments_info": [
                    {
                        "id": i + 1,
                        "category_id": vocab.classes.index(names[a["category_id"]]),
                        "iscrowd": a["iscrowd"],
                        "isthing": 1,
                        "area": int((ids == i + 1).sum()),
                    }
                    for i, a in enumerate(anns)
                ],
                "annotations": [
                    {
                        "bbox": [
                            a["bbox"][0],
                            a["bbox"][1],
                            a["bbox"][0] + a["bbox"][2],
                            a["bbox"][1] + a["bbox"][3],
                        ],
                        "bbox_mode": 0,
                        "category_id": vocab.classes.index(names[a["category_id"]]),
                    }
                    for a in anns
                ],
                "relations": rels,
            }
        )
    (out / "psg.json").write_text(
        json.dumps(
            {
                "data": records,
                "thing_classes": list(vocab.classes[:80]),
                "stuff_classes": list(vocab.classes[80:]),
                "predicate_classes": list(vocab.predicates),
                "test_image_ids": [r["image_id"] for r in records],
            }
        )
    )
    return {
        "kind": "psg",
        "annotations": str(out / "psg.json"),
        "panoptic": str(out),
        "images": str(TINYCOCO / "images"),
    }


if __name__ == "__main__":
    print(json.dumps(write_tiny_psg(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 2)))
