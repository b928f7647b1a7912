"""Novel-view metrics (eval/nvs_metrics.py) against closed forms, hand computation and
reference libraries (skimage, scipy)."""
import math

import numpy as np
import pytest
import torch
from scipy.ndimage import uniform_filter
from skimage.metrics import structural_similarity

from eval import nvs_metrics as N


def _const(v, n=2, c=3, h=12, w=12):
    return torch.full((n, c, h, w), float(v), dtype=torch.float64)


def test_psnr_closed_form_and_inf_handling():
    gt = _const(0.5)
    g = torch.Generator().manual_seed(0)
    sign = torch.randint(0, 2, gt.shape, generator=g).double() * 2 - 1
    for a in (0.1, 0.03):
        np.testing.assert_allclose(N.psnr(gt + a * sign, gt).numpy(), -20 * math.log10(a), rtol=1e-6)
    p = N.psnr(gt, gt)
    assert torch.isinf(p).all() and p.dtype == torch.float64
    vals = torch.stack([N.psnr(gt + 0.1 * sign, gt), p])            # [S=2, N=2]: 2 finite, 2 inf
    s = N.summarize(vals, True, best_of=(1, 2))
    assert s["n_inf"] == 2 and s["count"] == 2 and s["mean"] == pytest.approx(20.0)
    assert s["best_of"][1] == pytest.approx(20.0) and s["best_of_n_inf"][2] == 2 and math.isnan(s["best_of"][2])


def _ssim_uniform_reference(x, y, win=7, data_range=1.0):
    """Wang et al. 2004 SSIM, uniform window, sample covariance, valid interior (numpy/scipy)."""
    out = []
    for a, b in zip(x, y):
        c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
        f = lambda z: uniform_filter(z, size=win)
        ux, uy = f(a), f(b)
        norm = win * win / (win * win - 1)
        vx, vy, vxy = norm * (f(a * a) - ux * ux), norm * (f(b * b) - uy * uy), norm * (f(a * b) - ux * uy)
        s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
        p = (win - 1) // 2
        out.append(s[p:-p, p:-p].mean())
    return float(np.mean(out))


def _pair(seed=0, n=3, h=20, w=24):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, h, w, generator=g, dtype=torch.float64)
    y = (0.7 * x + 0.3 * torch.rand(n, 3, h, w, generator=g, dtype=torch.float64)) * 0.8   # range < 1
    return x, y


def test_ssim_skimage_variant_matches_wang_formula():
    x, y = _pair()
    got = N.ssim(x, y, "skimage")
    ref = [_ssim_uniform_reference(a.numpy(), b.numpy()) for a, b in zip(x, y)]
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-6)
    np.testing.assert_allclose(N.ssim(x, x, "skimage").numpy(), 1.0, atol=1e-12)


def _ssim_gaussian_full_reference(a, b, data_range, k=11, sigma=1.5):
    """Gaussian SSIM (population covariance) averaged over the *whole* image, windows over a
    whole-sample reflect padding (numpy): the value torchmetrics returns and SyncDreamer reports."""
    r = (k - 1) // 2
    g1 = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    g1 /= g1.sum()

    def f(z):
        z = np.pad(z, ((0, 0), (r, r), (r, r)), mode="reflect")
        z = np.apply_along_axis(lambda v: np.convolve(v, g1, "valid"), 1, z)
        return np.apply_along_axis(lambda v: np.convolve(v, g1, "valid"), 2, z)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ux, uy = f(a), f(b)
    vx, vy, vxy = f(a * a) - ux ** 2, f(b * b) - uy ** 2, f(a * b) - ux * uy
    return (((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))).mean()


def test_ssim_torchmetrics_gaussian_variant_matches_reference_and_differs_from_skimage():
    """SyncDreamer's torchmetrics SSIM: Gaussian 11 / 1.5, data range inferred per pair, mean
    over the full reflect-padded image. It is neither the uniform nor skimage's Gaussian SSIM."""
    x, y = _pair(1)
    got = N.ssim(x, y, "torchmetrics_gaussian")
    ref, sk_gauss = [], []
    for a, b in zip(x.numpy(), y.numpy()):
        dr = max(a.max() - a.min(), b.max() - b.min())
        ref.append(_ssim_gaussian_full_reference(a, b, dr))
        sk_gauss.append(structural_similarity(a, b, data_range=dr, channel_axis=0, gaussian_weights=True,
                                              sigma=1.5, use_sample_covariance=False))
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-6)
    assert np.abs(got.numpy() - sk_gauss).min() > 1e-4
    assert (got - N.ssim(x, y, "skimage")).abs().max() > 1e-3
    with pytest.raises(ValueError):
        N.ssim(x, y, "gaussian")


def test_best_of_n_mean_over_samples_and_mean_sample_by_hand():
    gt = _const(0.5, n=2)
    off = torch.tensor([[0.1, 0.2], [-0.1, -0.4], [0.3, 0.01]], dtype=torch.float64)   # [S=3, N=2]
    samples = gt[None] + off[:, :, None, None, None]
    res = N.evaluate_samples(samples, gt, ssim_variant="skimage", best_of=(1, 2, 3, 5))
    ps = res["with_bkgd"]["psnr"]
    db = lambda a: -20 * math.log10(abs(a))
    assert ps["samples"]["mean"] == pytest.approx(np.mean([db(a) for a in off.flatten().tolist()]))
    assert ps["samples"]["best_of"][1] == pytest.approx((db(0.1) + db(0.2)) / 2)
    assert ps["samples"]["best_of"][2] == pytest.approx((db(0.1) + db(0.2)) / 2)     # |-0.1| ties 0.1; 0.2 < 0.4
    assert ps["samples"]["best_of"][3] == pytest.approx((db(0.1) + db(0.01)) / 2)
    assert 5 not in ps["samples"]["best_of"]                                          # n > S omitted
    # mean sample: offsets average to 0.1 and -0.19/3 per view
    assert ps["mean_sample"]["mean"] == pytest.approx((db(0.1) + db((0.2 - 0.4 + 0.01) / 3)) / 2)
    assert ps["per_view_mean"][1] == pytest.approx(np.mean([db(0.2), db(0.4), db(0.01)]))
    # LPIPS without a hook is an explicit skip, never a number
    assert res["with_bkgd"]["lpips"]["status"] == N.SKIPPED and res["info"]["ssim_variant"] == "skimage"


