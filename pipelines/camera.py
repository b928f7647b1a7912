"""Cameras: pinhole intrinsics, the OpenCV/OpenGL conventions, IVID's look-at novel views.

Conventions (DESIGN.md): the public geometry API is OpenCV -- camera x right, y down,
z forward; ``K`` in pixels with the centre of pixel (row i, column j) at (u, v) = (j, i);
extrinsics are 4x4 world-to-camera matrices; depth is z-depth.

IVID (Xiang et al., ICCV 2023, Sec. 3.2 and JeffreyXiang/ivid ``datasets/base.py``,
``rgbd_3d/utils.py``) builds cameras with ``glm.lookAt`` (OpenGL: x right, y up, camera
looking down -z). That is the one place another convention enters viewforge, and it is
converted here, once: ``w2c_opencv = diag(1, -1, -1, 1) @ w2c_opengl`` (flip the camera's
y and z axes; the world frame is shared and is y-up as in IVID).

IVID's scene layout: the source camera sits at world (0, 0, 1) and looks at the origin
(the pivot, one unit ahead) with up +y; a novel camera sits at
``eye = r (cos(pitch) sin(yaw), sin(pitch), cos(pitch) cos(yaw))`` and looks at a jittered
centre, up +y.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch

#: Left-multiply an OpenGL world-to-camera matrix to get the OpenCV one (and back: it is
#: its own inverse). Flips the camera y (up -> down) and z (backward -> forward) axes.
OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])

#: IVID's source camera: eye (0, 0, 1), looking at the world origin, up +y.
SOURCE_EYE = (0.0, 0.0, 1.0)


def intrinsics_from_fov(fov_deg: float, height: int, width: int) -> np.ndarray:
    """Pinhole intrinsics from a field of view.

    The field of view spans the **shorter** image side (``min(height, width)`` pixels), so a
    square centre crop of a non-square image keeps IVID's square-image intrinsics (IVID:
    ``focal = 0.5 / tan(fov / 2)`` in units of the (square) image side, ``rgbd_3d/utils.py``
    ``unproject``). Square pixels, no skew, principal point at the image centre:
    ``fx = fy = min(H, W) / (2 tan(fov / 2))``, ``cx = (W - 1) / 2``, ``cy = (H - 1) / 2``
    (pixel centres at integer coordinates, DESIGN.md).

    Args:
        fov_deg: field of view in degrees, in (0, 180).
        height, width: image size in pixels, >= 1.

    Returns:
        float64 array [3, 3].

    Raises:
        ValueError: fov outside (0, 180) or a non-positive size.
    """
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"fov_deg must be in (0, 180), got {fov_deg}")
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    f = min(height, width) / (2.0 * math.tan(math.radians(fov_deg) / 2.0))
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def look_at_opengl(eye, center, up=(0.0, 1.0, 0.0)) -> np.ndarray:
    """OpenGL world-to-camera ("view", "modelview") matrix, identical to ``glm.lookAt``.

    Args:
        eye, center, up: 3-vectors (world units); ``center != eye`` and ``up`` not parallel
            to the viewing direction.

    Returns:
        float64 [4, 4]; the camera looks down its -z axis, y up.

    Raises:
        ValueError: degenerate eye/center/up.
    """
    eye, center, up = (np.asarray(v, dtype=np.float64).reshape(3) for v in (eye, center, up))
    f = center - eye
    s = np.cross(f, up)
    if np.linalg.norm(f) == 0 or np.linalg.norm(s) == 0:
        raise ValueError("look_at: eye == center or up parallel to the viewing direction")
    f = f / np.linalg.norm(f)
    s = s / np.linalg.norm(s)
    u = np.cross(s, f)
    m = np.eye(4)
    m[0, :3], m[1, :3], m[2, :3] = s, u, -f
    m[:3, 3] = -m[:3, :3] @ eye
    return m


def opengl_to_opencv(w2c_gl: np.ndarray) -> np.ndarray:
    """Convert an OpenGL world-to-camera 4x4 to OpenCV (same world frame). Float64 [4, 4]."""
    return OPENGL_TO_OPENCV @ np.asarray(w2c_gl, dtype=np.float64)


def look_at_opencv(eye, center, up=(0.0, 1.0, 0.0)) -> np.ndarray:
    """OpenCV world-to-camera 4x4 of IVID's ``glm.lookAt(eye, center, up)`` camera (float64)."""
    return opengl_to_opencv(look_at_opengl(eye, center, up))


