"""Shard loader for training teams: a ``webdataset.WebDataset`` over one split of a shard set.

Built on webdataset's documented pipeline hooks (https://github.com/webdataset/webdataset,
README "Multinode training", ``webdataset/compat.py``, ``shardlists.py``): the shard list
of a split (from ``manifest.json``, see :mod:`pipelines.shards`) is permuted per
(seed, epoch), then ``wds.split_by_node`` gives rank ``r`` of ``W`` the shards
``r, r+W, ...`` and ``wds.split_by_worker`` splits those among its DataLoader workers.
Every shard is therefore read by exactly one (rank, worker) per epoch: no sample is seen
twice per epoch across ranks and workers, and the union is the whole split. Build the
dataset after ``torch.distributed.init_process_group`` (or under ``torchrun``, which sets
``RANK``/``WORLD_SIZE``): DataLoader workers started with "spawn" do not inherit the
process group, so the rank seen at construction is used there.

**Fewer shards than ranks x workers.** ``empty_check=False``: a worker or rank that gets
no shard yields nothing and ends at once (no error, no hang; a ``UserWarning`` says so).
With exact-once iteration (``resampled=False``) ranks see different numbers of samples
whenever shard counts are uneven: that is right for evaluation (gather results at the
end) but a DDP training loop would hang in the gradient all-reduce of the rank that still
has batches. Trainers should use ``resampled=True`` (each rank/worker draws shards with
replacement from its own seeded stream; infinite) together with
``ds.with_epoch(n_batches_per_worker)`` so every rank runs the same number of steps, or
wrap an exact-once loop in ``torch.distributed.algorithms.Join``. Writing shards with a
``maxcount`` that gives >= ranks x workers shards per split keeps the imbalance small.

**Epochs and seeds.** Call ``ds.set_epoch(epoch)`` before each epoch on every rank (like
``DistributedSampler.set_epoch``); the value lives in shared memory, so persistent
DataLoader workers see it too. With ``shuffle_buffer > 0`` the shard order (same on all
ranks) and each worker's sample buffer (seeded by seed, epoch, rank, worker) are
deterministic per (seed, epoch); ``epoch_shuffle=False`` ignores the epoch. With
``shuffle_buffer=0`` the order is the manifest's (sorted keys within each shard).
"""
from __future__ import annotations

import hashlib
import multiprocessing
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds

from pipelines.depth_convention import UINT16_MAX, decode_zbuffer
from pipelines.sample_schema import get_schema
from pipelines.shard_manifest import SHARD_RE, read_manifest, resolve_shard


