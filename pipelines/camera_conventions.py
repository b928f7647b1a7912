"""Camera conventions of posed multi-view sources, each conversion written once.

viewforge's convention (DESIGN.md "Conventions"): OpenCV world-to-camera ``w2c`` 4x4
(``x_cam = R x_world + t``; camera x right, y down, z forward), pixel intrinsics ``K`` with
the centre of pixel (row i, column j) at (u, v) = (j, i) -- the **centre** convention.
Every function here is float64 numpy, batched over any leading dims ``[..., 3, 3]`` /
``[..., 4, 4]`` (torch tensors are accepted and converted to numpy).

Other conventions met at ingest (facts from ``reference/multiview-formats.md`` section 0
and 4.2, which cites the code they were read from):

* **corner** pixel convention (Blender, COLMAP, SRN, nerfstudio / instant-ngp, PyTorch3D's
  ``opencv_from_cameras_projection`` output): pixel (i, j) has its centre at
  (j + 0.5, i + 0.5), so ``c_centre = c_corner - 0.5``.
* **PyTorch3D** cameras (CO3D annotations, Viewset Diffusion): row-vector
  ``X_cam = X_world @ R + T``, camera x left, y up, z forward; intrinsics in NDC
  (``ndc_isotropic``: both axes scaled by ``min(H, W) / 2``; legacy
  ``ndc_norm_image_bounds``: x by ``W / 2``, y by ``H / 2``), +x left, +y up.
* **OpenGL / Blender** camera-to-world (nerfstudio ``transform_matrix``, Blender
  ``matrix_world``, MVDream): camera x right, y up, z backward.
"""
from __future__ import annotations

import numpy as np

#: Flip of the camera x and y axes: PyTorch3D camera (x left, y up) <-> OpenCV (x right,
#: y down). Its own inverse.
FLIP_XY = np.diag([-1.0, -1.0, 1.0])
#: Flip of the camera y and z axes: OpenGL/Blender camera (y up, z back) <-> OpenCV.
FLIP_YZ = np.diag([1.0, -1.0, -1.0])
#: ``c_centre = c_corner - PIXEL_CORNER_TO_CENTRE``.
PIXEL_CORNER_TO_CENTRE = 0.5
NDC_FORMATS = ("ndc_isotropic", "ndc_norm_image_bounds")


