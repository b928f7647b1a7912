"""Runner of the ``pose_clusters`` stage (see :mod:`pipelines.pose_clustering`).

The one global step, as a map / reduce over buckets: features are streamed bucket by bucket
in global key order (buckets in order, keys sorted inside each), so the token sample that
fits the parts, the descriptors and the k-means see the same sequence whatever the bucket
count or engine; only the [N, D] descriptors are held in memory. Labels are written per
bucket (``pose_clusters/bucket=<b>/index.parquet``) for the per-bucket shard writers, plus
``index.parquet`` (per-bucket summary), ``centroids.faiss``, ``summary.json`` and a montage.
"""
from __future__ import annotations

from typing import Any

import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import stable_hash, stage_version
from pipelines.images import load_images
from pipelines.stages.common import StageReport, Timer, open_input
from pipelines.stages.features import iter_feature_chunks
from pipelines.stages.specs import STAGES
from pipelines.stages.common import result_params
from pipelines.storage import (exists, read_bytes, read_index, write_bytes_atomic, write_index, write_json_atomic,
                               writer_lock)
from pipelines.versions import POSE as CODE_VERSION

STAGE = "pose_clusters"
LABEL_SCHEMA = pa.schema([("key", pa.string()), ("pose", pa.int32()), ("distance", pa.float32()),
                          ("is_outlier", pa.bool_())])


def _fit_info(root: Any) -> dict[str, Any]:
    try:
        return read_index(root, STAGE)[1]
    except FileNotFoundError:
        return {}


def run_pose(root: Any, params: dict[str, Any], buckets: list[str]) -> StageReport:
    """Cluster every featurised image of ``buckets`` (all buckets of the dataset) into poses.

    The fit (part centroids, pose centroids, outlier threshold) is kept in ``model.npz``;
    while its version (code, pose parameters, seed, feature versions) is unchanged, new
    images are *assigned* to the fitted poses (:func:`pipelines.pose_clustering.assign_poses`)
    and the labels of known images are kept, so adding images rewrites only the label files
    (and so the shards) of the buckets that received them. A changed version refits all.

    Raises:
        FileNotFoundError: a bucket of ``dinov2_features`` is not materialized.
        ValueError: no featurised image.
    """
    feats = [open_input(root, "dinov2_features", b) for b in buckets]
    per_bucket = [sorted(f.keys) for f in feats]
    seed = int(params.get("seed", 0))
    fit_version = stage_version(STAGE, CODE_VERSION, {**result_params(params, "pose"), "seed": seed},
                                {"dinov2_features": stable_hash(sorted({f.version for f in feats}))})
    with writer_lock(root, STAGE), Timer() as t:
        if _fit_info(root).get("version") == fit_version and exists(f"{root}/{STAGE}/model.npz"):
            report = _assign_new(root, params, feats, per_bucket, fit_version)
        else:
            report = _fit(root, params, feats, per_bucket, fit_version)
    report.seconds = t.seconds
    return report


def _label_kw(p: dict[str, Any]) -> dict[str, Any]:
    return dict(location_weight=float(p["location_weight"]), visibility_threshold=float(p["visibility_threshold"]),
                location_frame=str(p.get("location_frame", "object")))


def _assign_new(root, params, feats, per_bucket, fit_version) -> StageReport:
    from pipelines.pose_assign import assign_poses
    from pipelines.pose_clustering import PoseClustering

    m = dict(np.load(io.BytesIO(read_bytes(f"{root}/{STAGE}/model.npz"))))
    model = PoseClustering(**{k: None for k in PoseClustering.__dataclass_fields__ if k not in (
        "warnings", "timings")} | {"part_centroids": m["part_centroids"], "centroids": m["centroids"],
                                   "pca_mean": m.get("pca_mean"), "pca_component": m.get("pca_component")})
    info = _fit_info(root)
    p, chunk = params["pose"], int(params.get("chunk_size", 256))
    assigned, dvs = 0, {}
    for f, ks in zip(feats, per_bucket):
        try:
            old, _ = read_index(root, STAGE, f.bucket)
            old = old.filter(pc.is_in(old.column("key"), value_set=pa.array(ks, pa.string())))
        except FileNotFoundError:
            old = LABEL_SCHEMA.empty_table()
        have = set(old.column("key").to_pylist())
        new = [k for k in ks if k not in have]
        parts = [old]
        for keys, d in iter_feature_chunks(f.store, new, chunk):
            lab, dist, out = assign_poses(model, d["patch"], outlier_distance=float(m["outlier_distance"]),
                                          **_label_kw(p))
            parts.append(pa.table({"key": pa.array(keys, pa.string()), "pose": pa.array(lab.astype(np.int32)),
                                   "distance": pa.array(dist), "is_outlier": pa.array(out)}, schema=LABEL_SCHEMA))
            assigned += len(keys)
        table = pa.concat_tables(parts).sort_by("key")
        dvs[f.bucket] = write_index(root, STAGE, table, {k: v for k, v in info.items() if k != "buckets"},
                                    bucket=f.bucket)
    n = sum(len(ks) for ks in per_bucket)
    return StageReport(STAGE, fit_version, stable_hash(dvs, 24), computed=assigned, reused=n - assigned,
                       metadata={"refit": False, "assigned_to_existing_poses": assigned, "samples": n,
                                 "num_poses_used": info.get("num_poses_used")})


