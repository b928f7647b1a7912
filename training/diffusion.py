"""DDPM objective for the RGBD models: schedule, batch preparation, loss, CFG dropout, EMA.

Follows IVID (JeffreyXiang/ivid ``diffusion/frameworks/gaussian_diffusion.py``,
``classifier_free_guidance.py``, ``inpaint_cfg.py``): linear betas over T = 1000
(1e-4 .. 0.02), epsilon prediction, plain MSE, class label dropped to the null class with
p = 0.1. The forward process is diffusers' ``DDPMScheduler.add_noise``; EMA is diffusers'
``EMAModel`` (decay 0.9999, with its built-in ``(1 + n) / (10 + n)`` warm-up cap).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.training_utils import EMAModel

from .models import FIRST_VIEW, RGBDDiffusionModel, config_from_dict, to_model_range


@dataclass
class DiffusionConfig:
    """Noise schedule and objective (IVID defaults)."""
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    p_uncond: float = 0.1       # CFG: probability of replacing the class by the null class
    ema_decay: float = 0.9999

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DiffusionConfig":
        return config_from_dict(cls, d, "diffusion")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_ddpm_scheduler(cfg: DiffusionConfig) -> DDPMScheduler:
    """diffusers ``DDPMScheduler`` with epsilon prediction and the configured betas."""
    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                         beta_start=cfg.beta_start, beta_end=cfg.beta_end,
                         prediction_type="epsilon", clip_sample=True, clip_sample_range=1.0)


def make_ddim_scheduler(cfg: DiffusionConfig) -> DDIMScheduler:
    """diffusers ``DDIMScheduler`` over the same betas (x0 clipped to [-1, 1])."""
    return DDIMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                         beta_start=cfg.beta_start, beta_end=cfg.beta_end, prediction_type="epsilon",
                         clip_sample=True, clip_sample_range=1.0, set_alpha_to_one=False)


def class_labels_from_batch(batch: dict[str, Any], class_cond: str, num_classes: int,
                            device: torch.device | str) -> torch.Tensor | None:
    """Class ids [B] long from the batch key ``pose`` or ``label`` (``class_cond``).

    Absent (-1) or out-of-range ids become the null class ``num_classes``. Returns None when
    ``class_cond == "none"``. Raises ``KeyError`` when the batch lacks the key.
    """
    if class_cond == "none":
        return None
    lab = torch.as_tensor(batch[class_cond]).to(device=device, dtype=torch.long).reshape(-1)
    return torch.where((lab < 0) | (lab >= num_classes), torch.full_like(lab, num_classes), lab)


def drop_labels(labels: torch.Tensor | None, p: float, null_class: int | None,
                generator: torch.Generator | None = None) -> torch.Tensor | None:
    """CFG training dropout: each label becomes ``null_class`` with probability ``p``."""
    if labels is None or p <= 0:
        return labels
    u = torch.rand(labels.shape, generator=generator, device=labels.device)
    return torch.where(u < p, torch.full_like(labels, null_class), labels)


def model_inputs(batch: dict[str, Any], model_kind: str, device: torch.device | str,
                 resolution: int | None = None) -> dict[str, torch.Tensor]:
    """Shard batch ([0, 1] tensors from ``training.data.make_dataset``) -> model tensors.

    When ``resolution`` is given and differs from the batch's H x W, the batch is resized
    with :func:`training.data.resize_batch`, so shards of any ingest resolution train a
    model of its configured size.

    Returns ``x0`` [B, 4, H, W] in [-1, 1] (RGB + z-buffer depth) and, for
    ``novel_view``, ``cond_rgb`` [B,3,H,W] and ``cond_depth`` [B,1,H,W] in [-1, 1],
    ``mask``/``mask_rgb`` [B,1,H,W] float {0, 1}.
    """
    from .data import resize_batch

    batch = resize_batch(batch, resolution)

    def get(k):
        return torch.as_tensor(batch[k]).to(device=device, dtype=torch.float32, non_blocking=True)
    out = {"x0": to_model_range(torch.cat([get("target"), get("target_depth")], dim=1))}
    if model_kind != FIRST_VIEW:
        out["cond_rgb"] = to_model_range(get("cond"))
        out["cond_depth"] = to_model_range(get("cond_depth"))
        out["mask"] = (get("mask") > 0.5).float()
        out["mask_rgb"] = (get("mask_rgb") > 0.5).float()
    return out


def diffusion_loss(model: torch.nn.Module, scheduler: DDPMScheduler, inputs: dict[str, torch.Tensor],
                   class_labels: torch.Tensor | None, *, p_uncond: float, null_class: int | None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Epsilon-prediction MSE for one batch (IVID ``training_losses``).

    Draws ``t ~ U{0..T-1}`` and ``eps ~ N(0, I)`` from ``generator`` (device of the
    inputs), noises ``x0`` with ``scheduler.add_noise``, drops labels for CFG, and returns
    the scalar mean squared error (float32). ``model`` may be DDP-wrapped.
    """
    x0 = inputs["x0"]
    b = x0.shape[0]
    t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=generator, device=x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    x_t = scheduler.add_noise(x0, noise, t)
    labels = drop_labels(class_labels, p_uncond, null_class, generator)
    kw: dict[str, Any] = {"class_labels": labels}
    if "cond_rgb" in inputs:
        kw.update(cond_rgb=inputs["cond_rgb"], cond_depth=inputs["cond_depth"], mask=inputs["mask"],
                  mask_rgb=inputs["mask_rgb"], generator=generator)
    pred = model(x_t, t, **kw)
    return F.mse_loss(pred.float(), noise.float())


def make_ema(model: RGBDDiffusionModel, decay: float) -> EMAModel:
    """diffusers ``EMAModel`` over ``model.parameters()`` (fp32 shadow copy, same device)."""
    return EMAModel(model.parameters(), decay=decay)
