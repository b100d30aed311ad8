"""Training data for Robin: mixtures of dataset rows by SQL, rendered by task templates with
the robin stage's own prompt code, tokenised with labels on the assistant turns only.

A source's rows (a view or a read-only SELECT over a dataset root, parameters bound) are
grouped per image and joined to the root's ``images`` and ``regions``; regions are taken as
the robin stage takes them (largest first, at most ``max_regions``, empty masks left out).
Templates:

- ``scene_graph``: the holistic question, answered with ``Objects: / Relations:`` text
  (rows: ``image_id, subject_id, object_id, predicate``); the target must parse back with
  the robin parser into the graph it renders, or the example is dropped and counted;
- ``region_relations``: per region, "describe regionK" then "list regionK's relationships"
  (same rows);
- ``region_caption``: per described region, "describe regionK" (rows: ``image_id,
  region_id, description``);
- ``grounding``: a description in, its box text out (same rows);
- ``conversations``: LLaVA/Osprey JSON (``{"image", "conversations": [{"from", "value"}]}``)
  read as it is.

An example longer than ``max_length`` (after ``<image>`` becomes the image tokens) is split
by regions (halves, each a prompt listing only its regions, as the robin stage groups them),
or dropped and counted when one region alone is too long; a target is never cut.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import duckdb

from synthvg import masks as mask_ops
from synthvg.models.robin.parse import (
    ParsedRelation,
    parse_description,
    parse_relationships,
    parse_scene_graph,
    render_relationships,
    render_scene_graph,
)
from synthvg.models.robin.prompt import (
    HOLISTIC_QUESTION,
    IM_END,
    IMAGE,
    MASK,
    POS,
    box_text,
    chatml_segments,
    description_question,
    first_message,
    grounding_message,
    grounding_question,
    relationships_question,
)
from synthvg.schemas import RLE
from synthvg.schemas.config import ConfigError
from synthvg.train.config import DataSection, Source

#: Columns each task needs from its source's rows.
TASK_COLUMNS = {
    "scene_graph": ("image_id", "subject_id", "object_id", "predicate"),
    "region_relations": ("image_id", "subject_id", "object_id", "predicate"),
    "region_caption": ("image_id", "region_id", "description"),
    "grounding": ("image_id", "region_id", "description"),
    "relation_qa": ("image_id", "subject_id", "object_id", "predicate"),
    "relation_choice": ("image_id", "subject_id", "object_id", "predicate"),
}
#: Which stage's description names a region's object, best first (then the region's own text).
DESCRIPTION_STAGES = ("edit", "robin", "teacher")


class Dropped(Exception):
    """An example (or unit) left out; ``reason`` is the count's key."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class ImageRef:
    image_id: str
    uri: str
    width: int | None = None
    height: int | None = None

    def dims(self) -> tuple[int, int]:
        """(width, height): known for a dataset's images; a template that needs them drops an
        example whose image has none."""
        if self.width is None or self.height is None:
            raise Dropped("image_size_unknown")
        return self.width, self.height


@dataclass
class Region:
    region_id: int
    box: tuple[float, float, float, float]
    mask: RLE
    area: float
    text: str


@dataclass
class Example:
    source: str
    task: str
    image: ImageRef | None
    masks: list[RLE]  # region1 first
    input_ids: list[int]
    labels: list[int]
    length: int  # after <image> becomes the image tokens


@dataclass
class SourceCounts:
    task: str
    rows: int = 0
    images: int = 0
    examples: int = 0  # after splitting, before cap and weight
    taken: int = 0  # in the mixture, after cap and weight
    splits: int = 0  # examples split by regions to fit max_length
    version: int | None = None  # the dataset version read (dataset sources)
    dropped: Counter = field(default_factory=Counter)


@dataclass
class Mixture:
    examples: list[Example]
    counts: dict[str, SourceCounts]

    def summary(self) -> dict:
        """The mixture's counts per source and task (the run's artifact)."""
        return {
            "examples": len(self.examples),
            "tokens": sum(e.length for e in self.examples),
            "sources": {
                name: {
                    **{k: v for k, v in c.__dict__.items() if k != "dropped"},
                    "dropped": dict(sorted(c.dropped.items())),
                }
                for name, c in self.counts.items()
            },
        }


# -- tokenising ---------------------------------------------------------------------------------