def _fit(root, params, feats, per_bucket, fit_version) -> StageReport:
    from pipelines.pose_clustering import cluster_poses_streaming
    from pipelines.pose_report import montage, save_index, silhouette

    keys = [k for ks in per_bucket for k in ks]
    p = dict(params["pose"])
    seed = int(params.get("seed", 0))
    chunk = int(params.get("chunk_size", 256))
    out = f"{root}/{STAGE}"

    def read_chunks():
        for f, ks in zip(feats, per_bucket):
            for _, d in iter_feature_chunks(f.store, ks, chunk):
                yield d["patch"], d["flipped_patch"], None

    res = cluster_poses_streaming(
        read_chunks, num_parts=int(p["num_parts"]), num_poses=int(p["num_poses"]), seed=seed,
        max_points=int(p["max_points"]), outlier_percentile=float(p["outlier_percentile"]),
        all_foreground=bool(p["all_foreground"]), restarts=int(p["restarts"]), niter=int(p.get("niter", 25)),
        num_threads=p.get("num_threads"), keep_part_labels=False, **_label_kw(p))
    k = int(res.centroids.shape[0])
    save_index(res, f"{out}/centroids.faiss")
    pct = float(p["outlier_percentile"])
    buf = io.BytesIO()
    np.savez(buf, part_centroids=res.part_centroids, centroids=res.centroids,
             outlier_distance=np.float64(np.percentile(res.distances, pct) if pct < 100 else np.inf),
             **({"pca_mean": res.pca_mean, "pca_component": res.pca_component} if res.pca_mean is not None else {}))
    write_bytes_atomic(f"{out}/model.npz", buf.getvalue())
    sizes = np.bincount(res.labels, minlength=k).tolist()
    sil = silhouette(res) if 1 < k < len(keys) else None
    summary = {"num_poses_requested": int(p["num_poses"]), "num_poses_used": k, "cluster_sizes": sizes,
               "mirror_of": [int(x) for x in res.mirror_of], "order": [int(x) for x in res.order],
               "silhouette": sil, "outliers": int(np.sum(res.is_outlier))}
    write_json_atomic(f"{out}/summary.json", summary)
    info = {"stage": STAGE, "version": fit_version, "code_version": CODE_VERSION, "params": p, "seed": seed,
            "num_poses_used": k}
    labels, dist = res.labels.astype(np.int32), np.asarray(res.distances, np.float32)
    outl = np.asarray(res.is_outlier, bool)
    start, dvs = 0, {}
    for f, ks in zip(feats, per_bucket):
        sl = slice(start, start + len(ks))
        start += len(ks)
        table = pa.table({"key": pa.array(ks, pa.string()), "pose": pa.array(labels[sl]),
                          "distance": pa.array(dist[sl]), "is_outlier": pa.array(outl[sl])}, schema=LABEL_SCHEMA)
        dvs[f.bucket] = write_index(root, STAGE, table, info, bucket=f.bucket)
    dv = write_index(root, STAGE, pa.table({"bucket": list(dvs), "data_version": list(dvs.values())}),
                     {**info, "buckets": list(dvs)})
    img_inputs = {f.bucket: open_input(root, "source_images", f.bucket) for f in feats}
    bucket_of_index = [f.bucket for f, ks in zip(feats, per_bucket) for _ in ks]

    def load(idx):
        return np.stack([load_images(img_inputs[bucket_of_index[i]].store, [keys[i]])[0] for i in idx])

    png = montage(load, res.labels, res.order, per_pose=4, distances=res.distances)
    write_bytes_atomic(f"{out}/montage.png", png)
    return StageReport(STAGE, fit_version, dv, computed=len(keys), previews={"poses": png},
                       metadata={**{k_: v for k_, v in summary.items() if k_ != "order"}, "refit": True,
                                 "weights": feats[0].info.get("weights_origin") if feats else None,
                                 "samples": len(keys)})


__all__ = ["run_pose", "STAGE", "STAGES"]
