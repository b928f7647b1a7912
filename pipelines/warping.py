"""Forward and forward-backward warping of RGBD images by triangle-mesh rasterisation.

Faithful to IVID (Xiang et al., "3D-aware Image Generation using 2D Diffusion Models",
ICCV 2023, Sec. 3.2 "Data construction"; reference JeffreyXiang/ivid ``rgbd_3d/utils.py``
``depth_to_mesh``/``forward_backward_warp`` and the moderngl ``SimpleRenderer``), but in
batched torch (CPU or CUDA, headless, no OpenGL):

* the source RGBD image is a triangle mesh with one vertex per pixel centre and two
  triangles per quad, split along the shorter 3D diagonal (IVID ``triangulate``);
* it is rasterised at ``supersample`` x the target resolution with a z-test (nearest
  surface wins; ties go to the lower triangle index, so results are deterministic);
* colour is the source pixel nearest to the perspective-correct source position (IVID
  samples its colour texture with NEAREST filtering);
* triangles across a depth discontinuity (IVID ``mask_discontinuity`` flags the vertices of
  every triangle that fails :func:`discontinuous` in normalised depth, see below; a fragment
  draws no colour when all three of its vertices are flagged), back-facing triangles
  (``!gl_FrontFacing``) and triangles touching a source pixel without colour occlude but
  draw no colour;
* a target pixel is valid when at least ``min_coverage`` of its ``supersample**2``
  sub-pixels drew colour (IVID: ``> 0.75 * ssaa**2``, i.e. 7 of 9) and it is not on a depth
  edge (:func:`depth_edge`: 3 or more of its 8 neighbour pairs discontinuous in the
  z-buffer value); its colour is the mean of the coloured sub-pixels (IVID: Lanczos
  downsampling), its depth the z of the centre sub-pixel (IVID: ``depth[ssaa_offset::ssaa]``).

Discontinuities are IVID's two tests in IVID's units (JeffreyXiang/ivid ``rgbd_3d/utils.py``,
read at commit 98da20c), each :func:`discontinuous` ``|dx| > t and |d(1/x)| > t`` with
``t = edge_threshold`` (IVID ``atol = rtol = 0.02``):

* **mesh** (``mask_discontinuity``, backward pass only; IVID's forward mesh has
  ``atol=None``): ``x`` = a triangle's (min, max) normalised depth ``z / reference_depth``;
* **edge** (:func:`depth_edge`, IVID ``depth_edge(project_depth(depth, near, far))``): ``x`` =
  the z-buffer value ``(1/near - 1/z_n) / (1/near - 1/far)``, i.e. ``|d(1/z_n)| > t (1/near -
  1/far)``: a disparity jump of 0.0398 with IVID's t, near = 0.5, far = 100.

IVID's normalised units are those of :mod:`pipelines.depth_convention` and
:mod:`pipelines.camera` (max disparity ``1/near``, source camera one unit from the pivot it
looks at); ``reference_depth`` is that unit in the caller's depth unit and ``near``/``far``
are multiples of it, so scaling depth, translation and ``reference_depth`` together leaves
every result unchanged (bit-identical for powers of two).

Implementation: the mesh (vertices, triangulation, culling, barycentric planes, span lines)
is set up with batched tensor ops here; :mod:`pipelines.raster` then rasterises it --
(triangle, sub-pixel row) spans from barycentric half-planes (tolerance 1e-4 closes cracks
on shared edges), one z-test per candidate on int64 keys (bits of 1/z, then triangle index)
-- with numba loops on CPU or tensor ops on any device; the two backends are bit-identical.
Only elementwise IEEE arithmetic, gathers and scatters (no matmul, no fused multiply-add),
so a sample's result is bit-identical whatever else shares its batch. On CPU use one
intra-op thread per process on shared machines and see :func:`pipelines.pairs.tune_malloc`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pipelines.camera import invert_rigid
from pipelines.raster import Mesh, rasterise

_BARY_EPS = 1e-4       # inside test tolerance, barycentric units (closes cracks on shared edges)


@dataclass
class WarpResult:
    """:func:`forward_warp` output: image float [B, C, H_t, W_t] (0 where not ``mask``), depth
    float [B, 1, H_t, W_t] z of the nearest surface (non-colour occluders included; inf where
    empty), mask bool [B, 1, H_t, W_t]. No batch dim when the input had none."""
    image: torch.Tensor
    depth: torch.Tensor
    mask: torch.Tensor


@dataclass
class ConditionPair:
    """:func:`forward_backward_warp` output in the source view: cond_image float [B, C, H, W]
    (0 outside ``mask_rgb``), cond_depth float [B, 1, H, W] z (inf outside ``mask``), mask and
    mask_rgb bool [B, 1, H, W] (equal here; :mod:`pipelines.augment` erodes ``mask_rgb``)."""
    cond_image: torch.Tensor
    cond_depth: torch.Tensor
    mask: torch.Tensor
    mask_rgb: torch.Tensor


def default_min_coverage(supersample: int) -> int:
    """IVID's coverage rule ``count > 0.75 * ss**2`` as a count: 7 of 9 at ss=3, 1 of 1 at ss=1."""
    return int(0.75 * supersample * supersample) + 1


