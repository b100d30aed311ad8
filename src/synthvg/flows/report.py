"""The ``dataset-report`` flow: a dataset card, as files beside the dataset and Prefect artifacts.

A deployment trigger runs it whenever a build deployment's flow run completes (see
``prefect.yaml``); it runs by hand on any dataset root too. Everything is read back from the
dataset (its views and run manifests), so the card describes what is committed, not what one
run believed it wrote. Later training and evaluation flows attach to builds the same way.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
from collections.abc import Iterator, Sequence
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from synthvg import __version__
from synthvg.flows.build import artifact_key, output_link
from synthvg.render import render_image_from_dataset
from synthvg.schemas import RunManifest
from synthvg.stats import HEADLINE_COUNTS, PAPER_TABLE_1, compute_stats
from synthvg.storage import Dataset, connect, fetch_dicts

REPORT_DIR = "report"
#: Where `synthvg serve` serves the datasets, when it does (the card links to it).
EXPLORER_URL_ENV = "SYNTHVG_EXPLORER_URL"
#: Cost-like metrics summed per stage over every run (a resumed build's cost spreads over runs).
COST_METRICS = (
    "requests",
    "cached",
    "paid_requests",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
)


def dataset_root_of(flow_run_id: str) -> str:
    """The ``out`` of a build flow run, read from its parameters on the Prefect server.

    Triggers pass the completed run's event resource id (``prefect.flow-run.<uuid>``).
    """
    from prefect.client.orchestration import get_client

    run_id = flow_run_id.removeprefix("prefect.flow-run.")
    try:
        uuid = UUID(run_id)
    except ValueError:
        raise ValueError(f"{flow_run_id!r} is not a flow run id") from None
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(uuid)
    config = run.parameters.get("config") or {}
    if "out" not in config:
        raise ValueError(
            f"flow run {run_id} ({run.name}) has no config.out parameter: not a build-dataset run"
        )
    return config["out"]


def drop_reasons(root: str | Dataset) -> dict[str, list[dict]]:
    """What the pipeline left out and why: relations the filters dropped, regions the segmenter
    did not confirm, inputs that failed (the errors table)."""
    con = connect(root)
    try:
        return {
            "relations": fetch_dicts(
                con,
                """
                SELECT coalesce(verified_by, '(no filter)') AS rule, count(*) AS dropped
                FROM relations WHERE verdict = 'dropped' GROUP BY 1 ORDER BY 2 DESC, 1""",
            ),
            "regions": fetch_dicts(
                con,
                """
                SELECT 'regions' AS stage, 'not confirmed by a proposal (IoU <= threshold)' AS reason,
                       count(*) AS dropped
                FROM regions WHERE kept = false HAVING count(*) > 0""",
            ),
            "inputs": fetch_dicts(
                con,
                """
                SELECT stage, kind, count(*) AS dropped FROM errors GROUP BY 1, 2 ORDER BY 1, 3 DESC, 2""",
            ),
        }
    finally:
        con.close()


def stage_costs(runs: Sequence[RunManifest]) -> list[dict]:
    """Time and model-API spend per stage, summed over every run of the dataset."""
    rows: dict[str, dict] = {}
    for run in runs:
        for s in run.stages:
            if s.status == "skipped":
                continue
            row = rows.setdefault(
                s.stage,
                {"stage": s.stage, "runs": 0, "shards_written": 0, "seconds": 0.0}
                | dict.fromkeys(COST_METRICS, 0.0),
            )
            row["runs"] += 1
            row["shards_written"] += s.shards_written
            row["seconds"] += s.seconds
            for k in COST_METRICS:
                row[k] += s.metrics.get(k, 0.0)
    return [
        {
            k: round(v, 2 if k == "seconds" else 6) if isinstance(v, float) else v
            for k, v in r.items()
        }
        for r in rows.values()
    ]


def api_spend(dataset: Dataset, runs: Sequence[RunManifest]) -> list[dict]:
    """Every paid LLM request per stage and model, from the spend ledger(s): shards that failed
    and were redone are in it too, so this is what the dataset cost, not what it kept."""
    from synthvg.llm import SpendLedger, spend_totals

    def cache_urls(node) -> Iterator[str]:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "cache_url" and isinstance(v, str):
                    yield v
                else:
                    yield from cache_urls(v)
        elif isinstance(node, list):
            for v in node:
                yield from cache_urls(v)

    urls = {dataset.uri("cache/llm/ledger")} | {
        f"{u.rstrip('/')}/ledger" for r in runs for u in cache_urls(r.config)
    }
    entries = [e for url in sorted(urls) for e in SpendLedger(url).entries()]
    rows = [
        {"stage": stage, "model": model, **{k: round(v, 6) for k, v in totals.items()}}
        for (stage, model), totals in sorted(
            spend_totals(entries, ("stage", "model")).items(), key=lambda kv: str(kv[0])
        )
    ]
    if len(rows) > 1:
        rows.append(
            {
                "stage": "total",
                "model": "",
                **{k: round(v, 6) for k, v in spend_totals(entries)[()].items()},
            }
        )
    return rows


def histogram_png(rows: Sequence[dict], label: str, count: str, title: str) -> bytes:
    """A horizontal bar chart (most frequent on top) as PNG bytes."""
    from matplotlib.figure import Figure  # the object API: no pyplot state, safe in threads

    labels = [str(r[label]) for r in rows][::-1] or ["(none)"]
    values = [r[count] for r in rows][::-1] or [0]
    fig = Figure(figsize=(7, 0.6 + 0.28 * len(labels)), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    bars = ax.barh(labels, values, color="#3b6ea8")
    ax.bar_label(bars, padding=2, fontsize=8)
    ax.set_title(title)
    ax.set_xlabel(count)
    ax.margins(x=0.12)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _md_table(rows: Sequence[dict]) -> str:
    if not rows:
        return "(none)\n"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _table1(stats: dict) -> list[dict]:
    t = stats["table1"]
    rows = [
        {
            "dataset": n,
            "images": i,
            "objects/image": o,
            "triplets/image": tr,
            "predicates/region": p,
        }
        for n, i, o, tr, p in PAPER_TABLE_1
    ]
    rows.append(
        {
            "dataset": "this dataset",
            "images": stats["images"],
            "objects/image": t["objects_per_image"],
            "triplets/image": t["triplets_per_image"],
            "predicates/region": t["predicates_per_region"],
        }
    )
    return rows


def _sample_ids(root: str | Dataset, n: int) -> list[str]:
    con = connect(root)
    try:
        rows = con.execute(
            "SELECT image_id, count(*) FROM relations WHERE verdict <> 'dropped' GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT ?",
            [n],
        ).fetchall()
    finally:
        con.close()
    return [r[0] for r in rows]


def _object_labels(dataset: Dataset, top: int = 20) -> list[dict]:
    con = connect(dataset)
    try:
        return fetch_dicts(
            con,
            "SELECT coalesce(label, '(none)') AS label, count(*) AS regions FROM regions GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT ?",
            [top],
        )
    finally:
        con.close()


def _card(
    name: str,
    dataset: Dataset,
    runs: Sequence[RunManifest],
    stats: dict,
    drops: dict,
    costs: list[dict],
    images: dict[str, str],
    spend: list[dict] | None = None,
    explorer_url: str | None = None,
    quality: str = "",
) -> str:
    """The card's markdown; ``images`` maps a figure's file name to how the card links it."""
    last = runs[-1] if runs else None
    run_line = (
        f"Last run `{last.run_id}`: **{last.status}**, {last.images} images in {last.shards} shards, "
        f"finished {last.finished_at or '-'}."
        if last
        else "No run manifest found."
    )
    samples = [f for f in images if f.startswith("samples/")]
    parts = [
        f"# Dataset card: {name}\n",
        f"Dataset at `{dataset.url}`, built by synthvg {last.synthvg_version if last else __version__}. {run_line}\n",
        *(
            [
                f"Browse it (gallery, images with masks and graphs, SQL): [explorer]({explorer_url})\n"
            ]
            if explorer_url
            else []
        ),
        "## Contents\n",
        _md_table([{k: stats[k] for k in HEADLINE_COUNTS}]),
        "## Table 1 (the SVG paper's columns)\n",
        "objects/image: regions per image; triplets/image: relations not dropped, per image; "
        "predicates/region: those relations per region.\n",
        _md_table(_table1(stats)),
        "## Histograms\n",
        f"![relation categories]({images['categories.png']})\n",
        f"![predicates]({images['predicates.png']})\n",
        f"![object labels]({images['objects.png']})\n",
        "## What was dropped, and why\n",
        "Relations dropped by the filters, per rule or verifier:\n",
        _md_table(drops["relations"]),
        "Regions no mask proposal confirmed:\n",
        _md_table(drops["regions"]),
        "Inputs that failed (the `errors` table), per stage and kind:\n",
        _md_table(drops["inputs"]),
        "## Cost\n",
        f"Summed over {len(runs)} run(s) of this dataset (a resumed build's work spreads over its runs).\n",
        _md_table(costs),
        *(
            [
                "Model API spend per stage and model, from the spend ledger: every paid request, those of "
                "shards that failed and were redone included.\n",
                _md_table(spend),
            ]
            if spend
            else []
        ),
        quality,
        "## Sample scene graphs\n",
        "The images with the most relations not dropped: regions (masks, boxes, ids) and relations.\n",
        *[f"![{f}]({images[f]})\n" for f in samples],
    ]
    return "\n".join(parts)


@flow(name="dataset-report", flow_run_name="dataset-report")
def dataset_report(
    root: str | None = None,
    build_flow_run_id: str | None = None,
    samples: int = 4,
    explorer_url: str | None = None,
) -> dict:
    """Write ``ROOT/report/`` (README.md card, PNG figures, report.json) and the same as artifacts.

    Give ``root``, or ``build_flow_run_id`` (what the deployment trigger passes) to report on
    the dataset that build wrote. ``explorer_url`` (default: ``$SYNTHVG_EXPLORER_URL``), where
    ``synthvg serve`` serves the dataset: the card and an artifact link to it.
    """
    explorer_url = explorer_url or os.environ.get(EXPLORER_URL_ENV) or None
    logger = get_run_logger()
    if root is None:
        if build_flow_run_id is None:
            raise ValueError("give root or build_flow_run_id")
        root = dataset_root_of(build_flow_run_id)
    dataset = Dataset(root)
    runs = dataset.runs()
    name = runs[-1].name if runs else dataset.url.rstrip("/").rsplit("/", 1)[-1]
    stats = compute_stats(dataset)
    drops = drop_reasons(dataset)
    costs = stage_costs(runs)
    spend = api_spend(dataset, runs)
    from synthvg.eval.card import quality_markdown, quality_summary

    quality = quality_summary(dataset)
    quality_md = quality_markdown(quality)

    figures = {
        "categories.png": histogram_png(
            stats["by_category"], "category", "relations", "Relations per category"
        ),
        "predicates.png": histogram_png(
            stats["top_predicates"],
            "predicate",
            "relations",
            "Top predicates (relations not dropped)",
        ),
        "objects.png": histogram_png(
            _object_labels(dataset), "label", "regions", "Top object labels"
        ),
    }
    for image_id in _sample_ids(dataset, samples):
        buf = io.BytesIO()
        render_image_from_dataset(dataset.url, image_id).save(buf, format="PNG")
        figures[f"samples/{re.sub(r'[^A-Za-z0-9_.-]+', '-', image_id)}.png"] = buf.getvalue()

    written = [dataset.write_file(f"{REPORT_DIR}/{f}", data) for f, data in figures.items()]
    summary = {
        "name": name,
        "stats": stats,
        "drop_reasons": drops,
        "cost": costs,
        "api_spend": spend,
        "quality": quality,
        "figures": sorted(figures),
    }
    written.append(
        dataset.write_file(
            f"{REPORT_DIR}/report.json", json.dumps(summary, indent=2, default=str).encode()
        )
    )
    card = _card(
        name,
        dataset,
        runs,
        stats,
        drops,
        costs,
        {f: f for f in figures},
        spend,
        explorer_url,
        quality_md,
    )
    written.append(dataset.write_file(f"{REPORT_DIR}/README.md", card.encode()))

    # The artifact shows the figures inline: histograms as data URLs; sample renderings (large)
    # are linked by path, since the Prefect UI cannot read the dataset's files.
    inline = {
        f: f"data:image/png;base64,{base64.b64encode(d).decode()}"
        for f, d in figures.items()
        if not f.startswith("samples/")
    }
    inline |= {f: dataset.abspath(f"{REPORT_DIR}/{f}") for f in figures if f.startswith("samples/")}
    create_markdown_artifact(
        key=artifact_key(name, "dataset-card"),
        markdown=_card(
            name, dataset, runs, stats, drops, costs, inline, spend, explorer_url, quality_md
        ),
        description=f"dataset card of {name}",
    )
    create_link_artifact(
        key=artifact_key(name, "dataset-card-file"),
        link=output_link(dataset, f"{REPORT_DIR}/README.md"),
        link_text=dataset.abspath(f"{REPORT_DIR}/README.md"),
        description=f"the dataset card of {name}, beside the data",
    )
    if explorer_url:
        create_link_artifact(
            key=artifact_key(name, "explorer"),
            link=explorer_url,
            link_text=f"browse {name} in the explorer",
            description=f"{name} in `synthvg serve`: gallery, images, SQL",
        )
    create_table_artifact(
        key=artifact_key(name, "report-table1"),
        table=_table1(stats),
        description=f"{name} against the SVG paper's Table 1",
    )
    create_table_artifact(
        key=artifact_key(name, "report-drops"),
        table=[
            {"what": "relation", "by": r["rule"], "dropped": r["dropped"]}
            for r in drops["relations"]
        ]
        + [{"what": "region", "by": r["reason"], "dropped": r["dropped"]} for r in drops["regions"]]
        + [
            {"what": f"input ({r['stage']})", "by": r["kind"], "dropped": r["dropped"]}
            for r in drops["inputs"]
        ]
        or [{"what": "(nothing dropped)"}],
        description=f"what {name} dropped, and why",
    )
    create_table_artifact(
        key=artifact_key(name, "report-cost"),
        table=costs or [{"stage": "(no runs)"}],
        description=f"time and API spend per stage of {name}",
    )
    logger.info("dataset card of %s: %s", name, dataset.abspath(f"{REPORT_DIR}/README.md"))
    return {"root": dataset.url, "files": written}
