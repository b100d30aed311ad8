"""Full-size seed ingest: generate release files in the real formats, join them, record time and peak memory.

At ``--scale 1`` the files have about the official releases' sizes (per-image counts are drawn
around the releases' means, rounded down): VG v1.4 (108,077 images, ~3.75M objects, ~2.26M
relationships, attributes, ~5.35M region descriptions), GQA train scene graphs (74,942 images,
~16 objects and ~40 relations each), COCO train2017 (118,287 images, ~800K annotations with
polygons, 1% crowd RLE), LVIS v1 train (100,170 images, ~1.22M annotations) and RefCOCO (unc:
19,994 images, 50,000 refs, ~150K sentences). Content is random but shaped
like the real data, and the ids line up the way the real ones do (VG ``coco_id`` -> COCO ids,
GQA ids = VG ids, LVIS and RefCOCO ids are COCO ids), with VG seeing shared images at 1.25x
COCO's size, so the join, the scaling and the merge rule all do real work.

The ingest (``synthvg.pipeline.run_build`` with only the seeds stage, no image files) runs in
a child process, so its peak RSS (``ru_maxrss``) is the ingest's own.

Usage: python benchmarks/bench_ingest.py [--scale 0.1] [--workdir DIR] [--keep] [--shard-size N]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

FULL = {
    "coco_images": 118_287,
    "coco_anns": 7.27,
    "lvis_images": 100_170,
    "lvis_anns": 12.68,
    "vg_images": 108_077,
    "vg_with_coco": 51_498,
    "vg_objects": 35.2,
    "vg_rels": 21.4,
    "vg_phrases": 50.0,
    "gqa_images": 74_942,
    "gqa_objects": 16.4,
    "gqa_rels": 3.1,
    "ref_images": 19_994,
    "refs": 50_000,
}
COCO_NAMES = [
    "person",
    "car",
    "chair",
    "cup",
    "bottle",
    "dining table",
    "dog",
    "cat",
    "bus",
    "truck",
    "bench",
    "bird",
]
VG_NAMES = [
    "man",
    "woman",
    "shirt",
    "tree",
    "window",
    "building",
    "sign",
    "wall",
    "table",
    "hand",
    "head",
    "car",
    "grass",
    "sky",
]
PREDICATES = [
    "on",
    "has",
    "wearing",
    "of",
    "in",
    "near",
    "behind",
    "holding",
    "ON",
    "with",
    "sitting on",
    "above",
]
ATTRIBUTES = ["white", "black", "blue", "wooden", "large", "small", "green", "red", "standing"]


def _box(r: random.Random, w: int, h: int) -> list[float]:
    bw, bh = r.uniform(8, w / 2), r.uniform(8, h / 2)
    return [
        round(r.uniform(0, w - bw), 2),
        round(r.uniform(0, h - bh), 2),
        round(bw, 2),
        round(bh, 2),
    ]


def _polygon(r: random.Random, b: list[float], points: int) -> list[list[float]]:
    """A simple (star-shaped) polygon inside the box, like an annotator's outline."""
    x, y, w, h = b
    cx, cy = x + w / 2, y + h / 2
    angles = sorted(r.uniform(0, 2 * math.pi) for _ in range(points))
    radius = [r.uniform(0.6, 1.0) for _ in range(points)]
    return [
        [
            round(v, 2)
            for a, k in zip(angles, radius, strict=True)
            for v in (cx + k * w / 2 * math.cos(a), cy + k * h / 2 * math.sin(a))
        ]
    ]


class _ListWriter:
    """Writes a JSON list one record at a time (the generator never holds a whole file)."""

    def __init__(self, stack: ExitStack, path: Path):
        self.f = stack.enter_context(open(path, "w"))
        self.f.write("[")
        self.first = True

    def add(self, record) -> None:
        self.f.write(("" if self.first else ",") + json.dumps(record))
        self.first = False

    def close(self) -> None:
        self.f.write("]")