def discontinuous(x1: torch.Tensor, x2: torch.Tensor, threshold: float) -> torch.Tensor:
    """IVID's discontinuity test ``|x1 - x2| > t and |1/x1 - 1/x2| > t`` (bool, t = threshold).

    Verbatim ``depth_diff`` of IVID ``depth_edge`` and, applied to a triangle's (min, max),
    ``mask_discontinuity`` (JeffreyXiang/ivid ``rgbd_3d/utils.py``). Absolute, so the
    inputs must be in IVID's units: normalised depth ``z / reference_depth`` for the mesh
    test, the z-buffer value for the edge test (module docstring).

    Args:
        x1, x2: float tensors, broadcastable, > 0 (inf allowed: inf vs inf is continuous).
        threshold: t >= 0 (IVID: 0.02).
    Returns:
        bool tensor of the broadcast shape.
    """
    return ((x1 - x2).abs() > threshold) & ((1.0 / x1 - 1.0 / x2).abs() > threshold)


def _zbuffer_value(zn: torch.Tensor, near: float, far: float) -> torch.Tensor:
    """IVID ``project_depth(z, near, far)``: ``(1/near - 1/clip(z, near, far)) / (1/near - 1/far)``
    in [0, 1] (inf -> 1) for normalised z-depth ``zn``; same convention as
    :func:`pipelines.depth_convention.encode_zbuffer` before quantisation."""
    return (1.0 / near - 1.0 / zn.clamp(near, far)) / (1.0 / near - 1.0 / far)


def depth_edge(depth: torch.Tensor, threshold: float = 0.02, *, reference_depth: float = 1.0,
               near: float = 0.5, far: float = 100.0) -> torch.Tensor:
    """IVID ``depth_edge`` on the z-buffer value: pixels with >= 3 discontinuous neighbours of 8.

    IVID (``rgbd_3d/utils.py``, ``forward_backward_warp`` / ``aggregate_conditions``) runs
    ``depth_edge(project_depth(depth, near, far), atol=t, rtol=t)``; this does the same on
    ``z / reference_depth``: with ``v = max(project_depth(z / reference_depth), 1e-6)``, a
    neighbour pair (horizontal, vertical, both diagonals) is discontinuous when
    :func:`discontinuous` ``(v1, v2, t)``, i.e. ``|d(1/z)| reference_depth > t (1/near -
    1/far)``. Depths beyond ``far`` and empty pixels (inf; IVID: the renderer's far plane)
    all have ``v = 1``, so they are mutually continuous.

    Args:
        depth: float [B, 1, H, W] z-depth (inf = empty), any unit.
        threshold: t >= 0 (IVID: 0.02).
        reference_depth: the pivot distance (IVID's unit depth) in the unit of ``depth``, > 0.
        near, far: IVID z-buffer planes in multiples of ``reference_depth`` (IVID: 0.5, 100;
            params.yaml ``depth.near``/``depth.far``), 0 < near < far.
    Returns:
        bool [B, 1, H, W], True on an edge (IVID's returned mask is the negation).
    """
    v = _zbuffer_value(depth / reference_depth, near, far).clamp_min(1e-6)
    cnt = torch.zeros(depth.shape, dtype=torch.int32, device=depth.device)
    S, F, L = slice(None), slice(1, None), slice(None, -1)
    for a, b in (((S, F), (S, L)), ((F, S), (L, S)), ((F, F), (L, L)), ((F, L), (L, F))):
        d = discontinuous(v[..., a[0], a[1]], v[..., b[0], b[1]], threshold).to(torch.int32)
        cnt[..., a[0], a[1]] += d
        cnt[..., b[0], b[1]] += d
    return cnt >= 3


