"""The light read path (Snapshot: the commit log read through DuckDB, no deltalake, pyarrow or
record models) sees exactly what the delta-rs path (Dataset) sees, at every version, and says
the same things about roots and versions it cannot read."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import image_table

from synthvg.schemas import RelationRecord, to_table
from synthvg.storage import Dataset, Snapshot, connect
from synthvg.storage import snapshot as light
from synthvg.storage.dataset import CorruptLog, LegacyLayout, UnknownVersion, utcnow
from synthvg.storage.versions import compact, vacuum


def _relations(image_id: str):
    return to_table(
        RelationRecord,
        [
            RelationRecord(
                relation_id=f"{image_id}-r",
                image_id=image_id,
                subject_id=0,
                object_id=1,
                predicate="on",
                predicate_raw="on",
                category="spatial",
                stage="teacher",
                generator="rules",
                verdict="unverified",
                model="rules-v1",
                run_id="r",
            )
        ],
    )


def _commit(ds: Dataset, shard: int, fp: str, *ids: str, stage: str = "seeds", tables=None):
    return ds.commit_shard(
        stage,
        shard,
        fp,
        tables or {"images": image_table(*ids)},
        run_id="r",
        image_count=len(ids),
        started_at=utcnow(),
    )


def _same_at_every_version(root: str) -> int:
    """Snapshot and Dataset agree at every version and at the latest; returns the latest."""
    latest = Dataset(root).version()
    for as_of in [None, *range(latest + 1)]:
        snap, ds = Snapshot(root, as_of=as_of), Dataset(root, as_of=as_of)
        assert snap.records() == {k: m.model_dump(mode="json") for k, m in ds.records().items()}
        assert snap.committed_file_schemas() == ds.committed_file_schemas()
        assert snap.version() == (latest if as_of is None else as_of)
    return latest


@pytest.fixture
def history(tmp_path) -> str:
    """Commits, a recommit, a second stage, a withdrawal, a compaction, commits after it."""
    root = str(tmp_path / "root")
    ds = Dataset(root)
    ds.init()
    _commit(ds, 0, "fp-a", "a", "b")
    _commit(ds, 1, "fp-b", "c")
    _commit(ds, 0, "fp-a2", "a")  # recommitted with another fingerprint
    _commit(ds, 0, "fp-t", stage="teacher", tables={"relations": _relations("a")})
    ds.drop_stage_shard("seeds", 1, "r")  # withdrawn
    compact(ds)  # merges the log's files, checkpoints every table
    _commit(ds, 2, "fp-d", "d", "e")
    return root


def test_every_version_reads_the_same_as_delta_rs(history):
    latest = _same_at_every_version(history)
    assert (
        Path(history) / "completions/_delta_log" / f"{latest - 1:020}.checkpoint.parquet"
    ).exists()
    con = connect(history)
    assert con.sql("SELECT string_agg(image_id, ',' ORDER BY image_id) FROM images").fetchall() == [
        ("a,d,e",)
    ]
    assert con.sql("SELECT count(*) FROM relations").fetchall() == [(1,)]


def test_a_log_cleaned_up_before_its_checkpoint_still_reads(history):
    """Delta may delete commits older than a checkpoint: the latest state comes from it."""
    log = Path(history) / "completions/_delta_log"
    (checkpoint,) = sorted(log.glob("*.checkpoint.parquet"))
    start = int(checkpoint.name.split(".")[0])
    expected = Snapshot(history).committed_file_schemas()
    for v in range(start):
        (log / f"{v:020}.json").unlink()
    assert Snapshot(history).committed_file_schemas() == expected
    assert Snapshot(history, as_of=start).records() == {
        k: m.model_dump(mode="json") for k, m in Dataset(history, as_of=start).records().items()
    }
    with pytest.raises(UnknownVersion, match="has no version 1"):
        Snapshot(history, as_of=1).records()


def test_root_spellings_name_the_same_files(history, monkeypatch):
    expected = Dataset(history).committed_file_schemas()
    parent = str(Path(history).parent)
    monkeypatch.chdir(parent)
    for spelling in (history + "/", "file://" + history, "root", "./root/"):
        assert Snapshot(spelling).committed_file_schemas() == expected
        assert Dataset(spelling).committed_file_schemas() == expected


def test_a_root_under_a_hive_style_folder(tmp_path):
    """A folder named like a partition (stage=x) above the root changes nothing read."""
    root = str(tmp_path / "stage=x" / "shard=3" / "root")
    ds = Dataset(root)
    ds.init()
    _commit(ds, 0, "fp", "a")
    _same_at_every_version(root)


def test_empty_and_missing_roots(tmp_path):
    assert Snapshot(tmp_path / "missing").records() == {}
    assert Snapshot(tmp_path / "missing").version() is None
    ds = Dataset(tmp_path / "new")
    ds.init()
    assert Snapshot(tmp_path / "new").records() == {}
    with pytest.raises(UnknownVersion, match="nothing was ever committed"):
        Snapshot(tmp_path / "new", as_of=0).records()


def test_unknown_vacuumed_and_corrupt(tmp_path):
    root = str(tmp_path / "root")
    ds = Dataset(root)
    ds.init()
    _commit(ds, 0, "fp-a", "a", "b")
    first = ds.version()
    _commit(ds, 0, "fp-b", "c")
    with pytest.raises(UnknownVersion, match=f"has no version {first + 5}"):
        Snapshot(root, as_of=first + 5).records()
    compact(ds)
    vacuum(ds, keep_days=0)
    old = Snapshot(root, as_of=first)
    with pytest.raises(UnknownVersion, match=r"removed \(by `synthvg vacuum`\)"):
        old.check_readable()
    log = sorted((Path(root) / "completions/_delta_log").glob("*.json"))[-1]
    log.write_text("{broken")
    with pytest.raises(CorruptLog, match="cannot read the commit log"):
        Snapshot(root).records()


def test_old_layout_is_refused(tmp_path):
    (tmp_path / "manifests").mkdir()
    with pytest.raises(LegacyLayout, match=f"synthvg migrate --root {tmp_path}"):
        Snapshot(tmp_path).records()
    (tmp_path / "synthvg.json").write_text(json.dumps({"format": "synthvg-dataset", "version": 1}))
    with pytest.raises(LegacyLayout):
        Snapshot(tmp_path).check_layout()


def test_a_log_this_reader_leaves_to_delta_rs(history, monkeypatch):
    """Reader features (column mapping, deletion vectors, v2 checkpoints) are delta-rs's job."""
    log = Path(history) / "completions/_delta_log"
    latest = Dataset(history).version()
    newer = log / f"{latest + 1:020}.json"
    newer.write_text(
        json.dumps({"protocol": {"minReaderVersion": 3, "minWriterVersion": 7}}) + "\n"
    )
    con = light.duckdb.connect()
    with pytest.raises(light.Unsupported):
        light.live_files(con, str(log.parent), None, history)
    newer.unlink()
    # ... and a Snapshot then reads through Dataset, with the same result
    expected = Snapshot(history).records()

    def unsupported(*args, **kwargs):
        raise light.Unsupported("test")

    monkeypatch.setattr(light, "live_files", unsupported)
    snap = Snapshot(history)
    assert snap.records() == expected and snap.version() == latest
    assert snap.take_connection() is None


