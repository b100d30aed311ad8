"""What a newcomer meets first: ordinary mistakes get one line (no traceback), output says what
its numbers mean, and nothing silently does nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import DEMO_CONFIG, REPO, demo_config
from typer.testing import CliRunner

import synthvg
from synthvg.cli import app
from synthvg.pipeline import run_build
from synthvg.storage import Dataset, build_lock, connect

runner = CliRunner()
SRC = str(Path(synthvg.__file__).resolve().parents[1])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cfg = demo_config(tmp_path_factory.mktemp("newcomer") / "root", limit=3, shard_size=3)
    run_build(cfg)
    return cfg.out


def one_line_error(result, code: int = 2) -> str:
    """The command failed with ``code`` and said why in exactly one line, without a traceback."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The CLI as a user runs it, in a fresh interpreter, recording every import."""
    full_env = {**os.environ, "PYTHONPATH": SRC, **(env or {})}
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "synthvg.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
    )


def imported(proc: subprocess.CompletedProcess) -> set[str]:
    """Top-level packages the process imported (from ``-X importtime``'s lines on stderr)."""
    return {
        m.group(1).split(".")[0]
        for m in re.finditer(r"^import time:.*\|\s*([\w.]+)$", proc.stderr, re.M)
    }


def messages(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"synthvg {synthvg.__version__}"


def test_show_out_folder_and_unknown_stage(built, tmp_path):
    line = one_line_error(
        runner.invoke(app, ["show", "--root", built, "coco:17627", "--out", str(tmp_path)])
    )
    assert "is a folder" in line and "PNG" in line
    line = one_line_error(
        runner.invoke(
            app,
            [
                "show",
                "--root",
                built,
                "coco:17627",
                "--out",
                str(tmp_path / "a.png"),
                "--stage",
                "techer",
            ],
        )
    )
    assert "unknown stage 'techer'" in line and "teacher" in line
    assert not (tmp_path / "a.png").exists()


def test_show_says_what_it_hides(built, tmp_path, monkeypatch):
    import synthvg.render as render

    seen = {}

    def capture(image, regions, relations, **kw):
        seen.update(relations=relations, **kw)
        return image

    monkeypatch.setattr(render, "render_scene_graph", capture)
    con = connect(built)
    image_id, dropped = con.execute(
        "SELECT image_id, count(*) FILTER (WHERE verdict = 'dropped') FROM relations GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 1"
    ).fetchall()[0]
    result = runner.invoke(
        app, ["show", "--root", built, image_id, "--out", str(tmp_path / "s.png")]
    )
    assert result.exit_code == 0, result.output
    assert seen["dropped"] == dropped
    assert all(r["verdict"] != "dropped" for r in seen["relations"])
    unverified = sum(r["verdict"] == "unverified" for r in seen["relations"])
    legend = render.relation_legend(seen["relations"], dropped)
    assert legend == [
        f"shown: kept and unverified; {dropped} dropped by the filters hidden",
        f"? = unverified ({unverified}): no filter kept or dropped it",
    ]


def test_build_config_folder(tmp_path):
    line = one_line_error(runner.invoke(app, ["build", "--config", str(tmp_path)]))
    assert line == f"config {tmp_path} is a folder, not a YAML file (e.g. configs/demo.yaml)"


def _config_with(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(DEMO_CONFIG.read_text().replace("../data/", str(REPO / "data") + "/") + text)
    return p


def test_build_missing_input_path_is_a_config_error(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(
        DEMO_CONFIG.read_text()
        .replace("instances_val2017.json", "instances_vall2017.json")
        .replace("../data/", str(REPO / "data") + "/")
    )
    result = runner.invoke(app, ["build", "--config", str(p), "--out", str(tmp_path / "root")])
    line = one_line_error(result)
    missing = REPO / "data" / "tinycoco" / "annotations" / "instances_vall2017.json"
    assert line == f"preflight: seeds.sources[1].annotations: no such file or folder: {missing}"
    assert not (tmp_path / "root").exists()


def test_dry_run_with_a_missing_model_path(tmp_path):
    p = _config_with(tmp_path, "")
    p.write_text(
        p.read_text().replace("robin: {backend: none}", "robin: {checkpoint: models/robin-3b}")
    )
    line = one_line_error(
        runner.invoke(
            app, ["build", "--config", str(p), "--out", str(tmp_path / "root"), "--dry-run"]
        )
    )
    assert (
        line
        == f"preflight: robin.checkpoint: no such file or folder: {tmp_path / 'models' / 'robin-3b'}"
    )
    assert not (tmp_path / "root").exists()


def test_build_refused_by_a_lock_before_prefect(tmp_path):
    root = tmp_path / "root"
    dataset = Dataset(str(root))
    dataset.init()
    with build_lock(dataset, "other-run"):
        proc = run_cli("build", "--config", str(DEMO_CONFIG), "--out", str(root), "--limit", "2")
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = messages(proc)
    assert len(lines) == 1 and "is being written by build run other-run" in lines[0], lines
    assert "prefect" not in imported(proc)


def test_ctrl_c_hints_to_rerun(tmp_path, monkeypatch):
    import synthvg.flows

    def interrupted(cfg, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthvg.flows, "build_dataset", interrupted)
    result = runner.invoke(
        app,
        ["build", "--config", str(DEMO_CONFIG), "--out", str(tmp_path / "root"), "--limit", "2"],
    )
    assert result.exit_code == 130
    assert (
        result.output.strip().splitlines()[-1]
        == "interrupted: committed shards are kept; run the same command again to resume"
    )


def test_import_of_a_non_parquet_file(tmp_path):
    bad = tmp_path / "graphs.json"
    bad.write_text('{"image_id": 1}')
    line = one_line_error(runner.invoke(app, ["import", str(bad), "--out", str(tmp_path / "root")]))
    assert line.startswith(f"{bad} is not a Parquet file")
    assert not (tmp_path / "root").exists()


def test_export_out_file_and_a_stage_without_relations(built, tmp_path):
    f = tmp_path / "out.parquet"
    f.write_bytes(b"keep me")
    line = one_line_error(runner.invoke(app, ["export", "--root", built, "--out", str(f)]))
    assert "is a file" in line and f.read_bytes() == b"keep me"
    out = tmp_path / "svg"
    assert runner.invoke(app, ["export", "--root", built, "--out", str(out)]).exit_code == 0
    before = sorted(out.glob("part-*.parquet"))
    line = one_line_error(
        runner.invoke(app, ["export", "--root", built, "--out", str(out), "--stage", "robin"])
    )
    assert line == f"no robin relations in {built} (relations come from: teacher); nothing written"
    assert sorted(out.glob("part-*.parquet")) == before and before


def test_setup_prefect_refuses_without_a_server(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"), PYTHONPATH=SRC, SYNTHVG_PREFECT_LOCAL_URL=""
    )
    proc = subprocess.run(
        [sys.executable, "-m", "synthvg.cli", "setup-prefect", "--config", str(DEMO_CONFIG)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        "no Prefect server: start one with `prefect server start` (found on 127.0.0.1:4200) "
        "or set PREFECT_API_URL to yours"
    ]
    assert proc.stdout == ""


def test_stats_rows_have_headers(built):
    out = runner.invoke(app, ["stats", "--root", built]).output
    lines = out.splitlines()
    for title, header in (
        ("relations by category:", ["category", "relations"]),
        ("relations by verdict:", ["verdict", "relations"]),
        ("verdicts by rule or verifier:", ["rule", "kept", "dropped", "unverified"]),
        ("verdicts by category:", ["category", "kept", "dropped", "unverified"]),
    ):
        assert lines[lines.index(title) + 1].split() == header


def test_csv_uses_lf(built):
    out = runner.invoke(
        app,
        ["sql", "--root", built, "SELECT 1 AS a, 'x' AS b UNION ALL SELECT 2, 'y'", "-f", "csv"],
    ).output
    assert out == "a,b\n1,x\n2,y\n"


def test_sql_help_lists_every_view(built):
    con = connect(built)
    views = {
        r[0]
        for r in con.sql("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()
        if not r[0].startswith("_")
    }
    assert {"relations", "svg_full", "relation_verdicts"} <= views
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", runner.invoke(app, ["sql", "--help"]).output).split())
    assert not [v for v in views if not re.search(rf"\b{v}\b", text)]


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["sql", "--root", "{root}", "SELECT count(*) FROM relations"],
        ["stats", "--root", "{root}"],
        ["show", "--root", "{root}", "coco:17627", "--out", "{tmp}/s.png"],
        ["export", "--root", "{root}", "--out", "{tmp}/svg"],
    ],
    ids=["help", "sql", "stats", "show", "export"],
)
def test_commands_without_a_flow_import_no_heavy_module(built, tmp_path, args):
    """openai, Prefect (and so a Prefect server), torch and transformers only where they are used."""
    proc = run_cli(*(a.format(root=built, tmp=tmp_path) for a in args))
    assert proc.returncode == 0, "\n".join(messages(proc))
    assert not imported(proc) & {"openai", "prefect", "torch", "transformers"}
    modules = {m.group(1) for m in re.finditer(r"^import time:.*\|\s*([\w.]+)$", proc.stderr, re.M)}
    if args[0] in ("--help", "sql", "stats"):
        # Opening a dataset reads its commit log through DuckDB (synthvg.storage.snapshot): no
        # pyarrow (with numpy ~0.15 s of CPU to import), fsspec, deltalake, record models, and
        # sql's table is drawn without rich where that is exact (synthvg.text_table; --help is
        # typer's, in rich).
        assert not imported(proc) & {"pyarrow", "numpy", "fsspec", "deltalake"}
        assert "synthvg.schemas.records" not in modules
        assert args[0] == "--help" or "rich" not in imported(proc)
    if args[0] == "show":
        # Drawing masks needs numpy, Pillow and pycocotools; not pyarrow, fsspec (a local image
        # file), deltalake or the record models (the rows' masks and boxes are drawn as read).
        assert not imported(proc) & {"pyarrow", "fsspec", "deltalake"}
        assert "synthvg.schemas.records" not in modules


REAL_DATA = REPO / "configs" / "real_data.example.yaml"


def test_real_data_example_config_validates(tmp_path):
    """The worked real-data config (docs/REAL_DATA.md) is valid, names every input it needs,
    and passes the path check once those exist (here: empty stand-ins under a temp clone)."""
    import shutil

    from synthvg.preflight import check_paths
    from synthvg.schemas.config import input_paths, load_config

    path = tmp_path / "configs" / REAL_DATA.name
    path.parent.mkdir()
    shutil.copy(REAL_DATA, path)
    cfg = load_config(path)
    missing = check_paths(cfg)
    keys = [line.split(":")[0] for line in missing]
    assert (
        keys
        == [k for k, _ in input_paths(cfg)]
        == [
            "seeds.sources[0].annotations",
            "seeds.sources[0].images",
            "seeds.sources[1].annotations",
            "seeds.sources[1].images",
            "seeds.sources[2].root",
            "seeds.sources[2].images",
            "seeds.sources[3].annotations",
            "seeds.sources[4].annotations",
            "regions.segment_anything.checkpoint",
            "depth.path",
            "robin.checkpoint",
        ]
    )
    result = runner.invoke(app, ["build", "--config", str(path), "--dry-run", "--limit", "1000"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip().splitlines() == [f"preflight: {line}" for line in missing]
    for _, p in input_paths(cfg):
        p = Path(p)
        assert tmp_path in p.parents  # relative to the clone, as the doc says
        if p.suffix in (".json", ".pth"):
            p.parent.mkdir(parents=True, exist_ok=True)
            p.touch()
        else:
            p.mkdir(parents=True, exist_ok=True)
    assert check_paths(cfg) == []
    assert (cfg.teacher.backend, cfg.edit.backend, cfg.edit.source) == ("openai", "openai", "robin")
    assert (
        cfg.regions.segment_anything.model_type == "vit_h" and cfg.depth.backend == "depth-anything"
    )
    assert {s.dataset for s in cfg.seeds.sources} == {"coco", "vg", "gqa"}


def test_dry_run_without_an_api_key_needs_none(tmp_path, monkeypatch):
    """A dry run sends nothing, so it needs no key: it prices the requests and says so."""
    monkeypatch.delenv("SYNTHVG_TEST_NO_KEY", raising=False)
    p = _config_with(tmp_path, "")
    p.write_text(
        p.read_text()
        .replace(
            "teacher:\n",
            "teacher:\n  api_key_env: SYNTHVG_TEST_NO_KEY\n  model: gpt-4o-2024-08-06\n",
            1,
        )
        .replace("  backend: rules\n  max_subjects", "  backend: openai\n  max_subjects")
        .replace("  objects_per_subject: 4\n", "")
    )
    result = runner.invoke(
        app,
        ["build", "--config", str(p), "--out", str(tmp_path / "root"), "--dry-run", "--limit", "1"],
    )
    assert result.exit_code == 0, result.output
    assert (
        "paid stages sent nothing" in result.output
        and "teacher" in result.output
        and "Traceback" not in result.output
    )


def test_id_tags_of_small_objects_side_by_side_do_not_overlap():
    from synthvg.render import tag_positions
    from synthvg.schemas import Box

    boxes = [
        Box(x1=100, y1=100, x2=112, y2=110),
        Box(x1=101, y1=101, x2=113, y2=111),
        Box(x1=103, y1=100, x2=115, y2=109),
    ]
    sizes = [(14, 12), (14, 12), (14, 12)]
    spots = tag_positions(boxes, sizes, (640, 480))
    rects = [(x, y, x + w, y + h) for (x, y), (w, h) in zip(spots, sizes, strict=True)]
    for i, a in enumerate(rects):
        for b in rects[i + 1 :]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)
    assert spots[0] == (102, 102)  # the first tag keeps its box's top-left corner
