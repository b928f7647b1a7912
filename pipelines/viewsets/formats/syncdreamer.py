"""SyncDreamer / Zero123-style Objaverse renders and GSO evaluation folders.

Layouts (reference/multiview-formats.md section 2.1; liuyuan-pal/SyncDreamer@cc373c8
``blender_script.py``, ``ldm/data/sync_dreamer.py``, ``eval_mesh.py``)::

    <root>/target/<uid>/000.png .. 015.png            fixed ring (16 views, 30 deg, d = 1.5)
    <root>/input/<uid>/000.png .. 015.png, meta.pkl   random elevations; meta.pkl =
        [K 3x3 (corner, at 256 px), azimuths, elevations (rad), distances, poses 16x3x4 OpenCV w2c]
    <root>/uid_set.pkl                                pickle list[str]
    <gso>/<name>/000.png, 000-depth.png, ...          ring views + 16-bit linear depth:
        depth = v / 65535 (2.4 - 0.6) + 0.6, valid iff 0.63 < depth < 2.37 (``eval_mesh.py``)

Renders are RGBA on a transparent background (alpha = the render's alpha). Pickles are
loaded with :func:`pipelines.viewsets.io.load_pickle_restricted` (numpy arrays and builtins
only). SyncDreamer's K (c = 128 at 256 px) is Blender's corner convention; it becomes
127.5 here (the model itself projects with c = 128 as if centre-convention, a 0.5 px quirk
its adapter reproduces; reference 2.2).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from pipelines.camera_conventions import corner_to_centre
from pipelines.viewsets.io import load_pickle_restricted, read_rgba, read_uint16
from pipelines.viewsets.registry import Reader, register
from pipelines.viewsets.ring import RING_NAME, ring_cameras
from pipelines.viewsets.types import SequenceRef, Viewset, ViewsetError
from pipelines.viewsets.validate import stack_views

DEPTH_MIN, DEPTH_MAX = 0.6, 2.4
DEPTH_VALID_MIN, DEPTH_VALID_MAX = 0.63, 2.37
_VIEW = re.compile(r"^(\d{3})\.png$")


def decode_gso_depth(u16: np.ndarray) -> np.ndarray:
    """GSO eval depth PNG -> float32 z-depth, 0 outside (0.63, 2.37) (``read_depth_objaverse``)."""
    d = u16.astype(np.float32) / 65535.0 * (DEPTH_MAX - DEPTH_MIN) + DEPTH_MIN
    return np.where((d > DEPTH_VALID_MIN) & (d < DEPTH_VALID_MAX), d, 0.0).astype(np.float32)


def encode_gso_depth(z: np.ndarray) -> np.ndarray:
    """Inverse of :func:`decode_gso_depth` (fixtures): invalid/background -> 65535."""
    z = np.asarray(z, dtype=np.float64)
    v = np.round((np.clip(np.nan_to_num(z, posinf=DEPTH_MAX), DEPTH_MIN, DEPTH_MAX) - DEPTH_MIN)
                 / (DEPTH_MAX - DEPTH_MIN) * 65535.0)
    return np.where(np.isfinite(z) & (z > 0), v, 65535).astype(np.uint16)


def _view_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if _VIEW.match(p.name)) if path.is_dir() else []


@register
class SyncDreamerReader(Reader):
    name = "syncdreamer"

    def load(self, path: Path, *, elevation_deg: float = 30.0, distance: float = 1.5,
             focal_px_at_256: float = 280.0, ring_views: int = 16, load_depth: bool = True,
             **_: Any) -> Viewset:
        """Load one render folder: with ``meta.pkl`` its cameras (``input/<uid>``), else the
        fixed ring (``target/<uid>``, GSO folders) from :func:`~pipelines.viewsets.ring.ring_cameras`
        with the given rig. Depth from ``NNN-depth.png`` when every view has one."""
        files = _view_files(path)
        if not files:
            raise ViewsetError("missing_files", f"no NNN.png views in {path}")
        images, alphas = zip(*(read_rgba(f) for f in files))
        names = [f.name for f in files]
        idx = [int(_VIEW.match(n).group(1)) for n in names]
        H, W = images[0].shape[1:]
        meta: dict[str, Any] = {"dataset": "syncdreamer", "uid": path.name, "source_pixel_convention": "corner",
                                "background": "transparent", "mask_source": "render_alpha"}
        if (path / "meta.pkl").exists():
            m = load_pickle_restricted(path / "meta.pkl")
            try:
                K0, az, el, dist, poses = (np.asarray(x, dtype=np.float64) for x in m)
                poses = poses[idx]
            except (ValueError, TypeError, IndexError) as e:
                raise ViewsetError("malformed_metadata", f"{path}/meta.pkl: {e}") from e
            if poses.shape[1:] != (3, 4) or K0.shape != (3, 3):
                raise ViewsetError("malformed_metadata", f"{path}/meta.pkl: K {K0.shape}, poses {poses.shape}")
            s = W / 256.0                     # corner convention: exact rescale c' = c s
            Kc = K0.copy(); Kc[:2] *= s
            K = np.tile(corner_to_centre(Kc), (len(idx), 1, 1))
            w2c = np.tile(np.eye(4), (len(idx), 1, 1)); w2c[:, :3, :] = poses
            meta.update(render="random", azimuth_rad=az[idx].tolist(), elevation_rad=el[idx].tolist(),
                        distance=dist[idx].tolist())
        else:
            if max(idx) >= ring_views:
                raise ViewsetError("inconsistent_views", f"{path}: view {max(idx):03d} outside a {ring_views}-view ring")
            try:
                w2c, K = ring_cameras(ring_views, elevation_deg, distance, (H, W), focal_px_at_256)
            except ValueError as e:
                raise ViewsetError("inconsistent_views", f"{path}: {e}") from e
            w2c, K = w2c[idx], K[idx]
            meta.update(render="fixed", distance=distance,
                        ring=RING_NAME if (ring_views, elevation_deg, distance) == (16, 30.0, 1.5)
                        else f"fixed{ring_views}@{elevation_deg:g}")
        depth = None
        dfiles = [path / f"{i:03d}-depth.png" for i in idx]
        if load_depth and all(p.exists() for p in dfiles):
            depth = stack_views([torch.from_numpy(decode_gso_depth(read_uint16(p)))[None] for p in dfiles],
                                "depth", names)
        has_alpha = all(a is not None for a in alphas)
        return Viewset(images=stack_views(list(images), "image", names), K=K, w2c=w2c, names=names,
                       alpha=stack_views(list(alphas), "alpha", names) if has_alpha else None, depth=depth,
                       frame_numbers=idx, meta=meta)

    def list_sequences(self, root: Path, **_: Any) -> Iterator[SequenceRef]:
        """Training layout (``root/target``): one ref per uid for ``target/<uid>``
        (category ``"target"``) and, when present, ``input/<uid>`` (category ``"input"``,
        id suffix ``/input``); uids from ``uid_set.pkl`` (restricted unpickler) or the
        ``target/`` listing. Otherwise every sub-directory with ``NNN.png`` views (GSO)."""
        if (root / "target").is_dir():
            if (root / "uid_set.pkl").exists():
                uids = [str(u) for u in load_pickle_restricted(root / "uid_set.pkl")]
            else:
                uids = sorted(p.name for p in (root / "target").iterdir() if p.is_dir())
            for uid in uids:
                for kind in ("target", "input"):
                    d = root / kind / uid
                    if d.is_dir():
                        yield SequenceRef(f"syncdreamer/{uid}" + ("/input" if kind == "input" else ""), str(d),
                                          self.name, len(_view_files(d)), None, kind)
            return
        for d in sorted(p for p in root.iterdir() if p.is_dir()):
            files = _view_files(d)
            if files:
                yield SequenceRef(f"syncdreamer/{d.name}", str(d), self.name, len(files), None, "gso")