class Tokeniser:
    """ChatML ids through :func:`chatml_segments` (the pieces generation tokenises), labels on
    the answers and their ``<|im_end|>`` only."""

    def __init__(self, tokenizer, image_tokens: int, max_length: int):
        self.tokenizer, self.image_tokens, self.max_length = tokenizer, image_tokens, max_length
        ids = tokenizer.convert_tokens_to_ids
        self.image_id, self.mask_id, self.pos_id, self.end_id = (
            ids(IMAGE),
            ids(MASK),
            ids(POS),
            ids(IM_END),
        )

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode(
        self, turns: list[tuple[str, str]], n_regions: int, with_image: bool
    ) -> tuple[list[int], list[int], int]:
        """(ids, labels, spliced length); raises Dropped for a bad or too long conversation."""
        ids: list[int] = []
        labels: list[int] = []
        parts = chatml_segments(turns)  # system, then (user, answer, "<|im_end|>\n") per turn
        for i, part in enumerate(parts):
            piece = self._ids(part)  # type: ignore[arg-type]
            ids += piece
            if i % 3 == 2:  # an answer
                labels += piece
            elif i and i % 3 == 0:  # the answer's <|im_end|> is learnt, its newline is not
                labels += [piece[0]] + [-100] * (len(piece) - 1)
            else:
                labels += [-100] * len(piece)
        counts = (ids.count(self.image_id), ids.count(self.mask_id), ids.count(self.pos_id))
        if counts != (int(with_image), n_regions, n_regions):
            raise Dropped("feature_tokens_mismatch")
        length = len(ids) + (self.image_tokens - 1 if with_image else 0)
        if length > self.max_length:
            raise Dropped("too_long")
        return ids, labels, length


class LlavaSGTokeniser:
    """LLaVA-SG's conversation layout (:mod:`synthvg.models.llava_sg.prompt`), labels on the
    answers and their end-of-sequence; the spliced length counts the image tokens and one graph
    token per entity (none when the SGE is off)."""

    def __init__(self, tokenizer, image_tokens: int, max_length: int, graph_tokens: bool):
        from synthvg.models.llava_sg.prompt import IMAGE as LLAVA_IMAGE

        self.tokenizer, self.image_tokens, self.max_length = tokenizer, image_tokens, max_length
        self.graph_tokens = graph_tokens
        self.image_id = tokenizer.convert_tokens_to_ids(LLAVA_IMAGE)

    def encode(
        self, turns: list[tuple[str, str]], n_regions: int, with_image: bool
    ) -> tuple[list[int], list[int], int]:
        from synthvg.models.llava_sg.prompt import encode

        ids, labels = encode(self.tokenizer, turns, with_image)
        if ids.count(self.image_id) != int(with_image):
            raise Dropped("feature_tokens_mismatch")
        length = len(ids)
        if with_image:
            length += self.image_tokens - 1 + (n_regions if self.graph_tokens else 0)
        if length > self.max_length:
            raise Dropped("too_long")
        return ids, labels, length


# -- templates ----------------------------------------------------------------------------------

#: A template turns (image, the regions a prompt lists, the image's payload rows) into turns.
Template = Callable[[ImageRef, list[Region], list], list[tuple[str, str]]]


def _first(image: ImageRef, regions: list[Region], question: str) -> str:
    return first_message([r.box for r in regions], *image.dims(), question)


def _graph(
    regions: list[Region], relations: list[tuple[int, int, str]]
) -> tuple[dict[int, str], list[ParsedRelation]]:
    """The graph in region numbers (1-based in ``regions``' order): relations among listed
    regions, whitespace collapsed, self-loops and duplicates out (what the parser keeps),
    grouped by subject (stable within a subject)."""
    number = {r.region_id: k for k, r in enumerate(regions, 1)}
    objects = {k: " ".join(r.text.split()) for k, r in enumerate(regions, 1)}
    out, seen = [], set()
    for s, o, predicate in relations:
        p = " ".join(str(predicate).split())
        if s in number and o in number and s != o and p and (key := (s, o, p.lower())) not in seen:
            seen.add(key)
            out.append(ParsedRelation(number[s], number[o], p))
    return objects, sorted(
        out, key=lambda r: r.subject
    )  # grouped by subject, as the text lists them