def _f64(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _rt_to_w2c(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    out = np.zeros(R.shape[:-2] + (4, 4))
    out[..., :3, :3] = R
    out[..., :3, 3] = t
    out[..., 3, 3] = 1.0
    return out


def invert_rigid(T) -> np.ndarray:
    """Inverse of rigid 4x4 transform(s) ``[R t; 0 1] -> [R^T, -R^T t; 0 1]``.

    Args: T: [..., 4, 4] with orthonormal R. Returns: float64 [..., 4, 4].
    """
    T = _f64(T)
    Rt = np.swapaxes(T[..., :3, :3], -1, -2)
    return _rt_to_w2c(Rt, -np.einsum("...ij,...j->...i", Rt, T[..., :3, 3]))


# ----------------------------------------------------------------- pixel convention, crop, resize
def corner_to_centre(K) -> np.ndarray:
    """Intrinsics from the corner to the centre pixel convention: ``c_centre = c_corner - 0.5``.

    Source: reference/multiview-formats.md section 0 (corner: Blender ``u_0 = res_x/2``,
    COLMAP, SRN, nerfstudio; centre: strict OpenCV, ViewDiff ``convert_camera`` step 3).
    Args: K: [..., 3, 3] pixels. Returns: float64 [..., 3, 3] (focal lengths unchanged).
    """
    K = _f64(K).copy()
    K[..., 0, 2] -= PIXEL_CORNER_TO_CENTRE
    K[..., 1, 2] -= PIXEL_CORNER_TO_CENTRE
    return K


def centre_to_corner(K) -> np.ndarray:
    """Inverse of :func:`corner_to_centre`: ``c_corner = c_centre + 0.5`` (float64 [..., 3, 3])."""
    K = _f64(K).copy()
    K[..., 0, 2] += PIXEL_CORNER_TO_CENTRE
    K[..., 1, 2] += PIXEL_CORNER_TO_CENTRE
    return K


def crop_intrinsics(K, x0, y0) -> np.ndarray:
    """Intrinsics of the crop whose top-left source pixel is (column x0, row y0).

    ``c' = c - (x0, y0)``, the same in both pixel conventions (reference section 0; ViewDiff
    ``convert_camera`` step 2). Offsets may be negative (padding) or fractional.
    Args: K: [..., 3, 3] centre convention; x0, y0: scalars or arrays broadcasting to [...].
    Returns: float64 [..., 3, 3].
    """
    K = _f64(K).copy()
    K[..., 0, 2] -= _f64(x0)
    K[..., 1, 2] -= _f64(y0)
    return K


def resize_intrinsics(K, sx, sy=None) -> np.ndarray:
    """Intrinsics after resampling an image by ``sx`` (width) and ``sy`` (height).

    Centre convention: ``f' = f s``, ``c' = (c + 0.5) s - 0.5`` (reference section 0;
    exactly ViewDiff ``viewdiff/data/co3d/util.py::scale_intrinsics``); it is the pixel map
    of ``torch.nn.functional.interpolate(..., size=, align_corners=False)`` and of PIL's
    ``resize``, where ``s = out_size / in_size`` per axis.
    Args: K: [..., 3, 3] centre convention; sx, sy: positive scale(s), sy defaults to sx.
    Returns: float64 [..., 3, 3]. Skew scales with sx.
    """
    K = _f64(K).copy()
    sx = _f64(sx)
    sy = sx if sy is None else _f64(sy)
    K[..., 0, 0] *= sx
    K[..., 0, 1] *= sx
    K[..., 1, 1] *= sy
    K[..., 0, 2] = (K[..., 0, 2] + 0.5) * sx - 0.5
    K[..., 1, 2] = (K[..., 1, 2] + 0.5) * sy - 0.5
    return K


def pinhole_K(fx, fy, cx, cy) -> np.ndarray:
    """``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` batched over the broadcast shape of the args."""
    fx, fy, cx, cy = np.broadcast_arrays(*(_f64(v) for v in (fx, fy, cx, cy)))
    K = np.zeros(fx.shape + (3, 3))
    K[..., 0, 0], K[..., 1, 1], K[..., 0, 2], K[..., 1, 2], K[..., 2, 2] = fx, fy, cx, cy, 1.0
    return K


# ----------------------------------------------------------------- PyTorch3D NDC <-> OpenCV
def _half_wh(image_hw) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    hw = _f64(image_hw)
    if np.any(hw <= 0):
        raise ValueError(f"image sizes must be positive, got {hw}")
    H, W = hw[..., 0], hw[..., 1]
    return W / 2.0, H / 2.0, np.minimum(W, H) / 2.0


def _ndc_scales(image_hw, intrinsics_format: str):
    """(W/2, H/2, sx, sy): pixels per NDC unit, ``min(W, H)/2`` on both axes for
    ``ndc_isotropic``, ``(W/2, H/2)`` for ``ndc_norm_image_bounds``. Raises ValueError otherwise."""
    hw2, hh2, s = _half_wh(image_hw)
    if intrinsics_format == "ndc_isotropic":
        return hw2, hh2, s, s
    if intrinsics_format == "ndc_norm_image_bounds":
        return hw2, hh2, hw2, hh2
    raise ValueError(f"intrinsics_format must be one of {NDC_FORMATS}, got {intrinsics_format!r}")


def ndc_to_pixel_intrinsics(focal, principal_point, image_hw,
                            intrinsics_format: str = "ndc_isotropic") -> np.ndarray:
    """PyTorch3D NDC focal length / principal point -> pixel K (centre convention).

    ``ndc_isotropic`` (PyTorch3D >= 0.5, CO3Dv2): ``s = min(W, H) / 2``,
    ``fx = fx_n s, fy = fy_n s, cx = W/2 - px_n s, cy = H/2 - py_n s`` (corner convention;
    ``pytorch3d/renderer/camera_conversions.py::_opencv_from_cameras_projection``), then
    ``- 0.5``. ``ndc_norm_image_bounds`` (legacy; ``FrameDataBuilder._get_pytorch3d_camera``):
    each axis by its own half size, ``fx = fx_n W/2, cx = W/2 - px_n W/2`` (y with H).
    Source: reference/multiview-formats.md section 4.2.

    Args:
        focal, principal_point: [..., 2] NDC (x, y) values.
        image_hw: [..., 2] (H, W) pixels of the image the camera belongs to.
        intrinsics_format: one of :data:`NDC_FORMATS`.
    Returns: float64 K [..., 3, 3], centre convention.
    Raises: ValueError: unknown format or non-positive size.
    """
    f, p = _f64(focal), _f64(principal_point)
    hw2, hh2, sx, sy = _ndc_scales(image_hw, intrinsics_format)
    K = pinhole_K(f[..., 0] * sx, f[..., 1] * sy, hw2 - p[..., 0] * sx, hh2 - p[..., 1] * sy)
    return corner_to_centre(K)


def pixel_to_ndc_intrinsics(K, image_hw, intrinsics_format: str = "ndc_isotropic"
                            ) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`ndc_to_pixel_intrinsics` (PyTorch3D ``_cameras_from_opencv_projection``).

    ``f_n = f_px / s``, ``p_n = -(c_corner - (W/2, H/2)) / s`` with ``s = min(W, H)/2``
    (``ndc_isotropic``) or ``(W/2, H/2)`` per axis (``ndc_norm_image_bounds``).
    Args: K: [..., 3, 3] centre convention (zero skew); image_hw: [..., 2] (H, W).
    Returns: (focal [..., 2], principal_point [..., 2]) float64 NDC.
    """
    Kc = centre_to_corner(K)
    hw2, hh2, sx, sy = _ndc_scales(image_hw, intrinsics_format)
    focal = np.stack(np.broadcast_arrays(Kc[..., 0, 0] / sx, Kc[..., 1, 1] / sy), -1)
    pp = np.stack(np.broadcast_arrays(-(Kc[..., 0, 2] - hw2) / sx, -(Kc[..., 1, 2] - hh2) / sy), -1)
    return focal, pp


def pytorch3d_to_opencv_w2c(R, T) -> np.ndarray:
    """PyTorch3D ``R, T`` (row-vector ``X_cam = X_world @ R + T``, x left, y up) -> OpenCV w2c.

    ``R_cv = F R^T``, ``t_cv = F T`` with ``F = diag(-1, -1, 1)``
    (``_opencv_from_cameras_projection``; reference section 4.2 step 3).
    Args: R: [..., 3, 3]; T: [..., 3]. Returns: float64 [..., 4, 4].
    """
    R, T = _f64(R), _f64(T)
    return _rt_to_w2c(FLIP_XY @ np.swapaxes(R, -1, -2), T @ FLIP_XY)


def opencv_w2c_to_pytorch3d(w2c) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`pytorch3d_to_opencv_w2c`: ``R = (F R_cv)^T``, ``T = F t_cv``
    (``_cameras_from_opencv_projection``). Returns (R [..., 3, 3], T [..., 3]) float64."""
    w2c = _f64(w2c)
    return np.swapaxes(FLIP_XY @ w2c[..., :3, :3], -1, -2), w2c[..., :3, 3] @ FLIP_XY


def pytorch3d_ndc_to_opencv(R, T, focal, principal_point, image_hw,
                            intrinsics_format: str = "ndc_isotropic") -> tuple[np.ndarray, np.ndarray]:
    """A PyTorch3D NDC camera (a CO3D ``viewpoint``) -> (OpenCV w2c [..., 4, 4], K [..., 3, 3]).

    :func:`pytorch3d_to_opencv_w2c` + :func:`ndc_to_pixel_intrinsics` (centre convention).
    """
    return (pytorch3d_to_opencv_w2c(R, T),
            ndc_to_pixel_intrinsics(focal, principal_point, image_hw, intrinsics_format))


def opencv_to_pytorch3d_ndc(w2c, K, image_hw, intrinsics_format: str = "ndc_isotropic"):
    """OpenCV (w2c, centre-convention K) -> PyTorch3D (R, T, focal, principal_point) in NDC,
    the inverse of :func:`pytorch3d_ndc_to_opencv` (what the Viewset Diffusion adapter feeds
    ``PerspectiveCameras``). Returns float64 (R [...,3,3], T [...,3], focal [...,2], pp [...,2])."""
    R, T = opencv_w2c_to_pytorch3d(w2c)
    f, p = pixel_to_ndc_intrinsics(K, image_hw, intrinsics_format)
    return R, T, f, p


# ----------------------------------------------------------------- OpenGL / Blender, COLMAP
def opengl_c2w_to_opencv_w2c(c2w) -> np.ndarray:
    """OpenGL/Blender camera-to-world (x right, y up, z back) -> OpenCV world-to-camera.

    ``w2c = inv(c2w @ diag(1, -1, -1, 1))`` (nerfstudio ``transform_matrix``, MVDream; the
    inverse of ``c2w[:3, 1:3] *= -1`` in ViewDiff ``export_nerf_transforms.py``; reference
    section 5). Args: c2w: [..., 4, 4] (or [..., 3, 4]) rigid. Returns: float64 [..., 4, 4].
    """
    c2w = _f64(c2w)
    c2w_cv = _rt_to_w2c(c2w[..., :3, :3] @ FLIP_YZ, c2w[..., :3, 3])
    return invert_rigid(c2w_cv)


def opencv_w2c_to_opengl_c2w(w2c) -> np.ndarray:
    """Inverse of :func:`opengl_c2w_to_opencv_w2c` (float64 [..., 4, 4])."""
    c2w = invert_rigid(w2c)
    c2w[..., :3, :3] = c2w[..., :3, :3] @ FLIP_YZ
    return c2w


def opencv_c2w_to_w2c(c2w) -> np.ndarray:
    """OpenCV-axes camera-to-world (SRN ``pose/*.txt``, pixel-nerf ``SRNDataset``) -> w2c.

    Just the rigid inverse; written here so every source's pose passes through one named
    conversion. Args: c2w [..., 4, 4]. Returns float64 [..., 4, 4].
    """
    return invert_rigid(c2w)


def qvec_to_rotmat(qvec) -> np.ndarray:
    """COLMAP quaternion ``(qw, qx, qy, qz)`` (Hamilton, world-to-camera) -> R [..., 3, 3].

    As ``colmap/scripts/python/read_write_model.py::qvec2rotmat``; the quaternion is
    normalised first. Args: qvec [..., 4]. Returns float64 [..., 3, 3].
    """
    q = _f64(qvec)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    R = np.stack([1 - 2 * y * y - 2 * z * z, 2 * x * y - 2 * w * z, 2 * z * x + 2 * w * y,
                  2 * x * y + 2 * w * z, 1 - 2 * x * x - 2 * z * z, 2 * y * z - 2 * w * x,
                  2 * z * x - 2 * w * y, 2 * y * z + 2 * w * x, 1 - 2 * x * x - 2 * y * y], -1)
    return R.reshape(q.shape[:-1] + (3, 3))


def rotmat_to_qvec(R) -> np.ndarray:
    """Inverse of :func:`qvec_to_rotmat` for one R [3, 3] (qw >= 0); float64 [4]
    (COLMAP ``rotmat2qvec``, whose ``Ryx`` is ``R[0, 1]``)."""
    R = _f64(R).T
    K = np.array([[R[0, 0] - R[1, 1] - R[2, 2], 0, 0, 0],
                  [R[1, 0] + R[0, 1], R[1, 1] - R[0, 0] - R[2, 2], 0, 0],
                  [R[2, 0] + R[0, 2], R[2, 1] + R[1, 2], R[2, 2] - R[0, 0] - R[1, 1], 0],
                  [R[1, 2] - R[2, 1], R[2, 0] - R[0, 2], R[0, 1] - R[1, 0], R[0, 0] + R[1, 1] + R[2, 2]]]) / 3.0
    vals, vecs = np.linalg.eigh(K)
    q = vecs[[3, 0, 1, 2], np.argmax(vals)]
    return q if q[0] >= 0 else -q


def rigidity_error(w2c) -> np.ndarray:
    """Per camera ``max(|R R^T - I|) + |det R - 1|`` (0 for a proper rotation); NaN stays NaN.

    Args: w2c [..., 4, 4]. Returns float64 [...]."""
    R = _f64(w2c)[..., :3, :3]
    e = np.abs(R @ np.swapaxes(R, -1, -2) - np.eye(3)).max(axis=(-1, -2))
    return e + np.abs(np.linalg.det(R) - 1.0)


def camera_centres(w2c) -> np.ndarray:
    """World positions of the camera centres ``C = -R^T t`` (float64 [..., 3])."""
    w2c = _f64(w2c)
    return -np.einsum("...ji,...j->...i", w2c[..., :3, :3], w2c[..., :3, 3])
