"""Runner of the ``warp_pairs`` stage (IVID pairs; see :mod:`pipelines.pairs`)."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from pipelines.depth import load_disparity
from pipelines.depth_convention import disparity_to_depth
from pipelines.images import decode_png, encode_png, load_images
from pipelines.previews import grid_png
from pipelines.stages.common import (
    StageReport,
    Timer,
    chunked,
    make_store,
    result_params,
    run_incremental,
)
from pipelines.stages.depth import open_depth
from pipelines.stages.ingest import images_float, open_images
from pipelines.storage import StageStore, read_index, write_index
from pipelines.versions import WARP as CODE_VERSION

STAGE = "warp_pairs"
log = logging.getLogger(__name__)
PAIR_SCHEMA = pa.schema([("key", pa.string()), ("sample_key", pa.string()), ("view", pa.int32()),
                         ("cond_png", pa.binary()), ("cond_depth_png", pa.binary()), ("mask_png", pa.binary()),
                         ("mask_rgb_png", pa.binary()), ("camera_json", pa.string()),
                         ("mask_fraction", pa.float32())])


#: zlib level of the cached PNGs: fast; the shard writer re-encodes what it publishes.
PNG_LEVEL = 1


def pair_rows(pairs: list[dict]) -> pa.Table:
    """Stage rows (:data:`PAIR_SCHEMA`) from :func:`pipelines.pairs.build_pairs` output."""
    cols: dict[str, list] = {n: [] for n in PAIR_SCHEMA.names}
    for p in pairs:
        cols["key"].append(p["key"])
        cols["sample_key"].append(p["sample_key"])
        cols["view"].append(int(p["view"]))
        cols["cond_png"].append(encode_png(p["cond"], PNG_LEVEL))
        cols["cond_depth_png"].append(encode_png(p["cond_depth"], PNG_LEVEL))
        cols["mask_png"].append(encode_png(p["mask"].astype(np.uint8) * 255, PNG_LEVEL))
        cols["mask_rgb_png"].append(encode_png(p["mask_rgb"].astype(np.uint8) * 255, PNG_LEVEL))
        cols["camera_json"].append(json.dumps(p["camera"], sort_keys=True))
        cols["mask_fraction"].append(float(p["mask"].mean()))
    return pa.table(cols, schema=PAIR_SCHEMA)


#: ``warp.workers: null`` (auto) starts worker processes only when at least this many pairs
#: are pending: a spawned worker spends a few seconds importing torch before its first pair.
AUTO_MIN_PAIRS = 512


def resolve_workers(setting: int | None, pending_pairs: int, on_cpu: bool) -> int:
    """Warp processes for this run: ``setting`` when given (>= 1), else (auto) one per usable
    CPU core when ``pending_pairs >= AUTO_MIN_PAIRS``, else 1. Always 1 off the CPU."""
    if not on_cpu:
        return 1
    if setting is not None:
        return max(1, int(setting))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores if pending_pairs >= AUTO_MIN_PAIRS else 1


def _worker_init() -> None:
    """Warp worker process: one intra-op thread (processes, not threads, scale on CPU) and
    glibc malloc tuned to keep freed buffers (see :func:`pipelines.pairs.tune_malloc`)."""
    from pipelines.pairs import tune_malloc

    torch.set_num_threads(1)
    tune_malloc()


def _warp_rows(images: np.ndarray, depth: np.ndarray, keys: list[str], views: int, seed: int,
               params: dict[str, Any], device: str | None) -> pa.Table:
    """Pairs of one sub-batch as encoded stage rows (runs in a worker or in-process)."""
    from pipelines.pairs import build_pairs

    return pair_rows(build_pairs(torch.from_numpy(images), torch.from_numpy(depth), keys, views_per_image=views,
                                 seed=seed, params=params, device=device))


def run_warp(root: Path, params: dict[str, Any], *, device: str | None = None) -> StageReport:
    """Build ``warp.views_per_image`` IVID pairs for every sample with a depth map.

    On CPU the warps run with one intra-op thread per process (more threads are slower
    for this memory-bound work); with ``warp.workers`` > 1 (or auto, see
    :func:`resolve_workers`) sub-batches are warped and PNG-encoded by that many spawned
    processes. Results do not depend on the split (``build_pairs`` is independent of batch
    composition), so the output is the same for any worker count.
    """
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from pipelines.pairs import torch_threads, tune_malloc

    tune_malloc()

    keys_img, img_store, img_info = open_images(root)
    dkeys, depth_store, dinfo = open_depth(root)
    have_depth = set(dkeys)
    keys = [k for k in keys_img if k in have_depth]
    dp = dinfo["params"]
    wp = dict(params["warp"])
    near, far, min_disp = float(dp["near"]), float(dp["far"]), float(dp["min_disparity"])
    seed = int(params.get("seed", 0))
    rp = result_params(params, "warp", seed=seed)
    store = make_store(root, STAGE, CODE_VERSION, rp, {"depth_maps": dinfo["version"],
                                                         "source_images": img_info["version"]},
                       key_column="sample_key")
    views = int(wp["views_per_image"])
    bs = max(1, int(wp.get("batch_size", 16)) // max(1, views))
    on_cpu = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cpu")
    chunk_size = int(params.get("chunk_size", 256))
    todo = store.missing(keys)
    workers = resolve_workers(wp.get("workers"), len(todo) * views, on_cpu)
    wparams = {**wp, "near": near, "far": far}

    def jobs_of(chunk: list[str]) -> list[tuple]:
        """One read per chunk, split into ``_warp_rows`` argument tuples of ``bs`` samples."""
        depth = disparity_to_depth(load_disparity(depth_store.read(chunk)), near=near, min_disparity=min_disp)
        imgs, depth = images_float(img_store, chunk), depth.numpy()
        return [(imgs[i:i + bs], depth[i:i + bs], list(chunk[i:i + bs]), views, seed, wparams, device)
                for i in range(0, len(chunk), bs)]

    pool: list[ProcessPoolExecutor] = []
    chunks = [tuple(c) for c in chunked(todo, chunk_size)]      # run_incremental's chunks
    position = {c: i for i, c in enumerate(chunks)}
    futures: dict[int, list] = {}

    def submit(i: int) -> None:
        if i < len(chunks) and i not in futures:
            if not pool:
                pool.append(ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_worker_init))
            futures[i] = [pool[0].submit(_warp_rows, *job) for job in jobs_of(list(chunks[i]))]

    def compute(chunk):
        if workers == 1:
            with torch_threads(1 if on_cpu else torch.get_num_threads()):
                return pa.concat_tables([_warp_rows(*job) for job in jobs_of(chunk)]), []
        # Worker processes, one chunk ahead: the next chunk is read and queued before this
        # one is awaited, so workers keep warping while the parent writes.
        i = position[tuple(chunk)]
        submit(i)
        try:
            submit(i + 1)
        except Exception:
            log.warning("%s: could not prefetch chunk %d", STAGE, i + 1, exc_info=True)
        return pa.concat_tables([f.result() for f in futures.pop(i)]), []

    with Timer() as t:
        try:
            computed, reused, failures = run_incremental(store, keys, compute, chunk_size)
        finally:
            for ex in pool:
                ex.shutdown(cancel_futures=True)
        bad = {f["key"] for f in failures}
        ok = [k for k in keys if k not in bad]
        index = store.read(ok, columns=["key", "view", "mask_fraction"]) if ok else PAIR_SCHEMA.empty_table()
        index = index.select(["key", "sample_key", "view", "mask_fraction"])
        info = {"stage": STAGE, "version": store.version, "code_version": CODE_VERSION, "params": rp,
                "near": near, "far": far, "upstream": {"depth_maps": dinfo["version"],
                                                       "source_images": img_info["version"]}}
        dv = write_index(root, STAGE, index, info)
    fr = index.column("mask_fraction").to_numpy() if index.num_rows else np.zeros(0)
    previews = {}
    if ok:
        rows = store.read(ok[:1])
        img = load_images(img_store, ok[:1])[0]
        previews["pairs"] = grid_png([[img] + [decode_png(b) for b in rows.column("cond_png").to_pylist()],
                                      [img] + [decode_png(b) for b in rows.column("mask_rgb_png").to_pylist()]])
    return StageReport(STAGE, store.version, dv, computed, reused, len(failures), t.seconds, previews=previews,
                       failures=failures,
                       metadata={"pairs": int(index.num_rows), "samples": len(ok),
                                 "views_per_image": views, "workers": workers,
                                 "pairs_per_s": round(computed * views / max(t.seconds, 1e-9), 2),
                                 "mask_fraction_mean": float(fr.mean()) if fr.size else None,
                                 "mask_fraction_min": float(fr.min()) if fr.size else None})


def open_pairs(root: Path) -> tuple[pa.Table, StageStore, dict[str, Any]]:
    """Index table, store and info of the materialized ``warp_pairs`` stage."""
    table, info = read_index(root, STAGE)
    return table, StageStore(root, STAGE, info["version"], key_column="sample_key"), info