def _check_K(K: torch.Tensor, B: int) -> torch.Tensor:
    K = K[None] if K.dim() == 2 else K
    if K.shape[-2:] != (3, 3) or K.shape[0] not in (1, B):
        raise ValueError(f"K must be [B,3,3] or [3,3], got {tuple(K.shape)}")
    bad = (K[:, 1, 0] != 0) | (K[:, 2, 0] != 0) | (K[:, 2, 1] != 0) | (K[:, 2, 2] != 1)
    if bool(bad.any()) or bool((K[:, 0, 0] <= 0).any()) or bool((K[:, 1, 1] <= 0).any()):
        raise ValueError("K must be [[fx, s, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0")
    return K.expand(B, 3, 3)


def _col(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, 1, 1)


def _span_lines(al, C, be):
    """Per-triangle row-span bounds from the 3 edge constraints ``C_i + be_i r + al_i dx >= -eps``.

    Returns two lower and two upper lines ``(P, Q)``: ``dx >= P + Q r`` / ``dx <= P + Q r``
    (a non-binding line where a triangle has a single edge of that kind).
    """
    r = [1.0 / a for a in al]      # inf where a == 0: such a line is never picked below
    PQ = [((-_BARY_EPS - C[i]) * r[i], -be[i] * r[i]) for i in range(3)]
    pos, neg = [a > 0 for a in al], [a < 0 for a in al]

    def pick(order, m):          # first edge of that kind in `order` (>= 1 exists if area != 0)
        i, j, k = order
        return tuple(torch.where(m[i], PQ[i][t], torch.where(m[j], PQ[j][t], PQ[k][t])) for t in (0, 1))
    return pick((0, 1, 2), pos), pick((2, 1, 0), pos), pick((0, 1, 2), neg), pick((2, 1, 0), neg)


