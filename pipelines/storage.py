"""Atomic files, per-bucket stage caches, stage indexes and locks (Parquet, ``pyarrow.fs``).

Layout under the data root (see ``../shared/DESIGN.md``, Storage and Scale)::

    cache/<stage>/<version>/bucket=<b>/part-<hash>.parquet   per-sample results of bucket b
    cache/<stage>/<version>/bucket=<b>/_keys.parquet          key -> part map (pipelines.stage_store)
    <stage>/bucket=<b>/index.parquet                          bucket b's current materialization
    <stage>/bucket=<b>/quarantine.parquet                     items bucket b rejected, with a reason
    <stage>/index.parquet                                     unpartitioned stages
    .locks/<stage>/bucket=<b>.lock                            writer lock (filelock)

``version`` is :func:`pipelines.config.stage_version` (code version, parameters and upstream
versions), so a cached row is reused only when all three match. A bucket's reads touch its
key map and the parts that hold the requested keys: O(1) files per chunk, whatever the size
of the dataset. A bucket's index is written by that bucket's run alone.

**File systems.** Every path may be a local path or a URI that ``pyarrow.fs`` understands
(``s3://``, ``gs://``, ``hdfs://``, ``file://``) or, failing that, an fsspec protocol
(``memory://``, ...) through ``pyarrow.fs.FSSpecHandler``. ``pathlib`` collapses ``s3://b`` to
``s3:/b`` when callers join paths with ``/``; :func:`fs_path` restores the double slash.
Local writes go to a temporary name in the same directory and are renamed into place
(atomic); object stores publish an object only when its upload completes, so they are
written in place. Final local files follow the process umask (0644 by default), not
mkstemp's 0600.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


INDEX_META_KEY = b"viewforge"
_URI = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]+):/+(.*)$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@functools.lru_cache(maxsize=None)
def _fsspec(scheme: str):
    import fsspec

    f = fsspec.filesystem(scheme)
    return f, pafs.PyFileSystem(pafs.FSSpecHandler(f))


def fs_path(path: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(``pyarrow.fs`` file system, path inside it) of a local path or a URI.

    Local paths (and ``file://``) give a ``LocalFileSystem`` and an absolute path; other
    schemes give ``pyarrow``'s native file system for it (``FileSystem.from_uri``: S3, GCS,
    HDFS) or, for schemes pyarrow lacks, an fsspec file system wrapped in
    ``pyarrow.fs.PyFileSystem(FSSpecHandler(...))``.
    """
    s = os.fspath(path)
    m = _URI.match(s)
    if not m or len(m.group(1)) == 1:            # plain path (or a Windows drive letter)
        return pafs.LocalFileSystem(), os.path.abspath(s)
    scheme, rest = m.group(1).lower(), m.group(2)
    s = f"{scheme}://{rest}"
    if scheme == "file":
        return pafs.LocalFileSystem(), "/" + rest
    if scheme not in ("memory",):
        try:
            return pafs.FileSystem.from_uri(s)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    f, fs = _fsspec(scheme)
    return fs, f._strip_protocol(s)


def is_local(path: str | os.PathLike) -> bool:
    """True when ``path`` is on the local file system (locks and renames work there)."""
    return isinstance(fs_path(path)[0], pafs.LocalFileSystem)


