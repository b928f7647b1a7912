"""Sampling the multi-view model: target views jointly given known views and cameras.

* :func:`sample_multiview` -- one joint pass: the known views enter clean (flag 1,
  timestep 0, ``x0``), the target views start from Gaussian noise and are denoised with
  diffusers ``DDIMScheduler`` (the training betas, :func:`training.diffusion.make_ddim_scheduler`,
  eta = 0 by default); only target views are updated, so known views stay exactly as given.
* :func:`sample_multiview_autoregressive` -- more target views than fit in one pass,
  following ViewDiff's sliding-window generation (facebookresearch/ViewDiff ``viewdiff/test.py``,
  ``SlidingWindowConfig``: the first full batch is kept as the condition of every later batch,
  ``n_full_batches_to_save = 1``, plus a fraction ``perc_add_images_to_save = 0.5`` of the
  previous batch): pass 1 generates the first ``views_per_pass - n_known`` targets given the
  known views; every later pass conditions on the known views, the first pass's outputs and the
  most recent outputs (newest first, ``recent_fraction`` of the previous pass), truncated to
  ``max_cond`` views, and generates the next chunk of targets.

Determinism: every random draw comes from one ``torch.Generator`` (an int seed builds one on
the model's device), in a fixed order, so equal seeds give equal samples on one device.
"""
from __future__ import annotations

import torch

from .diffusion import DiffusionConfig, make_ddim_scheduler
from .models import from_model_range, to_model_range
from .multiview import MultiViewModel


def _generator(generator: torch.Generator | int | None, device) -> torch.Generator | None:
    if isinstance(generator, int):
        return torch.Generator(device=device).manual_seed(generator)
    return generator


def _check(known_images, known_K, known_w2c, target_K, target_w2c) -> None:
    B, Kn = known_images.shape[:2]
    if known_images.ndim != 5 or known_images.shape[2] != 3:
        raise ValueError(f"known_images must be [B, K, 3, H, W], got {tuple(known_images.shape)}")
    if known_K.shape != (B, Kn, 3, 3) or known_w2c.shape != (B, Kn, 4, 4):
        raise ValueError(f"known cameras must be [B, K, 3, 3] / [B, K, 4, 4], got "
                         f"{tuple(known_K.shape)} / {tuple(known_w2c.shape)}")
    T = target_K.shape[1]
    if target_K.shape != (B, T, 3, 3) or target_w2c.shape != (B, T, 4, 4) or T < 1:
        raise ValueError(f"target cameras must be [B, T>=1, 3, 3] / [B, T, 4, 4], got "
                         f"{tuple(target_K.shape)} / {tuple(target_w2c.shape)}")


@torch.no_grad()
def sample_multiview(model: MultiViewModel, *, known_images: torch.Tensor, known_K: torch.Tensor,
                     known_w2c: torch.Tensor, target_K: torch.Tensor, target_w2c: torch.Tensor, steps: int = 50,
                     diffusion_cfg: DiffusionConfig | None = None, generator: torch.Generator | int | None = None,
                     noise: torch.Tensor | None = None, eta: float = 0.0) -> torch.Tensor:
    """Sample ``T`` target views of ``B`` objects jointly, given ``Kn >= 0`` known views each.

    Args:
        model: :class:`~training.multiview.MultiViewModel` (eval mode is set here).
        known_images: float [B, Kn, 3, H, W] in [0, 1] (``Kn`` may be 0: unconditional).
            H, W must be divisible by ``model.config.downscale``.
        known_K / known_w2c: [B, Kn, 3, 3] pixel intrinsics at H x W (integer pixel
            centres) / [B, Kn, 4, 4] OpenCV world-to-camera.
        target_K / target_w2c: [B, T, 3, 3] / [B, T, 4, 4] target cameras, same world.
        steps: DDIM steps (>= 1). eta: DDIM eta (0 = deterministic given the start noise).
        generator: torch.Generator on the model's device or an int seed; draws ``x_T`` (and
            the eta > 0 noise). noise: optional start noise [B, T, 3, H, W] (overrides).
    Returns:
        float32 [B, T, 3, H, W] in [0, 1].
    Raises:
        ValueError: inconsistent shapes, or H, W not divisible by the model's downscale.
    """
    _check(known_images, known_K, known_w2c, target_K, target_w2c)
    p = next(model.parameters())
    device, dtype = p.device, p.dtype
    B, Kn, _, H, W = known_images.shape
    T = target_K.shape[1]
    gen = _generator(generator, device)
    sched = make_ddim_scheduler(diffusion_cfg or DiffusionConfig())
    sched.set_timesteps(steps, device=device)
    K = torch.cat([known_K, target_K], 1).to(device)
    w2c = torch.cat([known_w2c, target_w2c], 1).to(device)
    rays = model.camera_embedding(K, w2c, H, W).to(dtype)
    x0_known = to_model_range(known_images.to(device, dtype))
    x = noise.to(device, dtype) if noise is not None else torch.randn(
        B, T, 3, H, W, generator=gen, device=device, dtype=dtype)
    clean = torch.zeros(B, Kn + T, dtype=torch.bool, device=device)
    clean[:, :Kn] = True
    model.eval()
    for t in sched.timesteps:
        tv = torch.cat([torch.zeros(B, Kn, dtype=torch.long, device=device),
                        t.to(device).long().expand(B, T)], 1)
        eps = model(torch.cat([x0_known, x], 1), tv, rays, clean)[:, Kn:].to(x.dtype)
        x = sched.step(eps, t, x, eta=eta, generator=gen).prev_sample
    return from_model_range(x.float())


