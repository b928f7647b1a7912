"""Image metrics: FID, KID, FD-DINOv2, PSNR, SSIM, LPIPS (+ masked variants), real-stat cache.
The feature networks (Inception, DINOv2) are loaded by :mod:`eval.extractors`.

Sources:
* FID (Heusel et al. 2017, "GANs trained by a two time-scale update rule..."):
  ``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))`` on the 2048-d pool3 features of the
  TF-Inception "inception-v3-compat" network of torch-fidelity, through torchmetrics
  ``FrechetInceptionDistance``. The resize to 299 px is torch-fidelity's TF1-compatible
  bilinear one (``antialias=False``), i.e. the standard FID that IVID's ``eval.py`` gets
  from ``torch_fidelity.calculate_metrics``; torchmetrics' default (antialias) differs.
* KID (Binkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel
  ``(x.y / d + 1)^3`` over random subsets, torchmetrics ``KernelInceptionDistance``.
* FD-DINOv2 (Stein et al. 2023, "Exposing flaws of generative model evaluation metrics"):
  the Frechet distance on DINOv2 CLS tokens (after the final LayerNorm, not L2-normalised),
  images resized bicubically to the model input (224 px) and ImageNet-normalised. The
  backbone is the pipeline's timm DINOv2 (:func:`pipelines.features.load_dinov2`); Stein
  et al. used ViT-L/14, so only ``vit_large_patch14_dinov2.lvd142m`` gives comparable numbers.
* PSNR / SSIM: torchmetrics, ``data_range=1.0`` (images in [0, 1]); SSIM with the Gaussian
  11x11, sigma 1.5 window of Wang et al. 2004, averaged over the valid interior (5 px border
  dropped), which is what ``skimage.metrics.structural_similarity(gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False)`` reports.
* LPIPS (Zhang et al. 2018): torchmetrics' LPIPS network (bundled linear layers) with the
  torchvision backbone weights from a local file only; masked LPIPS averages the spatial
  LPIPS map over the mask.

Weights follow :func:`pipelines.models.resolve_weights`: a local file, then the library's
own cache/download; otherwise :class:`~pipelines.models.WeightsUnavailableError` names the
parameter, except in the ``demo``/``smoke`` profiles (random weights of the same class,
origin :data:`~pipelines.models.RANDOM_WEIGHTS`).
"""
from __future__ import annotations

import io
import json
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable
from unittest import mock

import numpy as np
import torch
from torch import nn

from eval.extractors import FeatureExtractor
from pipelines.models import pick_device
from pipelines.storage import atomic_path

SSIM_KERNEL, SSIM_SIGMA = 11, 1.5
PREPROCESS_VERSION = "ivid-crop-lanczos-uint8/1"
"""Bumping this invalidates every cached real-image statistic."""


# ----------------------------------------------------------------- distribution metrics
def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] (float64) of features [N, D], N >= 2."""
    f = np.asarray(features, np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (Heusel et al. 2017).

    ``||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^(1/2))``, float64. The trace term
    uses the symmetric form ``Tr((S1^(1/2) S2 S1^(1/2))^(1/2))`` (equal for PSD matrices),
    with eigenvalues clipped at 0, so it is real and stable for singular covariances.

    Args:
        mu1, mu2: means [D]. sigma1, sigma2: covariances [D, D], symmetric PSD.

    Returns:
        The squared distance (>= 0 up to rounding), in squared feature units.

    Raises:
        ValueError: shape mismatch.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape}/{mu2.shape}, sigma {s1.shape}/{s2.shape}")
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root1 @ ((s2 + s2.T) / 2) @ root1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


class _Precomputed(nn.Module):
    """Identity "feature extractor" so torchmetrics' FID/KID run on precomputed features."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """FID (or FD-DINOv2) of features [N, D] and [M, D] (N, M >= 2) with torchmetrics'
    ``FrechetInceptionDistance`` (float64 states). Raises RuntimeError for < 2 samples."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    metric = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]))
    metric.update(torch.as_tensor(real, dtype=torch.float64), real=True)
    metric.update(torch.as_tensor(fake, dtype=torch.float64), real=False)
    return float(metric.compute())


def kid_from_features(real: np.ndarray, fake: np.ndarray, *, subsets: int = 100, subset_size: int = 1000,
                      seed: int = 0) -> tuple[float, float, int]:
    """KID mean and std over ``subsets`` random subsets (torchmetrics
    ``KernelInceptionDistance``, cubic polynomial kernel). ``subset_size`` is clamped to
    ``min(N, M)``; the subsets are drawn from a torch RNG seeded with ``seed``.

    Returns:
        ``(kid_mean, kid_std, subset_size_used)``; KID is in squared feature units
        (papers often print it x 1000).
    """
    from torchmetrics.image.kid import KernelInceptionDistance
    size = int(min(subset_size, len(real), len(fake)))
    with warnings.catch_warnings():  # "KID saves all features": the features are already in memory
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(feature=_Precomputed(real.shape[1]), subsets=subsets, subset_size=size)
    metric.update(torch.as_tensor(real, dtype=torch.float64), real=True)
    metric.update(torch.as_tensor(fake, dtype=torch.float64), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std), size


