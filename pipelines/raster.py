"""Z-buffered scanline rasterisation of a prepared triangle mesh, and the texel resolve.

The second half of :func:`pipelines.warping._render` (IVID's ``SimpleRenderer``; see the
:mod:`pipelines.warping` docstring for the rules): given per-triangle span lines, 1/z planes
and texel-rule planes in sub-pixel coordinates, find the nearest triangle at every
sub-pixel, read its perspective-correct nearest source pixel, and average the ss x ss
sub-pixels of each target pixel.

Two backends with one contract and **bit-identical** results (``tests/test_warping.py``):

* :func:`rasterise_torch` -- batched tensor ops (CPU or CUDA): one row per (triangle,
  sub-pixel row), one candidate per (row, sub-pixel), z-test by ``scatter_reduce(amax)`` of
  int64 keys (bits of 1/z, then the lowest triangle index);
* :func:`rasterise_numba` -- the same arithmetic as plain loops compiled by numba (CPU):
  no temporaries, several times faster than tensor ops on a CPU. The key order is the
  same, so ties resolve the same way.

Both use only IEEE float32 multiply/add/compare in the same order (numba does not contract
into FMA unless ``fastmath``), so a sample's result does not depend on its batch or backend.
"""
from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass

import numpy as np
import torch

_LITTLE = sys.byteorder == "little"
#: Set ``VIEWFORGE_RASTER=torch`` to force the tensor backend on CPU.
BACKEND_ENV = "VIEWFORGE_RASTER"


@dataclass
class Mesh:
    """Per-triangle inputs, all 1-D of length Tn (float32 unless noted), sub-pixel units.

    ``ymin``/``ymax``: integer-valued row range; ``draw``: bool, False for zero-area
    triangles; ``L*``/``R*`` ``(P, Q)``: the two lower / upper span lines, column
    ``x >= P + Q r`` / ``x <= P + Q r`` at row ``ymin + r``; ``iz1``, ``iz2``, ``izA``:
    1/z = izA + iz2 r + iz1 x; ``nA``, ``nB``: 3 planes each (c0 + c1 x + c2 y) of the
    texel rule; ``tA``, ``tB``, ``tR``: int32 source pixels (flat over [B, H, W]);
    ``colour``: bool; ``pix0``: int64 flat sub-pixel index of (image, row ymin, column 0).
    """
    ymin: torch.Tensor
    ymax: torch.Tensor
    draw: torch.Tensor
    La: tuple[torch.Tensor, torch.Tensor]
    Lb: tuple[torch.Tensor, torch.Tensor]
    Ra: tuple[torch.Tensor, torch.Tensor]
    Rb: tuple[torch.Tensor, torch.Tensor]
    iz1: torch.Tensor
    iz2: torch.Tensor
    izA: torch.Tensor
    pix0: torch.Tensor
    nA: list[torch.Tensor]
    nB: list[torch.Tensor]
    tA: torch.Tensor
    tB: torch.Tensor
    tR: torch.Tensor
    colour: torch.Tensor


def rasterise(mesh: Mesh, image: torch.Tensor, Ht: int, Wt: int, ss: int):
    """Rasterise ``mesh`` and resolve colours from ``image`` float [B, C, H, W].

    Returns ``(out, count, inv_zc)``: out float32 [B, C, Ht, Wt] mean colour of the coloured
    sub-pixels (0 where none), count float32 [B, 1, Ht, Wt] coloured sub-pixels (0..ss**2),
    inv_zc float32 [B, 1, Ht, Wt] 1/z of the nearest surface at the centre sub-pixel
    (<= 0 where empty). Uses :func:`rasterise_numba` on CPU when numba is installed (unless
    ``VIEWFORGE_RASTER=torch``), else :func:`rasterise_torch`.
    """
    if image.device.type == "cpu" and os.environ.get(BACKEND_ENV, "numba") != "torch" and _numba() is not None:
        return rasterise_numba(mesh, image, Ht, Wt, ss)
    return rasterise_torch(mesh, image, Ht, Wt, ss)


