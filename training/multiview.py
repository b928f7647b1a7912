"""Posed multi-view diffusion model (ViewDiff-style) on diffusers ``UNet2DModel``.

One sample is a *viewset*: ``V`` RGB views of one object with cameras ``K [V,3,3]`` and
OpenCV ``w2c [V,4,4]`` (DESIGN.md conventions). The model denoises all views jointly:

* **Cross-frame attention** (ViewDiff, Höllein et al. CVPR 2024, Sec. 3.2;
  facebookresearch/ViewDiff ``model/custom_attention_processor.py`` with
  ``to_k_other_frames = V - 1, with_self_attention``): every self-attention layer of the
  UNet attends over the tokens of *all* V views of its sample -- :class:`CrossViewAttnProcessor`
  reshapes ``[B*V, N, C] -> [B, V*N, C]`` for q, k, v. No view order enters the network, so
  permuting the views permutes the outputs; with ``V = 1`` it is the plain UNet.
* **Camera conditioning**: a 6-channel per-pixel ray embedding
  (:func:`pipelines.rays.ray_embedding`, Plücker ``(d, o x d)`` by default, or Viewset
  Diffusion's centre + direction) concatenated to the noisy image (Viewset Diffusion's
  input layout). ViewDiff itself conditions through a 10-d pose vector + a projection
  layer; the ray map is the simpler, resolution-agnostic equivalent.
* **Clean views**: a 1-channel flag per view (1 = un-noised condition view, 0 = to be
  denoised). Clean views enter as ``x0`` with timestep 0 and carry no loss. Training draws
  them as ViewDiff does (``prob_images_not_noisy = 0.25``, ``max_num_images_not_noisy = 2``:
  with probability ``p_clean`` a uniform number in ``1..max_clean`` of the views of a sample
  stay clean); at inference the known view(s) are clean.

UNet input: ``[x_t (3), rays (6), clean flag (1)]`` = 10 channels, output epsilon (3).
Objective: epsilon MSE over the noisy views, the same DDPM schedule as
:mod:`training.diffusion` (IVID linear betas, T = 1000). Images: [0, 1] in the data,
``2x - 1`` in the model (:func:`training.models.to_model_range`).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.models.attention_processor import Attention
from torch import nn

from pipelines.rays import RAY_EMBEDDINGS, ray_embedding

from .models import config_from_dict, to_model_range
from .view_attention import ViewGroupAttnProcessor

MULTIVIEW = "multiview"
RGB_CHANNELS = 3
RAY_CHANNELS = 6
MV_IN_CHANNELS = RGB_CHANNELS + RAY_CHANNELS + 1  # [x_t, rays, clean flag]
MV_MODEL_JSON = "viewforge_multiview_model.json"


@dataclass
class MultiViewConfig:
    """Multi-view model sizes and conditioning.

    Attributes:
        kind: always ``multiview``.
        resolution: training side in px (square; sampling accepts any H, W divisible by
            ``downscale``).
        num_views: views per training sample (ViewDiff: 5; inference may use any V).
        ray_embedding: ``plucker`` | ``centre_direction`` (:mod:`pipelines.rays`).
        p_clean / max_clean: training condition draw (ViewDiff 0.25 / 2); ``max_clean``
            must be < ``num_views`` so at least one view is denoised.
        block_out_channels ... dropout: passed to ``UNet2DModel`` as in
            :class:`training.models.ModelConfig`.
    """
    kind: str = MULTIVIEW
    resolution: int = 128
    num_views: int = 5
    ray_embedding: str = "plucker"
    p_clean: float = 0.25
    max_clean: int = 2
    block_out_channels: list[int] = field(default_factory=lambda: [128, 128, 256, 384, 512])
    down_block_types: list[str] = field(default_factory=lambda: [
        "DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"])
    up_block_types: list[str] = field(default_factory=lambda: [
        "AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"])
    layers_per_block: int = 2
    attention_head_dim: int = 64
    norm_num_groups: int = 32
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.kind != MULTIVIEW:
            raise ValueError(f"multi-view config kind must be {MULTIVIEW!r}, got {self.kind!r}")
        if self.ray_embedding not in RAY_EMBEDDINGS:
            raise ValueError(f"ray_embedding must be one of {sorted(RAY_EMBEDDINGS)}, got {self.ray_embedding!r}")
        if self.num_views < 1 or not 0 <= self.max_clean < max(self.num_views, 1) or not 0 <= self.p_clean <= 1:
            raise ValueError(f"need num_views >= 1, 0 <= max_clean < num_views, p_clean in [0, 1]; got "
                             f"{self.num_views}, {self.max_clean}, {self.p_clean}")
        n = len(self.block_out_channels)
        if not (len(self.down_block_types) == len(self.up_block_types) == n):
            raise ValueError("block_out_channels, down_block_types and up_block_types need equal lengths")
        self.block_out_channels = [int(c) for c in self.block_out_channels]

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MultiViewConfig":
        """Unknown keys raise ``ValueError`` (:func:`training.models.config_from_dict`)."""
        return config_from_dict(cls, d, "multiview model")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_TOP_KEYS = ("resolution", "num_views", "ray_embedding", "p_clean", "max_clean")


def parse_multiview_config(cfg: dict[str, Any]):
    """Raw YAML dict (``training/configs/multiview_*.yaml``: ``model: multiview``, the
    :data:`_TOP_KEYS`, ``unet:``, ``diffusion:``, ``train:``) ->
    ``(MultiViewConfig, DiffusionConfig, TrainConfig)``. Raises ValueError on unknown keys
    or a ``model`` other than ``multiview``."""
    from .diffusion import DiffusionConfig
    from .trainer import TrainConfig
    unknown = set(cfg) - {"model", "unet", "diffusion", "train", *_TOP_KEYS}
    if unknown:
        raise ValueError(f"unknown top-level config keys: {sorted(unknown)}")
    if cfg.get("model") != MULTIVIEW:
        raise ValueError(f"config needs `model: {MULTIVIEW}`, got {cfg.get('model')!r}")
    m = {"kind": MULTIVIEW, **{k: cfg[k] for k in _TOP_KEYS if k in cfg}, **(cfg.get("unet") or {})}
    return (MultiViewConfig.from_dict(m), DiffusionConfig.from_dict(cfg.get("diffusion") or {}),
            TrainConfig.from_dict(cfg.get("train") or {}))


class CrossViewAttnProcessor(ViewGroupAttnProcessor):
    """diffusers attention processor: self-attention over the tokens of all views of a sample.

    The batch is read as ``B`` groups of ``num_views`` consecutive images (one viewset each).
    Group norm and the q/k/v projections act per image; then q, k, v ``[B*V, N, C]`` are
    reshaped to ``[B, V*N, C]`` so each token attends to every token of every view of its
    sample (ViewDiff cross-frame attention with self-attention, all others as keys). Otherwise
    identical to diffusers ``AttnProcessor2_0``, so ``num_views = 1`` gives exactly ordinary
    self-attention. ``num_views`` is set by :class:`MultiViewModel` before each forward.

    Raises:
        ValueError: cross-attention / attention masks (unsupported), or a batch that is not
            a multiple of ``num_views``.
    """

    def __init__(self, num_views: int = 1):
        self.num_views = num_views

    def regroup(self, q, k, v):
        """[B*V, N, C] -> [B, V*N, C]: one token sequence per sample, all views."""
        bv, n, c = q.shape
        g = self._check(bv)
        return tuple(t.reshape(g, self.num_views * n, c) for t in (q, k, v))


def build_multiview_unet(cfg: MultiViewConfig) -> UNet2DModel:
    """Randomly initialised ``UNet2DModel`` with 10 input and 3 output channels."""
    return UNet2DModel(sample_size=cfg.resolution, in_channels=MV_IN_CHANNELS, out_channels=RGB_CHANNELS,
                       down_block_types=tuple(cfg.down_block_types), up_block_types=tuple(cfg.up_block_types),
                       block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
                       attention_head_dim=cfg.attention_head_dim, norm_num_groups=cfg.norm_num_groups,
                       dropout=cfg.dropout)


class MultiViewModel(nn.Module):
    """Holds ``unet`` (diffusers ``UNet2DModel`` whose every ``Attention`` layer uses one shared
    :class:`CrossViewAttnProcessor`) and ``config``; save/load in diffusers layout."""

    def __init__(self, cfg: MultiViewConfig, unet: UNet2DModel | None = None):
        super().__init__()
        self.config = cfg
        self.unet = unet if unet is not None else build_multiview_unet(cfg)
        self.processor = CrossViewAttnProcessor(1)
        for m in self.unet.modules():
            if isinstance(m, Attention):
                m.set_processor(self.processor)

    def camera_embedding(self, K: torch.Tensor, w2c: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Ray embedding float [B, V, 6, H, W] of cameras ``K [B,V,3,3]``, ``w2c [B,V,4,4]``
        (pixels at ``height x width``) with the configured ``ray_embedding``."""
        B, V = K.shape[:2]
        rays = ray_embedding(self.config.ray_embedding, K.reshape(B * V, 3, 3), w2c.reshape(B * V, 4, 4),
                             height, width)
        return rays.reshape(B, V, RAY_CHANNELS, height, width)

    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor | int, rays: torch.Tensor,
                clean: torch.Tensor) -> torch.Tensor:
        """Predict epsilon for every view.

        Args:
            sample: float [B, V, 3, H, W]: ``x_t`` for noisy views, ``x0`` (model range
                [-1, 1]) for clean views.
            timesteps: int, long [B] (shared by the views) or [B, V] (clean views: 0).
            rays: float [B, V, 6, H, W] (:meth:`camera_embedding`).
            clean: bool/float [B, V], 1 = clean condition view.
        Returns:
            float [B, V, 3, H, W] predicted noise (meaningless for clean views).
        Raises:
            ValueError: inconsistent shapes; H, W not divisible by ``config.downscale``.
        """
        B, V, C, H, W = sample.shape
        if rays.shape != (B, V, RAY_CHANNELS, H, W) or tuple(clean.shape) != (B, V) or C != RGB_CHANNELS:
            raise ValueError(f"shapes: sample {tuple(sample.shape)}, rays {tuple(rays.shape)}, "
                             f"clean {tuple(clean.shape)}")
        if H % self.config.downscale or W % self.config.downscale:
            raise ValueError(f"H, W must be divisible by {self.config.downscale}, got {H}x{W}")
        t = torch.as_tensor(timesteps, device=sample.device)
        t = t.reshape(-1, 1).expand(B, V) if t.dim() <= 1 else t
        flag = clean.to(sample.dtype)[:, :, None, None, None].expand(B, V, 1, H, W)
        x = torch.cat([sample, rays.to(sample.dtype), flag], dim=2).reshape(B * V, MV_IN_CHANNELS, H, W)
        self.processor.num_views = V
        out = self.unet(x, t.reshape(B * V), return_dict=False)[0]
        return out.reshape(B, V, RGB_CHANNELS, H, W)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """``config.json`` + safetensors (diffusers) and :data:`MV_MODEL_JSON` in ``path``."""
        os.makedirs(path, exist_ok=True)
        self.unet.save_pretrained(path, safe_serialization=True)
        with open(os.path.join(path, MV_MODEL_JSON), "w") as f:
            json.dump(self.config.to_dict(), f, indent=2)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def load_multiview_model(path: str | os.PathLike, *, torch_dtype: torch.dtype | None = None) -> MultiViewModel:
    """Load a :meth:`MultiViewModel.save_pretrained` directory (local only, never downloads).

    Raises:
        FileNotFoundError: ``path`` lacks :data:`MV_MODEL_JSON`.
    """
    p = os.path.join(path, MV_MODEL_JSON)
    if not os.path.exists(p):
        raise FileNotFoundError(f"{path!s} is not a viewforge multi-view model directory (no {MV_MODEL_JSON})")
    with open(p) as f:
        cfg = MultiViewConfig.from_dict(json.load(f))
    kw = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    return MultiViewModel(cfg, UNet2DModel.from_pretrained(path, local_files_only=True, **kw))


