"""Each kind of broken sequence raises ViewsetError with its own reason (the stage
quarantines it with that reason), and the restricted unpickler refuses code."""
import json
import pickle
import shutil

import numpy as np
import pytest

import viewset_fixtures as F
from pipelines.viewsets import ViewsetError, load_viewset
from pipelines.viewsets.io import load_pickle_restricted


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    K, w2c = F.orbit_cameras(3, 32, 40, seed=4)
    rgb, alpha, depth = F.render_views(K, w2c, 32, 40, ss=1)
    F.write_transforms_json(root / "tj", K, w2c, rgb, alpha, depth)
    F.write_colmap(root / "colmap", K, w2c, rgb, depth)
    F.write_co3d(root / "co3d", "toy", {"s": dict(K=K, w2c=w2c, rgb=rgb, alpha=alpha, depth=depth,
                                                  fmt="ndc_isotropic")})
    return root


def copy(good, tmp_path, name):
    shutil.copytree(good / name, tmp_path / name)
    return tmp_path / name


def reason(path, fmt, **kw):
    with pytest.raises(ViewsetError) as e:
        load_viewset(path, fmt, **kw)
    return e.value.reason


def edit_json(p, fn):
    d = json.loads(p.read_text())
    fn(d)
    p.write_text(json.dumps(d))


def test_good_fixtures_load(good):
    for name, fmt in (("tj", "transforms_json"), ("colmap", "colmap"), ("co3d/toy/s", "co3d")):
        assert load_viewset(good / name, fmt).num_views == 3


def test_missing_files(good, tmp_path):
    d = copy(good, tmp_path, "tj")
    (d / "images" / "frame_00001.png").unlink()
    assert reason(d, "transforms_json") == "missing_files"
    assert reason(tmp_path / "nothing", "colmap") == "missing_files"
    d = copy(good, tmp_path, "co3d")
    (d / "toy" / "s" / "depths" / "frame000002.jpg.geometric.png").unlink()
    assert reason(d / "toy" / "s", "co3d") == "missing_files"
    assert reason(d / "toy" / "not_a_sequence", "co3d") == "missing_files"


def test_unreadable_image(good, tmp_path):
    d = copy(good, tmp_path, "colmap")
    (d / "images" / "view_001.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert reason(d, "colmap") == "unreadable_image"


@pytest.mark.parametrize("breakage", ["scale", "nan", "reflection"])
def test_degenerate_camera(good, tmp_path, breakage):
    d = copy(good, tmp_path, "tj")

    def f(j):
        M = np.array(j["frames"][1]["transform_matrix"])
        if breakage == "scale":
            M[:3, :3] *= 1.1                  # non-rigid
        elif breakage == "nan":
            M[0, 3] = float("nan")
        else:
            M[:3, 0] *= -1                    # det = -1
        j["frames"][1]["transform_matrix"] = M.tolist()
    edit_json(d / "transforms.json", f)
    assert reason(d, "transforms_json") == "degenerate_camera"


def test_degenerate_co3d_rotation(good, tmp_path):
    import gzip
    d = copy(good, tmp_path, "co3d")
    p = d / "toy" / "frame_annotations.jgz"
    frames = json.loads(gzip.open(p, "rt").read())
    frames[0]["viewpoint"]["R"] = (np.array(frames[0]["viewpoint"]["R"]) * 0.5).tolist()
    with gzip.open(p, "wt") as f:
        json.dump(frames, f)
    assert reason(d / "toy" / "s", "co3d") == "degenerate_camera"


def test_too_few_views(good, tmp_path):
    d = copy(good, tmp_path, "tj")
    edit_json(d / "transforms.json", lambda j: j.update(frames=j["frames"][:1]))
    assert reason(d, "transforms_json") == "too_few_views"
    assert load_viewset(d, "transforms_json", min_views=1).num_views == 1


def test_inconsistent_views_and_malformed(good, tmp_path):
    d = copy(good, tmp_path, "tj")
    F.save_rgb(d / "images" / "frame_00002.png", np.zeros((3, 20, 20), np.float32))
    assert reason(d, "transforms_json") == "inconsistent_views"
    (d / "transforms.json").write_text("{not json")
    assert reason(d, "transforms_json") == "malformed_metadata"


def test_unsupported_distortion(good, tmp_path):
    d = copy(good, tmp_path, "colmap")
    cams = d / "sparse" / "0" / "cameras.txt"
    lines = cams.read_text().splitlines()
    p = lines[1].split()
    lines[1] = " ".join([p[0], "OPENCV"] + p[2:] + ["0.1", "0", "0", "0"])
    cams.write_text("\n".join(lines) + "\n")
    assert reason(d, "colmap") == "unsupported"


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("echo pwned > /dev/null",))


def test_restricted_unpickler(tmp_path):
    p = tmp_path / "meta.pkl"
    p.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(ViewsetError) as e:
        load_pickle_restricted(p)
    assert e.value.reason == "malformed_metadata" and "not allowed" in str(e.value)
    ok = [np.eye(3, dtype=np.float32), np.arange(4.0), 1.5, ("a", {"b": [1]})]
    p.write_bytes(pickle.dumps(ok))
    out = load_pickle_restricted(p)
    np.testing.assert_array_equal(out[0], ok[0])
    assert out[3] == ok[3]


def test_unknown_reason_and_format_are_programming_errors():
    with pytest.raises(ValueError):
        ViewsetError("whatever")
    with pytest.raises(ValueError):
        load_viewset(".", "no_such_format")