def rasterise_torch(mesh: Mesh, image: torch.Tensor, Ht: int, Wt: int, ss: int):
    """Tensor backend of :func:`rasterise` (any device)."""
    B, C, H, W = image.shape
    dev, f32, i32, i64 = image.device, torch.float32, torch.int32, torch.long
    Hs, Ws = Ht * ss, Wt * ss
    m = mesh
    Tn = m.ymin.numel()
    # Rows: one per (triangle, sub-pixel row) -> span [lo, hi] of sub-pixel columns.
    nrow = torch.clamp(m.ymax, max=Hs - 1) - torch.clamp(m.ymin, min=0) + 1
    nrow = (nrow * m.draw).to(i32)                                  # zero-area: nothing to draw
    rt = torch.repeat_interleave(torch.arange(Tn, device=dev, dtype=i32), nrow)
    G = lambda t: t.index_select(0, rt)
    r = torch.arange(rt.numel(), device=dev, dtype=i32) - G((torch.cumsum(nrow, 0, dtype=i32) - nrow)
                                                           - torch.clamp(-m.ymin, min=0).to(i32))
    rf = r.to(f32)
    line = lambda L: G(L[1]).mul_(rf).add_(G(L[0]))
    lo = torch.maximum(line(m.La), line(m.Lb)).ceil_().clamp_(min=0)
    hi = torch.minimum(line(m.Ra), line(m.Rb)).floor_().clamp_(max=Ws - 1)
    n = (hi - lo + 1).clamp_(min=0).to(i32)
    r_ia = G(m.iz1)
    r_iz = G(m.iz2).mul_(rf).add_(G(m.izA)).add_(r_ia * lo)
    r_pix = G(m.pix0).add_(r.to(i64) * Ws).add_(lo.to(i64))
    # Candidates: one per (row, sub-pixel); z-test by an atomic max of (1/z bits, -index).
    cr = torch.repeat_interleave(torch.arange(rt.numel(), device=dev, dtype=i32), n)
    Gc = lambda t: t.index_select(0, cr)
    dx = torch.arange(cr.numel(), device=dev, dtype=i32) - Gc(torch.cumsum(n, 0, dtype=i32) - n)
    inv_z = Gc(r_ia).mul_(dx.to(f32)).add_(Gc(r_iz)).clamp_(min=1e-30)
    # int64 key = (bits of 1/z) * 2**32 + (2**32 - 1 - triangle): max = nearest, then lowest
    # index; built and read as two int32 words (little-endian: low word first).
    words = [Gc(~rt), inv_z.view(i32)]
    key = torch.stack(words if _LITTLE else words[::-1], 1).view(i64).reshape(-1)
    # Empty sub-pixels keep key (INT32_MIN, ~Tn): below every candidate (1/z bits > 0), and
    # they decode to the sentinel triangle Tn (no colour, zero planes, -0.0 for 1/z).
    buf = torch.full((B * Hs * Ws,), -(2 ** 63) + (2 ** 32 - 1 - Tn), dtype=i64, device=dev)
    buf.scatter_reduce_(0, Gc(r_pix).add_(dx), key, reduce="amax", include_self=True)

    # Resolve: winning triangle -> perspective-correct nearest source pixel, depth. Sub-pixels
    # are read in [sy, sx, B, Ht, Wt] order, so the ss x ss downsample sums whole slabs.
    bw = buf.index_select(0, _subpixel_order(B, Ht, Wt, ss, dev)).view(i32).reshape(-1, 2)
    lo_w, hi_w = (bw[:, 0], bw[:, 1]) if _LITTLE else (bw[:, 1], bw[:, 0])
    wid = ~lo_w
    inv_z = hi_w.view(f32)                       # -0.0 where empty
    A = lambda t, empty=0: torch.cat([t, t.new_full((1,), empty)]).index_select(0, wid)
    gx, gy = _subpixel_coords(B, Ht, Wt, ss, dev)
    half = inv_z * 0.5
    # Texel rule as arithmetic (no per-sub-pixel branches): src = R + [A wins] (A - R) +
    # [B wins, A not] (B - R); a triangle without colour reads the zero pixel B*H*W.
    ci = m.colour.to(i32)
    tR = torch.where(m.colour, m.tR, B * H * W)
    dA, dB = (m.tA - tR) * ci, (m.tB - tR) * ci
    plane = lambda P: A(P[1]).mul_(gx).add_(A(P[0])).add_(A(P[2]).mul_(gy))
    pick_a, pick_b = plane(m.nA) >= half, plane(m.nB) >= half
    src = A(tR, B * H * W).add_(A(dA).mul_(pick_a)).add_(A(dB).mul_(pick_b & ~pick_a))
    coloured = A(m.colour)
    chans = torch.cat([image.to(f32).permute(1, 0, 2, 3).reshape(C, -1), torch.zeros((C, 1), device=dev)], 1)
    planes = torch.empty((C, B * Hs * Ws), device=dev)
    for k in range(C):
        torch.index_select(chans[k], 0, src, out=planes[k])

    # Downsample ss x ss -> 1: fixed-order sums over columns, then rows (batch independent).
    t = planes.reshape(C, ss, ss, B * Ht * Wt)
    rows = [sum((t[:, sy, k] for k in range(1, ss)), t[:, sy, 0]) for sy in range(ss)]
    acc = sum(rows[1:], rows[0]).reshape(C, B, Ht, Wt).transpose(0, 1)
    cnt = coloured.reshape(ss * ss, B, 1, Ht, Wt).sum(0, dtype=i32).to(f32)
    out = (acc / torch.clamp(cnt, min=1.0)).contiguous()
    off = (ss - 1) // 2
    return out, cnt, inv_z.reshape(ss, ss, B, 1, Ht, Wt)[off, off].contiguous()


