"""The command line: sql (read-only), stats, show, and build's config errors."""

from __future__ import annotations

import json

import pytest
from helpers import demo_config
from PIL import Image
from typer.testing import CliRunner

from synthvg.cli import app
from synthvg.pipeline import run_build

runner = CliRunner()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cfg = demo_config(tmp_path_factory.mktemp("cli") / "root", limit=4, shard_size=2)
    run_build(cfg)
    return cfg.out


def test_help_on_every_command():
    for cmd in ([], ["build"], ["sql"], ["stats"], ["show"]):
        result = runner.invoke(app, [*cmd, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output


def test_sql_table_csv_json(built):
    q = "SELECT category, count(*) AS n FROM relations GROUP BY 1"
    table = runner.invoke(app, ["sql", "--root", built, q])
    assert table.exit_code == 0 and "spatial" in table.output
    csv_out = runner.invoke(app, ["sql", "--root", built, q, "--format", "csv"])
    assert csv_out.output.splitlines()[0] == "category,n"
    js = json.loads(runner.invoke(app, ["sql", "--root", built, q, "--format", "json"]).output)
    assert js[0]["category"] == "spatial" and js[0]["n"] > 0


@pytest.mark.parametrize(
    "q", ["DELETE FROM relations", "CREATE TABLE t AS SELECT 1", "DROP VIEW images"]
)
def test_sql_refuses_writes(built, q):
    result = runner.invoke(app, ["sql", "--root", built, q])
    assert result.exit_code == 2
    assert "read-only" in result.output
    assert (
        runner.invoke(
            app, ["sql", "--root", built, "SELECT count(*) AS n FROM relations", "-f", "json"]
        ).exit_code
        == 0
    )


def test_sql_bad_query_and_bad_root(built, tmp_path):
    assert (
        "query failed"
        in runner.invoke(app, ["sql", "--root", built, "SELECT nope FROM images"]).output
    )
    result = runner.invoke(app, ["sql", "--root", str(tmp_path), "SELECT 1"])
    assert result.exit_code == 2 and "not a synthvg dataset" in result.output


def test_stats_report_and_json(built):
    report = runner.invoke(app, ["stats", "--root", built])
    assert report.exit_code == 0
    assert "SVG-RELATIONS" in report.output and "this build" in report.output
    s = json.loads(runner.invoke(app, ["stats", "--root", built, "--json"]).output)
    assert s["images"] == 4
    assert s["table1"]["objects_per_image"] == round(s["regions"] / 4, 2)
    assert {r["category"] for r in s["by_category"]} == {"spatial"}


def test_show_writes_a_png(built, tmp_path):
    out = tmp_path / "show.png"
    result = runner.invoke(app, ["show", "--root", built, "coco:17627", "--out", str(out)])
    assert result.exit_code == 0, result.output
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width > 640
    missing = runner.invoke(app, ["show", "--root", built, "coco:1", "--out", str(out)])
    assert missing.exit_code == 2 and "no image" in missing.output


def test_build_config_errors_stop_before_work(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        f"out: {tmp_path / 'root'}\nseeds: {{sources: [{{annotations: a.json, images: i}}]}}\nteacher: {{bakend: rules}}\n"
    )
    result = runner.invoke(app, ["build", "--config", str(bad)])
    assert result.exit_code == 2
    assert "teacher.rules.bakend: unknown key" in result.output
    assert not (tmp_path / "root").exists()


def test_top_predicates_count_what_table_1_counts(tmp_path):
    """The card's predicate chart leaves out dropped relations, as its triplets/image does."""
    from synthvg.schemas import RelationRecord, RelationVerdictRecord, to_table
    from synthvg.stats import compute_stats
    from synthvg.storage import Dataset
    from synthvg.storage.dataset import utcnow

    ds = Dataset(tmp_path / "root")
    ds.init()

    def rel(i: int, predicate: str) -> RelationRecord:
        return RelationRecord(
            relation_id=f"r{i}",
            image_id="coco:1",
            subject_id=1,
            object_id=2,
            predicate=predicate,
            predicate_raw=predicate,
            category="spatial",
            stage="teacher",
            generator="rules",
            model="rules",
            run_id="r",
        )

    relations = [rel(0, "on"), rel(1, "on"), rel(2, "near"), rel(3, "near"), rel(4, "near")]
    dropped = [
        RelationVerdictRecord(
            relation_id=f"r{i}",
            image_id="coco:1",
            verdict="dropped",
            verdict_reason="rule",
            verified_by="rule:near",
            run_id="r",
        )
        for i in (2, 3, 4)
    ]
    ds.commit_shard(
        "teacher",
        0,
        "fp",
        {"relations": to_table(RelationRecord, relations)},
        run_id="r",
        image_count=1,
        started_at=utcnow(),
    )
    ds.commit_shard(
        "filters",
        0,
        "fp",
        {"relation_verdicts": to_table(RelationVerdictRecord, dropped)},
        run_id="r",
        image_count=1,
        started_at=utcnow(),
    )
    assert compute_stats(str(tmp_path / "root"))["top_predicates"] == [
        {"predicate": "on", "relations": 2}
    ]
