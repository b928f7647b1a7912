"""Pose clustering on a procedural multi-view set with known azimuths (issue 4).

The object is a bilaterally symmetric "animal" of distinctly coloured spheres (body, head,
tail, front legs, back legs, fin), ray cast orthographically at known azimuths with jittered
elevation, scale and position. The oracle part features of a patch are its part-colour
histogram (background included) embedded with orthonormal codes in 32-D, plus Gaussian
noise, L2-normalised: what an ideal DINOv2 would give. Flipped features come from the
mirrored label maps, so the view at azimuth a, mirrored, is the view at -a.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

from pipelines.pose_clustering import (PoseClustering, cluster_descriptors, cluster_poses,
                                       cluster_poses_streaming, cycle_order)
from pipelines.pose_report import montage, save_index, silhouette

SPHERES = [  # (centre (x lateral, y up, z forward), radius, part colour)
    ((0.0, 0.0, 0.0), 0.50, 0), ((0.0, 0.25, 0.70), 0.30, 1), ((0.0, 0.10, -0.75), 0.22, 2),
    ((0.38, -0.42, 0.35), 0.17, 3), ((-0.38, -0.42, 0.35), 0.17, 3),
    ((0.38, -0.42, -0.35), 0.17, 4), ((-0.38, -0.42, -0.35), 0.17, 4), ((0.0, 0.58, -0.15), 0.16, 5)]
N_COL, BINS, RES, PATCH = 6, 12, 112, 8
FAST = dict(num_threads=1)  # 2 shared cores here: OpenMP spinning makes 2 threads ~10x slower


def render(az: float, el: float, scale: float, shift, res: int = RES, extent: float = 1.3) -> np.ndarray:
    """Part-label map int [res, res] (-1 background), orthographic camera at azimuth ``az``."""
    ca, sa, ce, se = np.cos(-az), np.sin(-az), np.cos(el), np.sin(el)
    rot = np.array([[1, 0, 0], [0, ce, -se], [0, se, ce]]) @ np.array([[ca, 0, sa], [0, 1, 0], [-sa, 0, ca]])
    v = (np.arange(res) + 0.5) / res * 2 * extent - extent
    X, Y = np.meshgrid(v, v)  # Y points down the image
    depth, lab = np.full((res, res), -np.inf), np.full((res, res), -1)
    for c, rad, col in SPHERES:
        p = rot @ np.asarray(c) * scale
        d2 = (rad * scale) ** 2 - (X - p[0] - shift[0]) ** 2 - (Y + p[1] - shift[1]) ** 2
        z = np.where(d2 > 0, p[2] + np.sqrt(np.maximum(d2, 0)), -np.inf)
        m = z > depth
        depth[m], lab[m] = z[m], col
    return lab


def oracle_features(labels: np.ndarray, rng, dim: int = 32, noise: float = 0.1) -> np.ndarray:
    codes = np.linalg.qr(np.random.default_rng(123).normal(size=(dim, dim)))[0][:N_COL + 1]
    g = labels.shape[1] // PATCH
    onehot = (labels[..., None] == np.arange(-1, N_COL)).astype(np.float32)
    hist = onehot.reshape(len(labels), g, PATCH, g, PATCH, N_COL + 1).mean((2, 4))
    f = hist @ codes + noise * rng.normal(size=(len(labels), g, g, dim))
    return (f / np.linalg.norm(f, axis=-1, keepdims=True)).astype(np.float16)


@pytest.fixture(scope="module")
def views():
    rng = np.random.default_rng(0)
    az = np.array([2 * np.pi * b / BINS + rng.uniform(-0.6, 0.6) * np.pi / BINS
                   for b in range(BINS) for _ in range(30)])
    labels = np.stack([render(a, rng.uniform(0.1, 0.35), rng.uniform(0.9, 1.1), rng.uniform(-0.08, 0.08, 2))
                       for a in az])
    return dict(az=az, bins=np.round(az / (2 * np.pi) * BINS).astype(int) % BINS, labels=labels,
                feats=oracle_features(labels, rng), flipped=oracle_features(labels[:, :, ::-1], rng))


@pytest.fixture(scope="module")
def result(views) -> PoseClustering:
    return cluster_poses(views["feats"], num_parts=8, num_poses=12, flipped_features=views["flipped"],
                         seed=0, chunk_size=64, **FAST)


def _pose_azimuth(az, labels, k):
    """Circular mean azimuth per pose."""
    return np.array([np.angle(np.exp(1j * az[labels == j]).mean()) for j in range(k)])


def test_recovers_azimuth_bins(views, result):
    r = result
    assert r.labels.shape == (360,) and r.part_labels.shape == (360, 14, 14)
    assert r.descriptors.shape == (360, 24) and r.centroids.shape == (12, 24)
    assert r.part_labels.dtype == np.int8 and r.foreground_source == "pca"
    nmi = normalized_mutual_info_score(views["bins"], r.labels)
    assert nmi >= 0.7, nmi
    shuffled = np.random.default_rng(0).permutation(r.labels)  # the metric can fail
    assert normalized_mutual_info_score(views["bins"], shuffled) < 0.2
    # PCA foreground with the sign rule matches the rendered object
    true_fg = (views["labels"] >= 0).reshape(360, 14, PATCH, 14, PATCH).mean((2, 4)) > 0.5
    fg = r.part_labels >= 0
    assert (fg & true_fg).sum() / (fg | true_fg).sum() > 0.8
    assert 0.1 < r.foreground_fraction < 0.35


def test_mirror_pairs_a_and_minus_a(views, result):
    r = result
    mean_az = _pose_azimuth(views["az"], r.labels, r.num_poses)
    err = np.abs(np.angle(np.exp(1j * (mean_az[r.mirror_of] + mean_az))))  # mirror should sit at -a
    assert np.median(np.degrees(err)) < 15, np.degrees(err)
    assert (np.degrees(err) < 45).mean() >= 0.9
    assert r.mirror_source == "flipped_features"
    # the cycle visits neighbouring azimuths: most consecutive poses are < 60 degrees apart
    step = np.abs(np.angle(np.exp(1j * (mean_az[r.order] - np.roll(mean_az[r.order], -1)))))
    assert (np.degrees(step) < 60).mean() >= 0.9


def test_outliers_sizes_silhouette_index_montage(views, result, tmp_path):
    import faiss
    r = result
    assert r.sizes.sum() == 360 and r.is_outlier.dtype == bool
    assert 0.02 < r.is_outlier.mean() <= 0.06  # 95th percentile
    assert np.all(r.distances[r.is_outlier] > r.distances[~r.is_outlier].max() - 1e-6)
    assert 0.0 < silhouette(r) <= 1.0
    path = save_index(r, tmp_path / "poses.faiss")
    index = faiss.read_index(str(path))
    assert index.ntotal == 12 and np.array_equal(index.search(r.descriptors, 1)[1][:, 0], r.labels)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    images = np.where(views["labels"][..., None] >= 0, 200, 30).astype(np.uint8).repeat(3, -1)
    png = montage(images, r.labels, r.order, per_pose=3, distances=r.distances, tile=32)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_deterministic_and_streaming_equals_in_memory(views, result):
    again = cluster_poses(views["feats"], num_parts=8, num_poses=12, flipped_features=views["flipped"],
                          seed=0, chunk_size=360, **FAST)
    np.testing.assert_array_equal(again.labels, result.labels)
    np.testing.assert_array_equal(again.part_labels, result.part_labels)

    def read_chunks():  # uneven chunks, as a reader of Parquet parts would yield them
        for s in (slice(0, 7), slice(7, 150), slice(150, 360)):
            yield views["feats"][s], views["flipped"][s], None
    streamed = cluster_poses_streaming(read_chunks, num_parts=8, num_poses=12, seed=0, **FAST)
    np.testing.assert_array_equal(streamed.labels, result.labels)
    np.testing.assert_array_equal(streamed.mirror_of, result.mirror_of)
    np.testing.assert_allclose(streamed.descriptors, result.descriptors, atol=1e-6)


def test_given_foreground_small_sample_and_clamping(views):
    fg = (views["labels"][:20] >= 0).reshape(20, 14, PATCH, 14, PATCH).mean((2, 4)) > 0.5
    r = cluster_poses(views["feats"][:20], num_parts=6, num_poses=50, foreground=fg,
                      max_points=500, seed=1, **FAST)
    assert r.num_poses == 20 and r.num_poses_requested == 50 and any("num_poses" in w for w in r.warnings)
    assert r.foreground_source == "given" and r.mirror_source == "descriptor_mirror"
    np.testing.assert_array_equal(r.part_labels >= 0, fg)
    everything = cluster_poses(views["feats"][:20], num_poses=4, all_foreground=True, **FAST)
    assert (everything.part_labels >= 0).all() and everything.foreground_source == "all"
    with pytest.raises(ValueError):
        cluster_poses(views["feats"][:20], location_frame="world")
    import faiss
    if faiss.get_num_gpus() == 0:
        with pytest.raises(ValueError, match="GPU"):
            cluster_poses(views["feats"][:20], use_gpu=True)


def test_pca_sign_rule_when_object_is_the_majority():
    """A large central object (62% of patches) is still the foreground."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:16, :16]
    obj = (np.abs(yy - 7.5) < 6.5) & (np.abs(xx - 7.5) < 6.5)
    f = np.where(obj[None, ..., None], [1.0, 0, 0, 0], [0, 1.0, 0, 0]) + 0.1 * rng.normal(size=(30, 16, 16, 4))
    r = cluster_poses(f.astype(np.float32), num_parts=2, num_poses=3, **FAST)
    assert obj.mean() > 0.5 and ((r.part_labels >= 0) == obj).mean() > 0.95


