"""pipelines.pairs.build_pairs and pipelines.augment: schema, IVID augmentations, determinism."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from scipy import ndimage

from pipelines import augment
from pipelines.config import REPO_ROOT
from pipelines.depth_convention import (
    decode_zbuffer,
    disparity_to_depth,
    encode_zbuffer,
)
from pipelines.pairs import build_pairs


def params(**over):
    p = yaml.safe_load(open(REPO_ROOT / "params.yaml"))
    return {**p["warp"], "near": p["depth"]["near"], "far": p["depth"]["far"], **over}


def inputs(B=3, H=40, W=56, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.interpolate(torch.rand(B, 3, 10, 14, generator=g), size=(H, W), mode="bilinear")
    disp = 1.0 + 0.1 * torch.nn.functional.interpolate(torch.rand(B, 1, 3, 3, generator=g), size=(H, W),
                                                       mode="bilinear")
    disp[:, :, H // 4: H // 2, W // 4: W // 2] *= 1.6                 # a nearer object
    return img.clamp(0, 1), disparity_to_depth(disp)


def same(a: dict, b: dict) -> bool:
    return (all(np.array_equal(a[k], b[k]) for k in ("cond", "cond_depth", "mask", "mask_rgb"))
            and a["camera"] == b["camera"] and a["key"] == b["key"])


def test_schema_and_order():
    img, depth = inputs()
    keys = ["aa", "bb", "cc"]
    out = build_pairs(img, depth, keys, views_per_image=2, seed=0, params=params())
    assert [o["key"] for o in out] == ["aa_00", "aa_01", "bb_00", "bb_01", "cc_00", "cc_01"]
    assert [o["sample_key"] for o in out] == ["aa", "aa", "bb", "bb", "cc", "cc"]
    assert [o["view"] for o in out] == [0, 1] * 3
    for o in out:
        assert o["cond"].dtype == np.uint8 and o["cond"].shape == (40, 56, 3)
        assert o["cond_depth"].dtype == np.uint16 and o["cond_depth"].shape == (40, 56)
        assert o["mask"].dtype == np.bool_ and o["mask_rgb"].dtype == np.bool_
        assert not (o["mask_rgb"] & ~o["mask"]).any()                  # mask_rgb within mask
        assert (o["cond"][~o["mask_rgb"]] == 0).all()
        assert (o["cond_depth"][~o["mask"]] == 65535).all()
        assert 0.2 < o["mask"].mean() <= 1.0
        cam = json.loads(json.dumps(o["camera"]))
        assert cam == o["camera"]
        assert np.asarray(cam["K"]).shape == (3, 3) and np.asarray(cam["w2c_novel"]).shape == (4, 4)
        assert np.allclose(np.asarray(cam["w2c_src"]), [[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 1], [0, 0, 0, 1]])
        assert cam["depth_encoding"] == {"name": "ivid_zbuffer_uint16", "near": 0.5, "far": 100.0}
        assert set(cam) >= {"yaw", "pitch", "radius", "center", "fov_deg"}


def test_deterministic_and_independent_of_batch_composition():
    img, depth = inputs(B=3)
    keys = ["k0", "k1", "k2"]
    p = params()
    a = build_pairs(img, depth, keys, views_per_image=3, seed=5, params=p)
    b = build_pairs(img, depth, keys, views_per_image=3, seed=5, params=p)
    assert all(same(x, y) for x, y in zip(a, b))
    alone = build_pairs(img[1:2], depth[1:2], ["k1"], views_per_image=3, seed=5, params=p)
    assert all(same(x, y) for x, y in zip(a[3:6], alone))
    order = [2, 1, 0]
    rev = build_pairs(img[order], depth[order], [keys[i] for i in order], views_per_image=3, seed=5,
                      params={**p, "batch_size": 4})
    assert all(same(x, y) for x, y in zip(a[3:6], rev[3:6]))
    other = build_pairs(img, depth, keys, views_per_image=3, seed=6, params=p)
    assert not np.array_equal(a[0]["cond"], other[0]["cond"])


def test_zero_perturbation_returns_the_source():
    img, depth = inputs(B=2)
    p = params(yaw_std=0.0, pitch_std=0.0, radius_std=0.0, center_std=0.0, prewarp_noise=0.0,
               blur_p=0.0, erode_sizes=[1])
    out = build_pairs(img, depth, ["a", "b"], views_per_image=1, seed=0, params=p)
    for o, im, d in zip(out, img, depth):
        m = o["mask"]
        assert m[1:-1, 1:-1].mean() > 0.9                            # object edges are masked
        ref = np.round(im.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        assert np.abs(o["cond"][m].astype(int) - ref[m]).max() <= 1
        ref_z = encode_zbuffer(d[0].clamp(0.5, 100.0)).astype(int)
        assert np.abs(o["cond_depth"][m].astype(int) - ref_z[m]).max() <= 2
        assert np.array_equal(o["mask"], o["mask_rgb"])


def test_views_differ_and_move_content():
    img, depth = inputs(B=1)
    out = build_pairs(img, depth, ["x"], views_per_image=4, seed=0, params=params(prewarp_noise=0.0))
    masks = [o["mask"] for o in out]
    assert any(not np.array_equal(masks[0], m) for m in masks[1:])


def test_input_errors():
    img, depth = inputs(B=2)
    with pytest.raises(ValueError):
        build_pairs(img, depth, ["a"], views_per_image=1, seed=0, params=params())
    with pytest.raises(ValueError):
        build_pairs(img, depth[:, :, :10], ["a", "b"], views_per_image=1, seed=0, params=params())
    bad = params()
    del bad["near"]
    with pytest.raises(KeyError):
        build_pairs(img, depth, ["a", "b"], views_per_image=1, seed=0, params=bad)


# ------------------------------------------------------------------- augmentations
def test_erode_matches_opencv_semantics():
    g = np.random.default_rng(0)
    m = g.random((30, 40)) > 0.2
    m[:, :3] = True
    for k in (1, 3, 5, 9):
        ref = ndimage.binary_erosion(m, np.ones((k, k)), border_value=1)
        assert np.array_equal(augment.erode(torch.from_numpy(m)[None], k)[0].numpy(), ref)
    with pytest.raises(ValueError):
        augment.erode(torch.from_numpy(m), 2)


def test_texture_erosion_sizes_and_seed():
    m = torch.ones(1, 20, 20, dtype=torch.bool)
    ks = {augment.texture_erosion(m, s)[1] for s in range(200)}
    assert ks == {1, 3, 5, 7, 9}
    assert augment.texture_erosion(m, 3)[1] == augment.texture_erosion(m, 3)[1]


@pytest.mark.parametrize("kernel_size, sigma, shape", [(3, 0.3, (3, 16, 16)), (3, 1.001, (3, 9, 20)),
                                                      (5, 2.5, (1, 7, 7))])
def test_gaussian_blur_equals_torchvision(kernel_size, sigma, shape):
    from torchvision.transforms.functional import gaussian_blur as tv_blur

    img = torch.rand(shape, generator=torch.Generator().manual_seed(kernel_size))
    ours = augment.gaussian_blur(img, kernel_size, sigma)
    assert ours.shape == img.shape and ours.dtype == torch.float32
    assert torch.equal(ours, tv_blur(img, [kernel_size, kernel_size], [sigma, sigma]))


def test_warp_path_does_not_import_torchvision():
    import subprocess
    import sys

    code = "import sys, pipelines.pairs, pipelines.stages.warp; print('torchvision' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_random_blur_probability_and_sigma():
    img = torch.rand(3, 16, 16)
    out, applied, sigma = augment.random_blur(img, 0, p=0.0)
    assert not applied and torch.equal(out, img)
    out, applied, sigma = augment.random_blur(img, 0, p=1.0)
    assert applied and 1e-3 <= sigma <= 1.001
    assert not torch.equal(out, img) or sigma < 0.05
    rate = np.mean([augment.random_blur(img, s, p=0.8)[1] for s in range(300)])
    assert 0.72 < rate < 0.88
    # Matches a direct 3x3 Gaussian with reflect-101 borders (OpenCV's default).
    x = np.arange(-1, 2)
    w = np.exp(-x ** 2 / (2 * sigma ** 2))
    w /= w.sum()
    pad = np.pad(img.numpy(), ((0, 0), (1, 1), (1, 1)), mode="reflect")
    ref = sum(w[i] * w[j] * pad[:, i:i + 16, j:j + 16] for i in range(3) for j in range(3))
    assert np.allclose(out.numpy(), ref, atol=1e-5)


def test_prewarp_noise_in_ivid_zbuffer_units():
    img = torch.full((3, 8, 8), 0.5)
    z = torch.full((1, 8, 8), 2.0)
    z[0, 0, 0] = float("inf")
    a_img, a_z = augment.prewarp_noise(img, z, 11)
    b_img, b_z = augment.prewarp_noise(img, z, 11)
    assert torch.equal(a_img, b_img) and torch.equal(a_z, b_z)
    assert torch.isinf(a_z[0, 0, 0])
    assert float((a_img - img).abs().max()) < 0.005 * 5
    # No noise: depth only passes through IVID's clipped z-buffer (clamp to [near, far]).
    zz = torch.tensor([[[0.3, 2.0, 500.0]]])
    _, c = augment.prewarp_noise(torch.zeros(3, 1, 3), zz, 0, sigma_max=0.0)
    assert torch.allclose(c, torch.tensor([[[0.5, 2.0, 100.0]]]), rtol=1e-3)
    # The noise std is sigma_max * U(0, 1) in z-buffer units v (not in z).
    _, n = augment.prewarp_noise(torch.zeros(3, 64, 64), torch.full((1, 64, 64), 2.0), 3)
    v = (1 / n.double() - 2.0) / (0.01 - 2.0)
    assert 0 < float(v.std()) < 0.005
    with pytest.raises(ValueError):
        augment.prewarp_noise(img, z[0], 0)


def test_decoded_condition_depth_matches_warp_depth():
    img, depth = inputs(B=1)
    p = params(yaw_std=0.0, pitch_std=0.0, radius_std=0.0, center_std=0.0, prewarp_noise=0.0)
    o = build_pairs(img, depth, ["a"], views_per_image=1, seed=0, params=p)[0]
    z = decode_zbuffer(o["cond_depth"])
    ref = depth[0, 0].numpy()
    assert np.allclose(z[o["mask"]], ref[o["mask"]], rtol=1e-3)


def test_discontinuity_tests_use_ivid_units(monkeypatch):
    """build_pairs hands the warp IVID's units (pivot distance 1, near/far of params) and a
    continuous receding ground plane (disparity 2 -> 0.095, -0.015 per row) survives:
    the relative 2% rule of warp-1 lost every row beyond z = 1.33."""
    import pipelines.pairs as pairs_mod

    H, W = 128, 32
    disp = (2.0 - 0.015 * torch.arange(H, dtype=torch.float32)).reshape(1, 1, H, 1).expand(1, 1, H, W)
    img = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(0))
    seen = {}
    real = pairs_mod.forward_backward_warp

    def spy(*a, **kw):
        seen.update(kw)
        return real(*a, **kw)
    monkeypatch.setattr(pairs_mod, "forward_backward_warp", spy)
    p = params(yaw_std=0.0, pitch_std=0.0, radius_std=0.0, center_std=0.0, prewarp_noise=0.0,
               blur_p=0.0, erode_sizes=[1], near=0.5, far=100.0)
    o = build_pairs(img, disparity_to_depth(disp), ["a"], views_per_image=1, seed=0, params=p)[0]
    assert (seen["reference_depth"], seen["near"], seen["far"]) == (1.0, 0.5, 100.0)
    assert o["mask"][1:-1, 1:-1].all()
