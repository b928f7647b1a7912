"""RGBD diffusion backbones (diffusers ``UNet2DModel``) for IVID and MIRAGE.

Two model kinds, both pixel-space, predicting epsilon for a 4-channel RGBD image:

* ``first_view`` -- IVID's unconditional model / MIRAGE's pose-conditioned model:
  ``UNet2DModel`` with 4 input and 4 output channels, optionally a class embedding
  (``num_class_embeds = num_classes + 1``; index ``num_classes`` is the *null class*
  used for classifier-free guidance).
* ``novel_view`` -- IVID's conditional (inpainting) model: ``UNet2DModel`` with 10 input
  channels ``[x_t (4), mask_rgb (1), cond RGB (3), cond depth (1), mask (1)]`` and 4 outputs.
  Inside :meth:`NovelViewModel.forward`, condition pixels outside their masks are
  replaced by standard Gaussian noise, exactly as IVID's ``InpaintCFG.make_cond_inputs``
  (JeffreyXiang/ivid ``diffusion/frameworks/inpaint_cfg.py``).

Data scaling (the one place it is defined): shards hold RGB in [0, 1] and IVID's z-buffer
depth value in [0, 1] (0 = near plane); models see ``x = 2 * v - 1`` in [-1, 1] for both
the noised sample and the condition images (IVID ``normalize=True``,
``normalize_depth=True``). Masks stay in {0, 1}. See :func:`to_model_range`.

Architecture sizes come from :class:`ModelConfig`; ``tiny_config()`` trains in seconds
on CPU, ``base_config()`` mirrors IVID's ``rgbd_singlecategory_adm_128_small`` (128
channels, multipliers [1, 1, 2, 3, 4], 2 res blocks, attention at 32/16/8 px, 64-channel
heads) with diffusers blocks.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from diffusers import UNet2DModel
from torch import nn

FIRST_VIEW = "first_view"
NOVEL_VIEW = "novel_view"
RGBD_CHANNELS = 4
NOVEL_IN_CHANNELS = 10  # [x_t(4), mask_rgb, cond rgb(3), cond depth, mask]
MODEL_JSON = "viewforge_model.json"


def to_model_range(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1] (``2x - 1``), any shape/dtype (float)."""
    return x * 2.0 - 1.0


def from_model_range(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1] (``(x + 1) / 2``, clamped to [0, 1])."""
    return ((x + 1.0) * 0.5).clamp(0.0, 1.0)


def config_from_dict(cls: type, d: dict[str, Any], what: str) -> Any:
    """``cls(**d)`` for a config dataclass; unknown keys raise ``ValueError`` naming them
    (``what`` says which config: model, diffusion, train), so typos never pass silently."""
    unknown = set(d) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"unknown {what} config keys: {sorted(unknown)}")
    return cls(**d)


@dataclass
class ModelConfig:
    """Backbone sizes and conditioning.

    Attributes:
        kind: ``first_view`` or ``novel_view``.
        resolution: training side in px (square); any H, W divisible by
            ``2 ** (len(block_out_channels) - 1)`` works at inference.
        block_out_channels / down_block_types / up_block_types / layers_per_block /
            attention_head_dim / norm_num_groups / dropout: passed to ``UNet2DModel``.
        class_cond: ``none``, ``pose`` (MIRAGE pose cluster id, batch key ``pose``) or
            ``label`` (class label, batch key ``label``).
        num_classes: number of real classes; the embedding has ``num_classes + 1`` rows,
            the last is the null class. Must be > 0 when ``class_cond != "none"``.
    """
    kind: str = FIRST_VIEW
    resolution: int = 128
    block_out_channels: list[int] = field(default_factory=lambda: [128, 128, 256, 384, 512])
    down_block_types: list[str] = field(default_factory=lambda: [
        "DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"])
    up_block_types: list[str] = field(default_factory=lambda: [
        "AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"])
    layers_per_block: int = 2
    attention_head_dim: int = 64
    norm_num_groups: int = 32
    dropout: float = 0.0
    class_cond: str = "none"
    num_classes: int = 0

    def __post_init__(self) -> None:
        if self.kind not in (FIRST_VIEW, NOVEL_VIEW):
            raise ValueError(f"model kind must be {FIRST_VIEW!r} or {NOVEL_VIEW!r}, got {self.kind!r}")
        if self.class_cond not in ("none", "pose", "label"):
            raise ValueError(f"class_cond must be none|pose|label, got {self.class_cond!r}")
        if self.class_cond != "none" and self.num_classes <= 0:
            raise ValueError("class_cond needs num_classes > 0")
        n = len(self.block_out_channels)
        if not (len(self.down_block_types) == len(self.up_block_types) == n):
            raise ValueError("block_out_channels, down_block_types and up_block_types need equal lengths")
        self.block_out_channels = [int(c) for c in self.block_out_channels]

    @property
    def has_classes(self) -> bool:
        return self.class_cond != "none"

    @property
    def null_class(self) -> int | None:
        """Index of the null (unconditional) class, or None without class conditioning."""
        return self.num_classes if self.has_classes else None

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Build from a dict; unknown keys raise ``ValueError`` (typos must not pass silently)."""
        return config_from_dict(cls, d, "model")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tiny_config(kind: str = FIRST_VIEW, **kw: Any) -> ModelConfig:
    """~0.1M-parameter UNet (2 levels, 16/32 channels, one attention level) for CPU tests."""
    base = dict(kind=kind, resolution=16, block_out_channels=[16, 32],
                down_block_types=["DownBlock2D", "AttnDownBlock2D"],
                up_block_types=["AttnUpBlock2D", "UpBlock2D"], layers_per_block=1,
                attention_head_dim=8, norm_num_groups=8)
    base.update(kw)
    return ModelConfig(**base)