def test_cycle_order_and_descriptor_clustering():
    ang = np.linspace(0, 2 * np.pi, 10, endpoint=False)
    pts = np.stack([np.cos(ang), np.sin(ang)], 1)[np.random.default_rng(1).permutation(10)]
    for p in (pts, np.concatenate([pts * 1.0, pts * 1.0 + 5])[:16]):
        tour = cycle_order(p)
        assert sorted(tour) == list(range(len(p))) and tour[0] == 0 and tour[1] < tour[-1]
    rng = np.random.default_rng(2)  # Held-Karp is exact: equals brute force over all tours
    for _ in range(3):
        q = rng.normal(size=(7, 3))
        length = lambda t: sum(np.linalg.norm(q[t[i]] - q[t[i - 1]]) for i in range(len(t)))
        best = min(length((0,) + perm) for perm in itertools.permutations(range(1, 7)))
        assert length(tuple(cycle_order(q))) == pytest.approx(best)
    tour = cycle_order(pts)  # the polygon order
    pos = np.round(np.arctan2(pts[tour, 1], pts[tour, 0]) / (2 * np.pi / 10)).astype(int) % 10
    assert set(np.abs((np.diff(np.r_[pos, pos[:1]]) + 5) % 10 - 5)) == {1}
    x = np.random.default_rng(0).normal(size=(100, 6)).astype(np.float32)
    out = cluster_descriptors(x, num_poses=200, **FAST)
    assert len(out["centroids"]) == 100 and out["sizes"].sum() == 100
    with pytest.raises(ValueError):
        cluster_descriptors(x[:0])


def test_assign_poses_reproduces_the_fit_for_its_own_images(views, result):
    """Assigning the fitted images with the stored model (part centroids, PCA test, pose
    centroids) gives the fit's labels and descriptor distances: new images get labels by
    the same rule, and known images would never be relabelled."""
    from pipelines.pose_assign import assign_poses

    labels, dist, outlier = assign_poses(result, views["feats"], outlier_distance=float(np.inf), **{
        k: v for k, v in FAST.items() if k in ("location_weight", "visibility_threshold", "location_frame")})
    assert (labels == result.labels).mean() > 0.99
    np.testing.assert_allclose(dist[labels == result.labels], result.distances[labels == result.labels],
                               rtol=1e-4, atol=1e-5)
    assert not outlier.any()