def _seed(*parts: int) -> int:
    """A 63-bit seed from integers (hashlib, unlike ``hash()``, is stable across processes)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big") >> 1


class _Epoch:
    """Epoch number in shared memory, visible to (persistent) DataLoader workers started with
    any multiprocessing context. A lock-free ``RawValue``: a ``Value``'s lock, created in the
    default (fork) context, cannot be pickled for "spawn"/"forkserver" workers ("SemLock
    created in a fork context"); one writer (the main process) and an aligned 64-bit value
    need no lock."""

    def __init__(self) -> None:
        self.value = multiprocessing.RawValue("q", 0)

    def get(self) -> int:
        return int(self.value.value)

    def set(self, epoch: int) -> None:
        self.value.value = int(epoch)


class _NodeInfo:
    """(rank, world, worker, workers) as ``wds.utils.pytorch_worker_info`` reports it, except
    that a DataLoader worker started with "spawn"/"forkserver" (it does not inherit the
    process group; e.g. ranks started by ``torch.multiprocessing.spawn``) falls back to the
    rank and world size seen when the dataset was built."""

    def __init__(self) -> None:
        self.rank, self.world = wds.utils.pytorch_worker_info()[:2]

    def __call__(self) -> tuple[int, int, int, int]:
        rank, world, worker, workers = wds.utils.pytorch_worker_info()
        if world == 1 and self.world > 1:
            rank, world = self.rank, self.world
        return rank, world, worker, workers


class _ShuffledSplitByNode:
    """Permute the full shard list by (seed, epoch), identically on every rank, then
    ``wds.split_by_node``. Warns when some ranks/workers will get no shard."""

    def __init__(self, seed: int, epoch: _Epoch | None, shuffle: bool, node: _NodeInfo):
        self.seed, self.epoch, self.shuffle, self.node = seed, epoch, shuffle, node

    def __call__(self, src):
        urls = list(src)
        if self.shuffle:
            epoch = self.epoch.get() if self.epoch is not None else 0
            np.random.default_rng(_seed(self.seed, epoch)).shuffle(urls)
        rank, world, worker, workers = self.node()
        if len(urls) < world * workers and worker == 0:
            warnings.warn(f"{len(urls)} shards for {world} ranks x {workers} workers: some "
                          "yield nothing this epoch (see training.data docs)", stacklevel=2)
        if world != wds.utils.pytorch_worker_info()[1]:  # spawned worker: no process group
            return iter(urls[rank::world])
        return wds.split_by_node(iter(urls))


class _SeededShuffle:
    """``wds.shuffle`` with a seed chosen at iteration time from (seed, epoch, rank, worker)."""

    def __init__(self, bufsize: int, seed: int, epoch: _Epoch | None, node: _NodeInfo):
        self.bufsize, self.seed, self.epoch, self.node = bufsize, seed, epoch, node

    def __call__(self, src):
        rank, _, worker, _ = self.node()
        epoch = self.epoch.get() if self.epoch is not None else 0
        seed = _seed(self.seed, epoch, rank, worker)
        return wds.shuffle(self.bufsize, initial=self.bufsize, seed=seed)(src)


class _WorkerSeed:
    """``worker_seed`` for ``wds.ResampledShards``: distinct per (rank, worker, epoch)."""

    def __init__(self, epoch: _Epoch | None, node: _NodeInfo):
        self.epoch, self.node = epoch, node

    def __call__(self) -> int:
        rank, _, worker, _ = self.node()
        return _seed(rank, worker, self.epoch.get() if self.epoch is not None else 0)


class _PairOutput:
    """Map a raw webdataset sample to the loader's output dict (picklable for spawned
    workers: holds the schema name). Decoding is the schema's
    (:meth:`pipelines.sample_schema.SampleSchema.decode_sample`); this adds the tensor layout."""

    def __init__(self, schema_name: str):
        self.schema_name = schema_name

    def __call__(self, raw: dict[str, Any]) -> dict[str, Any]:
        s = get_schema(self.schema_name).decode_sample(raw)
        out: dict[str, Any] = {}
        for k in ("target", "cond"):
            out[k] = torch.from_numpy(s[k]).permute(2, 0, 1).float() / 255
        for k in ("target_depth", "cond_depth"):
            out[k] = torch.from_numpy(s[k].astype(np.float32) / UINT16_MAX)[None]
        for k in ("mask", "mask_rgb"):
            out[k] = torch.from_numpy(s[k].astype(np.float32))[None]
        out.update(camera=s["camera"], meta=s["meta"], pose=int(s["pose"]),
                   label=-1 if s["label"] is None else int(s["label"]), key=s["key"])
        return out


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch decoded samples: tensors stacked to [B,...] (all samples must share H, W),
    ``pose``/``label`` to int64 [B], ``key``/``camera``/``meta`` to lists of length B."""
    out: dict[str, Any] = {}
    for k, v in samples[0].items():
        vals = [s[k] for s in samples]
        if isinstance(v, torch.Tensor):
            out[k] = torch.stack(vals)
        elif isinstance(v, int):
            out[k] = torch.tensor(vals, dtype=torch.int64)
        else:
            out[k] = vals
    return out


def zbuffer_to_depth(zbuffer: torch.Tensor, camera: dict[str, Any]) -> torch.Tensor:
    """Convert a decoded ``target_depth``/``cond_depth`` (IVID z-buffer in [0, 1], float32,
    any shape) to z-depth (float32, same shape, in [near, far] of
    ``camera["depth_encoding"]``) with :func:`pipelines.depth_convention.decode_zbuffer`.

    Raises:
        KeyError: ``camera`` has no ``depth_encoding``.
    """
    enc = camera["depth_encoding"]
    v = np.round(zbuffer.detach().cpu().numpy().astype(np.float64) * UINT16_MAX)
    return torch.from_numpy(decode_zbuffer(v.astype(np.uint16), enc["near"], enc["far"]))


