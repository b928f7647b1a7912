"""Sampling: DDIM with classifier-free guidance, IVID autoregressive viewsets, MIRAGE poses.

* :func:`ddim_sample` -- diffusers ``DDIMScheduler`` (eta = 0 by default) over the training
  betas; CFG as ``eps_u + g (eps_c - eps_u)`` (diffusers convention; IVID's
  ``(1 + s) eps_c - s eps_u`` with strength ``s`` is ``g = 1 + s``; IVID default s = 3).
* :func:`sample_viewset` -- IVID (Xiang et al. ICCV 2023, Sec. 3.3; JeffreyXiang/ivid
  ``inference/sample.py`` ``sample_all``): sample the first view, then for every further
  camera forward-warp *all* previously generated RGBD views into it
  (:func:`pipelines.warping.forward_warp`), aggregate them (:func:`aggregate_views`) and
  sample the view with the conditional model.
* :func:`sample_poses` -- MIRAGE (arXiv 2312.04337): several poses of one object from the
  pose-conditioned first-view model, with cross-frame attention
  (:class:`CrossFrameAttnProcessor`) tying every view to a reference view.

Depth: models output IVID's z-buffer value ``v`` in [0, 1]; z-depth is
``near * far / (far - (far - near) v)`` (IVID ``linearize_depth``). IVID's sampler uses
``near = 0.6, far = 5`` for this step (``inference/sample.py``), not the training pairs'
0.5 / 100; both are parameters here, defaulting to IVID's sampler.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import contextlib
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from pipelines.camera import intrinsics_from_fov, invert_rigid, novel_camera
from pipelines.warping import depth_edge, forward_warp

from .diffusion import DiffusionConfig, make_ddim_scheduler
from .view_attention import ViewGroupAttnProcessor
from .models import FIRST_VIEW, NovelViewModel, RGBDDiffusionModel, from_model_range, to_model_range

#: IVID's 3x9 grid: yaw in {0, +-0.15, ..., +-0.6} (outer) x pitch in {0, +-0.15} (inner), radians.
IVID_YAWS = (0.0, 0.15, -0.15, 0.3, -0.3, 0.45, -0.45, 0.6, -0.6)
IVID_PITCHES = (0.0, 0.15, -0.15)


def ivid_grid(yaws: Sequence[float] = IVID_YAWS, pitches: Sequence[float] = IVID_PITCHES) -> list[tuple[float, float]]:
    """(yaw, pitch) list in IVID's generation order; the first entry (0, 0) is the first view."""
    return [(float(y), float(p)) for y in yaws for p in pitches]


def _generator(generator: torch.Generator | int | None, device) -> torch.Generator | None:
    if isinstance(generator, int):
        return torch.Generator(device=device).manual_seed(generator)
    return generator


@torch.no_grad()
def ddim_sample(model: RGBDDiffusionModel, *, batch_size: int, height: int | None = None, width: int | None = None,
                steps: int = 50, guidance_scale: float = 1.0, class_labels: torch.Tensor | None = None,
                cond: dict[str, torch.Tensor] | None = None, diffusion_cfg: DiffusionConfig | None = None,
                generator: torch.Generator | int | None = None, noise: torch.Tensor | None = None,
                eta: float = 0.0) -> torch.Tensor:
    """DDIM sampling of RGBD images.

    Args:
        model: first-view or novel-view model (eval mode is set here).
        batch_size, height, width: output size (default: the model's training resolution);
            H and W must be divisible by ``model.config.downscale``.
        steps: DDIM steps (>= 1). guidance_scale: CFG scale ``g`` (1 = no guidance; needs
            a class-conditional model and ``class_labels``).
        class_labels: long [B] (negative = null class) or None.
        cond: novel-view condition ``{"cond_rgb" [B,3,H,W], "cond_depth" [B,1,H,W]`` in
            [-1, 1], ``"mask", "mask_rgb"`` [B,1,H,W] in {0,1}}; required for novel-view models.
        generator: torch.Generator on the model's device, or an int seed; draws the initial
            noise, the condition replacement noise and (eta > 0) DDIM noise.
        noise: optional initial x_T [B, 4, H, W] (overrides the generator draw).
    Returns:
        float32 [B, 4, H, W] in [-1, 1] (RGB, z-buffer depth).
    Raises:
        ValueError: a novel-view model without ``cond``, or a bad size.
    """
    p = next(model.parameters())
    device, dtype = p.device, p.dtype
    h = height or model.config.resolution
    w = width or model.config.resolution
    if h % model.config.downscale or w % model.config.downscale:
        raise ValueError(f"H, W must be divisible by {model.config.downscale}, got {h}x{w}")
    is_novel = isinstance(model, NovelViewModel)
    if is_novel and cond is None:
        raise ValueError("a novel-view model needs `cond`")
    gen = _generator(generator, device)
    sched = make_ddim_scheduler(diffusion_cfg or DiffusionConfig())
    sched.set_timesteps(steps, device=device)
    x = noise.to(device, dtype) if noise is not None else torch.randn(
        batch_size, 4, h, w, generator=gen, device=device, dtype=dtype)
    use_cfg = guidance_scale != 1.0 and model.config.has_classes and class_labels is not None
    labels = None if class_labels is None else class_labels.to(device).long().reshape(-1)
    if use_cfg:
        labels = torch.cat([labels, torch.full_like(labels, -1)])
    ckw = {}
    if is_novel:
        ckw = {k: cond[k].to(device, dtype) for k in ("cond_rgb", "cond_depth", "mask", "mask_rgb")}
        if use_cfg:
            ckw = {k: torch.cat([v, v]) for k, v in ckw.items()}
        ckw["generator"] = gen
    model.eval()
    for t in sched.timesteps:
        xin = torch.cat([x, x]) if use_cfg else x
        eps = model(xin, t.expand(xin.shape[0]), class_labels=labels, **ckw).to(x.dtype)
        if use_cfg:
            e_c, e_u = eps.chunk(2)
            eps = e_u + guidance_scale * (e_c - e_u)
        x = sched.step(eps, t, x, eta=eta, generator=gen).prev_sample
    return x.float().clamp(-1, 1)


