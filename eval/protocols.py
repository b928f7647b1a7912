"""The three evaluation protocols, written against plain callables so tiny models test them.

1. :func:`generation` -- N samples of the first-view model vs the real images of the
   evaluation split: FID and KID (Inception) and FD-DINOv2 (IVID Sec. 4, Table 1;
   Stein et al. 2023).
2. :func:`novel_view` -- held-out IVID pairs: the novel-view model completes the
   condition; PSNR / SSIM / LPIPS against the target, on the mask (seen pixels,
   ``mask_rgb`` = 1) and on the holes (``mask_rgb`` = 0), plus the whole image.
3. :func:`view_sweep` -- autoregressive viewsets on IVID's 3x9 camera grid; FID of the
   views of each yaw angle (all pitches pooled) against the same real statistics.

Every :class:`Metric` carries its protocol: sample count, resolution, feature extractor and
weights origin, dataset version, split and model checkpoint hash (``info``). Images enter
FID-type metrics through :func:`eval.preprocess.to_eval_uint8` (IVID preprocessing); paired
metrics compare uint8-quantised images (what saved PNGs hold) at the pairs' resolution.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torchvision.utils import make_grid

from eval import metrics as M
from eval.extractors import FeatureExtractor
from eval.preprocess import float_to_uint8, to_eval_uint8

#: IVID's 3x9 grid (yaw outer, pitch inner), radians; same values as ``training.sampling``.
IVID_YAWS = (0.0, 0.15, -0.15, 0.3, -0.3, 0.45, -0.45, 0.6, -0.6)
IVID_PITCHES = (0.0, 0.15, -0.15)

SampleFn = Callable[[int, int], torch.Tensor]
"""``(n, seed) -> float [n, C>=3, H, W]`` in [0, 1] (RGB or RGBD; depth is ignored)."""
CompleteFn = Callable[[dict[str, Any], int], torch.Tensor]
"""``(batch, seed) -> float [B, C>=3, H, W]`` in [0, 1]: the completed novel view of a
:func:`training.data.collate` batch (``cond``, ``cond_depth``, ``mask``, ``mask_rgb``, ...)."""
ViewsetFn = Callable[[int, list[tuple[float, float]], int], torch.Tensor]
"""``(n, cameras, seed) -> float [n, V, C>=3, H, W]`` in [0, 1], view v at ``cameras[v]`` (yaw, pitch)."""


@dataclass
class Metric:
    """One reported number and its protocol.

    ``key``: flat metrics.json key (e.g. ``generation_fid``); ``label``: display name;
    ``value``: float (NaN when it could not be computed); ``info``: protocol fields.
    """
    key: str
    label: str
    value: float
    higher_is_better: bool
    info: dict[str, Any]


@dataclass
class ProtocolResult:
    """A protocol's numbers, sample grid (uint8 [3, H, W]), plot rows and notes."""
    name: str
    title: str
    info: dict[str, Any]
    metrics: list[Metric]
    grid: torch.Tensor | None = None
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class RealImages:
    """Real images of the evaluation split and where their statistics are cached.

    ``batches()`` yields float [B, 3, H, W] in [0, 1], each source image once; at most
    ``max_images`` are used (None = all). ``cache_dir`` None disables the cache.
    """
    dataset_version: str
    split: str
    batches: Callable[[], Iterable[torch.Tensor]]
    max_images: int | None = None
    cache_dir: Path | None = None


