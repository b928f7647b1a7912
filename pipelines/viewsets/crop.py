"""Object crops (mask bounding box + context) and resize, updating K exactly.

Box rule after PyTorch3D ``JsonIndexDataset`` (reference/multiview-formats.md section
4.3): the bbox of ``alpha > threshold``, grown by ``context`` (``x -= w c / 2``,
``w *= 1 + c``), optionally squared about its centre, rounded, clamped to the image (no
padding). K: :func:`pipelines.camera_conventions.crop_intrinsics` then
:func:`~pipelines.camera_conventions.resize_intrinsics` with the actual per-axis scales
``out / in``, which is exactly the pixel map of ``torch.nn.functional.interpolate`` with
``align_corners=False`` (bilinear + antialias for colour and alpha, ``nearest-exact`` for
depth so no depth is invented across edges).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.camera_conventions import crop_intrinsics, resize_intrinsics


@dataclass
class CroppedView:
    """One cropped, resized view: image float32 [3,h,w]; alpha/depth [1,h,w] or None;
    K [3,3] float64 centre convention at (h, w); box (x0, y0, w, h) in source pixels (int);
    scale (sx, sy) = output / crop size."""
    image: torch.Tensor
    alpha: torch.Tensor | None
    depth: torch.Tensor | None
    K: np.ndarray
    box: tuple[int, int, int, int]
    scale: tuple[float, float]


def mask_bbox(alpha: torch.Tensor, threshold: float = 0.4) -> tuple[int, int, int, int] | None:
    """Tight box ``(x0, y0, w, h)`` of ``alpha > threshold`` (alpha [1,H,W] or [H,W]); None if empty."""
    m = (alpha.reshape(alpha.shape[-2:]) > threshold)
    if not bool(m.any()):
        return None
    rows, cols = torch.nonzero(m.any(1)).flatten(), torch.nonzero(m.any(0)).flatten()
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    return x0, y0, x1 - x0 + 1, y1 - y0 + 1


def crop_box(bbox, hw: tuple[int, int], context: float = 0.3, square: bool = False) -> tuple[int, int, int, int]:
    """Grow ``bbox`` (x0, y0, w, h) by ``context`` (fraction of its size, split both sides),
    optionally make it square (side = the larger), round, clamp to ``hw`` = (H, W).
    Returns integer (x0, y0, w, h) with w, h >= 1."""
    x, y, w, h = (float(v) for v in bbox)
    cx, cy = x + w / 2, y + h / 2
    w, h = w * (1 + context), h * (1 + context)
    if square:
        w = h = max(w, h)
    H, W = hw
    x0, y0 = max(0, int(round(cx - w / 2))), max(0, int(round(cy - h / 2)))
    x1, y1 = min(W, int(round(cx + w / 2))), min(H, int(round(cy + h / 2)))
    return x0, y0, max(1, x1 - x0), max(1, y1 - y0)


def output_size(crop_hw: tuple[int, int], min_short_side: int = 512) -> tuple[int, int]:
    """Output (h, w): the crop's short side brought down to ``min_short_side`` when larger,
    aspect kept (long side rounded); crops already at or below it keep their size."""
    h, w = crop_hw
    if min(h, w) <= min_short_side:
        return h, w
    s = min_short_side / min(h, w)
    return (min_short_side, max(1, int(round(w * s)))) if h <= w else (max(1, int(round(h * s))), min_short_side)


def crop_view(image: torch.Tensor, K, box, *, alpha: torch.Tensor | None = None,
              depth: torch.Tensor | None = None, min_short_side: int = 512) -> CroppedView:
    """Crop ``box`` (x0, y0, w, h) from one view and resize per :func:`output_size`.

    Args: image [3,H,W] float; alpha/depth [1,H,W] or None; K [3,3] centre convention.
    Returns: :class:`CroppedView` with K updated exactly (``c' = (c - x0 + 0.5) s - 0.5``).
    """
    x0, y0, w, h = (int(v) for v in box)
    oh, ow = output_size((h, w), min_short_side)
    sx, sy = ow / w, oh / h
    Kn = resize_intrinsics(crop_intrinsics(K, x0, y0), sx, sy)

    def rs(t, mode):
        if t is None:
            return None
        c = t[..., y0:y0 + h, x0:x0 + w]
        if (oh, ow) == (h, w):
            return c.clone()
        if mode == "nearest-exact":
            return F.interpolate(c[None], size=(oh, ow), mode=mode)[0]
        return F.interpolate(c[None], size=(oh, ow), mode="bilinear", align_corners=False, antialias=True)[0]
    return CroppedView(rs(image, "bilinear"), rs(alpha, "bilinear"), rs(depth, "nearest-exact"), Kn,
                       (x0, y0, w, h), (sx, sy))


def crop_viewset(vs, *, context: float = 0.3, threshold: float = 0.4, square: bool = False,
                 min_short_side: int = 512) -> list[CroppedView]:
    """Object crop of every view of a :class:`~pipelines.viewsets.types.Viewset`.

    Views without alpha, or with an empty mask, keep the full frame (box = the image).
    Sizes may differ per view (the shard stores ``hw`` per view). Returns V CroppedViews.
    """
    H, W = vs.hw
    out = []
    for v in range(vs.num_views):
        bb = mask_bbox(vs.alpha[v], threshold) if vs.alpha is not None else None
        box = crop_box(bb, (H, W), context, square) if bb is not None else (0, 0, W, H)
        out.append(crop_view(vs.images[v], vs.K[v], box, alpha=None if vs.alpha is None else vs.alpha[v],
                             depth=None if vs.depth is None else vs.depth[v], min_short_side=min_short_side))
    return out