def base_config(kind: str = FIRST_VIEW, **kw: Any) -> ModelConfig:
    """IVID ``adm_128_small`` sizes at 128 px (see module docstring)."""
    return ModelConfig(kind=kind, **kw)


def build_unet(cfg: ModelConfig) -> UNet2DModel:
    """A randomly initialised ``UNet2DModel`` for ``cfg`` (in 4 or 10 channels, out 4)."""
    return UNet2DModel(
        sample_size=cfg.resolution,
        in_channels=RGBD_CHANNELS if cfg.kind == FIRST_VIEW else NOVEL_IN_CHANNELS,
        out_channels=RGBD_CHANNELS,
        down_block_types=tuple(cfg.down_block_types),
        up_block_types=tuple(cfg.up_block_types),
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=cfg.norm_num_groups,
        dropout=cfg.dropout,
        num_class_embeds=(cfg.num_classes + 1) if cfg.has_classes else None,
    )


class RGBDDiffusionModel(nn.Module):
    """Common wrapper: holds ``unet`` and ``config``; save/load in diffusers layout."""

    def __init__(self, cfg: ModelConfig, unet: UNet2DModel | None = None):
        super().__init__()
        self.config = cfg
        self.unet = unet if unet is not None else build_unet(cfg)

    def _labels(self, class_labels: torch.Tensor | None, batch: int, device) -> torch.Tensor | None:
        """Class ids [B] long; ``None`` or negative ids mean the null class."""
        if not self.config.has_classes:
            return None
        null = self.config.null_class
        if class_labels is None:
            return torch.full((batch,), null, dtype=torch.long, device=device)
        lab = class_labels.to(device=device, dtype=torch.long)
        if lab.dim() == 0:
            lab = lab.expand(batch)
        return torch.where((lab < 0) | (lab > null), torch.full_like(lab, null), lab)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write ``config.json`` + ``diffusion_pytorch_model.safetensors`` (diffusers) and
        :data:`MODEL_JSON` (our :class:`ModelConfig`) into ``path``."""
        os.makedirs(path, exist_ok=True)
        self.unet.save_pretrained(path, safe_serialization=True)
        with open(os.path.join(path, MODEL_JSON), "w") as f:
            json.dump(self.config.to_dict(), f, indent=2)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class FirstViewModel(RGBDDiffusionModel):
    """Unconditional / class-conditional RGBD model (IVID first view, MIRAGE pose model)."""

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | int,
                class_labels: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
        """Predict epsilon.

        Args:
            sample: x_t, float [B, 4, H, W] in model range (roughly [-1, 1] plus noise).
            timestep: int or long [B] in [0, T).
            class_labels: long [B] (negative = null class) or None (= null class).
        Returns:
            float [B, 4, H, W] predicted noise.
        """
        lab = self._labels(class_labels, sample.shape[0], sample.device)
        return self.unet(sample, timestep, class_labels=lab).sample


class NovelViewModel(RGBDDiffusionModel):
    """IVID conditional model: sees the warped RGBD condition and its masks."""

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | int, *,
                cond_rgb: torch.Tensor, cond_depth: torch.Tensor, mask: torch.Tensor,
                mask_rgb: torch.Tensor, class_labels: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Predict epsilon given the condition.

        Args:
            sample: x_t, float [B, 4, H, W], model range.
            cond_rgb: float [B, 3, H, W] in [-1, 1]; pixels with ``mask_rgb == 0`` are
                replaced by N(0, 1) noise here (IVID ``make_cond_inputs``).
            cond_depth: float [B, 1, H, W] z-buffer value in [-1, 1]; pixels with
                ``mask == 0`` replaced by noise.
            mask / mask_rgb: float or bool [B, 1, H, W] in {0, 1}.
            class_labels: as :meth:`FirstViewModel.forward`.
            generator: for the replacement noise (device must match ``sample``);
                None uses the global RNG.
        Returns:
            float [B, 4, H, W] predicted noise.
        """
        x = self.condition_input(sample, cond_rgb, cond_depth, mask, mask_rgb, generator)
        lab = self._labels(class_labels, sample.shape[0], sample.device)
        return self.unet(x, timestep, class_labels=lab).sample

    @staticmethod
    def condition_input(sample, cond_rgb, cond_depth, mask, mask_rgb, generator=None) -> torch.Tensor:
        """The 10-channel UNet input ``[x_t, mask_rgb, cond_rgb', cond_depth', mask]`` [B,10,H,W]."""
        dt = sample.dtype
        mask = mask.to(dt)
        mask_rgb = mask_rgb.to(dt)
        noise = torch.randn(cond_rgb.shape[0], 4, *cond_rgb.shape[2:], generator=generator,
                            device=sample.device, dtype=dt)
        rgb = cond_rgb.to(dt) * mask_rgb + noise[:, :3] * (1 - mask_rgb)
        depth = cond_depth.to(dt) * mask + noise[:, 3:] * (1 - mask)
        return torch.cat([sample, mask_rgb, rgb, depth, mask], dim=1)


