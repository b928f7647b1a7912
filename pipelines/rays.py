"""Per-pixel camera ray embeddings for posed multi-view diffusion models.

Conventions (DESIGN.md): OpenCV world-to-camera ``w2c = [R t; 0 1]`` (camera x right, y
down, z forward), intrinsics ``K`` in pixels with the centre of pixel (row i, column j) at
``(u, v) = (j, i)`` (strict OpenCV, pixel centres at integer coordinates). The ray of pixel
(i, j) leaves the camera centre ``o = -R^T t`` in the world direction
``d = normalize(R^T K^-1 [j, i, 1]^T)``.

Two 6-channel embeddings:

* :func:`plucker_embedding` -- Plücker coordinates ``(d, o x d)`` of the ray (the moment
  ``m = o x d`` is the same for every point on the ray, so the embedding depends on the ray,
  not on where along it the origin is chosen). Source: Sitzmann et al. 2021, "Light Field
  Networks" (Sec. 3.1, Plücker parameterisation of rays); used as a per-pixel camera
  embedding by ViewDiff-style posed multi-view diffusion (and e.g. CAT3D / RayDiffusion).
* :func:`centre_direction_embedding` -- camera centre (repeated per pixel) and unit world
  ray direction, Viewset Diffusion's 6-channel pose input
  (szymanowiczs/viewset-diffusion ``get_raydir_embedding``, ``preprocess_pose_embeddings``).

Both are pure torch (differentiable, any device); batch over views ``V``.
"""
from __future__ import annotations

import torch

__all__ = ["pixel_rays", "plucker_embedding", "centre_direction_embedding", "ray_embedding",
           "RAY_EMBEDDINGS"]


def _check(K: torch.Tensor, w2c: torch.Tensor, height: int, width: int) -> None:
    if K.ndim != 3 or K.shape[-2:] != (3, 3):
        raise ValueError(f"K must be [V, 3, 3], got {tuple(K.shape)}")
    if w2c.ndim != 3 or w2c.shape[-2:] != (4, 4) or w2c.shape[0] != K.shape[0]:
        raise ValueError(f"w2c must be [V, 4, 4] with V = {K.shape[0]}, got {tuple(w2c.shape)}")
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")


def pixel_rays(K: torch.Tensor, w2c: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """World-space ray origin and unit direction of every pixel centre.

    Args:
        K: float [V, 3, 3] pinhole intrinsics in pixels at ``height x width`` (pixel centres
            at integer coordinates, DESIGN.md); skew allowed.
        w2c: float [V, 4, 4] OpenCV world-to-camera rigid transforms (world units).
        height, width: image size in pixels (>= 1).

    Returns:
        ``(origins, dirs)``, each float [V, 3, H, W] in the dtype of ``w2c`` promoted with
        ``K`` (at least float32): ``origins`` is the camera centre ``-R^T t`` at every pixel
        (world units); ``dirs`` the unit world direction of pixel (i, j),
        ``normalize(R^T K^-1 [j, i, 1])`` (points into the scene: camera-frame z > 0).

    Raises:
        ValueError: bad shapes or size.
    """
    _check(K, w2c, height, width)
    dtype = torch.promote_types(torch.promote_types(K.dtype, w2c.dtype), torch.float32)
    K, w2c = K.to(dtype), w2c.to(w2c.device, dtype)
    dev = w2c.device
    i, j = torch.meshgrid(torch.arange(height, device=dev, dtype=dtype),
                          torch.arange(width, device=dev, dtype=dtype), indexing="ij")
    pix = torch.stack([j, i, torch.ones_like(i)], 0).reshape(3, -1)          # [3, HW]
    cam = torch.linalg.solve(K.to(dev), pix.expand(K.shape[0], 3, -1))         # [V, 3, HW]
    R, t = w2c[:, :3, :3], w2c[:, :3, 3:]
    Rt = R.transpose(-1, -2)
    d = Rt @ cam
    d = d / d.norm(dim=1, keepdim=True)
    o = -(Rt @ t)                                                              # [V, 3, 1]
    V = K.shape[0]
    return (o.expand(V, 3, height * width).reshape(V, 3, height, width),
            d.reshape(V, 3, height, width))


def plucker_embedding(K: torch.Tensor, w2c: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Plücker ray coordinates ``(d, o x d)`` per pixel, float [V, 6, H, W].

    Channels 0-2: unit world ray direction ``d``; channels 3-5: moment ``o x d`` (world units,
    |m| = distance of the ray from the world origin). Arguments, dtype and errors as
    :func:`pixel_rays`. Source: Sitzmann et al. 2021 "Light Field Networks", Sec. 3.1.
    """
    o, d = pixel_rays(K, w2c, height, width)
    return torch.cat([d, torch.cross(o, d, dim=1)], dim=1)


def centre_direction_embedding(K: torch.Tensor, w2c: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Camera centre (channels 0-2, repeated per pixel) and unit world ray direction
    (channels 3-5), float [V, 6, H, W] -- Viewset Diffusion's pose channels. Arguments,
    dtype and errors as :func:`pixel_rays`."""
    o, d = pixel_rays(K, w2c, height, width)
    return torch.cat([o, d], dim=1)


#: name -> embedding function; the ``ray_embedding`` setting of multi-view model configs.
RAY_EMBEDDINGS = {"plucker": plucker_embedding, "centre_direction": centre_direction_embedding}


def ray_embedding(kind: str, K: torch.Tensor, w2c: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Dispatch on ``kind`` (``plucker`` | ``centre_direction``); float [V, 6, H, W].

    Raises:
        ValueError: unknown ``kind`` or bad shapes.
    """
    if kind not in RAY_EMBEDDINGS:
        raise ValueError(f"ray_embedding must be one of {sorted(RAY_EMBEDDINGS)}, got {kind!r}")
    return RAY_EMBEDDINGS[kind](K, w2c, height, width)
