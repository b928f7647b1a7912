"""Reporting on a pose clustering: FAISS index file, silhouette score, montage preview.

Follows MIRAGE (arXiv 2312.04337) section 3 for what is reported; scikit-learn for the
silhouette, faiss for the index, Pillow for the montage.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Callable

import faiss
import numpy as np

from pipelines.pose_clustering import PoseClustering
from pipelines.storage import atomic_path


def save_index(result: PoseClustering, path: str | Path) -> Path:
    """Write the pose centroids as a ``faiss.IndexFlatL2`` file, atomically (temp + os.replace).

    ``faiss.read_index(path).search(descriptors, 1)`` then assigns new images to poses.
    """
    index = faiss.IndexFlatL2(result.centroids.shape[1])
    index.add(np.ascontiguousarray(result.centroids, dtype=np.float32))
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))
    return Path(path)


def silhouette(result: PoseClustering, *, sample_size: int = 10_000, seed: int = 0) -> float:
    """Silhouette score (sklearn, Euclidean) of the descriptors, in [-1, 1].

    Computed on a seeded random subset of ``sample_size`` images when N is larger; NaN
    when there are fewer than 2 poses or fewer images than poses + 1.
    """
    from sklearn.metrics import silhouette_score
    n, k = len(result.labels), len(np.unique(result.labels))
    if k < 2 or n <= k:
        return float("nan")
    return float(silhouette_score(result.descriptors, result.labels, random_state=seed,
                                  sample_size=sample_size if n > sample_size else None))


def montage_members(labels: np.ndarray, order: np.ndarray, per_pose: int = 4,
                    distances: np.ndarray | None = None) -> np.ndarray:
    """Indices int64 [K, per_pose] (-1 = none) of the members shown per pose, rows in ``order``.

    The closest to the centroid when ``distances`` is given, else the first members.
    """
    labels = np.asarray(labels)
    rank = np.argsort(distances, kind="stable") if distances is not None else np.arange(len(labels))
    out = np.full((len(order), per_pose), -1, np.int64)
    for r, k in enumerate(order):
        m = rank[labels[rank] == k][:per_pose]
        out[r, :len(m)] = m
    return out


def montage(images: np.ndarray | Callable[[list[int]], np.ndarray], labels: np.ndarray, order: np.ndarray,
            per_pose: int = 4, *, distances: np.ndarray | None = None, tile: int = 96) -> bytes:
    """PNG bytes of a grid: one row per pose (in ``order``), ``per_pose`` members each,
    labelled with the pose id and its size.

    Args:
        images: uint8 [N, H, W, 3], or a callable that returns uint8 [M, H, W, 3] for a
            list of M indices (so only the shown members are read from disk).
        labels: int [N]; order: int [K] (see :class:`~pipelines.pose_clustering.PoseClustering`).
        distances: optional [N]; picks the members closest to their centroid.
        tile: side in pixels of each resized member (Pillow, LANCZOS).
    """
    from PIL import Image, ImageDraw
    idx = montage_members(labels, order, per_pose, distances)
    shown = sorted({int(i) for i in idx.ravel() if i >= 0})
    loaded = images(shown) if callable(images) else np.asarray(images)[shown]
    by_index = dict(zip(shown, loaded))
    pad, lab = 2, 64
    sheet = Image.new("RGB", (lab + per_pose * (tile + pad), max(1, len(order)) * (tile + pad)), (40, 40, 40))
    draw = ImageDraw.Draw(sheet)
    counts = np.bincount(np.asarray(labels), minlength=max(order, default=0) + 1)
    for r, k in enumerate(order):
        draw.text((4, r * (tile + pad) + tile // 2 - 6), f"pose {k}\n({counts[k]})", fill=(230, 230, 230))
        for c, i in enumerate(idx[r]):
            if i >= 0:
                im = Image.fromarray(np.asarray(by_index[int(i)], np.uint8)).resize((tile, tile), Image.LANCZOS)
                sheet.paste(im, (lab + c * (tile + pad), r * (tile + pad)))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()