@torch.no_grad()
def _render(image, depth, K_src, K_tgt, T, Ht, Wt, ss, min_cov, edges, padding, src_valid,
            flag_disc=True):
    """Rasterise the RGBD mesh into the target view. Returns (image, depth, coverage, mask).

    ``edges`` = (threshold, reference_depth, near, far) of the discontinuity tests;
    ``flag_disc=False`` draws discontinuity triangles with colour (IVID's forward pass).
    """
    thr, ref, near, far = edges
    B, C, H, W = image.shape
    dev, f32, i32 = image.device, torch.float32, torch.int32  # int32 gathers
    z = depth[:, 0].to(f32)
    gvalid = torch.isfinite(z) & (z > 0)
    cvalid = gvalid if src_valid is None else gvalid & src_valid[:, 0]
    zs = torch.where(gvalid, z, torch.ones_like(z))
    # Vertex grid: pixel centres, plus an outer ring moved out by `padding` pixels at the
    # depth/colour of the edge pixel (IVID depth_to_mesh(padding=...)).
    u, v = torch.arange(W, device=dev, dtype=f32), torch.arange(H, device=dev, dtype=f32)
    tj, ti = torch.arange(W, device=dev, dtype=i32), torch.arange(H, device=dev, dtype=i32)
    if padding > 0:
        u, v = [torch.cat([t.new_tensor([-padding]), t, t.new_tensor([n - 1 + padding])])
                for t, n in ((u, W), (v, H))]
        tj, ti = [torch.cat([t[:1], t, t[-1:]]) for t in (tj, ti)]
        pad = lambda t: torch.nn.functional.pad(t[:, None].to(f32), (1, 1, 1, 1), mode="replicate")[:, 0]
        zs, gvalid, cvalid = pad(zs), pad(gvalid) > 0.5, pad(cvalid) > 0.5
    Hv, Wv = zs.shape[1:]
    Ks, Kt, Tm = K_src.to(f32), K_tgt.to(f32), T.to(f32)
    yn = (v.reshape(1, -1, 1) - _col(Ks[:, 1, 2])) / _col(Ks[:, 1, 1])
    xn = (u.reshape(1, 1, -1) - _col(Ks[:, 0, 2]) - _col(Ks[:, 0, 1]) * yn) / _col(Ks[:, 0, 0])
    X, Y, Z = xn * zs, yn * zs, zs
    Xt, Yt, Zt = [_col(Tm[:, r, 0]) * X + _col(Tm[:, r, 1]) * Y + _col(Tm[:, r, 2]) * Z
                  + _col(Tm[:, r, 3]) for r in range(3)]
    gvalid = gvalid & torch.isfinite(Zt) & (Zt > 0)
    iz = torch.where(gvalid, 1.0 / Zt, torch.ones_like(Zt))
    ut = (_col(Kt[:, 0, 0]) * Xt + _col(Kt[:, 0, 1]) * Yt) * iz + _col(Kt[:, 0, 2])
    vt = _col(Kt[:, 1, 1]) * Yt * iz + _col(Kt[:, 1, 2])
    PX = torch.where(gvalid, (ut + 0.5) * ss - 0.5, torch.zeros_like(ut))  # sub-pixel centres
    PY = torch.where(gvalid, (vt + 0.5) * ss - 0.5, torch.zeros_like(vt))  # at integers

    # Triangles (IVID triangulate): two per quad, split along the shorter 3D diagonal.
    def q(t):  # corners a=(i,j) b=(i,j+1) c=(i+1,j) d=(i+1,j+1)
        return t[:, :-1, :-1], t[:, :-1, 1:], t[:, 1:, :-1], t[:, 1:, 1:]
    sq = [(m - n) ** 2 for t in (X, Y, Z) for m, n in zip(q(t)[:2], q(t)[3:0:-1])]
    ft = (sq[0] + sq[2] + sq[4]) < (sq[1] + sq[3] + sq[5])   # |a-d| < |b-c|
    a, b, c, d = q(torch.arange(B * Hv * Wv, device=dev, dtype=i32).reshape(B, Hv, Wv))
    slots = [torch.stack(s, -1).reshape(-1) for s in
             ((b, c), (a, d), (torch.where(ft, d, c), torch.where(ft, a, b)))]
    g = lambda t: [t.reshape(-1).index_select(0, s) for s in slots]
    gv, zt = g(gvalid), g(zs)
    geo = gv[0] & gv[1] & gv[2]
    zn = [t / ref for t in zt]                  # IVID mask_discontinuity, normalised depth
    disc = discontinuous(torch.minimum(torch.minimum(zn[0], zn[1]), zn[2]),
                         torch.maximum(torch.maximum(zn[0], zn[1]), zn[2]), thr)
    d1, d2 = (disc & geo & flag_disc).reshape(B, Hv - 1, Wv - 1, 2).unbind(-1)
    vflag = torch.zeros_like(gvalid)            # vertices of discontinuous triangles
    for corner, f in zip(q(vflag), (d1 | (d2 & ft), d1 | (d2 & ~ft), d2 | (d1 & ~ft), d2 | (d1 & ft))):
        corner |= f
    x, y = g(PX), g(PY)
    Hs, Ws = Ht * ss, Wt * ss
    lo3 = lambda t: torch.ceil(torch.minimum(torch.minimum(t[0], t[1]), t[2]) - 1e-3)  # sub-pixel
    hi3 = lambda t: torch.floor(torch.maximum(torch.maximum(t[0], t[1]), t[2]) + 1e-3)  # slack
    xmin, xmax, ymin, ymax = lo3(x), hi3(x), lo3(y), hi3(y)
    keep = (geo & (xmin <= xmax) & (ymin <= ymax) & (xmax >= 0) & (xmin <= Ws - 1)
            & (ymax >= 0) & (ymin <= Hs - 1))
    idx = keep.nonzero().squeeze(1)
    Tn = idx.numel()
    if Tn == 0:
        no = torch.zeros((B, 1, Ht, Wt), dtype=torch.bool, device=dev)
        return torch.zeros((B, C, Ht, Wt), device=dev), torch.full(no.shape, float("inf"), device=dev), no, no
    sel = lambda t: t.index_select(0, idx)
    slots, x, y = [sel(t) for t in slots], [sel(t) for t in x], [sel(t) for t in y]
    ymin, ymax = sel(ymin), sel(ymax)
    w = g(iz)
    code = g(cvalid.to(torch.uint8) | (vflag.to(torch.uint8) << 1))
    code = code[0] & code[1] & code[2]          # bit0: all colour-valid, bit1: all flagged
    tex = g(torch.arange(B, device=dev, dtype=i32).reshape(B, 1, 1) * (H * W)   # source pixel
            + ti.reshape(1, -1, 1) * W + tj.reshape(1, 1, -1))                # of each vertex
    ftt = sel(ft.unsqueeze(-1).expand(-1, -1, -1, 2).reshape(-1))

    # Barycentric planes b_i = bo_i + al_i (X - X0) + be_i (Y - Y0), origin (X0, Y0) integer
    # and near the triangle (well conditioned in float32).
    X0 = torch.floor(torch.minimum(torch.minimum(x[0], x[1]), x[2]))
    Y0 = torch.floor(torch.minimum(torch.minimum(y[0], y[1]), y[2]))
    ex = [x[2] - x[1], x[0] - x[2], x[1] - x[0]]
    ey = [y[1] - y[2], y[2] - y[0], y[0] - y[1]]
    area2 = ex[2] * (y[2] - y[0]) + ey[2] * (x[2] - x[0])
    colour = (code == 1) & (area2 < 0)          # clockwise = front-facing
    inv = 1.0 / torch.where(area2 == 0, torch.ones_like(area2), area2)
    al, be = [e * inv for e in ey], [e * inv for e in ex]
    ox, oy = X0 - x[0], Y0 - y[0]
    bo = [al[0] * ox + be[0] * oy + 1.0, al[1] * ox + be[1] * oy, al[2] * ox + be[2] * oy]
    # 1/z and the perspective-correct texel rule use the planes of b_k w_k (k = 0, 1, 2):
    # 1/z = sum_k b_k w_k; the nearest source pixel is the vertex whose b_k w_k / (1/z) >= 1/2
    # among the two off the quad's right angle (slot 2, and slot 1 or 0), else the right-angle
    # vertex (a triangle's vertices are three corners of a source-pixel quad).
    nk = [[bo[k] * w[k], al[k] * w[k], be[k] * w[k]] for k in range(3)]
    izp = [(nk[0][i] + nk[1][i]) + nk[2][i] for i in range(3)]
    absolute = lambda c: [c[0] - c[1] * X0 - c[2] * Y0, c[1], c[2]]   # planes in absolute X, Y
    nA = absolute(nk[2])
    nB = absolute([torch.where(ftt, nk[1][i], nk[0][i]) for i in range(3)])
    tA, tB, tR = tex[2], torch.where(ftt, tex[1], tex[0]), torch.where(ftt, tex[0], tex[1])
    dy0 = ymin - Y0
    La, Lb, Ra, Rb = [(P + X0, Q) for P, Q in
                      _span_lines(al, [bo[i] + be[i] * dy0 for i in range(3)], be)]   # absolute X
    bidx = torch.div(idx, (Hv - 1) * (Wv - 1) * 2, rounding_mode="floor")
    pix0 = (bidx * Hs + ymin.long()) * Ws
    izA = (izp[0] + izp[2] * dy0) - izp[1] * X0  # 1/z at (X, row r) = izA + izp2 r + izp1 X

    mesh = Mesh(ymin, ymax, area2 != 0, La, Lb, Ra, Rb, izp[1], izp[2], izA, pix0, nA, nB, tA, tB, tR, colour)
    out, cnt, zc = rasterise(mesh, image, Ht, Wt, ss)
    zout = torch.where(zc > 0, 1.0 / zc, float("inf"))
    covered = cnt >= min_cov
    mask = covered & torch.isfinite(zout) & ~depth_edge(zout, thr, reference_depth=ref, near=near, far=far)
    return out, zout, covered, mask