@functools.lru_cache(maxsize=8)
def _subpixel_order(B: int, Ht: int, Wt: int, ss: int, dev: torch.device) -> torch.Tensor:
    """Raster indices (b, y, x) of the sub-pixels listed in [sy, sx, b, ty, tx] order
    (y = ty * ss + sy, x = tx * ss + sx), int64 [ss * ss * B * Ht * Wt]."""
    a = lambda n, s: torch.arange(n, device=dev, dtype=torch.long).reshape(s)
    y = a(Ht, (1, 1, 1, Ht, 1)) * ss + a(ss, (ss, 1, 1, 1, 1))
    x = a(Wt, (1, 1, 1, 1, Wt)) * ss + a(ss, (1, ss, 1, 1, 1))
    return ((a(B, (1, 1, B, 1, 1)) * (Ht * ss) + y) * (Wt * ss) + x).reshape(-1)


@functools.lru_cache(maxsize=8)
def _subpixel_coords(B: int, Ht: int, Wt: int, ss: int, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Sub-pixel centre coordinates (x, y), float32, in :func:`_subpixel_order`'s order."""
    order = _subpixel_order(B, Ht, Wt, ss, dev)
    x = torch.remainder(order, Wt * ss)
    y = torch.remainder(torch.div(order, Wt * ss, rounding_mode="floor"), Ht * ss)
    return x.to(torch.float32), y.to(torch.float32)


# --------------------------------------------------------------------------- numba backend

@functools.lru_cache(maxsize=1)
def _numba():
    """The compiled kernels, or None when numba is not installed."""
    try:
        import numba
    except ImportError:
        return None
    jit = numba.njit(cache=True, nogil=True, fastmath=False, error_model="numpy")
    return jit(_zbuffer_loop), jit(_resolve_loop)


def rasterise_numba(mesh: Mesh, image: torch.Tensor, Ht: int, Wt: int, ss: int):
    """numba backend of :func:`rasterise` (CPU tensors)."""
    zbuffer, resolve = _numba()
    B, C, H, W = image.shape
    m = mesh
    np_ = lambda t: t.detach().contiguous().numpy()
    f = lambda t: np_(t.to(torch.float32))
    Tn = m.ymin.numel()
    Hs, Ws = Ht * ss, Wt * ss
    buf = np.full(B * Hs * Ws, -(2 ** 63) + (2 ** 32 - 1 - Tn), dtype=np.int64)
    zbuffer(f(m.ymin), f(m.ymax), np_(m.draw), f(m.La[0]), f(m.La[1]), f(m.Lb[0]), f(m.Lb[1]),
            f(m.Ra[0]), f(m.Ra[1]), f(m.Rb[0]), f(m.Rb[1]), f(m.iz1), f(m.iz2), f(m.izA),
            np_(m.pix0.to(torch.int64)), Hs, Ws, buf)
    chans = np_(image.to(torch.float32).permute(1, 0, 2, 3).reshape(C, -1))
    out = np.zeros((B, C, Ht, Wt), np.float32)
    cnt = np.zeros((B, 1, Ht, Wt), np.float32)
    izc = np.zeros((B, 1, Ht, Wt), np.float32)
    resolve(buf, Tn, *[f(p) for p in m.nA], *[f(p) for p in m.nB], np_(m.tA.to(torch.int32)),
            np_(m.tB.to(torch.int32)), np_(m.tR.to(torch.int32)), np_(m.colour), chans, B, Ht, Wt, ss,
            out, cnt, izc)
    return torch.from_numpy(out), torch.from_numpy(cnt), torch.from_numpy(izc)


def _zbuffer_loop(ymin, ymax, draw, La0, La1, Lb0, Lb1, Ra0, Ra1, Rb0, Rb1, iz1, iz2, izA, pix0, Hs, Ws, buf):
    """Scanline z-test of every triangle into ``buf`` (int64 keys, as the torch backend)."""
    zero, one, tiny = np.float32(0.0), np.float32(1.0), np.float32(1e-30)
    wmax = np.float32(Ws - 1)
    bits = np.zeros(1, np.float32)
    ibits = bits.view(np.int32)
    for t in range(ymin.shape[0]):
        if not draw[t]:
            continue
        y0 = ymin[t]
        r0 = int(max(-y0, zero))
        r1 = int(min(ymax[t], np.float32(Hs - 1)) - y0)
        low = np.int64(0xFFFFFFFF - t)
        for r in range(r0, r1 + 1):
            rf = np.float32(r)
            lo = np.ceil(max(La1[t] * rf + La0[t], Lb1[t] * rf + Lb0[t]))
            hi = np.floor(min(Ra1[t] * rf + Ra0[t], Rb1[t] * rf + Rb0[t]))
            lo = max(lo, zero)
            hi = min(hi, wmax)
            n = int(max(hi - lo + one, zero))
            ia = iz1[t]
            iz = (iz2[t] * rf + izA[t]) + ia * lo
            p0 = pix0[t] + np.int64(r) * Ws + np.int64(lo)
            for dx in range(n):
                v = ia * np.float32(dx) + iz
                bits[0] = v if v >= tiny else tiny       # clamp_(min=1e-30); NaN stays NaN
                if v != v:
                    bits[0] = v
                key = (np.int64(ibits[0]) << 32) | low
                p = p0 + dx
                if key > buf[p]:
                    buf[p] = key


def _resolve_loop(buf, Tn, nA0, nA1, nA2, nB0, nB1, nB2, tA, tB, tR, colour, chans, B, Ht, Wt, ss,
                  out, cnt, izc):
    """Winning triangle -> nearest source pixel -> ss x ss means (same sums as the torch backend)."""
    C = chans.shape[0]
    Hs, Ws = Ht * ss, Wt * ss
    half_, zero = np.float32(0.5), np.float32(0.0)
    off = (ss - 1) // 2
    bits = np.zeros(1, np.int32)
    fbits = bits.view(np.float32)
    acc = np.zeros(C, np.float32)
    row = np.zeros(C, np.float32)
    for b in range(B):
        for ty in range(Ht):
            for tx in range(Wt):
                count = 0
                for sy in range(ss):
                    y = ty * ss + sy
                    gy = np.float32(y)
                    for sx in range(ss):
                        x = tx * ss + sx
                        key = buf[(b * Hs + y) * Ws + x]
                        t = 0xFFFFFFFF - (key & 0xFFFFFFFF)
                        bits[0] = np.int32(key >> 32)
                        inv_z = fbits[0]
                        if sy == off and sx == off:
                            izc[b, 0, ty, tx] = inv_z
                        src = -1
                        if t < Tn and colour[t]:
                            gx = np.float32(x)
                            half = inv_z * half_
                            pa = (nA1[t] * gx + nA0[t]) + nA2[t] * gy >= half
                            pb = (nB1[t] * gx + nB0[t]) + nB2[t] * gy >= half
                            src = tA[t] if pa else (tB[t] if pb else tR[t])
                            count += 1
                        for c in range(C):
                            v = chans[c, src] if src >= 0 else zero
                            if sx == 0:
                                row[c] = v
                            else:
                                row[c] = row[c] + v
                    for c in range(C):
                        acc[c] = row[c] if sy == 0 else acc[c] + row[c]
                cnt[b, 0, ty, tx] = np.float32(count)
                den = np.float32(max(count, 1))
                for c in range(C):
                    out[b, c, ty, tx] = acc[c] / den
