"""Ray embeddings (pipelines/rays.py) against analytic cameras and forward projection."""
import numpy as np
import pytest
import torch

from pipelines.camera import look_at_opencv
from pipelines.rays import centre_direction_embedding, pixel_rays, plucker_embedding, ray_embedding


def _axis_camera(f=10.0, H=5, W=7, z=2.0):
    """Identity rotation, camera centre at (0, 0, -z), principal point at the image centre."""
    K = torch.tensor([[f, 0, (W - 1) / 2], [0, f, (H - 1) / 2], [0, 0, 1]], dtype=torch.float64)
    w2c = torch.eye(4, dtype=torch.float64)
    w2c[2, 3] = z
    return K[None], w2c[None]


def test_plucker_analytic_axis_camera():
    H, W, f, z = 5, 7, 10.0, 2.0
    K, w2c = _axis_camera(f, H, W, z)
    emb = plucker_embedding(K, w2c, H, W)
    assert emb.shape == (1, 6, H, W) and emb.dtype == torch.float64
    for i in range(H):
        for j in range(W):
            x, y = (j - (W - 1) / 2) / f, (i - (H - 1) / 2) / f
            d = np.array([x, y, 1.0]) / np.sqrt(x * x + y * y + 1)
            o = np.array([0.0, 0.0, -z])
            np.testing.assert_allclose(emb[0, :3, i, j].numpy(), d, atol=1e-12)
            np.testing.assert_allclose(emb[0, 3:, i, j].numpy(), np.cross(o, d), atol=1e-12)
    # the centre pixel looks straight down +z and passes through the world origin: zero moment
    np.testing.assert_allclose(emb[0, :, H // 2, W // 2].numpy(), [0, 0, 1, 0, 0, 0], atol=1e-12)


def test_rays_reproject_to_their_pixels():
    """Points along each ray project (forward K [R|t]) back onto the pixel centre (j, i)."""
    H, W = 6, 9
    w2c = torch.tensor(np.stack([look_at_opencv((1.5, 0.4, 2.0), (0.1, -0.2, 0.0)),
                                 look_at_opencv((-2.0, 1.0, 0.5), (0.0, 0.0, 0.0))]))
    K = torch.tensor([[[12.0, 0.3, 4.2], [0, 11.0, 2.7], [0, 0, 1]],
                      [[8.0, 0.0, 4.0], [0, 8.0, 2.5], [0, 0, 1]]], dtype=torch.float64)
    o, d = pixel_rays(K, w2c, H, W)
    torch.testing.assert_close(d.norm(dim=1), torch.ones(2, H, W, dtype=torch.float64))
    for s in (0.5, 3.0):
        p = (o + s * d).reshape(2, 3, -1)                                    # [V, 3, HW]
        cam = w2c[:, :3, :3] @ p + w2c[:, :3, 3:]
        assert (cam[:, 2] > 0).all()
        uv = (K @ cam)[:, :2] / (K @ cam)[:, 2:]
        i, j = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
        torch.testing.assert_close(uv[:, 0].reshape(2, H, W), j.double().expand(2, H, W))
        torch.testing.assert_close(uv[:, 1].reshape(2, H, W), i.double().expand(2, H, W))
    # Plücker moment is the same for any point on the ray
    emb = plucker_embedding(K, w2c, H, W)
    torch.testing.assert_close(emb[:, 3:], torch.cross(o + 2.5 * d, d, dim=1))
    cd = centre_direction_embedding(K, w2c, H, W)
    centres = -(w2c[:, :3, :3].transpose(1, 2) @ w2c[:, :3, 3:])[..., 0]
    torch.testing.assert_close(cd[:, :3, 3, 4], centres)
    torch.testing.assert_close(cd[:, 3:], emb[:, :3])
    torch.testing.assert_close(ray_embedding("plucker", K, w2c, H, W), emb)


def test_errors_and_float32():
    K, w2c = _axis_camera()
    with pytest.raises(ValueError):
        ray_embedding("nope", K, w2c, 5, 7)
    with pytest.raises(ValueError):
        plucker_embedding(K[0], w2c, 5, 7)
    assert plucker_embedding(K.float(), w2c.float(), 5, 7).dtype == torch.float32