def _check_opts(supersample, min_coverage, edge_threshold, padding, reference_depth, near, far):
    """Validated (supersample, min_coverage, edges) with edges = (t, reference_depth, near, far)."""
    ss = int(supersample)
    mc = default_min_coverage(ss) if min_coverage is None else int(min_coverage)
    edges = tuple(float(x) for x in (edge_threshold, reference_depth, near, far))
    t, ref, n, f = edges
    if ss < 1 or not 1 <= mc <= ss * ss or not t >= 0 or not padding >= 0:
        raise ValueError(f"need supersample >= 1, 1 <= min_coverage <= supersample**2, edge_threshold >= 0, "
                         f"padding >= 0; got {supersample}, {min_coverage}, {edge_threshold}, {padding}")
    if not (0 < ref < float("inf") and 0 < n < f < float("inf")):
        raise ValueError(f"need 0 < reference_depth < inf and 0 < near < far < inf; got {reference_depth}, "
                         f"{near}, {far}")
    return ss, mc, edges


def _prep(image, depth, Ks, Kt, T):
    single = image.dim() == 3
    if single:
        image, depth = image[None], depth[None]
        Ks, Kt, T = (m[None] if m.dim() == 2 else m for m in (Ks, Kt, T))
    if image.dim() != 4 or depth.dim() != 4 or depth.shape[1] != 1:
        raise ValueError("image must be [B,C,H,W] and depth [B,1,H,W] (or without B)")
    B, _, H, W = image.shape
    if depth.shape[0] != B or depth.shape[2:] != (H, W):
        raise ValueError(f"depth {tuple(depth.shape)} does not match image {tuple(image.shape)}")
    if T.dim() == 2:
        T = T[None]
    if T.shape[-2:] != (4, 4) or T.shape[0] not in (1, B):
        raise ValueError(f"src_to_tgt must be [B,4,4], got {tuple(T.shape)}")
    dev = image.device
    Ks, Kt = (_check_K(torch.as_tensor(m, device=dev), B) for m in (Ks, Kt))
    T = torch.as_tensor(T, device=dev).expand(B, 4, 4)
    return single, image, depth, Ks, Kt, T


