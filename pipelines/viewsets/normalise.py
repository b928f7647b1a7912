"""Canonical object-centred world per sequence (+z up), stored as a similarity transform,
and the model-specific normalisations adapters apply on top of it.

Rules (reference/multiview-formats.md sections 1.3, 2.1, 3.3, 6.1):

* **up** = the normal of the plane through the camera centres (ViewDiff
  ``CO3DDataset.recenter_sequences``: SVD, least-variance direction) with its **sign fixed**
  so that it agrees with the cameras' mean image-up direction (``-y_cam`` in the world,
  the rule Viewset Diffusion uses for its y axis); when the centres do not span a plane
  (fewer than 3 views, or collinear) or the normal is nearly perpendicular to the mean
  image-up (``|cos| < 0.3``), up = the mean image-up itself. Never left to an SVD's sign.
* **x** = the direction from the origin to camera 0, projected onto the ground plane
  (camera 0 sits at azimuth 0, as SyncDreamer's ring view 000 does).
* **origin** = the centre of the object points' bounding box in the rotated frame (points:
  depth unprojected inside the mask, or a point cloud), else the least-squares point
  closest to all optical axes (the cameras look at the object).
* **scale** = 1 / (max side of that bounding box) (the object fits a unit box, as in
  SyncDreamer's ``normalize_scene``), else 1 (source units).

A :class:`Similarity` maps ``p_c = s R p + t``. Depths, translations and camera distances
scale by ``s``; K is unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipelines.camera_conventions import camera_centres

#: canonical (+z up) -> Viewset Diffusion's +y up: (x, y, z) -> (x, z, -y), det +1.
Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


@dataclass(frozen=True)
class Similarity:
    """``p' = scale * R @ p + t`` (scale > 0, R a rotation); float64."""
    scale: float
    R: np.ndarray
    t: np.ndarray

    @staticmethod
    def identity() -> "Similarity":
        return Similarity(1.0, np.eye(3), np.zeros(3))

    def matrix(self) -> np.ndarray:
        """4x4 ``[[s R, t], [0, 1]]`` (what ``meta.json`` stores as ``world_to_canonical``)."""
        M = np.eye(4)
        M[:3, :3], M[:3, 3] = self.scale * self.R, self.t
        return M

    @staticmethod
    def from_matrix(M) -> "Similarity":
        M = np.asarray(M, dtype=np.float64)
        s = float(np.cbrt(np.linalg.det(M[:3, :3])))
        return Similarity(s, M[:3, :3] / s, M[:3, 3].copy())

    def apply_points(self, P) -> np.ndarray:
        """[..., 3] -> [..., 3]."""
        return self.scale * (np.asarray(P, dtype=np.float64) @ self.R.T) + self.t

    def inverse(self) -> "Similarity":
        return Similarity(1.0 / self.scale, self.R.T, -(self.R.T @ self.t) / self.scale)

    def then(self, other: "Similarity") -> "Similarity":
        """``other`` applied after ``self``."""
        return Similarity(self.scale * other.scale, other.R @ self.R, other.scale * (other.R @ self.t) + other.t)

    def apply_w2c(self, w2c) -> np.ndarray:
        """World-to-camera [..., 4, 4] in the new world, still rigid: camera coordinates are
        scaled by ``s`` too (``R' = R_c R^T``, ``t' = s t_c - R_c R^T t``), so z-depths must
        be multiplied by ``scale`` and K is unchanged."""
        w2c = np.asarray(w2c, dtype=np.float64)
        out = np.array(w2c, copy=True)
        Rn = w2c[..., :3, :3] @ self.R.T
        out[..., :3, :3] = Rn
        out[..., :3, 3] = self.scale * w2c[..., :3, 3] - Rn @ self.t
        return out

    def to_json(self) -> dict:
        return {"scale": self.scale, "R": self.R.tolist(), "t": self.t.tolist(), "matrix": self.matrix().tolist()}


@dataclass(frozen=True)
class CanonicalFrame:
    """world -> canonical similarity, the object's canonical AABB ``[2, 3]`` (min, max) or
    None, and the rules that made it (``up``, ``origin``, ``scale``), for ``meta.json``."""
    world_to_canonical: Similarity
    bbox: np.ndarray | None
    rule: dict

    def to_json(self) -> dict:
        return {"world_to_canonical": self.world_to_canonical.to_json(), "up_axis": "+z",
                "bbox_canonical": None if self.bbox is None else self.bbox.tolist(), "rule": self.rule}


def object_points(w2c, K, depth: torch.Tensor, alpha: torch.Tensor | None = None, *,
                  alpha_threshold: float = 0.5, depth_mask: torch.Tensor | None = None,
                  max_points: int = 50000) -> np.ndarray:
    """World points of valid depth inside the foreground: float64 [N, 3].

    Args: w2c [V,4,4], K [V,3,3] (centre convention); depth [V,1,H,W] z (0 = invalid);
        alpha [V,1,H,W] (None: all pixels); depth_mask bool [V,1,H,W] or None.
        max_points: deterministic stride subsampling above this many.
    """
    w2c, K = np.asarray(w2c, np.float64), np.asarray(K, np.float64)
    z = depth[:, 0].double().numpy()
    ok = np.isfinite(z) & (z > 0)
    if alpha is not None:
        ok &= alpha[:, 0].numpy() > alpha_threshold
    if depth_mask is not None:
        ok &= depth_mask[:, 0].numpy().astype(bool)
    pts = []
    for v in range(len(z)):
        i, j = np.nonzero(ok[v])
        zz = z[v, i, j]
        y = (i - K[v, 1, 2]) / K[v, 1, 1]
        x = (j - K[v, 0, 2] - K[v, 0, 1] * y) / K[v, 0, 0]
        Xc = np.stack([x * zz, y * zz, zz], -1)
        R, t = w2c[v, :3, :3], w2c[v, :3, 3]
        pts.append((Xc - t) @ R)                  # R^T (Xc - t)
    P = np.concatenate(pts) if pts else np.zeros((0, 3))
    if len(P) > max_points:
        P = P[:: int(np.ceil(len(P) / max_points))]
    return P