def build_model(cfg: ModelConfig) -> RGBDDiffusionModel:
    """Randomly initialised wrapper of the kind ``cfg.kind``."""
    return (FirstViewModel if cfg.kind == FIRST_VIEW else NovelViewModel)(cfg)


def load_model(path: str | os.PathLike, *, torch_dtype: torch.dtype | None = None) -> RGBDDiffusionModel:
    """Load a model written by :meth:`RGBDDiffusionModel.save_pretrained`.

    Uses ``UNet2DModel.from_pretrained`` (local directory only, never downloads).

    Raises:
        FileNotFoundError: ``path`` lacks :data:`MODEL_JSON`.
    """
    cfg_path = os.path.join(path, MODEL_JSON)
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{path!s} is not a viewforge model directory (no {MODEL_JSON})")
    with open(cfg_path) as f:
        cfg = ModelConfig.from_dict(json.load(f))
    kw = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    unet = UNet2DModel.from_pretrained(path, local_files_only=True, **kw)
    return (FirstViewModel if cfg.kind == FIRST_VIEW else NovelViewModel)(cfg, unet)


@torch.no_grad()
def init_novel_from_first_view(novel: NovelViewModel, first: FirstViewModel) -> NovelViewModel:
    """Copy a trained first-view model into a novel-view model (IVID ``finetune_ckpt``).

    Every parameter/buffer of equal name and shape is copied; ``conv_in`` gets the
    first-view weights on its first 4 input channels (x_t) and zeros on the 6 condition
    channels, so at initialisation the novel-view model computes exactly the first-view
    model's output. The class embedding is copied when both have the same size.

    Raises:
        ValueError: architectures differ beyond ``conv_in`` (names or shapes), or one
            model has a class embedding and the other does not.
    """
    src = first.unet.state_dict()
    dst = novel.unet.state_dict()
    if set(src) != set(dst):
        raise ValueError(f"architectures differ: {sorted(set(src) ^ set(dst))[:5]} ...")
    for k, v in src.items():
        if k == "conv_in.weight":
            w = torch.zeros_like(dst[k])
            w[:, :RGBD_CHANNELS] = v
            dst[k].copy_(w)
        elif v.shape != dst[k].shape:
            raise ValueError(f"shape mismatch for {k}: {tuple(v.shape)} vs {tuple(dst[k].shape)}")
        else:
            dst[k].copy_(v)
    return novel