def split_urls(manifest_or_dir: str | Path, split: str) -> list[str]:
    """Absolute paths of the shards of ``split``, in manifest order, after a cheap
    completeness check (manifest present, each shard present with the manifest's byte size).
    Every shard name of the manifest is validated first
    (:func:`pipelines.shard_manifest.resolve_shard`: only ``[bucket=<hex>/]{split}-NNNNNN.tar``
    inside the manifest's directory; never a ``pipe:`` command, URL, absolute path or ``..``).
    For a full check (sha256, counts) run :func:`pipelines.shard_manifest.verify`.

    Raises:
        FileNotFoundError: no manifest (incomplete set) or a shard is missing.
        ValueError: invalid shard name, a name whose split part differs from its entry's
            split, unknown split, a split without shards, or a shard of the wrong size.
    """
    return _split_urls(*read_manifest(manifest_or_dir), split)


def _split_urls(manifest: dict, root: Path, split: str) -> list[str]:
    if split not in manifest["splits"]:
        raise ValueError(f"split {split!r} not in manifest splits {sorted(manifest['splits'])}")
    urls = []
    for s in manifest["shards"]:
        path = resolve_shard(root, s.get("name"))  # every name, whatever its split
        if SHARD_RE.fullmatch(s["name"]).group(2) != s.get("split"):
            raise ValueError(f"shard {s['name']!r} is listed under split {s.get('split')!r}")
        if s["split"] != split:
            continue
        if not path.is_file():
            raise FileNotFoundError(f"{path}: shard listed in the manifest is missing")
        if path.stat().st_size != s["bytes"]:
            raise ValueError(f"{path}: {path.stat().st_size} bytes, manifest says {s['bytes']}")
        urls.append(str(path))
    if not urls:
        raise ValueError(f"split {split!r} has no shards (0 samples)")
    return urls


def make_dataset(manifest_or_dir: str | Path, split: str, *, batch_size: int | None = None,
                 shuffle_buffer: int = 0, seed: int = 0, resampled: bool = False,
                 epoch_shuffle: bool = True) -> wds.WebDataset:
    """A WebDataset pipeline over the shards of ``split``, decoded to torch tensors.

    Each sample is a dict: ``target``/``cond`` float32 [3,H,W] in [0,1]; ``target_depth``/
    ``cond_depth`` float32 [1,H,W], IVID z-buffer value in [0,1] (0 = near plane, 1 = far
    plane or invalid; z-depth via :func:`zbuffer_to_depth` and ``camera["depth_encoding"]``);
    ``mask``/``mask_rgb`` float32 [1,H,W] in {0,1}; ``camera``/``meta`` dicts (from JSON);
    ``pose`` int; ``label`` int (-1 when absent); ``key`` str. With ``batch_size`` the
    pipeline yields :func:`collate` batches (partial last batch kept); use it with
    ``torch.utils.data.DataLoader(ds, batch_size=None, num_workers=...)``.

    Args:
        manifest_or_dir: ``manifest.json`` or the shard directory holding it.
        split: split name in the manifest (e.g. "train").
        batch_size: samples per batch, or None for single samples.
        shuffle_buffer: sample shuffle buffer per worker; 0 = no shuffling at all (shards
            and samples in manifest order), > 0 also permutes the shard order.
        seed: base seed of shard permutation, sample buffer and resampling.
        resampled: draw shards with replacement forever (training; pair with
            ``ds.with_epoch(n)``); exact-once coverage no longer holds.
        epoch_shuffle: mix the epoch (``ds.set_epoch``) into every seed.

    Returns:
        ``wds.WebDataset`` with an added ``set_epoch(epoch: int)`` method.

    Raises:
        FileNotFoundError, ValueError: as :func:`split_urls`; ValueError also for a
            manifest whose ``sample_schema`` is not an IVID pair schema (``ivid_pair/1``,
            ``ivid_pair/2`` of :mod:`pipelines.sample_schema` are read).
    """
    manifest, root = read_manifest(manifest_or_dir)
    schema = get_schema(manifest.get("sample_schema"))
    if not schema.name.startswith("ivid_pair/"):
        raise ValueError(f"make_dataset reads IVID pair shards, this set is {schema.name!r}")
    ds, epoch, _ = seeded_shards(_split_urls(manifest, root, split), seed=seed, resampled=resampled,
                              shuffle_buffer=shuffle_buffer, epoch_shuffle=epoch_shuffle)
    return batched_with_epoch(ds.map(_PairOutput(schema.name)), batch_size, epoch)


