"""Runner of the ``warp_pairs`` stage (IVID pairs; see :mod:`pipelines.pairs`)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from pipelines.depth import load_disparity
from pipelines.depth_convention import disparity_to_depth
from pipelines.images import decode_png, encode_png, load_images
from pipelines.previews import grid_png
from pipelines.stages.common import StageReport, Timer, chunked, make_store, result_params, run_incremental
from pipelines.stages.depth import open_depth
from pipelines.stages.ingest import images_float, open_images
from pipelines.storage import StageStore, read_index, write_index
from pipelines.versions import WARP as CODE_VERSION

STAGE = "warp_pairs"
PAIR_SCHEMA = pa.schema([("key", pa.string()), ("sample_key", pa.string()), ("view", pa.int32()),
                         ("cond_png", pa.binary()), ("cond_depth_png", pa.binary()), ("mask_png", pa.binary()),
                         ("mask_rgb_png", pa.binary()), ("camera_json", pa.string()),
                         ("mask_fraction", pa.float32())])


def pair_rows(pairs: list[dict]) -> pa.Table:
    """Stage rows (:data:`PAIR_SCHEMA`) from :func:`pipelines.pairs.build_pairs` output."""
    cols: dict[str, list] = {n: [] for n in PAIR_SCHEMA.names}
    for p in pairs:
        cols["key"].append(p["key"])
        cols["sample_key"].append(p["sample_key"])
        cols["view"].append(int(p["view"]))
        cols["cond_png"].append(encode_png(p["cond"]))
        cols["cond_depth_png"].append(encode_png(p["cond_depth"]))
        cols["mask_png"].append(encode_png(p["mask"].astype(np.uint8) * 255))
        cols["mask_rgb_png"].append(encode_png(p["mask_rgb"].astype(np.uint8) * 255))
        cols["camera_json"].append(json.dumps(p["camera"], sort_keys=True))
        cols["mask_fraction"].append(float(p["mask"].mean()))
    return pa.table(cols, schema=PAIR_SCHEMA)


def _worker_init() -> None:
    """Warp worker process: one intra-op thread (processes, not threads, scale on CPU) and
    glibc malloc tuned to keep freed buffers (see :func:`pipelines.pairs.tune_malloc`)."""
    from pipelines.pairs import tune_malloc

    torch.set_num_threads(1)
    tune_malloc()


def _warp_job(images: np.ndarray, depth: np.ndarray, keys: list[str], views: int, seed: int,
              params: dict[str, Any], device: str | None) -> list[dict]:
    from pipelines.pairs import build_pairs

    return build_pairs(torch.from_numpy(images), torch.from_numpy(depth), keys, views_per_image=views, seed=seed,
                       params=params, device=device)


def run_warp(root: Path, params: dict[str, Any], *, device: str | None = None) -> StageReport:
    """Build ``warp.views_per_image`` IVID pairs for every sample with a depth map.

    On CPU, sub-batches are warped by ``warp.workers`` processes (one thread each) when a
    chunk has enough work for them; results do not depend on the split (``build_pairs`` is
    independent of batch composition), so the output is the same for any worker count.
    """
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from pipelines.pairs import tune_malloc

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
    bs = max(1, int(wp.get("batch_size", 16)) // max(1, int(wp["views_per_image"])))

    on_cpu = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cpu")
    workers = max(1, int(wp.get("workers") or 1)) if on_cpu else 1
    pool: list[ProcessPoolExecutor] = []

    def compute(chunk):
        jobs = []
        for sub in chunked(chunk, bs):
            depth = disparity_to_depth(load_disparity(depth_store.read(sub)), near=near, min_disparity=min_disp)
            jobs.append((images_float(img_store, sub), depth.numpy(), list(sub), int(wp["views_per_image"]), seed,
                         {**wp, "near": near, "far": far}, device))
        if workers > 1 and len(jobs) >= 2:
            if not pool:
                pool.append(ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_worker_init))
            results = list(pool[0].map(_warp_job, *zip(*jobs)))
        else:
            results = [_warp_job(*job) for job in jobs]
        return pair_rows([p for r in results for p in r]), []

    with Timer() as t:
        try:
            computed, reused, failures = run_incremental(store, keys, compute, int(params.get("chunk_size", 256)))
        finally:
            for ex in pool:
                ex.shutdown()
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
                                 "views_per_image": int(wp["views_per_image"]), "workers": workers,
                                 "pairs_per_s": round(computed * int(wp["views_per_image"]) / max(t.seconds, 1e-9), 2),
                                 "mask_fraction_mean": float(fr.mean()) if fr.size else None,
                                 "mask_fraction_min": float(fr.min()) if fr.size else None})


def open_pairs(root: Path) -> tuple[pa.Table, StageStore, dict[str, Any]]:
    """Index table, store and info of the materialized ``warp_pairs`` stage."""
    table, info = read_index(root, STAGE)
    return table, StageStore(root, STAGE, info["version"], key_column="sample_key"), info
