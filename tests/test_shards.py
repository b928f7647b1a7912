"""Tests for pipelines.shards: determinism, splits, roll-over, verification, crash safety."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from pipelines.shard_manifest import MANIFEST_NAME, verify
from pipelines.shards import depth_encoding, encode_sample, split_of, write_shards

FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}
REPO = Path(__file__).resolve().parents[1]


def make_pair(sample_key: str, view: int, h: int = 12, w: int = 10) -> dict:
    """A synthetic IVID pair, fully determined by (sample_key, view)."""
    rng = np.random.default_rng(int(sample_key[:8], 16) * 10 + view)
    n = int(sample_key[:2], 16)
    return {
        "key": f"{sample_key}_{view:02d}", "sample_key": sample_key,
        "target": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
        "target_depth": rng.integers(0, 65536, (h, w), dtype=np.uint16),
        "cond": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
        "cond_depth": rng.integers(0, 65536, (h, w), dtype=np.uint16),
        "mask": rng.random((h, w)) > 0.5, "mask_rgb": rng.random((h, w)) > 0.3,
        "camera": {"K": np.eye(3).tolist(), "yaw": 0.1 * view, "pitch": -0.05, "radius": 1.0,
                   "w2c_src": np.eye(4), "depth_encoding": depth_encoding(0.5, 100.0)},
        "pose": n % 7, "label": None if n % 3 == 0 else n % 5,
        "meta": {"uri": f"mem://{sample_key}", "stage_versions": {"warp": "w1"}},
    }


def sample_keys(n: int) -> list[str]:
    return sorted(hashlib.sha256(f"img{i}".encode()).hexdigest()[:16] for i in range(n))


def make_pairs(n_images: int, views: int = 2):
    """Pairs sorted by key, generated lazily (streaming)."""
    for k in sample_keys(n_images):
        for v in range(views):
            yield make_pair(k, v)


def write(out, n_images=24, **kw):
    kw = {"fractions": FRACTIONS, "maxcount": 4, "dataset_version": "v1", **kw}
    return write_shards(make_pairs(n_images), out, **kw)


def tree(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_encode_sample_members_and_determinism():
    pair = make_pair(sample_keys(3)[0], 1)
    pair["label"] = None
    s = encode_sample(pair)
    assert s["__key__"] == pair["key"]
    assert set(s) == {"__key__", "target.png", "target_depth.npy.gz", "cond.png", "cond_depth.npy.gz",
                      "mask.png", "mask_rgb.png", "camera.json", "meta.json", "pose.cls"}
    assert encode_sample(pair) == s
    assert np.array_equal(np.load(io.BytesIO(gzip.decompress(s["target_depth.npy.gz"]))), pair["target_depth"])
    assert Image.open(io.BytesIO(s["mask.png"])).mode == "L"
    assert "label.cls" in encode_sample({**pair, "label": 3})
    with pytest.raises(ValueError):
        encode_sample({**pair, "target_depth": pair["target_depth"].astype(np.float32)})
    with pytest.raises(ValueError):
        encode_sample({**pair, "key": "a.b"})
    with pytest.raises(ValueError):
        encode_sample({**pair, "camera": {"K": []}})


def test_byte_identical_across_writes(tmp_path):
    m1 = write(tmp_path / "a")
    m2 = write(tmp_path / "b")
    assert m1 == m2
    assert tree(tmp_path / "a") == tree(tmp_path / "b")
    assert len(m1["shards"]) > 3
    with open(tmp_path / "a" / m1["shards"][0]["name"], "rb") as f:
        import tarfile
        for ti in tarfile.open(fileobj=f, mode="r|"):
            assert (ti.mtime, ti.uid, ti.gid, ti.mode, ti.uname, ti.gname) == \
                (0, 0, 0, 0o444, "viewforge", "viewforge")


def test_split_stability_when_dataset_grows(tmp_path):
    small, big = sample_keys(200), sample_keys(400)
    assert set(small) <= set(big)
    first = {k: split_of(k, FRACTIONS) for k in small}
    assert all(split_of(k, FRACTIONS) == s for k, s in first.items())
    # the split ignores dict order and depends on the sample key only
    assert all(split_of(k, dict(reversed(FRACTIONS.items()))) == s for k, s in first.items())
    counts = {s: sum(split_of(k, FRACTIONS) == s for k in big) for s in FRACTIONS}
    assert 0.5 < counts["train"] / 400 < 0.7
    # written shards: every key of the small set is in the same split in the grown set
    def split_by_key(m, d):
        return {Path(name).name.split(".")[0]: s["split"] for s in m["shards"]
                for name in _member_names(d / s["name"])}
    a = split_by_key(write(tmp_path / "s", n_images=20), tmp_path / "s")
    b = split_by_key(write(tmp_path / "b", n_images=40), tmp_path / "b")
    assert a and all(b[k] == s for k, s in a.items())
    with pytest.raises(ValueError):
        split_of("x", {"train": 0.5, "val": 0.4})


def _member_names(path):
    import tarfile
    with tarfile.open(path) as t:
        return t.getnames()


def test_rollover_at_maxcount_and_maxsize(tmp_path):
    m = write(tmp_path / "c", maxcount=3)
    for split, t in m["splits"].items():
        shards = [s for s in m["shards"] if s["split"] == split]
        assert [s["name"] for s in shards] == [f"{split}-{i:06d}.tar" for i in range(len(shards))]
        assert all(s["count"] == 3 for s in shards[:-1]) and 1 <= shards[-1]["count"] <= 3
        assert t["count"] == sum(s["count"] for s in shards) and t["shards"] == -(-t["count"] // 3)
    assert sum(t["count"] for t in m["splits"].values()) == 48
    one = write(tmp_path / "d", maxsize=1, maxcount=100)  # every sample alone
    assert all(s["count"] == 1 for s in one["shards"]) and len(one["shards"]) == 48


def test_manifest_verifies_and_problems_are_reported(tmp_path):
    d = tmp_path / "v"
    m = write(d)
    assert json.loads((d / MANIFEST_NAME).read_text()) == m
    assert m["params"] == {"fractions": dict(sorted(FRACTIONS.items())), "maxcount": 4,
                           "maxsize": 1e9}
    rep = verify(d / MANIFEST_NAME)
    assert rep.ok and rep.problems == [] and rep.samples == 48 and rep.shards == len(m["shards"])
    assert verify(m, root=d).ok and verify(d).ok
    first, second = d / m["shards"][0]["name"], d / m["shards"][1]["name"]
    data = bytearray(first.read_bytes())
    data[700] ^= 0xFF
    first.write_bytes(bytes(data))
    second.unlink()
    bad = json.loads(json.dumps(m))
    bad["shards"][2]["count"] += 1
    rep = verify(bad, root=d)
    assert not rep.ok
    text = "\n".join(rep.problems)
    assert "sha256" in text and f"{second.name}: missing" in text
    assert f"{m['shards'][2]['name']}: " in text and "samples, manifest says" in text
    (d / "train-000099.tar").write_bytes(b"")
    assert any("not in manifest" in p for p in verify(d).problems)
    with pytest.raises(FileNotFoundError):
        verify(tmp_path / "nowhere" / MANIFEST_NAME)


def test_unsorted_input_raises_and_leaves_no_manifest(tmp_path):
    pairs = list(make_pairs(4))
    with pytest.raises(ValueError, match="sorted"):
        write_shards(pairs[::-1], tmp_path / "u", fractions=FRACTIONS, dataset_version="v")
    assert not (tmp_path / "u" / MANIFEST_NAME).exists()
    assert not list((tmp_path / "u").glob(".*.tmp"))


def test_stock_webdataset_reads_every_member_exactly(tmp_path):
    d = tmp_path / "w"
    m = write(d)
    expected = {p["key"]: p for p in make_pairs(24)}
    seen = set()
    for shard in m["shards"]:
        for s in wds.WebDataset(str(d / shard["name"]), shardshuffle=False):
            p = expected[s["__key__"]]
            seen.add(s["__key__"])
            png = {k: np.asarray(Image.open(io.BytesIO(s[f"{k}.png"])))
                   for k in ("target", "cond", "mask", "mask_rgb")}
            png.update({k: np.load(io.BytesIO(gzip.decompress(s[f"{k}.npy.gz"]))) for k in ("target_depth", "cond_depth")})
            for k in ("target", "cond", "target_depth", "cond_depth"):
                assert png[k].dtype == p[k].dtype and np.array_equal(png[k], p[k]), k
            for k in ("mask", "mask_rgb"):
                assert np.array_equal(png[k], p[k].astype(np.uint8) * 255), k
            cam = json.loads(s["camera.json"])
            assert cam["w2c_src"] == np.eye(4).tolist() and cam["depth_encoding"]["far"] == 100.0
            assert json.loads(s["meta.json"])["sample_key"] == p["sample_key"]
            assert int(s["pose.cls"]) == p["pose"]
            assert ("label.cls" in s) == (p["label"] is not None)
            if p["label"] is not None:
                assert int(s["label.cls"]) == p["label"]
    assert seen == set(expected)


CHILD = """
import sys, time
sys.path.insert(0, {tests!r})
from test_shards import make_pairs, FRACTIONS
from pipelines.shards import write_shards
def slow():
    for i, p in enumerate(make_pairs(24)):
        if i == 30:
            open({flag!r}, "w").close()
            time.sleep(120)
        yield p
write_shards(slow(), {out!r}, fractions=FRACTIONS, maxcount=4, dataset_version="v1")
"""


@pytest.mark.timeout(60)
def test_sigkill_midway_then_rerun_gives_same_bytes(tmp_path):
    clean, crashed, flag = tmp_path / "clean", tmp_path / "crashed", tmp_path / "flag"
    write(clean)
    write(crashed, n_images=40, maxcount=3)  # an older, larger shard set in the same dir
    code = CHILD.format(tests=str(REPO / "tests"), flag=str(flag), out=str(crashed))
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    try:
        deadline = time.monotonic() + 40
        while not flag.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "child did not start"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (crashed / MANIFEST_NAME).exists()  # an incomplete set is recognisable
    assert list(crashed.glob(".*.tmp"))  # the kill left partial shards behind
    with pytest.raises(FileNotFoundError):
        verify(crashed)
    m = write(crashed)
    assert verify(crashed).ok
    assert not list(crashed.glob(".*.tmp"))
    assert tree(crashed) == tree(clean)
    assert sorted(p.name for p in crashed.glob("*.tar")) == sorted(s["name"] for s in m["shards"])
