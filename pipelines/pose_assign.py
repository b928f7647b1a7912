"""Assign new images to the poses of a fitted :class:`pipelines.pose_clustering.PoseClustering`
without refitting (what keeps pose labels, and so shards, stable when images are added)."""
from __future__ import annotations

import numpy as np

from pipelines.pose_clustering import PoseClustering, describe


def assign_poses(model: PoseClustering, patch: np.ndarray, *, location_weight: float = 1.0,
                 visibility_threshold: float = 0.02, location_frame: str = "object",
                 outlier_distance: float = np.inf) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Poses of new images under a fitted model, without refitting (MIRAGE step 3 + nearest
    pose centroid): tokens are labelled with the model's part centroids (and its PCA
    foreground test), described with :func:`describe`, and assigned to the nearest centroid.

    Args:
        model: a fitted :class:`PoseClustering` (its part_centroids, pca_mean/component, centroids).
        patch: DINOv2 patch tokens [n, h, w, C] (any float dtype).
        outlier_distance: squared distance above which an image is an outlier (the fit's
            ``outlier_percentile`` threshold).

    Returns:
        (labels int64 [n], distances float32 [n], is_outlier bool [n]). The labels equal
        those of the fit for the images it saw (same labelling rule), so adding images never
        relabels the old ones.
    """
    n, h, w, c = patch.shape
    pc = np.asarray(model.part_centroids, np.float32)
    p = len(pc)
    t = np.asarray(patch, np.float32).reshape(-1, c)
    lab = np.argmax(t @ pc.T, axis=1).astype(np.int16)
    if model.pca_component is not None:
        comp = np.asarray(model.pca_component, np.float32)
        offset = float(np.asarray(model.pca_mean, np.float32) @ comp)
        fg = t @ comp > offset * np.sqrt(np.einsum("ij,ij->i", t, t))
        lab[~fg] = -1
    d = describe(lab.reshape(n, h, w), p, location_weight=location_weight,
                 visibility_threshold=visibility_threshold, location_frame=location_frame)
    cent = np.asarray(model.centroids, np.float32)
    dist = ((d[:, None, :] - cent[None]) ** 2).sum(-1)
    labels = dist.argmin(1)
    best = dist[np.arange(n), labels].astype(np.float32)
    return labels.astype(np.int64), best, best > outlier_distance
