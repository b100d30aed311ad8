"""The paper's Figure-5 experiment: a blind LLM answers GQA questions from the scene graph alone.

For every question whose image is in the root, and every graph source (a stage's relations:
``seed`` = the human graphs, ``teacher``, ``robin``, ``edit``), the LLM gets the image's scene
graph as text (the objects the source's relations use, with attributes and boxes, then the
relations) and the question, never the image; its answer is compared with GQA's answer after
normalisation (lower case, no final period, no leading article): GQA's exact-match accuracy.

Questions are read in GQA's released format (``testdev_balanced_questions.json``,
``val_balanced_questions.json``, ...): a JSON object ``{question_id: {"imageId", "question",
"answer", ...}}``. GQA image ids are VG ids; they join the root's ``images.gqa_id`` (else
``vg_id``). Requests go through the shared :class:`~synthvg.llm.LLMClient` (request cache, rate
limits, retries, hard budget, key never logged); a dry run answers from the cache only and
estimates what the rest would cost.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from synthvg.eval.inputs import EvalInputError
from synthvg.llm.config import LLMConfig

GraphSource = Literal["seed", "teacher", "robin", "edit"]
GRAPH_SOURCES: tuple[GraphSource, ...] = ("seed", "teacher", "robin", "edit")
PROMPT_VERSION = "blind-qa/v1"
BLIND_QA_DIR = "eval/blind-qa"
SYSTEM_PROMPT = (
    "You answer questions about an image you cannot see. All you know is its scene graph: "
    "the objects (with attributes and boxes as x1,y1,x2,y2 pixels) and the relations between "
    "them. Answer with a single word or a short phrase, nothing else. If the graph does not "
    "tell, give your best guess."
)


class BlindQAConfig(BaseModel):
    """What ``synthvg evaluate blind-qa`` runs (the LLM endpoint is any OpenAI-compatible one)."""

    model_config = ConfigDict(extra="forbid")

    llm: LLMConfig
    sources: list[GraphSource] = Field(
        default_factory=lambda: list(GRAPH_SOURCES),
        description="graph sources to ask with (those without relations in the root are skipped)",
    )
    objects: Literal["related", "all"] = Field(
        "related", description="objects listed: those the source's relations use, or every region"
    )
    boxes: bool = Field(True, description="give each object's box")
    limit: int | None = Field(None, ge=1, description="first N questions (by question id)")
    include_dropped: bool = Field(False, description="also relations the filters dropped")
    max_tokens: int = Field(16, ge=1, description="answer length cap")


@dataclass
class Question:
    qid: str
    gqa_image: str
    question: str
    answer: str


def read_questions(path: str | Path) -> tuple[list[Question], Counter]:
    """GQA's question file (``{qid: {imageId, question, answer, ...}}``), by question id;
    entries without the three fields are counted, never guessed."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise EvalInputError(f"question file not found: {path}") from None
    except (OSError, ValueError) as e:
        raise EvalInputError(f"cannot read {path} as JSON: {e}") from None
    if not isinstance(data, dict):
        raise EvalInputError(
            f"{path} is not a GQA question file: expected an object {{question_id: {{imageId, question, answer}}}}"
        )
    out: list[Question] = []
    counts: Counter[str] = Counter()
    for qid, q in data.items():
        if not isinstance(q, dict) or not all(
            isinstance(q.get(k), str | int) for k in ("imageId", "question", "answer")
        ):
            counts["question_without_image_question_or_answer"] += 1
            continue
        out.append(Question(str(qid), str(q["imageId"]), str(q["question"]), str(q["answer"])))
    if not out:
        raise EvalInputError(f"{path} holds no usable question (imageId, question and answer)")
    out.sort(key=lambda q: (len(q.qid), q.qid))
    return out, counts


_ARTICLE = re.compile(r"^(?:a|an|the)\s+")