def exists(path: str | os.PathLike) -> bool:
    fs, p = fs_path(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def list_files(directory: str | os.PathLike, pattern: str = "*") -> list[str]:
    """Base names of the files directly in ``directory`` matching a glob ``pattern``, sorted
    ([] when the directory does not exist)."""
    import fnmatch

    fs, p = fs_path(directory)
    infos = fs.get_file_info(pafs.FileSelector(p, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.File
                  and fnmatch.fnmatch(i.base_name, pattern))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary *local* path next to ``path``; on success rename it onto ``path``.

    The temporary name starts with ``.`` and ends with ``.tmp`` so readers and globs of
    final names never see it. On an exception the temporary file is removed and the
    exception propagates; ``path`` is left as it was. The final file gets the umask's mode.

    Raises:
        OSError: as raised by the write, with the final path named (e.g. disk full).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
            with open(tmp_path, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(tmp_path, 0o666 & ~_umask())
            os.replace(tmp_path, path)
        except OSError as e:
            raise OSError(e.errno, f"writing {path}: {e.strerror or e}") from e
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` (local path or URI) atomically; returns the path."""
    fs, p = fs_path(path)
    if isinstance(fs, pafs.LocalFileSystem):
        with atomic_path(p) as tmp:
            tmp.write_bytes(data)
    else:
        fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(p) as f:
            f.write(data)
    return Path(path)


def read_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of a file (local path or URI)."""
    fs, p = fs_path(path)
    with fs.open_input_stream(p) as f:
        return f.read()


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON atomically; returns the path."""
    return write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _with_meta(table: pa.Table, metadata: dict[str, Any] | None) -> pa.Table:
    if metadata is None:
        return table
    meta = dict(table.schema.metadata or {})
    meta[INDEX_META_KEY] = json.dumps(metadata, sort_keys=True, default=str).encode()
    return table.replace_schema_metadata(meta)


def write_parquet_atomic(path: str | os.PathLike, table: pa.Table,
                         metadata: dict[str, Any] | None = None) -> Path:
    """Write ``table`` as Parquet atomically, with optional JSON schema metadata."""
    buf = io.BytesIO()
    pq.write_table(_with_meta(table, metadata), buf, compression="zstd")
    return write_bytes_atomic(path, buf.getvalue())


def read_parquet(path: str | os.PathLike, columns: Sequence[str] | None = None, filters=None) -> pa.Table:
    """Read a Parquet file (local path or URI)."""
    fs, p = fs_path(path)
    return pq.read_table(p, filesystem=fs, columns=list(columns) if columns else None, filters=filters)


def read_parquet_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata written by :func:`write_parquet_atomic` ({} when absent)."""
    fs, p = fs_path(path)
    meta = pq.read_schema(p, filesystem=fs).metadata or {}
    raw = meta.get(INDEX_META_KEY)
    return json.loads(raw) if raw else {}


def remove_stale_temporaries(directory: str | os.PathLike) -> int:
    """Delete ``.*.tmp`` files left by killed runs in a local ``directory``; returns the count.

    Call it only while holding the directory's writer lock (:func:`writer_lock`): another
    writer's temporary file is never stale while that writer holds the lock.
    """
    n = 0
    d = Path(directory)
    if d.is_dir():
        for p in d.glob(".*.tmp"):
            p.unlink(missing_ok=True)
            n += 1
    return n


class LockedError(RuntimeError):
    """Another run holds the writer lock of a (stage, bucket)."""


@contextlib.contextmanager
def writer_lock(root: str | os.PathLike, stage: str, bucket: str | None = None,
                timeout: float = 0.0) -> Iterator[None]:
    """Hold the writer lock of ``stage`` (and ``bucket``) under a local data root.

    Uses ``filelock.FileLock`` on ``<root>/.locks/<stage>/bucket=<b>.lock``; a second run on
    the same (stage, bucket) waits up to ``timeout`` seconds, then fails fast. Runs on
    disjoint buckets never wait for each other. On an object-store root there is no file
    lock: rely on Dagster's run concurrency limits (README, "Running at scale").

    Raises:
        LockedError: the lock is held by another process after ``timeout`` seconds.
    """
    if not is_local(root):
        yield
        return
    from filelock import FileLock, Timeout

    name = f"bucket={bucket}.lock" if bucket is not None else "stage.lock"
    path = Path(fs_path(root)[1]) / ".locks" / stage / name
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), timeout=timeout)
    try:
        lock.acquire()
    except Timeout:
        what = f"{stage} bucket {bucket}" if bucket is not None else stage
        raise LockedError(f"{what} is being written by another run (lock {path}); wait for it to "
                          "finish or stop it, then retry") from None
    try:
        yield
    finally:
        lock.release()


def bucket_dir(base: str | os.PathLike, bucket: str) -> str:
    """``<base>/bucket=<b>`` (a string: ``base`` may be a URI)."""
    return f"{os.fspath(base).rstrip('/')}/bucket={bucket}"


def table_digest(table: pa.Table, salt: str = "") -> str:
    """sha256 (hex) of ``salt`` and a table's contents (Arrow IPC stream of its columns,
    chunking normalised), so equal tables give equal digests."""
    h = hashlib.sha256(salt.encode())
    sink = pa.BufferOutputStream()
    t = table.replace_schema_metadata(None).combine_chunks()
    with pa.ipc.new_stream(sink, t.schema) as w:
        w.write_table(t)
    h.update(sink.getvalue().to_pybytes())
    return h.hexdigest()


def index_path(root: str | os.PathLike, stage: str, bucket: str | None = None, name: str = "index.parquet") -> str:
    base = f"{os.fspath(root).rstrip('/')}/{stage}"
    return f"{bucket_dir(base, bucket)}/{name}" if bucket is not None else f"{base}/{name}"


def write_index(root: str | os.PathLike, stage: str, table: pa.Table, info: dict[str, Any],
                bucket: str | None = None) -> str:
    """Write a stage's (or one bucket's) index atomically and return its data version.

    ``info`` (stage version, code version, parameters, counts...) is stored in the schema
    metadata. The data version hashes the stage version and the table's contents, so
    equal outputs give equal versions (Dagster ``DataVersion``, 24 hex digits).
    """
    data_version = table_digest(table, str(info.get("version", "")))[:24]
    info = {**info, "data_version": data_version}
    if bucket is not None:
        info["bucket"] = bucket
    write_parquet_atomic(index_path(root, stage, bucket), table, metadata=info)
    return data_version


def read_index(root: str | os.PathLike, stage: str, bucket: str | None = None
               ) -> tuple[pa.Table, dict[str, Any]]:
    """Read a stage index (of one bucket, or of an unpartitioned stage) and its info.

    Raises:
        FileNotFoundError: not materialized under this data root.
    """
    path = index_path(root, stage, bucket)
    if not exists(path):
        what = f"`{stage}` (bucket {bucket})" if bucket is not None else f"`{stage}`"
        raise FileNotFoundError(f"{path} not found: materialize {what} first")
    return read_parquet(path), read_parquet_metadata(path)


QUARANTINE_SCHEMA = pa.schema([("uri", pa.string()), ("reason", pa.string())])


def write_quarantine(root: str | os.PathLike, stage: str, rows: list[dict[str, str]],
                     bucket: str | None = None, name: str = "quarantine.parquet") -> str:
    """Write a stage's quarantine (or skipped) table (columns ``uri``, ``reason``) atomically."""
    table = pa.table({"uri": [r["uri"] for r in rows], "reason": [r["reason"] for r in rows]},
                     schema=QUARANTINE_SCHEMA)
    path = index_path(root, stage, bucket, name)
    write_parquet_atomic(path, table)
    return path


def read_quarantine(root: str | os.PathLike, stage: str, bucket: str | None = None,
                    name: str = "quarantine.parquet") -> pa.Table:
    """A quarantine table ([] when absent)."""
    path = index_path(root, stage, bucket, name)
    return read_parquet(path) if exists(path) else QUARANTINE_SCHEMA.empty_table()
