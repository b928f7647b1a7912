"""Per-sample results of one stage version in one bucket (:class:`StageStore`), stored as
Parquet parts with a key map, through :mod:`pipelines.storage`'s file-system functions.

Layout: ``<root>/cache/<stage>/<version>/bucket=<b>/{part-<hash>.parquet, _keys.parquet}``
(``../shared/DESIGN.md``, Storage and Scale). A chunk read opens the key map once per store
and then only the parts that hold the requested keys: O(1) files per chunk whatever the size
of the dataset (``benchmarks/bench_scale.py``: ~2-12 ms per 256-key read at 10^6 samples).
"""
from __future__ import annotations

import hashlib
import os
from typing import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.buckets import ALL, ancestors, in_bucket
from pipelines.storage import bucket_dir, exists, list_files, read_parquet, write_parquet_atomic


class StageStore:
    """Per-sample results of one stage version in one bucket, stored as Parquet parts.

    Args:
        root: data root (local path or URI).
        stage: stage name (directory name).
        version: stage version id (:func:`pipelines.config.stage_version`).
        bucket: bucket id (:mod:`pipelines.buckets`); ``'all'`` holds every key.
        key_column: column that identifies the sample a row belongs to. Several rows
            may share a key (e.g. one row per novel view); they are written together.

    Reads also find results stored under the bucket's ancestors (``bucket=a`` for
    ``bucket=a3``), so growing ``num_buckets`` recomputes nothing. Writes go to the
    bucket's own directory; call :meth:`flush` at the end of a bucket run to record its
    key map (a killed run's unrecorded parts are found again by listing).
    """

    def __init__(self, root: str | os.PathLike, stage: str, version: str, bucket: str = ALL,
                 key_column: str = "key"):
        self.root = root
        self.stage = stage
        self.version = version
        self.bucket = bucket
        self.key_column = key_column
        self.base = f"{os.fspath(root).rstrip('/')}/cache/{stage}/{version}"
        self.dir = bucket_dir(self.base, bucket)
        self._where: dict[str, tuple[str, str]] | None = None   # key -> (dir, part name)
        self._own: dict[str, str] = {}                          # key -> part, own dir

    def dirs(self) -> list[str]:
        """The directories searched: own bucket first, then its ancestors."""
        return [self.dir] + [bucket_dir(self.base, a) for a in ancestors(self.bucket)]

    def _scan_dir(self, d: str) -> dict[str, str]:
        parts = list_files(d, "part-*.parquet")
        out: dict[str, str] = {}
        listed: set[str] = set()
        if exists(f"{d}/_keys.parquet"):
            t = read_parquet(f"{d}/_keys.parquet")
            for k, p in zip(t.column("key").to_pylist(), t.column("part").to_pylist()):
                if p in parts:
                    out.setdefault(k, p)
                    listed.add(p)
        for p in parts:
            if p not in listed:
                for k in read_parquet(f"{d}/{p}", columns=[self.key_column]).column(0).to_pylist():
                    out.setdefault(k, p)
        return out

    def _load(self) -> dict[str, tuple[str, str]]:
        if self._where is None:
            where: dict[str, tuple[str, str]] = {}
            for i, d in enumerate(self.dirs()):
                found = self._scan_dir(d)
                if i == 0:
                    self._own = dict(found)
                for k, p in found.items():
                    if in_bucket(k, self.bucket):
                        where.setdefault(k, (d, p))
            self._where = where
        return self._where

    def keys(self) -> set[str]:
        """Keys of this bucket that have stored results."""
        return set(self._load())

    def missing(self, keys: Sequence[str]) -> list[str]:
        """The subset of ``keys`` (in order, without duplicates) that has no stored result."""
        have = self._load()
        seen: set[str] = set()
        out = []
        for k in keys:
            if k not in have and k not in seen:
                out.append(k)
                seen.add(k)
        return out

    def write(self, table: pa.Table) -> str | None:
        """Store ``table`` (must contain ``key_column``) as one new part, atomically.

        The part name is a hash of its keys, so rewriting the same chunk after a crash
        replaces the file instead of duplicating it. Returns the path (None if empty).

        Raises:
            ValueError: a key that does not belong to this bucket.
        """
        if table.num_rows == 0:
            return None
        keys = sorted(set(table.column(self.key_column).to_pylist()))
        bad = [k for k in keys if not in_bucket(k, self.bucket)]
        if bad:
            raise ValueError(f"{self.stage}: key {bad[0]} does not belong to bucket {self.bucket}")
        name = "part-" + hashlib.sha256("\n".join(keys).encode()).hexdigest()[:20] + ".parquet"
        path = f"{self.dir}/{name}"
        write_parquet_atomic(path, table)
        where = self._load()
        for k in keys:                      # the first stored result of a key wins, as on reload
            where.setdefault(k, (self.dir, name))
            self._own.setdefault(k, name)
        return path

    def flush(self) -> None:
        """Record the own directory's key -> part map (``_keys.parquet``), atomically."""
        self._load()
        if not self._own:
            return
        items = sorted(self._own.items())
        write_parquet_atomic(f"{self.dir}/_keys.parquet",
                             pa.table({"key": [k for k, _ in items], "part": [p for _, p in items]}))

    def read(self, keys: Sequence[str], columns: Sequence[str] | None = None) -> pa.Table:
        """Rows for ``keys``, grouped in the order of ``keys`` (rows of one key keep their
        stored order). Reads only the parts that hold the keys.

        Raises:
            KeyError: a key has no stored result.
        """
        keys = list(keys)
        where = self._load()
        missing = [k for k in keys if k not in where]
        if missing:
            raise KeyError(f"{self.stage}: no stored result for {len(missing)} keys, e.g. {missing[0]}")
        if columns is not None and self.key_column not in columns:
            columns = [self.key_column, *columns]
        by_part: dict[tuple[str, str], list[str]] = {}
        for k in dict.fromkeys(keys):
            by_part.setdefault(where[k], []).append(k)
        tables = []
        for (d, p), ks in by_part.items():
            t = read_parquet(f"{d}/{p}", columns=columns)
            tables.append(t.filter(pc.is_in(t.column(self.key_column), value_set=pa.array(ks, pa.string()))))
        if not tables:
            return pa.table({})
        table = pa.concat_tables(tables, promote_options="default")
        pos = {k: i for i, k in enumerate(dict.fromkeys(keys))}
        col = table.column(self.key_column).to_pylist()
        order = sorted(range(len(col)), key=lambda i: (pos[col[i]], i))
        return table.take(pa.array(order, type=pa.int64()))
