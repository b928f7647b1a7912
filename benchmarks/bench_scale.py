"""Scale benchmark: storage, bucketing and shard layers with trivial per-sample compute at
10^4, 10^5 and 10^6 samples, and the whole graph with tiny models in-process vs local Ray.

Usage:
    .venv/bin/python benchmarks/bench_scale.py                       # layers at 1e4 1e5 1e6
    .venv/bin/python benchmarks/bench_scale.py --sizes 10000 100000 --graph-images 0
    .venv/bin/python benchmarks/bench_scale.py --sizes --graph-images 2000   # whole graph only

Layers (each size runs in its own process, so peak RSS is per size): ``write`` = a stage
writing every sample through ``run_incremental`` into bucketed Parquet parts (64-byte
payload), ``read+write`` = a downstream stage reading its input chunk by chunk and writing
its own rows, ``rerun`` = the same stage again with everything cached (key maps only),
``shards`` = per-bucket deterministic WebDataset shards of tiny IVID pairs for
``--shard-buckets`` buckets (per-bucket cost is what scales; every bucket is alike), and
``chunk read`` = one 256-key read from a freshly opened bucket store (key map + parts).
Prints seconds per 1,000 samples and the process's peak RSS after each layer.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

NUM_BUCKETS = 256
CHUNK = 256


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def layers(n: int, shard_buckets: int) -> dict:
    import numpy as np
    import pyarrow as pa

    from pipelines.buckets import bucket_ids
    from pipelines.stages.common import run_incremental
    from pipelines.stage_store import StageStore
    from pipelines.storage import write_index

    root = tempfile.mkdtemp(prefix="vf-scale-")
    per = n // NUM_BUCKETS

    def bucket_keys(b: str) -> list[str]:
        """The bucket's sorted keys, made on demand (sha256 digests under the bucket's prefix),
        so the benchmark holds one bucket of keys, never the dataset's."""
        return sorted(b + hashlib.sha256(f"{b}/{j}".encode()).hexdigest()[len(b):] for j in range(per))

    n = per * NUM_BUCKETS
    payload = os.urandom(64)
    out: dict = {"samples": n, "per_bucket": n / NUM_BUCKETS}

    def stage_a(chunk):
        return pa.table({"key": chunk, "payload": [payload] * len(chunk)}), []

    t0 = time.perf_counter()
    for b in bucket_ids(NUM_BUCKETS):
        ks = bucket_keys(b)
        store = StageStore(root, "a", "v1", b)
        run_incremental(store, ks, stage_a, CHUNK)
        write_index(root, "a", pa.table({"key": ks}), {"version": "v1"}, bucket=b)
    out["write_s_per_1k"] = (time.perf_counter() - t0) / n * 1000
    out["write_rss_mib"] = rss_mib()

    t0 = time.perf_counter()
    for b in bucket_ids(NUM_BUCKETS):
        ks = bucket_keys(b)
        src = StageStore(root, "a", "v1", b)
        dst = StageStore(root, "b", "v1", b)

        def stage_b(chunk, src=src):
            t = src.read(chunk, columns=["payload"])
            return pa.table({"key": t.column("key"), "size": pa.array([len(x) for x in t.column(1).to_pylist()])}), []

        run_incremental(dst, ks, stage_b, CHUNK)
    out["read_write_s_per_1k"] = (time.perf_counter() - t0) / n * 1000
    out["read_write_rss_mib"] = rss_mib()

    t0 = time.perf_counter()
    for b in bucket_ids(NUM_BUCKETS):
        ks = bucket_keys(b)
        computed, reused, _ = run_incremental(StageStore(root, "b", "v1", b), ks, lambda c: (None, []), CHUNK)
        assert computed == 0 and reused == len(ks)
    out["rerun_s_per_1k"] = (time.perf_counter() - t0) / n * 1000

    b = "7f"
    ks = bucket_keys(b)
    times = []
    for i in range(5):
        chunk = ks[(i * CHUNK) % max(1, len(ks) - CHUNK):][:CHUNK]
        t0 = time.perf_counter()
        StageStore(root, "a", "v1", b).read(chunk)
        times.append(time.perf_counter() - t0)
    out["chunk_read_ms"] = float(np.median(times)) * 1000

    from pipelines.shards import write_shards
    from pipelines.depth_convention import depth_encoding

    img = np.zeros((8, 8, 3), np.uint8)
    dep = np.zeros((8, 8), np.uint16)
    mask = np.ones((8, 8), bool)
    camera = {"depth_encoding": depth_encoding(0.5, 100.0), "K": [[8, 0, 3.5], [0, 8, 3.5], [0, 0, 1]]}
    shard_keys = 0
    t0 = time.perf_counter()
    for b in bucket_ids(NUM_BUCKETS)[:shard_buckets]:
        ks = bucket_keys(b)
        pairs = ({"key": f"{k}_00", "sample_key": k, "target": img, "target_depth": dep, "cond": img,
                  "cond_depth": dep, "mask": mask, "mask_rgb": mask, "camera": camera, "pose": 0, "label": None,
                  "meta": {"sample_key": k}} for k in ks)
        write_shards(pairs, f"{root}/shards/bucket={b}", fractions={"train": 0.9, "val": 0.05, "test": 0.05},
                     maxcount=1000, dataset_version="bench")
        shard_keys += len(ks)
    out["shards_s_per_1k"] = (time.perf_counter() - t0) / max(1, shard_keys) * 1000
    out["shards_rss_mib"] = rss_mib()
    import shutil

    shutil.rmtree(root, ignore_errors=True)
    return out