def _coco_like(
    path: Path,
    images: list[tuple[int, int, int]],
    anns_per_image: float,
    names: list[str],
    r: random.Random,
    *,
    lvis: bool = False,
    points: int = 20,
    first_ann: int = 1,
) -> dict[int, list[dict]]:
    """A COCO-format file (LVIS: no file_name, synonyms); returns the annotations of every 10th image."""
    cats = [
        {"id": k + 1, "name": n.replace(" ", "_") if lvis else n, "supercategory": "thing"}
        for k, n in enumerate(names)
    ]
    if lvis:
        for c in cats:
            c.update(
                synset=f"{c['name']}.n.01",
                synonyms=[c["name"]],
                frequency="f",
                image_count=1,
                instance_count=1,
            )
    kept: dict[int, list[dict]] = {}
    ann_id = first_ann
    with ExitStack() as stack:
        f = stack.enter_context(open(path, "w"))
        f.write('{"info": {"description": "synthvg benchmark"}, "licenses": [], "images": [')
        for k, (i, w, h) in enumerate(images):
            entry = {
                "id": i,
                "width": w,
                "height": h,
                "coco_url": f"http://images.cocodataset.org/train2017/{i:012d}.jpg",
                "license": 1,
            }
            if not lvis:
                entry["file_name"] = f"{i:012d}.jpg"
            f.write(("," if k else "") + json.dumps(entry))
        f.write('], "annotations": [')
        first = True
        for i, w, h in images:
            for _ in range(int(r.expovariate(1 / anns_per_image))):
                b = _box(r, w, h)
                crowd = not lvis and r.random() < 0.01
                seg = (
                    {
                        "size": [h, w],
                        "counts": [int(h * w * 0.6)] + [5] * 40 + [h * w - int(h * w * 0.6) - 200],
                    }
                    if crowd
                    else _polygon(r, b, points)
                )
                ann = {
                    "id": ann_id,
                    "image_id": i,
                    "category_id": r.randrange(len(names)) + 1,
                    "bbox": b,
                    "area": round(b[2] * b[3] * 0.6, 2),
                    "segmentation": seg,
                }
                if not lvis:
                    ann["iscrowd"] = int(crowd)
                f.write(("" if first else ",") + json.dumps(ann))
                first = False
                ann_id += 1
                if i % 10 == 0:
                    kept.setdefault(i, []).append(ann)
        f.write('], "categories": ' + json.dumps(cats) + "}")
    return kept


def generate(root: Path, scale: float, seed: int = 0) -> dict[str, Path]:
    r = random.Random(seed)
    n = {k: (max(1, round(v * scale)) if isinstance(v, int) else v) for k, v in FULL.items()}
    sizes = [(640, 480), (640, 427), (480, 640), (500, 375), (640, 360)]
    coco_ids = sorted(r.sample(range(1, 600_000), n["coco_images"]))
    coco = [(i, *sizes[i % len(sizes)]) for i in coco_ids]
    paths = {
        "coco": root / "coco" / "instances_train2017.json",
        "lvis": root / "lvis" / "lvis_v1_train.json",
        "refcoco": root / "refcoco",
        "vg": root / "vg",
        "gqa": root / "gqa" / "train_sceneGraphs.json",
    }
    for p in (
        paths["coco"].parent,
        paths["lvis"].parent,
        paths["refcoco"],
        paths["vg"],
        paths["gqa"].parent,
    ):
        p.mkdir(parents=True, exist_ok=True)
    kept = _coco_like(paths["coco"], coco, n["coco_anns"], COCO_NAMES, r)
    _coco_like(
        paths["lvis"],
        sorted(r.sample(coco, n["lvis_images"])),
        n["lvis_anns"],
        COCO_NAMES,
        r,
        lvis=True,
        points=16,
        first_ann=10**8,
    )
    _refcoco(paths["refcoco"], sorted(r.sample(coco, n["ref_images"])), n["refs"], COCO_NAMES, r)
    _vg_and_gqa(paths["vg"], paths["gqa"], coco, kept, n, r)
    return paths


def _refcoco(
    folder: Path, images: list[tuple[int, int, int]], refs: int, names: list[str], r: random.Random
) -> None:
    import pickle

    anns = _coco_like(folder / "instances.json", images, 9.8, names, r, first_ann=2 * 10**8)
    # every annotation is kept for images whose id ends in 0: refs point at those
    pool = [a for lst in anns.values() for a in lst] or [
        {"id": 0, "image_id": images[0][0], "category_id": 1}
    ]
    out = []
    for k in range(refs):
        a = pool[k % len(pool)]
        sents = [
            {
                "tokens": ["the", "thing"],
                "raw": f"the {names[a['category_id'] - 1]} number {k}",
                "sent": f"the thing {k}",
                "sent_id": 3 * k + s,
            }
            for s in range(r.choice((2, 3, 4)))
        ]
        out.append(
            {
                "ref_id": k,
                "ann_id": a["id"],
                "image_id": a["image_id"],
                "category_id": a["category_id"],
                "split": r.choice(("train", "val", "testA", "testB")),
                "file_name": f"COCO_train2014_{a['image_id']:012d}_{k}.jpg",
                "sent_ids": [s["sent_id"] for s in sents],
                "sentences": sents,
            }
        )
    (folder / "refs(unc).p").write_bytes(pickle.dumps(out, protocol=2))


