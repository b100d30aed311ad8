"""Fixed costs users pay on every command and every build (issue 22), side by side in one run.

Sections (``--only`` picks some; all by default):

  cli      start-up of ``synthvg --help``, ``sql``, ``stats`` and ``show`` against a bare
           ``python -c "import duckdb; ..."``, each a fresh interpreter, interleaved, medians of
           wall and CPU time (user + sys: the steadier figure on a shared machine); ``sql`` on
           the paper-scale root and on a small demo root; with ``--baseline``, the same
           commands from that checkout, interleaved.
  views    every view query of docs/SCHEMA.md's examples (bench_query.QUERIES) through a held
           ``synthvg.storage.connect`` connection against raw DuckDB on the very same files:
           with DuckDB's defaults, and with the Parquet metadata cache the views' connection
           turns on (the honest floor for a held connection); plus ``connect()`` itself.
  prefect  a cheap build (seeds from a synthetic COCO file without image files, rule teacher,
           rule filters) of ``--build-images`` images, plain (``run_build``: the same stage
           functions, no Prefect) against the ``build-dataset`` flow on a ``prefect server
           start`` of its own (``--workers`` flow threads; 1 makes the flow as sequential as
           the plain build), at ``--shard-sizes``; a ``--default-images`` build at the config's
           default shard size; and the fixed cost (one 8-image shard). Also the server's CPU
           and the build process's API requests.
  parts    the parts of that fixed cost one by one: the OpenAI SDK's and scipy's imports (which
           every build used to pay), Prefect's, a temporary server's start, the statistics
           computed against read from publish's file, the flows' parameter schemas; and
           ``show``'s own work (drawing, its PNG at zlib levels 6 and 1).
  groups   the cheap build of ``--build-images`` at the default shard size: plain, the flow with
           one shard per task, and the flow with its default grouping (several shards per task
           when every stage is light), interleaved.
  fixed-ab the fixed cost of a build (8 images, one shard), plain and flow, in this tree and in
           ``--baseline`` (another checkout's ``src/``, e.g. a worktree of main), interleaved.
  import   ``synthvg import`` (``import_svg``) of SVG-format Parquet files that the script
           writes in the release's layout (20 boxes, 38 relations per image) against DuckDB
           flattening the same files into images, regions and relations Parquet, each run a
           fresh process (and the call alone); with ``--baseline``, that tree's import too.

The paper-scale root (146,000 images, 2.92M regions, 5.55M relations in shards of 500) is built
once through the storage's own commit path (benchmarks/bench_query.py) and cached in --root.

Usage: PYTHONPATH=src python benchmarks/bench_fixed_costs.py [--only cli,views,prefect,groups,import,fixed-ab,parts]
       [--root DIR] [--runs 7] [--build-images 10000] [--shard-sizes 100,500] [--workers 1]
       [--default-images 2000] [--import-images 20000]
The Robin CPU re-measurement is its own script (torch): benchmarks/bench_robin.py --threads 1
--repeat 7 (see RESULTS.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "scripts"))
PY = sys.executable
BARE = "import duckdb; duckdb.connect().sql('SELECT 1').fetchall()"


def _med(xs: list[float]) -> float:
    return statistics.median(xs)


# ----------------------------------------------------------------------------- cli
def _measured(argv: list[str], env: dict, capture: bool = False) -> tuple[float, float, str]:
    """Wall and CPU seconds (all its threads, and the children it waited for) of a process, and
    what it printed when ``capture`` (else its output is dropped)."""
    out = subprocess.PIPE if capture else subprocess.DEVNULL
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        argv, env=env, stdout=out, stderr=None if capture else subprocess.DEVNULL, text=True
    )
    printed = proc.stdout.read() if proc.stdout is not None else ""
    _, status, usage = os.wait4(proc.pid, 0)
    if status:
        raise RuntimeError(f"{argv} failed ({status})")
    return time.perf_counter() - t0, usage.ru_utime + usage.ru_stime, printed


def _run_process(argv: list[str], env: dict) -> tuple[float, float]:
    wall, cpu, _ = _measured(argv, env)
    return wall, cpu


def _demo_root(tmp: Path) -> str:
    from synthvg.pipeline import run_build
    from synthvg.schemas.config import load_config

    out = tmp / "demo"
    run_build(load_config(REPO / "configs" / "demo.yaml", out=str(out), limit=8))
    return str(out)


def _installed_env(src: Path) -> dict:
    """The environment of a child running ``src``'s synthvg with its bytecode cached, as after an
    install (a ``PYTHONDONTWRITEBYTECODE`` here would compile every module in every run)."""
    kept = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**kept, "PYTHONPATH": os.pathsep.join([str(src), str(REPO / "benchmarks")])}


def bench_cli(paper_root: str, tmp: Path, runs: int, baseline: Path | None = None) -> list[str]:
    demo = _demo_root(tmp)
    env = _installed_env(REPO / "src")
    cli = [PY, "-m", "synthvg.cli"]
    commands = {
        "bare `python -c 'import duckdb; ...SELECT 1'`": [PY, "-c", BARE],
        "`synthvg --help`": [*cli, "--help"],
        "`synthvg sql --root PAPER 'SELECT 1'`": [*cli, "sql", "--root", paper_root, "SELECT 1"],
        "`synthvg sql --root PAPER 'SELECT count(*) FROM relations'`": [
            *cli,
            "sql",
            "--root",
            paper_root,
            "SELECT count(*) FROM relations",
        ],
        "`synthvg sql --root DEMO 'SELECT 1'`": [*cli, "sql", "--root", demo, "SELECT 1"],
        "`synthvg stats --root DEMO`": [*cli, "stats", "--root", demo],
        "`synthvg show --root DEMO coco:17627`": [
            *cli,
            "show",
            "--root",
            demo,
            "coco:17627",
            "--out",
            str(tmp / "show.png"),
        ],
    }
    envs = {name: env for name in commands}
    if baseline is not None:  # the same commands from another checkout, side by side
        for name in [n for n in commands if n.startswith("`synthvg")]:
            commands[f"{name} of {baseline}"] = commands[name]
            envs[f"{name} of {baseline}"] = _installed_env(baseline)
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in commands}
    for name, argv in commands.items():  # warm-up: page cache, bytecode
        _run_process(argv, envs[name])
    for _ in range(runs):
        for name, argv in commands.items():
            times[name].append(_run_process(argv, envs[name]))
    bare_wall = _med([w for w, _ in times[next(iter(commands))]])
    bare_cpu = _med([c for _, c in times[next(iter(commands))]])
    lines = [
        f"CLI start-up, medians of {runs} interleaved runs (fresh interpreter each)",
        "",
        "| command | wall s | CPU s | wall - bare s | CPU - bare s |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, t in times.items():
        wall, cpu = _med([w for w, _ in t]), _med([c for _, c in t])
        lines.append(
            f"| {name} | {wall:.2f} | {cpu:.2f} | {wall - bare_wall:+.2f} | {cpu - bare_cpu:+.2f} |"
        )
    return lines


# ----------------------------------------------------------------------------- views
#: Joins of millions of rows that take seconds each: DuckDB's own work, timed ``heavy_runs`` times.
HEAVY = {"triples joined to regions (LIMIT 20)", "objects and triplets per image"}


def bench_views(paper_root: str, runs: int, heavy_runs: int = 1) -> list[str]:
    import duckdb
    from bench_query import QUERIES

    from synthvg.storage import Dataset, connect

    ds = Dataset(paper_root)
    files = ds.committed_files()
    listing = {
        t: "[" + ", ".join(f"'{f}'" for f in files.get(t, [])) + "]"
        for t in ("images", "regions", "relations")
    }
    raw = duckdb.connect()
    cached = duckdb.connect()
    cached.execute("SET parquet_metadata_cache = true")
    for con in (raw, cached):
        con.execute("SET enable_progress_bar = false")
    held = connect(ds)
    times: dict[str, list[float]] = {"connect": [], "connect path": []}
    for rep in range(runs):
        t0 = time.perf_counter()
        connect(ds).close()
        times["connect"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        connect(paper_root).close()  # what sql/stats/show do: the commit log read each time
        times["connect path"].append(time.perf_counter() - t0)
        for name, view_sql, raw_sql in QUERIES:
            if rep >= heavy_runs and name in HEAVY:
                continue
            for kind, con, sql in (
                ("views", held, view_sql),
                ("raw", raw, raw_sql.format(**listing)),
                ("cached", cached, raw_sql.format(**listing)),
            ):
                t0 = time.perf_counter()
                con.execute(sql).fetchall()
                times.setdefault(f"{name}|{kind}", []).append(time.perf_counter() - t0)
    med = {k: _med(v) for k, v in times.items()}
    lines = [
        f"Views on the paper-scale root, held connection, medians of {runs} interleaved runs "
        f"({heavy_runs} for the two big joins); "
        f"`connect(Dataset)` {med['connect']:.3f} s, `connect(path)` (the commit log read "
        f"through DuckDB each time, as sql/stats/show do) {med['connect path']:.3f} s",
        "",
        "| query | views s | raw DuckDB s (defaults) | raw DuckDB s (metadata cache) | views / raw | views / raw cached |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, _, _ in QUERIES:
        v, r, c = (med[f"{name}|{k}"] for k in ("views", "raw", "cached"))
        lines.append(f"| {name} | {v:.3f} | {r:.3f} | {c:.3f} | {v / r:.2f} | {v / c:.2f} |")
    return lines


# ----------------------------------------------------------------------------- prefect
def write_coco(path: Path, images: int, seed: int = 0) -> None:
    """A COCO instances file of ``images`` 640x480 images with box-polygon annotations."""
    from bench_ingest import COCO_NAMES, _coco_like

    r = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    _coco_like(path, [(i, 640, 480) for i in range(1, images + 1)], 7.3, COCO_NAMES, r, points=8)


def cheap_config(
    coco: Path, out: Path, shard_size: int, workers: int = 2, task_images: int | None = None
):
    from synthvg.schemas.config import BuildConfig

    return BuildConfig.model_validate(
        {
            "name": f"cheap-{shard_size}",
            "out": str(out),
            "shard_size": shard_size,
            "seeds": {"sources": [{"kind": "coco", "annotations": str(coco)}]},
            "regions": {"proposer": "none", "feed": "all"},
            "depth": {"backend": "none"},
            "teacher": {
                "backend": "rules",
                "max_subjects": 10,
                "min_subjects": 5,
                "objects_per_subject": 4,
            },
            "filters": {"backend": "rules"},
            "robin": {"backend": "none"},
            "edit": {"backend": "none"},
            "executor": {
                "kind": "threads",
                "workers": workers,
                "retries": 0,
                "task_images": task_images,
            },
        }
    )


def _timed_child(code: str, env: dict) -> tuple[float, float]:
    """Wall and CPU seconds of a child process running ``code`` (CPU: the child and its own
    children that it waited for; a Prefect server started elsewhere is not counted)."""
    return _run_process([PY, "-c", code], env)


def server_cpu() -> float:
    """CPU seconds of the Prefect server this script started (its process tree)."""
    import psutil

    total = 0.0
    for p in psutil.Process().children(recursive=True):
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _prefect_env(home: Path, api: str, src: Path) -> dict:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(src), str(REPO / "benchmarks")]),
        "PREFECT_API_URL": api,
        "PREFECT_HOME": str(home),
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }


PARTS_IMPORTS = {
    "bare `python -c pass`": "pass",
    "`import openai` (the SDK the LLM stages use)": "import openai",
    "`from scipy import ndimage` (mask cleaning)": "from scipy import ndimage",
    "`import prefect, prefect.flows`": "import prefect, prefect.flows",
    "`import prefect.server.api.server` (what a temporary server imports first)": (
        "import prefect.server.api.server"
    ),
}
# Times getting a flow API with no server configured or running: a temporary server's start.
TEMPORARY_SERVER = """
import time
t0 = time.perf_counter()
from synthvg.prefect_server import flow_api
with flow_api() as url:
    print(round(time.perf_counter() - t0, 2), flush=True)
