"""Tests for training.data: decoding, DataLoader workers, DDP (gloo, CPU), few shards."""
from __future__ import annotations

import json
import socket
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import webdataset as wds
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_shards import make_pairs  # noqa: E402

from pipelines.shards import write_shards  # noqa: E402
from training.data import make_dataset, zbuffer_to_depth  # noqa: E402

FRACTIONS = {"train": 0.5, "val": 0.25, "test": 0.25}


@pytest.fixture(scope="module")
def shard_sets(tmp_path_factory):
    """Two shard sets of the same 30 pairs: "many" (maxcount=3) and "one" (1 shard/split)."""
    root = tmp_path_factory.mktemp("shards")
    out = {}
    for name, maxcount in (("many", 3), ("one", 1000)):
        write_shards(make_pairs(15), root / name, fractions=FRACTIONS, maxcount=maxcount,
                     dataset_version="t")
        out[name] = root / name
    return out


def split_keys(d: Path, split: str) -> list[str]:
    """All keys of a split, read with a stock WebDataset (no splitting)."""
    m = json.loads((d / "manifest.json").read_text())
    urls = [str(d / s["name"]) for s in m["shards"] if s["split"] == split]
    return [s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False)]


def test_decoded_shapes_dtypes_ranges(shard_sets):
    pairs = {p["key"]: p for p in make_pairs(15)}
    samples = list(make_dataset(shard_sets["many"], "train"))
    assert [s["key"] for s in samples] == split_keys(shard_sets["many"], "train")
    for s in samples:
        p = pairs[s["key"]]
        h, w = p["mask"].shape
        for k in ("target", "cond"):
            assert s[k].shape == (3, h, w) and s[k].dtype == torch.float32
            assert torch.equal(s[k], torch.from_numpy(p[k]).permute(2, 0, 1).float() / 255)
        for k in ("target_depth", "cond_depth"):
            assert s[k].shape == (1, h, w) and s[k].dtype == torch.float32
            assert 0 <= s[k].min() and s[k].max() <= 1
            assert torch.equal(torch.round(s[k][0] * 65535).to(torch.int64),
                               torch.from_numpy(p[k].astype(np.int64)))
        for k in ("mask", "mask_rgb"):
            assert s[k].shape == (1, h, w) and s[k].dtype == torch.float32
            assert torch.equal(s[k][0], torch.from_numpy(p[k]).float())
        assert s["pose"] == p["pose"] and isinstance(s["pose"], int)
        assert s["label"] == (-1 if p["label"] is None else p["label"])
        assert s["camera"]["depth_encoding"] == {"name": "ivid_zbuffer_uint16", "near": 0.5,
                                                 "far": 100.0}
        z = zbuffer_to_depth(s["target_depth"], s["camera"])
        assert z.shape == (1, h, w) and 0.5 - 1e-4 <= z.min() and z.max() <= 100.0 + 1e-2
    assert any(s["label"] == -1 for s in samples) or all(
        pairs[s["key"]]["label"] is not None for s in samples)


def test_batched_collate(shard_sets):
    batches = list(make_dataset(shard_sets["many"], "train", batch_size=4))
    n = len(split_keys(shard_sets["many"], "train"))
    assert sum(len(b["key"]) for b in batches) == n
    b = batches[0]
    assert b["target"].shape == (4, 3, 12, 10) and b["mask"].shape == (4, 1, 12, 10)
    assert b["pose"].dtype == torch.int64 and b["label"].shape == (4,)
    assert isinstance(b["camera"], list) and len(b["camera"]) == 4


def _loader_keys(ds, workers, **kw):
    if workers:
        kw.setdefault("multiprocessing_context", "fork")  # spawned workers re-import torch (slow)
    dl = DataLoader(ds, batch_size=None, num_workers=workers, **kw)
    return [k for b in dl for k in b["key"]]


@pytest.mark.timeout(60)
def test_dataloader_two_workers_see_every_sample_once(shard_sets):
    ds = make_dataset(shard_sets["many"], "train", batch_size=2, shuffle_buffer=4, seed=1)
    keys = _loader_keys(ds, 2)
    assert Counter(keys) == Counter(split_keys(shard_sets["many"], "train"))


@pytest.mark.timeout(30)
@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_fewer_shards_than_workers_does_not_hang(shard_sets):
    ds = make_dataset(shard_sets["one"], "val", batch_size=2)
    keys = _loader_keys(ds, 3)  # 1 shard, 3 workers: two workers yield nothing
    assert Counter(keys) == Counter(split_keys(shard_sets["one"], "val"))


def test_fewer_shards_than_ranks_warns_and_yields_nothing(shard_sets, monkeypatch):
    monkeypatch.setenv("RANK", "1")  # read by wds.utils.pytorch_worker_info
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.warns(UserWarning, match="1 shards for 2 ranks"):
        assert list(make_dataset(shard_sets["one"], "val")) == []