def graph(images: int, engine: str) -> dict:
    import numpy as np
    from PIL import Image

    from pipelines.depth import save_tiny_depth_model
    from pipelines.features import save_tiny_dinov2
    from pipelines.params_schema import validate_params
    from pipelines.stages.graph import run_data_graph

    work = tempfile.mkdtemp(prefix="vf-graph-")
    src = os.path.join(work, "src")
    os.makedirs(src)
    rng = np.random.default_rng(0)
    for i in range(images):
        Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)).resize((32, 32)).save(f"{src}/{i:05d}.png")
    depth_dir = save_tiny_depth_model(os.path.join(work, "depth"))
    dino = save_tiny_dinov2(os.path.join(work, "dinov2.safetensors"), image_size=56)
    params = validate_params({
        "num_buckets": 16, "source": {"kind": "folder", "path": src}, "ingest": {"resolution": 32, "min_size": 32},
        "depth": {"local_dir": str(depth_dir), "model": None}, "features": {"local_path": str(dino), "image_size": 56},
        "warp": {"views_per_image": 2, "supersample": 2, "min_coverage": 3},
        "pose": {"num_parts": 3, "num_poses": 4, "restarts": 1}, "execution": {"engine": engine, "num_cpus": 2}})
    stages = {}
    t0 = time.perf_counter()
    last = [t0]

    def on_stage(name, _):
        now = time.perf_counter()
        stages[name] = round(now - last[0], 2)
        last[0] = now

    run_data_graph(os.path.join(work, "data"), params, on_stage=on_stage)
    return {"engine": engine, "images": images, "seconds": round(time.perf_counter() - t0, 2), "stages": stages,
            "peak_rss_mib": round(rss_mib())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--shard-buckets", type=int, default=4)
    ap.add_argument("--graph-images", type=int, default=2000)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        kind, val = args.worker.split(":")
        res = layers(int(val), args.shard_buckets) if kind == "layers" else graph(args.graph_images, val)
        print("RESULT " + json.dumps(res))
        return

    def sub(worker: str) -> dict:
        out = subprocess.run([sys.executable, __file__, "--worker", worker, "--shard-buckets", str(args.shard_buckets),
                              "--graph-images", str(args.graph_images)], capture_output=True, text=True)
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if not line:
            raise RuntimeError(out.stderr[-3000:])
        return json.loads(line[-1][7:])

    if args.sizes:
        print(f"{'samples':>9} {'per bucket':>10} {'write s/1k':>10} {'read+write':>10} {'rerun':>8} "
              f"{'shards':>8} {'chunk read ms':>13} {'peak RSS MiB (write / read / shards)':>38}")
        for n in args.sizes:
            r = sub(f"layers:{n}")
            print(f"{r['samples']:>9} {r['per_bucket']:>10.0f} {r['write_s_per_1k']:>10.3f} {r['read_write_s_per_1k']:>10.3f} "
                  f"{r['rerun_s_per_1k']:>8.3f} {r['shards_s_per_1k']:>8.3f} {r['chunk_read_ms']:>13.2f} "
                  f"{r['write_rss_mib']:>12.0f} / {r['read_write_rss_mib']:.0f} / {r['shards_rss_mib']:.0f}", flush=True)
    if args.graph_images:
        res = [sub(f"graph:{e}") for e in ("local", "ray")]
        for r in res:
            print(f"whole graph, {r['images']} images, engine {r['engine']:<5}: {r['seconds']:8.1f} s, "
                  f"peak RSS {r['peak_rss_mib']} MiB, stages {r['stages']}")
        print(f"ray (2 workers) / in-process time ratio: {res[1]['seconds'] / res[0]['seconds']:.2f}")


if __name__ == "__main__":
    main()
