"""Runner of the ``pose_clusters`` stage (see :mod:`pipelines.pose_clustering`).

The one global step: features are read chunk by chunk (twice: a subsample pass, then a
descriptor pass); only the [N, D] descriptors are held in memory.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines.config import stage_version
from pipelines.images import load_images
from pipelines.stages.common import StageReport, Timer
from pipelines.stages.features import iter_feature_chunks, open_features
from pipelines.stages.ingest import open_images
from pipelines.storage import write_bytes_atomic, write_index, write_json_atomic
from pipelines.versions import POSE as CODE_VERSION

STAGE = "pose_clusters"


def run_pose(root: Path, params: dict[str, Any]) -> StageReport:
    """Cluster every featurised image into poses; writes ``pose_clusters/index.parquet``
    (key, pose, distance, is_outlier), ``centroids.faiss``, ``summary.json`` and a montage."""
    from pipelines.pose_clustering import cluster_poses_streaming
    from pipelines.pose_report import montage, save_index, silhouette

    keys, fstore, finfo = open_features(root)
    p = dict(params["pose"])
    seed = int(params.get("seed", 0))
    chunk = int(params.get("chunk_size", 256))
    out = Path(root) / STAGE

    def read_chunks():
        for _, f in iter_feature_chunks(fstore, keys, chunk):
            yield f["patch"], f["flipped_patch"], None

    with Timer() as t:
        res = cluster_poses_streaming(
            read_chunks, num_parts=int(p["num_parts"]), num_poses=int(p["num_poses"]), seed=seed,
            max_points=int(p["max_points"]), location_weight=float(p["location_weight"]),
            visibility_threshold=float(p["visibility_threshold"]),
            outlier_percentile=float(p["outlier_percentile"]), all_foreground=bool(p["all_foreground"]),
            restarts=int(p["restarts"]), niter=int(p.get("niter", 25)),
            location_frame=str(p.get("location_frame", "object")), num_threads=p.get("num_threads"))
        k = int(res.centroids.shape[0])
        save_index(res, out / "centroids.faiss")
        sizes = np.bincount(res.labels, minlength=k).tolist()
        sil = silhouette(res) if 1 < k < len(keys) else None
        summary = {"num_poses_requested": int(p["num_poses"]), "num_poses_used": k, "cluster_sizes": sizes,
                   "mirror_of": [int(x) for x in res.mirror_of], "order": [int(x) for x in res.order],
                   "silhouette": sil, "outliers": int(np.sum(res.is_outlier))}
        write_json_atomic(out / "summary.json", summary)
        index = pa.table({"key": pa.array(keys, pa.string()), "pose": pa.array(res.labels.astype(np.int32)),
                          "distance": pa.array(np.asarray(res.distances, np.float32)),
                          "is_outlier": pa.array(np.asarray(res.is_outlier, bool))})
        info = {"stage": STAGE, "version": stage_version(STAGE, CODE_VERSION, {**p, "seed": seed},
                                                         {"dinov2_features": finfo["version"]}),
                "code_version": CODE_VERSION, "params": p, "seed": seed, "num_poses_used": k,
                "upstream": {"dinov2_features": finfo["version"]}}
        dv = write_index(root, STAGE, index, info)
    _, img_store, _ = open_images(root)
    png = montage(lambda idx: load_images(img_store, [keys[i] for i in idx]), res.labels, res.order,
                  per_pose=4, distances=res.distances)
    write_bytes_atomic(out / "montage.png", png)
    previews = {"poses": png}
    return StageReport(STAGE, info["version"], dv, computed=len(keys), seconds=t.seconds, previews=previews,
                       metadata={**{k_: v for k_, v in summary.items() if k_ != "order"},
                                 "weights": finfo.get("weights_origin"), "samples": len(keys)})
