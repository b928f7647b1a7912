"""Sample schemas (pipelines.sample_schema): round trips, stock-webdataset decoding (the
independent reader), validation of bad samples, determinism, viewsets."""
from __future__ import annotations

import io
import json
import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_shards import make_pair, make_pairs, sample_keys  # noqa: E402

from pipelines import shards as shards_mod  # noqa: E402
from pipelines.sample_schema import IVID_PAIR, IVID_PAIR_V1, VIEWSET, get_schema  # noqa: E402
from pipelines.shards import write_shards  # noqa: E402

IVID_FIELDS = ("target", "cond", "target_depth", "cond_depth", "mask", "mask_rgb")


def _pair():
    return make_pair(sample_keys(3)[1], 0)


def _assert_pair_equal(got: dict, p: dict) -> None:
    for k in IVID_FIELDS:
        assert got[k].dtype == p[k].dtype and np.array_equal(got[k], p[k]), k
    assert got["camera"] == json.loads(json.dumps(p["camera"], default=lambda o: o.tolist()))
    assert got["meta"] == {**p["meta"], "sample_key": p["sample_key"]}
    assert (got["key"], got["sample_key"], got["pose"], got["label"]) == \
        (p["key"], p["sample_key"], p["pose"], p["label"])


@pytest.mark.parametrize("schema", [IVID_PAIR, IVID_PAIR_V1])
def test_ivid_round_trip_and_determinism(schema):
    for label in (None, 4):
        p = {**_pair(), "label": label}
        enc = schema.encode(p)
        assert enc == schema.encode(p) and all(isinstance(v, bytes) for k, v in enc.items() if k != "__key__")
        assert ("label.cls" in enc) == (label is not None)
        assert schema.validate_members(enc) == []
        _assert_pair_equal(schema.decode_sample(enc), p)


def _write(tmp_path, schema=IVID_PAIR, monkeypatch=None):
    if schema is not IVID_PAIR:  # the writer with an older schema (for the comparison)
        monkeypatch.setattr(shards_mod, "IVID_PAIR", schema)
        monkeypatch.setattr(shards_mod, "SAMPLE_SCHEMA", schema.name)
    m = write_shards(make_pairs(6), tmp_path, fractions={"train": 1.0}, maxcount=100, dataset_version="t")
    assert m["sample_schema"] == schema.name
    return [str(tmp_path / s["name"]) for s in m["shards"]]


def test_stock_webdataset_decodes_depth_exactly(tmp_path):
    """The consumer's view: plain ``webdataset`` with its default decoders, no viewforge code."""
    urls = _write(tmp_path)
    pairs = {p["key"]: p for p in make_pairs(6)}
    n = 0
    for rgb, raw in zip(wds.WebDataset(urls, shardshuffle=False).decode("rgb"),
                        wds.WebDataset(urls, shardshuffle=False).decode()):
        p = pairs[rgb["__key__"]]
        n += 1
        for k in ("target_depth", "cond_depth"):
            for s in (rgb, raw):
                assert s[f"{k}.npy.gz"].dtype == np.uint16 and np.array_equal(s[f"{k}.npy.gz"], p[k]), k
        for k in ("target", "cond"):
            assert np.array_equal(rgb[f"{k}.png"], p[k].astype(np.float32) / 255), k
        for k in ("mask", "mask_rgb"):
            assert np.array_equal(rgb[f"{k}.png"][..., 0], p[k].astype(np.float32)), k
        assert raw["camera.json"]["depth_encoding"]["far"] == 100.0 and raw["pose.cls"] == p["pose"]
    assert n == len(pairs)