def scene_graph_target(objects: dict[int, str], relations: list[ParsedRelation]) -> str:
    """The holistic answer for a graph; Dropped unless the robin parser reads the same graph back."""
    text = render_scene_graph(objects, relations)
    parsed = parse_scene_graph(text, len(objects))
    if parsed.objects != objects or parsed.relations != relations:
        raise Dropped("target_not_parseable")
    return text


def scene_graph_turns(
    image: ImageRef, regions: list[Region], relations: list
) -> list[tuple[str, str]]:
    objects, rels = _graph(regions, relations)
    return [(_first(image, regions, HOLISTIC_QUESTION), scene_graph_target(objects, rels))]


def region_relations_turns(
    image: ImageRef, regions: list[Region], relations: list
) -> list[tuple[str, str]]:
    objects, rels = _graph(regions, relations)
    turns: list[tuple[str, str]] = []
    for k in objects:
        if parse_description(objects[k], k) != objects[k]:
            raise Dropped("target_not_parseable")
        mine = [r for r in rels if r.subject == k]
        answer = render_relationships(mine)
        if parse_relationships(answer, k, len(objects)).relations != mine:
            raise Dropped("target_not_parseable")
        ask = (
            _first(image, regions, description_question(k))
            if not turns
            else description_question(k)
        )
        turns += [(ask, objects[k]), (relationships_question(k), answer)]
    return turns


def region_caption_turns(
    image: ImageRef, regions: list[Region], captions: list
) -> list[tuple[str, str]]:
    number = {r.region_id: k for k, r in enumerate(regions, 1)}
    turns: list[tuple[str, str]] = []
    for region_id, text in captions:
        if (k := number.get(region_id)) is None:
            continue
        ask = (
            _first(image, regions, description_question(k))
            if not turns
            else description_question(k)
        )
        turns.append((ask, " ".join(text.split())))
    return turns


def grounding_turns(
    image: ImageRef, regions: list[Region], captions: list
) -> list[tuple[str, str]]:
    boxes = {r.region_id: r.box for r in regions}
    turns: list[tuple[str, str]] = []
    for region_id, text in captions:
        if region_id not in boxes:
            continue
        ask = (
            grounding_message(" ".join(text.split()))
            if not turns
            else grounding_question(" ".join(text.split()))
        )
        turns.append((ask, box_text(boxes[region_id], *image.dims())))
    return turns


# -- reading sources ----------------------------------------------------------------------------


def split_of(image_id: str, holdout_percent: float) -> str:
    """``test`` for the images whose id's sha256 falls in the held-out share, else ``train``:
    a split by image that no other row changes."""
    h = int(hashlib.sha256(str(image_id).encode()).hexdigest()[:8], 16) % 10_000
    return "test" if h < holdout_percent * 100 else "train"


def read_rows(
    source: Source, counts: SourceCounts | None = None
) -> tuple[duckdb.DuckDBPyConnection, list[dict]]:
    """(a read-only connection to the root at the source's version, the source's rows); a bad
    view or SELECT, or a version the root does not have, is a one-line ConfigError. ``counts``
    gets the dataset version read."""
    counts = counts if counts is not None else SourceCounts(source.task)
    from synthvg.storage import Dataset, connect
    from synthvg.storage.dataset import LegacyLayout, UnknownVersion
    from synthvg.storage.query import ReadOnlyError, check_read_only, fetch_dicts

    assert source.root is not None  # validated: a dataset task names a root
    if not os.path.isdir(source.root) and "://" not in source.root:
        raise ConfigError(f"source {source.name}: dataset root {source.root} does not exist")
    dataset = Dataset(source.root, as_of=source.version)
    try:
        latest = dataset.version()
        if source.version is not None and (latest is None or source.version > latest):
            raise UnknownVersion(f"no version {source.version} (latest: {latest})")
        con = connect(dataset)
    except (UnknownVersion, LegacyLayout, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"source {source.name}: {source.root}: {first}") from None
    counts.version = source.version if source.version is not None else latest
    sql = source.sql if source.sql is not None else f"SELECT * FROM {source.view}"
    try:
        check_read_only(con, sql)
        rows = fetch_dicts(con, f"SELECT * FROM ({sql}) AS source", list(source.params))
    except (duckdb.Error, ValueError, ReadOnlyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"source {source.name}: {first}") from None
    need = TASK_COLUMNS[source.task]
    if rows and (missing := [c for c in need if c not in rows[0]]):
        raise ConfigError(
            f"source {source.name}: task {source.task} needs columns {list(need)}, missing {missing}"
        )
    if source.split is not None:
        rows = [r for r in rows if split_of(r["image_id"], source.holdout_percent) == source.split]
    return con, rows


