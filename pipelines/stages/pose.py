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

import numpy as np
import pyarrow as pa

from pipelines.config import stage_version
from pipelines.images import load_images
from pipelines.stages.common import StageReport, Timer, open_input
from pipelines.stages.features import iter_feature_chunks
from pipelines.stages.specs import STAGES
from pipelines.storage import write_bytes_atomic, write_index, write_json_atomic, writer_lock
from pipelines.versions import POSE as CODE_VERSION

STAGE = "pose_clusters"
LABEL_SCHEMA = pa.schema([("key", pa.string()), ("pose", pa.int32()), ("distance", pa.float32()),
                          ("is_outlier", pa.bool_())])


def run_pose(root: Any, params: dict[str, Any], buckets: list[str]) -> StageReport:
    """Cluster every featurised image of ``buckets`` (all buckets of the dataset) into poses.

    Raises:
        FileNotFoundError: a bucket of ``dinov2_features`` is not materialized.
        ValueError: fewer featurised images than ``pose.num_poses`` needs.
    """
    from pipelines.pose_clustering import cluster_poses_streaming
    from pipelines.pose_report import montage, save_index, silhouette

    feats = [open_input(root, "dinov2_features", b) for b in buckets]
    per_bucket = [sorted(f.keys) for f in feats]
    keys = [k for ks in per_bucket for k in ks]
    p = dict(params["pose"])
    seed = int(params.get("seed", 0))
    chunk = int(params.get("chunk_size", 256))
    out = f"{root}/{STAGE}"
    upstream = {"dinov2_features": stage_version("dinov2_features", "", {}, {f.bucket: f.info["data_version"]
                                                                              for f in feats})}

    def read_chunks():
        for f, ks in zip(feats, per_bucket):
            for _, d in iter_feature_chunks(f.store, ks, chunk):
                yield d["patch"], d["flipped_patch"], None

    with writer_lock(root, STAGE), Timer() as t:
        res = cluster_poses_streaming(
            read_chunks, num_parts=int(p["num_parts"]), num_poses=int(p["num_poses"]), seed=seed,
            max_points=int(p["max_points"]), location_weight=float(p["location_weight"]),
            visibility_threshold=float(p["visibility_threshold"]),
            outlier_percentile=float(p["outlier_percentile"]), all_foreground=bool(p["all_foreground"]),
            restarts=int(p["restarts"]), niter=int(p.get("niter", 25)),
            location_frame=str(p.get("location_frame", "object")), num_threads=p.get("num_threads"))
        k = int(res.centroids.shape[0])
        save_index(res, f"{out}/centroids.faiss")
        sizes = np.bincount(res.labels, minlength=k).tolist()
        sil = silhouette(res) if 1 < k < len(keys) else None
        summary = {"num_poses_requested": int(p["num_poses"]), "num_poses_used": k, "cluster_sizes": sizes,
                   "mirror_of": [int(x) for x in res.mirror_of], "order": [int(x) for x in res.order],
                   "silhouette": sil, "outliers": int(np.sum(res.is_outlier))}
        write_json_atomic(f"{out}/summary.json", summary)
        version = stage_version(STAGE, CODE_VERSION, {**p, "seed": seed}, upstream)
        info = {"stage": STAGE, "version": version, "code_version": CODE_VERSION, "params": p, "seed": seed,
                "num_poses_used": k, "upstream": upstream}
        labels = res.labels.astype(np.int32)
        dist = np.asarray(res.distances, np.float32)
        outl = np.asarray(res.is_outlier, bool)
        start, dvs = 0, {}
        for f, ks in zip(feats, per_bucket):
            sl = slice(start, start + len(ks))
            start += len(ks)
            table = pa.table({"key": pa.array(ks, pa.string()), "pose": pa.array(labels[sl]),
                              "distance": pa.array(dist[sl]), "is_outlier": pa.array(outl[sl])},
                             schema=LABEL_SCHEMA)
            dvs[f.bucket] = write_index(root, STAGE, table, info, bucket=f.bucket)
        dv = write_index(root, STAGE, pa.table({"bucket": list(dvs), "data_version": list(dvs.values())}),
                         {**info, "buckets": list(dvs)})
    img_inputs = {f.bucket: open_input(root, "source_images", f.bucket) for f in feats}
    bucket_of_index = [f.bucket for f, ks in zip(feats, per_bucket) for _ in ks]

    def load(idx):
        return np.stack([load_images(img_inputs[bucket_of_index[i]].store, [keys[i]])[0] for i in idx])

    png = montage(load, res.labels, res.order, per_pose=4, distances=res.distances)
    write_bytes_atomic(f"{out}/montage.png", png)
    return StageReport(STAGE, version, dv, computed=len(keys), seconds=t.seconds, previews={"poses": png},
                       metadata={**{k_: v for k_, v in summary.items() if k_ != "order"},
                                 "weights": feats[0].info.get("weights_origin") if feats else None,
                                 "samples": len(keys)})


__all__ = ["run_pose", "STAGE", "STAGES"]
