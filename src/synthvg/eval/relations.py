"""Relation classification accuracy on the held-out images (LLaVA-SG's SGE-stage data).

The questions are :func:`synthvg.train.relations.relation_questions` of a dataset root's
relations, on the ``test`` side of the split by image. A model is anything with
:class:`RelationModel`'s ``answer``; two forms are scored:

- ``qa``: "What is the relationship between S and O?", the model picks among the whole
  predicate vocabulary of the relations read (closed-set classification); right when its
  pick is one of the pair's predicates;
- ``choice``: the multiple-choice question with lettered options (as in training), the model
  picks a letter; right when it is the answer's.

Reported: accuracy, per-predicate recall and their mean (mean accuracy over classes), the
majority baseline (always the most frequent predicate of the questions' train side; in the
choice form, when it is offered, else the first option) and chance (mean 1 / choices).
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Protocol

from PIL import Image

from synthvg.schemas import RLE
from synthvg.train.config import Source
from synthvg.train.relations import RelationQuestion, relation_questions


class RelationModel(Protocol):
    name: str

    def answer(
        self, image: Image.Image, regions: list[RLE], question: str, choices: list[str] | None
    ) -> str:
        """One of ``choices`` (or free text when None)."""
        ...


@dataclass
class RelationReport:
    model: str
    root: str
    form: str
    holdout_percent: float
    questions: int
    correct: int
    accuracy: float
    mean_class_accuracy: float
    majority_baseline: float
    majority_predicate: str | None
    chance: float  # the mean of 1 / number of choices
    per_predicate: dict[str, dict] = field(default_factory=dict)


def held_out_questions(
    root: str,
    *,
    sql: str | None = None,
    params: list | None = None,
    holdout_percent: float = 10.0,
    split: str = "test",
    max_regions: int = 100,
) -> list[RelationQuestion]:
    """The relation questions of one side of the split (default: the held-out images) of the
    root's SVG relations, or of a read-only SELECT (``image_id, subject_id, object_id,
    predicate``)."""
    source = Source(
        name="relations",
        task="relation_qa",
        root=root,
        view=None if sql else "svg_relations",
        sql=sql,
        params=params or [],
        split=split,
        holdout_percent=holdout_percent,
    )
    return relation_questions(source, max_regions)


def evaluate_relations(
    model: RelationModel,
    questions: list[RelationQuestion],
    *,
    form: str = "qa",
    train_questions: list[RelationQuestion] | None = None,
    root: str = "",
    holdout_percent: float = 10.0,
) -> RelationReport:
    from synthvg.image_files import to_rgb
    from synthvg.stages.seeds import read_image

    if form not in ("qa", "choice"):
        raise ValueError(f"form must be qa or choice, not {form!r}")
    vocabulary = sorted({p for q in questions for p in q.vocabulary})
    per: dict[str, Counter] = defaultdict(Counter)
    base = Counter(a for q in (train_questions or questions) for a in q.answers)
    majority = base.most_common(1)[0][0] if base else None
    correct = by_majority = 0
    chance = 0.0
    images: dict[str, Image.Image] = {}
    for q in questions:
        if q.image.uri not in images:
            images = {q.image.uri: Image.fromarray(to_rgb(read_image(q.image.uri)[1]))}
        image, regions = images[q.image.uri], [r.mask for r in q.regions]
        truth = q.answers[0]
        if form == "qa":
            picked = model.answer(image, regions, q.question, vocabulary)
            right = picked in q.answers
            by_majority += majority in q.answers
            chance += 1 / len(vocabulary)
        else:
            ask, letter = q.choice_turn(truth)
            options = q.choices(truth)
            letters = [chr(65 + i) for i in range(len(options))]
            right = model.answer(image, regions, ask, letters) == letter
            # the baseline picks the majority predicate when offered, else the first option
            by_majority += (majority if majority in options else options[0]) == truth
            chance += 1 / len(options)
        correct += right
        per[truth]["questions"] += 1
        per[truth]["correct"] += right
    n = len(questions)
    per_predicate = {
        p: {**c, "accuracy": c["correct"] / c["questions"]} for p, c in sorted(per.items())
    }
    return RelationReport(
        model=getattr(model, "name", type(model).__name__),
        root=root,
        form=form,
        holdout_percent=holdout_percent,
        questions=n,
        correct=correct,
        accuracy=correct / n if n else 0.0,
        mean_class_accuracy=(
            sum(v["accuracy"] for v in per_predicate.values()) / len(per_predicate)
            if per_predicate
            else 0.0
        ),
        majority_baseline=by_majority / n if n else 0.0,
        majority_predicate=majority,
        chance=chance / n if n else 0.0,
        per_predicate=per_predicate,
    )


def format_relations_table(report: RelationReport) -> str:
    lines = [
        f"relation classification ({report.form}) of {report.model} on {report.questions} held-out questions",
        f"{'metric':<28}{'value':>10}",
        f"{'accuracy':<28}{report.accuracy:>10.4f}",
        f"{'mean class accuracy':<28}{report.mean_class_accuracy:>10.4f}",
        f"{'majority baseline':<28}{report.majority_baseline:>10.4f}  ({report.majority_predicate})",
        f"{'chance':<28}{report.chance:>10.4f}",
        "",
        f"{'predicate':<20}{'questions':>10}{'correct':>10}{'accuracy':>10}",
    ]
    for p, c in report.per_predicate.items():
        lines.append(f"{p[:19]:<20}{c['questions']:>10}{c['correct']:>10}{c['accuracy']:>10.4f}")
    return "\n".join(lines)


def write_relations_results(report: RelationReport, out: str) -> list[str]:
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"relations-{report.form}.json")
    with open(path, "w") as f:
        json.dump(asdict(report), f, indent=1)
    table = os.path.join(out, f"relations-{report.form}.txt")
    with open(table, "w") as f:
        f.write(format_relations_table(report) + "\n")
    return [path, table]
