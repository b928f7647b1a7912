"""Phase 1 of ingestion: list the source, hash every file, deduplicate, bucket.

The listing is global and cheap per file: read the bytes once, ``key = sha256(bytes)``
(:func:`pipelines.images.sample_key`); a file whose (uri, size, mtime) matches the previous
listing keeps its key without being read again. Deduplication keeps the first file in
listing order for each key; since identical bytes have identical keys they share a bucket
(:mod:`pipelines.buckets`), so phase 2 (decode / crop / resize, per bucket) never needs
another bucket's data. Files that cannot be read are quarantined with the reason.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

import pyarrow as pa

from pipelines.images import sample_key
from pipelines.sources import SourceItem

LISTING_SCHEMA = pa.schema([("key", pa.string()), ("uri", pa.string()), ("source_path", pa.string()),
                            ("label", pa.string()), ("split", pa.string()), ("size", pa.int64()),
                            ("mtime_ns", pa.int64()), ("order", pa.int64())])


@dataclass
class Listing:
    """Result of :func:`hash_listing`: ``table`` (:data:`LISTING_SCHEMA`, one row per unique
    key, in listing order), ``duplicates`` ({"uri", "reason"} rows naming the kept file),
    ``quarantine`` ({"uri", "reason"}) and how many files were hashed vs. reused."""
    table: pa.Table
    duplicates: list[dict[str, str]] = field(default_factory=list)
    quarantine: list[dict[str, str]] = field(default_factory=list)
    hashed: int = 0
    reused: int = 0


def relative_source_path(uri: str, source_root: str | None) -> str:
    """``uri`` relative to the source root (folder, or the manifest's directory), POSIX
    separators; the base name when the uri is outside it. Recorded in shards' ``meta.json``
    so published data holds no machine-specific path."""
    if source_root:
        try:
            rel = os.path.relpath(uri, source_root)
            if not rel.startswith(".."):
                return rel.replace(os.sep, "/")
        except ValueError:
            pass
    return os.path.basename(uri)


def hash_files(uris: Sequence[str], previous: dict[str, tuple[int, int, str]] | None = None
               ) -> list[tuple[int, int, str, bool] | str]:
    """Per uri: ``(size, mtime_ns, key, hashed)`` or the reason it is unreadable (a str).

    A file whose size and mtime equal ``previous[uri]`` keeps its key unread
    (``hashed=False``). Pure per-file work: :func:`hash_listing` fans chunks of it out.
    """
    previous = previous or {}
    out: list[tuple[int, int, str, bool] | str] = []
    for uri in uris:
        try:
            st = os.stat(uri)
            size, mtime = int(st.st_size), int(st.st_mtime_ns)
            prev = previous.get(uri)
            if prev is not None and prev[0] == size and prev[1] == mtime:
                out.append((size, mtime, prev[2], False))
            else:
                with open(uri, "rb") as f:
                    out.append((size, mtime, sample_key(f.read()), True))
        except OSError as e:
            out.append(f"unreadable file: {e.strerror or e}")
    return out


def _hash_chunk(uris: list[str], previous: dict[str, tuple[int, int, str]]) -> list:
    return hash_files(uris, previous)


def hash_listing(items: Sequence[SourceItem], *, source_root: str | None = None,
                 previous: dict[str, tuple[int, int, str]] | None = None,
                 params: dict | None = None, chunk_size: int = 4096) -> Listing:
    """Hash and deduplicate ``items`` (in order).

    Hashing runs in chunks of ``chunk_size`` files through the engine of
    ``params['execution']`` (:func:`pipelines.engine.run_map`: in-process, or Ray tasks);
    deduplication then keeps the first file of each key in listing order, so the result
    does not depend on the engine.

    Args:
        items: the source listing (:func:`pipelines.sources.list_source`).
        source_root: directory the recorded ``source_path`` is relative to.
        previous: ``uri -> (size, mtime_ns, key)`` of the last listing; a file whose size and
            mtime are unchanged keeps its key unread.
        params: run parameters (for the engine); None = in-process.

    Returns:
        :class:`Listing`. Never raises for a bad file (unreadable: quarantined).
    """
    from pipelines.engine import run_map

    previous = previous or {}
    items = list(items)
    chunks = [[i.uri for i in items[j:j + chunk_size]] for j in range(0, len(items), chunk_size)]
    hashed = run_map(_hash_chunk, [(c, {u: previous[u] for u in c if u in previous}) for c in chunks], params or {})
    cols: dict[str, list] = {n: [] for n in LISTING_SCHEMA.names}
    first: dict[str, str] = {}
    out = Listing(LISTING_SCHEMA.empty_table())
    for order, (item, res) in enumerate(zip(items, (r for rs in hashed for r in rs))):
        if isinstance(res, str):
            out.quarantine.append({"uri": item.uri, "reason": res})
            continue
        size, mtime, key, was_hashed = res
        out.hashed += int(was_hashed)
        out.reused += int(not was_hashed)
        if key in first:
            out.duplicates.append({"uri": item.uri, "reason": f"duplicate of {first[key]}"})
            continue
        first[key] = item.uri
        for n, v in (("key", key), ("uri", item.uri), ("source_path", relative_source_path(item.uri, source_root)),
                     ("label", item.label), ("split", item.split), ("size", size), ("mtime_ns", mtime),
                     ("order", order)):
            cols[n].append(v)
    out.table = pa.table(cols, schema=LISTING_SCHEMA)
    return out