def batch_seed(seed: int, index: int) -> int:
    """Seed of batch ``index`` (sha256 of both; stable across processes): 63-bit int."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:8], "big") >> 1


def real_features(real: RealImages, extractor: FeatureExtractor, resolution: int,
                  batch_size: int = 64) -> tuple[np.ndarray, dict[str, Any]]:
    """Features float64 [N, D] of the real images at ``resolution`` (cached, see
    :func:`eval.metrics.real_features_cached`) and ``{"num_real", "cache_hit"}``."""
    def compute() -> np.ndarray:
        out, n = [], 0
        for x in real.batches():
            if real.max_images is not None and n >= real.max_images:
                break
            if real.max_images is not None:
                x = x[:real.max_images - n]
            out.append(extractor(to_eval_uint8(x, resolution), batch_size))
            n += len(x)
        return np.concatenate(out) if out else np.zeros((0, extractor.dim))

    if real.cache_dir is None:
        feats, hit = compute(), False
    else:
        feats, _, hit = M.real_features_cached(real.cache_dir, dataset_version=real.dataset_version,
                                               split=real.split, extractor=extractor, resolution=resolution,
                                               max_images=real.max_images, compute=compute)
    if len(feats) < 2:
        raise ValueError(f"split {real.split!r} of dataset {real.dataset_version} has {len(feats)} real "
                         "images; FID needs at least 2")
    return feats, {"num_real": int(len(feats)), "real_cache_hit": bool(hit)}


def _grid(images: torch.Tensor, nrow: int) -> torch.Tensor:
    return make_grid(images.float() / 255.0 if images.dtype == torch.uint8 else images.float(),
                     nrow=nrow, padding=2, pad_value=1.0).mul(255).add(0.5).clamp(0, 255).to(torch.uint8)


def _base_info(protocol: str, real: RealImages | None, model_info: dict[str, Any], **kw: Any) -> dict[str, Any]:
    info = {"protocol": protocol, **({"dataset_version": real.dataset_version, "split": real.split} if real else {}),
            **model_info, **kw}
    return info


def generation(sample_fn: SampleFn, real: RealImages, *, inception: FeatureExtractor,
               dinov2: FeatureExtractor | None, num_samples: int, resolution: int, batch_size: int = 32,
               seed: int = 0, kid_subsets: int = 100, kid_subset_size: int = 1000,
               model_info: dict[str, Any] | None = None, grid_size: int = 16) -> ProtocolResult:
    """Protocol 1: FID, KID (Inception) and FD-DINOv2 of ``num_samples`` generated images.

    Samples are drawn in batches of ``batch_size`` with seeds :func:`batch_seed` (seed, i)
    and reduced to features at once, so memory holds features, not images.

    Raises:
        ValueError: ``num_samples`` < 2 or fewer than 2 real images.
    """
    if num_samples < 2:
        raise ValueError(f"eval.num_samples must be >= 2 for FID, got {num_samples}")
    t0 = time.perf_counter()
    extractors = [("fid", inception)] + ([("fd_dinov2", dinov2)] if dinov2 is not None else [])
    reals = {k: real_features(real, ex, resolution) for k, ex in extractors}
    fakes: dict[str, list[np.ndarray]] = {k: [] for k, _ in extractors}
    shown: list[torch.Tensor] = []
    n = 0
    for i in range((num_samples + batch_size - 1) // batch_size):
        b = min(batch_size, num_samples - n)
        x = to_eval_uint8(sample_fn(b, batch_seed(seed, i)), resolution)
        for k, ex in extractors:
            fakes[k].append(ex(x))
        if sum(len(s) for s in shown) < grid_size:
            shown.append(x[:grid_size])
        n += b
    base = _base_info("generation", real, model_info or {}, num_samples=n, resolution=resolution, seed=seed)
    metrics = []
    for k, ex in extractors:
        r, f = reals[k][0], np.concatenate(fakes[k])
        info = {**base, **reals[k][1], **ex.describe()}
        if k == "fid":
            metrics.append(Metric("generation_fid", "FID", M.fid_from_features(r, f), False, info))
            mean, std, size = M.kid_from_features(r, f, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
            kinfo = {**info, "kid_subsets": kid_subsets, "kid_subset_size": size}
            metrics += [Metric("generation_kid_mean", "KID (mean)", mean, False, kinfo),
                        Metric("generation_kid_std", "KID (std over subsets)", std, False, kinfo)]
        else:
            metrics.append(Metric("generation_fd_dinov2", "FD-DINOv2", M.fid_from_features(r, f), False, info))
    grid = _grid(torch.cat(shown)[:grid_size], nrow=8) if shown else None
    return ProtocolResult("generation", "Generation (first view)", base, metrics, grid,
                          seconds=time.perf_counter() - t0)


def novel_view(complete_fn: CompleteFn, batches: Iterable[dict[str, Any]], *, dataset_version: str, split: str,
               max_pairs: int | None, lpips: M.LPIPS | None = None, lpips_note: str = "", seed: int = 0,
               model_info: dict[str, Any] | None = None, grid_pairs: int = 6) -> ProtocolResult:
    """Protocol 2: novel-view reconstruction on held-out pairs.

    For each pair the model completes (``cond``, ``cond_depth``, ``mask``, ``mask_rgb``);
    prediction and ``target`` (float [B, 3, H, W]) are quantised to uint8 and compared in
    [0, 1] (``data_range = 1``): PSNR (dB), SSIM, LPIPS on the whole image, on ``mask_rgb``
    (seen pixels) and on its complement (holes). Per-metric means are over the pairs where
    the region is non-empty (counts in ``info``); LPIPS is skipped with ``lpips_note``
    when ``lpips`` is None. Rows of per-pair values go to ``rows["novel_view_pairs"]``.

    Raises:
        ValueError: no pairs.
    """
    t0 = time.perf_counter()
    per: dict[str, list[float]] = {}
    keys: list[str] = []
    shown: list[torch.Tensor] = []
    hole_frac: list[float] = []
    res = None
    for i, batch in enumerate(batches):
        if max_pairs is not None and len(keys) >= max_pairs:
            break
        if max_pairs is not None and len(batch["key"]) > max_pairs - len(keys):
            k = max_pairs - len(keys)
            batch = {n: v[:k] for n, v in batch.items()}
        pred = float_to_uint8(complete_fn(batch, batch_seed(seed, i))[:, :3]).float() / 255
        tgt = float_to_uint8(batch["target"]).float() / 255
        seen = (batch["mask_rgb"] > 0.5).float()
        holes = 1 - seen
        res = tuple(tgt.shape[-2:])
        vals = {"psnr": M.psnr(pred, tgt), "psnr_mask": M.masked_psnr(pred, tgt, seen),
                "psnr_holes": M.masked_psnr(pred, tgt, holes), "ssim": M.ssim(pred, tgt),
                "ssim_mask": M.masked_ssim(pred, tgt, seen), "ssim_holes": M.masked_ssim(pred, tgt, holes)}
        if lpips is not None:
            vals.update(lpips=lpips(pred, tgt), lpips_mask=lpips.masked(pred, tgt, seen),
                        lpips_holes=lpips.masked(pred, tgt, holes))
        for name, v in vals.items():
            per.setdefault(name, []).extend(v.tolist())
        keys.extend(batch["key"])
        hole_frac.extend(holes.mean(dim=(1, 2, 3)).tolist())
        if len(shown) < grid_pairs * 3:
            for c, p, t in zip(batch["cond"] * seen, pred, tgt):
                shown += [c, p, t]
    if not keys:
        raise ValueError(f"split {split!r} has no held-out pairs")
    base = _base_info("novel_view", None, model_info or {}, dataset_version=dataset_version, split=split,
                      num_pairs=len(keys), resolution=f"{res[1]}x{res[0]}", data_range=1.0, seed=seed,
                      mask="mask_rgb (seen) / 1 - mask_rgb (holes)", mean_hole_fraction=float(np.mean(hole_frac)))
    labels = {"psnr": "PSNR (dB)", "ssim": "SSIM", "lpips": "LPIPS"}
    metrics = []
    for name, values in per.items():
        mean, count = M.finite_mean(values)
        kind = name.split("_")[0]
        region = {"mask": "on mask", "holes": "on holes"}.get(name.partition("_")[2], "whole image")
        info = {**base, "region": region, "num_pairs_counted": count}
        if kind == "lpips":
            info.update(feature_extractor=f"lpips-{lpips.net_type}", weights_origin=lpips.origin)
        metrics.append(Metric(f"novel_view_{name}", f"{labels[kind]} {region}", mean, kind != "lpips", info))
    rows = [{"key": k, "hole_fraction": h, **{n: per[n][j] for n in per}} for j, (k, h) in
            enumerate(zip(keys, hole_frac))]
    notes = [lpips_note] if lpips is None and lpips_note else []
    grid = _grid(torch.stack(shown[:grid_pairs * 3]), nrow=3) if shown else None
    return ProtocolResult("novel_view", "Novel-view reconstruction (held-out pairs)", base, metrics, grid,
                          {"novel_view_pairs": rows}, notes, time.perf_counter() - t0)


def view_sweep(viewset_fn: ViewsetFn, real: RealImages, *, inception: FeatureExtractor, num_viewsets: int,
               resolution: int, batch_size: int = 4, yaws: Sequence[float] = IVID_YAWS,
               pitches: Sequence[float] = IVID_PITCHES, seed: int = 0,
               model_info: dict[str, Any] | None = None) -> ProtocolResult:
    """Protocol 3: FID per yaw angle of autoregressive viewsets on the yaw x pitch grid.

    ``num_viewsets`` viewsets are sampled on ``[(y, p) for y in yaws for p in pitches]``
    (IVID order, first camera = first view); the views of one yaw (all pitches,
    ``num_viewsets * len(pitches)`` images) give one FID against the real statistics.
    ``rows["view_sweep_fid"]``: ``{"yaw", "abs_yaw", "fid", "num_images"}`` per yaw.

    Raises:
        ValueError: fewer than 2 images per yaw.
    """
    if num_viewsets * len(pitches) < 2:
        raise ValueError("eval.sweep_viewsets x pitches must be >= 2 images per yaw for FID")
    t0 = time.perf_counter()
    cams = [(float(y), float(p)) for y in yaws for p in pitches]
    r, rinfo = real_features(real, inception, resolution)
    per_yaw: dict[float, list[np.ndarray]] = {float(y): [] for y in yaws}
    first: torch.Tensor | None = None
    n = 0
    for i in range((num_viewsets + batch_size - 1) // batch_size):
        b = min(batch_size, num_viewsets - n)
        views = viewset_fn(b, cams, batch_seed(seed, i))
        if views.shape[1] != len(cams):
            raise ValueError(f"viewset_fn returned {views.shape[1]} views for {len(cams)} cameras")
        for v, (yaw, _) in enumerate(cams):
            x = to_eval_uint8(views[:, v], resolution)
            per_yaw[yaw].append(inception(x))
            if first is None and v == len(cams) - 1:
                first = to_eval_uint8(views[0], resolution)
        n += b
    base = _base_info("view_sweep", real, model_info or {}, num_viewsets=n, resolution=resolution, seed=seed,
                      grid=f"{len(pitches)}x{len(yaws)}", pitches=list(map(float, pitches)), **rinfo,
                      **inception.describe())
    metrics, rows = [], []
    for yaw in sorted(per_yaw):
        f = np.concatenate(per_yaw[yaw])
        fid = M.fid_from_features(r, f)
        rows.append({"yaw": yaw, "abs_yaw": abs(yaw), "fid": fid, "num_images": int(len(f))})
        metrics.append(Metric(f"view_sweep_fid_yaw_{yaw:+.2f}", f"FID yaw {yaw:+.2f} rad", fid, False,
                              {**base, "yaw": yaw, "num_samples": int(len(f))}))
    metrics.append(Metric("view_sweep_fid_mean", "FID mean over yaws", float(np.mean([x["fid"] for x in rows])),
                          False, {**base, "num_samples": n * len(cams)}))
    grid = None
    if first is not None:  # rows = pitches, columns = yaws sorted left to right
        order = [cams.index((y, p)) for p in sorted(map(float, pitches), reverse=True) for y in sorted(per_yaw)]
        grid = _grid(first[order], nrow=len(per_yaw))
    return ProtocolResult("view_sweep", "View sweep (IVID 3x9 grid)", base, metrics, grid,
                          {"view_sweep_fid": rows}, [], time.perf_counter() - t0)
