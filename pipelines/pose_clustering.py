"""Unsupervised part discovery and pose clustering (MIRAGE, arXiv 2312.04337, Sec. 3.1).

MIRAGE finds discrete object poses "by comparing visibility and locations of specific
object parts" found with DINOv2. Its code is not public; this follows its description and
the DINO part-discovery recipe of Amir et al. 2021 ("Deep ViT Features as Dense Visual
Descriptors": L2-normalised tokens, k-means on a subsample, foreground by saliency):

1. Foreground: given, everything (``all_foreground``), or the first PCA component of the
   tokens (sklearn PCA on a token sample) thresholded at 0, its sign chosen so that the
   foreground sits near the image centre (mean component inside radius 0.5 of the
   normalised image exceeds the mean outside; on a near tie, the minority side).
2. Parts: spherical ``faiss.Kmeans`` (best of ``restarts`` runs from sklearn k-means++ seeds,
   fixed seed, GPU with faiss-gpu) on the foreground tokens of a uniform sample of at most
   ``max_points`` tokens; every token is then assigned to its most similar part.
3. Descriptor of an image, D = 3P: ``[v_1..v_P, w v_1 x_1, w v_1 y_1, ..., w v_P x_P, w v_P y_P]``,
   v_p the share of the image's foreground patches in part p, (x_p, y_p) the mean patch
   centre (x right, y down; 0 where v_p < ``visibility_threshold``), normalised by default
   to the object (foreground centroid and RMS radius; ``location_frame="image"``: [-1, 1]).
   On the test set (4 seeds x P in {6, 8, 10}) mean NMI: object 0.81, image 0.72.
4. Poses: faiss k-means (L2) on descriptors; ``mirror_of[k]`` = the pose most often nearest
   to the flipped-image descriptors of pose k's members; ``order`` = shortest cycle through
   the centroids (exact Held-Karp for <= 12 poses, else nearest neighbour + 2-opt);
   outliers = distance above the ``outlier_percentile`` of all distances.

Features may not fit in memory: :func:`cluster_poses_streaming` reads them twice, chunk by
chunk, and keeps only the token sample, [N, D] descriptors and [N, h, w] int8 part labels.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import faiss
import numpy as np


Chunk = tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]
"""(patch [n, h, w, C] float, flipped patch [n, h, w, C] or None, foreground bool [n, h, w] or None)."""


@dataclass
class PoseClustering:
    """Result of :func:`cluster_poses` for N images, P parts, K poses, D = 3P.

    labels int64 [N] pose id in [0, K); distances float32 [N] squared L2 descriptor
    distance to its pose centroid; part_labels int8 (int16 when P > 127) [N, h, w], -1 =
    background; descriptors float32 [N, D]; centroids float32 [K, D]; mirror_of int64 [K];
    mirror_votes int64 [K, K] (row k: how often pose k's flipped members fall in each pose);
    order int64 [K] poses along the cycle, starting at 0; is_outlier bool [N]; sizes int64
    [K]; part_centroids float32 [P, C] unit vectors; pca_mean / pca_component float32 [C]
    (oriented so that foreground = (token - mean) . component > 0), None unless PCA was used.
    """
    labels: np.ndarray
    distances: np.ndarray
    part_labels: np.ndarray
    descriptors: np.ndarray
    centroids: np.ndarray
    mirror_of: np.ndarray
    mirror_votes: np.ndarray
    order: np.ndarray
    is_outlier: np.ndarray
    sizes: np.ndarray
    part_centroids: np.ndarray
    pca_mean: np.ndarray | None
    pca_component: np.ndarray | None
    num_poses_requested: int
    foreground_source: str   # "given" | "all" | "pca"
    mirror_source: str       # "flipped_features" | "descriptor_mirror" (x negated, parts assumed flip-invariant)
    foreground_fraction: float
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def num_poses(self) -> int:
        return len(self.centroids)


@contextlib.contextmanager
def _omp_threads(n: int | None):
    old = faiss.omp_get_max_threads()
    if n:
        faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(old)


def _use_gpu(use_gpu: bool | None) -> bool:
    ngpu = faiss.get_num_gpus()
    if use_gpu and not ngpu:
        raise ValueError("use_gpu=True but faiss sees no GPU (install faiss-gpu, extra `gpu`)")
    return bool(ngpu) if use_gpu is None else bool(use_gpu)


def _kmeans(x: np.ndarray, k: int, *, spherical: bool, seed: int, restarts: int, niter: int,
            max_points: int, gpu: bool) -> faiss.Kmeans:
    """Best of ``restarts`` faiss k-means runs on a seeded subsample of <= ``max_points`` rows.

    Each run starts from sklearn's greedy k-means++ (``kmeans_plusplus``, seed + run, on ~10k
    rows): faiss' own random or k-means++ init, even with ``nredo=5``, stayed in a local
    optimum (two clusters merged, one split) on 12 well-separated Gaussians; this does not.
    Best = lowest squared-L2 objective (highest summed cosine when ``spherical``).
    """
    from sklearn.cluster import kmeans_plusplus
    x = np.ascontiguousarray(x, dtype=np.float32)
    if len(x) > max_points:
        x = x[np.sort(np.random.default_rng(seed).choice(len(x), max_points, replace=False))]
    best, best_obj = None, None
    for r in range(restarts):
        init = kmeans_plusplus(x[:: max(1, len(x) // 10_000)].astype(np.float64), k, random_state=seed + r)[0]
        km = faiss.Kmeans(x.shape[1], k, niter=niter, nredo=1, spherical=spherical, seed=seed + r,
                          verbose=False, max_points_per_centroid=len(x) // k + 1,
                          min_points_per_centroid=1, gpu=gpu)
        km.train(x, init_centroids=np.ascontiguousarray(init, dtype=np.float32))
        obj = -km.obj[-1] if spherical else km.obj[-1]
        if best is None or obj < best_obj:
            best, best_obj = km, obj
    return best


def _grid_xy(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Patch centres in [-1, 1]: x [h*w] (right), y [h*w] (down)."""
    y, x = np.meshgrid((np.arange(h) + 0.5) / h * 2 - 1, (np.arange(w) + 0.5) / w * 2 - 1, indexing="ij")
    return x.ravel().astype(np.float32), y.ravel().astype(np.float32)