def _context(
    con, image_ids: list[str]
) -> tuple[dict[str, ImageRef], dict[str, list[dict]], dict[tuple[str, int], str]]:
    """Images, regions and the best description per region, for the given images (bound list)."""
    from synthvg.storage.query import fetch_dicts

    images = {
        r["image_id"]: ImageRef(r["image_id"], r["file_uri"], r["width"], r["height"])
        for r in fetch_dicts(
            con,
            "SELECT image_id, file_uri, width, height FROM images WHERE list_contains(?, image_id)",
            [image_ids],
        )
    }
    regions: dict[str, list[dict]] = defaultdict(list)
    for r in fetch_dicts(
        con,
        "SELECT image_id, region_id, bbox, mask, area, label, descriptions FROM regions "
        "WHERE list_contains(?, image_id) ORDER BY image_id, region_id",
        [image_ids],
    ):
        regions[r["image_id"]].append(r)
    rank = {s: i for i, s in enumerate(DESCRIPTION_STAGES)}
    best: dict[tuple[str, int], tuple[int, str]] = {}
    for d in fetch_dicts(
        con,
        "SELECT image_id, region_id, stage, description FROM descriptions WHERE list_contains(?, image_id)",
        [image_ids],
    ):
        key, order = (d["image_id"], d["region_id"]), rank.get(d["stage"], len(rank))
        if d["description"] and (key not in best or order < best[key][0]):
            best[key] = (order, d["description"])
    return images, regions, {k: v for k, (_, v) in best.items()}


def _regions(
    image: ImageRef, rows: list[dict], described: dict, max_regions: int, dropped: Counter
) -> list[Region]:
    """The regions a prompt lists, as the robin stage takes them: non-empty masks, largest first."""
    from synthvg.masks import region_mask

    width, height = image.dims()
    out = []
    for r in rows:
        rle = region_mask(r, height, width)
        if not mask_ops.decode(rle).any():
            dropped["empty_mask_region"] += 1
            continue
        text = (
            described.get((image.image_id, r["region_id"]))
            or next(iter(r["descriptions"] or []), None)
            or r["label"]
            or "object"
        )
        b = r["bbox"]
        out.append(
            Region(r["region_id"], (b["x1"], b["y1"], b["x2"], b["y2"]), rle, r["area"], text)
        )
    out.sort(key=lambda r: (-r.area, r.region_id))
    if len(out) > max_regions:
        dropped["regions_capped"] += len(out) - max_regions
    return out[:max_regions]


def _check_image(image: ImageRef, cache: dict[str, str | None]) -> str | None:
    """None if the file reads and has the recorded size, else the drop reason (cached per file)."""
    from synthvg.stages.seeds import read_image

    if image.uri not in cache:
        try:
            _, img = read_image(image.uri)
            if image.width is None:
                image.width, image.height = img.size
            cache[image.uri] = (
                None if img.size == (image.width, image.height) else "image_size_mismatch"
            )
        except ValueError:
            cache[image.uri] = "bad_image"
    return cache[image.uri]


def _split(
    tok: Tokeniser,
    template: Template,
    image: ImageRef,
    regions: list[Region],
    payload: list,
    task: str,
    counts: SourceCounts,
    source: str,
) -> list[Example]:
    """Examples over ``regions`` (the template keeps the payload of listed regions), halved
    by regions until each fits; one region that does not fit is dropped, never cut."""
    try:
        turns = template(image, regions, payload)
        if not turns:
            return []
        n = 0 if task == "grounding" else len(regions)
        ids, labels, length = tok.encode(turns, n, True)
        return [Example(source, task, image, [r.mask for r in regions][:n], ids, labels, length)]
    except Dropped as d:
        if d.reason != "too_long" or len(regions) < 2:
            counts.dropped[d.reason] += 1
            return []
    counts.splits += 1
    half = len(regions) // 2
    return [
        e
        for part in (regions[:half], regions[half:])
        for e in _split(tok, template, image, part, payload, task, counts, source)
    ]


