"""Canonical world (pipelines.viewsets.normalise) and object crops (pipelines.viewsets.crop)."""
import math

import numpy as np
import torch

import viewset_fixtures as F
from pipelines.camera_conventions import qvec_to_rotmat
from pipelines.viewsets.crop import crop_box, crop_view, mask_bbox, output_size
from pipelines.viewsets.normalise import (Similarity, canonical_frame, object_points, syncdreamer_normalisation,
                                          viewdiff_normalisation, viewset_diffusion_normalisation)


def ring(n=8, H=40, W=48):
    K, w2c = F.orbit_cameras(n, H, W, seed=3, az_step=360.0 / n, elev=(25.0, 32.0))
    rgb, alpha, depth = F.render_views(K, w2c, H, W, ss=1)
    pts = object_points(w2c, K, torch.tensor(np.where(np.isfinite(depth), depth, 0)), torch.tensor(alpha))
    return K, w2c, pts


def test_canonical_frame_is_upright_and_invariant_to_the_source_world():
    K, w2c, pts = ring()
    assert len(pts) > 500
    cf = canonical_frame(w2c, pts)
    up = cf.world_to_canonical.R[2]
    assert math.degrees(math.acos(np.clip(up @ [0, 0, 1], -1, 1))) < 5.0       # world is z-up
    np.testing.assert_allclose((cf.bbox[1] - cf.bbox[0]).max(), 1.0)            # unit max side
    np.testing.assert_allclose(cf.bbox[0] + cf.bbox[1], 0, atol=1e-12)          # centred
    can = cf.world_to_canonical.apply_points(pts)
    # the same scene in another world: rotated upside down, scaled, moved
    S = Similarity(2.7, qvec_to_rotmat([0.2, 0.9, -0.3, 0.1]), np.array([3.0, -1.0, 0.5]))
    cf2 = canonical_frame(S.apply_w2c(w2c), S.apply_points(pts))
    np.testing.assert_allclose(cf2.world_to_canonical.apply_points(S.apply_points(pts)), can, atol=1e-9)
    assert cf2.rule["up"] == "camera_plane_normal_sign_by_mean_camera_up"
    # ground points (z = -0.3 world) would be below: the object's top is at +z in canonical
    top = can[np.argmax(pts[:, 2])]
    assert top[2] > 0.3


def test_similarity_keeps_projection_and_scales_depth():
    K, w2c, pts = ring(4)
    S = Similarity(0.4, qvec_to_rotmat([0.3, -0.2, 0.8, 0.1]), np.array([0.1, 0.2, -0.3]))
    w2 = S.apply_w2c(w2c)
    for v in range(4):
        x1 = pts[:50] @ w2c[v, :3, :3].T + w2c[v, :3, 3]
        x2 = S.apply_points(pts[:50]) @ w2[v, :3, :3].T + w2[v, :3, 3]
        np.testing.assert_allclose(x2, S.scale * x1, atol=1e-12)                # same pixels, depth * s
    np.testing.assert_allclose(Similarity.from_matrix(S.matrix()).apply_points(pts), S.apply_points(pts))
    np.testing.assert_allclose(S.then(S.inverse()).apply_points(pts), pts, atol=1e-12)


def test_model_normalisations():
    _, w2c, pts = ring()
    cf = canonical_frame(w2c, pts)
    can = cf.world_to_canonical.apply_points(pts)
    v = viewdiff_normalisation(cf.bbox).apply_points(can)
    np.testing.assert_allclose([v.min(0).min(), v.max(0).max()], [-1, 1], atol=1e-12)
    s = syncdreamer_normalisation(cf.bbox).apply_points(can)
    np.testing.assert_allclose((s.max(0) - s.min(0)).max(), 1.0)
    np.testing.assert_allclose(s.max(0) + s.min(0), 0, atol=1e-12)
    n = viewset_diffusion_normalisation(can)
    q = n.apply_points(can)
    np.testing.assert_allclose(np.abs(q).max(), 0.57)
    np.testing.assert_allclose(q[:, 1].max() + q[:, 1].min(), 0, atol=1e-12)   # y-extent centred
    np.testing.assert_allclose(n.R @ [0, 0, 1], [0, 1, 0])                       # +z up -> +y up


def test_crop_and_resize_update_K_exactly():
    H, W = 96, 128
    K, w2c = F.orbit_cameras(1, H, W, seed=7)
    rgb, alpha, depth = F.render(K[0], w2c[0], H, W)
    bb = mask_bbox(torch.tensor(alpha), 0.4)
    box = crop_box(bb, (H, W), context=0.3, square=True)
    assert box[0] >= 0 and box[1] >= 0 and box[0] + box[2] <= W and box[1] + box[3] <= H
    cv = crop_view(torch.tensor(rgb), K[0], box, alpha=torch.tensor(alpha),
                   depth=torch.tensor(np.where(np.isfinite(depth), depth, 0)), min_short_side=40)
    h, w = cv.image.shape[1:]
    assert min(h, w) == 40 and (h, w) == output_size((box[3], box[2]), 40)
    # the crop equals a direct render with the updated K at the output size
    ref, ref_a, ref_z = F.render(cv.K, w2c[0], h, w, ss=5)
    mse = float(((cv.image - torch.tensor(ref)) ** 2).mean())
    assert 10 * math.log10(1 / mse) > 33
    # a 0.5 px principal-point error is visible in the same comparison
    Kb = cv.K.copy(); Kb[:2, 2] += 0.5
    bad = float(((cv.image - torch.tensor(F.render(Kb, w2c[0], h, w, ss=5)[0])) ** 2).mean())
    assert bad > 2 * mse
    # nearest-exact depth: each output depth is a source depth (no invented values)
    src = set(np.round(depth[np.isfinite(depth)], 5).tolist())
    assert set(np.round(cv.depth[cv.depth > 0].numpy(), 5).tolist()) <= src
    # no resize below the threshold: identity scale, pure crop
    cv2 = crop_view(torch.tensor(rgb), K[0], box, min_short_side=512)
    assert cv2.scale == (1.0, 1.0)
    np.testing.assert_allclose(cv2.K[:2, 2], K[0, :2, 2] - box[:2])