class _Sample:
    """Uniform token sample of fixed size, independent of chunking (bottom-k random keys)."""

    def __init__(self, size: int, seed: int):
        self.size, self.rng, self.thresh = size, np.random.default_rng(seed), np.inf
        self.keys, self.tok, self.pos = [np.empty(0)], [], [np.empty(0, np.int32)]

    def add(self, tokens: np.ndarray, keep: np.ndarray | None) -> None:
        n, h, w, c = tokens.shape
        keys = self.rng.random(n * h * w)  # drawn for every token, so chunking does not matter
        sel = keys < self.thresh if keep is None else (keys < self.thresh) & keep.ravel()
        idx = np.flatnonzero(sel)
        self.keys.append(keys[idx])
        self.tok.append(tokens.reshape(-1, c)[idx].astype(np.float16))
        self.pos.append((idx % (h * w)).astype(np.int32))
        if sum(map(len, self.keys)) > 2 * self.size:
            self._compact()

    def _compact(self) -> None:
        keys = np.concatenate(self.keys)
        keep = np.argsort(keys, kind="stable")[: self.size]
        tok = np.concatenate(self.tok)[keep]
        self.keys, self.tok, self.pos = [keys[keep]], [tok], [np.concatenate(self.pos)[keep]]
        if len(keep) == self.size:
            self.thresh = float(self.keys[0][-1])

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(tokens float16 [n, C], flat patch index int32 [n]) sorted by key."""
        self._compact()
        return self.tok[0], self.pos[0]


def _pca_foreground(tok: np.ndarray, pos: np.ndarray, h: int, w: int, seed: int):
    """First-PCA-component foreground (Amir et al. 2021), fit on <= ~50k unit tokens [n, C].

    Returns (mean [C], oriented unit component [C]); see the module docstring for the sign.
    """
    from sklearn.decomposition import PCA
    import sklearn
    solver = "covariance_eigh" if tuple(map(int, sklearn.__version__.split(".")[:2])) >= (1, 5) else "full"
    pca = PCA(n_components=1, svd_solver=solver).fit(tok[:: max(1, len(tok) // 50_000)])
    mean, comp = pca.mean_.astype(np.float32), pca.components_[0].astype(np.float32)
    proj = (tok - mean) @ comp
    x, y = _grid_xy(h, w)
    central = (x ** 2 + y ** 2)[pos] < 0.25
    diff = proj[central].mean() - proj[~central].mean() if central.any() and (~central).any() else 0.0
    if abs(diff) > 0.05 * proj.std():
        sign = 1.0 if diff > 0 else -1.0
    else:  # no centre preference: the minority is the object
        sign = 1.0 if (proj > 0).mean() <= 0.5 else -1.0
    return mean, sign * comp


def describe(part_labels: np.ndarray, num_parts: int, *, location_weight: float = 1.0,
             visibility_threshold: float = 0.02, location_frame: str = "object") -> np.ndarray:
    """Pose descriptors (step 3) from part labels int [n, h, w] (-1 = background).

    ``location_frame="object"``: (x_p, y_p) relative to the foreground centroid, divided by
    the foreground's RMS radius (invariant to the object's position and scale in the frame);
    ``"image"``: patch centres in [-1, 1] of the image. Returns float32 [n, 3 * num_parts];
    all zeros for an image without foreground. Raises ValueError for another frame.
    """
    if location_frame not in ("object", "image"):
        raise ValueError(f"location_frame must be 'object' or 'image', got {location_frame!r}")
    n, h, w = part_labels.shape
    x, y = _grid_xy(h, w)
    oh = (part_labels.reshape(n, h * w, 1) == np.arange(num_parts)).astype(np.float32)
    cnt = oh.sum(1)
    v = cnt / np.maximum(cnt.sum(1, keepdims=True), 1)
    cx, cy = (np.einsum("npk,p->nk", oh, c) / np.maximum(cnt, 1) for c in (x, y))
    if location_frame == "object":
        fg = oh.sum(2) / np.maximum(cnt.sum(1, keepdims=True), 1)  # [n, hw] weights summing to 1
        mx, my = fg @ x, fg @ y
        rms = np.sqrt(np.maximum(fg @ (x * x + y * y) - mx ** 2 - my ** 2, 0)) + 1e-6
        cx, cy = (cx - mx[:, None]) / rms[:, None], (cy - my[:, None]) / rms[:, None]
    vis = v >= visibility_threshold
    loc = np.stack([np.where(vis, cx, 0), np.where(vis, cy, 0)], -1) * (location_weight * v)[..., None]
    return np.concatenate([v, loc.reshape(n, -1)], 1).astype(np.float32)


def mirror_descriptors(descriptors: np.ndarray) -> np.ndarray:
    """Descriptors of mirrored images when parts are flip-invariant: every x_p negated."""
    d = descriptors.copy()
    p = d.shape[1] // 3
    d[:, p::2] *= -1
    return d


def cycle_order(centroids: np.ndarray) -> np.ndarray:
    """Shortest closed tour through the centroids (Euclidean), starting at 0, int64 [K].

    Exact Held-Karp dynamic programme for K <= 12, else nearest neighbour + 2-opt. The
    direction is canonical: order[1] < order[-1].
    """
    from scipy.spatial.distance import cdist
    k = len(centroids)
    if k <= 3:
        return np.arange(k)
    d = cdist(centroids, centroids)
    if k <= 12:
        full, bits, nodes = 1 << (k - 1), 1 << np.arange(k - 1), np.arange(1, k)  # subsets of 1..k-1
        dp, par = np.full((full, k), np.inf), np.zeros((full, k), np.int64)
        dp[bits, nodes] = d[0, 1:]
        for mask in range(1, full):  # dp[mask, j]: shortest path 0 -> (all of mask) ending at j
            js = nodes[(mask & bits) == 0]
            cand = dp[mask][:, None] + d[:, js]
            i = cand.argmin(0)
            val, nm = cand[i, np.arange(len(js))], mask | bits[js - 1]
            upd = val < dp[nm, js]
            dp[nm[upd], js[upd]], par[nm[upd], js[upd]] = val[upd], i[upd]
        j, mask, tour = int(np.argmin(dp[full - 1] + d[:, 0])), full - 1, []
        while j:
            tour.append(j)
            mask, j = mask ^ (1 << (j - 1)), int(par[mask, j])
        tour = [0] + tour[::-1]
    else:
        tour, left = [0], set(range(1, k))
        while left:
            nxt = min(left, key=lambda j: (d[tour[-1], j], j))
            tour.append(nxt)
            left.remove(nxt)
        improved = True
        while improved:
            improved = False
            for a in range(1, k - 1):
                for b in range(a + 1, k):
                    i, j, jn = tour[a - 1], tour[a], tour[(b + 1) % k]
                    if d[i, tour[b]] + d[j, jn] < d[i, j] + d[tour[b], jn] - 1e-12:
                        tour[a:b + 1] = tour[a:b + 1][::-1]
                        improved = True
    tour = np.asarray(tour, np.int64)
    return tour if tour[1] < tour[-1] else np.concatenate([tour[:1], tour[1:][::-1]])


def cluster_descriptors(descriptors: np.ndarray, flipped_descriptors: np.ndarray | None = None, *,
                        num_poses: int = 12, seed: int = 0, restarts: int = 5, niter: int = 25,
                        max_points: int = 200_000, outlier_percentile: float = 95.0,
                        use_gpu: bool | None = None, num_threads: int | None = None) -> dict:
    """Step 4 on float32 descriptors [N, D]: pose k-means, mirror pairing, cycle, outliers.

    ``flipped_descriptors`` [N, D] are those of the mirrored images (default:
    :func:`mirror_descriptors`). ``num_poses`` is clamped to N. Returns a dict with the
    PoseClustering fields labels, distances, centroids, mirror_of, mirror_votes, order,
    is_outlier, sizes. Raises ValueError when N == 0.
    """
    x = np.ascontiguousarray(descriptors, dtype=np.float32)
    if not len(x):
        raise ValueError("no descriptors to cluster")
    k = min(num_poses, len(x))
    with _omp_threads(num_threads):
        km = _kmeans(x, k, spherical=False, seed=seed, restarts=restarts, niter=niter,
                     max_points=max_points, gpu=_use_gpu(use_gpu))
        dist, lab = (a[:, 0] for a in km.index.search(x, 1))
        fx = mirror_descriptors(x) if flipped_descriptors is None else flipped_descriptors
        flab = km.index.search(np.ascontiguousarray(fx, dtype=np.float32), 1)[1][:, 0]
        fallback = km.index.search(mirror_descriptors(km.centroids), 1)[1][:, 0]  # poses without members
    votes = np.zeros((k, k), np.int64)
    np.add.at(votes, (lab, flab), 1)
    thr = np.percentile(dist, outlier_percentile) if outlier_percentile < 100 else np.inf
    return dict(labels=lab.astype(np.int64), distances=dist.astype(np.float32), centroids=km.centroids.copy(),
                mirror_of=np.where(votes.sum(1) > 0, votes.argmax(1), fallback).astype(np.int64),
                mirror_votes=votes, order=cycle_order(km.centroids), is_outlier=dist > thr,
                sizes=np.bincount(lab, minlength=k).astype(np.int64))


def cluster_poses_streaming(read_chunks: Callable[[], Iterable[Chunk]], *, num_parts: int = 8,
                            num_poses: int = 12, seed: int = 0, use_gpu: bool | None = None,
                            max_points: int = 200_000, location_weight: float = 1.0,
                            visibility_threshold: float = 0.02, outlier_percentile: float = 95.0,
                            all_foreground: bool = False, restarts: int = 5, niter: int = 25,
                            location_frame: str = "object", num_threads: int | None = None,
                            keep_part_labels: bool = True) -> PoseClustering:
    """Part discovery and pose clustering over features read chunk by chunk (two passes).

    Args:
        read_chunks: called twice; each call returns a fresh iterable of :data:`Chunk`
            ``(patch, flipped, foreground)`` in the same order. ``patch`` float (fp16 ok)
            [n, h, w, C] DINOv2 patch tokens; ``flipped`` the tokens of the horizontally
            flipped images (flipped frame) or None in every chunk; ``foreground`` bool
            [n, h, w] or None in every chunk (a flipped image's foreground is its mirror).
        num_parts: P; clamped to the number of sampled foreground tokens.
        num_poses: K; clamped to N (reported in ``warnings``/``num_poses_requested``).
        max_points: size of the token sample (PCA and part k-means) and cap on the
            descriptors the pose k-means trains on (all are assigned).
        num_threads: faiss OpenMP threads during the call (restored after); None keeps
            faiss' default (all cores; oversubscribed or shared cores can be 10x slower).
        keep_part_labels: keep the [N, h, w] part labels in the result; False (the stage at
            scale) keeps only the descriptors, and ``part_labels`` is None.
        Others: see params.yaml ``pose:`` and the module docstring.

    Memory: the token sample (<= 2 * max_points float16 rows), then per chunk; kept are
    descriptors [N, 3P] float32 (twice with flipped) and, with ``keep_part_labels``, part
    labels [N, h, w] int8 (2.6 GB at 10 M images of 16 x 16 tokens).

    Raises:
        ValueError: no chunks, inconsistent shapes, None-ness that changes between chunks,
            no foreground token, a parameter out of range, or use_gpu=True without faiss GPUs.
    """
    if location_frame not in ("object", "image"):
        raise ValueError(f"location_frame must be 'object' or 'image', got {location_frame!r}")
    if min(num_parts, num_poses, max_points, restarts, niter) < 1 or not 0 < outlier_percentile <= 100:
        raise ValueError("num_parts, num_poses, max_points, restarts, niter must be >= 1 and "
                         "outlier_percentile in (0, 100]")
    kw = dict(location_weight=location_weight, visibility_threshold=visibility_threshold,
              location_frame=location_frame)
    with _omp_threads(num_threads):
        return _cluster(read_chunks, num_parts, num_poses, seed, _use_gpu(use_gpu), max_points, kw,
                        dict(restarts=restarts, niter=niter, outlier_percentile=outlier_percentile),
                        all_foreground, keep_part_labels)


def _cluster(read_chunks, num_parts, num_poses, seed, gpu, max_points, kw, km_kw, all_foreground,
             keep_part_labels=True):
    t0, warn = time.perf_counter(), []
    sample, first = _Sample(max_points, seed), None
    for patch, flipped, fg in read_chunks():
        sig = (patch.shape[1:], flipped is None, fg is None)
        first = first or sig
        if sig != first or (flipped is not None and flipped.shape != patch.shape):
            raise ValueError(f"chunk {sig} differs from the first chunk {first} (shape / None-ness)")
        sample.add(patch, None if fg is None else np.asarray(fg, bool))
    if first is None:
        raise ValueError("no features: read_chunks yielded no chunk")
    (h, w, c), has_flip, has_fg = first[0], not first[1], not first[2]
    tok, pos = sample.result()
    tok = tok.astype(np.float32)
    tok /= np.maximum(np.linalg.norm(tok, axis=1, keepdims=True), 1e-12)
    source = "given" if has_fg else "all" if all_foreground else "pca"
    mean = comp = None
    if source == "pca":
        mean, comp = _pca_foreground(tok, pos, h, w, seed)
        tok = tok[(tok - mean) @ comp > 0]
    if not len(tok):
        raise ValueError("no foreground token in the sample; try pose.all_foreground")
    p = min(num_parts, len(tok))
    if p < num_parts:
        warn.append(f"num_parts clamped from {num_parts} to {p} (only {len(tok)} foreground tokens)")
    t1 = time.perf_counter()
    parts_km = _kmeans(tok, p, spherical=True, seed=seed, restarts=km_kw["restarts"],
                       niter=km_kw["niter"], max_points=max_points, gpu=gpu)
    pc = parts_km.centroids / np.linalg.norm(parts_km.centroids, axis=1, keepdims=True)
    del tok, sample
    t2 = time.perf_counter()

    proj = np.ascontiguousarray(np.c_[pc.T, comp if comp is not None else np.zeros(c)], dtype=np.float32)
    offset = float(mean @ comp) if comp is not None else 0.0

    def label(t: np.ndarray, fgm: np.ndarray | None) -> np.ndarray:
        t32 = np.asarray(t, dtype=np.float32).reshape(-1, c)
        sc = t32 @ proj  # argmax over parts and the PCA test need no normalised copy
        lab = np.argmax(sc[:, :p], axis=1).astype(np.int8 if p <= 127 else np.int16)
        if fgm is None and source == "pca":  # (t/|t| - mean) . comp > 0
            fgm = sc[:, p] > offset * np.sqrt(np.einsum("ij,ij->i", t32, t32))
        if fgm is not None:
            lab[~np.asarray(fgm, bool).ravel()] = -1
        return lab.reshape(t.shape[:3])

    parts, desc, fdesc, fg_tokens, tokens = [], [], [], 0, 0
    for patch, flipped, fg in read_chunks():
        lab = label(patch, fg)
        fg_tokens, tokens = fg_tokens + int((lab >= 0).sum()), tokens + lab.size
        if keep_part_labels:
            parts.append(lab)
        desc.append(describe(lab, p, **kw))
        if has_flip:
            fdesc.append(describe(label(flipped, None if fg is None else fg[:, :, ::-1]), p, **kw))
    part_labels = np.concatenate(parts) if keep_part_labels else None
    descriptors = np.concatenate(desc)
    del parts, desc
    if num_poses > len(descriptors):
        warn.append(f"num_poses clamped from {num_poses} to N={len(descriptors)}")
    t3 = time.perf_counter()
    out = cluster_descriptors(descriptors, np.concatenate(fdesc) if has_flip else None, num_poses=num_poses,
                              seed=seed, max_points=max_points, use_gpu=gpu, **km_kw)
    t4 = time.perf_counter()
    return PoseClustering(
        **out, part_labels=part_labels, descriptors=descriptors, part_centroids=pc.astype(np.float32),
        pca_mean=mean, pca_component=comp, num_poses_requested=num_poses, foreground_source=source,
        mirror_source="flipped_features" if has_flip else "descriptor_mirror",
        foreground_fraction=fg_tokens / max(tokens, 1), warnings=warn,
        timings=dict(sample_and_pca=t1 - t0, part_kmeans=t2 - t1, descriptors=t3 - t2, pose_kmeans=t4 - t3))


def cluster_poses(patch_features: np.ndarray, *, num_parts: int = 8, num_poses: int = 12,
                  foreground: np.ndarray | None = None, flipped_features: np.ndarray | None = None,
                  seed: int = 0, use_gpu: bool | None = None, chunk_size: int = 256,
                  **kwargs) -> PoseClustering:
    """In-memory (or memory-mapped) entry point; same result as the streaming one.

    Args:
        patch_features: float [N, h, w, C] patch tokens (np.memmap works: read by chunk).
        foreground: bool [N, h, w] or None (PCA foreground, or ``all_foreground=True``).
        flipped_features: [N, h, w, C] tokens of the horizontally flipped images or None.
        chunk_size: images per chunk; does not change the result.
        **kwargs: the keyword arguments of :func:`cluster_poses_streaming`.

    Raises:
        ValueError: see :func:`cluster_poses_streaming`; also mismatched N.
    """
    n = len(patch_features)
    for name, a in (("foreground", foreground), ("flipped_features", flipped_features)):
        if a is not None and len(a) != n:
            raise ValueError(f"{name} has {len(a)} rows, patch_features {n}")

    def chunks():
        for i in range(0, n, chunk_size):
            s = slice(i, i + chunk_size)
            yield (patch_features[s], None if flipped_features is None else flipped_features[s],
                   None if foreground is None else foreground[s])

    return cluster_poses_streaming(chunks, num_parts=num_parts, num_poses=num_poses, seed=seed,
                                   use_gpu=use_gpu, **kwargs)
