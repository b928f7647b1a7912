"""Throughput of the whole ``warp_pairs`` stage (store reads, warps, PNG encoding, writes)
with 1 and 2 CPU worker processes, on distinct variants of the sample photos.

Usage: .venv/bin/python benchmarks/bench_warp_stage.py [--images 32] [--resolution 128] [--supersample 3]
Prints pairs/s per worker count and the peak RSS of the parent process.
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    from pipelines.config import load_params
    from pipelines.depth import save_tiny_depth_model
    from pipelines.sources import sample_items
    from pipelines.stages.depth import run_depth
    from pipelines.stages.ingest import run_ingest
    from pipelines.stages.warp import run_warp

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--supersample", type=int, default=3)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-warp-stage-"))
    photos = tmp / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    items = sample_items()
    for i in range(args.images):  # distinct keys: each variant gets its own noise
        arr = np.asarray(Image.open(items[i % len(items)].uri).convert("RGB")).astype(np.int16)
        arr = np.clip(arr + rng.integers(-3, 4, arr.shape), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(photos / f"{i:04d}.png")
    depth_dir = save_tiny_depth_model(tmp / "tiny_depth")
    print("| workers | size | supersample | pairs | seconds | pairs/s | parent peak RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    for workers in args.workers:
        root = tmp / f"data{workers}"
        p = load_params()
        p["source"] = {"kind": "folder", "path": str(photos)}
        p["ingest"] = {"resolution": args.resolution, "min_size": 64}
        p["depth"] = {**p["depth"], "local_dir": str(depth_dir), "model": None}
        p["warp"] = {**p["warp"], "supersample": args.supersample, "workers": workers}
        run_ingest(root, p)
        run_depth(root, p)
        t = time.perf_counter()
        rep = run_warp(root, p)
        dt = time.perf_counter() - t
        n = rep.metadata["pairs"]
        print(f"| {workers} | {args.resolution} | {args.supersample} | {n} | {dt:.1f} | {n / dt:.1f} | "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} |")


if __name__ == "__main__":
    main()
