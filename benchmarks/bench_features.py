"""DINOv2 feature extraction throughput and peak memory (issue 4, "Speed").

Runs :func:`pipelines.features.extract_features` with a randomly initialised model of the
real default architecture (``vit_small_patch14_dinov2``, 22M parameters, 224 px input,
16 x 16 patches; random weights cost the same as trained ones and need no download) on
random 256 x 256 images, with and without the flipped pass. CUDA when available (bf16
autocast), else CPU. Prints one JSON line per case: images/s (original images; the flipped
pass doubles the work) and peak memory (CUDA: ``torch.cuda.max_memory_allocated``; CPU:
process peak RSS from ``ru_maxrss``, which includes the model and the input batch).

Usage: ``python benchmarks/bench_features.py [--images 64] [--batch-size 16] [--device cpu]``.
"""
from __future__ import annotations

import argparse
import json
import resource

import numpy as np
import timm
import torch

from pipelines.features import extract_features
from pipelines.models import pick_device


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit_small_patch14_dinov2")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch-size", type=int, nargs="+", default=[16])
    ap.add_argument("--device", default=None)
    a = ap.parse_args()
    dev = pick_device(a.device)
    torch.manual_seed(0)
    model = timm.create_model(a.model, pretrained=False, img_size=a.image_size).eval().to(dev)
    imgs = np.random.default_rng(0).random((a.images, 3, 256, 256), dtype=np.float32)
    extract_features(model, imgs[:2], batch_size=2)  # warm-up (kernels, allocator)
    for bs in a.batch_size:
        for flipped in (False, True):
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            fb = extract_features(model, imgs, batch_size=bs, flipped=flipped)
            peak = (torch.cuda.max_memory_allocated(dev) if dev.type == "cuda"
                    else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
            print(json.dumps(dict(model=a.model, image_size=a.image_size, device=str(dev),
                                  torch_threads=torch.get_num_threads(), images=a.images, batch_size=bs,
                                  flipped=flipped, images_per_s=round(fb.images_per_second, 2),
                                  peak_mib=round(peak / 2 ** 20), patch_shape=list(fb.patch.shape))), flush=True)


if __name__ == "__main__":
    main()
