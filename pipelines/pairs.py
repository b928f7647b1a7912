"""IVID training pairs for a chunk of samples: the function the ``warp_pairs`` asset calls.

Procedure (Xiang et al., ICCV 2023, Sec. 3.2; JeffreyXiang/ivid ``datasets/base.py``
``WarpDataset``): per (sample, view) sample a novel camera (:mod:`pipelines.camera`), add
pre-warp noise to the RGBD condition input, forward-backward warp it
(:mod:`pipelines.warping`, batched over all samples x views), then blur and erode the
condition texture (:mod:`pipelines.augment`). The target is the original RGBD and is not
returned here (the caller has it).

Performance (CPU): warping is memory-bound elementwise work; on a shared machine run one
intra-op thread per process (``torch.set_num_threads(1)``; OpenMP with more threads than
free cores is orders of magnitude slower) and parallelise over chunks, and call
:func:`tune_malloc` once per worker process.

Random streams: every draw of a pair comes from its own seed
``seed_for(key, view, seed, stream)`` with streams ``camera``, ``noise``, ``blur``,
``erode``; a pair's outputs depend only on (its image, depth, key, view, seed, params),
never on which other samples share its batch (bit-identical on CPU).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from pipelines import augment
from pipelines.camera import SOURCE_EYE, intrinsics_from_fov, sample_novel_camera, seed_for
from pipelines.depth_convention import depth_encoding, encode_zbuffer
from pipelines.params_schema import WarpParams
from pipelines.warping import forward_backward_warp

#: ``params`` keys read by :func:`build_pairs` (the ``warp:`` section of params.yaml plus
#: ``near``/``far`` from ``depth:``). ``views_per_image`` is passed separately.
REQUIRED_KEYS = ("fov_deg", "yaw_std", "pitch_std", "radius_std", "center_std", "supersample",
                 "min_coverage", "edge_threshold", "prewarp_noise", "blur_p", "blur_kernel",
                 "erode_sizes", "near", "far")
#: Optional keys and their defaults (from the ``warp`` schema, :mod:`pipelines.params_schema`).
OPTIONAL_KEYS = {k: WarpParams.model_fields[k].default for k in ("batch_size", "padding")}


def tune_malloc(mmap_threshold: int = 1 << 30, trim_threshold: int = 1 << 31) -> bool:
    """Opt-in, process-wide: raise glibc's mmap and trim thresholds (``mallopt``).

    Warping allocates many large temporaries per call; with glibc's defaults the freed
    memory goes back to the OS and is page-faulted in again on the next call, which costs
    about a third of the CPU time of :func:`build_pairs`. With higher thresholds the
    process keeps and reuses its peak heap instead (RSS stays at the peak). Same effect as
    ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` in the environment. Call once
    per worker process. Returns False where glibc's ``mallopt`` is unavailable.
    """
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, int(mmap_threshold))) and bool(libc.mallopt(-1, int(trim_threshold)))
    except (OSError, AttributeError):
        return False


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` torch intra-op threads, restoring the previous count after."""
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _check(images, depths, keys, views_per_image, params) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be float [B,3,H,W], got {tuple(images.shape)}")
    B, _, H, W = images.shape
    if depths.shape != (B, 1, H, W):
        raise ValueError(f"depths must be [B,1,H,W] = {(B, 1, H, W)}, got {tuple(depths.shape)}")
    if len(keys) != B:
        raise ValueError(f"{len(keys)} keys for {B} images")
    if int(views_per_image) < 1:
        raise ValueError(f"views_per_image must be >= 1, got {views_per_image}")
    missing = [k for k in REQUIRED_KEYS if k not in params]
    if missing:
        raise KeyError(f"params is missing {missing} (warp: section of params.yaml + depth near/far)")


def build_pairs(images: torch.Tensor, depths: torch.Tensor, keys: Sequence[str], *,
                views_per_image: int, seed: int, params: Mapping[str, Any],
                device: str | torch.device | None = None) -> list[dict]:
    """Build ``views_per_image`` IVID condition pairs per sample.

    Args:
        images: float32 [B, 3, H, W] in [0, 1] (any H x W).
        depths: float32 [B, 1, H, W] z-depth from
            :func:`pipelines.depth_convention.disparity_to_depth` (non-finite or <= 0 =
            invalid).
        keys: B sample keys (content hashes), used for seeding and naming.
        views_per_image: novel views per sample, >= 1.
        seed: global seed (params.yaml ``seed``).
        params: the ``warp:`` section of params.yaml plus ``near``/``far`` of ``depth:``.
            Read: ``fov_deg`` (degrees, along the shorter image side), ``yaw_std``,
            ``pitch_std`` (rad), ``radius_std``, ``center_std``, ``supersample``,
            ``min_coverage`` (sub-pixels of ``supersample**2``; null = IVID's 0.75 rule),
            ``edge_threshold`` (IVID's atol = rtol, in its normalised units: depth with the pivot
            one unit ahead, see :mod:`pipelines.warping`), ``prewarp_noise`` (max noise std),
            ``blur_p``, ``blur_kernel``, ``erode_sizes`` (list of odd ints), ``near``,
            ``far`` (z-buffer planes); optional ``batch_size`` (pairs warped at once,
            default 16) and ``padding`` (forward-pass mesh padding in pixels, default 2).
            Other keys (e.g. ``views_per_image``) are ignored.
        device: torch device for the warps (None: CPU). Augmentations run on CPU.

    Returns:
        One dict per (key, view), key-major, with numpy values: ``key`` str
        ``f"{key}_{view:02d}"``, ``sample_key`` str, ``view`` int, ``cond`` uint8
        [H, W, 3], ``cond_depth`` uint16 [H, W] (IVID z-buffer, :func:`encode_zbuffer`;
        65535 where invalid), ``mask`` bool [H, W], ``mask_rgb`` bool [H, W], ``camera``
        JSON-able dict: ``K`` 3x3, ``w2c_src`` and ``w2c_novel`` 4x4 OpenCV world-to-camera,
        ``yaw``, ``pitch`` (rad), ``radius``, ``center`` [3], ``fov_deg``,
        ``depth_encoding`` (:func:`pipelines.depth_convention.depth_encoding`).

    Raises:
        ValueError: bad shapes or key count; KeyError: a required ``params`` key missing.
    """
    _check(images, depths, keys, views_per_image, params)
    p = {**OPTIONAL_KEYS, **dict(params)}
    B, _, H, W = images.shape
    near, far = float(p["near"]), float(p["far"])
    ss = int(p["supersample"])
    mc = None if p["min_coverage"] is None else int(p["min_coverage"])
    K = intrinsics_from_fov(float(p["fov_deg"]), H, W)
    Kt = torch.tensor(K, dtype=torch.float32)
    images, depths = images.detach().cpu().float(), depths.detach().cpu().float()
    jobs = [(b, v) for b in range(B) for v in range(int(views_per_image))]
    out: list[dict] = []
    bs = max(1, int(p["batch_size"]))
    for start in range(0, len(jobs), bs):
        chunk = jobs[start:start + bs]
        cams, noisy_i, noisy_d = [], [], []
        for b, v in chunk:
            key = str(keys[b])
            cams.append(sample_novel_camera(key, seed, v, yaw_std=float(p["yaw_std"]),
                                            pitch_std=float(p["pitch_std"]),
                                            radius_std=float(p["radius_std"]),
                                            center_std=float(p["center_std"])))
            ni, nd = augment.prewarp_noise(images[b], depths[b], seed_for(key, v, seed, "noise"),
                                           sigma_max=float(p["prewarp_noise"]), near=near, far=far)
            noisy_i.append(ni)
            noisy_d.append(nd)
        T = torch.tensor(np.stack([c.src_to_tgt for c in cams]), dtype=torch.float32)
        pair = forward_backward_warp(torch.stack(noisy_i).to(device), torch.stack(noisy_d).to(device),
                                     Kt.to(device), T.to(device), supersample=ss, min_coverage=mc,
                                     edge_threshold=float(p["edge_threshold"]),
                                     reference_depth=float(np.linalg.norm(SOURCE_EYE)),   # pivot distance
                                     near=near, far=far,
                                     padding=None if p["padding"] is None else float(p["padding"]))
        cond_i, cond_d = pair.cond_image.cpu(), pair.cond_depth.cpu()
        masks = pair.mask.cpu()
        for n, (b, v) in enumerate(chunk):
            key = str(keys[b])
            mask = masks[n]
            rgb = cond_i[n]
            blurred, applied, _ = augment.random_blur(images[b], seed_for(key, v, seed, "blur"),
                                                      p=float(p["blur_p"]), kernel_size=int(p["blur_kernel"]))
            if applied:                      # IVID: blurred *original* RGB, then masked
                rgb = blurred * mask
            mask_rgb, _ = augment.texture_erosion(mask, seed_for(key, v, seed, "erode"),
                                                  sizes=p["erode_sizes"])
            rgb = rgb * mask_rgb
            cond = np.round(np.clip(rgb.permute(1, 2, 0).numpy(), 0.0, 1.0) * 255.0).astype(np.uint8)
            cam = cams[n]
            out.append({
                "key": f"{key}_{v:02d}", "sample_key": key, "view": int(v), "cond": cond,
                "cond_depth": encode_zbuffer(cond_d[n, 0], near, far),
                "mask": mask[0].numpy().astype(bool), "mask_rgb": mask_rgb[0].numpy().astype(bool),
                "camera": {
                    "K": K.tolist(), "w2c_src": cam.w2c_src.tolist(), "w2c_novel": cam.w2c_novel.tolist(),
                    "yaw": cam.yaw, "pitch": cam.pitch, "radius": cam.radius,
                    "center": [float(c) for c in cam.center], "fov_deg": float(p["fov_deg"]),
                    "depth_encoding": depth_encoding(near, far),
                },
            })
    return out