def test_old_png_depth_is_what_stock_decoders_clip(tmp_path, monkeypatch):
    """Control for the test above: ivid_pair/1's 16-bit depth PNG, read by the same stock
    ``.decode("rgb")``, loses the depth (issue 12); viewforge's schema still reads it exactly."""
    urls = _write(tmp_path, IVID_PAIR_V1, monkeypatch)
    pairs = {p["key"]: p for p in make_pairs(6)}
    for s in wds.WebDataset(urls, shardshuffle=False).decode("rgb"):
        p = pairs[s["__key__"]]
        assert not np.allclose(s["target_depth.png"][..., 0] * 65535, p["target_depth"], atol=1)
    for raw in wds.WebDataset(urls, shardshuffle=False):
        _assert_pair_equal(IVID_PAIR_V1.decode_sample(raw), pairs[raw["__key__"]])


def test_schema_decode_is_a_webdataset_handler(tmp_path):
    urls = _write(tmp_path)
    pairs = {p["key"]: p for p in make_pairs(6)}
    for s in wds.WebDataset(urls, shardshuffle=False).decode(IVID_PAIR.decode):
        p = pairs[s["__key__"]]
        assert s["mask.png"].dtype == np.bool_ and np.array_equal(s["mask.png"], p["mask"])
        _assert_pair_equal(IVID_PAIR.decode_sample(s), p)  # already-decoded values pass through
    assert IVID_PAIR.decode(".unknown.txt", b"x") is None


@pytest.mark.parametrize("change, expected", [
    (lambda p: p.update(target_depth=p["target_depth"].astype(np.float32)), "target_depth: must be uint16"),
    (lambda p: p.update(cond=p["cond"][:5]), "cond: shape (5, 10) != target_depth (12, 10)"),
    (lambda p: p.update(mask=p["mask"].astype(np.uint8)), "mask: must be bool"),
    (lambda p: p.update(key="a.b"), "invalid sample key 'a.b'"),
    (lambda p: p.update(key="x" * 81), "at most 80 chars"),
    (lambda p: p.update(camera={"K": []}), "depth_encoding"),
    (lambda p: p.update(pose=True), "pose: must be an int"),
    (lambda p: p.pop("cond"), "cond: missing"),
    (lambda p: p.update(sample_key=""), "sample_key"),
])
def test_ivid_validation_names_the_problem(change, expected):
    p = _pair()
    change(p)
    problems = IVID_PAIR.validate(p)
    assert any(expected in q for q in problems), problems
    with pytest.raises(ValueError, match="ivid_pair/2 sample"):
        IVID_PAIR.encode(p)


def test_validate_members_reports_missing_unknown_and_corrupt():
    enc = IVID_PAIR.encode(_pair())
    assert IVID_PAIR.validate_members(enc) == []
    missing = {k: v for k, v in enc.items() if k != "cond.png"}
    assert any("missing members ['cond.png']" in q for q in IVID_PAIR.validate_members(missing))
    assert IVID_PAIR.validate_members({**enc, "extra.txt": b"1"}) == ["extra.txt: unknown member"]
    bad = IVID_PAIR.validate_members({**enc, "target.png": b"not a png"})
    assert len(bad) == 1 and "target.png: does not decode" in bad[0]
    v1 = IVID_PAIR_V1.encode(_pair())  # old members under the new schema: named, not guessed
    assert "target_depth.png: unknown member" in IVID_PAIR.validate_members(v1)


def test_registry_and_pickling():
    assert get_schema("ivid_pair/2") is IVID_PAIR and get_schema("viewset/1") is VIEWSET
    assert pickle.loads(pickle.dumps(IVID_PAIR)) is IVID_PAIR
    with pytest.raises(ValueError, match="unknown sample_schema 'nope/1'"):
        get_schema("nope/1")


