"""Runner of the ``warp_pairs`` stage (IVID pairs; see :mod:`pipelines.pairs`)."""
from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from pipelines.depth import load_disparity
from pipelines.depth_convention import disparity_to_depth
from pipelines.images import decode_png, encode_png, load_images
from pipelines.previews import grid_png
from pipelines.stages.common import BucketContext, StageReport, result_params, run_incremental
from pipelines.stages.ingest import images_float

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


def _warp_rows(images: np.ndarray, depth: np.ndarray, keys: list[str], views: int, seed: int,
               params: dict[str, Any], device: str | None) -> pa.Table:
    """Pairs of one sub-batch as encoded stage rows."""
    from pipelines.pairs import build_pairs

    return pair_rows(build_pairs(torch.from_numpy(images), torch.from_numpy(depth), keys, views_per_image=views,
                                 seed=seed, params=params, device=device))


def run_warp_bucket(ctx: BucketContext) -> StageReport:
    """Build ``warp.views_per_image`` IVID pairs for every sample of the bucket with a depth map.

    On CPU the warps run with one intra-op thread (more threads are slower for this
    memory-bound work); parallelism across cores and machines is the engine's job (one
    bucket per Ray task). Results do not depend on the batch split (``build_pairs`` is
    independent of batch composition). Writes ``warp_pairs/bucket=<b>/index.parquet``
    (key, sample_key, view, mask_fraction).
    """
    from pipelines.pairs import torch_threads, tune_malloc

    tune_malloc()
    imgs, dep = ctx.inputs["source_images"], ctx.inputs["depth_maps"]
    have_depth = set(dep.keys)
    keys = [k for k in imgs.keys if k in have_depth]
    dp = dep.info["params"]
    wp = dict(ctx.params["warp"])
    near, far, min_disp = float(dp["near"]), float(dp["far"]), float(dp["min_disparity"])
    seed = int(ctx.params.get("seed", 0))
    rp = result_params(ctx.params, "warp", seed=seed)
    store = ctx.store(STAGE, rp, {"depth_maps": dep.version, "source_images": imgs.version})
    views = int(wp["views_per_image"])
    bs = max(1, int(wp.get("batch_size", 16)) // max(1, views))
    device = ctx.device
    on_cpu = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cpu")
    wparams = {**wp, "near": near, "far": far}

    def compute(chunk):
        depth = disparity_to_depth(load_disparity(dep.store.read(chunk)), near=near, min_disparity=min_disp)
        im, depth = images_float(imgs.store, chunk), depth.numpy()
        with torch_threads(1 if on_cpu else torch.get_num_threads()):
            return pa.concat_tables([_warp_rows(im[i:i + bs], depth[i:i + bs], list(chunk[i:i + bs]), views, seed,
                                                wparams, device) for i in range(0, len(chunk), bs)]), []

    computed, reused, failures = run_incremental(store, keys, compute, int(ctx.params.get("chunk_size", 256)))
    bad = {f["key"] for f in failures}
    ok = [k for k in keys if k not in bad]
    index = store.read(ok, columns=["key", "view", "mask_fraction"]) if ok else PAIR_SCHEMA.empty_table()
    index = index.select(["key", "sample_key", "view", "mask_fraction"])
    info = {"stage": STAGE, "version": store.version, "params": rp, "near": near, "far": far,
            "upstream": {"depth_maps": dep.version, "source_images": imgs.version}}
    dv = ctx.publish(STAGE, index, info)
    fr = index.column("mask_fraction").to_numpy() if index.num_rows else np.zeros(0)
    return StageReport(STAGE, store.version, dv, computed, reused, len(failures), failures=failures,
                       metadata={"pairs": int(index.num_rows), "samples": len(ok), "views_per_image": views,
                                 "mask_fraction_mean": float(fr.mean()) if fr.size else None,
                                 "mask_fraction_min": float(fr.min()) if fr.size else None})


def pair_previews(warp_inp, image_inp) -> dict[str, bytes]:
    """Source image, condition images and masks of the bucket's first sample."""
    keys = warp_inp.keys[:1]
    if not keys:
        return {}
    rows = warp_inp.store.read(keys)
    img = load_images(image_inp.store, keys)[0]
    return {"pairs": grid_png([[img] + [decode_png(b) for b in rows.column("cond_png").to_pylist()],
                               [img] + [decode_png(b) for b in rows.column("mask_rgb_png").to_pylist()]])}
