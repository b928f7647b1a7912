"""DINOv2 patch and CLS features (MIRAGE, arXiv 2312.04337, Sec. 3.1; Amir et al. 2021).

The ``dinov2_features`` stage: a timm DINOv2 ViT (default ``vit_small_patch14_dinov2.lvd142m``,
any timm DINOv2 name including the ``_reg4`` register variants) turns images into
L2-normalised patch tokens and a CLS token, stored float16, for the image and for its
horizontal mirror (used by :mod:`pipelines.pose_clustering` to pair mirrored poses).

Weights follow :func:`pipelines.models.resolve_weights`: ``features.local_path`` (a
``.safetensors`` / ``.pth`` state dict loaded by timm's own pretrained-file path), then the
timm/Hugging Face hub id ``features.model``; only profiles ``demo``/``smoke`` fall back to a
tiny random model of the same timm class. Tests build such a tiny model with
:func:`save_tiny_dinov2` and load it back through the local-checkpoint path.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.models import (RANDOM_WEIGHTS_SEED, Resolved, autocast_dtype, offline_unless_hub_reachable, pick_device,
                             resolve_weights, seeded)

PATCH = 14
"""DINOv2 patch side in pixels; ``image_size`` must be a multiple of it."""
TINY_ARCH = dict(embed_dim=48, depth=2, num_heads=2)
"""Architecture overrides of the tiny random models (same timm class, ~60k parameters)."""
_META_KEY = "viewforge_timm_kwargs"


@dataclass
class FeatureBatch:
    """Features of B images on an h x w patch grid (h = w = image_size / 14).

    Attributes:
        patch: float16 [B, h, w, C] patch tokens, L2-normalised along C.
        cls: float16 [B, C] CLS token, L2-normalised.
        flipped_patch: float16 [B, h, w, C] patch tokens of the horizontally flipped image,
            in the flipped image's own pixel frame (column j is column w-1-j of the
            original), or None when ``flipped=False``.
        flipped_cls: float16 [B, C] CLS token of the flipped image, or None.
        seconds: wall time of the extraction (s), preprocessing included.
    """
    patch: np.ndarray
    cls: np.ndarray
    flipped_patch: np.ndarray | None
    flipped_cls: np.ndarray | None
    seconds: float

    @property
    def images_per_second(self) -> float:
        """Original images per second (a flipped copy is not counted separately)."""
        return len(self.patch) / max(self.seconds, 1e-9)


def _check(model_name: str, image_size: int) -> tuple[str, str]:
    """Validate a timm DINOv2 name and input side; return (arch, tag)."""
    import timm
    if image_size <= 0 or image_size % PATCH:
        raise ValueError(f"features.image_size must be a positive multiple of {PATCH}, got {image_size}")
    arch, _, tag = model_name.partition(".")
    if "dinov2" not in arch or not timm.is_model(arch):
        raise ValueError(f"features.model {model_name!r} is not a timm DINOv2 model; "
                         f"choose one of {timm.list_models('*dinov2*')}")
    return arch, tag


def _checkpoint_kwargs(path: str) -> dict[str, Any]:
    """Architecture overrides stored in a safetensors header by :func:`save_tiny_dinov2`.

    A real DINOv2 checkpoint carries none, and the timm defaults of ``model_name`` apply.
    """
    if not str(path).endswith(".safetensors"):
        return {}
    from safetensors import safe_open
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta[_META_KEY]) if _META_KEY in meta else {}


def load_dinov2(model_name: str, local_path: str | None, *, profile: str, image_size: int = 224,
                device: str | torch.device | None = None) -> Resolved:
    """Load a timm DINOv2 ViT, in eval mode on ``device``, for ``image_size`` inputs.

    Order (``pipelines.models.resolve_weights``): ``local_path`` via
    ``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=local_path))``
    (timm resamples the position embeddings to ``image_size``, e.g. from 518); then the hub
    (``pretrained=True``, served from the timm/HF cache when offline); then, only for
    profiles ``demo``/``smoke``, a tiny random model of the same class (:data:`TINY_ARCH`),
    initialised with :data:`pipelines.models.RANDOM_WEIGHTS_SEED` (identical in every run).

    Args:
        model_name: timm name, with or without pretrained tag, e.g.
            ``vit_small_patch14_dinov2.lvd142m`` or ``vit_base_patch14_reg4_dinov2``.
        local_path: checkpoint file (state dict, ``.safetensors`` or ``.pth``) or None.
        profile: ``default`` | ``demo`` | ``smoke``.
        image_size: square input side in pixels, a multiple of 14 (grid = image_size/14).
        device: torch device; None picks CUDA when available.

    Returns:
        ``Resolved`` with ``model`` (a ``timm.models.VisionTransformer``) and ``origin``.

    Raises:
        ValueError: ``image_size`` is not a multiple of 14 or the name is no DINOv2.
        pipelines.models.WeightsUnavailableError: nothing loads (message names
            ``features.local_path`` and ``features.model``).
    """
    import timm
    arch, _ = _check(model_name, image_size)

    def local(path: str):
        kw = _checkpoint_kwargs(path)
        return timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=dict(file=path),
                                 img_size=image_size, **kw), None

    def hub(name: str):
        with offline_unless_hub_reachable():
            return timm.create_model(name, pretrained=True, img_size=image_size), None

    def random():
        with seeded(RANDOM_WEIGHTS_SEED):  # reproducible demo/smoke runs
            return timm.create_model(arch, pretrained=False, img_size=image_size, **TINY_ARCH), None

    # timm initialises a model before loading weights into it: keep that (and any failed
    # attempt) from advancing the caller's torch random stream
    with torch.random.fork_rng(devices=[]):
        res = resolve_weights(local=local_path, hub_id=model_name, param_local="features.local_path",
                              param_hub="features.model", load_local=local, load_hub=hub,
                              make_random=random, profile=profile)
    res.model.eval().to(pick_device(device))
    return res


def save_tiny_dinov2(path: str | Path, *, model_name: str = "vit_small_patch14_dinov2",
                     image_size: int = 56, seed: int = 0, **arch: Any) -> Path:
    """Build a tiny randomly initialised timm DINOv2 and save it as safetensors.

    For tests and smoke runs: set ``features.local_path`` to the file and
    ``features.model`` to ``model_name``; :func:`load_dinov2` loads it through the same
    timm pretrained-file path as a real checkpoint. The architecture overrides
    (:data:`TINY_ARCH` updated with ``arch``) are stored in the safetensors header.

    Args:
        path: output ``.safetensors`` file (parent directories are created).
        model_name: timm DINOv2 architecture (tag ignored), e.g. ``vit_small_patch14_reg4_dinov2``.
        image_size: side the position embeddings are built for (multiple of 14).
        seed: torch seed of the random initialisation.
        **arch: overrides such as ``embed_dim``, ``depth``, ``num_heads``.

    Returns:
        The path written. Raises ValueError like :func:`load_dinov2`.
    """
    import timm
    from safetensors.torch import save_file
    arch_name, _ = _check(model_name, image_size)
    kw = {**TINY_ARCH, **arch}
    with seeded(seed):
        model = timm.create_model(arch_name, pretrained=False, img_size=image_size, **kw)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(path), metadata={_META_KEY: json.dumps(kw), "architecture": arch_name})
    return path


def _normalise(tokens: torch.Tensor) -> np.ndarray:
    return F.normalize(tokens.float(), dim=-1).cpu().numpy().astype(np.float16)


@torch.inference_mode()
def extract_features(model: torch.nn.Module, images: np.ndarray | torch.Tensor, *, batch_size: int = 16,
                     flipped: bool = True, device: str | torch.device | None = None) -> FeatureBatch:
    """DINOv2 patch and CLS tokens of a batch of images (and of their mirror images).

    Images are resized (antialiased, the model's pretrained interpolation, no crop) to the
    model's square input, clamped to [0, 1], normalised with the mean/std of the model's
    pretrained config (``timm.data.resolve_data_config``; ImageNet for DINOv2) and run
    through ``model.forward_features``. Tokens are taken **after the final LayerNorm**
    (DINOv2's ``x_norm_*tokens``); the CLS token is the first prefix token, register tokens
    (``num_prefix_tokens - 1`` of them) are dropped. Each token is then L2-normalised along
    C in float32 and stored float16. On CUDA the forward runs under bf16 autocast (fp16 on
    GPUs without bf16), fp32 on CPU.

    Args:
        model: a timm DINOv2 ``VisionTransformer`` (from :func:`load_dinov2`).
        images: float32 [B, 3, H, W] in [0, 1], numpy or torch, any H x W.
        batch_size: images per forward pass (the flipped copies run in their own pass).
        flipped: also return the features of the horizontally flipped images.
        device: where to run; None uses the device of the model's parameters.

    Returns:
        :class:`FeatureBatch` (patch [B, h, w, C], cls [B, C], float16).

    Raises:
        ValueError: ``images`` is not floating point [B, 3, H, W], or ``batch_size`` < 1.
    """
    import timm.data
    t0 = time.perf_counter()
    x_all = torch.as_tensor(np.ascontiguousarray(images) if isinstance(images, np.ndarray) else images)
    if x_all.ndim != 4 or x_all.shape[1] != 3 or not torch.is_floating_point(x_all):
        raise ValueError(f"images must be float [B, 3, H, W] in [0, 1], got {x_all.dtype} {tuple(x_all.shape)}")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    dev = torch.device(device) if device else next(model.parameters()).device
    model.to(dev)
    cfg = timm.data.resolve_data_config(model=model)
    mean = torch.tensor(cfg["mean"], device=dev).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"], device=dev).view(1, 3, 1, 1)
    mode = "bicubic" if cfg.get("interpolation") == "bicubic" else "bilinear"
    size = tuple(model.patch_embed.img_size)
    gh, gw = model.patch_embed.grid_size
    npre = model.num_prefix_tokens
    amp = autocast_dtype(dev)
    outs: dict[str, list[np.ndarray]] = {"patch": [], "cls": [], "fpatch": [], "fcls": []}
    for i in range(0, len(x_all), batch_size):
        x = x_all[i:i + batch_size].to(dev, torch.float32)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode=mode, antialias=True, align_corners=False)
        x = ((x.clamp(0, 1) - mean) / std).contiguous()
        for key, inp in (("", x), ("f", x.flip(-1))) if flipped else (("", x),):
            with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
                tok = model.forward_features(inp)
            outs[key + "cls"].append(_normalise(tok[:, 0]))
            outs[key + "patch"].append(_normalise(tok[:, npre:]).reshape(len(x), gh, gw, -1))
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    cat = {k: np.concatenate(v) if v else None for k, v in outs.items()}
    if not len(x_all):
        c = model.num_features
        cat = {"patch": np.zeros((0, gh, gw, c), np.float16), "cls": np.zeros((0, c), np.float16),
               "fpatch": np.zeros((0, gh, gw, c), np.float16) if flipped else None,
               "fcls": np.zeros((0, c), np.float16) if flipped else None}
    return FeatureBatch(cat["patch"], cat["cls"], cat["fpatch"], cat["fcls"], time.perf_counter() - t0)