def test_rank_captured_for_workers_without_process_group(shard_sets, monkeypatch):
    """A DataLoader worker started with "spawn" sees no process group: the rank and world
    size captured when the dataset was built must still split the shards."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    ds = make_dataset(shard_sets["many"], "train")
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    m = json.loads((shard_sets["many"] / "manifest.json").read_text())
    names = [s["name"] for s in m["shards"] if s["split"] == "train"][1::2]
    expected = [k for n in names for k in split_keys_of_shard(shard_sets["many"] / n)]
    assert len(names) >= 2 and [s["key"] for s in ds] == expected


def split_keys_of_shard(path: Path) -> list[str]:
    return [s["__key__"] for s in wds.WebDataset(str(path), shardshuffle=False)]


def test_seeded_shuffle_per_seed_and_epoch(shard_sets):
    def order(seed, epoch, epoch_shuffle=True):
        ds = make_dataset(shard_sets["many"], "train", shuffle_buffer=5, seed=seed,
                          epoch_shuffle=epoch_shuffle)
        ds.set_epoch(epoch)
        return [s["key"] for s in ds]
    a = order(0, 0)
    assert a == order(0, 0) and sorted(a) == sorted(split_keys(shard_sets["many"], "train"))
    assert a != order(0, 1) and a != order(1, 0)
    assert order(0, 0, False) == order(0, 3, False)


@pytest.mark.timeout(60)
def test_set_epoch_reaches_persistent_workers(shard_sets):
    ds = make_dataset(shard_sets["many"], "train", batch_size=2, shuffle_buffer=4, seed=3)
    dl = DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True,
                    multiprocessing_context="fork")
    epochs = []
    for epoch in (0, 1, 0):
        ds.set_epoch(epoch)
        epochs.append([k for b in dl for k in b["key"]])
    assert sorted(epochs[0]) == sorted(epochs[1]) == sorted(split_keys(shard_sets["many"], "train"))
    assert epochs[0] != epochs[1] and epochs[0] == epochs[2]


def test_resampled_with_epoch_is_deterministic(shard_sets):
    def run(seed):
        ds = make_dataset(shard_sets["many"], "train", resampled=True, seed=seed).with_epoch(7)
        return [s["key"] for s in ds]
    assert len(run(0)) == 7 and run(0) == run(0) and run(0) != run(5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, dirs: dict, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        result = {}
        for name, split, workers in (("many", "train", 2), ("one", "test", 0)):
            ds = make_dataset(dirs[name], split, batch_size=2, shuffle_buffer=3, seed=0)
            ds.set_epoch(1)
            keys = _loader_keys(ds, workers)
            gathered = [None] * world
            dist.all_gather_object(gathered, keys)
            result[name] = gathered
        if rank == 0:
            Path(out).write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(90)
def test_ddp_two_ranks_disjoint_and_complete(shard_sets, tmp_path):
    out = tmp_path / "ddp.json"
    dirs = {k: str(v) for k, v in shard_sets.items()}
    mp.spawn(_ddp_worker, args=(2, _free_port(), dirs, str(out)), nprocs=2, join=True)
    result = json.loads(out.read_text())
    for name, split in (("many", "train"), ("one", "test")):
        r0, r1 = result[name]
        assert not set(r0) & set(r1)
        assert Counter(r0 + r1) == Counter(split_keys(shard_sets[name], split))
    assert result["one"][1] == []  # one shard, two ranks: rank 1 yields nothing, no hang
    assert len(result["many"][0]) and len(result["many"][1])


@pytest.mark.timeout(180)
def test_spawn_workers_read_every_sample_and_follow_set_epoch(shard_sets):
    """``multiprocessing_context="spawn"`` (the default on macOS/Windows, and with CUDA):
    the dataset pickles into spawned workers (issue 12: it raised "SemLock created in a fork
    context") and ``set_epoch`` still reaches persistent spawned workers."""
    ds = make_dataset(shard_sets["many"], "train", batch_size=2, shuffle_buffer=4, seed=3)
    dl = DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True,
                    multiprocessing_context="spawn")
    epochs = []
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        epochs.append([k for b in dl for k in b["key"]])
    expected = split_keys(shard_sets["many"], "train")
    assert sorted(epochs[0]) == sorted(epochs[1]) == sorted(expected)
    assert epochs[0] != epochs[1]
    ds.set_epoch(0)  # same order as the fork workers give for epoch 0
    assert epochs[0] == _loader_keys(ds, 2)


def test_reads_ivid_pair_v1_sets_like_v2(tmp_path, monkeypatch):
    """Shard sets written before ``shards-2`` (16-bit PNG depth) load to the same tensors."""
    from pipelines import shards as shards_mod
    from pipelines.sample_schema import IVID_PAIR_V1

    new = write_shards(make_pairs(4), tmp_path / "v2", fractions={"train": 1.0}, dataset_version="t")
    monkeypatch.setattr(shards_mod, "IVID_PAIR", IVID_PAIR_V1)
    monkeypatch.setattr(shards_mod, "SAMPLE_SCHEMA", IVID_PAIR_V1.name)
    old = write_shards(make_pairs(4), tmp_path / "v1", fractions={"train": 1.0}, dataset_version="t")
    assert (old["sample_schema"], new["sample_schema"]) == ("ivid_pair/1", "ivid_pair/2")
    a, b = (list(make_dataset(tmp_path / d, "train")) for d in ("v1", "v2"))
    assert len(a) == len(b) == 8
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        assert all(torch.equal(x[k], y[k]) if isinstance(x[k], torch.Tensor) else x[k] == y[k] for k in x)


def test_refuses_viewset_manifest(tmp_path):
    write_shards(make_pairs(2), tmp_path, fractions={"train": 1.0}, dataset_version="t")
    m = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**m, "sample_schema": "viewset/1"}))
    with pytest.raises(ValueError, match="reads IVID pair shards"):
        make_dataset(tmp_path, "train")
