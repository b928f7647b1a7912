"""Shared helpers for the training tests: tiny synthetic shard sets (no tests here).

Pairs are smooth, learnable RGBD images (a coloured gradient per sample, depth a ramp)
with a half-image condition mask, written with ``pipelines.shards.write_shards``.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from pipelines.shards import depth_encoding, write_shards


def synthetic_pairs(n: int = 8, size: int = 16, seed: int = 0, num_poses: int = 3) -> list[dict]:
    """``n`` IVID pair dicts (``write_shards`` schema) sorted by key, ``size`` x ``size`` px."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    pairs = []
    for i in range(n):
        sk = hashlib.sha256(f"train-img-{seed}-{i}".encode()).hexdigest()[:16]
        c0, c1 = rng.random(3), rng.random(3)
        a = rng.random()
        t = (a * xx + (1 - a) * yy)[..., None]
        rgb = np.clip((c0 * (1 - t) + c1 * t) * 255, 0, 255).astype(np.uint8)
        depth = np.clip((0.2 + 0.6 * t[..., 0]) * 65535, 0, 65535).astype(np.uint16)
        mask = np.zeros((size, size), bool)
        mask[:, : size // 2 + i % 3] = True
        mask_rgb = mask.copy()
        mask_rgb[:, size // 2 - 1:] = False
        pairs.append({
            "key": f"{sk}_00", "sample_key": sk, "target": rgb, "target_depth": depth,
            "cond": (rgb * mask[..., None]).astype(np.uint8), "cond_depth": np.where(mask, depth, 65535).astype(np.uint16),
            "mask": mask, "mask_rgb": mask_rgb,
            "camera": {"K": [[size, 0, size / 2], [0, size, size / 2], [0, 0, 1]], "yaw": 0.1, "pitch": 0.0,
                       "radius": 1.0, "depth_encoding": depth_encoding(0.5, 100.0)},
            "pose": i % num_poses, "label": i % 2, "meta": {"synthetic": True},
        })
    return sorted(pairs, key=lambda p: p["key"])


def write_tiny_shards(out: Path, n: int = 8, size: int = 16, maxcount: int = 4, seed: int = 0) -> Path:
    """Write ``n`` synthetic pairs, all in split ``train``; returns the manifest path."""
    write_shards(synthetic_pairs(n, size, seed), out, fractions={"train": 1.0}, maxcount=maxcount,
                 maxsize=1e9, dataset_version="synthetic-test")
    return Path(out) / "manifest.json"
