"""What a dataset root holds at one version, read without deltalake, pyarrow, fsspec or the
record models: the read path of ``synthvg sql``, ``stats`` and ``show`` and of
:func:`synthvg.storage.connect` given a root's path.

A local root's commit log (``completions/``) is read as the Delta protocol lays it out: the
newest checkpoint at or before the version (a Parquet file, read by DuckDB) and the JSON commits
after it give the log's live Parquet files, which DuckDB reads for the latest record of each
(stage, shard). Records stay JSON (dicts): the views need only their files.

What this reader leaves to delta-rs, so nothing is read wrongly: roots that are not local
folders (object stores, fsspec URLs), and logs that need more than Delta's reader version 1
(column mapping, deletion vectors, v2 checkpoints). For those the same :class:`Snapshot` reads
through :class:`synthvg.storage.dataset.Dataset`, importing what that needs.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import duckdb

if TYPE_CHECKING:
    from synthvg.storage.dataset import Dataset

#: The marker a dataset root holds (``synthvg.json``): layout version 2 is Delta tables.
FORMAT = {"format": "synthvg-dataset", "version": 2, "layout": "delta"}
#: The commit records' Delta table under a root.
COMPLETIONS = "completions"
#: The partition columns of every data table: the stage and shard that wrote a row, and the
#: first 16 hex digits of that shard's fingerprint.
PARTITION = ("_stage", "_shard", "_fingerprint")


class LegacyLayout(RuntimeError):
    """The root is in the layout before Delta tables; ``synthvg migrate`` converts it."""

    def __init__(self, url: str):
        super().__init__(
            f"{url} is a dataset in the old layout (JSON manifests, before Delta tables): "
            f"convert it once with `synthvg migrate --root {url}`, then run the command again"
        )


class CorruptLog(ValueError):
    """The commit log cannot be read."""


class UnknownVersion(LookupError):
    """A dataset version that does not exist (or whose files vacuum removed)."""


class Unsupported(Exception):
    """The commit log needs a reader this module is not (see the module doc): delta-rs reads it."""


def is_local(root: str) -> bool:
    """True when ``root`` names a local folder (a path, ``file://`` or ``local://``), as fsspec
    resolves it."""
    if "::" in root:
        return False
    return "://" not in root or root.startswith(("file://", "local://"))


def local_path(root: str) -> str:
    """A local root's absolute POSIX path, spelled as fsspec's local filesystem spells it (its
    ``_strip_protocol``), so the views name the same files as through a Dataset."""
    for prefix in ("file://", "file:", "local://", "local:"):
        if root.startswith(prefix):
            root = root[len(prefix) :]
            break
    if os.sep != "/":  # pragma: no cover - Windows: fsspec's own spelling
        from fsspec.implementations.local import LocalFileSystem

        return str(LocalFileSystem._strip_protocol(root))
    if root.startswith("~"):
        root = os.path.expanduser(root)
    elif not root.startswith("/"):
        if root.startswith("./"):
            root = root[2:]
        elif root == ".":
            root = ""
        root = f"{os.getcwd()}/{root}"
    return root.rstrip("/") or "/"


# ----------------------------------------------------------------------------- the Delta log
_COMMIT = re.compile(r"(\d{20})\.json")
_CHECKPOINT = re.compile(r"(\d{20})\.checkpoint(?:\.(\d{10})\.(\d{10}))?\.parquet")


class _Gap(LookupError):
    """The log cannot be replayed up to a version: entries before it were cleaned up."""


def _sql_list(paths: list[str]) -> str:
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"


def _listing(log_dir: str) -> tuple[dict[int, str], dict[int, list[str]]] | None:
    """(JSON commit per version, complete checkpoint's files per version), or None: no log."""
    try:
        names = os.listdir(log_dir)
    except (FileNotFoundError, NotADirectoryError):
        return None
    commits: dict[int, str] = {}
    parts: dict[tuple[int, int], dict[int, str]] = {}  # (version, parts of the set) -> part -> name
    for name in names:
        if m := _COMMIT.fullmatch(name):
            commits[int(m.group(1))] = name
        elif m := _CHECKPOINT.fullmatch(name):
            version, part, of = int(m.group(1)), int(m.group(2) or 1), int(m.group(3) or 1)
            parts.setdefault((version, of), {})[part] = name
    checkpoints: dict[int, list[str]] = {}
    # sorted so that a single-file checkpoint (of 1) is assigned last: it wins over parts
    for (version, of), found in sorted(parts.items(), reverse=True):
        if sorted(found) == list(range(1, of + 1)):
            checkpoints[version] = [found[k] for k in sorted(found)]
    return commits, checkpoints


def _plan(
    commits: dict[int, str], checkpoints: dict[int, list[str]], version: int
) -> tuple[int | None, list[int]]:
    """The checkpoint to start from (None: version 0) and the commits to replay after it."""
    for start in sorted((c for c in checkpoints if c <= version), reverse=True):
        after = list(range(start + 1, version + 1))
        if all(v in commits for v in after):
            return start, after
    after = list(range(version + 1))
    if all(v in commits for v in after):
        return None, after
    raise _Gap(version)


def live_files(
    con: duckdb.DuckDBPyConnection, table_dir: str, version: int | None, url: str
) -> tuple[int | None, list[str]]:
    """(version read, the table's live data files) of the Delta table at ``table_dir``, at
    ``version`` or the latest; (None, []) when no table is there. Raises :class:`Unsupported`
    for a log this reader leaves to delta-rs, :class:`CorruptLog` or :class:`UnknownVersion`."""
    log_dir = posixpath.join(table_dir, "_delta_log")
    listing = _listing(log_dir)
    if listing is None or not (listing[0] or listing[1]):
        if version is not None:
            raise UnknownVersion(f"{url} has no version {version}: nothing was ever committed")
        return None, []
    commits, checkpoints = listing
    latest = max([*commits, *checkpoints])
    target = latest if version is None else version
    if target > latest:
        raise UnknownVersion(
            f"{url} has no version {version} (the latest is {latest}); "
            "`synthvg versions` lists them"
        )
    try:
        start, replay = _plan(commits, checkpoints, target)
    except _Gap:
        if version is not None:
            raise UnknownVersion(
                f"{url} has no version {version}: the log entries it needs were cleaned up; "
                "`synthvg versions` lists them"
            ) from None
        raise CorruptLog(
            f"cannot read the commit log of {url} (entries before version {latest} are "
            "missing); restore its completions/_delta_log from a backup, or rebuild into a new root"
        ) from None
    files: dict[str, None] = {}  # ordered: the log's order
    reader_version: int | None = None
    if start is not None:
        paths = [posixpath.join(log_dir, p) for p in checkpoints[start]]
        try:
            rows = con.execute(
                "SELECT add.path, protocol.minReaderVersion "
                f"FROM read_parquet({_sql_list(paths)}, hive_partitioning = false) "
                "WHERE add IS NOT NULL OR protocol IS NOT NULL"
            ).fetchall()
        except duckdb.Error:
            raise Unsupported(f"checkpoint {start} of {table_dir}") from None
        for path, reader in rows:
            if path is not None:
                files[path] = None
            if reader is not None:
                reader_version = reader
    for v in replay:
        name = commits[v]
        try:
            with open(posixpath.join(log_dir, name), "rb") as f:
                lines = f.read().splitlines()
            actions = [json.loads(line) for line in lines if line.strip()]
        except (OSError, ValueError) as e:
            raise CorruptLog(
                f"cannot read the commit log of {url} ({name}: {str(e).splitlines()[0]}); "
                "restore its completions/_delta_log from a backup, or rebuild into a new root"
            ) from None
        for action in actions:
            if not isinstance(action, dict):
                raise CorruptLog(f"cannot read the commit log of {url} ({name}: not Delta actions)")
            if "add" in action:
                files[action["add"]["path"]] = None
            elif "remove" in action:
                files.pop(action["remove"]["path"], None)
            elif "protocol" in action:
                reader_version = action["protocol"].get("minReaderVersion")
    if reader_version != 1:  # 2 maps column names, 3 names reader features: delta-rs reads those
        raise Unsupported(f"{table_dir} needs Delta reader version {reader_version}")
    out = []
    for p in files:
        p = unquote(p)
        if "://" in p:
            if not p.startswith("file://"):
                raise Unsupported(f"{table_dir} names a file outside it: {p}")
            p = p[len("file://") :]
        out.append(p if p.startswith("/") else posixpath.join(table_dir, p))
    return target, out


def latest_records(
    con: duckdb.DuckDBPyConnection, files: list[str], what: str
) -> dict[tuple[str, int], dict]:
    """The latest record of every (stage, shard) in the commit log's files, as JSON; withdrawn
    ones (no record) left out. ``what`` names the log in an error (a missing file)."""
    if not files:
        return {}
    try:
        rows = con.execute(
            f"SELECT stage, shard, record FROM read_parquet({_sql_list(files)}, hive_partitioning = false) "
            "QUALIFY row_number() OVER (PARTITION BY stage, shard ORDER BY sequence DESC) = 1"
        ).fetchall()
    except duckdb.IOException as e:
        raise FileNotFoundError(f"{what}: {str(e).splitlines()[0]}") from None
    except duckdb.Error:  # files of differing schemas, say: delta-rs reads those
        raise Unsupported(f"{what}: not one schema") from None
    return {(stage, shard): json.loads(record) for stage, shard, record in rows if record}


# ----------------------------------------------------------------------------- a root
class Snapshot:
    """A dataset root as of one version (``as_of``; None: the latest), read-only and cheap.

    It reads the commit log once, on first use. It offers what the views and the light commands
    need: :meth:`check_layout`, :meth:`check_readable`, :meth:`records` (JSON records),
    :meth:`committed_file_schemas`, :meth:`uri`; :func:`synthvg.storage.connect` takes it like
    a :class:`~synthvg.storage.dataset.Dataset`.
    """

    def __init__(self, root: str | os.PathLike, as_of: int | None = None):
        self.url = os.fspath(root)
        #: read the dataset as it was at this version of ``completions`` (None: the latest)
        self.as_of = as_of
        self.is_local = is_local(self.url)
        self._dataset: Dataset | None = None
        self.path = local_path(self.url) if self.is_local else self.dataset.path
        self._records: dict[tuple[str, int], dict] | None = None
        self._version: int | None = None
        self._con: duckdb.DuckDBPyConnection | None = None

    @property
    def dataset(self) -> Dataset:
        """The same root and version as a :class:`~synthvg.storage.dataset.Dataset` (imports
        pyarrow, fsspec and deltalake: the path for roots and logs this module leaves to them)."""
        if self._dataset is None:
            from synthvg.storage.dataset import Dataset

            self._dataset = Dataset(self.url, as_of=self.as_of)
        return self._dataset

    @property
    def fs(self) -> Any:
        """The root's fsspec filesystem (what DuckDB registers to read a remote root)."""
        return self.dataset.fs

    # ----------------------------------------------------------------- paths
    def abspath(self, rel: str) -> str:
        return posixpath.join(self.path, rel) if self.is_local else self.dataset.abspath(rel)

    def uri(self, rel: str) -> str:
        """A path DuckDB can open (a local path, or protocol://path)."""
        return posixpath.join(self.path, rel) if self.is_local else self.dataset.uri(rel)

    def exists(self, rel: str) -> bool:
        if self.is_local:
            return os.path.exists(self.abspath(rel))
        return bool(self.fs.exists(self.abspath(rel)))

    # ----------------------------------------------------------------- the log
    def check_layout(self) -> None:
        """Refuse a root in the old layout (with the command that converts it)."""
        if not self.is_local:
            self.dataset.check_layout()
            return
        try:
            with open(self.abspath("synthvg.json"), "rb") as f:
                marker = json.loads(f.read())
        except FileNotFoundError:
            marker = {}
        if marker.get("version", FORMAT["version"]) < FORMAT["version"] or (
            not marker and self.exists("manifests")
        ):
            raise LegacyLayout(self.url)

    def _read(self) -> dict[tuple[str, int], dict]:
        if self._records is not None:
            return self._records
        self.check_layout()
        records = None
        if self.is_local:
            con = duckdb.connect(":memory:")
            try:
                records = self._read_log(con)
            except Unsupported:
                pass
            except BaseException:
                con.close()
                raise
            if records is None:
                con.close()
            else:
                self._con = con  # for the views (:meth:`take_connection`)
        if records is None:  # through delta-rs
            ds = self.dataset
            records = {k: m.model_dump(mode="json") for k, m in ds.records().items()}
            self._version = ds.as_of if ds.as_of is not None else ds.version()
        self._records = records
        return records

    def _read_log(self, con: duckdb.DuckDBPyConnection) -> dict[tuple[str, int], dict]:
        self._version, files = live_files(con, self.abspath(COMPLETIONS), self.as_of, self.url)
        try:
            return latest_records(con, files, f"{self.url}: a file of its commit log")
        except FileNotFoundError as e:
            if self.as_of is not None:
                raise UnknownVersion(
                    f"{self.url} version {self.as_of}: its records were removed (by "
                    "`synthvg vacuum`); that version can no longer be read"
                ) from None
            raise CorruptLog(
                f"cannot read the commit log of {self.url} ({e}); restore it from a "
                "backup, or rebuild into a new root"
            ) from None

    def take_connection(self) -> duckdb.DuckDBPyConnection | None:
        """The in-memory DuckDB connection the log was read with (only SELECTs ran on it), once:
        :func:`~synthvg.storage.connect` builds the views on it instead of a second database."""
        con, self._con = self._con, None
        return con

    def records(self) -> dict[tuple[str, int], dict]:
        """The commit record (JSON, as committed) of every complete (stage, shard)."""
        return self._read()

    def version(self) -> int | None:
        """The version read (``as_of``, or the latest; None before any commit)."""
        self._read()
        return self._version

    def check_readable(self) -> None:
        """Read the log (a corrupt one says so here) and, for an older version, refuse one whose
        files vacuum removed."""
        records = self._read()
        if self.as_of is None:
            return
        for _, record in sorted(records.items()):
            for f in record["files"]:
                if not self.exists(f["path"]):
                    raise UnknownVersion(
                        f"{self.url} version {self.as_of}: its file {f['path']} was removed "
                        "(by `synthvg vacuum`); that version can no longer be read"
                    )

    def committed_file_schemas(self) -> dict[str, list[tuple[str, str | None]]]:
        """Every committed file as (openable URI, schema id or None when not recorded), by table."""
        out: dict[str, list[tuple[str, str | None]]] = {}
        for _, record in sorted(self._read().items()):
            for f in record["files"]:
                out.setdefault(f["table"], []).append((self.uri(f["path"]), f.get("schema_id")))
        return out

    def committed_files(self) -> dict[str, list[str]]:
        """Every committed file as an openable URI, by table."""
        return {t: [u for u, _ in fs] for t, fs in self.committed_file_schemas().items()}