# ----------------------------------------------------------------------------- objective
def multiview_inputs(model: MultiViewModel, images: torch.Tensor, K: torch.Tensor,
                     w2c: torch.Tensor) -> dict[str, torch.Tensor]:
    """Viewset tensors -> model tensors: ``x0`` float [B,V,3,H,W] in [-1, 1] from ``images``
    ([0, 1]) and ``rays`` [B,V,6,H,W] from ``K [B,V,3,3]`` (pixels at the images' H x W) and
    OpenCV ``w2c [B,V,4,4]`` (on the images' device)."""
    B, V, _, H, W = images.shape
    return {"x0": to_model_range(images.float()),
            "rays": model.camera_embedding(K.to(images.device), w2c.to(images.device), H, W).float()}


def draw_clean_views(batch: int, views: int, p_clean: float, max_clean: int,
                     generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """ViewDiff's training condition draw: bool [batch, views]; per sample with probability
    ``p_clean`` a uniform count in ``1..max_clean`` (capped at ``views - 1``) of uniformly
    chosen views is clean, else none (ViewDiff ``train.py``: ``prob_images_not_noisy``,
    ``max_num_images_not_noisy``)."""
    mx = min(max_clean, views - 1)
    u = torch.rand(batch, generator=generator, device=device)
    n = torch.randint(1, max(mx, 1) + 1, (batch,), generator=generator, device=device)
    n = torch.where(u < p_clean, n, torch.zeros_like(n)) if mx > 0 else torch.zeros_like(n)
    rank = torch.rand(batch, views, generator=generator, device=device).argsort(1).argsort(1)
    return rank < n[:, None]


def multiview_loss(model: nn.Module, scheduler: DDPMScheduler, inputs: dict[str, torch.Tensor],
                   clean: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Epsilon MSE over the noisy views of a batch (scalar float32).

    Draws one ``t ~ U{0..T-1}`` per sample (shared by its views, as ViewDiff) and
    ``eps ~ N(0, I)`` from ``generator``; noisy views get ``scheduler.add_noise(x0, eps, t)``,
    clean views (``clean`` bool [B, V]) keep ``x0`` with timestep 0 and are excluded from the
    mean. ``model`` may be DDP-wrapped.
    """
    x0, rays = inputs["x0"], inputs["rays"]
    B, V = x0.shape[:2]
    t = torch.randint(0, scheduler.config.num_train_timesteps, (B,), generator=generator, device=x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    tv = t[:, None].expand(B, V)
    x_t = scheduler.add_noise(x0.flatten(0, 1), noise.flatten(0, 1), tv.flatten()).view_as(x0)
    cm = clean.to(x0.device)[:, :, None, None, None]
    x_in = torch.where(cm, x0, x_t)
    pred = model(x_in, torch.where(clean.to(x0.device), torch.zeros_like(tv), tv), rays, clean)
    w = (~cm).float().expand_as(x0)
    return (((pred.float() - noise.float()) ** 2) * w).sum() / w.sum().clamp(min=1)