def real_features_cached(cache_dir: str | Path, *, dataset_version: str, split: str,
                         extractor: FeatureExtractor, resolution: int, max_images: int | None,
                         compute: Callable[[], np.ndarray]) -> tuple[np.ndarray, dict[str, Any], bool]:
    """Real-image features, cached on disk per (dataset version, split, extractor and its
    weights, resolution, image cap, preprocessing version).

    The file is ``<cache_dir>/<dataset_version>/<split>/<extractor>-<res>px-<hash>.npz``
    (``features`` float32 [N, D] + ``info`` JSON), written atomically
    (:func:`pipelines.storage.atomic_path`); a file whose stored key differs is recomputed.

    Returns:
        ``(features float64 [N, D], info dict, cache_hit)``.
    """
    from pipelines.config import stable_hash
    key = {"dataset_version": dataset_version, "split": split, "resolution": int(resolution),
           "max_images": max_images, "preprocess": PREPROCESS_VERSION, **extractor.describe()}
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", extractor.name)
    path = Path(cache_dir) / dataset_version / split / f"{slug}-{resolution}px-{stable_hash(key)}.npz"
    if path.is_file():
        with np.load(path) as z:
            info = json.loads(str(z["info"]))
            if info.get("key") == key:
                return z["features"].astype(np.float64), info, True
    feats = np.asarray(compute(), np.float32).astype(np.float64)  # what a cache hit returns
    info = {"key": key, "count": int(len(feats)), "dim": int(feats.shape[1]) if feats.ndim == 2 else 0}
    buf = io.BytesIO()
    np.savez(buf, features=feats.astype(np.float32), info=np.array(json.dumps(info, sort_keys=True)))
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())
    return feats, info, False