def test_only_fg_background_by_hand():
    pred, gt = _const(0.2, n=1), _const(0.6, n=1)
    soft = torch.full((1, 1, 12, 12), 0.25, dtype=torch.float64)
    p2, g2 = N.apply_background(pred, gt, soft, "only_fg")
    assert torch.allclose(p2, _const(0.8, n=1)) and torch.allclose(g2, _const(0.9, n=1))
    assert N.psnr(p2, g2).item() == pytest.approx(20.0)
    half = torch.zeros(1, 1, 12, 12, dtype=torch.float64)
    half[..., :6] = 1
    res = N.evaluate_samples(pred[None], gt, half, backgrounds=("with_bkgd", "only_fg"))
    assert res["only_fg"]["psnr"]["samples"]["mean"] == pytest.approx(-10 * math.log10(0.5 * 0.16))
    assert res["with_bkgd"]["psnr"]["samples"]["mean"] == pytest.approx(-10 * math.log10(0.16))
    with pytest.raises(ValueError):
        N.apply_background(pred, gt, None, "only_fg")


def test_co3d_challenge_metrics_by_hand():
    H = W = 16
    gt = np.full((3, H, W), 0.5)
    gt_mask = np.full((1, H, W), 0.3)
    gt_mask[..., :8] = 0.9                                    # > 0.5 on the left half only
    pred = np.zeros((3, H, W))
    pred[..., :8] = 0.6                                       # black background, fg off by 0.1
    pred_mask = np.zeros((1, H, W))
    pred_mask[..., :12] = 1.0
    gt_depth = np.full((1, H, W), 2.0)
    gt_depth[0, 7, 7] = np.nan                                # non-finite GT depth -> invalid
    depth = np.ones((1, H, W))
    r = N.co3d_challenge_metrics(pred, depth, pred_mask, gt, gt_depth, gt_mask)
    assert r["psnr_fg"] == pytest.approx(20.0)
    assert r["psnr_masked"] == pytest.approx(-10 * math.log10(0.5 * 0.01))
    assert r["psnr_full_image"] == pytest.approx(-10 * math.log10(0.5 * 0.01 + 0.5 * 0.25))
    assert r["iou"] == pytest.approx(8 * 16 / (12 * 16 + 1e-4))
    assert r["depth_abs_fg"] == pytest.approx(0.0, abs=1e-12)  # optimal scale 2 makes 1 -> 2
    # identical images: MSE clipped at 1e-10 -> 100 dB (CO3D), not inf
    same = N.co3d_challenge_metrics(gt * (gt_mask > 0.5), depth, pred_mask, gt, gt_depth, gt_mask)
    assert same["psnr_masked"] == pytest.approx(100.0) and same["psnr_fg"] == pytest.approx(100.0)
    # blank prediction: zero image, mask and depth
    z = np.zeros((1, H, W))
    blank = N.co3d_challenge_metrics(np.zeros((3, H, W)), z, z, gt, gt_depth, gt_mask)
    assert blank["iou"] == 0.0 and blank["psnr_fg"] == pytest.approx(-10 * math.log10(0.25))
    assert blank["depth_abs_fg"] == pytest.approx(2.0)        # scale 1, |2 - 0| on every valid pixel
    with pytest.raises(ValueError):
        N.co3d_challenge_metrics(pred * np.nan, depth, pred_mask, gt, gt_depth, gt_mask)


def test_optimal_l1_scale_minimises_l1_against_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(5):
        x = rng.uniform(0.1, 3, 40)
        y = 1.7 * x + rng.normal(0, 0.3, 40)
        s = N.optimal_l1_scale(x, y)
        grid = np.concatenate([y / x, np.linspace(0, 4, 4001)])
        best = min(np.abs(y - g * x).sum() for g in grid)
        assert np.abs(y - s * x).sum() == pytest.approx(best, rel=1e-12)
    assert N.optimal_l1_scale(np.zeros(5), np.ones(5)) == 1.0  # no weight: CO3D returns 1


def test_lpips_hook_skips_without_weights_and_runs_with_local_weights(tmp_path):
    import torchvision
    hook = N.lpips_hook(None)
    assert not hook.available and "skipped" in hook.note
    missing = N.lpips_hook(str(tmp_path / "nope.pth"), net="squeeze")
    assert not missing.available
    torch.manual_seed(0)
    path = tmp_path / "squeezenet.pth"
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), path)
    hook = N.lpips_hook(str(path), net="squeeze", device="cpu")
    x = torch.rand(2, 3, 32, 32)
    y = (x + 0.3 * torch.rand(2, 3, 32, 32)).clamp(0, 1)
    res = N.evaluate_samples(torch.stack([x, y]), x, ssim_variant="skimage", best_of=(1, 2), lpips=hook)
    lp = res["with_bkgd"]["lpips"]
    assert lp["samples"]["best_of"][2] == pytest.approx(0.0, abs=1e-6)  # sample 0 equals GT: min 0
    assert lp["samples"]["best_of"][1] == pytest.approx(0.0, abs=1e-6) and lp["samples"]["mean"] > 0
