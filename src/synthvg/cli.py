"""The ``synthvg`` command line: build, sql, stats, show, report, setup-prefect."""

from __future__ import annotations

import csv
import json
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from synthvg import prefect_env
from synthvg.prefect_setup import WORK_POOL

prefect_env.configure()

app = typer.Typer(
    name="synthvg",
    help="Build dense, grounded scene-graph datasets (the Synthetic Visual Genome pipeline) and query them with SQL.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

RootOpt = Annotated[str, typer.Option("--root", help="dataset root: a folder or an fsspec URL")]


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(message, fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def _check_root(root: str) -> None:
    from synthvg.storage import Dataset

    ds = Dataset(root)
    if not ds.fs.exists(ds.abspath("synthvg.json")):
        raise _fail(f"{root} is not a synthvg dataset (no synthvg.json); build one with `synthvg build`")


class Runner(StrEnum):
    threads = "threads"
    dask = "dask"
    ray = "ray"


@app.command()
def build(
    config: Annotated[Path, typer.Option("--config", "-c", help="build configuration (YAML)")],
    out: Annotated[str | None, typer.Option("--out", help="dataset root; overrides `out` in the config")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="build only the first N images")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="estimate requests, tokens and cost of paid stages; send nothing")
    ] = False,
    runner: Annotated[
        Runner | None, typer.Option("--runner", help="where shards run; overrides executor.kind (dask and ray need the scale extra)")
    ] = None,
    address: Annotated[
        str | None, typer.Option("--address", help="Dask scheduler or Ray cluster address; default: a local cluster")
    ] = None,
) -> None:
    """Build or resume a dataset. Shards already committed with the same inputs, config and code are skipped."""
    from synthvg.flows.runners import RunnerUnavailable, require
    from synthvg.schemas.config import ConfigError, load_config, with_executor

    if out is not None and "://" not in out:
        out = str(Path(out).resolve())
    try:
        cfg = with_executor(load_config(config, out=out, limit=limit), kind=runner, address=address)
        require(cfg.executor.kind)
    except (ConfigError, RunnerUnavailable) as e:
        raise _fail(str(e)) from None
    if dry_run:
        _print_dry_run(cfg)
        return
    from synthvg.flows import BuildIncomplete, build_dataset
    from synthvg.stats import compute_stats, format_stats
    from synthvg.storage import BuildLocked

    typer.echo(f"building {cfg.name} -> {cfg.out}", err=True)
    try:
        run = build_dataset(cfg)
        code = 0
    except BuildLocked as e:
        raise _fail(str(e)) from None
    except BuildIncomplete as e:
        run, code = e.run, 1
    except FileExistsError as e:
        raise _fail(str(e)) from None
    typer.echo("")
    for s in run.stages:
        if s.status == "skipped":
            typer.echo(f"  {s.stage:<8} skipped: {s.reason}")
        else:
            typer.echo(
                f"  {s.stage:<8} {s.status}: {s.shards_written} shards written, {s.shards_up_to_date} up to date, "
                f"{s.shards_failed} failed; {s.errors} input errors; {s.seconds:.1f}s{_metrics_text(s.metrics)}"
            )
            if s.shards_failed:
                typer.echo(f"           {s.reason}")
    typer.echo("")
    typer.echo(format_stats(compute_stats(cfg.out)))
    from synthvg.pipeline import up_to_date

    if up_to_date(run):
        typer.echo("\nevery shard is up to date: nothing was written")
    typer.echo(f"\nrun {run.run_id}: {run.status}; dataset at {cfg.out}")
    if code:
        typer.secho("some shards failed: run the same command again to retry only those", fg=typer.colors.YELLOW, err=True)
    raise typer.Exit(code)


def _metrics_text(metrics: dict[str, float]) -> str:
    if not metrics:
        return ""
    parts = [f"{k.replace('_', ' ')} {v:g}" for k, v in metrics.items() if k != "cost_usd"]
    if "cost_usd" in metrics:
        parts.append(f"cost ${metrics['cost_usd']:.4f}")
    return "; " + ", ".join(parts)