def invert_rigid(T: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Inverse of rigid 4x4 transform(s) ``[R t; 0 1]`` -> ``[R^T, -R^T t; 0 1]``.

    Args:
        T: [..., 4, 4] numpy array or torch tensor (any float dtype).
    Returns:
        Same type, shape and dtype. Exact inverse only for orthonormal ``R``.
    """
    if isinstance(T, torch.Tensor):
        R = T[..., :3, :3].transpose(-1, -2)
        t = T[..., :3, 3:]
        # Explicit products (no matmul) keep each matrix's result independent of the batch.
        mt = -(R[..., :, 0:1] * t[..., 0:1, :] + R[..., :, 1:2] * t[..., 1:2, :]
               + R[..., :, 2:3] * t[..., 2:3, :])
        out = torch.zeros_like(T)
        out[..., :3, :3] = R
        out[..., :3, 3:] = mt
        out[..., 3, 3] = 1.0
        return out
    T = np.asarray(T)
    out = np.zeros_like(T)
    R = np.swapaxes(T[..., :3, :3], -1, -2)
    out[..., :3, :3] = R
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", R, T[..., :3, 3])
    out[..., 3, 3] = 1.0
    return out


def seed_for(key: str, view: int, seed: int, stream: str = "") -> int:
    """Stable 63-bit seed for one (sample key, view index, global seed[, stream]).

    ``int(sha256(f"{stream}|{key}|{view}|{seed}")[:8 bytes]) >> 1`` -- independent of the
    Python process (never ``hash()``), of the platform and of batch composition. ``stream``
    separates the random streams of one pair (``"camera"``, ``"noise"``, ``"blur"``,
    ``"erode"``) so that adding a draw to one stream never shifts another.

    Returns:
        int in [0, 2**63), valid for ``numpy.random.default_rng`` and
        ``torch.Generator.manual_seed``.
    """
    h = hashlib.sha256(f"{stream}|{key}|{int(view)}|{int(seed)}".encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") >> 1


@dataclass(frozen=True)
class NovelCamera:
    """One sampled novel view (IVID ``WarpDataset.__getitem__``).

    Attributes:
        yaw, pitch: radians (IVID ``theta``, ``phi``); radius: eye distance from the world
            origin (world units); center: look-at centre, 3-tuple.
        eye: novel camera position in world coordinates, 3-tuple.
        w2c_src, w2c_novel: OpenCV world-to-camera [4, 4] float64 of the source camera
            (IVID's fixed ``lookAt((0,0,1), 0, +y)``) and the novel camera.
        src_to_tgt: [4, 4] float64, source-camera -> novel-camera coordinates
            (``w2c_novel @ inv(w2c_src)``), the ``src_to_tgt`` that warping takes.
    """

    yaw: float
    pitch: float
    radius: float
    center: tuple[float, float, float]
    eye: tuple[float, float, float]
    w2c_src: np.ndarray
    w2c_novel: np.ndarray
    src_to_tgt: np.ndarray

    def to_json(self) -> dict:
        """JSON-able dict (floats and nested lists)."""
        return {
            "yaw": float(self.yaw), "pitch": float(self.pitch), "radius": float(self.radius),
            "center": [float(c) for c in self.center], "eye": [float(c) for c in self.eye],
            "w2c_src": np.asarray(self.w2c_src).tolist(),
            "w2c_novel": np.asarray(self.w2c_novel).tolist(),
            "src_to_tgt": np.asarray(self.src_to_tgt).tolist(),
        }


def novel_camera(yaw: float, pitch: float, radius: float = 1.0,
                 center=(0.0, 0.0, 0.0)) -> NovelCamera:
    """The deterministic part of IVID's novel view: look-at camera from yaw/pitch/radius.

    ``eye = r (cos(pitch) sin(yaw), sin(pitch), cos(pitch) cos(yaw))`` looking at ``center``
    with up +y (IVID ``datasets/base.py``). ``yaw = pitch = 0, r = 1, center = 0`` gives
    the source camera (``src_to_tgt`` = identity).

    Returns:
        :class:`NovelCamera`. Raises ValueError for a degenerate look-at (eye == center,
        or viewing direction parallel to +y).
    """
    eye = (radius * math.cos(pitch) * math.sin(yaw), radius * math.sin(pitch),
           radius * math.cos(pitch) * math.cos(yaw))
    center = tuple(float(c) for c in center)
    w2c_src = look_at_opencv(SOURCE_EYE, (0.0, 0.0, 0.0))
    w2c_novel = look_at_opencv(eye, center)
    return NovelCamera(float(yaw), float(pitch), float(radius), center, eye,
                       w2c_src, w2c_novel, w2c_novel @ invert_rigid(w2c_src))


def sample_novel_camera(key: str, seed: int, view: int = 0, *, yaw_std: float = 0.15,
                        pitch_std: float = 0.15, radius_std: float = 0.1,
                        center_std: float = 0.05, radius_mean: float = 1.0) -> NovelCamera:
    """Sample IVID's novel camera for (sample key, view index, global seed).

    IVID (``datasets/base.py`` ``WarpDataset``): ``yaw ~ N(0, yaw_std^2)``,
    ``pitch ~ N(0, pitch_std^2)`` (radians), ``radius = radius_mean + N(0, radius_std^2)``,
    look-at ``center ~ N(0, center_std^2)`` per axis, drawn in that order from
    ``numpy.random.default_rng(seed_for(key, view, seed, "camera"))``.

    Args:
        key: sample key (content hash); view: view index >= 0; seed: global seed.
        yaw_std, pitch_std: radians, >= 0; radius_std, center_std: world units, >= 0.

    Returns:
        :class:`NovelCamera` (deterministic in its arguments).

    Raises:
        ValueError: a negative std or view.
    """
    if min(yaw_std, pitch_std, radius_std, center_std) < 0 or view < 0:
        raise ValueError("standard deviations and view must be >= 0")
    g = np.random.default_rng(seed_for(key, view, seed, "camera")).standard_normal(6)
    return novel_camera(float(g[0] * yaw_std), float(g[1] * pitch_std),
                        float(radius_mean + g[2] * radius_std), tuple(g[3:6] * center_std))