def zbuffer_to_z(v: torch.Tensor, near: float, far: float) -> torch.Tensor:
    """IVID ``linearize_depth``: z-buffer value [0, 1] -> z-depth in [near, far] (same shape)."""
    v = v.clamp(1e-6, 1 - 1e-6)
    return near * far / (far - (far - near) * v)


def z_to_zbuffer(z: torch.Tensor, near: float, far: float) -> torch.Tensor:
    """IVID ``project_depth``: z-depth -> z-buffer value in [0, 1] (inf/invalid -> 1)."""
    z = torch.where(torch.isfinite(z) & (z > 0), z, torch.full_like(z, far)).clamp(near, far)
    return (1 / near - 1 / z) / (1 / near - 1 / far)


def view_weights(z: torch.Tensor, K: torch.Tensor, sharpness: float = 20.0) -> torch.Tensor:
    """IVID aggregation weight per source pixel: ``max(exp(-20 * angle), 1e-4)``.

    ``angle`` is between the surface normal (cross product of the central differences of
    the back-projected points) and the direction from the surface to the camera that saw
    it (IVID ``aggregation.fsh``). Args: z [B,1,H,W] z-depth, K [B,3,3] or [3,3].
    Returns float32 [B, 1, H, W] in [1e-4, 1].
    """
    B, _, H, W = z.shape
    K = K.expand(B, 3, 3) if K.dim() == 3 else K[None].expand(B, 3, 3)
    K = K.to(z)
    v, u = torch.meshgrid(torch.arange(H, device=z.device, dtype=z.dtype),
                          torch.arange(W, device=z.device, dtype=z.dtype), indexing="ij")
    x = (u - K[:, 0, 2, None, None]) / K[:, 0, 0, None, None]
    y = (v - K[:, 1, 2, None, None]) / K[:, 1, 1, None, None]
    P = torch.stack([x, y, torch.ones_like(x)], 1) * z          # [B, 3, H, W]
    Pp = F.pad(P, (1, 1, 1, 1), mode="replicate")
    du = (Pp[..., 1:-1, 2:] - Pp[..., 1:-1, :-2])
    dv = (Pp[..., 2:, 1:-1] - Pp[..., :-2, 1:-1])
    n = torch.cross(du, dv, dim=1)
    cos = (n * -P).sum(1, keepdim=True).abs() / (n.norm(dim=1, keepdim=True) * P.norm(dim=1, keepdim=True)).clamp_min(1e-12)
    angle = torch.arccos(cos.clamp(0, 1))
    return torch.exp(-sharpness * angle).clamp_min(1e-4)


