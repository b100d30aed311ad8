"""Dataset versions on Delta Lake: every build is a version, old ones stay readable, nothing is
lost silently; versions, --as-of, restore, compact, vacuum and migrate from the command line."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import dataset_rows, demo_config
from typer.testing import CliRunner

from synthvg.cli import app
from synthvg.pipeline import WithdrawalRefused, run_build, up_to_date
from synthvg.schemas import ImageRecord, to_table
from synthvg.storage import Dataset, query

runner = CliRunner()


def _images(root, as_of=None) -> int:
    return query(Dataset(root, as_of=as_of), "SELECT count(*) AS n FROM images").to_pylist()[0]["n"]


@pytest.fixture(scope="module")
def replaced(tmp_path_factory):
    """A 6-image build, a refused 2-image build, the same with --replace: (root, run1, run3)."""
    root = str(tmp_path_factory.mktemp("versions") / "root")
    first = run_build(demo_config(root, limit=6, shard_size=2))
    assert up_to_date(run_build(demo_config(root, limit=6, shard_size=2)))
    with pytest.raises(WithdrawalRefused):
        run_build(demo_config(root, limit=2, shard_size=2))
    third = run_build(demo_config(root, limit=2, shard_size=2), replace=True)
    return root, first, third


def test_every_build_is_a_version_and_replace_keeps_the_old_state_readable(replaced):
    root, first, third = replaced
    assert first.version is not None and third.version > first.version
    assert _images(root) == 2
    assert _images(root, as_of=first.version) == 6
    result = runner.invoke(
        app,
        [
            "sql",
            "--root",
            root,
            "--as-of",
            str(first.version),
            "SELECT count(*) AS n FROM images",
            "-f",
            "json",
        ],
    )
    assert result.exit_code == 0 and json.loads(result.stdout) == [{"n": 6}]


def test_versions_lists_each_run(replaced):
    root, first, third = replaced
    result = runner.invoke(app, ["versions", "--root", root])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(first.run_id in line for line in lines) and any(
        third.run_id in line for line in lines
    )
    assert lines[-1] == f"latest version: {third.version}"


def test_export_as_of_an_old_version(replaced, tmp_path):
    root, first, _ = replaced
    result = runner.invoke(
        app,
        [
            "export",
            "--root",
            root,
            "--as-of",
            str(first.version),
            "--out",
            str(tmp_path / "svg"),
            "--stage",
            "teacher",
        ],
    )
    assert result.exit_code == 0, result.output
    now = runner.invoke(
        app, ["export", "--root", root, "--out", str(tmp_path / "now"), "--stage", "teacher"]
    )
    assert now.exit_code == 0, now.output

    def exported(folder):
        return sum(pq.read_table(f).num_rows for f in (tmp_path / folder).glob("part-*.parquet"))

    assert (
        exported("now") <= 2 < exported("svg")
    )  # the old version's 6 images, the current version's 2


def test_unknown_versions_are_one_line_errors(replaced):
    root, _, third = replaced
    for version in (str(third.version + 100),):
        result = runner.invoke(app, ["sql", "--root", root, "--as-of", version, "SELECT 1"])
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
        assert "has no version" in result.output


def test_restore_vacuum_and_compact(tmp_path):
    root = str(tmp_path / "root")
    first = run_build(demo_config(root, limit=4, shard_size=2))
    before = dataset_rows(root)
    run_build(demo_config(root, limit=2, shard_size=2), replace=True)
    assert _images(root) == 2
    result = runner.invoke(app, ["restore", "--root", root, str(first.version)])
    assert result.exit_code == 0, result.output
    assert dataset_rows(root) == before
    assert up_to_date(
        run_build(demo_config(root, limit=4, shard_size=2))
    )  # the restored state is what a build expects

    result = runner.invoke(app, ["compact", "--root", root])
    assert result.exit_code == 0, result.output
    assert dataset_rows(root) == before

    run_build(demo_config(root, limit=2, shard_size=2), replace=True)
    result = runner.invoke(app, ["vacuum", "--root", root, "--keep-days", "0"])
    assert result.exit_code == 0 and "file(s) deleted" in result.output
    assert _images(root) == 2
    gone = runner.invoke(app, ["sql", "--root", root, "--as-of", str(first.version), "SELECT 1"])
    assert gone.exit_code == 2 and "removed (by `synthvg vacuum`)" in gone.output


def test_a_corrupt_commit_log_is_a_one_line_error(tmp_path):
    root = tmp_path / "root"
    run_build(demo_config(root, limit=2, shard_size=2))
    log = sorted((root / "completions" / "_delta_log").glob("*.json"))[-1]
    log.write_text("{broken")
    from synthvg.storage import dataset

    dataset._RECORD_LOGS.clear()  # as a new process would: nothing cached
    result = runner.invoke(app, ["stats", "--root", str(root)])
    assert result.exit_code == 2 and "cannot read the commit log" in result.output
    assert "Traceback" not in result.output


# ---- migrate ------------------------------------------------------------------------------------


def _old_layout(root: Path, shards: int = 3) -> None:
    """A root as synthvg wrote it before Delta tables: JSON manifests beside plain Parquet files."""
    root.mkdir(parents=True)
    (root / "synthvg.json").write_text(json.dumps({"format": "synthvg-dataset", "version": 1}))
    for shard in range(shards):
        table = to_table(
            ImageRecord,
            [
                ImageRecord(
                    image_id=f"coco:{shard}{i}",
                    sources=["coco"],
                    file_uri="/x.jpg",
                    width=4,
                    height=3,
                    content_hash="h",
                )
                for i in range(2)
            ],
        )
        buf = io.BytesIO()
        pq.write_table(table, buf)
        rel = f"tables/images/seeds/part-{shard:05d}-fp{shard}.parquet"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(buf.getvalue())
        manifest = {
            "stage": "seeds",
            "shard": shard,
            "fingerprint": f"fp{shard}",
            "image_count": 2,
            "run_id": "old-run",
            "synthvg_version": "0.1.0",
            "started_at": "2026-11-01T00:00:00Z",
            "finished_at": "2026-11-01T00:00:01Z",
            "seconds": 1.0,
            "files": [{"table": "images", "path": rel, "rows": 2}],
        }
        (root / "manifests" / "seeds").mkdir(parents=True, exist_ok=True)
        (root / "manifests" / "seeds" / f"shard-{shard:05d}.json").write_text(json.dumps(manifest))


class Killed(Exception):
    """Stands for SIGKILL in the middle of a migrate (click turns KeyboardInterrupt into an exit)."""


def test_old_roots_are_refused_until_migrated_and_a_killed_migrate_resumes(tmp_path, monkeypatch):
    root = tmp_path / "old"
    _old_layout(root)
    refused = runner.invoke(app, ["sql", "--root", str(root), "SELECT 1"])
    assert refused.exit_code == 2 and f"synthvg migrate --root {root}" in refused.output

    real = Dataset.commit_shard
    calls = {"n": 0}

    def dies_on_the_second(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Killed("killed")
        return real(self, *a, **k)

    monkeypatch.setattr(Dataset, "commit_shard", dies_on_the_second)
    with pytest.raises(Killed):
        runner.invoke(app, ["migrate", "--root", str(root)], catch_exceptions=False)
    monkeypatch.undo()
    assert (
        runner.invoke(app, ["sql", "--root", str(root), "SELECT 1"]).exit_code == 2
    )  # still refused: half converted

    done = runner.invoke(app, ["migrate", "--root", str(root)])
    assert done.exit_code == 0, done.output
    assert "2 shard(s) committed as Delta tables (1 already were)" in done.output
    assert _images(str(root)) == 6
    assert not (root / "manifests").exists() and not list(
        (root / "tables" / "images").glob("seeds/*")
    )
    assert (
        "already in the Delta layout" in runner.invoke(app, ["migrate", "--root", str(root)]).output
    )
    verified = runner.invoke(app, ["verify", "--root", str(root)])
    assert verified.exit_code == 0 and "all intact" in verified.output


def test_other_engines_see_the_views_rows_through_the_completion_join(replaced):
    """docs/STORAGE.md's join over the raw Delta tables (deltalake + DuckDB) equals the view."""
    import duckdb
    from deltalake import DeltaTable

    root, _, _ = replaced
    completions = DeltaTable(f"{root}/completions").to_pyarrow_table()  # noqa: F841 (read by DuckDB)
    regions = DeltaTable(f"{root}/tables/regions").to_pyarrow_table()  # noqa: F841
    external = duckdb.sql("""
        WITH latest AS (SELECT stage, shard, arg_max(fingerprint, sequence) AS fingerprint FROM completions GROUP BY ALL)
        SELECT r.image_id, r.region_id, r.label FROM regions r JOIN latest c
          ON r._stage = c.stage AND r._shard = c.shard AND r._fingerprint = left(c.fingerprint, 16)
        ORDER BY ALL""").fetchall()
    view = query(root, "SELECT image_id, region_id, label FROM regions ORDER BY ALL").to_pylist()
    assert external == [tuple(r.values()) for r in view] and len(external) > 0
