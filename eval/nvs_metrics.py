"""Novel-view-synthesis metrics as ViewDiff, SyncDreamer, Viewset Diffusion and the CO3D
challenge compute them (``../shared/reference/multiview-formats.md`` sections 1.5, 2.5, 3.4,
4.4 and 6.4).

Images are float [N, 3, H, W] in [0, 1]; masks float [N, 1, H, W] in [0, 1] (soft allowed).

* PSNR: ``-10 log10(mean((x - y)^2))`` per image over C, H, W (:func:`eval.metrics.psnr`).
  Identical images give ``+inf``; :func:`summarize` records, counts and excludes them from
  every mean (ViewDiff ``scripts/misc/calculate_mean_image_stats.py`` practice).
* SSIM, two variants (:data:`SSIM_VARIANTS`), each number must carry its variant:
  ``skimage`` -- ``skimage.metrics.structural_similarity(data_range=1, channel_axis=0)``:
  7x7 uniform window, sample covariance, mean over channels and the valid interior
  (ViewDiff ``metrics/image_metrics.py``, Viewset Diffusion ``evaluation/metricator.py``);
  ``torchmetrics_gaussian`` -- ``torchmetrics.functional.structural_similarity_index_measure``
  with its defaults (Gaussian 11x11, sigma 1.5, ``data_range`` inferred per image pair as
  ``max(range(pred), range(gt))``, mean over the *whole* image with reflect padding -- not
  skimage's valid-interior mean; SyncDreamer ``eval_nvs.py``).
* LPIPS: :func:`lpips_hook` (torchmetrics' LPIPS network, VGG by default as the three papers;
  backbone weights from a local path only). Without weights the metric is the explicit
  :data:`SKIPPED` marker with a reason, never a zero.
* Backgrounds (:func:`apply_background`): ``with_bkgd`` (as given) and ``only_fg`` (prediction
  and ground truth both composited over white with the GT soft mask, ViewDiff ``test_step``;
  implemented with the correct, non-inverted mask).
* Sample statistics: mean over samples, best-of-n (first n samples; max for PSNR/SSIM, min
  for LPIPS), and the metrics of the per-pixel mean sample (:func:`mean_sample`, Viewset
  Diffusion / ViewDiff "from-avg-image").
* CO3D challenge (:func:`co3d_challenge_metrics`): ``psnr_masked``, ``psnr_fg``,
  ``psnr_full_image``, ``iou``, ``depth_abs_fg`` with the definitions of
  facebookresearch/co3d ``co3d/challenge/metric_utils.py::eval_one_rgbda`` (GT mask > 0.5,
  MSE clipped at 1e-10 so identical images give 100 dB, 5 px depth crop, optimal L1 depth
  scale). Written from those definitions, not copied.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from eval import metrics as M

SSIM_VARIANTS = ("skimage", "torchmetrics_gaussian")
BACKGROUNDS = ("with_bkgd", "only_fg")
SKIPPED = "skipped"
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False}

#: Named protocol profiles (section 6.4). Each number reported under a profile carries these
#: fields. ``pairs_fixed``: the (condition, target) list is an eval-asset output, never redrawn.
PROFILES: dict[str, dict[str, Any]] = {
    "viewdiff_single_image": dict(resolution=256, n_known=1, n_targets=4, n_samples=20, ssim_variant="skimage",
                                  backgrounds=("with_bkgd", "only_fg"), best_of=(1, 5, 10, 20), lpips_net="vgg",
                                  include_known_view=False, source="ViewDiff test.py / calculate_mean_image_stats.py"),
    "viewset_single_view": dict(resolution=128, n_known=1, n_targets=1, n_samples=20, ssim_variant="skimage",
                                backgrounds=("with_bkgd",), best_of=(1, 5, 10, 20), lpips_net="vgg",
                                include_known_view=False, pairs_fixed=True,
                                source="viewset-diffusion evaluation_quantitative.py / metricator.py"),
    "syncdreamer_ring": dict(resolution=256, n_known=1, n_targets=16, n_samples=1,
                             ssim_variant="torchmetrics_gaussian", backgrounds=("only_fg",), best_of=(1,),
                             lpips_net="vgg", include_known_view=True, background_colour="white",
                             source="SyncDreamer eval_nvs.py (all 16 ring views averaged)"),
    "co3d_challenge": dict(n_samples=1, mask_threshold=0.5, depth_crop=5, background_colour="black",
                           source="co3d/challenge/metric_utils.py::eval_one_rgbda"),
}


def _check(pred: torch.Tensor, gt: torch.Tensor) -> None:
    if pred.shape != gt.shape or pred.ndim != 4:
        raise ValueError(f"pred/gt must be equal [N, C, H, W], got {tuple(pred.shape)} / {tuple(gt.shape)}")


# ----------------------------------------------------------------------- per-image metrics
def psnr(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB, float64 [N]; images [N, C, H, W] in [0, 1]; +inf when identical.
    Raises ValueError on a shape mismatch (:func:`eval.metrics.psnr`)."""
    return M.psnr(pred.double(), gt.double(), data_range=1.0).double()