def forward_warp(image: torch.Tensor, depth: torch.Tensor, K_src: torch.Tensor,
                 K_tgt: torch.Tensor, src_to_tgt: torch.Tensor, *, out_size=None,
                 supersample: int = 3, min_coverage: int | None = None,
                 edge_threshold: float = 0.02, reference_depth: float = 1.0, near: float = 0.5,
                 far: float = 100.0, padding: float = 0.0,
                 src_mask: torch.Tensor | None = None) -> WarpResult:
    """Render an RGBD image from another camera (IVID ``SimpleRenderer.render`` of
    ``depth_to_mesh``; see the module docstring for the exact rules).

    Args:
        image: float [B, C, H, W] (any C, any H x W; values are copied, not clipped).
        depth: float [B, 1, H, W] source z-depth (any unit); non-finite or <= 0 is invalid
            (no geometry).
        K_src, K_tgt: [B, 3, 3] (or [3, 3]) pixel intrinsics, OpenCV convention,
            ``[[fx, s, cx], [0, fy, cy], [0, 0, 1]]`` with fx, fy > 0.
        src_to_tgt: [B, 4, 4] (or [4, 4]) rigid transform, source-camera -> target-camera
            coordinates (same unit as depth).
        out_size: (H_t, W_t); default (H, W).
        supersample: sub-pixels per axis (IVID: 3), >= 1.
        min_coverage: coloured sub-pixels (of ``supersample**2``) for a valid pixel;
            default :func:`default_min_coverage` (IVID: 7 of 9).
        edge_threshold: t of IVID's mesh and edge tests (``atol = rtol``; IVID 0.02), >= 0.
        reference_depth: IVID's unit depth (the pivot distance) in the unit of ``depth``,
            > 0; 1 for depth from :func:`pipelines.depth_convention.disparity_to_depth`.
        near, far: IVID's z-buffer planes in multiples of ``reference_depth`` (IVID and
            params.yaml ``depth:``: 0.5, 100), 0 < near < far; edge test only.
        padding: extend the mesh border outward by this many pixels (IVID pads the source
            mesh in the forward pass); padded geometry draws the edge colour.
        src_mask: optional bool [B, 1, H, W]; source pixels False occlude but give no colour.
    Without the batch dim, every tensor drops it (K/transform may then be [3,3]/[4,4]).

    Returns:
        :class:`WarpResult` with image float32 [B, C, H_t, W_t] (0 where not ``mask``),
        depth float32 [B, 1, H_t, W_t] (inf where empty) and mask bool [B, 1, H_t, W_t].

    Raises:
        ValueError: bad shapes, non-pinhole K, supersample < 1, min_coverage outside
            [1, supersample**2], negative threshold/padding, reference_depth <= 0, not
            0 < near < far.
    """
    single, image, depth, Ks, Kt, T = _prep(image, depth, K_src, K_tgt, src_to_tgt)
    ss, mc, edges = _check_opts(supersample, min_coverage, edge_threshold, padding, reference_depth, near, far)
    Ht, Wt = (image.shape[2], image.shape[3]) if out_size is None else map(int, out_size)
    if src_mask is not None:
        src_mask = (src_mask[None] if single else src_mask).to(torch.bool)
    img, z, _, mask = _render(image, depth, Ks, Kt, T, Ht, Wt, ss, mc, edges, float(padding), src_mask)
    out = (img * mask, z, mask)
    return WarpResult(*(t[0] for t in out) if single else out)


