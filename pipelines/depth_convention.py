"""IVID's depth convention: relative disparity -> z-depth, and the stored uint16 z-buffer.

Follows JeffreyXiang/ivid ``datasets/base.py`` (``get_file``): the estimator's relative
disparity ``d`` is scaled so that its maximum is ``1/near`` (IVID only rescales when the
maximum exceeds ``1/near``; a relative estimator has no absolute scale, so we always
normalise the maximum to ``1/near``), clamped to ``>= min_disparity``, and ``z = 1/d``.
The stored form is IVID's ``z_buffer`` value ``v = (d - 1/near) / (1/far - 1/near)``
clipped to [0, 1], quantised to uint16.
"""
from __future__ import annotations

import numpy as np
import torch

UINT16_MAX = 65535


def normalize_disparity(disparity: torch.Tensor, near: float = 0.5,
                        min_disparity: float = 1e-3) -> torch.Tensor:
    """Scale relative disparity per image so its max is ``1/near``; clamp to ``min_disparity``.

    Args:
        disparity: float [B,1,H,W] or [1,H,W] or [H,W], relative (larger = closer), any scale.
        near: nearest z-depth after scaling (IVID: 0.5).
        min_disparity: lower clamp (IVID: 1e-3), so ``z <= 1/min_disparity``.

    Returns:
        Disparity of the same shape, float32, in ``[min_disparity, 1/near]``. Non-finite
        inputs become ``min_disparity`` (farthest).
    """
    d = torch.nan_to_num(disparity.float(), nan=0.0, posinf=0.0, neginf=0.0)
    flat = d.reshape(d.shape[0], -1) if d.dim() == 4 else d.reshape(1, -1)
    mx = flat.amax(dim=1).clamp_min(1e-12)
    shape = (-1,) + (1,) * (d.dim() - 1) if d.dim() == 4 else (1,) * d.dim()
    d = d / (mx.reshape(shape) * near)
    return d.clamp_min(min_disparity)


def disparity_to_depth(disparity: torch.Tensor, near: float = 0.5,
                       min_disparity: float = 1e-3) -> torch.Tensor:
    """z-depth ``1/d`` of :func:`normalize_disparity` (same shape, float32, in [near, 1/min_disparity])."""
    return 1.0 / normalize_disparity(disparity, near, min_disparity)


def encode_zbuffer(depth: np.ndarray | torch.Tensor, near: float = 0.5, far: float = 100.0) -> np.ndarray:
    """IVID z-buffer encoding of z-depth as uint16.

    ``v = (1/z - 1/near) / (1/far - 1/near)`` clipped to [0, 1] (0 at ``near``, 1 at
    ``far`` and beyond, invalid depth -> 1), then ``round(v * 65535)``.

    Args:
        depth: z-depth, any shape, float.
    Returns:
        uint16 array of the same shape.
    """
    z = depth.detach().cpu().numpy() if isinstance(depth, torch.Tensor) else np.asarray(depth)
    z = z.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(np.isfinite(z) & (z > 0), 1.0 / z, 0.0)
    v = np.clip((d - 1.0 / near) / (1.0 / far - 1.0 / near), 0.0, 1.0)
    return np.round(v * UINT16_MAX).astype(np.uint16)


def decode_zbuffer(v: np.ndarray, near: float = 0.5, far: float = 100.0) -> np.ndarray:
    """Inverse of :func:`encode_zbuffer`: uint16 -> float32 z-depth in [near, far].

    Exact up to the uint16 quantisation of disparity (step ``(1/near - 1/far)/65535``).
    """
    v = np.asarray(v).astype(np.float64) / UINT16_MAX
    d = 1.0 / near + v * (1.0 / far - 1.0 / near)
    return (1.0 / d).astype(np.float32)


DEPTH_ENCODING_NAME = "ivid_zbuffer_uint16"


def depth_encoding(near: float, far: float) -> dict:
    """The ``camera["depth_encoding"]`` entry stored with every uint16 z-buffer depth PNG.

    A stored value ``v`` (uint16) decodes to z-depth with ``decode_zbuffer(v, near, far)``;
    ``v/65535`` is IVID's z-buffer value in [0, 1] (0 at ``near``, 1 at ``far`` and beyond
    or invalid).
    """
    return {"name": DEPTH_ENCODING_NAME, "near": float(near), "far": float(far)}