def ssim(pred: torch.Tensor, gt: torch.Tensor, variant: str = "skimage") -> torch.Tensor:
    """Per-image SSIM, float64 [N], images [N, 3, H, W] in [0, 1] (H, W >= 7 / 11).

    ``variant``: ``skimage`` (7x7 uniform window, ``data_range = 1``, ViewDiff / Viewset
    Diffusion) or ``torchmetrics_gaussian`` (Gaussian 11 / 1.5, data range inferred per image
    pair, SyncDreamer). Raises ValueError for an unknown variant or a shape mismatch.
    """
    _check(pred, gt)
    if variant == "skimage":
        from skimage.metrics import structural_similarity
        p, g = pred.detach().double().cpu().numpy(), gt.detach().double().cpu().numpy()
        return torch.tensor([structural_similarity(a, b, data_range=1.0, channel_axis=0) for a, b in zip(p, g)],
                            dtype=torch.float64)
    if variant == "torchmetrics_gaussian":
        from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim
        p, g = pred.detach().double(), gt.detach().double()
        return torch.stack([tm_ssim(a[None], b[None]) for a, b in zip(p, g)]).double().cpu()
    raise ValueError(f"ssim variant must be one of {SSIM_VARIANTS}, got {variant!r}")


def apply_background(pred: torch.Tensor, gt: torch.Tensor, gt_mask: torch.Tensor | None,
                     background: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The (pred, gt) pair a background variant compares.

    ``with_bkgd``: unchanged. ``only_fg``: both composited over white with the GT soft mask
    ``m`` [N, 1, H, W]: ``x * m + (1 - m)`` (ViewDiff ``only-fg``). Raises ValueError for an
    unknown variant or ``only_fg`` without a mask.
    """
    if background == "with_bkgd":
        return pred, gt
    if background == "only_fg":
        if gt_mask is None:
            raise ValueError("background 'only_fg' needs the GT soft mask")
        m = gt_mask.to(pred)
        return pred * m + (1 - m), gt * m + (1 - m)
    raise ValueError(f"background must be one of {BACKGROUNDS}, got {background!r}")


# ----------------------------------------------------------------------- LPIPS hook
@dataclass
class LpipsHook:
    """LPIPS callable or an explicit skip. ``fn(pred, gt) -> float [N]`` (lower is better)
    when ``available``; otherwise ``fn`` is None and ``note`` says why (report it)."""
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None
    note: str
    net: str

    @property
    def available(self) -> bool:
        return self.fn is not None


def lpips_hook(weights_path: str | None, net: str = "vgg", device: str | torch.device | None = None) -> LpipsHook:
    """LPIPS (:func:`eval.metrics.load_lpips`, torchmetrics network, ``normalize=True`` on
    [0, 1] inputs) with torchvision backbone weights from ``weights_path`` only (never the hub
    cache, never a download). ``weights_path`` None or missing -> ``fn=None`` with a note."""
    if not weights_path:
        return LpipsHook(None, f"LPIPS-{net} skipped: no local weights path given (eval.lpips_weights_path)", net)
    model, note = M.load_lpips(net, weights_path, device)
    return LpipsHook(model, note, net)


# ----------------------------------------------------------------------- sample statistics
def mean_sample(samples: torch.Tensor) -> torch.Tensor:
    """Per-pixel mean over samples: [S, N, C, H, W] -> [N, C, H, W] (float, same dtype)."""
    return samples.mean(0)


def summarize(values: torch.Tensor, higher_is_better: bool, best_of: Sequence[int] = (1,)) -> dict[str, Any]:
    """Aggregate per-sample metric values ``[S, N]`` (S samples of N items: views or examples).

    Returns ``{"mean": finite mean over all S*N values, "count": finite values used,
    "n_inf": +-inf values (recorded, excluded), "n_nan": NaN values (e.g. empty masks),
    "best_of": {n: finite mean over items of the best of the first n samples, ...},
    "best_of_n_inf": {n: items whose best is infinite}}``; n > S is omitted. Means of no
    finite value are NaN.
    """
    v = values.double().reshape(values.shape[0], -1)
    fin = torch.isfinite(v)
    out: dict[str, Any] = {"mean": float(v[fin].mean()) if fin.any() else float("nan"), "count": int(fin.sum()),
                           "n_inf": int(torch.isinf(v).sum()), "n_nan": int(torch.isnan(v).sum()),
                           "best_of": {}, "best_of_n_inf": {}}
    for n in best_of:
        if n > v.shape[0] or n < 1:
            continue
        w = v[:n]
        w = torch.where(torch.isnan(w), torch.full_like(w, -math.inf if higher_is_better else math.inf), w)
        best = w.max(0).values if higher_is_better else w.min(0).values
        ok = torch.isfinite(best)
        out["best_of"][int(n)] = float(best[ok].mean()) if ok.any() else float("nan")
        out["best_of_n_inf"][int(n)] = int(torch.isinf(best).sum())
    return out


def image_metrics(pred: torch.Tensor, gt: torch.Tensor, *, ssim_variant: str,
                  lpips: LpipsHook | None = None) -> dict[str, torch.Tensor | str]:
    """PSNR, SSIM (``ssim_variant``) and LPIPS of image pairs [N, 3, H, W] in [0, 1]:
    ``{"psnr": float64 [N], "ssim": float64 [N], "lpips": float64 [N] | SKIPPED}``."""
    out: dict[str, torch.Tensor | str] = {"psnr": psnr(pred, gt), "ssim": ssim(pred, gt, ssim_variant)}
    out["lpips"] = lpips.fn(pred, gt).double() if lpips is not None and lpips.available else SKIPPED
    return out


def evaluate_samples(samples: torch.Tensor, gt: torch.Tensor, gt_mask: torch.Tensor | None = None, *,
                     ssim_variant: str = "skimage", backgrounds: Sequence[str] = ("with_bkgd",),
                     best_of: Sequence[int] = (1,), lpips: LpipsHook | None = None) -> dict[str, Any]:
    """All sample statistics of one protocol run.

    Args:
        samples: float [S, N, 3, H, W] in [0, 1]: S samples of N target views.
        gt: float [N, 3, H, W] in [0, 1]; gt_mask: soft mask [N, 1, H, W] (``only_fg``).
        ssim_variant / backgrounds / best_of / lpips: see the module docstring.
    Returns:
        ``{background: {metric: {"samples": summarize(...) of [S, N] values,
        "mean_sample": summarize(...) of the mean sample's [1, N] values, "per_view_mean":
        list[N] finite means over samples} | {"status": "skipped", "reason": str}},
        "info": {...protocol fields...}}``.
    Raises:
        ValueError: shape mismatch, unknown variant/background, ``only_fg`` without a mask.
    """
    S, N = samples.shape[:2]
    if samples.ndim != 5 or samples.shape[1:] != gt.shape:
        raise ValueError(f"samples must be [S, N, C, H, W] matching gt {tuple(gt.shape)}, got {tuple(samples.shape)}")
    out: dict[str, Any] = {"info": {"ssim_variant": ssim_variant, "resolution": list(gt.shape[-2:]), "n_samples": S,
                                    "n_views": N, "backgrounds": list(backgrounds), "best_of": list(best_of),
                                    "lpips": (f"lpips-{lpips.net}: {lpips.note}" if lpips is not None
                                              else "lpips: skipped (no hook)")}}
    for bg in backgrounds:
        per = [image_metrics(*apply_background(s, gt, gt_mask, bg), ssim_variant=ssim_variant, lpips=lpips)
               for s in samples]
        avg = image_metrics(*apply_background(mean_sample(samples), gt, gt_mask, bg), ssim_variant=ssim_variant,
                            lpips=lpips)
        res: dict[str, Any] = {}
        for name, hib in HIGHER_IS_BETTER.items():
            if isinstance(per[0][name], str):
                res[name] = {"status": SKIPPED, "reason": out["info"]["lpips"]}
                continue
            vals = torch.stack([p[name] for p in per])                           # [S, N]
            fin = torch.where(torch.isfinite(vals), vals, torch.nan)
            res[name] = {"samples": summarize(vals, hib, best_of), "mean_sample": summarize(avg[name][None], hib),
                         "per_view_mean": [float(x) for x in fin.nanmean(0)]}
        out[bg] = res
    return out


# ----------------------------------------------------------------------- CO3D challenge
def co3d_psnr(x: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None) -> float:
    """CO3D challenge PSNR: ``-10 log10(max(MSE, 1e-10))`` (so at most 100 dB); with ``mask``
    (broadcast to ``x``) the MSE is ``sum(m (x-y)^2) / max(sum(m), 1e-5)`` over broadcast pixels."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    se = (x - y) ** 2
    if mask is None:
        mse = se.mean()
    else:
        m = np.broadcast_to(np.asarray(mask, np.float64), x.shape)
        mse = (se * m).sum() / max(m.sum(), 1e-5)
    return float(-10.0 * np.log10(max(mse, 1e-10)))


def co3d_iou(pred_mask: np.ndarray, gt_mask: np.ndarray, threshold: float = 0.5) -> float:
    """CO3D challenge IoU: both masks binarised with ``>= threshold``;
    ``|P & G| / (|P | G| + 1e-4)``."""
    p = (np.asarray(pred_mask) >= threshold).astype(np.float64)
    g = (np.asarray(gt_mask) >= threshold).astype(np.float64)
    return float((p * g).sum() / ((p + g - p * g).sum() + 1e-4))


def optimal_l1_scale(pred: np.ndarray, gt: np.ndarray, clamp_thr: float = 1e-4) -> float:
    """Scale ``s`` minimising ``sum |gt - s pred|`` (CO3D ``_optimal_l1_scale``): the weighted
    median of ``gt / max(pred, 1e-10)`` with weights ``|pred|`` -- the first sorted ratio whose
    cumulative weight exceeds half the total; 1.0 when none does; clamped to ``+-1/clamp_thr``."""
    x, y = np.asarray(pred, np.float64).ravel(), np.asarray(gt, np.float64).ravel()
    ratio = y / np.clip(x, 1e-10, None)
    order = np.argsort(ratio, kind="stable")
    w = np.abs(x[order])
    above = np.nonzero(np.cumsum(w) > 0.5 * w.sum())[0]
    if len(above) == 0:
        return 1.0
    return float(np.clip(ratio[order][above[0]], -1 / clamp_thr, 1 / clamp_thr))


def co3d_depth_abs(pred: np.ndarray, gt: np.ndarray, fg_mask: np.ndarray, crop: int = 5) -> float:
    """CO3D ``depth_abs_fg``: crop ``crop`` px on each border, keep GT depth inside the mask
    and > 0, scale the prediction by :func:`optimal_l1_scale` on those pixels, and return the
    mean absolute depth error over them (divided by ``max(count, 1e-4)``). Arrays [1, H, W]."""
    pred, gt, m = (np.asarray(a, np.float64) for a in (pred, gt, fg_mask))
    if crop > 0:
        pred, gt, m = (a[..., crop:-crop, crop:-crop] for a in (pred, gt, m))
    gt = gt * m
    d = (gt > 0).astype(np.float64)
    s = optimal_l1_scale(pred * d, gt * d)
    return float((d * np.abs(gt - s * pred)).sum() / max(d.sum(), 1e-4))


def co3d_challenge_metrics(image_rgb: np.ndarray, depth: np.ndarray, fg_mask: np.ndarray, gt_image_rgb: np.ndarray,
                           gt_depth: np.ndarray, gt_fg_mask: np.ndarray, gt_depth_mask: np.ndarray | None = None,
                           mask_threshold: float = 0.5, depth_crop: int = 5) -> dict[str, float]:
    """One frame's CO3D challenge metrics (``eval_one_rgbda`` definitions).

    Args:
        image_rgb: prediction [3, H, W] in [0, 1] on a **black** background.
        depth: predicted depth [1, H, W]; fg_mask: predicted mask [1, H, W] in [0, 1].
        gt_image_rgb / gt_depth / gt_fg_mask: ground truth; ``gt_fg_mask`` is binarised with
            ``> mask_threshold``; non-finite GT depth becomes 0; ``gt_depth_mask`` (optional,
            {0, 1}) multiplies the GT depth.
    Returns:
        ``{"psnr_masked": PSNR(pred, gt * mask), "psnr_fg": PSNR over mask pixels of
        (pred, gt * mask), "psnr_full_image": PSNR(pred, gt), "iou": IoU(fg_mask, mask),
        "depth_abs_fg": co3d_depth_abs(...)}`` (dB, dB, dB, [0, 1], depth units).
    Raises:
        ValueError: a non-finite prediction (as CO3D).
    """
    for name, a in (("image_rgb", image_rgb), ("fg_mask", fg_mask), ("depth", depth)):
        if not np.isfinite(a).all():
            raise ValueError(f"non-finite element in {name}")
    gm = (np.asarray(gt_fg_mask, np.float64) > mask_threshold).astype(np.float64)
    gd = np.nan_to_num(np.asarray(gt_depth, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if gt_depth_mask is not None:
        gd = gd * gt_depth_mask
    gt_masked = np.asarray(gt_image_rgb, np.float64) * gm
    return {"psnr_masked": co3d_psnr(image_rgb, gt_masked), "psnr_fg": co3d_psnr(image_rgb, gt_masked, gm),
            "psnr_full_image": co3d_psnr(image_rgb, gt_image_rgb), "iou": co3d_iou(fg_mask, gm),
            "depth_abs_fg": co3d_depth_abs(depth, gd, gm, depth_crop)}
