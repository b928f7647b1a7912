"""COLMAP text model reader (``cameras.txt``, ``images.txt``) with optional dense depth.

Format: colmap.github.io/format.html "Text format" and
``colmap/scripts/python/read_write_model.py``: ``cameras.txt`` lines
``CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]``; ``images.txt`` two lines per image,
``IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME`` (world-to-camera, OpenCV axes) then the
2D points (possibly empty). Pixel convention: corner (COLMAP: the centre of the top-left
pixel is (0.5, 0.5)). Dense depth maps (``stereo/depth_maps/<NAME>.geometric.bin``):
``W&H&C&`` text header then float32 column-major, z-depth
(``colmap/scripts/python/read_write_dense.py::read_array``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from pipelines.camera_conventions import corner_to_centre, pinhole_K, qvec_to_rotmat
from pipelines.viewsets.io import read_rgba, require
from pipelines.viewsets.registry import Reader, register
from pipelines.viewsets.types import SequenceRef, Viewset, ViewsetError
from pipelines.viewsets.validate import stack_views

MODEL_DIRS = ("sparse/0", "sparse", "")
#: Models whose leading params are pinhole; the listed count of trailing distortion params must be 0.
_MODELS = {"SIMPLE_PINHOLE": (3, 0), "PINHOLE": (4, 0), "SIMPLE_RADIAL": (3, 1), "RADIAL": (3, 2),
           "OPENCV": (4, 4), "FULL_OPENCV": (4, 8)}


def _lines(path: Path) -> list[str]:
    with open(require(path, "COLMAP model file"), encoding="utf-8") as f:
        return [ln.rstrip("\n") for ln in f if not ln.startswith("#")]


def read_cameras_txt(path: Path) -> dict[int, tuple[int, int, np.ndarray]]:
    """``{camera_id: (height, width, K corner convention [3,3])}``. Raises ``unsupported``
    for non-pinhole models or non-zero distortion, ``malformed_metadata`` for bad lines."""
    cams = {}
    for ln in _lines(path):
        if not ln.strip():
            continue
        p = ln.split()
        try:
            cid, model, W, H, prm = int(p[0]), p[1], int(p[2]), int(p[3]), [float(x) for x in p[4:]]
        except (IndexError, ValueError) as e:
            raise ViewsetError("malformed_metadata", f"{path}: bad line {ln!r}") from e
        if model not in _MODELS:
            raise ViewsetError("unsupported", f"{path}: camera model {model}; undistort first")
        n, nd = _MODELS[model]
        if len(prm) != n + nd or any(x != 0 for x in prm[n:]):
            raise ViewsetError("unsupported", f"{path}: camera {cid} {model} has distortion {prm[n:]}; undistort first")
        f = prm[:n]
        fx, fy, cx, cy = (f[0], f[0], f[1], f[2]) if n == 3 else f
        cams[cid] = (H, W, pinhole_K(fx, fy, cx, cy))
    return cams


def read_images_txt(path: Path) -> list[tuple[str, int, np.ndarray]]:
    """``[(name, camera_id, w2c [4,4]), ...]`` in file order."""
    out, lines = [], _lines(path)
    i = 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        p = lines[i].split()
        try:
            q, t, cid, name = [float(x) for x in p[1:5]], [float(x) for x in p[5:8]], int(p[8]), " ".join(p[9:])
        except (IndexError, ValueError) as e:
            raise ViewsetError("malformed_metadata", f"{path}: bad image line {lines[i]!r}") from e
        w2c = np.eye(4)
        w2c[:3, :3], w2c[:3, 3] = qvec_to_rotmat(q), t
        out.append((name, cid, w2c))
        i += 2                                  # skip the POINTS2D line
    return out


def read_dense_array(path: Path) -> np.ndarray:
    """COLMAP dense ``.bin`` map -> float32 [H, W] (or [H, W, C])."""
    data = require(path, "COLMAP depth map").read_bytes()
    try:
        parts = data.split(b"&", 3)
        W, H, C = int(parts[0]), int(parts[1]), int(parts[2])
        arr = np.frombuffer(parts[3], dtype="<f4", count=W * H * C)
    except (ValueError, IndexError) as e:
        raise ViewsetError("unreadable_image", f"{path}: {e}") from e
    return np.transpose(arr.reshape((W, H, C), order="F"), (1, 0, 2)).squeeze(-1 if C == 1 else None)


def write_dense_array(path: Path, a: np.ndarray) -> None:
    """Inverse of :func:`read_dense_array` for a float32 [H, W] map."""
    H, W = a.shape
    with open(path, "wb") as f:
        f.write(f"{W}&{H}&1&".encode())
        f.write(np.ascontiguousarray(a, "<f4").tobytes())   # column-major [W, H] = row-major [H, W]


def find_model_dir(path: Path) -> Path | None:
    for d in MODEL_DIRS:
        if (path / d / "cameras.txt").exists() and (path / d / "images.txt").exists():
            return path / d
    return None


@register
class ColmapReader(Reader):
    name = "colmap"

    def load(self, path: Path, *, images_dir: str = "images", depth_dir: str = "stereo/depth_maps",
             depth_suffix: str = ".geometric.bin", load_depth: bool = True, **_: Any) -> Viewset:
        """Load a COLMAP workspace ``path`` (model in ``sparse/0``, ``sparse`` or ``path``;
        images in ``images_dir``). Depth from ``depth_dir/<NAME><depth_suffix>`` when every
        image has one. Views in ``images.txt`` order."""
        mdir = find_model_dir(path)
        if mdir is None:
            raise ViewsetError("missing_files", f"no cameras.txt + images.txt in {path}/{{{','.join(MODEL_DIRS)}}}")
        cams, ims = read_cameras_txt(mdir / "cameras.txt"), read_images_txt(mdir / "images.txt")
        images, alphas, names, K, w2c = [], [], [], [], []
        for name, cid, M in ims:
            if cid not in cams:
                raise ViewsetError("malformed_metadata", f"image {name}: unknown camera {cid}")
            H, W, Kc = cams[cid]
            rgb, a = read_rgba(path / images_dir / name)
            if tuple(rgb.shape[1:]) != (H, W):
                raise ViewsetError("inconsistent_views", f"{name}: file {tuple(rgb.shape[1:])} != camera {(H, W)}")
            images.append(rgb); alphas.append(a); names.append(name); K.append(Kc); w2c.append(M)
        dpaths = [path / depth_dir / (n + depth_suffix) for n in names]
        use_depth = load_depth and bool(names) and all(p.exists() for p in dpaths)
        depth = None
        if use_depth:
            zs = [np.nan_to_num(read_dense_array(p), nan=0.0, posinf=0.0, neginf=0.0) for p in dpaths]
            depth = stack_views([torch.from_numpy(np.maximum(z, 0).astype(np.float32))[None] for z in zs], "depth", names)
        has_alpha = bool(alphas) and all(a is not None for a in alphas)
        return Viewset(images=stack_views(images, "image", names), K=corner_to_centre(np.stack(K)) if K else np.zeros((0, 3, 3)),
                       w2c=np.stack(w2c) if w2c else np.zeros((0, 4, 4)), names=names,
                       alpha=stack_views(alphas, "alpha", names) if has_alpha else None, depth=depth,
                       meta={"dataset": "colmap", "sequence": path.name, "source_pixel_convention": "corner",
                             "mask_source": "rgba" if has_alpha else "none", "background": "real"})

    def list_sequences(self, root: Path, **_: Any) -> Iterator[SequenceRef]:
        """Every directory under ``root`` (sorted, not nested inside another) with a model."""
        seen: list[Path] = []
        for d in sorted([root] + [p for p in root.rglob("*") if p.is_dir()]):
            if any(s in d.parents for s in seen) or find_model_dir(d) is None:
                continue
            seen.append(d)
            n = len(read_images_txt(find_model_dir(d) / "images.txt"))
            rel = d.relative_to(root).as_posix()
            yield SequenceRef(f"colmap/{rel if rel != '.' else root.name}", str(d), self.name, n)
