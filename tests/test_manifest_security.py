"""Hostile manifests (issue 13 section 3): shard names are data, never commands or paths
outside the shard directory. Exactly the reported payload: a manifest listing
``pipe:sh payload.sh`` made ``training.data.make_dataset`` run a shell command."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import webdataset as wds

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_shards import make_pairs  # noqa: E402

from pipelines.shard_manifest import resolve_shard, verify  # noqa: E402
from pipelines.shards import write_shards  # noqa: E402
from training.data import make_dataset, split_urls  # noqa: E402

PAYLOAD = "pipe:sh payload.sh"


@pytest.fixture
def hostile(tmp_path, monkeypatch):
    """A valid shard set in ``tmp/shards``, a ``payload.sh`` in the working directory that
    would create ``marker`` and emit a real tar, and real shard tars outside the set."""
    monkeypatch.chdir(tmp_path)
    d = tmp_path / "shards"
    m = write_shards(make_pairs(3), d, fractions={"train": 1.0}, maxcount=100, dataset_version="t")
    good = d / m["shards"][0]["name"]
    (tmp_path / "payload.sh").write_text(f"touch {tmp_path / 'marker'}\ncat {good}\n")
    (tmp_path / "x.tar").write_bytes(good.read_bytes())  # reachable as ../x.tar
    return d, m, tmp_path / "marker"


def _with_name(d: Path, m: dict, name: str) -> Path:
    entry = {**m["shards"][0], "name": name}
    (d / "manifest.json").write_text(json.dumps({**m, "shards": [entry]}))
    return d / "manifest.json"


def test_the_payload_is_real(hostile):
    """Control: handed to webdataset, the name runs the script (so the tests below can fail)."""
    d, m, marker = hostile
    assert len(list(wds.WebDataset([PAYLOAD], shardshuffle=False))) == 6 and marker.exists()


@pytest.mark.parametrize("name", [PAYLOAD, "../x.tar", "ABS", "train-000000.tar\n",
                                  "bucket=zz/train-000000.tar", "bucket=0a/../../x.tar",
                                  "train-000000.tar/../../x.tar", "file:///etc/passwd", 7])
def test_loader_and_verify_refuse_bad_names(hostile, name):
    d, m, marker = hostile
    name = str(d.parent / "x.tar") if name == "ABS" else name  # an absolute path to a real tar
    manifest = _with_name(d, m, name)
    with pytest.raises(ValueError, match="refusing shard name"):
        make_dataset(manifest, "train")
    with pytest.raises(ValueError, match="refusing shard name"):
        split_urls(d, "train")
    rep = verify(manifest)
    assert not rep.ok and any("refusing shard name" in p for p in rep.problems) and rep.samples == 0
    assert not marker.exists()


def test_shard_check_refuses_payload(hostile):
    from pipelines.stages.checks import check_training_shards

    d, m, marker = hostile
    _with_name(d, m, PAYLOAD)
    ok, md = check_training_shards(d.parent)
    assert not ok and md["verified"] is False and not marker.exists()


def test_resolve_shard_accepts_layouts_inside_root(tmp_path):
    assert resolve_shard(tmp_path, "train-000001.tar") == tmp_path / "train-000001.tar"
    p = resolve_shard("rel/dir", "bucket=0a/val-000000.tar")
    assert p.is_absolute() and p == Path.cwd() / "rel/dir/bucket=0a/val-000000.tar"
    with pytest.raises(ValueError):
        resolve_shard(tmp_path, "bucket=0a/sub/val-000000.tar")


def test_verify_finds_strays_in_bucket_directories(tmp_path):
    d = tmp_path / "s"
    write_shards(make_pairs(3), d, fractions={"train": 1.0}, dataset_version="t")
    assert verify(d).ok
    (d / "bucket=0a").mkdir()
    (d / "bucket=0a" / "train-000003.tar").write_bytes(b"")
    (d / "bucket=0a" / "notes.tar").write_bytes(b"")  # not shard-named: not ours to judge
    rep = verify(d)
    assert rep.problems == ["bucket=0a/train-000003.tar: shard file not in manifest (stale or foreign)"]


def test_split_part_of_name_must_match_entry(hostile):
    d, m, _ = hostile
    _with_name(d, m, m["shards"][0]["name"].replace("train", "val"))
    with pytest.raises(ValueError, match="listed under split 'train'"):
        split_urls(d, "train")
