"""Runner of the ``depth_maps`` stage (see :mod:`pipelines.depth`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines.depth import DEPTH_SCHEMA, depth_rows, estimate_disparity, load_depth_model
from pipelines.versions import DEPTH as CODE_VERSION
from pipelines.depth_convention import decode_zbuffer
from pipelines.images import decode_png, load_images
from pipelines.previews import colorize, grid_png
from pipelines.stages.common import StageReport, Timer, make_store, result_params, run_incremental
from pipelines.stages.ingest import open_images
from pipelines.storage import StageStore, read_index, write_index

STAGE = "depth_maps"


def run_depth(root: Path, params: dict[str, Any], *, device: str | None = None) -> StageReport:
    """Estimate depth for every ingested image that has no stored result for this
    version (model, weights origin, near/far, upstream version)."""
    keys, img_store, img_info = open_images(root)
    p = params["depth"]
    model = None
    origin = None
    with Timer() as t:
        # resolve weights first: their origin is part of the stage version
        model = load_depth_model(p.get("model"), p.get("local_dir"), profile=params.get("profile", "default"),
                                 device=device)
        origin = model.origin
        rp = result_params(params, "depth", weights_origin=origin)
        store = make_store(root, STAGE, CODE_VERSION, rp, {"source_images": img_info["version"]})

        def compute(chunk):
            imgs = load_images(img_store, chunk)
            disp = estimate_disparity(model, imgs, batch_size=int(p.get("batch_size", 8)))
            return depth_rows(chunk, disp, near=float(p["near"]), far=float(p["far"]),
                              min_disparity=float(p["min_disparity"])), []

        computed, reused, failures = run_incremental(store, keys, compute, int(params.get("chunk_size", 256)))
        ok = [k for k in keys if k not in {f["key"] for f in failures}]
        stats = store.read(ok, columns=["depth_min", "depth_max", "nonfinite"]) if ok else None
        index = stats.select(["key", "depth_min", "depth_max", "nonfinite"]) if stats is not None else \
            pa.table({"key": pa.array([], pa.string())})
        info = {"stage": STAGE, "version": store.version, "code_version": CODE_VERSION, "params": rp,
                "weights_origin": origin, "model": p.get("model"), "upstream": {"source_images": img_info["version"]}}
        dv = write_index(root, STAGE, index, info)
    previews = {}
    if ok:
        rows = store.read(ok[:6], columns=["depth_png"])
        imgs = load_images(img_store, ok[:6])
        zs = [decode_zbuffer(decode_png(b), p["near"], p["far"]) for b in rows.column("depth_png").to_pylist()]
        previews["depth"] = grid_png([list(imgs), [colorize(1.0 / z) for z in zs]])
    return StageReport(STAGE, store.version, dv, computed, reused, len(failures), t.seconds, previews=previews,
                       failures=failures,
                       metadata={"weights": origin, "model": p.get("model"), "samples": len(ok),
                                 "images_per_s": round(computed / max(t.seconds, 1e-9), 3),
                                 "depth_min": float(np.min(stats.column("depth_min"))) if ok else None,
                                 "depth_max": float(np.max(stats.column("depth_max"))) if ok else None})


def open_depth(root: Path) -> tuple[list[str], StageStore, dict[str, Any]]:
    """Keys, store and info of the materialized ``depth_maps`` stage."""
    table, info = read_index(root, STAGE)
    return table.column("key").to_pylist(), StageStore(root, STAGE, info["version"]), info


__all__ = ["run_depth", "open_depth", "DEPTH_SCHEMA"]