def test_the_views_take_over_the_snapshot_s_connection(history):
    snap = Snapshot(history)
    snap.check_readable()
    reader = snap._con
    assert reader is not None
    con = connect(snap)
    assert con is reader and snap.take_connection() is None
    assert con.sql("SELECT count(*) FROM images").fetchall() == [(3,)]
    # a second connect on the same snapshot gets a database of its own
    other = connect(snap)
    assert other is not con and other.sql("SELECT count(*) FROM images").fetchall() == [(3,)]


def test_a_remote_root_reads_through_dataset():
    root = "memory://snapshot-test/root"
    snap, ds = Snapshot(root), Dataset(root)
    assert not snap.is_local
    assert snap.uri("tables") == ds.uri("tables") and snap.fs is snap.dataset.fs
    with pytest.raises(ValueError, match="Delta tables"):  # as through a Dataset
        snap.records()


def test_local_paths_match_fsspec(tmp_path, monkeypatch):
    from fsspec.core import url_to_fs

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    for root in ("a", "a/", "./a/b/..", ".", "file://" + str(tmp_path / "x"), "~/y", "/", "/x//"):
        assert light.local_path(root) == url_to_fs(root)[1], root
        assert light.is_local(root)
    for root in ("memory://x", "s3://b/k", "simplecache::file:///x"):
        assert not light.is_local(root)
    assert os.getcwd() == str(tmp_path)


def test_multi_part_checkpoints_count_only_when_complete(tmp_path):
    names = [
        f"{0:020}.json",
        f"{1:020}.json",
        f"{2:020}.checkpoint.0000000001.0000000002.parquet",
        f"{2:020}.checkpoint.0000000002.0000000002.parquet",
        f"{4:020}.checkpoint.0000000001.0000000003.parquet",  # parts 2 and 3 missing
        f"{5:020}.checkpoint.parquet",
        "_last_checkpoint",
        f"_commit_{'0' * 32}.json.tmp",
    ]
    for name in names:
        (tmp_path / name).write_text("")
    commits, checkpoints = light._listing(str(tmp_path))
    assert commits == {0: names[0], 1: names[1]}
    assert checkpoints == {2: names[2:4], 5: [names[5]]}
    assert light._plan(commits, checkpoints, 1) == (None, [0, 1])
    assert light._plan(commits, checkpoints, 2) == (2, [])
    with pytest.raises(light._Gap):
        light._plan(commits, checkpoints, 3)  # no commit 3 after checkpoint 2
