"""Runners of the posed multi-view ("viewset") stages (issue 14; DESIGN.md "Viewset sample schema").

``viewset_sources`` (global) -> ``viewsets[b]`` -> ``viewset_shards[b]`` -> ``viewset_manifest`` (global)

* ``viewset_sources``: list the sequences of ``params['viewset_source']`` lazily
  (:func:`pipelines.viewsets.list_sequences`), compute each sequence's **content key** (sha256
  of its format, id, load options, source split, per-sequence annotations and every file's
  relative path + sha256: :func:`content_key`), validate it (:func:`pipelines.viewsets.load_viewset`
  decodes every view and checks the cameras) and write one listing per bucket
  (``viewset_sources/bucket=<b>/index.parquet``); bad sequences go to
  ``viewset_sources/quarantine.parquet`` with ``reason = "<ViewsetError.reason>: <detail>"``.
  A sequence whose files' (path, size, mtime) signature is unchanged keeps its key and
  validation (nothing is re-read).
* ``viewsets`` (per bucket): load, object crop (:func:`pipelines.viewsets.crop.crop_viewset`;
  fixed-ring renders keep the full frame, their cameras are baked into SyncDreamer), canonical
  frame (:func:`pipelines.viewsets.normalise.canonical_frame`), encode with
  :data:`pipelines.sample_schema.VIEWSET`; one cache row per sequence key (members bytes +
  ``meta`` JSON). Failures are quarantined in the bucket's ``quarantine.parquet``.
* ``viewset_shards`` (per bucket): deterministic tars ``viewset_shards/bucket=<b>/{split}-NNNNNN.tar``
  + bucket manifest (:func:`pipelines.shards.write_shards` with ``encoded=True``); the split is
  the source's (held-out wins for sequences in several set-list splits) else the key hash.
* ``viewset_manifest``: :func:`pipelines.stages.shards.run_manifest` on ``viewset_shards``.

Stage versions hash only their own section (``viewset_source`` / ``viewsets`` /
``viewset_shards``, speed-only keys dropped) and the upstream stage versions, so changing
the crop recomputes ``viewsets`` and the shards, never the listing.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

import pipelines.versions as V
from pipelines.buckets import bucket_ids, bucket_of
from pipelines.camera_conventions import camera_centres
from pipelines.config import stable_hash, stage_version
from pipelines.params_schema import result_params
from pipelines.sample_schema import VIEWSET
from pipelines.stages.common import BucketContext, StageReport, Timer, chunked, run_incremental
from pipelines.storage import exists, index_path, read_bytes, read_index, write_index, write_quarantine, writer_lock
from pipelines.viewsets import SequenceRef, ViewsetError, list_sequences, load_viewset
from pipelines.viewsets.crop import crop_view, crop_viewset
from pipelines.viewsets.normalise import canonical_frame, object_points

LISTING, STAGE, SHARDS, MERGE = "viewset_sources", "viewsets", "viewset_shards", "viewset_manifest"
SHARD_DIR = "viewset_shards"
CODE_VERSIONS = {"viewset_sources": V.VIEWSET_SOURCES, "viewsets": V.VIEWSETS, "viewset_shards": V.VIEWSET_SHARDS}
LISTING_SCHEMA = pa.schema([("key", pa.string()), ("id", pa.string()), ("path", pa.string()),
                            ("format", pa.string()), ("options", pa.string()), ("split", pa.string()),
                            ("category", pa.string()), ("num_views", pa.int32()), ("height", pa.int32()),
                            ("width", pa.int32()), ("signature", pa.string())])
CACHE_SCHEMA = pa.schema([("key", pa.string()), ("num_views", pa.int32()), ("members", pa.list_(pa.string())),
                          ("data", pa.list_(pa.large_binary())), ("meta_json", pa.string()), ("nbytes", pa.int64())])
INDEX_SCHEMA = pa.schema([("key", pa.string()), ("id", pa.string()), ("split", pa.string()),
                          ("category", pa.string()), ("format", pa.string()), ("num_views", pa.int32()),
                          ("nbytes", pa.int64())])
#: held-out splits win when a sequence's frames are in several set-list splits
SPLIT_PRIORITY = ("test", "val", "train")


# ------------------------------------------------------------------------------ listing
def _files(ref: SequenceRef) -> list[Path]:
    base = Path(ref.path)
    return sorted(p for p in base.rglob("*") if p.is_file() and not p.name.startswith("."))


def _annotations(ref: SequenceRef) -> bytes:
    """Per-sequence metadata that lives outside the sequence directory (CO3D frame annotations)."""
    if ref.format != "co3d":
        return b""
    from pipelines.viewsets.formats.co3d import category_index

    frames = category_index(Path(ref.path).parent).get(Path(ref.path).name, [])
    return json.dumps(frames, sort_keys=True).encode()


def file_signature(ref: SequenceRef, files: list[Path]) -> str:
    """sha256 of the sequence's (relative path, size, mtime_ns) and, for CO3D, the category
    annotation files' stats: equal signatures mean nothing changed on disk (no re-read)."""
    h = hashlib.sha256(f"{ref.format}\0{ref.id}\0{ref.split}\0{ref.options}".encode())
    extra = [Path(ref.path).parent / n for n in ("frame_annotations.jgz", "sequence_annotations.jgz")] \
        if ref.format == "co3d" else []
    for p in [*files, *extra]:
        if p.exists():
            st = p.stat()
            h.update(f"{p.as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def content_key(ref: SequenceRef, files: list[Path], options: dict[str, Any]) -> str:
    """The sequence's content key (sha256 hex): format, id, load options, source split,
    per-sequence annotations and every file's relative path and sha256 bytes digest."""
    h = hashlib.sha256(json.dumps({"format": ref.format, "id": ref.id, "split": ref.split,
                                   "options": {**options, **ref.load_options()}}, sort_keys=True,
                                  default=str).encode())
    h.update(hashlib.sha256(_annotations(ref)).digest())
    base = Path(ref.path)
    for p in files:
        d = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                d.update(block)
        h.update(p.relative_to(base).as_posix().encode() + b"\0" + d.digest())
    return h.hexdigest()


def _refs(src: dict[str, Any]) -> Iterator[SequenceRef | tuple[str, ViewsetError]]:
    """The sequences of the source; a failing CO3D category yields ``(category, error)``."""
    root, fmt, opts = Path(src["root"]), src["format"], dict(src.get("options") or {})
    if fmt != "co3d":
        yield from list_sequences(root, fmt, **opts)
        return
    cats = src.get("categories")
    if cats is None:
        c2s = root / "category_to_subset_name_list.json"
        cats = sorted(json.loads(c2s.read_text())) if c2s.exists() else \
            sorted(p.parent.name for p in root.glob("*/frame_annotations.jgz"))
    for cat in cats:
        try:
            yield from list_sequences(root, fmt, categories=[cat], subset=src.get("subset"), **opts)
        except ViewsetError as e:
            yield f"co3d/{cat}", e


def _previous(root: Any, version: str) -> dict[str, dict]:
    """id -> listing row of the current listing when it has ``version`` ({} otherwise)."""
    if not exists(index_path(root, LISTING)):
        return {}
    _, info = read_index(root, LISTING)
    if info.get("version") != version:
        return {}
    out: dict[str, dict] = {}
    for b in info.get("buckets", []):
        try:
            out.update({r["id"]: r for r in read_index(root, LISTING, b)[0].to_pylist()})
        except FileNotFoundError:
            continue
    return out


def run_viewset_sources(root: Any, params: dict[str, Any]) -> StageReport:
    """List, key and validate the sequences of ``params['viewset_source']``; write per-bucket
    listings (:data:`LISTING_SCHEMA`) and the quarantine. Peak memory: one sequence.

    ``root: null`` lists nothing (empty listings). Raises only for an unusable source
    (missing root directory, unknown format: ValueError / FileNotFoundError).
    """
    src = params["viewset_source"]
    n = int(params["num_buckets"])
    opts = dict(src.get("options") or {})
    rp = {k: v for k, v in result_params(params, "viewset_source").items() if k not in ("root", "categories")}
    version = stage_version(LISTING, V.VIEWSET_SOURCES, rp, {})
    if src.get("root") and not Path(src["root"]).is_dir():
        raise FileNotFoundError(f"viewset_source.root {src['root']!r} is not a directory")
    with writer_lock(root, LISTING), Timer() as t:
        prev = _previous(root, version)
        rows, quarantine, hashed, reused, seen = [], [], 0, 0, set()
        for ref in (_refs(src) if src.get("root") else []):
            if isinstance(ref, tuple):
                quarantine.append({"uri": ref[0], "reason": f"{ref[1].reason}: {ref[1].detail}"})
                continue
            try:
                files = _files(ref)
                sig = file_signature(ref, files)
                old = prev.get(ref.id)
                if old is not None and old["signature"] == sig:
                    rows.append(old)
                    reused += 1
                    continue
                key = content_key(ref, files, opts)
                vs = load_viewset(ref.path, ref.format, min_views=int(src["min_views"]),
                                  **{**opts, **ref.load_options()})
                rows.append({"key": key, "id": ref.id, "path": ref.path, "format": ref.format,
                             "options": json.dumps({**opts, **ref.load_options()}, sort_keys=True),
                             "split": ref.split, "category": ref.category, "num_views": vs.num_views,
                             "height": vs.hw[0], "width": vs.hw[1], "signature": sig})
                hashed += 1
                del vs
            except ViewsetError as e:
                quarantine.append({"uri": ref.id, "reason": f"{e.reason}: {e.detail}"})
            except OSError as e:
                quarantine.append({"uri": ref.id, "reason": f"missing_files: {e}"})
        rows = [r for r in rows if not (r["key"] in seen or seen.add(r["key"]))]
        buckets = [bucket_of(r["key"], n) for r in rows]
        versions = {}
        for b in bucket_ids(n):
            sel = [r for r, x in zip(rows, buckets) if x == b]
            versions[b] = write_index(root, LISTING, pa.Table.from_pylist(sel, schema=LISTING_SCHEMA),
                                      {"stage": LISTING, "version": version, "params": rp}, bucket=b)
        write_quarantine(root, LISTING, quarantine)
        summary = pa.table({"bucket": list(versions), "data_version": list(versions.values()),
                            "sequences": [buckets.count(b) for b in versions]})
        dv = write_index(root, LISTING, summary, {"stage": LISTING, "version": version, "params": rp,
                                                  "buckets": list(versions), "num_buckets": n})
    return StageReport(LISTING, version, dv, computed=hashed, reused=reused, failed=len(quarantine),
                       seconds=t.seconds, failures=quarantine,
                       metadata={"sequences": len(rows), "views": sum(r["num_views"] for r in rows),
                                 "quarantined": len(quarantine), "format": src.get("format"),
                                 "reasons": dict(Counter(q["reason"].split(":")[0] for q in quarantine)),
                                 "non_empty_buckets": len(set(buckets))})


# ------------------------------------------------------------------------------ viewsets
def _u8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def _sha256_file(p: Path) -> str | None:
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None


def viewset_sample(vs, key: str, *, crop_context: float = 0.3, crop_threshold: float = 0.4,
                   crop_square: bool = False, min_short_side: int = 512, bbox_percentile: float = 0.0,
                   **_: Any) -> dict[str, Any]:
    """One :class:`pipelines.viewsets.Viewset` as a :data:`pipelines.sample_schema.VIEWSET`
    sample in fields form (``meta`` without split / stage provenance, added by the shards).

    Steps: object crop + resize (fixed-ring renders keep the full frame); canonical world
    (:func:`canonical_frame` from the depth points inside the mask, else the cameras);
    ``cams.w2c`` in the canonical world, depth scaled by its scale and stored as uint16
    ``value * depth_scale`` (``depth_scale = max depth / 65535``, 0 = invalid). ``cams`` adds
    ``src_K``, ``src_hw`` and ``src_w2c`` (source world) to the schema's arrays; ``views``
    has name, frame number, source path + sha256 and elevation / azimuth (deg) / radius of
    the camera centre in the canonical world. Raises ViewsetError for an empty viewset.
    """
    V_, (H, W) = vs.num_views, vs.hw
    full = vs.meta.get("render") == "fixed"
    if full:
        crops = [crop_view(vs.images[v], vs.K[v], (0, 0, W, H), alpha=None if vs.alpha is None else vs.alpha[v],
                           depth=None if vs.depth is None else vs.depth[v], min_short_side=min_short_side)
                 for v in range(V_)]
    else:
        crops = crop_viewset(vs, context=crop_context, threshold=crop_threshold, square=crop_square,
                             min_short_side=min_short_side)
    pts = object_points(vs.w2c, vs.K, vs.depth, vs.alpha, depth_mask=vs.depth_mask) if vs.depth is not None else None
    frame = canonical_frame(vs.w2c, pts if pts is not None and len(pts) >= 8 else None,
                            bbox_percentile=bbox_percentile)
    sim = frame.world_to_canonical
    w2c = sim.apply_w2c(vs.w2c)
    C = camera_centres(w2c)
    r = np.linalg.norm(C, axis=-1)
    fields: dict[str, Any] = {"key": key, "rgb": [_u8(c.image).transpose(1, 2, 0) for c in crops]}
    if vs.alpha is not None:
        fields["alpha"] = [_u8(c.alpha[0]) for c in crops]
    depth_scale = None
    if vs.depth is not None:
        zs = [c.depth[0].double().numpy() * sim.scale for c in crops]
        zmax = max((float(z[np.isfinite(z) & (z > 0)].max()) for z in zs if (np.isfinite(z) & (z > 0)).any()),
                   default=0.0)
        if zmax > 0:
            depth_scale = zmax / 65535.0
            fields["depth"] = [np.where(np.isfinite(z) & (z > 0), np.clip(np.round(
                np.nan_to_num(z) / depth_scale), 1, 65535), 0).astype(np.uint16) for z in zs]
    if vs.depth_mask is not None:
        fields["depthmask"] = [F.interpolate(vs.depth_mask[v, None, :, c.box[1]:c.box[1] + c.box[3],
                                                         c.box[0]:c.box[0] + c.box[2]].float(),
                                             size=c.image.shape[1:], mode="nearest-exact")[0, 0].numpy() > 0.5
                               for v, c in enumerate(crops)]
    fields["cams"] = {"w2c": w2c, "K": np.stack([c.K for c in crops]),
                      "hw": np.array([c.image.shape[1:] for c in crops], np.int32),
                      "crop_xywh": np.array([c.box for c in crops], np.float64),
                      "scale": np.array([c.scale for c in crops], np.float64),
                      "src_K": np.asarray(vs.K, np.float64), "src_hw": np.tile(np.array([H, W], np.int32), (V_, 1)),
                      "src_w2c": np.asarray(vs.w2c, np.float64)}
    fns = vs.frame_numbers or list(range(V_))
    fields["views"] = [{"name": n, "frame_number": int(fns[v]), "source_path": str(Path(vs.path) / n),
                        "sha256": _sha256_file(Path(vs.path) / n),
                        "elevation_deg": float(np.degrees(np.arcsin(np.clip(C[v, 2] / max(r[v], 1e-12), -1, 1)))),
                        "azimuth_deg": float(np.degrees(np.arctan2(C[v, 1], C[v, 0]))), "radius": float(r[v])}
                       for v, n in enumerate(vs.names)]
    m = vs.meta
    fields["meta"] = {"dataset": m.get("dataset", vs.format), "source_format": vs.format,
                      "category": m.get("category"), "sequence": m.get("sequence", m.get("uid")),
                      "normalization": frame.to_json(), "bbox_canonical": frame.to_json()["bbox_canonical"],
                      "up_axis": "+z", "pixel_convention": "centre",
                      "source_pixel_convention": m.get("source_pixel_convention"),
                      "mask_source": m.get("mask_source"), "background": m.get("background"),
                      "depth_scale": depth_scale, "full_frame": full, "source": m}
    return fields


def _encode_row(key: str, fields: dict[str, Any]) -> dict[str, Any]:
    meta = fields.pop("meta")
    members = VIEWSET.encode({**fields, "meta": meta})      # validates every member
    members.pop("__key__"), members.pop("meta.json")
    names = sorted(members)
    return {"key": key, "num_views": len(fields["rgb"]), "members": names, "data": [members[k] for k in names],
            "meta_json": json.dumps(meta, sort_keys=True, default=str),
            "nbytes": sum(len(members[k]) for k in names)}


def run_viewsets_bucket(ctx: BucketContext) -> StageReport:
    """Decode, crop, normalise and encode the bucket's sequences that the cache lacks;
    writes ``viewsets/bucket=<b>/index.parquet`` (:data:`INDEX_SCHEMA`) and its quarantine."""
    lst = ctx.inputs[LISTING]
    rp = result_params(ctx.params, "viewsets")
    store = ctx.store(STAGE, rp, {LISTING: lst.version})
    rows = {r["key"]: r for r in lst.table.to_pylist()}
    min_views = int((ctx.params.get("viewset_source") or {}).get("min_views", 2))

    def compute(chunk: list[str]):
        out, bad = [], []
        for k in chunk:
            r = rows[k]
            try:
                vs = load_viewset(r["path"], r["format"], min_views=min_views, **json.loads(r["options"] or "{}"))
                out.append(_encode_row(k, viewset_sample(vs, k, **rp)))
            except ViewsetError as e:
                bad.append({"key": k, "uri": r["id"], "reason": f"{e.reason}: {e.detail}"})
        return pa.Table.from_pylist(out, schema=CACHE_SCHEMA), bad

    chunk = int((ctx.params.get("viewsets") or {}).get("chunk_sequences", 4))
    computed, reused, failures = run_incremental(store, list(rows), compute, chunk)
    bad = {f["key"] for f in failures}
    keys = [k for k in rows if k not in bad]
    stats = store.read(keys, columns=["num_views", "nbytes"]) if keys else CACHE_SCHEMA.empty_table()
    index = pa.table({"key": keys, "id": [rows[k]["id"] for k in keys], "split": [rows[k]["split"] for k in keys],
                      "category": [rows[k]["category"] for k in keys], "format": [rows[k]["format"] for k in keys],
                      "num_views": stats.column("num_views"), "nbytes": stats.column("nbytes")}, schema=INDEX_SCHEMA)
    quarantine = [{"uri": f.get("uri", f["key"]), "reason": f["reason"]} for f in failures]
    dv = ctx.publish(STAGE, index, {"stage": STAGE, "version": store.version, "params": rp,
                                    "upstream": {LISTING: lst.info.get("data_version")}}, quarantine)
    return StageReport(STAGE, store.version, dv, computed=computed, reused=reused, failed=len(failures),
                       failures=quarantine, metadata={"sequences": len(keys), "quarantined": len(failures),
                                                      "views": int(sum(index.column("num_views").to_pylist())),
                                                      "bytes": int(sum(index.column("nbytes").to_pylist()))})


# ------------------------------------------------------------------------------ shards
def assign_split(source_split: str | None, key: str, fractions: dict[str, float],
                 use_source: bool = True) -> tuple[str, str]:
    """``(split, rule)``: the source's split when it names one of ``fractions`` (several
    ``"+"``-joined set-list splits: the first of :data:`SPLIT_PRIORITY` present), rule
    ``"source"``; else :func:`pipelines.shards.split_of` of the key, rule ``"hash"``."""
    from pipelines.shards import split_of

    if use_source and source_split:
        parts = source_split.split("+")
        for s in [p for p in SPLIT_PRIORITY if p in parts] + parts:
            if s in fractions:
                return s, "source"
    return split_of(key, fractions), "hash"


def run_viewset_shards_bucket(ctx: BucketContext) -> StageReport:
    """Write the bucket's viewsets as WebDataset shards under ``viewset_shards/bucket=<b>/``;
    reused (nothing rewritten) when the bucket manifest has this dataset version and verifies."""
    from pipelines.sample_schema import JSON_DICT
    from pipelines.shard_manifest import MANIFEST_NAME, verify
    from pipelines.shards import write_shards

    inp = ctx.inputs[STAGE]
    sp = result_params(ctx.params, SHARDS)
    fractions = dict(sp["split_fractions"])
    out = f"{ctx.root}/{SHARD_DIR}/bucket={ctx.bucket}"
    versions = {STAGE: inp.version}
    t = inp.table.to_pylist()
    split_of_key = {r["key"]: r["split"] for r in t}
    keys = sorted(split_of_key)
    params_hash = stable_hash({"versions": versions, SHARDS: sp})
    h = hashlib.sha256(json.dumps({"versions": versions, "code": CODE_VERSIONS, SHARDS: sp}, sort_keys=True).encode())
    for k in keys:
        h.update(k.encode() + b"\n")
    dataset_version = h.hexdigest()[:16]

    def generate() -> Iterator[dict]:
        for chunk in chunked(keys, int((ctx.params.get("viewsets") or {}).get("chunk_sequences", 4))):
            rows = inp.store.read(list(chunk)).to_pylist()
            for r in sorted(rows, key=lambda r: r["key"]):
                split, rule = assign_split(split_of_key[r["key"]], r["key"], fractions, sp["use_source_splits"])
                meta = {**json.loads(r["meta_json"]), "key": r["key"], "split": split, "split_rule": rule,
                        "split_source": split_of_key[r["key"]], "code_versions": CODE_VERSIONS,
                        "stage_versions": versions, "params_hash": params_hash}
                sample = {"__key__": r["key"], **dict(zip(r["members"], r["data"])), "meta.json": JSON_DICT.encode(meta)}
                yield {"key": r["key"], "split": split, "sample": sample}

    path = f"{out}/{MANIFEST_NAME}"
    old = json.loads(read_bytes(path)) if exists(path) else {}
    reused = old.get("dataset_version") == dataset_version and verify(out).ok
    manifest = old if reused else write_shards(
        generate(), out, fractions=fractions, maxcount=int(sp["maxcount"]), maxsize=float(sp["maxsize"]),
        dataset_version=dataset_version, schema=VIEWSET, encoded=True,
        extra={"stage_versions": versions, "code_versions": CODE_VERSIONS, "bucket": ctx.bucket})
    n = sum(s["count"] for s in manifest["shards"])
    return StageReport(SHARDS, dataset_version, manifest["digest"][:24], computed=0 if reused else n,
                       reused=n if reused else 0,
                       metadata={"dataset_version": dataset_version, "sequences": n, "shards": len(manifest["shards"]),
                                 "bytes": sum(s["bytes"] for s in manifest["shards"])})


def run_viewset_manifest(root: Any, params: dict[str, Any], buckets: list[str]) -> StageReport:
    """Merge the bucket manifests into ``viewset_shards/manifest.json`` (``run_manifest``)."""
    from pipelines.stages.shards import run_manifest

    return run_manifest(root, params, buckets, stage=MERGE, upstream=SHARDS, shard_dir=SHARD_DIR,
                        section=SHARDS)


def run_viewset_graph(root: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Dagster-free: every viewset stage over every bucket (tests, benchmark, scripts).
    Returns ``{stage: report or {bucket: report}}``. Raises RuntimeError on a failed bucket."""
    from pipelines.params_schema import effective_num_buckets
    from pipelines.stages.common import run_partitioned

    n = effective_num_buckets(params)
    out: dict[str, Any] = {LISTING: run_viewset_sources(root, {**params, "num_buckets": n})}
    for stage, runner in ((STAGE, "run_viewsets_bucket"), (SHARDS, "run_viewset_shards_bucket")):
        if stage == SHARDS:
            from pipelines.stages.shards import guard_shrink

            guard_shrink(root, params, bucket_ids(n), bucket_ids(n), source=STAGE, shard_dir=SHARDS, section=SHARDS)
        oc = run_partitioned(stage, root, params, bucket_ids(n), runner=f"{__name__}:{runner}")
        bad = [o for o in oc if o.error]
        if bad:
            raise RuntimeError(f"{stage}: " + "; ".join(f"bucket {o.bucket}: {o.error}" for o in bad))
        out[stage] = {o.bucket: o.report for o in oc}
    out[MERGE] = run_viewset_manifest(root, params, bucket_ids(n))
    return out
