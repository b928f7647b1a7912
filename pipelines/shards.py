"""WebDataset shards of IVID training pairs: split, encode, write (verify and read the
manifest: :mod:`pipelines.shard_manifest`).

Sample schema: :data:`pipelines.sample_schema.IVID_PAIR` (DESIGN.md "Shard sample schema"). Tars are
written with ``webdataset.TarWriter`` (https://github.com/webdataset/webdataset,
``webdataset/writer.py``) with fixed headers, so equal inputs give byte-identical files.

Layout of ``out_dir`` after :func:`write_shards`::

    {split}-{index:06d}.tar    one shard sequence per split, e.g. train-000000.tar
    manifest.json              written last (see below)

**Complete shard set.** ``manifest.json`` is deleted at the start of a write and written
last, atomically, after every listed shard has been renamed into place and shards of
earlier runs that it does not list have been removed. So: no manifest means the set is
incomplete (a run is in progress or was killed: rerun it); a manifest means every shard
it lists was completely written; ``verify(manifest).ok`` additionally proves the bytes
are unchanged (sha256, size, sample count). Shards are written to ``.<name>.*.tmp`` and
renamed when complete (:func:`pipelines.storage.atomic_path`), so a killed run never
leaves a partial file under a final name. One writer per directory at a time.

``manifest.json`` (key-sorted JSON; no timestamps, so equal inputs give equal bytes)::

    {"schema_version": 1, "sample_schema": "ivid_pair/2", "dataset_version": "ab12...",
     "params": {"fractions": {"test": 0.05, "train": 0.9, "val": 0.05},
                "maxcount": 1000, "maxsize": 1e9},
     "shards": [{"name": "train-000000.tar", "split": "train", "count": 1000,
                 "bytes": 73410560, "sha256": "9f86..."}, ...],
     "splits": {"train": {"shards": 3, "count": 2712, "bytes": 199116800}, ...},
     "digest": "sha256 over the lines f"{name} {sha256}\\n" of all shards",
     "content_digest": "additive hash of the samples (sample_digest): equal for equal samples
                        whatever their split into shards or buckets",
     "extra": {...caller's dict...}}
"""
from __future__ import annotations

import contextlib
import hashlib
import re
import tarfile
from pathlib import Path
from typing import Any, Iterable

import webdataset as wds

from pipelines.depth_convention import DEPTH_ENCODING_NAME, depth_encoding  # noqa: F401 (re-export)
from pipelines.sample_schema import IVID_PAIR, SampleSchema
from pipelines.shard_manifest import (MANIFEST_NAME, MANIFEST_SCHEMA_VERSION, SHARD_RE, HashingFile,
                                      manifest_digest, split_totals)
from pipelines.storage import atomic_path, remove_stale_temporaries, write_json_atomic

#: Members, encoders and validation of a sample: :data:`pipelines.sample_schema.IVID_PAIR`.
SAMPLE_SCHEMA = IVID_PAIR.name
#: Fixed tar header fields (TarWriter sets mtime/mode/uname/gname; uid = gid = 0 is
#: ``tarfile.TarInfo``'s default; format is USTAR, member names <= 100 bytes).
TAR_HEADER = {"mtime": 0, "mode": 0o444, "user": "viewforge", "group": "viewforge"}
_SPLIT_RE = re.compile(r"^[A-Za-z0-9_]+$")
_BLOCK = tarfile.BLOCKSIZE


