"""Benchmark of IVID forward-backward warping (pipelines.warping.forward_backward_warp).

Prints pairs/s (a pair = one forward_backward_warp of one image; batch / median call time,
robust to a shared machine's noise) and peak memory at
128x128 and 256x256, supersample 1 and 3, on CPU (1 and 2 intra-op threads in one process,
and 2 one-thread processes at once -- how chunks run in parallel) and on CUDA when
available. Each case runs in a fresh
subprocess; CPU peak memory is that process's peak RSS (``resource.getrusage`` maxrss)
minus its RSS just before the first warp, CUDA peak memory is
``torch.cuda.max_memory_allocated`` minus the inputs.

    .venv/bin/python benchmarks/bench_warping.py [--batch 8] [--seconds 3] [--tune-malloc]
        [--threads 1,2] [--processes 2] [--no-cpu] [--padding 2,image] [--sizes 128,256]
        [--supersample 1,3] [--mask-diff 64]

``--padding`` takes forward-pass paddings in pixels, ``image`` meaning the image size (IVID's
``padding=self.image_size``). ``--mask-diff N`` instead counts, over N pairs per size, the mask
pixels where each padding differs from ``image`` (IVID's novel-camera distribution with
params.yaml's stds, and the same cameras with pitch forced to +-0.4 rad).

``--tune-malloc`` raises glibc's mmap/trim thresholds first (see
:func:`pipelines.pairs.tune_malloc`), which avoids re-faulting freed memory on every call.
Inputs are synthetic (smooth colour + detail, smooth depth with a nearer object), cameras
are IVID's novel-camera distribution; nothing is downloaded.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pipelines.camera import intrinsics_from_fov, sample_novel_camera  # noqa: E402
from pipelines.depth_convention import disparity_to_depth  # noqa: E402
from pipelines.pairs import tune_malloc  # noqa: E402
from pipelines.warping import forward_backward_warp  # noqa: E402


def make_inputs(B: int, size: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.interpolate(torch.rand(B, 3, 12, 12, generator=g), size=(size, size),
                                          mode="bilinear") * 0.8 + 0.2 * torch.rand(B, 3, size, size, generator=g)
    disp = 1.0 + 0.1 * torch.nn.functional.interpolate(torch.rand(B, 1, 3, 3, generator=g), size=(size, size),
                                                       mode="bilinear")
    disp[:, :, size // 4: size // 2, size // 3: 2 * size // 3] *= 1.8
    depth = disparity_to_depth(disp)
    T = torch.tensor(np.stack([sample_novel_camera(f"bench{b}", seed, 0).src_to_tgt for b in range(B)]),
                     dtype=torch.float32)
    K = torch.tensor(intrinsics_from_fov(45.0, size, size), dtype=torch.float32)
    return [t.to(device) for t in (img, depth, K, T)]


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # KiB on Linux


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def pad_px(padding: str, size: int) -> float:
    return float(size) if padding == "image" else float(padding)


def mask_diff(n: int, size: int, paddings: list[str]) -> None:
    """Print mask pixels differing from padding = image size over n pairs (two camera sets)."""
    from pipelines.camera import novel_camera
    torch.set_num_threads(1)
    B = 8
    for label in ("ivid", "pitch+-0.4"):
        diff = {p: 0 for p in paddings}
        total = 0
        for k in range(max(1, n // B)):
            img, depth, K, T = make_inputs(B, size, "cpu", seed=k)
            if label != "ivid":
                cams = [sample_novel_camera(f"bench{b}", k, 0) for b in range(B)]
                T = torch.tensor(np.stack([novel_camera(c.yaw, 0.4 * (-1) ** b, c.radius, c.center).src_to_tgt
                                           for b, c in enumerate(cams)]), dtype=torch.float32)
            ref = forward_backward_warp(img, depth, K, T, padding=float(size)).mask
            total += ref.numel()
            for p in paddings:
                diff[p] += int((forward_backward_warp(img, depth, K, T, padding=pad_px(p, size)).mask != ref).sum())
        print(f"  {size}px {label:10s} " + ", ".join(f"padding {p}: {d} of {total} mask pixels differ"
                                                     for p, d in diff.items()), flush=True)


def run_case(device: str, size: int, ss: int, B: int, seconds: float,
             padding: float = 2.0) -> tuple[float, float]:
    img, depth, K, T = make_inputs(B, size, device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rss0 = rss_mib()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    forward_backward_warp(img, depth, K, T, supersample=ss, padding=padding)          # warm-up
    sync()
    calls, t0 = [], time.perf_counter()
    while True:
        t = time.perf_counter()
        forward_backward_warp(img, depth, K, T, supersample=ss, padding=padding)
        sync()
        calls.append(time.perf_counter() - t)
        if time.perf_counter() - t0 >= seconds and len(calls) >= 5:
            break
    if device == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    else:
        peak = maxrss_mib() - rss0
    return B / statistics.median(calls), peak


def child(spec: str) -> None:
    device, threads, size, ss, B, seconds, tune, padding = spec.split(",")
    if tune == "1":
        tune_malloc()
    if device == "cpu":
        torch.set_num_threads(int(threads))
    rate, peak = run_case(device, int(size), int(ss), int(B), float(seconds), pad_px(padding, int(size)))
    print(json.dumps({"rate": rate, "peak": peak}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8, help="images per forward_backward_warp call (CPU)")
    ap.add_argument("--seconds", type=float, default=3.0, help="minimum timed seconds per case")
    ap.add_argument("--tune-malloc", action="store_true", help="call pipelines.pairs.tune_malloc() first")
    ap.add_argument("--threads", default="1,2", help="CPU intra-op thread counts to try")
    ap.add_argument("--processes", type=int, default=2,
                    help="also run this many 1-thread processes at once (aggregate pairs/s)")
    ap.add_argument("--no-cpu", action="store_true")
    ap.add_argument("--padding", default="2", help="forward-pass paddings (px, or 'image' = image size)")
    ap.add_argument("--sizes", default="128,256", help="image sizes (square)")
    ap.add_argument("--supersample", default="1,3", help="supersampling factors")
    ap.add_argument("--mask-diff", type=int, default=0, metavar="N",
                    help="count mask differences vs padding = image size over N pairs, then exit")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        return child(args.case)
    paddings = args.padding.split(",")
    if args.mask_diff:
        for size in map(int, args.sizes.split(",")):
            mask_diff(args.mask_diff, size, [p for p in paddings if p != "image"])
        return
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, "
          f"tune_malloc {args.tune_malloc}")
    rows = []
    cases = [] if args.no_cpu else [("cpu", int(t), 1) for t in args.threads.split(",")]
    cases += [] if args.no_cpu or args.processes < 2 else [("cpu", 1, args.processes)]
    if torch.cuda.is_available():
        cases.append(("cuda", 0, 1))
    for device, threads, procs in cases:
        name = (torch.cuda.get_device_name() if device == "cuda" else
                f"cpu, {procs} processes x 1 thread" if procs > 1 else f"cpu, {threads} thread(s)")
        B = args.batch if device == "cpu" else max(args.batch, 64)
        grid = [(z, s, p) for z in map(int, args.sizes.split(",")) for s in map(int, args.supersample.split(","))
                for p in paddings]
        for size, ss, pad in grid:
            spec = f"{device},{threads},{size},{ss},{B},{args.seconds},{int(args.tune_malloc)},{pad}"
            ps = [subprocess.Popen([sys.executable, __file__, "--case", spec], stdout=subprocess.PIPE,
                                   text=True) for _ in range(procs)]
            outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in ps]
            res = {"rate": sum(o["rate"] for o in outs), "peak": sum(o["peak"] for o in outs)}
            rows.append((name, size, ss, pad, B, res["rate"], res["peak"]))
            print(f"  {name:24s} {size:4d}px ss={ss} padding={pad}: {res['rate']:8.1f} pairs/s, "
                  f"peak {res['peak']:7.1f} MiB", flush=True)
    print()
    print("| device | size | supersample | padding | batch | pairs/s | peak memory (MiB) |")
    print("|---|---|---|---|---|---|---|")
    for name, size, ss, pad, B, rate, peak in rows:
        print(f"| {name} | {size}x{size} | {ss} | {pad} | {B} | {rate:.1f} | {peak:.0f} |")


if __name__ == "__main__":
    main()