def aggregate_views(rgb: torch.Tensor, z: torch.Tensor, K: torch.Tensor, src_to_tgt: torch.Tensor, *,
                    out_size: tuple[int, int] | None = None, erode_rgb: int = 2, edge_threshold: float = 0.03,
                    depth_tolerance: float = 0.03, supersample: int = 3, near: float = 0.5,
                    far: float = 100.0) -> dict[str, torch.Tensor]:
    """Warp N RGBD views into one target camera and merge them (IVID ``aggregate_conditions``).

    Each source view is forward-warped with :func:`pipelines.warping.forward_warp`, carrying
    its :func:`view_weights` and an "RGB usable" flag (0 within ``erode_rgb`` px of a source
    depth edge, IVID's eroded vertices). Per target pixel, views whose depth is within
    ``depth_tolerance`` (relative) of the nearest warped surface are averaged with their
    weights (colour over RGB-usable views only). IVID averages every view covering a pixel;
    the relative z-test is added so that a view seeing an occluded surface does not blend in.
    ``mask_rgb`` is further eroded by ``2 * erode_rgb - 1`` px inside ``mask`` (IVID).

    Args:
        rgb: float [B, N, 3, H, W] in [0, 1]; z: float [B, N, 1, H, W] z-depth (world units).
        K: [3, 3] intrinsics shared by all views; src_to_tgt: [N, 4, 4] or [B, N, 4, 4].
        near, far: the z-buffer range IVID's discontinuity tests work in (the sampler's
            0.6 / 5.0; depths are in pivot units, so the reference depth is 1).
    Returns:
        ``{"rgb" [B,3,Ht,Wt] in [0,1], "z" [B,1,Ht,Wt] (inf where empty), "mask", "mask_rgb"
        [B,1,Ht,Wt] float {0,1}}``.
    """
    B, N, _, H, W = rgb.shape
    Ht, Wt = out_size or (H, W)
    flat_z = z.reshape(B * N, 1, H, W)
    Kf = K.to(rgb.device, torch.float32)
    w = view_weights(flat_z, Kf)
    usable = ~depth_edge(flat_z, edge_threshold, near=near, far=far)
    if erode_rgb > 0:
        usable = -F.max_pool2d(-usable.float(), 2 * erode_rgb + 1, 1, erode_rgb) > 0.5
    img = torch.cat([rgb.reshape(B * N, 3, H, W), w, usable.float()], 1)
    T = src_to_tgt.to(rgb.device, torch.float64)
    T = (T[None].expand(B, N, 4, 4) if T.dim() == 3 else T).reshape(B * N, 4, 4)
    res = forward_warp(img, flat_z, Kf, Kf, T, out_size=(Ht, Wt), supersample=supersample,
                       edge_threshold=edge_threshold, near=near, far=far)
    im = res.image.reshape(B, N, 5, Ht, Wt)
    zz = torch.where(res.mask, res.depth, torch.full_like(res.depth, float("inf"))).reshape(B, N, 1, Ht, Wt)
    valid = res.mask.reshape(B, N, 1, Ht, Wt)
    zmin = zz.min(1, keepdim=True).values
    keep = valid & (zz <= zmin * (1 + depth_tolerance))
    wk = im[:, :, 3:4] * keep
    mask = keep.any(1)
    zsum = (wk * torch.where(keep, zz, torch.zeros_like(zz))).sum(1)
    z_out = torch.where(mask, zsum / wk.sum(1).clamp_min(1e-12), torch.full_like(zsum, float("inf")))
    wc = wk * (im[:, :, 4:5] > 0.99)
    mask_rgb = wc.sum(1) > 0
    rgb_out = (wc * im[:, :, :3]).sum(1) / wc.sum(1).clamp_min(1e-12)
    if erode_rgb > 0:
        k = 2 * erode_rgb - 1
        mask_rgb = mask_rgb & (-F.max_pool2d(-mask.float(), k, 1, k // 2) > 0.5)
    return {"rgb": rgb_out * mask_rgb, "z": z_out, "mask": mask.float(), "mask_rgb": mask_rgb.float()}


@dataclass
class Viewset:
    """Output of :func:`sample_viewset` (V views of B scenes).

    rgb: float [B, V, 3, H, W] in [0, 1]; depth: [B, V, 1, H, W] z-buffer value in [0, 1];
    z: [B, V, 1, H, W] z-depth (world units, camera at distance 1 from the pivot);
    cond_rgb / cond_depth (z-buffer) / mask / mask_rgb: [B, V, C, H, W] conditions used
    (zeros for view 0); cameras: (yaw, pitch) per view, radians; w2c: float64 [V, 4, 4]
    OpenCV world-to-camera; K: float64 [3, 3].
    """
    rgb: torch.Tensor
    depth: torch.Tensor
    z: torch.Tensor
    cond_rgb: torch.Tensor
    cond_depth: torch.Tensor
    mask: torch.Tensor
    mask_rgb: torch.Tensor
    cameras: list[tuple[float, float]]
    w2c: np.ndarray
    K: np.ndarray


@torch.no_grad()
def sample_viewset(first_model: RGBDDiffusionModel, novel_model: NovelViewModel, *, batch_size: int = 1,
                   cameras: Sequence[tuple[float, float]] | None = None, height: int | None = None,
                   width: int | None = None, steps_first: int = 50, steps_novel: int = 50,
                   guidance_scale: float = 1.0, class_labels: torch.Tensor | None = None, fov_deg: float = 45.0,
                   near: float = 0.6, far: float = 5.0, erode_rgb: int = 2, edge_threshold: float = 0.03,
                   diffusion_cfg: DiffusionConfig | None = None,
                   generator: torch.Generator | int | None = None) -> Viewset:
    """IVID autoregressive multi-view sampling (see module docstring).

    Args:
        first_model / novel_model: first-view and novel-view models on the same device.
        cameras: (yaw, pitch) radians per view, IVID look-at cameras at distance 1 around
            the pivot (:func:`pipelines.camera.novel_camera`); default :func:`ivid_grid`
            (27 views). ``cameras[0]`` is generated by ``first_model``.
        steps_first / steps_novel: DDIM steps. guidance_scale / class_labels: CFG for both.
        fov_deg: field of view of all views. near / far: z-buffer range for (de)coding depth.
        erode_rgb / edge_threshold: see :func:`aggregate_views`.
        generator: torch.Generator on the models' device or an int seed.
    Returns:
        :class:`Viewset`. Raises ValueError for an empty camera list or a wrong model kind.
    """
    if first_model.config.kind != FIRST_VIEW or not isinstance(novel_model, NovelViewModel):
        raise ValueError("sample_viewset needs a first-view and a novel-view model")
    cams = list(cameras) if cameras is not None else ivid_grid()
    if not cams:
        raise ValueError("cameras must not be empty")
    device = next(first_model.parameters()).device
    gen = _generator(generator, device)
    h = height or first_model.config.resolution
    w = width or first_model.config.resolution
    K = torch.as_tensor(intrinsics_from_fov(fov_deg, h, w), dtype=torch.float32)
    w2c = np.stack([novel_camera(yaw, pitch).w2c_novel for yaw, pitch in cams])
    kw = dict(batch_size=batch_size, height=h, width=w, guidance_scale=guidance_scale,
              class_labels=class_labels, diffusion_cfg=diffusion_cfg, generator=gen)
    views, conds = [], []
    zeros = torch.zeros(batch_size, 1, h, w, device=device)
    for i in range(len(cams)):
        if i == 0:
            x = ddim_sample(first_model, steps=steps_first, **kw)
            conds.append({"rgb": zeros.expand(-1, 3, -1, -1), "z": zeros, "mask": zeros, "mask_rgb": zeros})
        else:
            prev = from_model_range(torch.stack(views, 1))                  # [B, i, 4, H, W]
            T = torch.as_tensor(np.stack([w2c[i] @ invert_rigid(w2c[j]) for j in range(i)]))
            c = aggregate_views(prev[:, :, :3], zbuffer_to_z(prev[:, :, 3:], near, far), K, T,
                                erode_rgb=erode_rgb, edge_threshold=edge_threshold, near=near, far=far)
            c["z"] = z_to_zbuffer(c["z"], near, far)
            conds.append(c)
            cond = {"cond_rgb": to_model_range(c["rgb"]), "cond_depth": to_model_range(c["z"]),
                    "mask": c["mask"], "mask_rgb": c["mask_rgb"]}
            x = ddim_sample(novel_model, steps=steps_novel, cond=cond, **kw)
        views.append(x)
    out = from_model_range(torch.stack(views, 1))
    st = {k: torch.stack([c[k] for c in conds], 1) for k in ("rgb", "z", "mask", "mask_rgb")}
    return Viewset(rgb=out[:, :, :3], depth=out[:, :, 3:], z=zbuffer_to_z(out[:, :, 3:], near, far),
                   cond_rgb=st["rgb"], cond_depth=st["z"], mask=st["mask"], mask_rgb=st["mask_rgb"],
                   cameras=[tuple(c) for c in cams], w2c=w2c, K=K.double().numpy())


@torch.no_grad()
def sample_poses(model: RGBDDiffusionModel, poses: Sequence[int], *, num_objects: int = 1, steps: int = 50,
                 guidance_scale: float = 1.0, height: int | None = None, width: int | None = None,
                 cross_frame: bool = True, ref_index: int = 0, mode: str = "reference", share_noise: bool = True,
                 diffusion_cfg: DiffusionConfig | None = None,
                 generator: torch.Generator | int | None = None) -> torch.Tensor:
    """MIRAGE: V poses of each of ``num_objects`` objects from a pose-conditioned model.

    The batch is object-major (``[obj0 pose0..poseV-1, obj1 ...]``); with ``cross_frame``
    every view's self-attention reads keys/values of view ``ref_index`` of its object
    (:func:`cross_frame_attention`); ``share_noise`` starts all views of
    an object from the same x_T. Returns float32 [num_objects, V, 4, H, W] in [0, 1].
    Raises ValueError when the model is not class-conditional.
    """
    if not model.config.has_classes:
        raise ValueError("sample_poses needs a pose-conditioned (class_cond != none) model")
    V = len(poses)
    device = next(model.parameters()).device
    gen = _generator(generator, device)
    h = height or model.config.resolution
    w = width or model.config.resolution
    x_T = torch.randn(num_objects, 1 if share_noise else V, 4, h, w, generator=gen, device=device)
    x_T = x_T.expand(num_objects, V, 4, h, w).reshape(num_objects * V, 4, h, w)
    labels = torch.as_tensor(list(poses), device=device).repeat(num_objects)
    kw = dict(batch_size=num_objects * V, height=h, width=w, steps=steps, guidance_scale=guidance_scale,
              class_labels=labels, diffusion_cfg=diffusion_cfg, generator=gen, noise=x_T)
    if cross_frame:
        with cross_frame_attention(model.unet, V, ref_index=ref_index, mode=mode):
            x = ddim_sample(model, **kw)
    else:
        x = ddim_sample(model, **kw)
    return from_model_range(x).reshape(num_objects, V, 4, h, w)


class CrossFrameAttnProcessor(ViewGroupAttnProcessor):
    """Self-attention whose keys/values come from a reference view (MIRAGE, ViewDiff,
    Text2Video-Zero ``CrossFrameAttnProcessor``).

    The batch is read as groups of ``num_views`` consecutive images (one object's views;
    CFG halves are separate groups). ``mode="reference"``: every view attends to the
    reference view's tokens only; ``mode="concat"``: to its own tokens followed by the
    reference's. With ``num_views = 1`` both equal ordinary self-attention (diffusers
    ``AttnProcessor2_0``), which this class mirrors otherwise. Self-attention only
    (``encoder_hidden_states`` must be None). Raises ValueError when the batch is not a
    multiple of ``num_views``.
    """

    def __init__(self, num_views: int, ref_index: int = 0, mode: str = "reference"):
        if mode not in ("reference", "concat") or not 0 <= ref_index < num_views:
            raise ValueError(f"bad cross-frame settings: mode={mode!r}, ref_index={ref_index}, views={num_views}")
        self.num_views, self.ref_index, self.mode = num_views, ref_index, mode

    def _ref(self, t: torch.Tensor) -> torch.Tensor:
        g = t.view(self._check(t.shape[0]), self.num_views, *t.shape[1:])
        ref = g[:, self.ref_index:self.ref_index + 1].expand_as(g).reshape(t.shape)
        return ref if self.mode == "reference" else torch.cat([t, ref], dim=1)

    def regroup(self, q, k, v):
        """Queries per image; keys/values from the reference view (or own + reference)."""
        return q, self._ref(k), self._ref(v)


@contextlib.contextmanager
def cross_frame_attention(unet: torch.nn.Module, num_views: int, ref_index: int = 0,
                          mode: str = "reference") -> Iterator[None]:
    """Temporarily give every diffusers ``Attention`` layer of ``unet`` (``UNet2DModel`` has
    no ``set_attn_processor``) a :class:`CrossFrameAttnProcessor`; restored on exit."""
    layers = [m for m in unet.modules() if isinstance(m, Attention)]
    old = [m.processor for m in layers]
    proc = CrossFrameAttnProcessor(num_views, ref_index, mode)
    for m in layers:
        m.set_processor(proc)
    try:
        yield
    finally:
        for m, p in zip(layers, old):
            m.set_processor(p)
