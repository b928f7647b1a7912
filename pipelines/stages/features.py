"""Runner of the ``dinov2_features`` stage (see :mod:`pipelines.features`)."""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import torch

from pipelines.stages.common import BucketContext, StageReport, result_params, run_incremental
from pipelines.stages.ingest import images_float
from pipelines.stage_store import StageStore

STAGE = "dinov2_features"
FEATURE_SCHEMA = pa.schema([("key", pa.string()), ("grid_h", pa.int32()), ("grid_w", pa.int32()),
                            ("dim", pa.int32()), ("patch_f16", pa.binary()), ("cls_f16", pa.binary()),
                            ("flipped_patch_f16", pa.binary()), ("flipped_cls_f16", pa.binary())])


def feature_rows(keys: Sequence[str], fb) -> pa.Table:
    """Stage rows (:data:`FEATURE_SCHEMA`) from a :class:`pipelines.features.FeatureBatch`."""
    n, h, w, c = fb.patch.shape
    cols = {"key": list(keys), "grid_h": [h] * n, "grid_w": [w] * n, "dim": [c] * n,
            "patch_f16": [a.tobytes() for a in fb.patch], "cls_f16": [a.tobytes() for a in fb.cls],
            "flipped_patch_f16": [None if fb.flipped_patch is None else a.tobytes() for a in
                                  (fb.flipped_patch if fb.flipped_patch is not None else [None] * n)],
            "flipped_cls_f16": [None if fb.flipped_cls is None else a.tobytes() for a in
                                (fb.flipped_cls if fb.flipped_cls is not None else [None] * n)]}
    return pa.table(cols, schema=FEATURE_SCHEMA)


def decode_features(table: pa.Table) -> dict[str, np.ndarray | None]:
    """float16 arrays from stage rows: ``patch`` [N,h,w,C], ``cls`` [N,C], ``flipped_patch``,
    ``flipped_cls`` (None when the stage ran with ``flipped: false``)."""
    h, w, c = (table.column(n)[0].as_py() for n in ("grid_h", "grid_w", "dim"))

    def arr(col, shape):
        vals = table.column(col).to_pylist()
        if any(v is None for v in vals):
            return None
        return np.stack([np.frombuffer(v, dtype=np.float16).reshape(shape) for v in vals])

    return {"patch": arr("patch_f16", (h, w, c)), "cls": arr("cls_f16", (c,)),
            "flipped_patch": arr("flipped_patch_f16", (h, w, c)), "flipped_cls": arr("flipped_cls_f16", (c,))}


def load_resource(params: dict[str, Any], device: str | None):
    """The DINOv2 model (``pipelines.models.Resolved``), built once per process or Ray actor."""
    from pipelines.features import load_dinov2

    p = params["features"]
    return load_dinov2(p["model"], p.get("local_path"), profile=params.get("profile", "default"),
                       image_size=int(p["image_size"]), device=device)


def run_features_bucket(ctx: BucketContext) -> StageReport:
    """DINOv2 features for the bucket's images without a stored result for this version.
    Writes ``dinov2_features/bucket=<b>/index.parquet`` (key)."""
    from pipelines.features import extract_features

    from pipelines.models import reusable_origin

    imgs = ctx.inputs["source_images"]
    p = ctx.params["features"]
    keys = imgs.keys
    origin = reusable_origin(ctx.previous_info(STAGE).get("weights_origin"), local=p.get("local_path"),
                             hub_id=p.get("model"), profile=ctx.params.get("profile", "default"))
    store = ctx.store(STAGE, result_params(ctx.params, "features", weights_origin=origin),
                      {"source_images": imgs.version})
    if origin is None or store.missing(keys):      # else everything is cached: the model is never built
        origin = ctx.resource().origin
        store = ctx.store(STAGE, result_params(ctx.params, "features", weights_origin=origin),
                          {"source_images": imgs.version})
    rp = result_params(ctx.params, "features", weights_origin=origin)
    extract_s = [0.0]

    def compute(chunk):
        fb = extract_features(ctx.resource().model, torch.from_numpy(images_float(imgs.store, chunk)),
                              batch_size=int(p.get("batch_size", 16)), flipped=bool(p.get("flipped", True)),
                              device=ctx.device)
        extract_s[0] += fb.seconds
        return feature_rows(chunk, fb), []

    computed, reused, failures = run_incremental(store, keys, compute, int(ctx.params.get("chunk_size", 256)))
    bad = {f["key"] for f in failures}
    ok = [k for k in keys if k not in bad]
    index = pa.table({"key": pa.array(ok, pa.string())})
    info = {"stage": STAGE, "version": store.version, "params": rp, "weights_origin": origin,
            "upstream": {"source_images": imgs.version}}
    dv = ctx.publish(STAGE, index, info)
    return StageReport(STAGE, store.version, dv, computed, reused, len(failures), failures=failures,
                       metadata={"weights": origin, "samples": len(ok), "model_loaded": ctx.resource_loaded(),
                                 "images_per_s": round(computed / extract_s[0], 2) if extract_s[0] else None})


def iter_feature_chunks(store: StageStore, keys: Sequence[str], chunk_size: int
                        ) -> Iterator[tuple[list[str], dict[str, np.ndarray | None]]]:
    """(keys, decoded features) chunk by chunk, in the order of ``keys``."""
    for i in range(0, len(keys), max(1, chunk_size)):
        chunk = list(keys[i:i + chunk_size])
        yield chunk, decode_features(store.read(chunk))
