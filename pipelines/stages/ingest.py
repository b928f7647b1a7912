"""Runners of ingestion, in two phases (see :mod:`pipelines.listing`, :mod:`pipelines.images`).

* ``source_listing`` (global): list the source, hash and deduplicate; writes one listing
  per bucket (``source_listing/bucket=<b>/index.parquet``), ``quarantine.parquet``
  (unreadable files), ``skipped.parquet`` (not image files) and ``duplicates.parquet``.
* ``source_images`` (per bucket): decode, EXIF-orient, RGB, centre-crop, resize the bucket's
  keys that the cache lacks; bad images go to the bucket's ``quarantine.parquet``.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines.buckets import bucket_ids, bucket_of
from pipelines.config import stage_version
from pipelines.images import BadImage, center_crop_resize, decode_image_info, decode_png, encode_png, load_images, \
    sample_key
from pipelines.listing import LISTING_SCHEMA, hash_listing
from pipelines.previews import grid_png
from pipelines.sources import list_source
from pipelines.stages.common import BucketContext, StageReport, Timer, result_params, run_incremental
from pipelines.stages.specs import STAGES
from pipelines.storage import exists, read_index, write_index, write_quarantine, writer_lock, index_path

LISTING = "source_listing"
STAGE = "source_images"
IMAGE_SCHEMA = pa.schema([("key", pa.string()), ("image_png", pa.binary()), ("width", pa.int32()),
                          ("height", pa.int32()), ("note", pa.string())])
INDEX_SCHEMA = pa.schema([("key", pa.string()), ("uri", pa.string()), ("source_path", pa.string()),
                          ("label", pa.string()), ("split", pa.string()), ("width", pa.int32()),
                          ("height", pa.int32())])


def _previous_listing(root: Any) -> dict[str, tuple[int, int, str]]:
    """``uri -> (size, mtime_ns, key)`` of the current listing (all buckets), {} if none."""
    path = index_path(root, LISTING)
    if not exists(path):
        return {}
    _, info = read_index(root, LISTING)
    out: dict[str, tuple[int, int, str]] = {}
    for b in info.get("buckets", []):
        try:
            t, _ = read_index(root, LISTING, b)
        except FileNotFoundError:
            continue
        for u, s, m, k in zip(*(t.column(c).to_pylist() for c in ("uri", "size", "mtime_ns", "key"))):
            out[u] = (s, m, k)
    return out


def run_listing(root: Any, params: dict[str, Any]) -> StageReport:
    """Phase 1: list ``params['source']``, hash, deduplicate and write per-bucket listings.

    Raises only for an unusable *source* (unknown kind, missing folder or manifest, a
    manifest that lists no file); bad files are quarantined or skipped with a reason.
    """
    src = params.get("source") or {}
    n = int(params["num_buckets"])
    with writer_lock(root, LISTING), Timer() as t:
        listing = list_source(src.get("kind", "sample"), src.get("path"))
        skipped = list(getattr(listing, "skipped", []))
        source_root = src.get("path") if src.get("kind") == "folder" else None
        if src.get("kind") == "manifest" and src.get("path"):
            import os
            source_root = os.path.dirname(os.path.abspath(src["path"]))
        res = hash_listing(list(listing), source_root=source_root, previous=_previous_listing(root), params=params,
                           chunk_size=int(params.get("chunk_size", 256)))
        version = stage_version(LISTING, STAGES[LISTING].code_version, {"source": src, "num_buckets": n}, {})
        keys = res.table.column("key").to_pylist()
        labels = sorted({x for x in res.table.column("label").to_pylist() if x is not None})
        buckets = [bucket_of(k, n) for k in keys]
        versions = {}
        for b in bucket_ids(n):
            sel = [i for i, x in enumerate(buckets) if x == b]
            tb = res.table.take(pa.array(sel, pa.int64())) if sel else LISTING_SCHEMA.empty_table()
            versions[b] = write_index(root, LISTING, tb, {"stage": LISTING, "version": version, "labels": labels},
                                      bucket=b)
        write_quarantine(root, LISTING, res.quarantine)
        write_quarantine(root, LISTING, skipped, name="skipped.parquet")
        write_quarantine(root, LISTING, res.duplicates, name="duplicates.parquet")
        summary = pa.table({"bucket": list(versions), "data_version": list(versions.values()),
                            "samples": [buckets.count(b) for b in versions]})
        dv = write_index(root, LISTING, summary, {"stage": LISTING, "version": version, "source": src,
                                                  "labels": labels, "buckets": list(versions),
                                                  "num_buckets": n})
    listed = len(res.table) + len(res.duplicates) + len(res.quarantine) + len(skipped)
    return StageReport(
        LISTING, version, dv, computed=res.hashed, reused=res.reused, failed=len(res.quarantine),
        seconds=t.seconds, failures=res.quarantine + skipped,
        metadata={"listed": listed, "unique": len(keys), "duplicates": len(res.duplicates),
                  "unreadable": len(res.quarantine), "skipped": len(skipped), "num_buckets": n,
                  "non_empty_buckets": len(set(buckets)), "num_labels": len(labels),
                  "skipped_reasons": dict(Counter(r["reason"].split(":")[0] for r in skipped)),
                  "source_kind": src.get("kind", "sample"), "files_per_s": round(listed / max(t.seconds, 1e-9), 1)})


def run_images_bucket(ctx: BucketContext) -> StageReport:
    """Phase 2 for one bucket: decode / crop / resize its keys that the cache lacks.

    Writes ``source_images/bucket=<b>/index.parquet`` (:data:`INDEX_SCHEMA`, one row per
    accepted image, listing order) and ``quarantine.parquet`` (uri, reason).
    """
    lst = ctx.inputs[LISTING]
    ip = ctx.params["ingest"]
    rp = result_params(ctx.params, "ingest")
    store = ctx.store(STAGE, rp, {})
    rows = {c: lst.table.column(c).to_pylist() for c in ("key", "uri", "source_path", "label", "split")}
    uri_of = dict(zip(rows["key"], rows["uri"]))
    res, mn = int(ip["resolution"]), int(ip["min_size"])

    def compute(chunk: list[str]):
        out: dict[str, list] = {c: [] for c in IMAGE_SCHEMA.names}
        bad = []
        for k in chunk:
            uri = uri_of[k]
            try:
                with open(uri, "rb") as f:
                    data = f.read()
                if sample_key(data) != k:
                    raise BadImage("file changed since it was listed: rerun source_listing")
                dec = decode_image_info(data, min_size=mn)
            except (OSError, BadImage) as e:
                bad.append({"key": k, "uri": uri, "reason": str(e) if isinstance(e, BadImage) else
                            f"unreadable file: {e.strerror or e}"})
                continue
            w, h = dec.image.size
            for c, v in (("key", k), ("image_png", encode_png(center_crop_resize(dec.image, res))), ("width", w),
                         ("height", h), ("note", dec.note or None)):
                out[c].append(v)
        return pa.table(out, schema=IMAGE_SCHEMA), bad

    computed, reused, failures = run_incremental(store, rows["key"], compute, int(ctx.params.get("chunk_size", 256)))
    bad = {f["key"] for f in failures}
    ok = [i for i, k in enumerate(rows["key"]) if k not in bad]
    keys = [rows["key"][i] for i in ok]
    sizes = store.read(keys, columns=["width", "height", "note"]) if keys else IMAGE_SCHEMA.empty_table()
    index = pa.table({**{c: [rows[c][i] for i in ok] for c in ("key", "uri", "source_path", "label", "split")},
                      "width": sizes.column("width"), "height": sizes.column("height")}, schema=INDEX_SCHEMA)
    quarantine = [{"uri": f.get("uri", uri_of.get(f["key"], f["key"])), "reason": f["reason"]} for f in failures]
    info = {"stage": STAGE, "version": store.version, "params": rp, "upstream": {LISTING: lst.info.get("data_version")}}
    dv = ctx.publish(STAGE, index, info, quarantine)
    notes = [n for n in sizes.column("note").to_pylist() if n] if keys else []
    return StageReport(STAGE, store.version, dv, computed=computed, reused=reused, failed=len(failures),
                       failures=quarantine,
                       metadata={"accepted": len(keys), "quarantined": len(failures), "multi_frame": len(notes)})


def images_float(store, keys) -> np.ndarray:
    """float32 [N,3,R,R] in [0,1] for ``keys``."""
    return load_images(store, keys).transpose(0, 3, 1, 2).astype(np.float32) / 255.0


def image_previews(inp, n: int = 8) -> dict[str, bytes]:
    """A grid of up to ``n`` stored images of a ``source_images`` bucket input."""
    keys = inp.keys[:n]
    return {"images": grid_png([list(load_images(inp.store, keys))])} if keys else {}


__all__ = ["run_listing", "run_images_bucket", "images_float", "decode_png", "INDEX_SCHEMA"]