TEMPLATES: dict[str, Template] = {
    "scene_graph": scene_graph_turns,
    "region_relations": region_relations_turns,
    "region_caption": region_caption_turns,
    "grounding": grounding_turns,
}


def dataset_examples(
    source: Source, data: DataSection, tok: Tokeniser, counts: SourceCounts, images_ok: dict
) -> list[Example]:
    """A dataset source's examples, one (or, split, more) per image."""
    con, rows = read_rows(source, counts)
    try:
        counts.rows = len(rows)
        per_image: dict[str, list] = defaultdict(list)
        for r in rows:
            if source.task in ("scene_graph", "region_relations"):
                per_image[r["image_id"]].append((r["subject_id"], r["object_id"], r["predicate"]))
            elif r["description"] and str(r["description"]).strip():
                per_image[r["image_id"]].append((r["region_id"], r["description"]))
            else:
                counts.dropped["empty_description"] += 1
        ids = sorted(per_image)
        images, regions, described = _context(con, ids) if ids else ({}, {}, {})
    finally:
        con.close()
    counts.images = len(ids)
    out = []
    for image_id in ids:
        image = images.get(image_id)
        if image is None:
            counts.dropped["image_not_in_images"] += 1
            continue
        if reason := _check_image(image, images_ok):
            counts.dropped[reason] += 1
            continue
        listed = _regions(
            image, regions.get(image_id, []), described, data.max_regions, counts.dropped
        )
        if not listed:
            counts.dropped["no_regions"] += 1
            continue
        out += _split(
            tok,
            TEMPLATES[source.task],
            image,
            listed,
            per_image[image_id],
            source.task,
            counts,
            source.name,
        )
    return out


def conversation_examples(
    source: Source, tok: Tokeniser, counts: SourceCounts, images_ok: dict
) -> list[Example]:
    """LLaVA/Osprey JSON conversations, read as they are; ``<image>`` goes first, as LLaVA puts it."""
    if source.path is None:
        raise ConfigError(f"source {source.name}: a conversations source needs a path")
    try:
        with open(source.path) as f:
            records = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"source {source.name}: cannot read {source.path}: {e}") from None
    if not isinstance(records, list):
        raise ConfigError(
            f"source {source.name}: {source.path} must hold a JSON list of conversations"
        )
    counts.rows = len(records)
    out = []
    for rec in records:
        try:
            out.append(_conversation(rec, source, tok, images_ok))
        except Dropped as d:
            counts.dropped[d.reason] += 1
    counts.images = len({e.image.uri for e in out if e.image})
    return out


def _conversation(rec, source: Source, tok: Tokeniser, images_ok: dict) -> Example:
    if not isinstance(rec, dict) or not isinstance(rec.get("conversations"), list):
        raise Dropped("not_a_conversation")
    turns, user = [], None
    for msg in rec["conversations"]:
        if not isinstance(msg, dict) or not isinstance(msg.get("value"), str):
            raise Dropped("not_a_conversation")
        role = msg.get("from")
        if role in ("human", "user"):
            user = msg["value"] if user is None else f"{user}\n{msg['value']}"
        elif role in ("gpt", "assistant") and user is not None:
            turns.append((user, msg["value"]))
            user = None
    if not turns:
        raise Dropped("no_assistant_turn")
    masks: list[RLE] = []
    size = None
    if source.regions is not None:
        turns, masks = _osprey_regions(rec, turns, source.regions)
        size = (rec["width"], rec["height"])
    elif any(t in text for turn in turns for text in turn for t in (MASK, POS)):
        raise Dropped("region_masks_not_read")  # a region source needs `regions:` set
    image = None
    if name := rec.get("image") or rec.get("file_name"):
        uri = _image_uri(name, source, osprey=source.regions is not None)
        image = ImageRef(str(rec.get("id", name)), uri, *(size or (None, None)))
        if reason := _check_image(image, images_ok):
            raise Dropped(reason)
        first = turns[0][0].replace(IMAGE, "").strip()
        turns[0] = (f"{IMAGE}\n{first}", turns[0][1])
    elif masks:
        raise Dropped("regions_without_image")
    elif any(IMAGE in text for turn in turns for text in turn):
        raise Dropped("image_token_without_image")
    ids, labels, length = tok.encode(turns, len(masks), image is not None)
    return Example(source.name, "conversations", image, masks, ids, labels, length)


