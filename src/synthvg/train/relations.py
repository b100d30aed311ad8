"""Visual-relationship classification data (LLaVA-SG's SGE stage) from dataset roots by SQL.

For each (subject, object) region pair of a source's rows (``image_id, subject_id, object_id,
predicate``: seed relations of VG/GQA/PSG, a closed vocabulary, or SVG relations, an open
one) the question "What is the relationship between <subject> and <object>?" is answered with
the predicate (``relation_qa``), or with the letter of the predicate among shuffled choices
drawn from the source's vocabulary (``relation_choice``). A pair with several predicates has
them all as answers (training: one example each). The entities are the subject, the object,
then the image's other regions as the robin stage takes them (non-empty masks, largest first),
``max_regions`` in all: the first two graph tokens are the pair, which tells two regions of
one name apart (the filters' verifier passes the pair in the same order).
Names: the region's label, else its best description, else "object".

The held-out split is by image: an image is ``test`` when its id's sha256 falls in the
``holdout_percent`` share (:func:`split_of`), so every question of an image is on one side and
the split never changes with the data around it. :func:`write_llava_json` writes the questions
in LLaVA's conversation JSON (plus the entities' boxes and RLE masks).
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from synthvg.models.llava_sg.prompt import choice_question, relation_question
from synthvg.train.config import DataSection, Source
from synthvg.train.data import (
    Dropped,
    Example,
    ImageRef,
    Region,
    SourceCounts,
    _check_image,
    _context,
    _regions,
    read_rows,
    split_of,
)

__all__ = [
    "RelationQuestion",
    "relation_examples",
    "relation_questions",
    "split_of",
    "write_llava_json",
]
CHOICES = 4  # options of a multiple-choice question (fewer when the vocabulary is smaller)


@dataclass
class RelationQuestion:
    image: ImageRef
    subject_id: int
    object_id: int
    subject: str
    object: str
    answers: list[str]  # every predicate the pair has, sorted
    regions: list[Region]  # the entities: subject, object, then the others
    vocabulary: list[str] = field(default_factory=list)  # the source's predicates

    @property
    def question(self) -> str:
        return relation_question(self.subject, self.object)

    def choices(self, answer: str, k: int = CHOICES) -> list[str]:
        """``answer`` and up to k-1 distractors (not an answer of the pair), shuffled, seeded by
        the pair, so an example and its evaluation ask the same."""
        rng = random.Random(f"{self.image.image_id}:{self.subject_id}:{self.object_id}:{answer}")
        others = [p for p in self.vocabulary if p not in self.answers]
        picked = [answer, *rng.sample(others, min(k - 1, len(others)))]
        rng.shuffle(picked)
        return picked

    def choice_turn(self, answer: str) -> tuple[str, str]:
        options = self.choices(answer)
        return choice_question(self.subject, self.object, options), chr(65 + options.index(answer))


def _name(region: Region, label: str | None) -> str:
    return " ".join((label or region.text or "object").split())


def relation_questions(
    source: Source, max_regions: int, counts: SourceCounts | None = None
) -> list[RelationQuestion]:
    """The source's region-pair questions (images in id order, pairs in id order); rows whose
    image is missing or unreadable, or whose regions are gone, are counted as dropped."""
    counts = counts or SourceCounts(source.task)
    con, rows = read_rows(source)
    try:
        counts.rows = len(rows)
        pairs: dict[str, dict[tuple[int, int], set[str]]] = defaultdict(lambda: defaultdict(set))
        for r in rows:
            predicate = " ".join(str(r["predicate"] or "").split())
            if not predicate or r["subject_id"] == r["object_id"]:
                counts.dropped["no_predicate_or_self_loop"] += 1
                continue
            pairs[r["image_id"]][(r["subject_id"], r["object_id"])].add(predicate)
        ids = sorted(pairs)
        images, regions, described = _context(con, ids) if ids else ({}, {}, {})
    finally:
        con.close()
    vocabulary = sorted({p for per in pairs.values() for ps in per.values() for p in ps})
    counts.images = len(ids)
    images_ok: dict = {}
    out = []
    for image_id in ids:
        image = images.get(image_id)
        if image is None:
            counts.dropped["image_not_in_images"] += 1
            continue
        if reason := _check_image(image, images_ok):
            counts.dropped[reason] += len(pairs[image_id])
            continue
        rows_of = regions.get(image_id, [])
        labels = {r["region_id"]: r["label"] for r in rows_of}
        every = _regions(image, rows_of, described, len(rows_of) or 1, Counter())
        by_id = {r.region_id: r for r in every}
        for (s, o), predicates in sorted(pairs[image_id].items()):
            if s not in by_id or o not in by_id:
                counts.dropped["pair_region_missing_or_empty"] += 1
                continue
            others = [r for r in every if r.region_id not in (s, o)]
            listed = [by_id[s], by_id[o], *others[: max(0, max_regions - 2)]]
            out.append(
                RelationQuestion(
                    image,
                    s,
                    o,
                    _name(by_id[s], labels.get(s)),
                    _name(by_id[o], labels.get(o)),
                    sorted(predicates),
                    listed,
                    vocabulary,
                )
            )
    return out


def relation_examples(
    source: Source, data: DataSection, tok, counts: SourceCounts
) -> list[Example]:
    """Training examples: one per (pair, predicate), the pair's entities as region masks."""
    out = []
    for q in relation_questions(source, data.max_regions, counts):
        for answer in q.answers:
            turn = (
                q.choice_turn(answer) if source.task == "relation_choice" else (q.question, answer)
            )
            try:
                ids, labels, length = tok.encode([turn], len(q.regions), True)
            except Dropped as d:
                counts.dropped[d.reason] += 1
                continue
            out.append(
                Example(
                    source.name,
                    source.task,
                    q.image,
                    [r.mask for r in q.regions],
                    ids,
                    labels,
                    length,
                )
            )
    return out


def _entity(region: Region) -> dict:
    x1, y1, x2, y2 = region.box
    return {
        "region_id": region.region_id,
        "bbox": [x1, y1, x2, y2],
        "segmentation": {"size": list(region.mask.size), "counts": region.mask.counts},
    }


def write_llava_json(
    questions: list[RelationQuestion], path: str, *, form: str = "qa", image_root: str | None = None
) -> int:
    """LLaVA conversation JSON (one record per question and answer); ``image`` relative to
    ``image_root`` when given. Returns the records written."""
    records = []
    for q in questions:
        for answer in q.answers:
            ask, reply = q.choice_turn(answer) if form == "choice" else (q.question, answer)
            uri = q.image.uri
            if image_root and "://" not in uri:
                uri = os.path.relpath(uri, image_root)
            records.append(
                {
                    "id": f"{q.image.image_id}:{q.subject_id}:{q.object_id}:{answer}",
                    "image": uri,
                    "conversations": [
                        {"from": "human", "value": f"<image>\n{ask}"},
                        {"from": "gpt", "value": reply},
                    ],
                    "entities": [_entity(r) for r in q.regions],
                    "subject_id": q.subject_id,
                    "object_id": q.object_id,
                    "answers": q.answers,
                }
            )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(records, f, indent=1)
    return len(records)
