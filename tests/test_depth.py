"""Depth stage: IVID convention (analytic), z-buffer round trip, real loading code path."""
import numpy as np
import pytest
import torch

from pipelines.depth import depth_rows, estimate_disparity, load_depth_model, load_disparity
from pipelines.depth_convention import (decode_zbuffer, disparity_to_depth, encode_zbuffer,
                                        normalize_disparity)
from pipelines.images import decode_png
from pipelines.models import RANDOM_WEIGHTS, WeightsUnavailableError


def test_ivid_disparity_normalisation_analytic():
    d = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]])  # max 4 -> 1/near = 2
    n = normalize_disparity(d, near=0.5, min_disparity=1e-3)
    assert torch.allclose(n, torch.tensor([[[[1e-3, 0.5], [1.0, 2.0]]]]))
    z = disparity_to_depth(d, near=0.5, min_disparity=1e-3)
    assert torch.allclose(z, torch.tensor([[[[1000.0, 2.0], [1.0, 0.5]]]]))
    # per image in a batch, and invariant to the estimator's scale
    batch = torch.cat([d, 7.5 * d])
    assert torch.allclose(disparity_to_depth(batch)[0], disparity_to_depth(batch)[1])


def test_zbuffer_roundtrip_and_ivid_formula():
    z = np.array([0.5, 1.0, 2.0, 10.0, 100.0, 1000.0, np.inf, -1.0])
    v = encode_zbuffer(z, near=0.5, far=100)
    assert v.dtype == np.uint16 and v[0] == 0 and v[4] == 65535 and v[5] == 65535 and v[6] == 65535 and v[7] == 65535
    # IVID: v = (d - 1/near) / (1/far - 1/near)
    assert abs(v[1] / 65535 - (1.0 - 2.0) / (0.01 - 2.0)) < 1e-5
    back = decode_zbuffer(v[:5], near=0.5, far=100)
    step = (2.0 - 0.01) / 65535  # disparity quantum
    assert np.all(np.abs(1 / back - 1 / z[:5]) <= step)


def test_local_checkpoint_loads_through_real_code(tiny_depth_dir):
    res = load_depth_model("nonexistent/model", str(tiny_depth_dir), profile="default", device="cpu")
    assert res.origin == f"local:{tiny_depth_dir}"
    imgs = (np.random.default_rng(0).random((3, 40, 60, 3)) * 255).astype(np.uint8)
    disp = estimate_disparity(res, imgs, batch_size=2)
    assert disp.shape == (3, 1, 40, 60) and disp.dtype == torch.float32 and torch.isfinite(disp).all()
    # batching does not change results
    assert torch.allclose(disp, estimate_disparity(res, imgs, batch_size=3), atol=1e-5)
    rows = depth_rows(["a", "b", "c"], disp, near=0.5, far=100, min_disparity=1e-3)
    assert torch.equal(load_disparity(rows), disp)
    assert decode_png(rows.column("depth_png")[0].as_py()).dtype == np.uint16


def test_unresolvable_weights_name_the_parameter():
    with pytest.raises(WeightsUnavailableError, match="depth.local_dir"):
        load_depth_model("nobody/nothing", "/does/not/exist", profile="default", device="cpu")


def test_demo_profile_falls_back_to_labelled_random_weights():
    res = load_depth_model("nobody/nothing", None, profile="demo", device="cpu")
    assert res.origin == RANDOM_WEIGHTS and res.is_random


def test_random_fallback_is_seeded_and_leaves_no_temp_dir(tmp_path, monkeypatch):
    import tempfile

    import pipelines.depth as depth_mod

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # an isolated system temp dir
    made = []
    real_save = depth_mod.save_tiny_depth_model

    def recording_save(path, **kw):
        made.append(path)
        return real_save(path, **kw)

    monkeypatch.setattr(depth_mod, "save_tiny_depth_model", recording_save)
    a = load_depth_model("nobody/nothing", None, profile="demo", device="cpu")
    torch.manual_seed(7)  # the caller's global state must not matter
    b = load_depth_model("nobody/nothing", None, profile="demo", device="cpu")
    assert len(made) == 2 and all(str(p).startswith(str(tmp_path)) for p in made)
    assert list(tmp_path.iterdir()) == []  # both loads removed their checkpoint directory
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    imgs = np.random.default_rng(0).integers(0, 255, (1, 28, 28, 3), dtype=np.uint8)
    assert torch.equal(estimate_disparity(a, imgs), estimate_disparity(b, imgs))
