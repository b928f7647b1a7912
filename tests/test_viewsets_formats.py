"""Every viewset reader against fixtures written in its exact on-disk format (issue 14).

For each format: the cameras load_viewset returns equal the generating OpenCV cameras
(1e-5), and forward-warping view i into view j with view i's depth
(pipelines.warping.forward_warp) reproduces view j at >= 30 dB PSNR on covered pixels.
A 0.5 px principal-point error or a flipped axis fails the first check; the warping check
proves images, depth and cameras belong together (and is shown to fail with a wrong pose).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import viewset_fixtures as F
from pipelines.viewsets import ViewsetError, list_sequences, load_viewset
from pipelines.warping import forward_warp

CAPTURE_HW = (64, 80)     # non-square, landscape
PORTRAIT_HW = (80, 64)


def psnr(a, b, mask):
    m = mask.expand_as(a)
    return 10 * math.log10(1.0 / max(float(((a - b)[m] ** 2).mean()), 1e-20))


def warp_check(vs, i, j, depth=None, w2c=None):
    """(PSNR on covered pixels, covered fraction) of view i warped into view j."""
    w2c = vs.w2c if w2c is None else w2c
    d = vs.depth[i] if depth is None else depth
    T = torch.tensor(w2c[j] @ np.linalg.inv(w2c[i]), dtype=torch.float32)
    Ki, Kj = (torch.tensor(vs.K[k], dtype=torch.float32) for k in (i, j))
    r = forward_warp(vs.images[i], d, Ki, Kj, T)
    return psnr(r.image, vs.images[j], r.mask), float(r.mask.float().mean())


def z0(depth):
    return torch.tensor(np.where(np.isfinite(depth), depth, 0.0), dtype=torch.float32)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("viewsets")
    out = {}
    seqs = {}
    for name, hw, fmt, seed in (("seq_iso", CAPTURE_HW, "ndc_isotropic", 0),
                                ("seq_legacy", PORTRAIT_HW, "ndc_norm_image_bounds", 1)):
        K, w2c = F.orbit_cameras(4, *hw, seed=seed)
        rgb, alpha, depth = F.render_views(K, w2c, *hw)
        seqs[name] = dict(K=K, w2c=w2c, rgb=rgb, alpha=alpha, depth=depth, fmt=fmt, scale_adjustment=0.73)
    F.write_co3d(root / "co3d", "toy", seqs, splits={"seq_iso": "train", "seq_legacy": "test"})
    out["co3d"] = seqs
    K, w2c = F.orbit_cameras(4, *CAPTURE_HW, seed=2)
    rgb, alpha, depth = F.render_views(K, w2c, *CAPTURE_HW)
    cap = dict(K=K, w2c=w2c, rgb=rgb, alpha=alpha, depth=depth)
    F.write_transforms_json(root / "tj" / "scene", K, w2c, rgb, alpha, depth)
    F.write_colmap(root / "colmap" / "scene", K, w2c, rgb, depth)
    out["capture"] = cap
    out["sd"] = F.write_syncdreamer(root / "sd", "uid0")
    F.write_gso(root / "gso" / "obj0", out["sd"]["target"])
    out["srn"] = F.write_srn(root / "srn" / "cars_test" / "car0")
    out["root"] = root
    return out


def assert_cameras(vs, K, w2c):
    np.testing.assert_allclose(vs.K, K, atol=1e-5)
    np.testing.assert_allclose(vs.w2c, w2c, atol=1e-5)
    assert vs.K.dtype == np.float64 and vs.w2c.dtype == np.float64


def assert_warps(vs, depth_of=None, min_cover=0.05):
    for i, j in ((0, 1), (1, 0), (1, 2), (2, 3)):
        p, cover = warp_check(vs, i, j, None if depth_of is None else depth_of(i))
        assert cover >= min_cover, (i, j, cover)
        assert p >= 30.0, (vs.format, i, j, p)


def assert_images(vs, rgb, tol):
    assert vs.images.dtype == torch.float32 and vs.images.shape == rgb.shape
    assert float((vs.images - torch.tensor(rgb)).abs().mean()) < tol


@pytest.mark.parametrize("seq", ["seq_iso", "seq_legacy"])
def test_co3d(data, seq):
    g = data["co3d"][seq]
    vs = load_viewset(data["root"] / "co3d" / "toy" / seq, "co3d", subset="fewview_dev")
    assert_cameras(vs, g["K"], g["w2c"])
    assert vs.images.shape[2:] == g["rgb"].shape[2:]          # non-square frames kept
    assert vs.frame_numbers == [1, 4, 7, 10]                  # sorted by frame_number, not file order
    assert vs.names[0] == "images/frame000001.jpg"
    assert_images(vs, g["rgb"], 0.01)                         # JPEG
    # float16 bit patterns x scale_adjustment: relative error of float16 only
    zt = z0(g["depth"])
    ok = zt > 0
    assert torch.equal(vs.depth > 0, ok)
    assert float(((vs.depth - zt).abs() / zt.clamp_min(1e-6))[ok].max()) < 1e-3
    assert vs.depth_mask is not None and torch.equal(vs.depth_mask, ok)
    assert float((vs.alpha - torch.tensor(g["alpha"])).abs().max()) <= 0.5 / 255 + 1e-6
    assert vs.meta["intrinsics_formats"] == [g["fmt"]]
    assert vs.meta["splits"] == ["train" if seq == "seq_iso" else "test"] * 4
    assert_warps(vs, min_cover=0.3)


def test_co3d_lists_and_split_selection(data):
    refs = list(list_sequences(data["root"] / "co3d", "co3d", subset="fewview_dev"))
    assert [(r.id, r.split, r.num_views, r.category) for r in refs] == [
        ("co3d/toy/seq_iso", "train", 4, "toy"), ("co3d/toy/seq_legacy", "test", 4, "toy")]
    vs = load_viewset(refs[1].path, "co3d", **refs[1].load_options())
    assert vs.meta["eval_batches"] == [[4, 1]]
    with pytest.raises(ViewsetError) as e:
        load_viewset(refs[0].path, "co3d", subset="fewview_dev", split="test")
    assert e.value.reason == "too_few_views"
    assert [r.id for r in list_sequences(data["root"] / "co3d", "co3d")] == ["co3d/toy/seq_iso", "co3d/toy/seq_legacy"]


def test_transforms_json(data):
    g = data["capture"]
    vs = load_viewset(data["root"] / "tj" / "scene", "transforms_json")
    assert_cameras(vs, g["K"], g["w2c"])
    assert vs.names == [f"images/frame_{i:05d}.png" for i in range(4)]
    assert_images(vs, g["rgb"], 0.003)
    assert float((vs.depth - z0(g["depth"])).abs().max()) <= 0.0005 + 1e-6     # millimetre PNG
    assert vs.alpha is not None
    assert_warps(vs, min_cover=0.3)
    assert [r.id for r in list_sequences(data["root"] / "tj", "transforms_json")] == ["transforms_json/scene"]


def test_colmap(data):
    g = data["capture"]
    vs = load_viewset(data["root"] / "colmap" / "scene", "colmap")
    assert_cameras(vs, g["K"], g["w2c"])
    assert vs.names == [f"view_{i:03d}.png" for i in range(4)]
    assert float((vs.depth - z0(g["depth"])).abs().max()) < 1e-6             # float32 .bin
    assert_warps(vs, min_cover=0.3)
    refs = list(list_sequences(data["root"] / "colmap", "colmap"))
    assert [(r.id, r.num_views) for r in refs] == [("colmap/scene", 4)]


@pytest.mark.parametrize("kind", ["target", "input"])
def test_syncdreamer(data, kind):
    g = data["sd"][kind]
    vs = load_viewset(data["root"] / "sd" / kind / "uid0", "syncdreamer")
    assert_cameras(vs, g["K"], g["w2c"])
    assert vs.meta["render"] == ("fixed" if kind == "target" else "random")
    assert vs.meta.get("ring") == ("fixed16@30" if kind == "target" else None)
    assert float((vs.alpha - torch.tensor(g["alpha"])).abs().max()) <= 0.5 / 255 + 1e-6
    assert vs.depth is None
    assert_warps(vs, depth_of=lambda i: z0(g["depth"][i]))


def test_syncdreamer_listing_and_gso(data):
    refs = list(list_sequences(data["root"] / "sd", "syncdreamer"))
    assert [(r.id, r.category, r.num_views) for r in refs] == [("syncdreamer/uid0", "target", 16),
                                                                ("syncdreamer/uid0/input", "input", 16)]
    g = data["sd"]["target"]
    vs = load_viewset(data["root"] / "gso" / "obj0", "syncdreamer")
    assert_cameras(vs, g["K"], g["w2c"])
    zt = z0(g["depth"])
    ok = zt > 0
    assert torch.equal(vs.depth > 0, ok)
    assert float((vs.depth - zt).abs()[ok].max()) <= 1.8 / 65535 + 1e-6      # linear 0.6-2.4 quantum
    assert_warps(vs)
    assert [r.id for r in list_sequences(data["root"] / "gso", "syncdreamer")] == ["syncdreamer/obj0"]


def test_srn(data):
    g = data["srn"]
    vs = load_viewset(data["root"] / "srn" / "cars_test" / "car0", "srn")
    assert_cameras(vs, g["K"], g["w2c"])                  # intrinsics.txt at 128 px, images 64 px
    assert torch.equal(vs.alpha > 0, torch.tensor((g["rgb"] * 255).round() < 255).any(1, keepdim=True))
    assert_warps(vs, depth_of=lambda i: z0(g["depth"][i]))
    refs = list(list_sequences(data["root"] / "srn" / "cars_test", "srn"))
    assert [(r.id, r.split, r.num_views) for r in refs] == [("srn/cars_test/car0", "test", 8)]


def test_warp_check_fails_with_wrong_camera(data):
    """The PSNR criterion can fail: a 2 degree pan error of the target camera (~2.6 px)."""
    vs = load_viewset(data["root"] / "tj" / "scene", "transforms_json")
    c, s = math.cos(math.radians(2)), math.sin(math.radians(2))
    w2c = vs.w2c.copy()
    w2c[1] = np.array([[c, 0, s, 0], [0, 1, 0, 0], [-s, 0, c, 0], [0, 0, 0, 1]]) @ w2c[1]
    assert warp_check(vs, 0, 1)[0] >= 30
    assert warp_check(vs, 0, 1, w2c=w2c)[0] < 25