@torch.no_grad()
def sample_multiview_autoregressive(model: MultiViewModel, *, known_images: torch.Tensor, known_K: torch.Tensor,
                                    known_w2c: torch.Tensor, target_K: torch.Tensor, target_w2c: torch.Tensor,
                                    views_per_pass: int, max_cond: int | None = None, recent_fraction: float = 0.5,
                                    steps: int = 50, diffusion_cfg: DiffusionConfig | None = None,
                                    generator: torch.Generator | int | None = None,
                                    eta: float = 0.0) -> torch.Tensor:
    """Sample any number ``T`` of target views in passes of at most ``views_per_pass`` views
    (ViewDiff sliding-window scheme, see the module docstring).

    Args:
        views_per_pass: views per model call (condition + new), > number of known views.
        max_cond: most clean views per later pass (default ``views_per_pass // 2``, at least
            the known views); each later pass generates ``views_per_pass - n_cond`` targets.
        recent_fraction: share of the previous pass's outputs kept as condition (ViewDiff 0.5).
        Other arguments and the return value as :func:`sample_multiview` (targets in order).
    Raises:
        ValueError: ``views_per_pass <= Kn`` or ``max_cond`` leaves no room for a target.
    """
    _check(known_images, known_K, known_w2c, target_K, target_w2c)
    B, Kn = known_images.shape[:2]
    T = target_K.shape[1]
    if views_per_pass <= Kn:
        raise ValueError(f"views_per_pass={views_per_pass} must exceed the {Kn} known views")
    max_cond = max(Kn, views_per_pass // 2 if max_cond is None else max_cond)
    if max_cond >= views_per_pass:
        raise ValueError(f"max_cond={max_cond} leaves no target slot in passes of {views_per_pass}")
    gen = _generator(generator, next(model.parameters()).device)
    kw = dict(steps=steps, diffusion_cfg=diffusion_cfg, generator=gen, eta=eta)
    n1 = min(T, views_per_pass - Kn)
    first = sample_multiview(model, known_images=known_images, known_K=known_K, known_w2c=known_w2c,
                             target_K=target_K[:, :n1], target_w2c=target_w2c[:, :n1], **kw).to(known_images)
    out, done, prev = [first], n1, list(range(n1))
    first_idx = list(range(n1))
    while done < T:
        n_recent = int(round(recent_fraction * len(prev)))
        extra = first_idx + [i for i in reversed(prev[len(prev) - n_recent:]) if i not in first_idx]
        cond_idx = extra[:max_cond - Kn]
        n_new = min(T - done, views_per_pass - Kn - len(cond_idx))
        gen_all = torch.cat(out, 1)
        ci = torch.tensor(cond_idx, dtype=torch.long)
        imgs = torch.cat([known_images, gen_all[:, ci]], 1)
        cK = torch.cat([known_K, target_K[:, ci]], 1)
        cw = torch.cat([known_w2c, target_w2c[:, ci]], 1)
        new = sample_multiview(model, known_images=imgs, known_K=cK, known_w2c=cw,
                               target_K=target_K[:, done:done + n_new], target_w2c=target_w2c[:, done:done + n_new],
                               **kw).to(known_images)
        out.append(new)
        prev = list(range(done, done + n_new))
        done += n_new
    return torch.cat(out, 1)
