"""Bucket properties (pipelines.buckets): duplicates together, uniform, nested prefixes."""
import hashlib
import os

import numpy as np
import pytest

from pipelines.buckets import ALL, ancestors, bucket_digits, bucket_ids, bucket_of, group_by_bucket, in_bucket
from pipelines.images import sample_key


def _keys(n, seed=0):
    rng = np.random.default_rng(seed)
    return [sample_key(rng.bytes(32)) for _ in range(n)]


def test_ids_and_digits():
    assert bucket_ids(1) == [ALL]
    assert bucket_ids(16) == list("0123456789abcdef")
    assert len(bucket_ids(256)) == 256 and bucket_ids(256)[:2] == ["00", "01"] and bucket_ids(256)[-1] == "ff"
    for bad in (0, 2, 100, 257, 16 ** 5):
        with pytest.raises(ValueError, match="num_buckets"):
            bucket_digits(bad)


def test_duplicates_share_a_bucket():
    data = os.urandom(1000)
    assert bucket_of(sample_key(data), 256) == bucket_of(sample_key(bytes(data)), 256)


def test_buckets_are_uniform():
    """20 000 random keys over 16 buckets: chi-square well below the 0.1% critical value (37.7, 15 dof)."""
    counts = np.bincount([int(bucket_of(k, 16), 16) for k in _keys(20000)], minlength=16)
    expected = 20000 / 16
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 37.7, counts


def test_growing_the_count_never_moves_a_sample_out_of_its_bucket():
    for k in _keys(500, seed=1):
        b16, b256, b4096 = bucket_of(k, 16), bucket_of(k, 256), bucket_of(k, 4096)
        assert b256.startswith(b16) and b4096.startswith(b256)
        assert in_bucket(k, b16) and in_bucket(k, b4096) and in_bucket(k, ALL)
        assert ancestors(b4096) == [b256, b16, ALL]


def test_group_by_bucket_partitions_the_keys():
    keys = _keys(300, seed=2)
    groups = group_by_bucket(keys, 16)
    assert sorted(k for ks in groups.values() for k in ks) == sorted(keys)
    assert all(bucket_of(k, 16) == b for b, ks in groups.items() for k in ks)
    with pytest.raises(ValueError):
        bucket_of("XYZ" + hashlib.sha256(b"").hexdigest(), 16)
