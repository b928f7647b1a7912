"""Frozen feature extractors of the image metrics (:mod:`eval.metrics`): the TF-Inception
pool3 network of torch-fidelity (FID/KID, through torchmetrics' ``NoTrainInceptionV3``) and
the pipeline's timm DINOv2 (FD-DINOv2, CLS token). Weights follow
:func:`pipelines.models.resolve_weights` (local file, then the library's cache/download;
random weights of the same class only in the ``demo``/``smoke`` profiles)."""
from __future__ import annotations

import hashlib
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipelines.models import RANDOM_WEIGHTS, WeightsUnavailableError, pick_device, resolve_weights

INCEPTION_NAME = "inception-v3-compat-pool3-2048"
FID_WEIGHTS_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                   "weights-inception-2015-12-05-6726825d.pth")


# ----------------------------------------------------------------- feature extractors
@dataclass
class FeatureExtractor:
    """A frozen network mapping uint8 images to feature vectors.

    Attributes:
        name: extractor id, e.g. :data:`INCEPTION_NAME` or ``dinov2-cls:<timm name>``.
        origin: weights origin (``local:<path>``, ``hub:<id>`` or ``RANDOM_WEIGHTS``).
        weights_id: sha256 (16 hex) over the parameters, part of every cache key.
        dim: feature dimension D.
        forward: uint8 [B, 3, H, W] on ``device`` -> float [B, D].
        device: where ``forward`` runs.
    """
    name: str
    origin: str
    weights_id: str
    dim: int
    forward: Callable[[torch.Tensor], torch.Tensor]
    device: torch.device

    @property
    def is_random(self) -> bool:
        return self.origin == RANDOM_WEIGHTS

    def describe(self) -> dict[str, str]:
        return {"feature_extractor": self.name, "weights_origin": self.origin, "weights_id": self.weights_id}

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
        """Features of uint8 [B, 3, H, W] images (any H x W) as float64 [B, D] numpy."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 [B, 3, H, W], got {images.dtype} {tuple(images.shape)}")
        out = [self.forward(images[i:i + batch_size].to(self.device)).double().cpu()
               for i in range(0, len(images), batch_size)]
        return torch.cat(out).numpy() if out else np.zeros((0, self.dim))


def _params_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _host_reachable(url: str, timeout: float = 3.0) -> bool:
    host = re.sub(r"^https?://([^/]+)/.*$", r"\1", url)
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _inception(weights_path: str | None) -> nn.Module:
    from torchmetrics.image.fid import NoTrainInceptionV3
    return NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                              feature_extractor_weights_path=weights_path, antialias=False)


def random_inception(seed: int = 0) -> nn.Module:
    """torchmetrics' ``NoTrainInceptionV3`` (the FID network class) with PyTorch's default
    random initialisation instead of the FID weights: for the smoke profile and tests only.
    The constructor's weight loading is bypassed, nothing is downloaded."""
    from torch_fidelity import feature_extractor_inceptionv3 as fe
    from torchmetrics.image.fid import NoTrainInceptionV3
    with torch.random.fork_rng(devices=[]), \
            mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: None), \
            mock.patch.object(NoTrainInceptionV3, "load_state_dict", lambda self, *a, **k: None):
        torch.manual_seed(seed)
        return _inception(None)


def save_random_inception(path: str | Path, seed: int = 0) -> Path:
    """Save :func:`random_inception` as a ``torch.save`` state dict (the FID weights' own
    format), loadable through ``feature_extractor_weights_path`` like the real file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(random_inception(seed).state_dict(), path)
    return path


def load_inception(weights_path: str | None, *, profile: str,
                   device: str | torch.device | None = None) -> FeatureExtractor:
    """The FID/KID Inception network (uint8 input, 2048-d pool3 features).

    Order: ``weights_path`` (the torch-fidelity file ``weights-inception-2015-12-05-
    6726825d.pth``); then the library's own copy (torch hub cache, else a download when
    github.com is reachable); then, in profiles ``demo``/``smoke`` only, random weights.

    Raises:
        pipelines.models.WeightsUnavailableError: nothing loads; the message names
            ``eval.feature_extractor_weights_path``.
    """
    def hub(url: str):
        cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[1]
        if cached.is_file():
            return _inception(str(cached)), None
        if not _host_reachable(url):
            raise OSError(f"{cached} not in the torch hub cache and {url} is unreachable")
        return _inception(None), None

    try:
        res = resolve_weights(local=weights_path, hub_id=FID_WEIGHTS_URL,
                              param_local="eval.feature_extractor_weights_path", param_hub="(torch-fidelity URL)",
                              load_local=lambda p: (_inception(p), None), load_hub=hub,
                              make_random=lambda: (random_inception(0), None), profile=profile)
    except WeightsUnavailableError as e:
        name = FID_WEIGHTS_URL.rsplit("/", 1)[1]
        raise WeightsUnavailableError(
            f"FID Inception weights unavailable. Set `eval.feature_extractor_weights_path` in params.yaml to "
            f"the torch-fidelity file {name} (from {FID_WEIGHTS_URL}), or put it in the torch hub cache "
            f"({Path(torch.hub.get_dir()) / 'checkpoints'}). Only profiles demo/smoke may use random weights. "
            f"Details: {e}") from e
    dev = pick_device(device)
    model = res.model.to(dev).eval()
    return FeatureExtractor(INCEPTION_NAME, res.origin, _params_hash(model), 2048, model, dev)


def load_dinov2_extractor(model_name: str, local_path: str | None, *, profile: str, image_size: int = 224,
                          device: str | torch.device | None = None) -> FeatureExtractor:
    """DINOv2 CLS features for FD-DINOv2 (Stein et al. 2023), timm backbone.

    uint8 -> [0, 1] -> bicubic (antialiased) resize to ``image_size`` -> ImageNet mean/std
    (timm data config) -> ``forward_head(forward_features(x), pre_logits=True)``: the CLS
    token after the final LayerNorm, float32 (no autocast).

    Raises:
        ValueError / pipelines.models.WeightsUnavailableError: as
            :func:`pipelines.features.load_dinov2` (names ``features.local_path``/``features.model``).
    """
    import timm.data
    from pipelines.features import load_dinov2
    res = load_dinov2(model_name, local_path, profile=profile, image_size=image_size, device=device)
    model = res.model.eval()
    dev = next(model.parameters()).device
    cfg = timm.data.resolve_data_config(model=model)
    mean = torch.tensor(cfg["mean"], device=dev).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"], device=dev).view(1, 3, 1, 1)
    size = tuple(model.patch_embed.img_size)

    def forward(x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        return model.forward_head(model.forward_features((x - mean) / std), pre_logits=True)

    return FeatureExtractor(f"dinov2-cls:{model_name}@{image_size}px", res.origin, _params_hash(model),
                            int(model.num_features), forward, dev)
