"""The shard manifest (``manifest.json``) of :mod:`pipelines.shards`: read it, and verify a
shard set against it (sizes, sha256, sample counts, completeness). Format: see the
:mod:`pipelines.shards` docstring."""
from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import webdataset as wds

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA_VERSION = 1
#: Shard names in a manifest: ``{split}-{index:06d}.tar`` (one directory) or
#: ``bucket=<hex>/{split}-{index:06d}.tar`` (one shard sequence per bucket, see
#: :mod:`pipelines.buckets`). Groups: bucket (or None), split, index.
SHARD_RE = re.compile(r"^(?:bucket=([0-9a-f]{1,8})/)?([A-Za-z0-9_]+)-(\d{6})\.tar$")


def resolve_shard(root: str | os.PathLike, name: Any) -> Path:
    """The file of a manifest's shard ``name``, strictly inside the shard directory ``root``.

    A manifest is data from whoever produced the shard set, and webdataset opens ``pipe:``
    names as shell commands (``webdataset/gopen.py``): a name is accepted only if it fully
    matches :data:`SHARD_RE` (``{split}-NNNNNN.tar``, optionally under ``bucket=<hex>/``), so
    no scheme, ``..``, absolute path, backslash or newline gets through; the result is the
    absolute path ``abspath(root)/name`` (a plain path that webdataset opens as a file). A
    shard file that is itself a symlink (DVC's ``symlink`` cache type) is followed when
    opened, as the shard directory's owner placed it.

    Args:
        root: the manifest's directory.
        name: the ``name`` of a manifest shard entry.

    Returns:
        Absolute path (not checked for existence).

    Raises:
        ValueError: ``name`` is not a str matching ``SHARD_RE`` or would leave ``root``.
    """
    if not isinstance(name, str) or not SHARD_RE.fullmatch(name):
        raise ValueError(f"refusing shard name {name!r} from the manifest: a shard name must be "
                         "'{split}-NNNNNN.tar' or 'bucket=<hex>/{split}-NNNNNN.tar' (no paths, "
                         "URLs or 'pipe:' commands)")
    base = Path(os.path.abspath(root))
    path = Path(os.path.normpath(base / name))
    if base not in path.parents:
        raise ValueError(f"refusing shard name {name!r}: resolves outside {base}")
    return path


def stray_shards(root: str | os.PathLike, listed: Iterable[str]) -> list[str]:
    """Shard-named files (``SHARD_RE``: ``root/*.tar`` and ``root/bucket=*/*.tar``) that are
    not in ``listed``, as manifest-style names, sorted."""
    root = Path(root)
    found = [p.relative_to(root).as_posix() for pattern in ("*.tar", "bucket=*/*.tar")
             for p in root.glob(pattern)]
    listed = set(listed)
    return sorted(n for n in found if SHARD_RE.fullmatch(n) and n not in listed)


class HashingFile:
    """File wrapper that counts and sha256-hashes the bytes written or read through it."""

    def __init__(self, f: Any):
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def _see(self, data: bytes) -> bytes:
        self.sha.update(data)
        self.size += len(data)
        return data

    def write(self, data: bytes) -> int:
        return self.f.write(self._see(data))

    def read(self, n: int = -1) -> bytes:
        return self._see(self.f.read(n))

    def flush(self) -> None:
        self.f.flush()


def split_totals(shards: list[dict], splits: Iterable[str]) -> dict[str, dict[str, int]]:
    """Per split: number of shards, samples and bytes of the manifest's shard entries."""
    out = {s: {"shards": 0, "count": 0, "bytes": 0} for s in splits}
    for d in shards:
        t = out.setdefault(d["split"], {"shards": 0, "count": 0, "bytes": 0})
        t["shards"] += 1
        t["count"] += d["count"]
        t["bytes"] += d["bytes"]
    return out


def manifest_digest(shards: list[dict]) -> str:
    """sha256 over the lines ``f"{name} {sha256}\\n"`` of the shard entries, in order."""
    return hashlib.sha256("".join(f"{d['name']} {d['sha256']}\n" for d in shards).encode()
                          ).hexdigest()


