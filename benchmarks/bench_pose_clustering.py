"""Pose clustering speed and peak memory (issue 4 target: 10^6 images' descriptors < 2 min, 2-core CPU).

Two measurements, each in a fresh process so that peak RSS (``ru_maxrss``) belongs to it:

* ``descriptors``: :func:`pipelines.pose_clustering.cluster_descriptors` (pose k-means on at
  most ``max_points`` descriptors, assignment of all N, mirror votes, cycle, outliers) on N
  synthetic descriptors (D = 24, i.e. 8 parts; 12 Gaussian poses) with flipped descriptors.
* ``streaming``: :func:`cluster_poses_streaming` end to end on synthetic DINOv2-sized patch
  tokens (16 x 16 x 384 float16, flipped too), read chunk by chunk (chunks are reused
  views, so reading costs nothing): the per-image cost of both passes.

Usage: ``python benchmarks/bench_pose_clustering.py [--sizes 100000 1000000] [--threads 1 2]
[--stream-images 8192]``. Prints one JSON line per case.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time

import numpy as np


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2 ** 20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _warm_imports() -> None:
    """Import what the clustering imports lazily (sklearn alone takes seconds), outside the timing."""
    import scipy.spatial.distance  # noqa: F401
    import sklearn.cluster  # noqa: F401
    import sklearn.decomposition  # noqa: F401


def _descriptors(n: int, threads: int, max_points: int, q) -> None:
    from pipelines.pose_clustering import cluster_descriptors, mirror_descriptors
    _warm_imports()
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(12, 24)).astype(np.float32)
    x = centres[rng.integers(0, 12, n)] + 0.3 * rng.normal(size=(n, 24)).astype(np.float32)
    fx = mirror_descriptors(x)
    base = _rss_mib()
    t = time.perf_counter()
    out = cluster_descriptors(x, fx, num_poses=12, restarts=5, max_points=max_points, num_threads=threads)
    q.put(dict(case="descriptors", n=n, threads=threads, max_points=max_points,
               seconds=round(time.perf_counter() - t, 2), peak_rss_mib=round(_peak_mib()),
               peak_minus_inputs_mib=round(_peak_mib() - base), sizes=out["sizes"].tolist()))


def _streaming(n: int, threads: int, max_points: int, q) -> None:
    from pipelines.pose_clustering import cluster_poses_streaming
    _warm_imports()
    rng = np.random.default_rng(0)
    chunk, distinct = 256, 4
    pool = [rng.normal(size=(chunk, 16, 16, 384)).astype(np.float16) for _ in range(2 * distinct)]
    yy, xx = np.mgrid[:16, :16]
    blob = ((yy - 7.5) ** 2 + (xx - 7.5) ** 2 < 30)[None, ..., None]
    pool = [p + 3 * blob.astype(np.float16) * (i % 3 == 0) for i, p in enumerate(pool)]  # a central "object"

    def read_chunks():
        for i in range(n // chunk):
            yield pool[i % distinct], pool[distinct + i % distinct], None
    base = _rss_mib()
    t = time.perf_counter()
    r = cluster_poses_streaming(read_chunks, max_points=max_points, num_threads=threads)
    sec = time.perf_counter() - t
    q.put(dict(case="streaming", n=n, threads=threads, max_points=max_points, seconds=round(sec, 2),
               ms_per_image=round(1e3 * sec / n, 3), timings={k: round(v, 2) for k, v in r.timings.items()},
               peak_rss_mib=round(_peak_mib()), peak_minus_inputs_mib=round(_peak_mib() - base)))


def _run(fn, *args) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=fn, args=(*args, q))
    p.start()
    out = q.get()
    p.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--max-points", type=int, default=200_000)
    ap.add_argument("--stream-images", type=int, default=8192)
    a = ap.parse_args()
    for n in a.sizes:
        for th in a.threads:
            print(json.dumps(_run(_descriptors, n, th, a.max_points)), flush=True)
    if a.stream_images:
        print(json.dumps(_run(_streaming, a.stream_images, min(a.threads), a.max_points)), flush=True)


if __name__ == "__main__":
    main()
