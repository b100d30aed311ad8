"""The storage commit/resume rules, the views, read-only SQL and the single-writer lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from synthvg.schemas import ImageRecord, to_table
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


def _images(*ids: str):
    return to_table(
        ImageRecord,
        [ImageRecord(image_id=i, sources=["coco"], file_uri=f"/x/{i}.jpg", width=4, height=3, content_hash="h") for i in ids],
    )


def _commit(ds: Dataset, shard: int, fp: str, *ids: str, stage: str = "seeds"):
    return ds.commit_shard(stage, shard, fp, {"images": _images(*ids)}, run_id="r", image_count=len(ids), started_at=utcnow())


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
    ds = Dataset(tmp_path)
    ds.init()
    _commit(ds, 0, "fp-a", "a", "b")
    _commit(ds, 0, "fp-b", "a", "b", "c")
    assert _count(ds) == 3
    files = list((tmp_path / "tables" / "images" / "seeds").iterdir())
    assert len(files) == 1


def test_files_without_manifest_are_invisible_and_cleaned(tmp_path):
    """A kill after the data files but before the manifest leaves nothing visible."""
    ds = Dataset(tmp_path)
    ds.init()
    _commit(ds, 0, "fp-a", "a")
    _commit(ds, 1, "fp-b", "b")
    os.remove(ds.manifest_path("seeds", 1))  # as if killed before the manifest landed
    (tmp_path / "tables" / "images" / "seeds" / "part-00001-deadbeef.parquet.123.tmp").write_bytes(b"partial")
    assert _count(ds) == 1
    _commit(ds, 1, "fp-b", "b")
    assert _count(ds) == 2
    leftovers = sorted(p.name for p in (tmp_path / "tables" / "images" / "seeds").iterdir())
    assert all(not n.endswith(".tmp") for n in leftovers) and len(leftovers) == 2


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
    ["DELETE FROM images", "CREATE TABLE t AS SELECT 1", "COPY images TO '/tmp/x.csv'", "ATTACH 'x.db'", "SET threads = 1",
     "SELECT 1; DROP VIEW images", "INSERT INTO images SELECT * FROM images"],
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
    for sql in ("SELECT 1", "WITH a AS (SELECT 1) SELECT * FROM a", "DESCRIBE images", "EXPLAIN SELECT * FROM images"):
        check_read_only(con, sql)


def test_init_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "thesis.docx").write_text("precious")
    with pytest.raises(FileExistsError, match="not a synthvg dataset"):
        Dataset(tmp_path).init()


def test_fsspec_memory_root_round_trips():
    ds = Dataset("memory://synthvg-test-root")
    ds.init()
    _commit(ds, 0, "fp", "a", "b")
    assert ds.is_committed("seeds", 0, "fp")
    assert _count(ds) == 2


def test_second_writer_is_refused_and_a_killed_holder_leaves_no_stale_lock(tmp_path):
    ds = Dataset(tmp_path)
    ds.init()
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time
            from synthvg.storage import Dataset, build_lock
            with build_lock(Dataset({str(tmp_path)!r}), "run-holder"):
                print("locked", flush=True)
                time.sleep(60)
        """)],
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
