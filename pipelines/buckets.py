"""Buckets: the unit of work, storage and Dagster partitioning of every per-sample stage.

A sample key is the sha256 hex digest of the image bytes (:func:`pipelines.images.sample_key`),
so its leading hex digits are uniformly distributed. A **bucket** is a static prefix of the
key: with ``num_buckets = 16**k`` buckets the bucket of ``key`` is ``key[:k]``.

Properties (tested in ``tests/test_buckets.py``):

* identical bytes give identical keys, so duplicates always land in the same bucket and
  deduplication never crosses buckets;
* buckets are uniform in expectation (sha256 output), so parallel units cost the same;
* membership never changes as the dataset grows, and prefixes nest: growing from 16 to 256
  buckets splits bucket ``a`` into ``a0`` ... ``af`` without moving any sample out of it,
  and a bucket's store still finds results written under its ancestor (``bucket=a``)
  directory (:meth:`pipelines.storage.StageStore.dirs`).

``num_buckets = 1`` is allowed (k = 0): the single bucket is called ``all``.
The recommended counts (``../shared/reference/scale-notes.md`` §4.1) are 16 for tests and
demos, 256 by default (ImageNet: ~5 k samples per bucket) and 4096 beyond ~50 M samples.
"""
from __future__ import annotations

from typing import Iterable, Sequence

#: Name of the single bucket when ``num_buckets == 1``.
ALL = "all"
#: Largest supported bucket count (16**4: Dagster recommends <= 100 k partitions per asset).
MAX_BUCKETS = 16 ** 4


def bucket_digits(num_buckets: int) -> int:
    """Number of leading hex digits ``k`` with ``16**k == num_buckets``.

    Raises:
        ValueError: ``num_buckets`` is not one of 1, 16, 256, 4096, 65536.
    """
    n = int(num_buckets)
    for k in range(5):
        if 16 ** k == n:
            return k
    raise ValueError(f"num_buckets must be a power of 16 between 1 and {MAX_BUCKETS} "
                     f"(1, 16, 256, 4096, 65536); got {num_buckets!r}")


def bucket_ids(num_buckets: int) -> list[str]:
    """All bucket ids in order: ``['0', ..., 'f']`` for 16, ``['00', ..., 'ff']`` for 256,
    ``['all']`` for 1. These are the Dagster partition keys of every per-sample asset."""
    k = bucket_digits(num_buckets)
    if k == 0:
        return [ALL]
    return [format(i, f"0{k}x") for i in range(16 ** k)]


def bucket_of(key: str, num_buckets: int) -> str:
    """Bucket id of a sample key (its first ``k`` lowercase hex digits, or ``'all'``).

    Raises:
        ValueError: the key is shorter than ``k`` or not lowercase hex.
    """
    k = bucket_digits(num_buckets)
    if k == 0:
        return ALL
    prefix = key[:k]
    if len(prefix) != k or any(c not in "0123456789abcdef" for c in prefix):
        raise ValueError(f"sample key {key!r} does not start with {k} lowercase hex digits")
    return prefix


def in_bucket(key: str, bucket: str) -> bool:
    """True when ``key`` belongs to ``bucket`` (any bucket count)."""
    return bucket == ALL or key.startswith(bucket)


def ancestors(bucket: str) -> list[str]:
    """Coarser buckets that contain ``bucket``, nearest first: ``'a3f' -> ['a3', 'a', 'all']``."""
    if bucket == ALL:
        return []
    return [bucket[:j] for j in range(len(bucket) - 1, 0, -1)] + [ALL]


def group_by_bucket(keys: Iterable[str], num_buckets: int) -> dict[str, list[str]]:
    """Keys grouped by bucket (bucket order, keys in input order within a bucket)."""
    out: dict[str, list[str]] = {}
    for key in keys:
        out.setdefault(bucket_of(key, num_buckets), []).append(key)
    return dict(sorted(out.items()))


def check_buckets(buckets: Sequence[str], num_buckets: int) -> list[str]:
    """Validate partition keys against ``num_buckets``; returns them sorted.

    Raises:
        ValueError: an id that is not a bucket of ``num_buckets`` buckets.
    """
    valid = set(bucket_ids(num_buckets)) if num_buckets <= 4096 else None
    k = bucket_digits(num_buckets)
    for b in buckets:
        ok = b in valid if valid is not None else (len(b) == k and all(c in "0123456789abcdef" for c in b))
        if not ok:
            raise ValueError(f"{b!r} is not a bucket id for num_buckets={num_buckets}")
    return sorted(buckets)
