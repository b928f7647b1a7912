"""Depth estimation throughput and peak memory with the real Depth-Anything-V2-Small
architecture (random weights: speed does not depend on the values).

Usage: .venv/bin/python benchmarks/bench_depth.py [--images 16] [--batch-size 8] [--resolution 256]
Prints images/s and peak memory (CPU: peak RSS growth; CUDA: max_memory_allocated).
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time

import numpy as np
import torch


def small_v2_checkpoint(path: str) -> str:
    """Save a randomly initialised model with Depth-Anything-V2-Small's architecture and its
    image processor (518 px, keep aspect ratio, multiple of 14) as a local checkpoint."""
    from transformers import (DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config,
                              DPTImageProcessor)

    backbone = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, patch_size=14,
                            image_size=518, reshape_hidden_states=False,
                            out_features=["stage3", "stage6", "stage9", "stage12"])
    cfg = DepthAnythingConfig(backbone_config=backbone, fusion_hidden_size=64, neck_hidden_sizes=[48, 96, 192, 384],
                              reassemble_hidden_size=384, head_hidden_size=32, patch_size=14)
    DepthAnythingForDepthEstimation(cfg).save_pretrained(path)
    DPTImageProcessor(do_resize=True, size={"height": 518, "width": 518}, keep_aspect_ratio=True,
                      ensure_multiple_of=14, resample=3, do_pad=False, image_mean=[0.485, 0.456, 0.406],
                      image_std=[0.229, 0.224, 0.225]).save_pretrained(path)
    return path


def main() -> None:
    from pipelines.depth import estimate_disparity, load_depth_model

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--resolution", type=int, default=256, help="ingested image side (px)")
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    path = small_v2_checkpoint(tempfile.mkdtemp(prefix="bench-depth-"))
    res = load_depth_model(None, path, device=args.device)
    dev = next(res.model.parameters()).device
    imgs = (np.random.default_rng(0).random((args.images, args.resolution, args.resolution, 3)) * 255).astype(np.uint8)
    estimate_disparity(res, imgs[: args.batch_size], batch_size=args.batch_size)  # warm-up
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    t = time.perf_counter()
    estimate_disparity(res, imgs, batch_size=args.batch_size)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    peak = (torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print("| device | threads | images | input | batch | images/s | peak MiB |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {dev.type} | {torch.get_num_threads()} | {args.images} | {args.resolution}->518 | {args.batch_size} "
          f"| {args.images / dt:.2f} | {peak:.0f} |")
    del rss0


if __name__ == "__main__":
    main()
