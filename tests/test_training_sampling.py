"""Sampling: DDIM shapes/ranges/determinism, viewset aggregation, IVID viewset end to end,
MIRAGE pose sets, cross-frame attention."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.camera import intrinsics_from_fov, invert_rigid, novel_camera
from training.models import build_model, tiny_config
from training.sampling import (CrossFrameAttnProcessor, aggregate_views, cross_frame_attention, ddim_sample,
                               ivid_grid, sample_poses, sample_viewset, view_weights, z_to_zbuffer, zbuffer_to_z)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return (build_model(tiny_config("first_view", class_cond="pose", num_classes=3)),
            build_model(tiny_config("novel_view", class_cond="pose", num_classes=3)))


def test_ddim_shapes_ranges_determinism(models):
    fv, _ = models
    kw = dict(batch_size=2, steps=4, guidance_scale=3.0, class_labels=torch.tensor([0, 2]))
    a = ddim_sample(fv, generator=7, **kw)
    b = ddim_sample(fv, generator=7, **kw)
    c = ddim_sample(fv, generator=8, **kw)
    assert a.shape == (2, 4, 16, 16) and a.dtype == torch.float32
    assert a.min() >= -1 and a.max() <= 1 and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)
    wide = ddim_sample(fv, batch_size=1, height=16, width=32, steps=2, generator=0)
    assert wide.shape == (1, 4, 16, 32)
    with pytest.raises(ValueError):
        ddim_sample(fv, batch_size=1, height=15, width=16, steps=2)


def test_depth_codec_roundtrip():
    z = torch.tensor([0.6, 1.0, 2.5, 5.0])
    assert torch.allclose(zbuffer_to_z(z_to_zbuffer(z, 0.6, 5.0), 0.6, 5.0), z, rtol=1e-4)
    assert z_to_zbuffer(torch.tensor([float("inf")]), 0.6, 5.0).item() == pytest.approx(1.0)


def test_aggregate_views_plane():
    """A fronto-parallel plane at the pivot: weight 1 at the centre, exact identity warp,
    and a rotated view sees the plane at the right depth with colours from the source."""
    H = W = 24
    K = torch.as_tensor(intrinsics_from_fov(45.0, H, W), dtype=torch.float32)
    z = torch.ones(1, 1, 1, H, W)
    rgb = torch.rand(1, 1, 3, H, W, generator=torch.Generator().manual_seed(0))
    w = view_weights(z[:, 0], K)
    f, c = K[0, 0].item(), K[0, 2].item()
    for i, j in ((12, 12), (3, 20), (0, 0)):                                  # IVID: exp(-20 * angle)
        ang = np.arccos(f / np.sqrt(f * f + (i - c) ** 2 + (j - c) ** 2))
        assert w[0, 0, i, j].item() == pytest.approx(max(np.exp(-20 * ang), 1e-4), rel=1e-3)
    same = aggregate_views(rgb, z, K, torch.eye(4, dtype=torch.float64)[None])
    m = same["mask_rgb"].bool()
    assert m.float().mean() > 0.6
    assert torch.allclose(same["rgb"][m.expand(-1, 3, -1, -1)], rgb[:, 0][m.expand(-1, 3, -1, -1)], atol=1e-6)
    cams = [novel_camera(0.0, 0.0).w2c_novel, novel_camera(0.15, 0.0).w2c_novel]
    T = torch.as_tensor(cams[1] @ invert_rigid(cams[0]))[None]
    rot = aggregate_views(torch.cat([rgb, rgb], 1), torch.cat([z, z], 1), K, torch.cat([T, T]))
    assert rot["mask"].mean() > 0.5 and (rot["mask_rgb"] <= rot["mask"]).all()
    zin = rot["z"][rot["mask"].bool()]
    assert ((zin > 0.9) & (zin < 1.2)).all()                                # the plane, seen obliquely


def test_viewset_end_to_end(models):
    fv, nv = models
    cams = ivid_grid()[:4]
    kw = dict(batch_size=2, cameras=cams, steps_first=2, steps_novel=2, guidance_scale=2.0,
              class_labels=torch.tensor([0, 1]))
    vs = sample_viewset(fv, nv, generator=3, **kw)
    assert len(ivid_grid()) == 27 and ivid_grid()[0] == (0.0, 0.0)
    assert vs.rgb.shape == (2, 4, 3, 16, 16) and vs.depth.shape == (2, 4, 1, 16, 16)
    assert vs.mask.shape == (2, 4, 1, 16, 16) and vs.w2c.shape == (4, 4, 4)
    for t in (vs.rgb, vs.depth, vs.cond_rgb, vs.cond_depth, vs.mask, vs.mask_rgb):
        assert t.min() >= 0 and t.max() <= 1
    assert (vs.z >= 0.6 - 1e-4).all() and (vs.z <= 5.0 + 1e-3).all()
    assert torch.equal(vs.rgb, sample_viewset(fv, nv, generator=3, **kw).rgb)


def test_cross_frame_attention(models):
    fv, _ = models
    x, t, lab = torch.randn(3, 4, 16, 16), torch.full((3,), 50), torch.tensor([0, 1, 2])
    with torch.no_grad():
        ref = fv(x, t, lab)
        for mode in ("reference", "concat"):
            with cross_frame_attention(fv.unet, 1, mode=mode):               # reference == self
                assert torch.allclose(fv(x, t, lab), ref, atol=1e-5)
        with cross_frame_attention(fv.unet, 3, ref_index=0):
            cf = fv(x, t, lab)
        assert torch.allclose(cf[0], ref[0], atol=1e-5)                         # view 0 is the reference
        assert not torch.allclose(cf[1:], ref[1:], atol=1e-4)
        assert torch.allclose(fv(x, t, lab), ref)                               # processors restored
    with pytest.raises(ValueError):
        with cross_frame_attention(fv.unet, 2), torch.no_grad():
            fv(x, t, lab)                                                       # 3 not a multiple of 2
    with pytest.raises(ValueError):
        CrossFrameAttnProcessor(2, ref_index=2)


def test_sample_poses(models):
    fv, _ = models
    p = sample_poses(fv, [0, 1, 2], num_objects=2, steps=2, guidance_scale=2.0, generator=0)
    assert p.shape == (2, 3, 4, 16, 16) and p.min() >= 0 and p.max() <= 1
    assert torch.equal(p, sample_poses(fv, [0, 1, 2], num_objects=2, steps=2, guidance_scale=2.0, generator=0))
    with pytest.raises(ValueError):
        sample_poses(build_model(tiny_config("first_view")), [0, 1], steps=1)