def _vg_and_gqa(
    vg: Path,
    gqa_path: Path,
    coco: list[tuple[int, int, int]],
    coco_anns: dict[int, list[dict]],
    n: dict,
    r: random.Random,
) -> None:
    shared = r.sample(coco, min(n["vg_with_coco"], len(coco)))
    vg_ids = list(range(1, n["vg_images"] + 1))
    coco_of = {vg_id: shared[k] for k, vg_id in enumerate(r.sample(vg_ids, len(shared)))}
    gqa_ids = set(r.sample(vg_ids, n["gqa_images"]))
    obj_id, rel_id, region_id = 1, 1, 1
    with ExitStack() as stack:
        out = {
            name: _ListWriter(stack, vg / f"{name}.json")
            for name in (
                "image_data",
                "objects",
                "attributes",
                "relationships",
                "region_descriptions",
            )
        }
        gqa = stack.enter_context(open(gqa_path, "w"))
        gqa.write("{")
        first_graph = True
        for vg_id in vg_ids:
            shared_with = coco_of.get(vg_id)
            w, h = (
                (int(shared_with[1] * 1.25), int(shared_with[2] * 1.25))
                if shared_with
                else (800, 600)
            )
            url = f"https://cs.stanford.edu/people/rak248/VG_100K/{vg_id}.jpg"
            out["image_data"].add(
                {
                    "image_id": vg_id,
                    "url": url,
                    "width": w,
                    "height": h,
                    "coco_id": shared_with[0] if shared_with else None,
                    "flickr_id": None,
                }
            )
            objects = []
            # shared images: VG re-annotates some of COCO's objects (at VG's scale) under VG names
            for a in coco_anns.get(shared_with[0], [])[:6] if shared_with else []:
                x, y, bw, bh = (v * 1.25 for v in a["bbox"])
                objects.append(
                    {
                        "object_id": obj_id,
                        "x": int(x),
                        "y": int(y),
                        "w": max(1, int(bw)),
                        "h": max(1, int(bh)),
                        "names": [r.choice(("man", "person", "woman"))],
                        "synsets": ["person.n.01"],
                    }
                )
                obj_id += 1
            for _ in range(max(0, int(r.expovariate(1 / n["vg_objects"])) - len(objects))):
                x, y, bw, bh = _box(r, w, h)
                objects.append(
                    {
                        "object_id": obj_id,
                        "x": int(x),
                        "y": int(y),
                        "w": max(1, int(bw)),
                        "h": max(1, int(bh)),
                        "names": [r.choice(VG_NAMES)],
                        "synsets": ["thing.n.01"],
                        "merged_object_ids": [obj_id + 10**9] if r.random() < 0.02 else [],
                    }
                )
                obj_id += 1
            out["objects"].add({"image_id": vg_id, "image_url": url, "objects": objects})
            out["attributes"].add(
                {
                    "image_id": vg_id,
                    "attributes": [
                        dict(o, attributes=r.sample(ATTRIBUTES, r.randint(1, 2)))
                        if r.random() < 0.5
                        else o
                        for o in objects
                    ],
                }
            )
            rels = []
            for _ in range(int(r.expovariate(1 / n["vg_rels"])) if len(objects) > 1 else 0):
                s, o = r.sample(objects, 2)
                subject = {k: v for k, v in s.items() if k != "merged_object_ids"}
                if r.random() < 0.3 and "names" in subject:
                    subject["name"] = subject.pop("names")[0]  # the `name` / `names` quirk
                rels.append(
                    {
                        "relationship_id": rel_id,
                        "predicate": r.choice(PREDICATES),
                        "synsets": ["on.r.01"],
                        "subject": subject,
                        "object": {k: v for k, v in o.items() if k != "merged_object_ids"},
                    }
                )
                rel_id += 1
            out["relationships"].add({"image_id": vg_id, "relationships": rels})
            phrases = []
            for _ in range(int(r.expovariate(1 / n["vg_phrases"]))):
                x, y, bw, bh = _box(r, w, h)
                phrases.append(
                    {
                        "region_id": region_id,
                        "image_id": vg_id,
                        "phrase": f"a {r.choice(ATTRIBUTES)} {r.choice(VG_NAMES)} on the {r.choice(VG_NAMES)}",
                        "x": int(x),
                        "y": int(y),
                        "width": int(bw),
                        "height": int(bh),
                    }
                )
                region_id += 1
            out["region_descriptions"].add({"id": vg_id, "regions": phrases})
            if vg_id in gqa_ids:
                gqa.write(
                    ("" if first_graph else ",")
                    + json.dumps(str(vg_id))
                    + ":"
                    + json.dumps(_gqa_graph(objects, w, h, n, r))
                )
                first_graph = False
        for writer in out.values():
            writer.close()
        gqa.write("}")


