"""The storage commit/resume rules, the views, read-only SQL and the single-writer lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from helpers import image_table

from synthvg.storage import (
    BuildLocked,
    Dataset,
    ReadOnlyError,
    build_lock,
    check_read_only,
    connect,
    query,
)
from synthvg.storage.dataset import utcnow


def _commit(ds: Dataset, shard: int, fp: str, *ids: str, stage: str = "seeds"):
    return ds.commit_shard(
        stage,
        shard,
        fp,
        {"images": image_table(*ids)},
        run_id="r",
        image_count=len(ids),
        started_at=utcnow(),
    )


def _count(ds, table="images"):
    return query(ds, f"SELECT count(*) AS n FROM {table}").to_pylist()[0]["n"]


def test_commit_then_views_see_rows(tmp_path):
    ds = Dataset(tmp_path / "root")
    ds.init()
    m = _commit(ds, 0, "fp-a", "a", "b")
    assert ds.is_committed("seeds", 0, "fp-a")
    assert not ds.is_committed("seeds", 0, "fp-other")
    assert [f.rows for f in m.files] == [2]
    assert _count(ds) == 2


def test_recommit_replaces_without_duplicates(tmp_path):
    from deltalake import DeltaTable

    ds = Dataset(tmp_path)
    ds.init()
    _commit(ds, 0, "fp-a", "a", "b")
    _commit(ds, 0, "fp-b", "a", "b", "c")
    assert _count(ds) == 3
    current = DeltaTable(str(tmp_path / "tables" / "images")).file_uris()
    assert len(current) == 1 and "_fingerprint=fp-b" in current[0]
    assert DeltaTable(str(tmp_path / "tables" / "images")).to_pyarrow_table().num_rows == 3


def test_a_shard_without_its_record_is_invisible_and_its_previous_state_stays(
    tmp_path, monkeypatch
):
    """A kill after the data transactions but before the record: readers keep the old state."""
    ds = Dataset(tmp_path)
    ds.init()
    _commit(ds, 0, "fp-a", "a")
    _commit(ds, 1, "fp-b", "b")
    monkeypatch.setattr(
        Dataset, "_append_record", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt())
    )
    with pytest.raises(KeyboardInterrupt):
        _commit(ds, 1, "fp-c", "b", "c")  # killed just before its record
    with pytest.raises(KeyboardInterrupt):
        _commit(ds, 2, "fp-d", "d")  # a new shard killed the same way
    monkeypatch.undo()
    assert _count(ds) == 2  # shard 1 as it was, shard 2 not at all
    assert ds.is_committed("seeds", 1, "fp-b") and not ds.is_committed("seeds", 2, "fp-d")
    _commit(ds, 1, "fp-c", "b", "c")
    _commit(ds, 2, "fp-d", "d")
    assert _count(ds) == 4


def test_every_commit_is_a_version_and_old_versions_stay_readable(tmp_path):
    ds = Dataset(tmp_path)
    ds.init()
    assert ds.version() is None
    _commit(ds, 0, "fp-a", "a", "b")
    first = ds.version()
    _commit(ds, 0, "fp-b", "a")
    _commit(ds, 1, "fp-c", "c")
    assert ds.version() == first + 2
    assert _count(Dataset(tmp_path, as_of=first)) == 2
    assert _count(ds) == 2
    assert query(
        Dataset(tmp_path, as_of=first),
        "SELECT string_agg(image_id, ',' ORDER BY image_id) AS ids FROM images",
    ).to_pylist() == [{"ids": "a,b"}]
    ds.drop_stage_shard("seeds", 1, "test")
    assert _count(ds) == 1 and _count(Dataset(tmp_path, as_of=first + 2)) == 2


def test_missing_file_means_not_committed(tmp_path):
    ds = Dataset(tmp_path)
    ds.init()
    m = _commit(ds, 0, "fp", "a")
    os.remove(tmp_path / m.files[0].path)
    assert not ds.is_committed("seeds", 0, "fp")


def test_empty_dataset_views_have_full_schemas(tmp_path):
    ds = Dataset(tmp_path)
    ds.init()
    con = connect(ds)
    cols = con.sql("SELECT * FROM regions LIMIT 0").columns
    for c in ("image_id", "region_id", "bbox", "mask", "best_iou", "kept", "depth_median"):
        assert c in cols
    assert con.sql("SELECT count(*) FROM relations").fetchall() == [(0,)]
    assert "verdict" in con.sql("SELECT * FROM relations LIMIT 0").columns


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM images",
        "CREATE TABLE t AS SELECT 1",
        "COPY images TO '/tmp/x.csv'",
        "ATTACH 'x.db'",
        "SET threads = 1",
        "SELECT 1; DROP VIEW images",
        "INSERT INTO images SELECT * FROM images",
    ],
)
def test_writes_are_refused(tmp_path, sql):
    ds = Dataset(tmp_path)
    ds.init()
    with pytest.raises(ReadOnlyError):
        query(ds, sql)


def test_reads_are_allowed(tmp_path):
    ds = Dataset(tmp_path)
    ds.init()
    con = connect(ds)
    for sql in (
        "SELECT 1",
        "WITH a AS (SELECT 1) SELECT * FROM a",
        "DESCRIBE images",
        "EXPLAIN SELECT * FROM images",
    ):
        check_read_only(con, sql)


def test_init_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "thesis.docx").write_text("precious")
    with pytest.raises(FileExistsError, match="not a synthvg dataset"):
        Dataset(tmp_path).init()


def test_old_layout_roots_are_refused_with_the_command_that_converts_them(tmp_path):
    from synthvg.storage.dataset import LegacyLayout

    (tmp_path / "synthvg.json").write_text('{"format": "synthvg-dataset", "version": 1}')
    (tmp_path / "manifests").mkdir()
    for action in (lambda: Dataset(tmp_path).init(), lambda: connect(str(tmp_path))):
        with pytest.raises(LegacyLayout, match=f"synthvg migrate --root {tmp_path}"):
            action()


def test_second_writer_is_refused_and_a_killed_holder_leaves_no_stale_lock(tmp_path):
    ds = Dataset(tmp_path)
    ds.init()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import time
            from synthvg.storage import Dataset, build_lock
            with build_lock(Dataset({str(tmp_path)!r}), "run-holder"):
                print("locked", flush=True)
                time.sleep(60)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(BuildLocked, match="run-holder"), build_lock(ds, "run-second"):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with build_lock(ds, "run-third"):
        pass


def test_remote_lease_lock_refuses_while_fresh():
    ds = Dataset("memory://synthvg-lease-root")
    ds.init()
    with build_lock(ds, "run-a", lease_seconds=30):
        with pytest.raises(BuildLocked, match="run-a"), build_lock(ds, "run-b", lease_seconds=30):
            pass
    with build_lock(ds, "run-c", lease_seconds=30):
        pass


def test_views_show_no_partition_columns(tmp_path):
    ds = Dataset(tmp_path)
    ds.init()
    _commit(ds, 0, "fp", "a")
    cols = connect(ds).sql("SELECT * FROM images LIMIT 0").columns
    assert not {"_stage", "_shard", "_fingerprint"} & set(cols) and "image_id" in cols


def _view_sql(con, name: str) -> str:
    return con.execute("SELECT sql FROM duckdb_views() WHERE view_name = ?", [name]).fetchone()[0]


def test_files_of_one_schema_are_read_without_unifying_and_older_files_still_are(tmp_path):
    """Files whose records share a schema id are read as they are (no per-query footer pass);
    a file an older writer left without a column (no schema id in its record) makes the view
    unify columns by name, so its rows still show, with NULL for the column it lacks."""
    import io

    import pyarrow.parquet as pq

    from synthvg.schemas import ShardFile
    from synthvg.storage.dataset import schema_id

    ds = Dataset(tmp_path / "root")
    ds.init()
    m0 = _commit(ds, 0, "fp0", "a")
    _commit(ds, 1, "fp1", "b")
    assert m0.files[0].schema_id == schema_id(image_table("x").schema)
    con = connect(ds)
    assert "union_by_name" not in _view_sql(con, "_images")
    assert con.execute("SELECT count(*) FROM images").fetchone() == (2,)

    # Shard 1 rewritten as an older synthvg wrote it: without content_hash, no schema id.
    old = image_table("b").drop_columns(["content_hash"])
    buf = io.BytesIO()
    pq.write_table(old, buf)
    (f1,) = ds.read_manifest("seeds", 1).files
    (tmp_path / "root" / f1.path).write_bytes(buf.getvalue())
    m1 = ds.read_manifest("seeds", 1)
    ds._append_record(
        "seeds",
        1,
        "r",
        m1.model_copy(update={"files": [ShardFile(table="images", path=f1.path, rows=1)]}),
    )
    con = connect(Dataset(tmp_path / "root"))
    assert "union_by_name" in _view_sql(con, "_images")
    rows = con.execute("SELECT image_id, content_hash FROM images ORDER BY 1").fetchall()
    assert rows == [("a", "h"), ("b", None)]
