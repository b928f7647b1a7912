"""Training throughput and peak memory of the RGBD diffusion models (issue 6, "Speed").

Times :meth:`training.trainer.Trainer.train_step` -- forward, backward, AdamW, EMA update,
bf16 autocast on CUDA (fp32 on CPU) -- for the first-view (4-channel) and novel-view
(10-channel) models of ``training/configs/base.yaml`` (IVID adm_128_small sizes, 92M
parameters; random weights cost the same as trained ones) at 64 and 128 px, on random
batches already in memory (the loader is not measured). Each case runs in its own
subprocess so its peak memory is its own: CUDA ``torch.cuda.max_memory_allocated``; CPU
process peak RSS (``ru_maxrss``, includes Python, torch and the model).

The posed multi-view model (issue 15; ``--kinds multiview``, ``training/configs/multiview_base.yaml``
UNet with cross-view attention and 6-channel ray maps) runs through the same trainer
(:class:`training.multiview_train.MultiViewTask`) at each ``--views`` V; its ``samples/s`` are
viewsets/s (x V images), batch ``--mv-batch-size`` viewsets.

Prints one JSON line per case and a Markdown table at the end.
Usage: ``python benchmarks/bench_training.py [--sizes 64 128] [--batch-size 8] [--steps 5]
[--warmup 2] [--config base] [--device auto|cpu|cuda] [--kinds first_view novel_view multiview]
[--views 3 5] [--mv-batch-size 2] [--mv-config multiview_base]``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _multiview_batch(batch: int, views: int, size: int, g) -> dict:
    """Random viewdiff-adapter batch: images in [-1, 1], cameras on a ring looking at the origin."""
    import numpy as np
    import torch
    from pipelines.viewsets.ring import look_at_origin_w2c
    az = np.linspace(0, 2 * np.pi, views, endpoint=False)
    w2c = look_at_origin_w2c(np.stack([2 * np.cos(az), 2 * np.sin(az), np.full(views, 1.0)], 1))
    K = np.array([[size, 0, (size - 1) / 2], [0, size, (size - 1) / 2], [0, 0, 1]])
    return {"images": torch.rand(batch, views, 3, size, size, generator=g) * 2 - 1,
            "K": [np.stack([K] * views)] * batch, "w2c": [w2c] * batch, "key": [""] * batch}


def one(kind: str, size: int, batch: int, steps: int, warmup: int, config: str, device: str,
        views: int = 0) -> dict:
    import torch
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    from training.train import load_config, parse_config
    from training.trainer import Trainer

    over = [f"resolution={size}", f"train.batch_size={batch}"]
    over += [f"num_views={views}"] if kind == "multiview" else [f"model={kind}"]
    mcfg, dcfg, tcfg = parse_config(load_config(config, over))
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(mcfg, dcfg, tcfg, None, tmp, resume=None)
        dev = tr.device
        g = torch.Generator().manual_seed(0)
        r = lambda c: torch.rand(batch, c, size, size, generator=g)
        b = (_multiview_batch(batch, views, size, g) if kind == "multiview" else
             {"target": r(3), "target_depth": r(1), "cond": r(3), "cond_depth": r(1),
              "mask": (r(1) > 0.3).float(), "mask_rgb": (r(1) > 0.4).float(), "key": [""] * batch,
              "pose": torch.zeros(batch, dtype=torch.long), "label": torch.zeros(batch, dtype=torch.long)})
        for _ in range(warmup):
            tr.train_step([b])
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = tr.train_step([b])
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        dt = time.perf_counter() - t0
        peak = (torch.cuda.max_memory_allocated(dev) if dev.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        return dict(model=kind if kind != "multiview" else f"multiview V={views}", px=size, batch=batch,
                    device=str(dev),
                    device_name=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                    precision="bf16 autocast" if tr.autocast else "fp32", threads=torch.get_num_threads(),
                    params_m=round(tr.model.num_parameters / 1e6, 1), steps=steps,
                    s_per_step=round(dt / steps, 4), samples_per_s=round(batch * steps / dt, 2),
                    peak_mib=round(peak / 2 ** 20), loss=round(loss, 4))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--kinds", nargs="+", default=["first_view", "novel_view"])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--config", default="base")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--views", type=int, nargs="+", default=[3, 5], help="multiview: views per sample")
    ap.add_argument("--mv-batch-size", type=int, default=2, help="multiview: viewsets per batch")
    ap.add_argument("--mv-config", default="multiview_base")
    ap.add_argument("--one", nargs=3, metavar=("KIND", "SIZE", "VIEWS"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one[0], int(a.one[1]), a.batch_size, a.steps, a.warmup, a.config, a.device,
                             int(a.one[2]))))
        return
    rows = []
    cases = [(k, v) for k in a.kinds for v in (a.views if k == "multiview" else [0])]
    for size in a.sizes:
        for kind, views in cases:
            mv = kind == "multiview"
            cmd = [sys.executable, __file__, "--one", kind, str(size), str(views), "--batch-size",
                   str(a.mv_batch_size if mv else a.batch_size), "--steps", str(a.steps), "--warmup", str(a.warmup),
                   "--config", a.mv_config if mv else a.config, "--device", a.device]
            p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
            if p.returncode != 0:
                print(p.stderr[-3000:], file=sys.stderr)
                raise SystemExit(p.returncode)
            row = json.loads(p.stdout.strip().splitlines()[-1])
            print(json.dumps(row), flush=True)
            rows.append(row)
    print("\n| model | px | batch | device | precision | params (M) | s/step | samples/s | peak MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['px']} | {r['batch']} | {r['device_name']} | {r['precision']} | {r['params_m']} "
              f"| {r['s_per_step']} | {r['samples_per_s']} | {r['peak_mib']} |")


if __name__ == "__main__":
    main()
