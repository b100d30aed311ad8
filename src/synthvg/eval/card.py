"""The dataset card's quality section: agreement with human graphs, and blind-QA accuracy.

Agreement is computed from the root (no model, a few queries). Blind QA needs an LLM, so the
card reads the last ``synthvg evaluate blind-qa`` results written beside the dataset
(``ROOT/eval/blind-qa/results.json``) and says how to produce them when there are none.
"""

from __future__ import annotations

import posixpath

from synthvg.eval.blind_qa import BLIND_QA_DIR
from synthvg.eval.inputs import EvalInputError
from synthvg.eval.quality import agreement


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _table(rows: list[dict], cols: list[str]) -> list[str]:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return out


def quality_summary(dataset) -> dict:
    """{'agreement': ... or None, 'agreement_note': str, 'blind_qa': ... or None} for report.json."""
    out: dict = {"agreement": None, "agreement_note": None, "blind_qa": None}
    try:
        out["agreement"] = agreement(dataset.url).to_json()
    except EvalInputError as e:
        out["agreement_note"] = str(e)
    out["blind_qa"] = dataset.read_json(
        dataset.abspath(posixpath.join(BLIND_QA_DIR, "results.json"))
    )
    return out


def quality_markdown(summary: dict) -> str:
    """The card's '## Quality without training' section."""
    lines = ["## Quality without training\n"]
    a = summary.get("agreement")
    if a is None:
        lines.append(
            f"Agreement with human graphs: not measured ({summary.get('agreement_note')}).\n"
        )
    else:
        lines.append(
            f"Triplet precision (P) and recall (R) of each stage against the human scene graphs of the "
            f"{a['human_images']} images that have them ({', '.join(a['human_sources'])}); objects "
            "matched by region, predicates after label mapping; `seed:<source>` is one human source "
            "against the others (`synthvg evaluate quality`, docs/EVALUATION.md).\n"
        )
        rows = [
            {**r, "P %": _pct(r["precision"]), "R %": _pct(r["recall"])} for r in a["agreement"]
        ]
        lines += _table(rows, ["source", "images", "human", "predicted", "matched", "P %", "R %"])
        cats = [
            {**r, "P %": _pct(r["precision"]), "R %": _pct(r["recall"])} for r in a["by_category"]
        ]
        if cats:
            lines += ["", "Per relation category:", ""]
            lines += _table(cats, ["source", "category", "human", "predicted", "P %", "R %"])
        lines += [f"\n{n}" for n in a["notes"]]
        lines.append("")
    q = summary.get("blind_qa")
    if q is None:
        lines.append(
            "Blind QA (the paper's Figure 5): not run; `synthvg evaluate blind-qa --root ROOT "
            "--questions testdev_balanced_questions.json --model ...` writes it here.\n"
        )
    else:
        lines.append(
            f"Blind QA (the paper's Figure 5): `{q['model']}` answers GQA questions "
            f"(`{q['questions_file']}`) from each graph source alone, no image"
            + (" (dry run: cached answers only)" if q.get("dry_run") else "")
            + ".\n"
        )
        rows = [{**r, "accuracy %": _pct(r["accuracy"])} for r in q["accuracy"]]
        lines += _table(
            rows,
            ["source", "questions", "answered", "correct", "accuracy %", "empty_graphs", "failed"],
        )
        lines.append("")
    return "\n".join(lines)