def normalise_answer(text: str) -> str:
    """Lower case, first line, no surrounding quotes or final period, no leading article."""
    text = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    text = text.strip().strip("\"'`").strip().lower().rstrip(".!").strip()
    text = re.sub(r"^answer:\s*", "", text)
    return _ARTICLE.sub("", text).strip()


def graph_text(
    image: dict,
    regions: dict[int, dict],
    relations: Sequence[dict],
    *,
    objects: str = "related",
    boxes: bool = True,
) -> str:
    """The scene graph as the blind LLM reads it (annotations are data: newlines flattened)."""

    def flat(s) -> str:
        return " ".join(str(s).split())

    used = sorted(
        set(regions)
        if objects == "all"
        else {r["subject_id"] for r in relations} | {r["object_id"] for r in relations}
    )

    def name(rid: int) -> str:
        r = regions.get(rid) or {}
        return flat(r.get("label") or next(iter(r.get("descriptions") or []), None) or "object")

    lines = [f"Image: {image['width']} x {image['height']} pixels.", "Objects:"]
    for rid in used:
        r = regions.get(rid) or {}
        attrs = ", ".join(flat(a) for a in (r.get("attributes") or []))
        box = r.get("bbox")
        where = (
            f" at ({box['x1']:.0f},{box['y1']:.0f},{box['x2']:.0f},{box['y2']:.0f})"
            if boxes and box
            else ""
        )
        lines.append(f"  [{rid}] {name(rid)}{f' ({attrs})' if attrs else ''}{where}")
    if not used:
        lines.append("  (none)")
    lines.append("Relations:")
    seen = set()
    for r in relations:
        key = (r["subject_id"], r["predicate"], r["object_id"])
        if key in seen:
            continue
        seen.add(key)
        lines.append(
            f"  ({name(r['subject_id'])} [{r['subject_id']}], {flat(r['predicate'])}, "
            f"{name(r['object_id'])} [{r['object_id']}])"
        )
    if not seen:
        lines.append("  (none)")
    return "\n".join(lines)


def request(graph: str, question: str, cfg: BlindQAConfig) -> dict:
    return {
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {
                "role": "user",
                "content": f"Scene graph:\n{graph}\n\nQuestion: {question}\nAnswer:",
            },
        ],
        "temperature": cfg.llm.temperature if cfg.llm.temperature is not None else 0.0,
        "max_tokens": cfg.max_tokens,
    }


@dataclass
class SourceScore:
    source: str
    questions: int = 0
    answered: int = 0
    correct: int = 0
    failed: Counter = field(default_factory=Counter)
    empty_graphs: int = 0  # questions whose image has no relation of this source

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.answered if self.answered else None

    def row(self) -> dict:
        return {
            "source": self.source,
            "questions": self.questions,
            "answered": self.answered,
            "correct": self.correct,
            "accuracy": self.accuracy,
            "empty_graphs": self.empty_graphs,
            "failed": sum(self.failed.values()),
        }


@dataclass
class BlindQAReport:
    root: str
    questions_file: str
    model: str
    dry_run: bool
    scores: list[SourceScore]
    answers: list[dict]
    counts: dict[str, int]
    cost: dict[str, float]
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "root": self.root,
            "questions_file": self.questions_file,
            "model": self.model,
            "prompt_version": PROMPT_VERSION,
            "dry_run": self.dry_run,
            "accuracy": [s.row() for s in self.scores],
            "failures": {s.source: dict(s.failed) for s in self.scores if s.failed},
            "counts": self.counts,
            "cost": self.cost,
            "notes": self.notes,
        }