def forward_backward_warp(image: torch.Tensor, depth: torch.Tensor, K: torch.Tensor,
                          src_to_tgt: torch.Tensor, *, supersample: int = 3,
                          min_coverage: int | None = None, edge_threshold: float = 0.02,
                          reference_depth: float = 1.0, near: float = 0.5, far: float = 100.0,
                          padding: float | None = None) -> ConditionPair:
    """IVID's condition: warp to the novel view, warp the result back (``forward_backward_warp``
    in ``rgbd_3d/utils.py``; paper Sec. 3.2). No augmentation happens here.

    Forward pass (IVID: ``depth_to_mesh(atol=None)``): the source mesh, padded by
    ``padding`` pixels, rendered into the novel view with *every* front-facing triangle
    drawing colour (stretched discontinuities included), gives an RGBD image and its
    sub-pixel coverage. Backward pass: that RGBD image as a mesh -- discontinuity
    triangles and pixels below ``min_coverage`` occlude without colour -- rendered back
    into the source view; the coverage and depth-edge rules give the mask.

    Padding: IVID pads by the image size (``WarpDataset``), so the stretched border covers
    the novel view. A narrower ring leaves the area beyond it empty, which the backward
    pass sees as no geometry instead of border-coloured geometry: the mask changes near the
    frame and, at large pitch, along discontinuities. At 128 px (``benchmarks/
    bench_warping.py --mask-diff 64 --sizes 128 --padding 2,8,image``) padding 2 differs
    from 128 on 247 of 1.05 M mask pixels with IVID's cameras, 1311 at pitch +-0.4 rad
    (padding 8: 56, 402; 64 or 256: 0-1), and padding = image size costs no measurable
    time (1 thread: 16.8 vs 17.0 pairs/s at 128 px, 4.3 vs 4.3 at 256 px): the default.
    Much wider rings swing behind the novel camera at large rotations (2x the image at
    yaw 0.2, pitch 0.4 already), where triangles are dropped, not clipped as in OpenGL.

    Args:
        image: float [B, C, H, W]; depth: float [B, 1, H, W] z-depth (invalid: non-finite
            or <= 0); K: [B, 3, 3] or [3, 3] intrinsics shared by both views (OpenCV);
        src_to_tgt: [B, 4, 4] rigid source -> novel camera transform.
        supersample, min_coverage, edge_threshold, reference_depth, near, far: as
            :func:`forward_warp` (the mesh test applies to the backward pass only, as IVID's
            ``depth_to_mesh(atol=None)`` forward mesh has no discontinuity flags).
        padding: forward-pass border padding in pixels (>= 0); None (default) = the image
            size ``max(H, W)``, IVID's.
    Without the batch dim, every tensor drops it.

    Returns:
        :class:`ConditionPair` in the source view (float32 / bool, shapes as the input).

    Raises:
        ValueError: as :func:`forward_warp`.
    """
    single, image, depth, K, _, T = _prep(image, depth, K, K, src_to_tgt)
    H, W = image.shape[2:]
    padding = float(max(H, W)) if padding is None else padding
    ss, mc, edges = _check_opts(supersample, min_coverage, edge_threshold, padding, reference_depth, near, far)
    img1, z1, cov1, _ = _render(image, depth, K, K, T, H, W, ss, mc, edges, float(padding), None,
                                flag_disc=False)
    back = forward_warp(img1, z1, K, K, invert_rigid(T.to(torch.float64)), supersample=ss,
                        min_coverage=mc, edge_threshold=edges[0], reference_depth=edges[1],
                        near=edges[2], far=edges[3], src_mask=cov1)
    m = back.mask
    out = (back.image, torch.where(m, back.depth, float("inf")), m, m.clone())
    return ConditionPair(*(t[0] for t in out) if single else out)
