"""SyncDreamer's camera rig: the fixed 16-view ring at 30 degrees elevation (``camera-16.pkl``).

Source: liuyuan-pal/SyncDreamer@cc373c8 ``blender_script.py`` (camera at
``d (cos az cos el, sin az cos el, sin el)``, TRACK_TO the origin with world +z up, lens
35 mm on a 32 mm sensor at 256 px -> f = 280 px, c = 128 px in the corner convention) and
``meta_info/camera-16.pkl`` (5-tuple ``[K, azimuths, elevations, distances, poses]``,
poses OpenCV w2c [16, 3, 4]); reference/multiview-formats.md sections 2.1-2.2.
"""
from __future__ import annotations

import numpy as np

from pipelines.camera_conventions import corner_to_centre

RING_NAME = "fixed16@30"


def look_at_origin_w2c(centres: np.ndarray, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """OpenCV w2c of cameras at ``centres`` [N, 3] looking at the origin, image-up towards ``up``.

    ``z = -C/|C|``, ``x = normalize(z x up)``, ``y = z x x``, ``R = [x; y; z]`` (rows),
    ``t = -R C`` (Blender's TRACK_TO with up axis Y, then Blender -> OpenCV; reference 2.2).
    Returns float64 [N, 4, 4]. Raises ValueError when a centre is on the up axis.
    """
    C = np.asarray(centres, dtype=np.float64).reshape(-1, 3)
    z = -C / np.linalg.norm(C, axis=-1, keepdims=True)
    x = np.cross(z, np.asarray(up, dtype=np.float64))
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    if np.any(n < 1e-12):
        raise ValueError("camera on the up axis: look-at is undefined")
    x = x / n
    y = np.cross(z, x)
    w2c = np.tile(np.eye(4), (len(C), 1, 1))
    w2c[:, :3, :3] = np.stack([x, y, z], axis=1)
    w2c[:, :3, 3] = -np.einsum("nij,nj->ni", w2c[:, :3, :3], C)
    return w2c


def syncdreamer_ring(n: int = 16, elevation_deg: float = 30.0, distance: float = 1.5,
                     image_size: int = 256, focal_px_at_256: float = 280.0):
    """The ``camera-16.pkl`` 5-tuple, recomputed: ``[K, azimuths, elevations, distances, poses]``.

    Azimuths ``2 pi i / n`` (rad), elevations ``elevation_deg`` (rad, positive up), distances
    ``distance``; K **corner** convention at ``image_size`` (``f = 280 s``, ``c = 128 s``,
    ``s = image_size / 256``) as SyncDreamer stores it; poses OpenCV w2c float64 [n, 3, 4].
    Matches the published pickle to 1.1e-7 (tests/test_viewsets_ring.py).
    """
    az = 2.0 * np.pi * np.arange(n) / n
    el = np.full(n, np.deg2rad(elevation_deg))
    d = np.full(n, float(distance))
    C = d[:, None] * np.stack([np.cos(az) * np.cos(el), np.sin(az) * np.cos(el), np.sin(el)], -1)
    s = image_size / 256.0
    K = np.array([[focal_px_at_256 * s, 0.0, 128.0 * s], [0.0, focal_px_at_256 * s, 128.0 * s], [0.0, 0.0, 1.0]])
    return [K, az, el, d, look_at_origin_w2c(C)[:, :3, :]]


def ring_cameras(n: int = 16, elevation_deg: float = 30.0, distance: float = 1.5,
                 image_hw: tuple[int, int] = (256, 256), focal_px_at_256: float = 280.0):
    """The ring in viewforge's convention: (w2c float64 [n, 4, 4], K centre convention [n, 3, 3]).

    Square renders only (SyncDreamer renders 256x256); ``image_hw`` rescales K exactly.
    Raises ValueError for a non-square size.
    """
    H, W = image_hw
    if H != W:
        raise ValueError(f"SyncDreamer renders are square, got {H}x{W}")
    K, _, _, _, poses = syncdreamer_ring(n, elevation_deg, distance, W, focal_px_at_256)
    w2c = np.tile(np.eye(4), (n, 1, 1))
    w2c[:, :3, :] = poses
    return w2c, np.tile(corner_to_centre(K), (n, 1, 1))
