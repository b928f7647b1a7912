"""Runner of the ``depth_maps`` stage, one bucket at a time (see :mod:`pipelines.depth`)."""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from pipelines.depth import DEPTH_SCHEMA, depth_rows, estimate_disparity, load_depth_model
from pipelines.depth_convention import decode_zbuffer
from pipelines.images import decode_png, load_images
from pipelines.models import reusable_origin
from pipelines.previews import colorize, grid_png
from pipelines.stages.common import BucketContext, StageReport, result_params, run_incremental

STAGE = "depth_maps"


def load_resource(params: dict[str, Any], device: str | None):
    """The depth model (``pipelines.models.Resolved``), built once per process or Ray actor."""
    p = params["depth"]
    return load_depth_model(p.get("model"), p.get("local_dir"), profile=params.get("profile", "default"),
                            device=device)


def run_depth_bucket(ctx: BucketContext) -> StageReport:
    """Depth for the bucket's images that have no stored result for this version (model,
    weights origin, near/far, upstream version). Writes ``depth_maps/bucket=<b>/index.parquet``
    (key, depth_min, depth_max, nonfinite)."""
    imgs = ctx.inputs["source_images"]
    p = ctx.params["depth"]
    keys = imgs.keys
    # the weights origin is part of the version; when the last run's origin still holds and
    # every sample is cached under it, the model is never built
    origin = reusable_origin(ctx.previous_info(STAGE).get("weights_origin"), local=p.get("local_dir"),
                             hub_id=p.get("model"), profile=ctx.params.get("profile", "default"))
    store = ctx.store(STAGE, result_params(ctx.params, "depth", weights_origin=origin), {"source_images": imgs.version})
    if origin is None or store.missing(keys):
        origin = ctx.resource().origin
        store = ctx.store(STAGE, result_params(ctx.params, "depth", weights_origin=origin),
                          {"source_images": imgs.version})
    rp = result_params(ctx.params, "depth", weights_origin=origin)

    def compute(chunk):
        disp = estimate_disparity(ctx.resource(), load_images(imgs.store, chunk), batch_size=int(p.get("batch_size", 8)))
        return depth_rows(chunk, disp, near=float(p["near"]), far=float(p["far"]),
                          min_disparity=float(p["min_disparity"])), []

    computed, reused, failures = run_incremental(store, keys, compute, int(ctx.params.get("chunk_size", 256)))
    bad = {f["key"] for f in failures}
    ok = [k for k in keys if k not in bad]
    index = (store.read(ok, columns=["depth_min", "depth_max", "nonfinite"]).select(
        ["key", "depth_min", "depth_max", "nonfinite"]) if ok else
        pa.table({"key": pa.array([], pa.string()), "depth_min": pa.array([], pa.float32()),
                  "depth_max": pa.array([], pa.float32()), "nonfinite": pa.array([], pa.int32())}))
    info = {"stage": STAGE, "version": store.version, "params": rp, "weights_origin": origin,
            "model": p.get("model"), "upstream": {"source_images": imgs.version}}
    dv = ctx.publish(STAGE, index, info)
    return StageReport(STAGE, store.version, dv, computed, reused, len(failures), failures=failures,
                       metadata={"weights": origin, "samples": len(ok), "model_loaded": ctx.resource_loaded(),
                                 "depth_min": float(np.min(index.column("depth_min"))) if ok else None,
                                 "depth_max": float(np.max(index.column("depth_max"))) if ok else None})


def depth_previews(depth_inp, image_inp, params: dict[str, Any], n: int = 6) -> dict[str, bytes]:
    """Images over their disparity (colormap normalised per image) for up to ``n`` samples."""
    keys = depth_inp.keys[:n]
    if not keys:
        return {}
    p = params["depth"]
    rows = depth_inp.store.read(keys, columns=["depth_png"])
    zs = [decode_zbuffer(decode_png(b), p["near"], p["far"]) for b in rows.column("depth_png").to_pylist()]
    return {"depth": grid_png([list(load_images(image_inp.store, keys)), [colorize(1.0 / z) for z in zs]])}


__all__ = ["run_depth_bucket", "load_resource", "DEPTH_SCHEMA"]