# ----------------------------------------------------------------- paired image metrics
def _check_pair(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> None:
    if pred.shape != target.shape or pred.ndim != 4:
        raise ValueError(f"pred/target must be equal [B, C, H, W], got {tuple(pred.shape)}, {tuple(target.shape)}")
    if mask is not None and (mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[-2:] != pred.shape[-2:]):
        raise ValueError(f"mask must be [B, 1, H, W], got {tuple(mask.shape)}")


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB, float [B]: ``10 log10(data_range^2 / MSE)`` over C, H, W
    (torchmetrics ``peak_signal_noise_ratio``, ``reduction="none"``). Images float
    [B, C, H, W] in [0, data_range]. Identical images give +inf."""
    from torchmetrics.functional.image import peak_signal_noise_ratio
    _check_pair(pred, target)
    return peak_signal_noise_ratio(pred.double(), target.double(), data_range=data_range,
                                   reduction="none", dim=(1, 2, 3)).float()


def masked_psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR (dB, float [B]) over the pixels where ``mask`` [B, 1, H, W] > 0.5:
    MSE averaged over those pixels and all C channels. NaN for an image whose mask is empty."""
    _check_pair(pred, target, mask)
    m = (mask > 0.5).double()
    se = ((pred.double() - target.double()) ** 2 * m).sum(dim=(1, 2, 3))
    n = m.sum(dim=(1, 2, 3)) * pred.shape[1]
    mse = torch.where(n > 0, se / n.clamp(min=1), torch.full_like(se, float("nan")))
    return (10 * torch.log10(data_range ** 2 / mse)).float()


def ssim_map(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """SSIM map float [B, C, H, W] (torchmetrics, Gaussian 11x11, sigma 1.5, K = 0.01/0.03,
    reflect padding). Images at least 11 px per side. Raises ValueError like torchmetrics."""
    from torchmetrics.functional.image import structural_similarity_index_measure
    _check_pair(pred, target)
    _, full = structural_similarity_index_measure(pred.double(), target.double(), data_range=data_range,
                                                  kernel_size=SSIM_KERNEL, sigma=SSIM_SIGMA,
                                                  reduction="none", return_full_image=True)
    return full.float()


def _interior(shape: tuple[int, ...], device) -> torch.Tensor:
    pad = (SSIM_KERNEL - 1) // 2
    m = torch.zeros(shape[-2:], device=device)
    m[pad:-pad, pad:-pad] = 1
    return m


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image SSIM float [B] in [-1, 1]: the :func:`ssim_map` mean over channels and the
    valid interior (a 5 px border dropped), as ``skimage.metrics.structural_similarity``."""
    return masked_ssim(pred, target, torch.ones_like(pred[:, :1]), data_range)


def masked_ssim(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                data_range: float = 1.0) -> torch.Tensor:
    """Per-image SSIM (float [B]) averaged over interior pixels where ``mask`` > 0.5
    (the window still sees the whole image). NaN where no such pixel exists."""
    _check_pair(pred, target, mask)
    smap = ssim_map(pred, target, data_range).mean(1, keepdim=True)
    m = (mask > 0.5).float() * _interior(smap.shape, smap.device)
    n = m.sum(dim=(1, 2, 3))
    return torch.where(n > 0, (smap * m).sum(dim=(1, 2, 3)) / n.clamp(min=1), torch.full_like(n, float("nan")))


# ----------------------------------------------------------------- LPIPS
_TV_NAMES = {"alex": "alexnet", "vgg": "vgg16", "squeeze": "squeezenet1_1"}


def _tv_weights_file(net_type: str) -> Path:
    import torchvision.models as tvm
    enum = {"alex": tvm.AlexNet_Weights, "vgg": tvm.VGG16_Weights, "squeeze": tvm.SqueezeNet1_1_Weights}[net_type]
    return Path(torch.hub.get_dir()) / "checkpoints" / enum.DEFAULT.url.rsplit("/", 1)[1]


class LPIPS:
    """LPIPS (torchmetrics' network, ``normalize=True`` inputs in [0, 1]); lower is better.

    Build with :func:`load_lpips`. ``__call__`` gives per-image LPIPS [B] (torchmetrics'
    value); :meth:`masked` averages the spatial LPIPS map over ``mask`` > 0.5.
    """

    def __init__(self, net: nn.Module, net_type: str, origin: str):
        self.net, self.net_type, self.origin = net, net_type, origin
        self.device = next(net.parameters()).device

    @torch.inference_mode()
    def _run(self, pred: torch.Tensor, target: torch.Tensor, spatial: bool) -> torch.Tensor:
        _check_pair(pred, target)
        self.net.spatial = spatial
        out = self.net(pred.float().clamp(0, 1).to(self.device), target.float().clamp(0, 1).to(self.device),
                       normalize=True)
        return out.float().cpu()

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self._run(pred, target, spatial=False).reshape(len(pred))

    def masked(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        _check_pair(pred, target, mask)
        lmap = self._run(pred, target, spatial=True)
        m = (mask.cpu() > 0.5).float()
        n = m.sum(dim=(1, 2, 3))
        return torch.where(n > 0, (lmap * m).sum(dim=(1, 2, 3)) / n.clamp(min=1), torch.full_like(n, float("nan")))


def load_lpips(net_type: str = "alex", weights_path: str | None = None,
               device: str | torch.device | None = None) -> tuple[LPIPS | None, str]:
    """LPIPS with the torchvision backbone weights (full-model state dict, e.g.
    ``alexnet-owt-7be5be79.pth``) from ``weights_path``, else from the torch hub cache.
    Never downloads.

    Returns:
        ``(LPIPS, origin)``, or ``(None, note)`` when no weights file is available (the
        report shows the note and skips LPIPS).

    Raises:
        ValueError: unknown ``net_type`` (alex | vgg | squeeze).
    """
    import torchvision.models as tvm
    from torchmetrics.functional.image import lpips as tm_lpips
    if net_type not in _TV_NAMES:
        raise ValueError(f"eval.lpips_net must be one of {sorted(_TV_NAMES)}, got {net_type!r}")
    path = Path(weights_path) if weights_path else _tv_weights_file(net_type)
    if not path.is_file():
        return None, (f"LPIPS skipped: no {_TV_NAMES[net_type]} backbone weights (set "
                      f"`eval.lpips_weights_path` to a torchvision state dict; looked at {path})")
    backbone = getattr(tvm, _TV_NAMES[net_type])(weights=None)
    backbone.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    # torchmetrics slices torchvision's `.features`; hand it the locally loaded ones instead of
    # its download. The linear layers come from torchmetrics' bundled lpips_models/<net>.pth.
    with mock.patch.object(tm_lpips, "_get_tv_model_features", lambda name, pretrained=False: backbone.features):
        net = tm_lpips._NoTrainLpips(net=net_type)
    return LPIPS(net.to(pick_device(device)).eval(), net_type, f"local:{path}"), f"local:{path}"


def finite_mean(values: Iterable[float]) -> tuple[float, int]:
    """Mean of the finite values and their count (NaN, 0 when none). +inf PSNR (identical
    images) and NaN (empty mask) are excluded; callers report the count."""
    v = np.asarray(list(values), np.float64)
    v = v[np.isfinite(v)]
    return (float(v.mean()) if len(v) else float("nan")), int(len(v))
