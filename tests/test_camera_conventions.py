"""pipelines.camera_conventions against independent truths: PyTorch3D's NDC projection
written from its definition, torch's resampling, and round trips."""
import numpy as np
import pytest
import torch

from pipelines import camera_conventions as cc

F = np.diag([-1.0, -1.0, 1.0])


def random_w2c(g, n):
    q = g.normal(size=(n, 4))
    w2c = np.tile(np.eye(4), (n, 1, 1))
    w2c[:, :3, :3] = cc.qvec_to_rotmat(q)
    w2c[:, :3, 3] = g.normal(size=(n, 3)) + [0, 0, 5]
    return w2c


def project_cv(K, w2c, X):
    x = X @ w2c[:3, :3].T + w2c[:3, 3]
    p = x @ K.T
    return p[:, :2] / p[:, 2:]


def project_p3d_ndc_to_centre_pixels(R, T, f, p, H, W, fmt):
    """PyTorch3D: X_view = X @ R + T (x left, y up); NDC = f * X/Z + p; the NDC->pixel map
    of the format (+x left, +y up, corner pixel coordinates), then -0.5 for centres."""
    Xv = X_GLOBAL @ R + T
    ndc = f * Xv[:, :2] / Xv[:, 2:] + p
    sx, sy = (min(H, W) / 2, min(H, W) / 2) if fmt == "ndc_isotropic" else (W / 2, H / 2)
    return np.stack([W / 2 - ndc[:, 0] * sx, H / 2 - ndc[:, 1] * sy], -1) - 0.5


X_GLOBAL = np.random.default_rng(5).normal(size=(20, 3))


@pytest.mark.parametrize("fmt", cc.NDC_FORMATS)
@pytest.mark.parametrize("hw", [(48, 80), (90, 60), (64, 64)])
def test_ndc_to_opencv_projects_like_pytorch3d(fmt, hw):
    H, W = hw
    g = np.random.default_rng(1)
    R = cc.qvec_to_rotmat(g.normal(size=4))
    T = g.normal(size=3) * 0.3 + [0, 0, 6]
    f, p = np.array([1.8, 1.7]), np.array([0.05, -0.08])
    w2c, K = cc.pytorch3d_ndc_to_opencv(R, T, f, p, hw, fmt)
    np.testing.assert_allclose(project_cv(K, w2c, X_GLOBAL),
                               project_p3d_ndc_to_centre_pixels(R, T, f, p, H, W, fmt), atol=1e-9)
    R2, T2, f2, p2 = cc.opencv_to_pytorch3d_ndc(w2c, K, hw, fmt)
    for a, b in ((R2, R), (T2, T), (f2, f), (p2, p)):
        np.testing.assert_allclose(a, b, atol=1e-12)


def test_batched_shapes_and_legacy_equals_isotropic_camera():
    H, W = 60, 100
    g = np.random.default_rng(2)
    w2c = random_w2c(g, 5)
    K = cc.pinhole_K(g.uniform(50, 90, 5), g.uniform(50, 90, 5), g.uniform(40, 60, 5), g.uniform(25, 35, 5))
    hw = np.tile([H, W], (5, 1))
    outs = [cc.opencv_to_pytorch3d_ndc(w2c, K, hw, fmt) for fmt in cc.NDC_FORMATS]
    assert outs[0][0].shape == (5, 3, 3) and outs[0][2].shape == (5, 2)
    for fmt, (R, T, f, p) in zip(cc.NDC_FORMATS, outs):
        w2, K2 = cc.pytorch3d_ndc_to_opencv(R, T, f, p, hw, fmt)
        np.testing.assert_allclose(w2, w2c, atol=1e-12)
        np.testing.assert_allclose(K2, K, atol=1e-12)
    # same camera, different numbers: legacy focal in x = iso focal * min/W
    np.testing.assert_allclose(outs[1][2][:, 0], outs[0][2][:, 0] * min(H, W) / W)


def test_opengl_c2w_and_pixel_conventions():
    g = np.random.default_rng(3)
    w2c = random_w2c(g, 3)
    c2w_gl = cc.opencv_w2c_to_opengl_c2w(w2c)
    # OpenGL camera looks down -z: a point in front of the OpenCV camera has z_gl < 0
    Xw = cc.camera_centres(w2c) + 2.0 * w2c[:, 2, :3]
    Xgl = np.einsum("nij,nj->ni", np.linalg.inv(c2w_gl)[:, :3, :3], Xw) + np.linalg.inv(c2w_gl)[:, :3, 3]
    assert (Xgl[:, 2] < 0).all()
    np.testing.assert_allclose(cc.opengl_c2w_to_opencv_w2c(c2w_gl), w2c, atol=1e-12)
    K = cc.pinhole_K(100.0, 100.0, 64.0, 48.0)      # corner: centred for 128 x 96
    np.testing.assert_allclose(cc.corner_to_centre(K)[:2, 2], [63.5, 47.5])
    np.testing.assert_allclose(cc.centre_to_corner(cc.corner_to_centre(K)), K)
    np.testing.assert_allclose(cc.rigidity_error(w2c), 0, atol=1e-12)
    np.testing.assert_allclose(cc.qvec_to_rotmat(cc.rotmat_to_qvec(w2c[0, :3, :3])), w2c[0, :3, :3], atol=1e-12)


@pytest.mark.parametrize("size_in,size_out", [(40, 24), (24, 40), (33, 50)])
def test_resize_intrinsics_matches_torch_resampling(size_in, size_out):
    """A linear ramp equal to the column coordinate, resampled by torch (align_corners=False,
    bilinear, what crop.py uses), reads at output column u the source coordinate
    (u + 0.5) / s - 0.5: so a principal point c maps to c' = (c + 0.5) s - 0.5."""
    ramp = torch.arange(size_in, dtype=torch.float64).repeat(4, 1)[None, None]
    out = torch.nn.functional.interpolate(ramp, size=(4, size_out), mode="bilinear", align_corners=False)[0, 0, 0]
    s = size_out / size_in
    K = cc.resize_intrinsics(cc.pinhole_K(10.0, 10.0, 17.3, 2.0), s, 1.0)
    u_out = K[0, 2]
    # interior sample of the resampled ramp at the new principal point equals 17.3
    np.testing.assert_allclose(np.interp(u_out, np.arange(size_out), out.numpy()), 17.3, atol=1e-9)
    np.testing.assert_allclose(K[0, 0], 10.0 * s)
    np.testing.assert_allclose(cc.crop_intrinsics(K, 3, -2)[:2, 2], [u_out - 3, 4.0])
