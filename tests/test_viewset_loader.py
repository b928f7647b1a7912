"""Viewset loader adapters (issue 14): shapes, ranges and cameras of ViewDiff, SyncDreamer
and Viewset Diffusion samples from shards built by the viewset stages on fixtures."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import webdataset as wds

import viewset_fixtures as F
from pipelines.params_schema import validate_params
from pipelines.stages.viewsets import run_viewset_graph
from pipelines.viewsets.normalise import Similarity, viewdiff_normalisation
from pipelines.viewsets.ring import syncdreamer_ring
from training.viewset_data import make_viewset_dataset

torch.set_num_threads(1)


def build(tmp_path, name, fmt, write):
    src = tmp_path / f"{name}_src"
    write(src)
    root = tmp_path / name
    p = validate_params({"profile": "smoke", "viewset_source": {"root": str(src), "format": fmt},
                         "viewset_shards": {"split_fractions": {"train": 1.0}}})
    run_viewset_graph(str(root), p)
    return root / "viewset_shards"


@pytest.fixture(scope="module")
def co3d(tmp_path_factory):
    """One CO3D sequence (depth, masks, ndc_isotropic, 48x64) + its generating cameras."""
    tmp = tmp_path_factory.mktemp("co3d")
    H, W = 48, 64
    K, w2c = F.orbit_cameras(6, H, W, seed=1)
    rgb, alpha, depth = F.render_views(K, w2c, H, W)
    seq = dict(K=K, w2c=w2c, rgb=rgb, alpha=alpha, depth=depth, fmt="ndc_isotropic", scale_adjustment=2.0)
    shards = build(tmp, "co3d", "co3d", lambda s: F.write_co3d(s, "toy", {"seq0": seq}))
    return shards, seq


@pytest.fixture(scope="module")
def ring(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ring")
    return build(tmp, "ring", "syncdreamer", lambda s: F.write_syncdreamer(s, "uid0", size=32))


def first(ds):
    return next(iter(ds))


def test_viewdiff_adapter_shapes_range_and_cameras(co3d):
    shards, seq = co3d
    s = first(make_viewset_dataset(shards, "train", "viewdiff"))
    assert s["images"].shape == (5, 3, 256, 256) and s["images"].min() >= -1 and s["images"].max() <= 1
    assert s["K"].shape == (5, 3, 3) and s["w2c"].shape == (5, 4, 4) and s["foreground_prob"].shape == (5, 1, 256, 256)
    lo, hi = s["bbox"]
    assert np.isclose((hi - lo).max(), 2.0) and np.allclose((hi + lo) / 2, 0, atol=1e-9)   # AABB -> [-1,1]^3
    # independent truth: a fixture-world point seen by the generating camera of each chosen view,
    # mapped through the stored crop and the adapter's centre square crop / resize
    raw = next(iter(wds.WebDataset(str(next(shards.glob("bucket=*/train-*.tar"))), shardshuffle=False)))
    meta = json.loads(raw["meta.json"])
    cams = np.load(__import__("io").BytesIO(raw["cams.npz"]))
    to_canon = Similarity.from_matrix(meta["normalization"]["world_to_canonical"]["matrix"])
    to_vd = to_canon.then(viewdiff_normalisation(meta["bbox_canonical"]))
    X = F.SPHERE_C + np.array([0.1, -0.05, 0.2])
    for i, v in enumerate(s["views"]):
        xc = seq["w2c"][v, :3, :3] @ X + seq["w2c"][v, :3, 3]
        p = (seq["K"][v] @ xc)[:2] / xc[2]                                   # source pixel (centre convention)
        x0, y0, _, _ = cams["crop_xywh"][v]
        sx, sy = cams["scale"][v]
        p = (p - [x0, y0] + 0.5) * [sx, sy] - 0.5                             # stored view
        h, w = cams["hw"][v]
        side = min(h, w)
        p = (p - [(w - side) // 2, (h - side) // 2] + 0.5) * (256 / side) - 0.5   # ViewDiff centre crop
        y = s["w2c"][i, :3, :3] @ to_vd.apply_points(X) + s["w2c"][i, :3, 3]
        q = (s["K"][i] @ y)[:2] / y[2]
        assert np.allclose(p, q, atol=1e-6), (p, q)


def test_viewset_diffusion_ndc_cameras_match_opencv(co3d):
    shards, _ = co3d
    s = first(make_viewset_dataset(shards, "train", "viewset_diffusion"))
    assert s["images"].shape == (3, 3, 128, 128) and s["rays"].shape == (3, 6, 128, 128)
    assert s["images"].min() >= -1 and s["images"].max() <= 1
    S = 128
    rng = np.random.default_rng(0)
    for i in range(3):
        for X in rng.normal(0, 0.3, (5, 3)):
            # PyTorch3D: X_cam = X R + T; NDC x = f x/z + p (+x left, +y up); pixel (corner) = S/2 - ndc * S/2
            Xc = X @ s["R"][i] + s["T"][i]
            ndc = s["focal_length"][i] * Xc[:2] / Xc[2] + s["principal_point"][i]
            p3d = S / 2 - ndc * (S / 2) - 0.5                                 # -> centre convention
            y = s["w2c"][i, :3, :3] @ X + s["w2c"][i, :3, 3]
            assert np.allclose(p3d, (s["K"][i] @ y)[:2] / y[2], atol=1e-9)
        C = -s["w2c"][i, :3, :3].T @ s["w2c"][i, :3, 3]
        assert torch.allclose(s["rays"][i, :3], torch.tensor(C, dtype=torch.float32)[:, None, None].expand(3, S, S), atol=1e-5)
        assert torch.allclose(s["rays"][i, 3:].norm(dim=0), torch.ones(S, S), atol=1e-5)


def test_syncdreamer_adapter_ring(ring, co3d):
    s = first(make_viewset_dataset(ring, "train", "syncdreamer", size=64))
    k = s["azimuth_index"]
    assert s["input_image"].shape == (3, 64, 64) and s["target_image"].shape == (16, 3, 64, 64)
    assert torch.equal(s["target_image"][0], s["input_image"])                     # rolled to the input azimuth
    assert float(s["input_image"][:, 0, 0].min()) > 0.99                            # white background
    K, _, el, _, poses = syncdreamer_ring(image_size=64)
    assert np.allclose(s["poses"], np.roll(poses, -k, axis=0)) and np.allclose(s["K"], K)
    assert np.isclose(float(s["input_elevation"]), np.deg2rad(30.0))
    with pytest.raises(ValueError, match="ring"):
        first(make_viewset_dataset(co3d[0], "train", "syncdreamer"))               # captures are refused


def test_view_selection_deterministic_per_key_epoch_seed(co3d):
    shards, _ = co3d
    picks = []
    for epoch in (0, 0, 1, 2, 3):
        ds = make_viewset_dataset(shards, "train", "viewset_diffusion", seed=5)
        ds.set_epoch(epoch)
        picks.append(tuple(first(ds)["views"]))
    assert picks[0] == picks[1] and len(set(picks)) > 1


def test_refuses_non_viewset_and_hostile_manifests(tmp_path, co3d):
    shards, _ = co3d
    m = json.loads((shards / "manifest.json").read_text())
    bad = tmp_path / "bad"
    bad.mkdir()
    m["shards"][0]["name"] = "pipe:touch /tmp/x"
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="refusing shard name"):
        make_viewset_dataset(bad, "train")
    m["sample_schema"] = "ivid_pair/2"
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="viewset/1"):
        make_viewset_dataset(bad, "train")