def read_manifest(manifest: str | Path | dict, root: str | Path | None = None
                  ) -> tuple[dict, Path]:
    """Load a manifest and the directory its shard names are relative to.

    Args:
        manifest: path to ``manifest.json``, a shard directory containing it, or a dict.
        root: shard directory; default: the manifest's directory (required for a dict).

    Raises:
        FileNotFoundError: the manifest file does not exist (incomplete or absent set).
        ValueError: a dict without ``root``, or an unknown manifest schema version.
    """
    if isinstance(manifest, dict):
        if root is None:
            raise ValueError("root is required when the manifest is given as a dict")
        data = manifest
    else:
        path = Path(manifest)
        if path.is_dir():
            path = path / MANIFEST_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no shard manifest (absent, or a write is "
                                    "incomplete: rerun the shard writer)")
        data = json.loads(path.read_text())
        root = path.parent if root is None else root
    if data.get("schema_version") != MANIFEST_SCHEMA_VERSION:
        raise ValueError(f"unknown manifest schema_version {data.get('schema_version')!r}")
    return data, Path(root)


@dataclass
class VerifyReport:
    """Result of :func:`verify`: ``ok`` is True iff ``problems`` is empty."""

    ok: bool
    problems: list[str] = field(default_factory=list)
    shards: int = 0
    samples: int = 0


def _scan_shard(path: Path) -> tuple[str, int, int, str | None]:
    """One pass over a shard: (sha256, bytes, sample count, tar error or None)."""
    with open(path, "rb") as f:
        reader = HashingFile(f)
        keys: list[str] = []
        error = None
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tar:
                for member in tar:
                    key, _ = wds.tariterators.base_plus_ext(member.name)
                    if key is not None and (not keys or keys[-1] != key):
                        keys.append(key)
        except (tarfile.TarError, OSError, EOFError) as exn:
            error = f"{type(exn).__name__}: {exn}"
        while reader.read(1 << 20):
            pass
    if error is None and len(set(keys)) != len(keys):
        error = "a sample key occurs in non-contiguous members"
    return reader.sha.hexdigest(), reader.size, len(keys), error


def verify(manifest: str | Path | dict, root: str | Path | None = None) -> VerifyReport:
    """Re-hash every shard of a manifest and check sizes, sample counts and completeness.

    Checks per shard: file present, byte size, sha256, sample count (distinct keys of
    the tar members, read as webdataset groups them), readable tar. Also: split totals
    and ``digest`` match the shard list, no duplicate names, every name valid
    (:func:`resolve_shard`; an invalid name is reported and never opened), and no stray
    shard file in ``root`` or its ``bucket=*/`` directories that the manifest does not list
    (:func:`stray_shards`). Problems are reported, never raised.

    Args:
        manifest: as in :func:`read_manifest`.
        root: shard directory (default: the manifest's directory).

    Returns:
        :class:`VerifyReport` with ``ok``, ``problems`` (human-readable strings),
        ``shards`` checked and ``samples`` counted.

    Raises:
        FileNotFoundError: the manifest file itself is missing.
    """
    try:
        data, root = read_manifest(manifest, root)
    except ValueError as exn:
        return VerifyReport(False, [str(exn)])
    problems: list[str] = []
    shards = data.get("shards", [])
    names = [s.get("name") for s in shards]
    if len(set(names)) != len(names):
        problems.append("duplicate shard names in manifest")
    samples = 0
    for s in shards:
        try:
            path = resolve_shard(root, s.get("name"))
        except ValueError as exn:
            problems.append(str(exn))
            continue
        if not path.is_file():
            problems.append(f"{s['name']}: missing")
            continue
        sha, size, count, error = _scan_shard(path)
        samples += count
        if size != s["bytes"]:
            problems.append(f"{s['name']}: {size} bytes, manifest says {s['bytes']}")
        if sha != s["sha256"]:
            problems.append(f"{s['name']}: sha256 {sha} != manifest {s['sha256']}")
        if count != s["count"]:
            problems.append(f"{s['name']}: {count} samples, manifest says {s['count']}")
        if error:
            problems.append(f"{s['name']}: unreadable tar ({error})")
    splits = data.get("splits", {})
    if split_totals(shards, splits) != splits:
        problems.append(f"split totals {splits} do not match the shard list")
    if data.get("digest") != manifest_digest(shards):
        problems.append("manifest digest does not match the shard list")
    if root.is_dir():
        problems += [f"{n}: shard file not in manifest (stale or foreign)"
                     for n in stray_shards(root, [n for n in names if isinstance(n, str)])]
    return VerifyReport(not problems, problems, len(shards), samples)