# ------------------------------------------------------------------------------ viewsets
def _viewset(v: int = 3) -> dict:
    rng = np.random.default_rng(7)
    hws = [(8 + i, 6 + 2 * i) for i in range(v)]
    w2c = np.tile(np.eye(4), (v, 1, 1))
    w2c[:, :3, 3] = rng.normal(size=(v, 3))
    return {
        "key": "co3d-apple-110_13051",
        "rgb": [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in hws],
        "alpha": [rng.integers(0, 256, (h, w), dtype=np.uint8) for h, w in hws],
        "depth": [rng.integers(0, 65536, (h, w), dtype=np.uint16) for h, w in hws],
        "depthmask": None,
        "cams": {"w2c": w2c, "K": np.tile(np.diag([50.0, 50.0, 1.0]), (v, 1, 1)),
                 "hw": np.asarray(hws, np.int32), "crop_xywh": rng.random((v, 4)) * 100,
                 "scale": np.full((v, 2), 0.5), "src_hw": np.asarray(hws, np.int32) * 2},
        "views": [{"frame_number": i, "azimuth_deg": 30.0 * i} for i in range(v)],
        "meta": {"dataset": "co3d", "depth_scale": 1e-3, "sequence": "110_13051"},
    }


def test_viewset_round_trip_and_stock_decoding(tmp_path):
    s = _viewset()
    enc = VIEWSET.encode(s)
    assert enc == VIEWSET.encode(s)
    assert sorted(k for k in enc if k.startswith("001.")) == ["001.alpha.png", "001.depth.npy.gz", "001.rgb.png"]
    with zipfile.ZipFile(io.BytesIO(enc["cams.npz"])) as z:  # fixed timestamps: deterministic bytes
        assert {i.date_time for i in z.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    dec = VIEWSET.decode_sample(enc)
    assert VIEWSET.validate(dec) == [] and dec["depthmask"] is None
    for f in ("rgb", "alpha", "depth"):
        assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(dec[f], s[f])), f
    assert all(np.array_equal(dec["cams"][k], s["cams"][k]) for k in s["cams"])
    assert (dec["views"], dec["meta"]) == (s["views"], s["meta"])
    with wds.TarWriter(str(tmp_path / "v.tar"), encoder=False) as tw:
        tw.write(enc)
    (stock,) = list(wds.WebDataset(str(tmp_path / "v.tar"), shardshuffle=False).decode("rgb"))
    assert np.array_equal(stock["002.depth.npy.gz"], s["depth"][2])
    assert np.array_equal(stock["002.rgb.png"], s["rgb"][2].astype(np.float32) / 255)
    assert stock["cams.npz"]["w2c"].dtype == np.float64 and np.array_equal(stock["cams.npz"]["w2c"], s["cams"]["w2c"])
    assert np.asarray(Image.open(io.BytesIO(enc["000.alpha.png"]))).tolist() == s["alpha"][0].tolist()


@pytest.mark.parametrize("change, expected", [
    (lambda s: s["alpha"].pop(), "alpha: 2 views, rgb has 3"),
    (lambda s: s["depth"].__setitem__(1, s["depth"][1][:4]), "depth[1]: shape (4, 8) != rgb (9, 8)"),
    (lambda s: s["cams"].__setitem__("hw", s["cams"]["hw"][::-1].copy()), "cams.hw: must be integer and equal"),
    (lambda s: s["cams"].__setitem__("K", s["cams"]["K"].astype(np.float32)), "cams.K: must be finite float64"),
    (lambda s: s["cams"]["w2c"].__setitem__((0, 3, 0), 1.0), "cams.w2c: last row"),
    (lambda s: s["cams"].pop("scale"), "cams.scale: must have shape (3, 2)"),
    (lambda s: s["meta"].pop("depth_scale"), "meta.depth_scale"),
    (lambda s: s["views"].pop(), "views: 2 views, rgb has 3"),
    (lambda s: s.update(rgb=[]), "rgb: must be a non-empty sequence"),
])
def test_viewset_validation_names_the_problem(change, expected):
    s = _viewset()
    change(s)
    problems = VIEWSET.validate(s)
    assert any(expected in q for q in problems), problems


def test_viewset_missing_view_member_is_reported():
    enc = VIEWSET.encode(_viewset())
    del enc["001.alpha.png"]
    assert "alpha[1]: missing" in VIEWSET.validate_members(enc)
