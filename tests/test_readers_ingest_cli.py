"""``synthvg ingest``: one source's official files to seed tables; clear messages, no tracebacks."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import TINYCOCO
from typer.testing import CliRunner

from synthvg.cli import app
from synthvg.storage import connect

SEEDS = Path(__file__).parent / "fixtures" / "seeds"
runner = CliRunner()


@pytest.mark.parametrize(
    ("fmt", "paths", "images", "counts"),
    [
        (
            "coco",
            [TINYCOCO / "annotations" / "instances_val2017.json"],
            TINYCOCO / "images" / "val2017",
            (6, 136, 0),
        ),
        ("lvis", [SEEDS / "lvis_v0.5" / "lvis_val_6.json"], None, (6, 29, 0)),
        ("refcoco", [SEEDS / "refcoco"], None, (2, 3, 0)),
        ("vg", [SEEDS / "vg"], None, (3, 14, 7)),
        ("gqa", [SEEDS / "gqa" / "val_sceneGraphs.json"], None, (2, 5, 3)),
        ("psg", [SEEDS / "psg" / "psg.json", SEEDS / "panopticapi"], None, (2, 50, 4)),
        ("ade20k", [SEEDS / "ade20k"], None, (1, 3, 0)),
    ],
)
def test_ingest_each_format(tmp_path, fmt, paths, images, counts):
    args = ["ingest", "--format", fmt, *map(str, paths), "--out", str(tmp_path / "root")]
    result = runner.invoke(app, args + (["--images", str(images)] if images else []))
    assert result.exit_code == 0, result.output
    assert f"ingested {fmt}" in result.output
    con = connect(str(tmp_path / "root"))
    got = tuple(
        con.sql(f"SELECT count(*) FROM {t}").fetchall()[0][0]
        for t in ("images", "regions", "relations")
    )
    assert got == counts
    assert con.sql("SELECT count(*) FROM errors").fetchall() == [(0,)]
    hashed = con.sql("SELECT count(*) FROM images WHERE content_hash <> ''").fetchall()[0][0]
    assert hashed == (
        counts[0] if images else 0
    )  # without --images: the annotations' sizes and URLs


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "psg", str(SEEDS / "psg" / "psg.json")], "panoptic"),
        (["--format", "vg", str(SEEDS / "vg" / "relationships.json")], "no image sizes"),
        (["--format", "coco", str(SEEDS / "nope.json")], "not found"),
        (
            ["--format", "vg", str(SEEDS / "gqa" / "val_sceneGraphs.json")],
            "not a Visual Genome release file",
        ),
        (
            ["--format", "gqa", str(SEEDS / "vg" / "objects.json")],
            "top level must be a JSON object",
        ),
        (["--format", "refcoco", str(SEEDS / "vg")], "no refs"),
    ],
)
def test_ingest_refuses_clearly(tmp_path, args, message):
    result = runner.invoke(app, ["ingest", *args, "--out", str(tmp_path / "root")])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_ingest_truncated_file_names_it(tmp_path):
    bad = tmp_path / "instances_val2017.json"
    bad.write_text((TINYCOCO / "annotations" / "instances_val2017.json").read_text()[:5000])
    result = runner.invoke(
        app, ["ingest", "--format", "coco", str(bad), "--out", str(tmp_path / "root")]
    )
    assert result.exit_code == 2 and str(bad) in result.output and "not valid JSON" in result.output