def _load(root: str, gqa_ids: Iterable[str], include_dropped: bool):
    """Images by GQA id, their regions and their relations per stage."""
    from synthvg.storage import connect, fetch_dicts

    con = connect(root)
    try:
        ids = sorted(set(gqa_ids))
        images = fetch_dicts(
            con,
            "SELECT image_id, width, height, coalesce(gqa_id, CAST(vg_id AS VARCHAR)) AS gqa "
            "FROM images WHERE list_contains(?, coalesce(gqa_id, CAST(vg_id AS VARCHAR)))",
            [ids],
        )
        by_gqa = {i["gqa"]: i for i in images}
        image_ids = [i["image_id"] for i in images]
        regions: dict[str, dict[int, dict]] = defaultdict(dict)
        for r in fetch_dicts(
            con,
            "SELECT image_id, region_id, label, descriptions, attributes, bbox FROM regions "
            "WHERE list_contains(?, image_id)",
            [image_ids],
        ):
            regions[r["image_id"]][r["region_id"]] = r
        where = "" if include_dropped else "AND (verdict <> 'dropped' OR stage = 'seed')"
        relations: dict[tuple[str, str], list[dict]] = defaultdict(list)
        for r in fetch_dicts(
            con,
            "SELECT image_id, stage, subject_id, object_id, predicate FROM relations "
            f"WHERE list_contains(?, image_id) AND (stage <> 'seed' OR generator = 'human') {where} "
            "ORDER BY image_id, stage, subject_id, object_id, predicate",
            [image_ids],
        ):
            relations[(r["image_id"], r["stage"])].append(r)
        row = con.execute(
            "SELECT list(DISTINCT stage) FROM relations WHERE stage <> 'seed' OR generator = 'human'"
        ).fetchone()
        stages = row[0] if row else None
    finally:
        con.close()
    return by_gqa, regions, relations, set(stages or [])