"""


def bench_parts(paper_root: str, tmp: Path, runs: int) -> list[str]:
    """The parts of a build's fixed cost measured one by one: what a build process used to import
    for every build (the OpenAI SDK, scipy), Prefect's own imports, a temporary server's start,
    and the statistics ``synthvg build`` now reads from publish's file instead of computing."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in PARTS_IMPORTS}
    for _ in range(runs):
        for name, code in PARTS_IMPORTS.items():
            times[name].append(_run_process([PY, "-c", code], env))
    bare_wall = _med([w for w, _ in times[next(iter(PARTS_IMPORTS))]])
    bare_cpu = _med([c for _, c in times[next(iter(PARTS_IMPORTS))]])
    rows = [
        f"| {name} | {_med([w for w, _ in t]) - bare_wall:.2f} | {_med([c for _, c in t]) - bare_cpu:.2f} |"
        for name, t in times.items()
    ][1:]
    home = tmp / "prefect-home-temporary"
    server_env = {
        **{k: v for k, v in env.items() if not k.startswith("PREFECT_API")},
        "PREFECT_HOME": str(home),
        "SYNTHVG_PREFECT_LOCAL_URL": "",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    starts = []
    for _ in range(2):  # the first start also creates the server's database
        proc = subprocess.run(
            [PY, "-c", TEMPORARY_SERVER], env=server_env, capture_output=True, text=True
        )
        starts.append(float(proc.stdout.split()[0]))
    rows.append(
        f"| a temporary Prefect server, until its API answers (first start / a later one) | "
        f"{starts[0]:.1f} / {starts[1]:.1f} | - |"
    )

    import json

    from synthvg.stats import compute_stats

    computed, read = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        stats = compute_stats(paper_root)
        computed.append(time.perf_counter() - t0)
        text = json.dumps(stats, default=str)
        t0 = time.perf_counter()
        json.loads(text)
        read.append(time.perf_counter() - t0)
    rows.append(
        f"| statistics of the paper-scale root: computed / read from publish's file | "
        f"{_med(computed):.2f} / {_med(read):.4f} | - |"
    )
    rows += _show_parts(tmp, runs) + _flow_schemas(runs)
    return [
        f"Parts of a build's fixed cost, each a fresh process (imports: seconds over a bare "
        f"interpreter, medians of {runs} interleaved runs)",
        "",
        "| part | wall s | CPU s |",
        "|---|---:|---:|",
        *rows,
    ]


def _show_parts(tmp: Path, runs: int) -> list[str]:
    """``synthvg show``'s own work, in this process once warm: drawing one image of the demo
    root, and writing its PNG at zlib's default level and at the level 1 ``show`` uses."""
    import io

    from synthvg.render import render_image_from_dataset

    demo = _demo_root(tmp)
    render_image_from_dataset(demo, "coco:17627")
    drawn, png6, png1 = [], [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        img = render_image_from_dataset(demo, "coco:17627")
        drawn.append(time.perf_counter() - t0)
        for level, out in ((6, png6), (1, png1)):
            t0 = time.perf_counter()
            img.save(io.BytesIO(), format="PNG", compress_level=level)
            out.append(time.perf_counter() - t0)
    return [
        f"| `synthvg show`: drawing one image ({img.width} x {img.height}, its connection "
        f"included) | {_med(drawn):.3f} | - |",
        f"| `synthvg show`: its PNG at zlib level 6 / level 1 | {_med(png6):.3f} / "
        f"{_med(png1):.3f} | - |",
    ]


def _flow_schemas(runs: int) -> list[str]:
    """The JSON schemas of the build flows' parameters, which Prefect builds for every ``@flow``
    (and again for ``with_options``) in every build process: ``BuildConfig`` each time."""
    from prefect.utilities.callables import parameter_schema

    from synthvg.flows.build import build_dataset, publish_flow, shards_flow

    flows = {"build-dataset": build_dataset, "shards": shards_flow, "publish": publish_flow}
    took = {name: [] for name in flows}
    for _ in range(runs):
        for name, f in flows.items():
            t0 = time.perf_counter()
            parameter_schema(f.fn)
            took[name].append(time.perf_counter() - t0)
    each = " / ".join(f"{_med(t):.3f}" for t in took.values())
    total = sum(_med(t) for t in took.values()) + _med(took["shards"])
    return [
        f"| parameter schemas of the flows build-dataset / shards / publish (Prefect's "
        f"`parameter_schema`; `shards` twice a build, `with_options`): {total:.2f} a build | "
        f"{each} | - |"
    ]


def bench_fixed_against(tmp: Path, baseline: Path, runs: int) -> list[str]:
    """The fixed cost of a build (8 images, one shard), this tree against ``baseline`` (another
    checkout's ``src``), plain and flow, all four interleaved on one server."""
    from local_prefect import local_server

    coco = tmp / "coco" / "fixed.json"
    write_coco(coco, 8, seed=1)
    home = tmp / "prefect-home-ab"
    trees = {"this tree": REPO / "src", "baseline": baseline}
    t: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    with local_server(home) as api:
        for rep in range(runs):
            for tree, src in trees.items():
                for kind in ("plain", "flow"):
                    out = tmp / f"ab-{kind}-{tree.replace(' ', '-')}-{rep}"
                    code = (
                        "from bench_fixed_costs import cheap_config, run_variant; "
                        f"run_variant({kind!r}, cheap_config({str(coco)!r}, {str(out)!r}, 8, 1))"
                    )
                    s0 = server_cpu()
                    wall, cpu = _timed_child(code, _prefect_env(home, api, src))
                    t.setdefault((tree, kind), []).append((wall, cpu, server_cpu() - s0))
    rows = []
    for tree in trees:
        plain, flow = t[(tree, "plain")], t[(tree, "flow")]
        pw, fw = _med([x[0] for x in plain]), _med([x[0] for x in flow])
        pc, fc = _med([x[1] for x in plain]), _med([x[1] for x in flow])
        sc = _med([x[2] for x in flow])
        rows.append(
            f"| {tree} | {pw:.2f} | {fw:.2f} | {fw - pw:+.2f} | {pc:.2f} | {fc:.2f} | {sc:.2f} | {fc + sc - pc:+.2f} |"
        )
    return [
        f"Fixed cost of a build (8 images, 1 shard; seeds, rule teacher, rule filters), this tree "
        f"against {baseline}, each a fresh process, plain and flow, medians of {runs} interleaved rounds",
        "",
        "| tree | plain wall s | flow wall s | flow - plain wall s | plain CPU s | flow CPU s | server CPU s | Prefect CPU s (flow + server - plain) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
    ]


def bench_prefect(
    tmp: Path, images: int, shard_sizes: list[int], runs: int, default_images: int, workers: int
) -> list[str]:
    from local_prefect import local_server

    coco = tmp / "coco" / "instances_train2017.json"
    write_coco(coco, images)
    tiny = tmp / "coco" / "tiny.json"
    write_coco(tiny, 8, seed=1)
    home = tmp / "prefect-home"
    lines = []
    with local_server(home) as api:
        env = _prefect_env(home, api, REPO / "src")

        def code(kind: str, src: Path, out: Path, shard_size: int) -> str:
            return (
                "from bench_fixed_costs import cheap_config, run_variant; "
                f"run_variant({kind!r}, cheap_config({str(src)!r}, {str(out)!r}, {shard_size}, {workers}))"
            )

        rows = []
        from synthvg.schemas.config import BuildConfig

        default = BuildConfig.model_fields["shard_size"].default
        small = tmp / "coco" / "small.json"
        write_coco(small, default_images, seed=2)
        cases = (
            [("fixed (8 images, 1 shard)", tiny, 8, 8)]
            + [
                (
                    f"{default_images:,} images, default shards of {default}",
                    small,
                    default,
                    default_images,
                )
            ]
            + [(f"{images:,} images, shards of {s}", coco, s, images) for s in shard_sizes]
        )
        for label, src, size, n_images in cases:
            t: dict[str, list[tuple[float, float]]] = {"plain": [], "flow": []}
            served, requests = [], []
            for rep in range(runs):
                for kind in ("plain", "flow"):  # interleaved
                    out = tmp / f"out-{kind}-{size}-{rep}"
                    counted = tmp / f"requests-{kind}-{size}-{rep}.json"
                    s0 = server_cpu()
                    t[kind].append(
                        _timed_child(
                            code(kind, src, out, size),
                            {**env, "BENCH_COUNT_REQUESTS": str(counted)},
                        )
                    )
                    if kind == "flow":
                        served.append(server_cpu() - s0)
                        requests.append(sum(json.loads(counted.read_text()).values()))
            pw, fw = _med([w for w, _ in t["plain"]]), _med([w for w, _ in t["flow"]])
            pc, fc = _med([c for _, c in t["plain"]]), _med([c for _, c in t["flow"]])
            shards = -(-n_images // size)
            tasks = 3 * shards
            rows.append(
                f"| {label} | {tasks} | {pw:.1f} | {fw:.1f} | {fw - pw:+.1f} | {100 * (fw - pw) / fw:.0f}% | "
                f"{1000 * (fw - pw) / tasks:.0f} | {pc:.1f} | {fc:.1f} | {_med(served):.1f} | "
                f"{fc + _med(served) - pc:+.1f} ({100 * (fc + _med(served) - pc) / (fc + _med(served)):.0f}%) | {_med(requests):.0f} |"
            )
            print(rows[-1], flush=True)
    lines += [
        f"Cheap build (seeds from a synthetic COCO file, rule teacher, rule filters; no image files), "
        f"flow with {workers} worker thread(s) (the plain build is sequential), own `prefect server start`; "
        f"each a fresh process, medians of {runs} interleaved pairs; CPU: the build process's, server CPU apart",
        "",
        "| build | shard tasks | plain wall s | flow wall s | Prefect s | Prefect share of flow wall | ms per shard task | plain CPU s | flow CPU s | server CPU s | Prefect CPU s (flow + server - plain; share) | API requests |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
    ]
    return lines


def bench_groups(tmp: Path, images: int, runs: int, workers: int) -> list[str]:
    """The default shard size's cheap build three ways, interleaved: plain, the flow with one
    shard per task (``executor.task_images: 1``) and the flow with its default grouping."""
    from local_prefect import local_server

    from synthvg.pipeline import task_groups
    from synthvg.schemas.config import BuildConfig
    from synthvg.stages import ShardSpec

    size = BuildConfig.model_fields["shard_size"].default
    coco = tmp / "coco" / f"groups-{images}.json"
    write_coco(coco, images, seed=3)
    shards = [ShardSpec(index=i, image_ids=["x"]) for i in range(-(-images // size))]
    grouped = len(task_groups(cheap_config(coco, tmp, size, workers), shards))
    variants = {
        "plain (no Prefect)": ("plain", 1, 0),
        f"flow, one shard per task ({3 * len(shards)} tasks)": ("flow", 1, 3 * len(shards)),
        f"flow, default grouping ({3 * grouped} tasks)": ("flow", None, 3 * grouped),
    }
    home = tmp / "prefect-home-groups"
    times: dict[str, list[tuple[float, float, float]]] = {v: [] for v in variants}
    with local_server(home) as api:
        env = _prefect_env(home, api, REPO / "src")
        for rep in range(runs):
            for label, (kind, task_images, _) in variants.items():
                out = tmp / f"groups-{kind}-{task_images}-{rep}"
                code = (
                    "from bench_fixed_costs import cheap_config, run_variant; run_variant("
                    f"{kind!r}, cheap_config({str(coco)!r}, {str(out)!r}, {size}, {workers}, {task_images}))"
                )
                s0 = server_cpu()
                wall, cpu = _timed_child(code, env)
                times[label].append((wall, cpu, server_cpu() - s0))
    plain = _med([w for w, _, _ in times["plain (no Prefect)"]])
    rows = []
    for label, ts in times.items():
        wall = _med([w for w, _, _ in ts])
        extra = (
            f"{wall - plain:+.1f} ({100 * (wall - plain) / wall:.0f}%)" if wall != plain else "-"
        )
        rows.append(
            f"| {label} | {wall:.1f} | {extra} | {_med([c for _, c, _ in ts]):.1f} | "
            f"{_med([s for _, _, s in ts]):.1f} |"
        )
    return [
        f"{images:,}-image cheap build at the default shard size ({size}), flow with {workers} "
        f"worker thread(s), own `prefect server start`; each a fresh process, medians of {runs} "
        "interleaved rounds",
        "",
        "| variant | wall s | Prefect s (share of flow wall) | CPU s | server CPU s |",
        "|---|---:|---:|---:|---:|",
        *rows,
    ]


def _count_requests(path: str) -> None:
    """Count this process's HTTP requests to the Prefect API by method and route (ids folded),
    written to ``path`` at exit: what a build asks of the server, per shard task."""
    import atexit
    import collections
    import re

    import httpx

    counts: collections.Counter = collections.Counter()
    ids = re.compile(r"/[0-9a-f]{8}-[0-9a-f-]{27}")

    def route(request) -> str:
        return f"{request.method} {ids.sub('/{id}', request.url.path)}"

    sync_send, async_send = httpx.Client.send, httpx.AsyncClient.send

    def send(self, request, *a, **k):
        counts[route(request)] += 1
        return sync_send(self, request, *a, **k)

    async def asend(self, request, *a, **k):
        counts[route(request)] += 1
        return await async_send(self, request, *a, **k)

    httpx.Client.send, httpx.AsyncClient.send = send, asend
    atexit.register(lambda: Path(path).write_text(json.dumps(counts)))


def run_variant(kind: str, config) -> None:
    """Run one build in this process: ``plain`` (run_build) or ``flow`` (build_dataset)."""
    if os.environ.get("BENCH_COUNT_REQUESTS"):
        _count_requests(os.environ["BENCH_COUNT_REQUESTS"])
    if kind == "plain":
        from synthvg.pipeline import run_build

        run = run_build(config)
    else:
        from synthvg.flows import build_dataset

        run = build_dataset(config)
    assert run.status == "completed", run.status


# ----------------------------------------------------------------------------- import
def write_svg_files(
    out: Path, images: int, per_file: int = 10_000, masks: bool = False
) -> list[str]:
    """SVG-format Parquet files (the release's layout: image_id, file_name, metadata, regions,
    scene_graph JSON) with the paper's density: 20 boxes and 38 relations per image; with
    ``masks``, every region carries a compressed RLE (a 100 x 250 box in the 480 x 640 image,
    ~500 runs, as long as a typical SAM mask's)."""
    import duckdb

    segmentation = "NULL::STRUCT(size BIGINT[], counts VARCHAR)"
    if masks:
        import numpy as np

        from synthvg.masks import encode

        box = np.zeros((480, 640), dtype=bool)
        box[100:200, 50:300] = True
        segmentation = f"{{'size': [480, 640]::BIGINT[], 'counts': '{encode(box).counts}'}}"

    out.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    files = []
    for k, lo in enumerate(range(0, images, per_file)):
        path = out / f"part-{k:05d}.parquet"
        con.execute(
            f"""COPY (
            SELECT 'svg:' || i AS image_id, i || '.jpg' AS file_name,
                   {{'width': 640::BIGINT, 'height': 480::BIGINT}} AS metadata,
                   [{{'bbox': [r * 10.0, r * 5.0, 50.0, 40.0]::DOUBLE[],
                      'segmentation': {segmentation},
                      'area': 2000.0::DOUBLE}} FOR r IN range(20)] AS regions,
                   '{{"objects": ' || to_json(['label' || ((i * 7 + r) % 600) FOR r IN range(20)])
                   || ', "relations": [' || array_to_string(
                       ['[' || k % 20 || ', ' || (k + 1) % 20 || ', "pred' || (i * 13 + k) % 900 || '"]'
                        FOR k IN range(38)], ', ') || ']}}' AS scene_graph
            FROM range({lo}, {min(lo + per_file, images)}) t(i)
            ) TO '{path}' (FORMAT parquet, COMPRESSION zstd)"""
        )
        files.append(str(path))
    return files


def _run_child(code: str, env: dict) -> tuple[float, float, str]:
    """Wall and CPU seconds of a child running ``code``, and what it printed."""
    return _measured([PY, "-c", code], env, capture=True)


#: A child importing the files: the call's own wall and CPU, then the report, as JSON.
IMPORT_CHILD = """
import json, sys, time
from synthvg.export import svg_import
if not {fast}:
    svg_import._fast_layout = lambda schema: False
w, c = time.perf_counter(), time.process_time()
report = svg_import.import_svg({files!r}, {out!r}, shard_size={shard_size})
print(json.dumps([time.perf_counter() - w, time.process_time() - c, vars(report)]))
"""
#: A child flattening the same files with DuckDB alone (``_flatten``).
FLATTEN_CHILD = """
import json, sys, time
from pathlib import Path
import duckdb
from bench_fixed_costs import _flatten
out = Path({out!r}); out.mkdir()
con = duckdb.connect()
w, c = time.perf_counter(), time.process_time()
_flatten(con, {files!r}, out)
print(json.dumps([time.perf_counter() - w, time.process_time() - c, None]))
"""


def bench_import(
    tmp: Path,
    images: int,
    runs: int,
    per_row: bool = True,
    masks: bool = False,
    baseline: Path | None = None,
) -> list[str]:
    """``import_svg`` against DuckDB flattening the same SVG Parquet files, each run a fresh
    process (what a user's command pays, interpreter and imports included) and, apart, the
    call alone: the vectorised import at shards of 1000 and at its default shard size, the
    per-row path (the import as it was before it was vectorised) at shards of 1000, and with
    ``baseline`` (another checkout's ``src/``) that tree's import at its default shard size.
    Wall and CPU (all threads: DuckDB's, the import's reading and commit threads), each variant
    in turn within a repetition."""
    from synthvg.export import svg_import

    files = write_svg_files(tmp / "svg", images, masks=masks)
    default = svg_import.DEFAULT_SHARD_SIZE
    src = REPO / "src"

    def importing(tree: Path, shard_size: int | None, fast: bool = True):
        size = "svg_import.DEFAULT_SHARD_SIZE" if shard_size is None else shard_size
        return lambda out: _run_child(
            IMPORT_CHILD.format(fast=fast, files=files, out=str(out), shard_size=size),
            _installed_env(tree),
        )

    variants = {
        "DuckDB flattening (images, regions, relations with their predicates)": lambda out: (
            _run_child(FLATTEN_CHILD.format(out=str(out), files=files), _installed_env(src))
        ),
        "`synthvg import`, vectorised, shards of 1000": importing(src, 1000),
        f"`synthvg import`, vectorised, default shards ({default:,})": importing(src, None),
    }
    if baseline is not None:
        variants[f"`synthvg import` of {baseline}, its default shards"] = importing(baseline, None)
    if per_row:
        variants["`synthvg import`, per-row path (before), shards of 1000"] = importing(
            src, 1000, fast=False
        )
    t: dict[str, list[tuple[float, float, float, float]]] = {k: [] for k in variants}
    report = None
    for rep in range(runs):
        for k, (name, fn) in enumerate(variants.items()):
            wall, cpu, printed = fn(tmp / f"import-{rep}-{k}")
            call_wall, call_cpu, got = json.loads(printed.strip().splitlines()[-1])
            t[name].append((wall, cpu, call_wall, call_cpu))
            report = got if k == 2 else report
    assert report is not None
    floor = [_med([x[i] for x in t[next(iter(t))]]) for i in range(4)]
    lines = [
        f"`synthvg import` of {images:,} SVG-format images ({report['regions']:,} regions, "
        f"{report['relations']:,} relations, {len(files)} files{', every region with an RLE mask' if masks else ''}) "
        "against DuckDB flattening the same files into Parquet; each run a fresh process; "
        f"medians of {runs}. Process: the whole command (interpreter, imports); call: the "
        "import or flattening alone",
        "",
        "| variant | process wall s | process CPU s | x DuckDB (wall / CPU) | call wall s | call CPU s | x DuckDB (wall / CPU) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, times in t.items():
        m = [_med([x[i] for x in times]) for i in range(4)]
        lines.append(
            f"| {name} | {m[0]:.2f} | {m[1]:.2f} | {m[0] / floor[0]:.1f} / {m[1] / floor[1]:.1f} "
            f"| {m[2]:.2f} | {m[3]:.2f} | {m[2] / floor[2]:.1f} / {m[3] / floor[3]:.1f} |"
        )
    return lines


def _flatten(con, files: list[str], out: Path) -> None:
    """Images, regions and relations of SVG rows as three Parquet files, all in DuckDB."""
    src = f"read_parquet({files!r})"
    con.execute(
        f"COPY (SELECT image_id, file_name, metadata.width, metadata.height FROM {src}) "
        f"TO '{out}/images.parquet' (COMPRESSION zstd)"
    )
    con.execute(
        f"COPY (SELECT image_id, generate_subscripts(regions, 1) - 1 AS region_id, "
        f"unnest(regions, recursive := true), "
        f"unnest(json_extract_string(scene_graph, '$.objects[*]')) AS label FROM {src}) "
        f"TO '{out}/regions.parquet' (COMPRESSION zstd)"
    )
    con.execute(
        f"COPY (SELECT image_id, t[1]::BIGINT AS subject_id, t[2]::BIGINT AS object_id, t[3] AS predicate "
        f"FROM (SELECT image_id, unnest(json_extract_string(scene_graph, '$.relations[*]')::JSON[]) AS j FROM {src}), "
        f"LATERAL (SELECT json_extract_string(j, '$[*]') AS t)) "
        f"TO '{out}/relations.parquet' (COMPRESSION zstd)"
    )


# ----------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--only", default="cli,views,prefect,import")
    ap.add_argument(
        "--root", default=os.path.join(tempfile.gettempdir(), "synthvg-bench-paper-scale")
    )
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--prefect-runs", type=int, default=2)
    ap.add_argument("--build-images", type=int, default=10_000)
    ap.add_argument("--shard-sizes", default="100,500")
    ap.add_argument(
        "--workers",
        type=int,
        default=1,
        help="flow worker threads (1: sequential like the plain build, so the difference is Prefect's)",
    )
    ap.add_argument(
        "--default-images",
        type=int,
        default=2_000,
        help="images of the build at the config's default shard size (small: it is slow)",
    )
    ap.add_argument("--import-images", type=int, default=20_000)
    ap.add_argument("--import-runs", type=int, default=1)
    ap.add_argument(
        "--no-per-row", action="store_true", help="leave out the slow per-row import variant"
    )
    ap.add_argument("--import-masks", action="store_true", help="every region with an RLE mask")
    ap.add_argument(
        "--baseline",
        type=Path,
        help="another checkout's src/: section fixed-ab times a build's fixed cost in both "
        "trees, sections cli and import add that tree's commands",
    )
    ap.add_argument("--ab-runs", type=int, default=5)
    args = ap.parse_args()
    only = set(args.only.split(","))

    import duckdb
    from bench_query import build_root

    if only & {"cli", "views"}:
        build_root(Path(args.root), 146_000, 20, 38, 500)
    tmp = Path(tempfile.mkdtemp(prefix="synthvg-bench-fixed-"))
    load = os.getloadavg()[0]
    out = [
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, {os.cpu_count()} cores "
        f"(shared with other agents' jobs; 1-min load {load:.1f} at the start), Python "
        f"{platform.python_version()}, DuckDB {duckdb.__version__}",
        "",
    ]
    sections = [
        ("cli", lambda: bench_cli(args.root, tmp, args.runs, args.baseline)),
        ("views", lambda: bench_views(args.root, args.runs)),
        (
            "prefect",
            lambda: bench_prefect(
                tmp,
                args.build_images,
                [int(s) for s in args.shard_sizes.split(",")],
                args.prefect_runs,
                args.default_images,
                args.workers,
            ),
        ),
        (
            "import",
            lambda: bench_import(
                tmp,
                args.import_images,
                args.import_runs,
                not args.no_per_row,
                args.import_masks,
                args.baseline,
            ),
        ),
        (
            "groups",
            lambda: bench_groups(tmp, args.build_images, args.prefect_runs, args.workers),
        ),
        ("fixed-ab", lambda: bench_fixed_against(tmp, args.baseline, args.ab_runs)),
        ("parts", lambda: bench_parts(args.root, tmp, args.runs)),
    ]
    if "fixed-ab" in only and args.baseline is None:
        ap.error("section fixed-ab needs --baseline OTHER_CHECKOUT/src")
    for name, fn in sections:
        if name in only:
            lines = fn()
            print("\n".join(lines) + "\n", flush=True)
            out += [*lines, ""]
    out.append(f"1-min load at the end: {os.getloadavg()[0]:.1f}")
    print(out[-1])
    print(json.dumps({"tmp": str(tmp)}))


if __name__ == "__main__":
    main()