def _print_dry_run(cfg) -> None:
    from synthvg.pipeline import dry_run
    from synthvg.storage import BuildLocked

    try:
        report = dry_run(cfg)
    except BuildLocked as e:
        raise _fail(str(e)) from None
    typer.echo(f"dry run of {cfg.name} (free stages ran for real; paid stages sent nothing):")
    for stage, m in report.items():
        paid = "cost_usd" in m
        line = f"  {stage:<8} {int(m['shards_done'])} shards done"
        if m.get("shards_blocked"):
            line += f", {int(m['shards_blocked'])} waiting for an earlier paid stage"
        if paid:
            line += (
                f"; would send {int(m['requests'] - m['cached'])} requests ({int(m['cached'])} cached), "
                f"~{int(m['prompt_tokens'])} tokens in, <= {int(m['completion_tokens'])} out, ~${m['cost_usd']:.2f}"
            )
        typer.echo(line)


@app.command()
def report(
    root: RootOpt,
    samples: Annotated[int, typer.Option("--samples", min=0, help="sample scene graphs to render")] = 4,
) -> None:
    """Write the dataset card (ROOT/report/: Table 1, histograms, drop reasons, cost, samples) and its artifacts."""
    from synthvg.flows import dataset_report

    _check_root(root)
    out = dataset_report(root=root, samples=samples)
    typer.echo(f"wrote {len(out['files'])} files under {root.rstrip('/')}/report/")


@app.command("setup-prefect")
def setup_prefect(
    config: Annotated[Path, typer.Option("--config", "-c", help="build configuration naming executor.limits")],
    work_pool: Annotated[str, typer.Option("--work-pool", help="process work pool to create if missing ('' skips)")] = WORK_POOL,
) -> None:
    """Create the config's global concurrency and rate limits and the work pool on the Prefect server."""
    from synthvg.prefect_setup import setup_prefect as setup
    from synthvg.schemas.config import ConfigError, load_config

    try:
        cfg = load_config(config)
    except ConfigError as e:
        raise _fail(str(e)) from None
    for line in setup(cfg.executor.limits, work_pool or None):
        typer.echo(line)


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="SQL over the views images, regions, proposals, relations, errors")],
    root: RootOpt,
    format: Annotated[Format, typer.Option("--format", "-f", help="output format")] = Format.table,
) -> None:
    """Run a read-only SQL query (DuckDB) over a dataset; statements that write are refused."""
    import duckdb

    from synthvg.storage import ReadOnlyError
    from synthvg.storage import query as run_query

    _check_root(root)
    try:
        table = run_query(root, query)
    except ReadOnlyError as e:
        raise _fail(str(e)) from None
    except (ValueError, duckdb.Error) as e:
        raise _fail(f"query failed: {e}") from None
    rows = table.to_pylist()
    if format is Format.json:
        typer.echo(json.dumps(rows, indent=2, default=str))
    elif format is Format.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(table.column_names)
        for r in rows:
            writer.writerow([r[c] for c in table.column_names])
    else:
        from rich.console import Console
        from rich.table import Table

        t = Table(show_lines=False)
        for c in table.column_names:
            t.add_column(c)
        for r in rows:
            t.add_row(*("NULL" if r[c] is None else str(r[c]) for c in table.column_names))
        Console(width=max(100, os.get_terminal_size().columns if sys.stdout.isatty() else 160)).print(t)
        typer.echo(f"{len(rows)} row(s)", err=True)


@app.command()
def stats(
    root: RootOpt,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a report")] = False,
) -> None:
    """Images, regions, relations; the paper's Table 1 columns; counts per category, stage and verdict."""
    from synthvg.stats import compute_stats, format_stats

    _check_root(root)
    s = compute_stats(root)
    typer.echo(json.dumps(s, indent=2, default=str) if as_json else format_stats(s))


@app.command()
def show(
    image_id: Annotated[str, typer.Argument(help="an image_id, e.g. coco:397133")],
    root: RootOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write")],
    stage: Annotated[str | None, typer.Option("--stage", help="only relations of this stage")] = None,
) -> None:
    """Draw an image with its regions (masks, boxes, ids) and relations into a PNG."""
    from synthvg.render import render_image_from_dataset

    _check_root(root)
    try:
        img = render_image_from_dataset(root, image_id, stage=stage)
    except (KeyError, ValueError) as e:
        raise _fail(str(e).strip("\"'")) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, format="PNG")
    typer.echo(f"wrote {out} ({img.width}x{img.height})")


if __name__ == "__main__":
    app()