def blind_qa(
    root: str,
    questions_file: str | Path,
    cfg: BlindQAConfig,
    *,
    dry_run: bool = False,
    cache_dir: str | None = None,
    emit=None,
) -> BlindQAReport:
    """Ask every question once per graph source; accuracy per source (see the module doc)."""
    from synthvg.llm import LLMClient, LLMConfigError, LLMResult, LLMUnreachable
    from synthvg.llm.client import requests_disabled
    from synthvg.stages.llm_stage import estimate

    questions, counts = read_questions(questions_file)
    counts["questions_in_file"] = len(questions) + sum(counts.values())
    by_gqa, regions, relations, present = _load(
        root, (q.gqa_image for q in questions), cfg.include_dropped
    )
    usable = [q for q in questions if q.gqa_image in by_gqa]
    counts["question_image_not_in_root"] = len(questions) - len(usable)
    if not usable:
        raise EvalInputError(
            f"none of the {len(questions)} questions is about an image of {root} "
            f"(GQA image ids such as {questions[0].gqa_image!r} match images.gqa_id or vg_id)"
        )
    if cfg.limit is not None:
        usable = usable[: cfg.limit]
    counts["questions_asked"] = len(usable)
    notes = []
    sources = [s for s in cfg.sources if s in present]
    for s in cfg.sources:
        if s not in present:
            notes.append(f"{s}: no relations in this root; not asked")
    if not sources:
        raise EvalInputError(f"{root} has no relations of the sources {cfg.sources}")
    jobs: list[tuple[Question, GraphSource, dict, bool]] = []
    for source in sources:
        for q in usable:
            image = by_gqa[q.gqa_image]
            rels = relations.get((image["image_id"], source), [])
            text = graph_text(
                image,
                regions.get(image["image_id"], {}),
                rels,
                objects=cfg.objects,
                boxes=cfg.boxes,
            )
            jobs.append((q, source, request(text, q.question, cfg), not rels))
    cache = cache_dir or str(Path(root) / "cache" / "llm")
    client = LLMClient(cfg.llm, cache_dir=cache, budget_scope=f"blind-qa:{cfg.llm.model}")
    try:
        cost = estimate(client, [j[2] for j in jobs])
        if emit:
            emit(
                f"blind QA: {len(usable)} questions x {len(sources)} sources = {len(jobs)} requests "
                f"({cost['cached']:.0f} cached, estimated ${cost['cost_usd']:.4f} for the rest)"
            )
        if dry_run:
            with requests_disabled():
                results = client.map_complete([j[2] for j in jobs])
        else:
            client.begin_run(f"blind-qa-{uuid.uuid4().hex[:12]}", stage="blind-qa")
            results = client.map_complete([j[2] for j in jobs])
        spent = client.usage.cost_usd
    finally:
        if client.ledger is not None:
            client.ledger.flush()
        client.close()
    if not dry_run and results and not any(isinstance(r, LLMResult) for r in results):
        first = next(r for r in results if isinstance(r, BaseException))
        if isinstance(first, LLMConfigError | LLMUnreachable):
            raise first  # no key, no endpoint: one line, not a table of failures
    scores = {s: SourceScore(s) for s in sources}
    answers = []
    for (q, asked, _, empty), res in zip(jobs, results, strict=True):
        sc = scores[asked]
        sc.questions += 1
        sc.empty_graphs += empty
        row = {
            "question_id": q.qid,
            "gqa_image": q.gqa_image,
            "image_id": by_gqa[q.gqa_image]["image_id"],
            "source": asked,
            "question": q.question,
            "answer": q.answer,
            "prediction": None,
            "correct": None,
            "cached": None,
            "error": None,
        }
        if isinstance(res, LLMResult):
            pred = normalise_answer(res.content)
            ok = pred == normalise_answer(q.answer)
            sc.answered += 1
            sc.correct += ok
            row.update(prediction=pred, correct=ok, cached=res.cached)
        else:
            kind = "not_sent_dry_run" if dry_run else type(res).__name__
            sc.failed[kind] += 1
            row["error"] = kind
        answers.append(row)
    cost = {**cost, "spent_usd": float(spent)}
    return BlindQAReport(
        root=root,
        questions_file=str(questions_file),
        model=cfg.llm.model,
        dry_run=dry_run,
        scores=list(scores.values()),
        answers=answers,
        counts={k: int(v) for k, v in counts.items()},
        cost=cost,
        notes=notes,
    )


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def format_blind_qa(report: BlindQAReport) -> str:
    lines = [
        f"blind QA (scene graph only, no image): {report.questions_file} on {report.root}",
        f"model {report.model}, prompt {PROMPT_VERSION}"
        + (" (dry run: cached answers only)" if report.dry_run else ""),
        "",
        f"{'graph source':<14}{'questions':>10}{'answered':>10}{'correct':>9}{'acc %':>8}{'empty graph':>13}{'failed':>8}",
    ]
    for s in report.scores:
        r = s.row()
        lines.append(
            f"{s.source:<14}{r['questions']:>10}{r['answered']:>10}{r['correct']:>9}"
            f"{_pct(r['accuracy']):>8}{r['empty_graphs']:>13}{r['failed']:>8}"
        )
    lines.append("")
    lines.append(
        "counted: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in report.counts.items() if v)
    )
    c = report.cost
    lines.append(
        f"requests {c['requests']:.0f} ({c['cached']:.0f} from the cache), "
        f"estimated ${c['cost_usd']:.4f} before sending, spent ${c.get('spent_usd', 0.0):.4f}"
    )
    for s in report.scores:
        if s.failed:
            lines.append(
                f"{s.source}: not answered: " + ", ".join(f"{k} {v}" for k, v in s.failed.items())
            )
    lines.extend(report.notes)
    return "\n".join(lines)


def write_blind_qa(report: BlindQAReport, out: str | Path) -> list[Path]:
    """results.json (accuracy per source, counts, cost) and answers.parquet (one row per ask)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "results.json", out / "answers.parquet"]
    files[0].write_text(json.dumps(report.to_json(), indent=2))
    s = pa.string()
    pq.write_table(
        pa.Table.from_pylist(
            report.answers,
            schema=pa.schema(
                [
                    ("question_id", s),
                    ("gqa_image", s),
                    ("image_id", s),
                    ("source", s),
                    ("question", s),
                    ("answer", s),
                    ("prediction", s),
                    ("correct", pa.bool_()),
                    ("cached", pa.bool_()),
                    ("error", s),
                ]
            ),
        ),
        files[1],
    )
    return files