def split_of(sample_key: str, fractions: dict[str, float]) -> str:
    """Deterministic split of a sample from a sha256 of its sample key.

    ``u = int(sha256("viewforge-split:" + sample_key)[:8 bytes]) / 2**64`` in [0, 1) is
    compared with the cumulative fractions of the splits in sorted name order. The result
    depends on the sample key and ``fractions`` only, so a sample keeps its split when the
    dataset grows, and all views of one image (same sample key) share a split.

    Args:
        sample_key: the sample's content key (not the per-view pair key).
        fractions: split name -> fraction >= 0, summing to 1 (tolerance 1e-6); names
            match ``[A-Za-z0-9_]+``.

    Raises:
        ValueError: invalid fractions or split names.
    """
    names = sorted(fractions)
    if not names or any(not _SPLIT_RE.match(n) for n in names):
        raise ValueError(f"split names must be non-empty [A-Za-z0-9_]+, got {names}")
    if any(fractions[n] < 0 for n in names) or abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    digest = hashlib.sha256(b"viewforge-split:" + sample_key.encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    acc = 0.0
    for name in names:
        acc += fractions[name]
        if u < acc:
            return name
    return max((n for n in names if fractions[n] > 0), key=names.index)


#: Modulus of the additive content digest (2**256 - 189, the largest 256-bit prime).
CONTENT_MODULUS = 2 ** 256 - 189


def sample_digest(sample: dict[str, bytes | str]) -> str:
    """sha256 (hex) of one encoded sample: its ``__key__`` and every member name + bytes, in
    sorted member order."""
    h = hashlib.sha256(str(sample["__key__"]).encode() + b"\0")
    for name in sorted(k for k in sample if not k.startswith("__")):
        v = sample[name]
        h.update(name.encode() + b"\0" + hashlib.sha256(v if isinstance(v, bytes) else str(v).encode()).digest())
    return h.hexdigest()


def combine_content_digests(digests: list[str]) -> str:
    """Content digest of a union of disjoint sample sets: the sum of their digests modulo
    :data:`CONTENT_MODULUS` (an additive multiset hash, AdHash, Bellare & Micciancio 1997).
    It depends on the samples only -- not on their order, split into shards or buckets."""
    return format(sum(int(d, 16) for d in digests) % CONTENT_MODULUS, "064x")


def encode_sample(pair: dict) -> dict[str, bytes | str]:
    """Encode one IVID pair as a webdataset sample dict (members -> bytes) with
    :data:`pipelines.sample_schema.IVID_PAIR` (``IVID_PAIR.encode``).

    Args:
        pair: ``key`` str (``f"{sample_key}_{view:02d}"``; no ``.`` or ``/``, because
            webdataset splits member names at the first dot), ``sample_key`` str,
            ``target``/``cond`` uint8 [H,W,3] RGB, ``target_depth``/``cond_depth`` uint16
            [H,W] IVID z-buffer (:mod:`pipelines.depth_convention`), ``mask``/``mask_rgb``
            bool [H,W], ``camera`` JSON-able dict with ``depth_encoding``
            (:func:`depth_encoding`), ``pose`` int, ``label`` int or None, ``meta``
            JSON-able dict. numpy arrays/scalars inside the dicts become lists/numbers.

    Returns:
        ``{"__key__": key, "target.png", "cond.png" (8-bit RGB), "target_depth.npy.gz",
        "cond_depth.npy.gz" (uint16 [H,W] gzipped ``.npy``, read exactly by stock webdataset),
        "mask.png", "mask_rgb.png" (8-bit 0/255), "camera.json", "meta.json" (sorted keys,
        compact; ``meta`` + ``sample_key``), "pose.cls", "label.cls" (omitted when label is
        None)}`` as bytes; deterministic.

    Raises:
        ValueError: wrong dtype/shape, mismatched H/W, invalid key, missing depth encoding
            (every problem listed).
    """
    return IVID_PAIR.encode(pair)


def _tar_bytes(sample: dict[str, bytes | str]) -> int:
    """Bytes the sample's members take in a USTAR tar (header + data padded to 512)."""
    return sum(_BLOCK + -(-len(v.encode() if isinstance(v, str) else v) // _BLOCK) * _BLOCK
               for k, v in sample.items() if not k.startswith("_"))


class _ShardSequence:
    """One split's shard sequence: open shard, roll-over, atomic rename on close."""

    def __init__(self, out_dir: Path, split: str, maxcount: int, maxsize: float):
        self.out_dir, self.split, self.maxcount, self.maxsize = out_dir, split, maxcount, maxsize
        self.index: int = 0
        self.done: list[dict[str, Any]] = []
        self.stack: contextlib.ExitStack | None = None

    def _open(self) -> None:
        self.name = f"{self.split}-{self.index:06d}.tar"
        self.stack = contextlib.ExitStack()
        tmp = self.stack.enter_context(atomic_path(self.out_dir / self.name))
        self.file = HashingFile(self.stack.enter_context(open(tmp, "wb")))
        # members are bytes from IVID_PAIR.encode; encoder=False: no second gzip of .gz members
        self.tar = wds.TarWriter(self.file, encoder=False, **TAR_HEADER)
        self.count, self.members_bytes = 0, 0

    def write(self, sample: dict[str, bytes | str]) -> None:
        size = _tar_bytes(sample)
        if self.stack is not None and (self.count >= self.maxcount or
                                       self.members_bytes + size > self.maxsize):
            self.close()
        if self.stack is None:
            self._open()
        self.tar.write(sample)
        self.count += 1
        self.members_bytes += size

    def close(self) -> None:
        """Finish the open shard (end blocks, fsync, rename) and record it."""
        if self.stack is None:
            return
        self.tar.close()  # closes the tar stream only; our file stays open
        self.stack.close()  # closes the file, then atomic_path renames tmp -> name
        self.done.append({"name": self.name, "split": self.split, "count": self.count,
                          "bytes": self.file.size, "sha256": self.file.sha.hexdigest()})
        self.stack, self.index = None, self.index + 1

    def abort(self) -> None:
        """Drop the open shard's temporary file (on error)."""
        if self.stack is not None:
            with contextlib.suppress(Exception):
                self.tar.close()  # into the temporary, which is deleted next
            self.stack.__exit__(RuntimeError, RuntimeError("aborted"), None)
            self.stack = None


def write_shards(pairs: Iterable[dict], out_dir: str | Path, *, fractions: dict[str, float],
                 maxcount: int = 1000, maxsize: float = 1e9, dataset_version: str,
                 extra: dict | None = None, schema: SampleSchema | None = None, encoded: bool = False) -> dict:
    """Stream samples (IVID pairs by default) into per-split WebDataset shards and write the manifest.

    Each pair (see :func:`encode_sample`) goes to its ``split`` when it has one (a split the
    user assigned wins; it must be one of ``fractions``), else to ``split_of(pair["sample_key"])``; each
    split is its own sequence ``{split}-{index:06d}.tar``. A shard is closed before the
    sample that would make it exceed ``maxcount`` samples or ``maxsize`` bytes of members
    (headers + padded data; the file adds <= 10 KiB of tar end padding); a single sample
    larger than ``maxsize`` gets a shard of its own. Memory holds one encoded sample per
    split. Order of work: delete the old ``manifest.json`` and stale ``.*.tmp`` files,
    write shards (each to a temporary, renamed when complete), delete ``*.tar`` shards
    not in the new manifest, write ``manifest.json`` atomically. A rerun after a crash
    therefore gives the same bytes as an uninterrupted run.

    Args:
        pairs: IVID pairs sorted by ``key`` (strictly increasing: sorted, no duplicates).
        out_dir: shard directory (created).
        fractions: split name -> fraction (:func:`split_of`); every split gets an entry
            in the manifest, possibly with 0 shards.
        maxcount: max samples per shard (>= 1).
        maxsize: max member bytes per shard.
        dataset_version: id stored in the manifest (e.g. a hash of sample keys and stage
            versions, computed by the caller).
        extra: JSON-able dict stored under ``"extra"``.
        schema: the sample schema (:mod:`pipelines.sample_schema`) whose ``encode`` makes the
            members and whose name the manifest records as ``sample_schema``; None =
            :data:`~pipelines.sample_schema.IVID_PAIR`.
        encoded: each item is ``{"key", "split" or "sample_key", "sample": members form}``
            already encoded (and validated) with ``schema`` by the caller (e.g. a stage
            cache of encoded viewsets): written as is.

    Returns:
        The manifest dict (format and example in the module docstring).

    Raises:
        ValueError: pairs out of order or duplicated; invalid pair (:func:`encode_sample`);
            invalid fractions. Temporary files are removed; no manifest is written.
    """
    if maxcount < 1 or maxsize <= 0:
        raise ValueError(f"maxcount must be >= 1 and maxsize > 0, got {maxcount}, {maxsize}")
    split_of("", fractions)  # validates fractions
    schema = IVID_PAIR if schema is None else schema
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    remove_stale_temporaries(out)
    seqs = {s: _ShardSequence(out, s, maxcount, maxsize) for s in sorted(fractions)}
    prev = None
    content = 0
    try:
        for pair in pairs:
            key = pair["key"]
            if prev is not None and not key > prev:
                raise ValueError(f"pairs must arrive sorted by key without duplicates: "
                                 f"{key!r} after {prev!r}")
            prev = key
            sample = pair["sample"] if encoded else schema.encode(pair)
            content = (content + int(sample_digest(sample), 16)) % CONTENT_MODULUS
            seqs[pair.get("split") or split_of(pair["sample_key"], fractions)].write(sample)
        for seq in seqs.values():
            seq.close()
    except BaseException:
        for seq in seqs.values():
            seq.abort()
        raise
    shards = [s for seq in seqs.values() for s in seq.done]
    names = {s["name"] for s in shards}
    for p in out.glob("*.tar"):
        if SHARD_RE.match(p.name) and p.name not in names:
            p.unlink()
    manifest = {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "sample_schema": schema.name,
        "dataset_version": dataset_version,
        "params": {"fractions": dict(sorted(fractions.items())), "maxcount": int(maxcount),
                   "maxsize": float(maxsize)},
        "shards": shards,
        "splits": split_totals(shards, seqs),
        "digest": manifest_digest(shards),
        "content_digest": format(content, "064x"),
        "extra": dict(extra or {}),
    }
    write_json_atomic(out / MANIFEST_NAME, manifest)
    return manifest