def _gqa_graph(vg_objects: list[dict], w: int, h: int, n: dict, r: random.Random) -> dict:
    picked = vg_objects[: max(1, int(r.expovariate(1 / n["gqa_objects"])))] if vg_objects else []
    ids = [str(o["object_id"]) for o in picked]
    objects = {}
    for oid, o in zip(ids, picked, strict=True):
        rels = [
            {
                "name": r.choice(("to the left of", "to the right of", "on", "near", "wearing")),
                "object": r.choice(ids),
            }
            for _ in range(int(r.expovariate(1 / n["gqa_rels"])))
            if len(ids) > 1
        ]
        objects[oid] = {
            "name": (o.get("names") or [o.get("name")])[0],
            "x": o["x"] + 1,
            "y": o["y"],
            "w": o["w"],
            "h": o["h"],
            "attributes": r.sample(ATTRIBUTES, 1),
            "relations": [x for x in rels if x["object"] != oid],
        }
    return {"width": w, "height": h, "objects": objects}


def _config(paths: dict[str, Path], out: Path, shard_size: int) -> dict:
    return {
        "name": "bench-ingest",
        "out": str(out),
        "shard_size": shard_size,
        "seeds": {
            "sources": [
                {"kind": "coco", "annotations": str(paths["coco"])},
                {"kind": "lvis", "annotations": str(paths["lvis"])},
                {"kind": "refcoco", "refs": str(paths["refcoco"] / "refs(unc).p")},
                {"kind": "vg", "root": str(paths["vg"])},
                {"kind": "gqa", "annotations": str(paths["gqa"])},
            ]
        },
        "regions": {"proposer": "none"},
        "teacher": {"backend": "none"},
    }


def child(config_path: str) -> None:
    """The ingest itself, in its own process: index every source, then the seeds stage."""
    from synthvg.pipeline import run_build
    from synthvg.readers.sources import open_sources
    from synthvg.schemas.config import BuildConfig
    from synthvg.storage import connect

    cfg = BuildConfig.model_validate(json.loads(Path(config_path).read_text()))
    t0 = time.perf_counter()
    sources = open_sources(cfg.seeds.sources)
    assert all(s.reader for s in sources.sources), [s.failure for s in sources.sources]
    t1 = time.perf_counter()
    index_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run = run_build(cfg)
    t2 = time.perf_counter()
    seeds = next(s for s in run.stages if s.stage == "seeds")
    con = connect(cfg.out)
    rows = {
        t: con.sql(f"SELECT count(*) FROM {t}").fetchall()[0][0]
        for t in ("images", "regions", "relations", "errors")
    }
    merged = con.sql(
        "SELECT count(*) FROM regions WHERE len(list_distinct(list_transform(sources, lambda s: s.dataset))) > 1"
    ).fetchall()[0][0]
    print(
        json.dumps(
            {
                "index_s": t1 - t0,
                "build_s": t2 - t1,
                "index_rss_kb": index_rss,
                "status": run.status,
                "shards": seeds.shards_total,
                "rows": rows,
                "merged_regions": merged,
            }
        )
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--scale",
        type=float,
        default=0.1,
        help="fraction of the real releases' sizes (1 = full size)",
    )
    ap.add_argument(
        "--workdir",
        type=Path,
        help="where the generated files and the dataset go (default: a temp folder)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the generated files and the dataset")
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return 0
    work = args.workdir or Path(tempfile.mkdtemp(prefix="synthvg-bench-ingest-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        paths = generate(work / "release", args.scale)
        gen_s = time.perf_counter() - t0
        sizes = {
            k: sum(f.stat().st_size for f in ([p] if p.is_file() else p.iterdir()))
            for k, p in paths.items()
        }
        config = work / "config.json"
        config.write_text(json.dumps(_config(paths, work / "dataset", args.shard_size)))
        t1 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, __file__, "--child", str(config)], capture_output=True, text=True
        )
        wall = time.perf_counter() - t1
        if proc.returncode:
            print(proc.stdout, proc.stderr, file=sys.stderr)
            return proc.returncode
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(
            f"## Seed ingest at scale {args.scale} — `benchmarks/bench_ingest.py --scale {args.scale}`\n"
        )
        print(
            f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}; "
            f"generated in {gen_s:.0f} s; shard size {args.shard_size}; no image files (sizes from the annotations).\n"
        )
        print("| input | size (MB) |\n|---|---:|")
        for k, v in sizes.items():
            print(f"| {k} | {v / 1e6:,.0f} |")
        rows = result["rows"]
        print("\n| step | wall s | peak RSS (MiB) |\n|---|---:|---:|")
        print(
            f"| index every source (plan) | {result['index_s']:.1f} | {result['index_rss_kb'] / 1024:,.0f} |"
        )
        print(f"| join + write {result['shards']} shards | {result['build_s']:.1f} | |")
        print(f"| whole ingest (child process) | {wall:.1f} | {peak_mib:,.0f} |")
        print(
            f"\nrows: {rows['images']:,} images, {rows['regions']:,} regions ({result['merged_regions']:,} merged across datasets), "
            f"{rows['relations']:,} seed relations, {rows['errors']:,} error rows; status {result['status']}."
        )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
