"""Runners of ``training_shards`` (per bucket) and ``shard_manifest`` (the merge).

Layout under ``<root>/shards``::

    bucket=<b>/{split}-{index:06d}.tar   the bucket's own deterministic shard sequences
    bucket=<b>/manifest.json             the bucket's manifest (pipelines.shards.write_shards)
    manifest.json                        merged: every bucket's shards, names prefixed bucket=<b>/

A change in one bucket rewrites only that bucket's shards (the others keep their bytes and
mtimes), so DVC stores and pushes only those. ``manifest.json`` is what training reads
(``training.data.make_dataset``), ``pipelines.shard_manifest.verify`` checks, and stock
``webdataset`` can read through the listed paths.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Iterator

import pipelines.versions as V
from pipelines.images import decode_png, load_images
from pipelines.sample_schema import IVID_PAIR
from pipelines.shards import combine_content_digests
from pipelines.shard_manifest import MANIFEST_NAME, MANIFEST_SCHEMA_VERSION, manifest_digest, split_totals
from pipelines.stages.common import BucketContext, StageReport, Timer, chunked, result_params
from pipelines.storage import exists, read_bytes, write_json_atomic, writer_lock
from pipelines.config import stable_hash

STAGE = "training_shards"
MERGE = "shard_manifest"
SHARD_DIR = "shards"
CODE_VERSIONS = {"images": V.IMAGES, "depth": V.DEPTH, "warp": V.WARP, "features": V.FEATURES,
                 "pose": V.POSE, "shards": V.SHARDS}


class ShrinkRefused(RuntimeError):
    """The new shard set lost more samples than ``shards.min_kept_fraction`` allows."""


def run_shards_bucket(ctx: BucketContext) -> StageReport:
    """Write the bucket's pairs as WebDataset shards under ``shards/bucket=<b>/``.

    The bucket's dataset version hashes every pair key with the versions of the stages that
    made them and the shard parameters; when the bucket manifest already has this version
    and verifies, nothing is rewritten (reported as reused). User splits (manifest sources)
    win over hash splits; ``meta.json`` records which rule assigned the split.
    """
    from pipelines.shard_manifest import verify
    from pipelines.shards import write_shards

    sp = result_params(ctx.params, "shards")        # guards (min_kept_fraction, allow_shrink) excluded
    imgs, dep, warp, pose = (ctx.inputs[s] for s in ("source_images", "depth_maps", "warp_pairs", "pose_clusters"))
    out = f"{ctx.root}/{SHARD_DIR}/bucket={ctx.bucket}"
    pt = pose.table
    poses = {k: (int(p), bool(o)) for k, p, o in zip(pt.column("key").to_pylist(), pt.column("pose").to_pylist(),
                                                      pt.column("is_outlier").to_pylist())}
    src = {c: imgs.table.column(c).to_pylist() for c in ("key", "source_path", "label", "split")}
    path_of = dict(zip(src["key"], src["source_path"]))
    label_of = dict(zip(src["key"], src["label"]))
    split_of_key = dict(zip(src["key"], src["split"]))
    labels = list(ctx.inputs["source_listing"].info.get("labels") or [])
    label_ids = {name: i for i, name in enumerate(labels)}
    versions = {"source_images": imgs.version, "depth_maps": dep.version, "warp_pairs": warp.version,
                "pose_clusters": pose.version}
    params_hash = stable_hash({"versions": versions, "shards": sp})
    keys = sorted(warp.table.column("key").to_pylist())
    h = hashlib.sha256(json.dumps({"versions": versions, "code": CODE_VERSIONS, "shards": sp, "labels": labels,
                                   "poses": pose.info.get("data_version")}, sort_keys=True).encode())
    for k in keys:
        h.update(k.encode() + b"\n")
    dataset_version = h.hexdigest()[:16]
    sample_keys = sorted(set(warp.table.column("sample_key").to_pylist()))

    def generate() -> Iterator[dict]:
        for chunk in chunked(sample_keys, int(ctx.params.get("chunk_size", 256))):
            chunk = list(chunk)
            rows = warp.store.read(chunk)
            images = dict(zip(chunk, load_images(imgs.store, chunk)))
            drows = dep.store.read(chunk, columns=["depth_png"])
            depths = {k: decode_png(b) for k, b in zip(drows.column("key").to_pylist(),
                                                       drows.column("depth_png").to_pylist())}
            cols = {n: rows.column(n).to_pylist() for n in rows.column_names}
            for i in sorted(range(rows.num_rows), key=lambda i: cols["key"][i]):
                sk = cols["sample_key"][i]
                pose_id, outlier = poses.get(sk, (-1, False))
                label, user_split = label_of.get(sk), split_of_key.get(sk)
                yield {"key": cols["key"][i], "sample_key": sk, "split": user_split,
                       "target": images[sk], "target_depth": depths[sk],
                       "cond": decode_png(cols["cond_png"][i]), "cond_depth": decode_png(cols["cond_depth_png"][i]),
                       "mask": decode_png(cols["mask_png"][i]) > 127,
                       "mask_rgb": decode_png(cols["mask_rgb_png"][i]) > 127,
                       "camera": json.loads(cols["camera_json"][i]), "pose": pose_id,
                       "label": label_ids.get(label) if label is not None else None,
                       "meta": {"source_path": path_of.get(sk), "sample_key": sk, "view": cols["view"][i],
                                "pose_outlier": outlier, "label_name": label, "code_versions": CODE_VERSIONS,
                                "params_hash": params_hash, "split_rule": "user" if user_split else "hash"}}

    manifest_path = f"{out}/{MANIFEST_NAME}"
    reused = False
    if exists(manifest_path):
        old = json.loads(read_bytes(manifest_path))
        reused = old.get("dataset_version") == dataset_version and verify(out).ok
    if reused:
        manifest = old
    else:
        manifest = write_shards(generate(), out, fractions=dict(sp["split_fractions"]), maxcount=int(sp["maxcount"]),
                                maxsize=float(sp["maxsize"]), dataset_version=dataset_version,
                                extra={"stage_versions": versions, "code_versions": CODE_VERSIONS, "labels": labels,
                                       "bucket": ctx.bucket,
                                       "views_per_image": warp.info.get("params", {}).get("views_per_image")})
    n = sum(s["count"] for s in manifest["shards"])
    return StageReport(STAGE, dataset_version, manifest["digest"][:24], computed=0 if reused else n,
                       reused=n if reused else 0,
                       metadata={"dataset_version": dataset_version, "samples": n, "shards": len(manifest["shards"]),
                                 "bytes": sum(s["bytes"] for s in manifest["shards"])})


def _published_total(merged_path: str) -> int:
    return sum(s["count"] for s in json.loads(read_bytes(merged_path)).get("shards", [])) if exists(merged_path) else 0


def _refuse_shrink(total: int, old_total: int, sp: dict[str, Any], section: str) -> None:
    kept = float(sp.get("min_kept_fraction", 0.5))
    if old_total and total < kept * old_total and not sp.get("allow_shrink", False):
        raise ShrinkRefused(
            f"refusing to publish {total} samples in place of the current {old_total} (less than "
            f"{section}.min_kept_fraction={kept}); check upstream failures and parameters, or set "
            f"{section}.allow_shrink: true to publish it anyway")


def guard_shrink(root: Any, params: dict[str, Any], run_buckets: list[str], all_buckets: list[str], *,
                 source: str = "warp_pairs", shard_dir: str = SHARD_DIR, section: str = "shards") -> None:
    """Refuse a shard run *before any bucket's shards are rewritten* when the set it would
    publish lost more than ``<section>.min_kept_fraction`` of the published samples.

    The projected total counts, for the buckets of this run, the rows of their ``source``
    index (one row = one shard sample: a pair, or a viewset), and for the other buckets their
    current bucket manifests. Raises :class:`ShrinkRefused` unless ``<section>.allow_shrink``.
    """
    from pipelines.storage import read_index

    old_total = _published_total(f"{root}/{shard_dir}/{MANIFEST_NAME}")
    if not old_total:
        return
    run = set(run_buckets)
    total = 0
    for b in all_buckets:
        if b in run:
            try:
                total += read_index(root, source, b)[0].num_rows
            except FileNotFoundError:
                pass
        else:
            path = f"{root}/{shard_dir}/bucket={b}/{MANIFEST_NAME}"
            total += sum(s["count"] for s in json.loads(read_bytes(path))["shards"]) if exists(path) else 0
    _refuse_shrink(total, old_total, params[section], section)


def run_manifest(root: Any, params: dict[str, Any], buckets: list[str], *, stage: str = MERGE,
                 upstream: str = STAGE, shard_dir: str = SHARD_DIR, section: str = "shards") -> StageReport:
    """Merge the bucket manifests of ``buckets`` into ``<shard_dir>/manifest.json``.

    Refuses (``ShrinkRefused``) to publish a set that lost more than
    ``<section>.min_kept_fraction`` of the current manifest's samples unless
    ``<section>.allow_shrink`` is true: a bad parameter must not silently publish an empty set.
    Defaults: the IVID pairs (``training_shards`` -> ``shards/manifest.json``, params
    ``shards``); the viewsets call it with ``stage="viewset_manifest"``,
    ``upstream="viewset_shards"``, ``shard_dir="viewset_shards"``, ``section="viewset_shards"``.

    Raises:
        FileNotFoundError: a bucket of ``upstream`` is not materialized.
        ShrinkRefused: see above.
    """
    sp = params[section]
    out = f"{root}/{shard_dir}"
    with writer_lock(root, stage), Timer() as t:
        shards, versions, contents, labels, extra = [], [], [], [], {}
        sample_schema = IVID_PAIR.name
        for b in buckets:
            path = f"{out}/bucket={b}/{MANIFEST_NAME}"
            if not exists(path):
                raise FileNotFoundError(f"{path} not found: materialize {upstream} bucket {b} first")
            m = json.loads(read_bytes(path))
            shards += [{**s, "name": f"bucket={b}/{s['name']}"} for s in m["shards"]]
            versions.append(m["dataset_version"])
            contents.append(m["content_digest"])
            labels = labels or m.get("extra", {}).get("labels", [])
            sample_schema = m["sample_schema"]
            extra = extra or {k: v for k, v in m.get("extra", {}).items() if k != "bucket"}
        splits = sorted(sp["split_fractions"])
        total = sum(s["count"] for s in shards)
        merged_path = f"{out}/{MANIFEST_NAME}"
        _refuse_shrink(total, _published_total(merged_path), sp, section)
        manifest = {"schema_version": MANIFEST_SCHEMA_VERSION, "sample_schema": sample_schema,
                    "dataset_version": stable_hash({"buckets": buckets, "versions": versions}),
                    "params": {"fractions": dict(sp["split_fractions"]), "maxcount": sp["maxcount"],
                               "maxsize": sp["maxsize"]},
                    "shards": shards, "splits": split_totals(shards, splits), "digest": manifest_digest(shards),
                    "content_digest": combine_content_digests(contents), "num_buckets": len(buckets), "extra": {**extra, "labels": labels}}
        write_json_atomic(merged_path, manifest)
    return StageReport(stage, manifest["dataset_version"], manifest["digest"][:24], computed=total,
                       seconds=t.seconds,
                       metadata={"dataset_version": manifest["dataset_version"], "samples": total,
                                 "shards": len(shards), "manifest": merged_path,
                                 "splits": {s: v["count"] for s, v in manifest["splits"].items()},
                                 "bytes": sum(s["bytes"] for s in shards)})
