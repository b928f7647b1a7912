"""Checks every reader's output passes before a viewset is accepted (else: quarantine)."""
from __future__ import annotations

import numpy as np
import torch

from pipelines.camera_conventions import rigidity_error
from pipelines.viewsets.types import Viewset, ViewsetError

#: Max ``|R R^T - I| + |det R - 1|`` of an accepted camera (sources store float32 rotations).
RIGIDITY_TOL = 1e-4


def stack_views(tensors: list[torch.Tensor], what: str, names: list[str]) -> torch.Tensor:
    """Stack per-view [C,H,W] tensors; different sizes raise ``inconsistent_views``."""
    shapes = {tuple(t.shape[1:]) for t in tensors}
    if len(shapes) > 1:
        bad = [(n, tuple(t.shape[1:])) for n, t in zip(names, tensors)]
        raise ViewsetError("inconsistent_views", f"{what} sizes differ across views: {bad[:4]}...")
    return torch.stack(tensors)


def validate_viewset(vs: Viewset, min_views: int = 2) -> Viewset:
    """Raise :class:`ViewsetError` unless ``vs`` is a well-formed viewset; returns it.

    Checks: ``too_few_views`` (V < min_views); ``degenerate_camera`` (non-finite K or w2c,
    last rows not ``[0,0,1]`` / ``[0,0,0,1]``, fx or fy <= 0, rotation not orthonormal
    with det +1 within :data:`RIGIDITY_TOL`); ``inconsistent_views`` (shapes of images,
    alpha, depth, K, w2c, names disagree).
    """
    V = vs.images.shape[0] if vs.images.dim() == 4 else -1
    if V < min_views:
        raise ViewsetError("too_few_views", f"{max(V, 0)} views < min_views={min_views} in {vs.path}")
    if vs.images.shape[1] != 3:
        raise ViewsetError("inconsistent_views", f"images must be [V,3,H,W], got {tuple(vs.images.shape)}")
    H, W = vs.hw
    for name, t in (("alpha", vs.alpha), ("depth", vs.depth), ("depth_mask", vs.depth_mask)):
        if t is not None and tuple(t.shape) != (V, 1, H, W):
            raise ViewsetError("inconsistent_views", f"{name} {tuple(t.shape)} != {(V, 1, H, W)}")
    K, w2c = np.asarray(vs.K), np.asarray(vs.w2c)
    if K.shape != (V, 3, 3) or w2c.shape != (V, 4, 4) or len(vs.names) != V:
        raise ViewsetError("inconsistent_views", f"K {K.shape}, w2c {w2c.shape}, {len(vs.names)} names for V={V}")
    for v in range(V):
        n = vs.names[v]
        if not (np.isfinite(K[v]).all() and np.isfinite(w2c[v]).all()):
            raise ViewsetError("degenerate_camera", f"view {n}: non-finite camera")
        if not np.allclose(K[v, 2], [0, 0, 1]) or K[v, 1, 0] != 0 or K[v, 0, 0] <= 0 or K[v, 1, 1] <= 0:
            raise ViewsetError("degenerate_camera", f"view {n}: K is not a pinhole with fx, fy > 0: {K[v].tolist()}")
        if not np.allclose(w2c[v, 3], [0, 0, 0, 1]):
            raise ViewsetError("degenerate_camera", f"view {n}: w2c last row {w2c[v, 3].tolist()}")
        err = float(rigidity_error(w2c[v]))
        if not err <= RIGIDITY_TOL:
            raise ViewsetError("degenerate_camera", f"view {n}: rotation not rigid (|RR^T-I|+|det-1| = {err:.3g})")
    return vs
