"""Atomic files, per-sample stage caches and stage indexes (Parquet, pyarrow).

Layout under the data root (see ``../shared/DESIGN.md``, Storage)::

    cache/<stage>/<version>/part-<hash>.parquet   per-sample results, one row per sample
    <stage>/index.parquet                         the current materialization: its keys
    <stage>/quarantine.parquet                    items the stage rejected, with a reason

``version`` is :func:`pipelines.config.stage_version` (code version, parameters and
upstream versions), so a cached row is reused only when all three match. Every file is
written to a temporary name in the same directory and renamed into place, so a killed
run never leaves a half-written file under a final name.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

INDEX_META_KEY = b"viewforge"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    The temporary name starts with ``.`` and ends with ``.tmp`` so readers and globs of
    final names never see it. On an exception the temporary file is removed and the
    exception propagates; ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON atomically; returns the path."""
    return write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def write_parquet_atomic(path: str | os.PathLike, table: pa.Table,
                         metadata: dict[str, Any] | None = None) -> Path:
    """Write ``table`` as Parquet atomically, with optional JSON schema metadata."""
    if metadata is not None:
        meta = dict(table.schema.metadata or {})
        meta[INDEX_META_KEY] = json.dumps(metadata, sort_keys=True, default=str).encode()
        table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return Path(path)


def read_parquet_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata written by :func:`write_parquet_atomic` ({} when absent)."""
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(INDEX_META_KEY)
    return json.loads(raw) if raw else {}


def remove_stale_temporaries(directory: str | os.PathLike) -> int:
    """Delete ``.*.tmp`` files left by killed runs in ``directory``; returns the count."""
    n = 0
    d = Path(directory)
    if d.is_dir():
        for p in d.glob(".*.tmp"):
            p.unlink(missing_ok=True)
            n += 1
    return n


class StageStore:
    """Per-sample results of one stage version, stored as Parquet parts.

    Args:
        root: data root.
        stage: stage name (directory name).
        version: stage version id (:func:`pipelines.config.stage_version`).
        key_column: column that identifies the sample a row belongs to. Several rows
            may share a key (e.g. one row per novel view); they are written together.
    """

    def __init__(self, root: str | os.PathLike, stage: str, version: str, key_column: str = "key"):
        self.root = Path(root)
        self.stage = stage
        self.version = version
        self.key_column = key_column
        self.dir = self.root / "cache" / stage / version

    def _parts(self) -> list[Path]:
        return sorted(self.dir.glob("part-*.parquet")) if self.dir.is_dir() else []

    def keys(self) -> set[str]:
        """Keys that have stored results (reads only the key column)."""
        out: set[str] = set()
        for p in self._parts():
            out.update(pq.read_table(p, columns=[self.key_column]).column(0).to_pylist())
        return out

    def missing(self, keys: Sequence[str]) -> list[str]:
        """The subset of ``keys`` (in order, without duplicates) that has no stored result."""
        have = self.keys()
        seen: set[str] = set()
        out = []
        for k in keys:
            if k not in have and k not in seen:
                out.append(k)
                seen.add(k)
        return out

    def write(self, table: pa.Table) -> Path | None:
        """Store ``table`` (must contain ``key_column``) as one new part, atomically.

        The part name is a hash of its keys, so rewriting the same chunk after a crash
        replaces the file instead of duplicating it. Returns the path (None if empty).
        """
        if table.num_rows == 0:
            return None
        keys = sorted(set(table.column(self.key_column).to_pylist()))
        name = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:20]
        self.dir.mkdir(parents=True, exist_ok=True)
        return write_parquet_atomic(self.dir / f"part-{name}.parquet", table)

    def read(self, keys: Sequence[str], columns: Sequence[str] | None = None) -> pa.Table:
        """Rows for ``keys``, grouped in the order of ``keys`` (rows of one key keep their
        stored order). Each key is taken from one part only (the first that has it).

        Raises:
            KeyError: a key has no stored result.
        """
        keys = list(keys)
        parts = self._parts()
        if not keys:
            return pa.table({}) if not parts else ds.dataset(parts[:1]).schema.empty_table()
        if columns is not None and self.key_column not in columns:
            columns = [self.key_column, *columns]
        dataset = ds.dataset([str(p) for p in parts], format="parquet")
        tables = []
        for frag in dataset.get_fragments():
            t = frag.to_table(filter=pc.field(self.key_column).isin(keys), columns=columns)
            if t.num_rows:
                tables.append(t.append_column("__part", pa.array([frag.path] * t.num_rows)))
        if not tables:
            raise KeyError(f"{self.stage}: no stored result for {len(keys)} keys, e.g. {keys[0]}")
        table = pa.concat_tables(tables)
        col = table.column(self.key_column).to_pylist()
        part = table.column("__part").to_pylist()
        first_part: dict[str, str] = {}
        for k, p in zip(col, part):
            first_part.setdefault(k, p)
        missing = [k for k in keys if k not in first_part]
        if missing:
            raise KeyError(f"{self.stage}: no stored result for {len(missing)} keys, e.g. {missing[0]}")
        pos = {k: i for i, k in enumerate(keys)}
        order = sorted((i for i in range(len(col)) if first_part[col[i]] == part[i]),
                       key=lambda i: (pos[col[i]], i))
        return table.take(pa.array(order, type=pa.int64())).drop_columns(["__part"])


def write_index(root: str | os.PathLike, stage: str, table: pa.Table, info: dict[str, Any]) -> str:
    """Write ``<root>/<stage>/index.parquet`` atomically and return its data version.

    ``info`` (stage version, code version, parameters, counts...) is stored in the
    schema metadata. The data version is a sha256 over the stage version and the
    table's rows, so equal outputs give equal versions (Dagster ``DataVersion``).
    """
    h = hashlib.sha256(str(info.get("version", "")).encode())
    for batch in table.to_batches():
        for col in batch.columns:
            h.update(repr(col.to_pylist()).encode())
    data_version = h.hexdigest()[:24]
    info = {**info, "data_version": data_version}
    write_parquet_atomic(Path(root) / stage / "index.parquet", table, metadata=info)
    return data_version


def read_index(root: str | os.PathLike, stage: str) -> tuple[pa.Table, dict[str, Any]]:
    """Read a stage index and its info dict.

    Raises:
        FileNotFoundError: the stage has not been materialized under this data root.
    """
    path = Path(root) / stage / "index.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: materialize the `{stage}` asset first")
    return pq.read_table(path), read_parquet_metadata(path)


def write_quarantine(root: str | os.PathLike, stage: str, rows: list[dict[str, str]]) -> Path:
    """Write the stage's quarantine table (columns ``uri``, ``reason``) atomically."""
    table = pa.table({"uri": [r["uri"] for r in rows], "reason": [r["reason"] for r in rows]},
                     schema=pa.schema([("uri", pa.string()), ("reason", pa.string())]))
    return write_parquet_atomic(Path(root) / stage / "quarantine.parquet", table)
