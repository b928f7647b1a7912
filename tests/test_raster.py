"""The numba and tensor rasteriser backends (pipelines.raster) give bit-identical warps."""
from __future__ import annotations

import pytest
import torch

from pipelines import raster
from pipelines.warping import forward_backward_warp, forward_warp
from test_warping import K_of, random_pose, smooth, textured

pytest.importorskip("numba")


def _both(monkeypatch, fn):
    monkeypatch.setenv(raster.BACKEND_ENV, "torch")
    a = fn()
    monkeypatch.setenv(raster.BACKEND_ENV, "numba")
    b = fn()
    return a, b


def _scene(B, H, W, seed):
    g = torch.Generator().manual_seed(seed)
    img, depth = textured(B, H, W, seed), smooth((B, 1, H, W), 0.8, 1.6, seed=seed + 7)
    depth[:, :, H // 4: H // 2, W // 3: W // 2] *= 0.6           # a nearer box: discontinuities
    depth[0, 0, 0, :3] = float("inf")                              # invalid pixels
    return img, depth, torch.stack([random_pose(g) for _ in range(B)])


@pytest.mark.parametrize("ss", [1, 2, 3, 4])
def test_forward_backward_identical(monkeypatch, ss):
    img, depth, T = _scene(3, 40, 56, seed=ss)
    K = K_of(40, 56)
    a, b = _both(monkeypatch, lambda: forward_backward_warp(img, depth, K, T, supersample=ss))
    assert a.mask.any() and not a.mask.all()
    for x, y in ((a.cond_image, b.cond_image), (a.cond_depth, b.cond_depth), (a.mask, b.mask)):
        assert torch.equal(x, y)


def test_forward_warp_with_mask_padding_and_out_size_identical(monkeypatch):
    img, depth, T = _scene(2, 33, 47, seed=11)
    K = K_of(33, 47)
    src_mask = torch.rand(2, 1, 33, 47, generator=torch.Generator().manual_seed(0)) > 0.1

    def run():
        return forward_warp(img, depth, K, K_of(29, 61), T, out_size=(29, 61), padding=1.5, src_mask=src_mask)
    a, b = _both(monkeypatch, run)
    assert a.mask.sum() > 100
    for x, y in ((a.image, b.image), (a.depth, b.depth), (a.mask, b.mask)):
        assert torch.equal(x, y)


def test_numba_is_used_on_cpu(monkeypatch):
    calls = []
    real = raster.rasterise_numba
    monkeypatch.setattr(raster, "rasterise_numba", lambda *a: calls.append(1) or real(*a))
    monkeypatch.delenv(raster.BACKEND_ENV, raising=False)
    img, depth, T = _scene(1, 16, 16, seed=3)
    forward_backward_warp(img, depth, K_of(16, 16), T)
    assert len(calls) == 2          # forward and backward render
