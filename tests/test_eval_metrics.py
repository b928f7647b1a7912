"""eval.metrics / eval.preprocess: closed forms, library agreement, masks, weights policy, cache."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from eval import extractors as X
from eval import metrics as M
from eval.preprocess import center_crop_resize, to_eval_uint8
from pipelines.models import RANDOM_WEIGHTS, WeightsUnavailableError


def _rotation(d: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q


def test_frechet_distance_closed_form():
    # Same eigenbasis R: S_i = R diag(d_i) R^T  =>  Tr((S1 S2)^1/2) = sum sqrt(d1 d2), so
    # FD = ||mu1 - mu2||^2 + sum (sqrt(d1) - sqrt(d2))^2.
    d = 6
    r = _rotation(d, 0)
    d1, d2 = np.arange(1.0, d + 1), np.linspace(0.5, 4.0, d)
    mu1, mu2 = np.zeros(d), np.arange(d, dtype=float) / 3
    expect = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(d1) - np.sqrt(d2)) ** 2).sum()
    got = M.frechet_distance(mu1, r @ np.diag(d1) @ r.T, mu2, r @ np.diag(d2) @ r.T)
    assert got == pytest.approx(expect, rel=1e-10)
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2 with standard deviations s
    assert M.frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)
    # identical Gaussians, also a singular covariance
    s = np.diag([2.0, 0.0, 1.0])
    assert M.frechet_distance(np.ones(3), s, np.ones(3), s) == pytest.approx(0.0, abs=1e-10)


def test_frechet_distance_matches_torchmetrics_fid():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(300, 16)) @ rng.normal(size=(16, 16))
    fake = rng.normal(size=(250, 16)) @ rng.normal(size=(16, 16)) * 0.8 + 0.3
    ours = M.frechet_distance(*M.gaussian_stats(real), *M.gaussian_stats(fake))
    assert M.fid_from_features(real, fake) == pytest.approx(ours, rel=1e-4)


def test_kid_seeded_and_small_for_same_distribution():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(120, 8)), rng.normal(size=(120, 8))
    k1 = M.kid_from_features(a, b, subsets=20, subset_size=50, seed=3)
    assert k1 == M.kid_from_features(a, b, subsets=20, subset_size=50, seed=3)
    assert abs(k1[0]) < 0.05 and k1[2] == 50
    assert M.kid_from_features(a, b + 2.0, subsets=20, subset_size=500, seed=3)[0] > 10 * abs(k1[0])


def test_psnr_ssim_match_skimage():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    g = torch.Generator().manual_seed(0)
    tgt = torch.rand(3, 3, 40, 37, generator=g)
    pred = (tgt + 0.1 * torch.randn(3, 3, 40, 37, generator=g)).clamp(0, 1)
    ours_p, ours_s = M.psnr(pred, tgt), M.ssim(pred, tgt)
    for i in range(3):
        t, p = tgt[i].numpy().astype(np.float64), pred[i].numpy().astype(np.float64)
        assert ours_p[i].item() == pytest.approx(peak_signal_noise_ratio(t, p, data_range=1.0), rel=1e-5)
        ref = structural_similarity(t, p, data_range=1.0, channel_axis=0, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False)
        assert ours_s[i].item() == pytest.approx(ref, abs=1e-5)


def test_masked_psnr_and_ssim_analytic():
    tgt = torch.zeros(2, 3, 16, 16)
    pred = torch.full_like(tgt, 0.5)
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, :, :8] = 1
    pred[:, :, :, :8] = 0.1             # on mask: MSE 0.01 -> 20 dB; holes: MSE 0.25 -> 6.0206 dB
    mask[1] = 0                          # image 1: empty mask -> NaN, all holes
    on_mask, holes = M.masked_psnr(pred, tgt, mask), M.masked_psnr(pred, tgt, 1 - mask)
    assert on_mask[0].item() == pytest.approx(20.0, abs=1e-4) and math.isnan(on_mask[1].item())
    assert holes[0].item() == pytest.approx(10 * math.log10(4), abs=1e-4)
    assert M.finite_mean(on_mask.tolist()) == (pytest.approx(20.0, abs=1e-4), 1)
    x = torch.rand(2, 3, 20, 20)
    y = (x + 0.05).clamp(0, 1)
    assert torch.allclose(M.masked_ssim(x, y, torch.ones(2, 1, 20, 20)), M.ssim(x, y))


def test_center_crop_resize_follows_ivid():
    arr = np.random.default_rng(0).integers(0, 255, (30, 50, 3), dtype=np.uint8)
    out = center_crop_resize(Image.fromarray(arr), 30)  # w > h: crop columns 10..40, no resize
    assert np.array_equal(np.asarray(out), arr[:, 10:40])
    small = center_crop_resize(Image.fromarray(arr), 12)
    ref = Image.fromarray(arr).crop((10, 0, 40, 30)).resize((12, 12), Image.LANCZOS)
    assert np.array_equal(np.asarray(small), np.asarray(ref))
    x = torch.rand(2, 4, 16, 16)  # RGBD in, depth dropped, same size -> only quantised
    u = to_eval_uint8(x, 16)
    assert u.dtype == torch.uint8 and u.shape == (2, 3, 16, 16)
    assert torch.equal(u, (x[:, :3] * 255 + 0.5).clamp(0, 255).to(torch.uint8))
    assert to_eval_uint8(torch.rand(1, 3, 20, 24), 8).shape == (1, 3, 8, 8)


def test_inception_weights_policy(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))   # no cached FID weights
    monkeypatch.setattr(X, "_host_reachable", lambda url, timeout=3.0: False)  # and no network
    with pytest.raises(WeightsUnavailableError, match="eval.feature_extractor_weights_path"):
        X.load_inception(None, profile="default", device="cpu")
    smoke = X.load_inception(None, profile="smoke", device="cpu")
    assert smoke.origin == RANDOM_WEIGHTS and smoke.is_random
    path = X.save_random_inception(tmp_path / "inception.pth", seed=0)
    local = X.load_inception(str(path), profile="default", device="cpu")
    assert local.origin == f"local:{path}" and local.weights_id == smoke.weights_id  # same seed, same weights
    feats = local(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    assert feats.shape == (2, 2048) and feats.dtype == np.float64 and np.isfinite(feats).all()


def test_real_features_cache(tmp_path, tiny_dinov2_path):
    ex = X.load_dinov2_extractor("vit_small_patch14_dinov2", str(tiny_dinov2_path), profile="default",
                                 image_size=56, device="cpu")
    calls = []

    def compute():
        calls.append(1)
        return ex(torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8))

    kw = dict(dataset_version="dv1", split="test", extractor=ex, resolution=16, max_images=None, compute=compute)
    f1, info, hit1 = M.real_features_cached(tmp_path, **kw)
    f2, _, hit2 = M.real_features_cached(tmp_path, **kw)
    assert (hit1, hit2, len(calls)) == (False, True, 1) and info["count"] == 5
    assert np.allclose(f1, f2, rtol=1e-6) and f1.shape == (5, ex.dim)
    assert not list(tmp_path.rglob("*.tmp"))
    M.real_features_cached(tmp_path, **{**kw, "resolution": 32})        # another key: recomputed
    assert len(calls) == 2 and len(list(tmp_path.rglob("*.npz"))) == 2


def test_lpips_local_weights_and_skip(tmp_path, monkeypatch):
    import torchvision
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    lp, note = M.load_lpips("squeeze", None)
    assert lp is None and "eval.lpips_weights_path" in note
    torch.manual_seed(0)
    path = tmp_path / "squeezenet.pth"
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), path)
    lp, origin = M.load_lpips("squeeze", str(path), device="cpu")
    x = torch.rand(2, 3, 64, 64)
    y = (x + 0.2 * torch.rand(2, 3, 64, 64)).clamp(0, 1)
    assert torch.allclose(lp(x, x), torch.zeros(2), atol=1e-6) and (lp(x, y) > 0).all()
    mask = torch.zeros(2, 1, 64, 64)
    mask[0, :, :32] = 1
    m = lp.masked(x, y, mask)
    assert m.shape == (2,) and m[0] > 0 and math.isnan(m[1].item()) and origin == f"local:{path}"