def seeded_shards(urls: list[str], *, seed: int, resampled: bool, shuffle_buffer: int,
                  epoch_shuffle: bool) -> tuple[wds.WebDataset, _Epoch, _Epoch | None]:
    """The shard-level pipeline every loader shares: shards split by node and worker (shuffled
    identically on all ranks per (seed, epoch)), or resampled deterministically per rank /
    worker / epoch, then an optional seeded sample shuffle. Returns ``(dataset, epoch,
    epoch_source)``: ``epoch.set`` becomes the dataset's ``set_epoch``; ``epoch_source`` is
    what seeds mix in (None when ``epoch_shuffle`` is False)."""
    epoch, node = _Epoch(), _NodeInfo()
    ep = epoch if epoch_shuffle else None
    ds = wds.WebDataset(urls, resampled=resampled, shardshuffle=False,
                        nodesplitter=(wds.split_by_node if resampled else
                                      _ShuffledSplitByNode(seed, ep, shuffle_buffer > 0, node)),
                        workersplitter=wds.split_by_worker, empty_check=False, seed=seed)
    if resampled:
        # WebDataset(resampled=True) seeds ResampledShards from pid/time; swap in a
        # deterministic one (same class, seeded per rank, worker, epoch).
        assert isinstance(ds.pipeline[0], wds.ResampledShards), ds.pipeline[0]
        ds.pipeline[0] = wds.ResampledShards(urls, seed=seed, worker_seed=_WorkerSeed(ep, node),
                                             deterministic=True)
    if shuffle_buffer > 0:
        ds.append(_SeededShuffle(shuffle_buffer, seed, ep, node))
    return ds, epoch, ep


def batched_with_epoch(ds: wds.WebDataset, batch_size: int | None, epoch: _Epoch) -> wds.WebDataset:
    """``collate`` batches (partial last batch kept) when ``batch_size`` is set, and the
    ``set_epoch(epoch)`` method the loaders document."""
    if batch_size is not None:
        ds = ds.batched(batch_size, collation_fn=collate, partial=True)
    ds.set_epoch = epoch.set
    return ds


#: Members resized smoothly (RGB); the others (depth, masks) use nearest, as IVID's
#: ``transform_depth`` (interpolating depth across an edge would invent surfaces).
SMOOTH_KEYS = ("target", "cond")
RESIZE_KEYS = ("target", "target_depth", "cond", "cond_depth", "mask", "mask_rgb")


def resize_batch(batch: dict[str, Any], resolution: int | None) -> dict[str, Any]:
    """A copy of ``batch`` with its image members resized to ``resolution`` x ``resolution``.

    RGB (``target``, ``cond``) bilinear with antialiasing; depth and masks nearest-exact.
    Tensors [B,C,H,W] or [C,H,W] float; other entries are passed through. Returns
    ``batch`` itself when ``resolution`` is None or already matches.
    """
    import torch.nn.functional as F

    sizes = {tuple(batch[k].shape[-2:]) for k in RESIZE_KEYS if k in batch}
    if not resolution or sizes <= {(resolution, resolution)}:
        return batch
    out = dict(batch)
    for k in RESIZE_KEYS:
        if k not in batch:
            continue
        x = torch.as_tensor(batch[k]).float()
        squeeze = x.dim() == 3
        x = x[None] if squeeze else x
        if k in SMOOTH_KEYS:
            x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
        else:
            x = F.interpolate(x, size=(resolution, resolution), mode="nearest-exact")
        out[k] = x[0] if squeeze else x
    return out