def _image_uri(name: str, source: Source, *, osprey: bool) -> str:
    if os.path.isabs(name) or "://" in name:
        return name
    uri = os.path.join(source.image_root or "", name)
    if osprey and not os.path.exists(
        uri
    ):  # Osprey's loader: COCO_train2014_000000xxx.jpg -> 000000xxx.jpg
        return os.path.join(source.image_root or "", name.split("_")[-1])
    return uri


#: Osprey's own wording (osprey/datasets/osprey_724k.py, typo included: the released Robin
#: was trained on it).
OSPREY_OVERVIEW = "This provides an overview of the picture.\n"
_REGION_REF = re.compile(r"<region(\d+)>")


def _osprey_regions(
    rec: dict, turns: list[tuple[str, str]], style: str
) -> tuple[list[tuple[str, str]], list[RLE]]:
    """Osprey-724K region turns: the record's ``annotation`` masks become ``<mask><pos>`` features.

    ``listed`` (Osprey's conversation, short-form and part-level files): the first question is
    prefixed with the region list ``region1<mask><pos>,region2<mask><pos>`` and the turns lose
    their angle brackets (``<region1>`` -> ``region1``), as Osprey's loader does. ``inline``
    (its LVIS positive/negative file): each ``<regionN>`` of a question becomes ``<mask><pos>``
    of annotation N, in order of appearance.
    """
    anns, h, w = rec.get("annotation"), rec.get("height"), rec.get("width")
    if not isinstance(anns, list) or not anns:
        raise Dropped("regions_without_annotation")
    if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
        raise Dropped("regions_without_image_size")
    all_masks = []
    for a in anns:
        try:
            rle = mask_ops.segmentation_to_rle((a or {}).get("segmentation"), h, w)
        except (ValueError, TypeError):
            raise Dropped("bad_region_mask") from None
        if not mask_ops.decode(rle).any():
            raise Dropped("empty_mask_region")
        all_masks.append(rle)
    clean = [(q.replace(MASK, "").replace(POS, ""), a) for q, a in turns]
    if style == "listed":
        n = len(all_masks)
        listing = ",".join(f"region{i + 1}{MASK}{POS}" for i in range(n))
        intro = f"Ther are {n} part region{'s' if n > 1 else ''} in the picture: {listing}. "  # sic

        def strip(text: str) -> str:
            return text.replace(IMAGE, "").replace("<", "").replace(">", "")

        out = [(strip(q), strip(a)) for q, a in clean]
        out[0] = (OSPREY_OVERVIEW + intro + out[0][0].strip(), out[0][1])
        return out, all_masks
    order: list[int] = []

    def sub(m: re.Match) -> str:
        k = int(m.group(1))
        if not 1 <= k <= len(all_masks):
            raise Dropped("region_reference_out_of_range")
        order.append(k - 1)
        return MASK + POS

    out = [(_REGION_REF.sub(sub, q), a) for q, a in clean]
    if not order:
        raise Dropped("no_region_reference")
    out[0] = (OSPREY_OVERVIEW + out[0][0].replace(IMAGE, "").strip(), out[0][1])
    return out, [all_masks[k] for k in order]


def build_mixture(data: DataSection, tok: Tokeniser) -> Mixture:
    """Every source's examples, capped and weighted (seeded), with the counts."""
    examples: list[Example] = []
    counts: dict[str, SourceCounts] = {}
    images_ok: dict[str, str | None] = {}
    for source in data.sources:
        if source.name in counts:
            raise ConfigError(f"two sources are named {source.name}")
        c = counts[source.name] = SourceCounts(source.task)
        if source.task == "conversations":
            got = conversation_examples(source, tok, c, images_ok)
        elif source.task in ("relation_qa", "relation_choice"):
            from synthvg.train.relations import relation_examples

            got = relation_examples(source, data, tok, c)
        else:
            got = dataset_examples(source, data, tok, c, images_ok)
        c.examples = len(got)
        rng = random.Random(f"{data.seed}:{source.name}")
        if source.cap is not None and len(got) > source.cap:
            got = [got[i] for i in sorted(rng.sample(range(len(got)), source.cap))]
        whole, frac = int(source.weight), source.weight - int(source.weight)
        taken = got * whole
        if frac:
            taken += [got[i] for i in sorted(rng.sample(range(len(got)), round(frac * len(got))))]
        c.taken = len(taken)
        examples += taken
    return Mixture(examples, counts)