def _axes_closest_point(w2c) -> np.ndarray:
    C = camera_centres(w2c)
    d = np.asarray(w2c)[:, 2, :3]               # optical axes in the world
    A = np.zeros((3, 3)); b = np.zeros(3)
    for c, di in zip(C, d):
        P = np.eye(3) - np.outer(di, di)
        A += P; b += P @ c
    return np.linalg.lstsq(A, b, rcond=None)[0]


def canonical_frame(w2c, points=None, *, bbox_percentile: float = 0.0) -> CanonicalFrame:
    """The canonical world of one sequence (rules in the module docstring).

    Args:
        w2c: [V, 4, 4] OpenCV world-to-camera of the sequence.
        points: optional [N, 3] object points in the source world (:func:`object_points`
            or a point cloud); without them the origin is the axes' closest point, the
            scale 1 and ``bbox`` None.
        bbox_percentile: trim this percentage at each end per axis (robust AABB), 0 = exact.
    Returns: :class:`CanonicalFrame`. Raises ValueError for fewer than 1 camera.
    """
    w2c = np.asarray(w2c, dtype=np.float64)
    if len(w2c) < 1:
        raise ValueError("need at least one camera")
    C = camera_centres(w2c)
    img_up = -w2c[:, 1, :3].mean(0)
    img_up /= np.linalg.norm(img_up)
    up, up_rule = img_up, "mean_camera_up"
    if len(C) >= 3:
        _, sv, Vt = np.linalg.svd(C - C.mean(0))
        n = Vt[2]
        if sv[1] > 1e-6 * max(sv[0], 1e-12) and abs(n @ img_up) >= 0.3:
            up, up_rule = (n if n @ img_up > 0 else -n), "camera_plane_normal_sign_by_mean_camera_up"
    have_pts = points is not None and len(points) > 0
    origin0 = np.asarray(points, np.float64).mean(0) if have_pts else _axes_closest_point(w2c)
    x = C[0] - origin0
    x = x - (x @ up) * up
    if np.linalg.norm(x) < 1e-9:                       # camera 0 straight above: use its x axis
        x = w2c[0, 0, :3] - (w2c[0, 0, :3] @ up) * up
    x /= np.linalg.norm(x)
    R = np.stack([x, np.cross(up, x), up])
    if have_pts:
        Pr = np.asarray(points, np.float64) @ R.T
        lo, hi = (np.percentile(Pr, bbox_percentile, 0), np.percentile(Pr, 100 - bbox_percentile, 0)) \
            if bbox_percentile > 0 else (Pr.min(0), Pr.max(0))
        centre, side = (lo + hi) / 2, float((hi - lo).max())
        s = 1.0 / side if side > 0 else 1.0
        sim = Similarity(s, R, -s * centre)
        bbox = np.stack([s * (lo - centre), s * (hi - centre)])
        rule = {"up": up_rule, "origin": "points_bbox_centre", "scale": "unit_max_side", "x": "camera0_azimuth0",
                "bbox_percentile": bbox_percentile}
    else:
        sim = Similarity(1.0, R, -(R @ origin0))
        bbox = None
        rule = {"up": up_rule, "origin": "optical_axes_closest_point", "scale": "source_units", "x": "camera0_azimuth0"}
    return CanonicalFrame(sim, bbox, rule)


# ---------------------------------------------------------------- model normalisations (from canonical)
def viewdiff_normalisation(bbox) -> Similarity:
    """ViewDiff: AABB centre to the origin, scale ``2 / max side`` -> object in [-1, 1]^3,
    +z up (``CO3DDataset.recenter_sequences``). bbox [2, 3] canonical."""
    lo, hi = np.asarray(bbox, np.float64)
    s = 2.0 / float((hi - lo).max())
    return Similarity(s, np.eye(3), -s * (lo + hi) / 2)


def syncdreamer_normalisation(bbox) -> Similarity:
    """SyncDreamer / Blender ``normalize_scene``: AABB max side 1, centred at the origin,
    +z up (the rig's cameras then sit at distance 1.5: :mod:`pipelines.viewsets.ring`)."""
    lo, hi = np.asarray(bbox, np.float64)
    s = 1.0 / float((hi - lo).max())
    return Similarity(s, np.eye(3), -s * (lo + hi) / 2)


def viewset_diffusion_normalisation(points, extent: float = 0.57) -> Similarity:
    """Viewset Diffusion (``data_manager/co3d_normalisation.py::normalize_sequence``):
    centre of mass to the origin, +y up (canonical z -> y, :data:`Z_UP_TO_Y_UP`), the
    y-extent centred, scaled so ``max |p| = extent`` (0.57 = 1.2 * 0.95 / 2). ``max |p|``
    is taken per coordinate (the points fit the cube of half-side ``extent``)
    **[unverified: the reference does not say whether it is the norm or the coordinate]**.
    points [N, 3] canonical."""
    P = np.asarray(points, np.float64)
    Q = (P - P.mean(0)) @ Z_UP_TO_Y_UP.T
    dy = -(Q[:, 1].min() + Q[:, 1].max()) / 2
    Q[:, 1] += dy
    s = extent / float(np.abs(Q).max())
    t = s * (-(Z_UP_TO_Y_UP @ P.mean(0)) + np.array([0.0, dy, 0.0]))
    return Similarity(s, Z_UP_TO_Y_UP.copy(), t)
