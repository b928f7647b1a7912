"""The in-memory viewset, the lazy sequence descriptor, and the quarantine error."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

#: Quarantine reasons a reader or :func:`pipelines.viewsets.validate.validate_viewset` gives.
REASONS = (
    "missing_files",        # a file the format requires is absent (annotations, image, pose, ...)
    "unreadable_image",     # an image / mask / depth file exists but cannot be decoded
    "malformed_metadata",   # annotation / camera text or JSON that does not parse
    "degenerate_camera",    # non-finite, non-orthonormal R, det != +1, fx/fy <= 0
    "too_few_views",        # fewer than ``min_views`` views
    "inconsistent_views",   # views of different sizes, or image/mask/depth sizes disagree
    "unsupported",          # a valid source feature viewforge does not ingest (distortion, ...)
)


class ViewsetError(Exception):
    """A sequence that cannot be ingested; the stage quarantines it with ``reason``.

    Attributes:
        reason: one of :data:`REASONS` (machine-readable, for the quarantine table).
        detail: human-readable explanation naming the file / view at fault.
    """

    def __init__(self, reason: str, detail: str = ""):
        if reason not in REASONS:
            raise ValueError(f"unknown ViewsetError reason {reason!r}; use one of {REASONS}")
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass
class Viewset:
    """One sequence's views exactly as the source holds them (before crop, resize, normalise).

    Attributes:
        images: float32 [V, 3, H, W] in [0, 1], straight (un-composited) RGB.
        K: float64 numpy [V, 3, 3] pixel intrinsics, viewforge's centre convention (pixel
            centres at integer coordinates).
        w2c: float64 numpy [V, 4, 4] OpenCV world-to-camera, in the source's world frame.
        names: V view file names (relative to ``path``), in the source's order.
        alpha: float32 [V, 1, H, W] in [0, 1] soft foreground, or None.
        depth: float32 [V, 1, H, W] z-depth in the source's world units, 0 = invalid; or None.
        depth_mask: bool [V, 1, H, W] (CO3D ``depth_masks``: multi-view consistent), or None.
        format: reader name; path: the sequence directory given to ``load_viewset``.
        frame_numbers: V ints (CO3D ``frame_number``, ring index, file number), or None.
        meta: JSON-able dict: ``source_pixel_convention``, ``mask_source``, ``background``,
            ``category``/``sequence``/``uid`` where known, and format-specific extras
            (CO3D ``eval_batches``, ``split``; SyncDreamer ``ring``; ...).
    """

    images: torch.Tensor
    K: np.ndarray
    w2c: np.ndarray
    names: list[str]
    alpha: torch.Tensor | None = None
    depth: torch.Tensor | None = None
    depth_mask: torch.Tensor | None = None
    format: str = ""
    path: str = ""
    frame_numbers: list[int] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_views(self) -> int:
        return int(self.images.shape[0])

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])


@dataclass(frozen=True)
class SequenceRef:
    """A lightweight descriptor that ``list_sequences`` yields (no pixels loaded).

    Attributes:
        id: stable key ``"{dataset}/{category}/{sequence}"`` (or ``"{dataset}/{sequence}"``).
        path: the directory to pass to ``load_viewset(path, format, **options)``.
        format: reader name.
        num_views: frame count the metadata announces (None if unknown without decoding).
        split: the source's split for this sequence where it has set lists
            (``"train"``, ``"val"``, ``"test"``, or several joined by ``"+"``), else None.
        category: source category where the format has one, else None.
        options: extra ``load_viewset`` options this sequence needs (e.g. CO3D ``subset``).
    """

    id: str
    path: str
    format: str
    num_views: int | None = None
    split: str | None = None
    category: str | None = None
    options: tuple[tuple[str, Any], ...] = ()

    def load_options(self) -> dict[str, Any]:
        return dict(self.options)
