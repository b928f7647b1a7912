"""Benchmark: viewset ingest + shard writing (issue 14).

Writes a synthetic CO3Dv2 category (``tests/viewset_fixtures.py``: RGB JPEG, masks, float16
depth PNGs, depth masks; ndc_isotropic) with N sequences of V views at P x P pixels, then runs
``viewset_sources -> viewsets -> viewset_shards -> viewset_manifest``
(:func:`pipelines.stages.viewsets.run_viewset_graph`, 16 buckets, in-process engine) in a
fresh child process per configuration and reports sequences/s, views/s and the child's peak
RSS (``ru_maxrss``). ``crop_context`` is large so each stored view is the full P x P frame
(``min_short_side = P``). RSS must not grow with N (work is bounded by a chunk of sequences).

Usage: ``python benchmarks/bench_viewsets.py [--sizes 256 512] [--counts 8 32] [--views 8]``
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))


def write_source(src: Path, n: int, views: int, px: int) -> None:
    import numpy as np

    import viewset_fixtures as F

    K, w2c = F.orbit_cameras(views, px, px, seed=0)
    rgb, alpha, depth = F.render_views(K, w2c, px, px, ss=1)
    seq = dict(K=K, w2c=w2c, rgb=rgb, alpha=alpha, depth=depth, fmt="ndc_isotropic", scale_adjustment=1.0)
    F.write_co3d(src, "toy", {f"seq{i:04d}": {**seq, "rgb": np.clip(rgb + 1e-3 * i, 0, 1)} for i in range(n)})


def child(src: str, data: str, px: int) -> None:
    import torch

    torch.set_num_threads(1)
    from pipelines.params_schema import validate_params
    from pipelines.stages.viewsets import run_viewset_graph

    p = validate_params({"profile": "smoke", "viewset_source": {"root": src, "format": "co3d"},
                         "viewsets": {"crop_context": 3.0, "min_short_side": px, "chunk_sequences": 2}})
    t0 = time.perf_counter()
    out = run_viewset_graph(data, p)
    wall = time.perf_counter() - t0
    print(json.dumps({"seconds": wall, "sequences": out["viewset_manifest"].metadata["samples"],
                      "views": out["viewset_sources"].metadata["views"],
                      "listing_s": out["viewset_sources"].seconds,
                      "bytes": out["viewset_manifest"].metadata["bytes"],
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--counts", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child(a.child[0], a.child[1], int(a.child[2]))
        return 0
    rows = []
    for px in a.sizes:
        for n in a.counts:
            tmp = Path(tempfile.mkdtemp(prefix="bench_viewsets_"))
            try:
                write_source(tmp / "src", n, a.views, px)
                r = subprocess.run([sys.executable, __file__, "--child", str(tmp / "src"), str(tmp / "data"), str(px)],
                                   capture_output=True, text=True, check=True, cwd=ROOT)
                m = json.loads(r.stdout.strip().splitlines()[-1])
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            rows.append((px, n, m))
    print("| px | sequences | views | seconds | sequences/s | views/s | listing s | MB written | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for px, n, m in rows:
        print(f"| {px} | {m['sequences']} | {m['views']} | {m['seconds']:.1f} | {m['sequences'] / m['seconds']:.2f} | "
              f"{m['views'] / m['seconds']:.1f} | {m['listing_s']:.1f} | {m['bytes'] / 1e6:.1f} | {m['peak_rss_mb']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
