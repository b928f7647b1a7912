"""nerfstudio / instant-ngp ``transforms.json`` reader.

Format (docs.nerf.studio "Data conventions" and ``nerfstudio/data/dataparsers/
nerfstudio_dataparser.py``; reference/multiview-formats.md section 5): ``frames[i]`` has
``file_path`` and an OpenGL camera-to-world ``transform_matrix``; intrinsics ``fl_x, fl_y,
cx, cy, w, h`` at the top level, any of which a frame may override; instant-ngp / NeRF
synthetic give ``camera_angle_x`` (``fl_x = w / (2 tan(camera_angle_x / 2))``, ``cx = w/2``)
instead. Pixel convention: corner (nerfstudio adds +0.5 when casting rays). Optional per
frame: ``mask_path`` (8-bit, foreground/kept pixels > 0) and ``depth_file_path`` (16-bit
PNG scaled by ``depth_unit_scale_factor``, nerfstudio default 1e-3 = millimetres, or a
``.npy`` float array), both z-depth. Distortion coefficients other than 0 are refused.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from pipelines.camera_conventions import corner_to_centre, opengl_c2w_to_opencv_w2c, pinhole_K
from pipelines.viewsets.io import read_gray, read_json, read_rgba, read_uint16, require
from pipelines.viewsets.registry import Reader, register
from pipelines.viewsets.types import SequenceRef, Viewset, ViewsetError
from pipelines.viewsets.validate import stack_views

_DISTORTION = ("k1", "k2", "k3", "k4", "p1", "p2")


def _resolve(base: Path, rel: str) -> Path:
    p = base / rel
    if p.suffix == "" and not p.exists():
        p = p.with_suffix(".png")       # NeRF-synthetic file_path has no extension
    return p


def frame_intrinsics(meta: dict, frame: dict, hw: tuple[int, int]) -> np.ndarray:
    """Corner-convention K of one frame (frame keys override the top level); float64 [3,3].

    Raises: ViewsetError ``unsupported`` (non-zero distortion), ``malformed_metadata``.
    """
    g = lambda k: frame.get(k, meta.get(k))
    if any(g(k) not in (None, 0, 0.0) for k in _DISTORTION):
        raise ViewsetError("unsupported", "distorted camera (k1..k4/p1/p2 != 0); undistort first")
    H, W = hw
    w, h = g("w") or W, g("h") or H
    if (int(h), int(w)) != (H, W):
        raise ViewsetError("inconsistent_views", f"{frame.get('file_path')}: file is {W}x{H}, json says {w}x{h}")
    fx, fy = g("fl_x"), g("fl_y")
    if fx is None and g("camera_angle_x") is not None:
        fx = W / (2.0 * math.tan(float(g("camera_angle_x")) / 2.0))
    if fy is None and g("camera_angle_y") is not None:
        fy = H / (2.0 * math.tan(float(g("camera_angle_y")) / 2.0))
    fx, fy = (fy if fx is None else fx), (fx if fy is None else fy)
    if fx is None:
        raise ViewsetError("malformed_metadata", "no focal length (fl_x/fl_y/camera_angle_x)")
    cx, cy = g("cx"), g("cy")
    return pinhole_K(float(fx), float(fy), W / 2.0 if cx is None else float(cx), H / 2.0 if cy is None else float(cy))


@register
class TransformsJsonReader(Reader):
    name = "transforms_json"

    def load(self, path: Path, *, filename: str = "transforms.json", depth_unit_scale_factor: float = 1e-3,
             load_depth: bool = True, **_: Any) -> Viewset:
        """Load ``path/transforms.json`` (frames in file order).

        Args:
            filename: the JSON file in ``path``; depth_unit_scale_factor: metres per stored
                depth unit for PNG depth (nerfstudio's default 1e-3); load_depth: read
                ``depth_file_path`` when every frame has one.
        Returns: :class:`Viewset`; alpha from ``mask_path`` (else the image's alpha channel,
            else None); ``meta["source_pixel_convention"] = "corner"``.
        """
        meta_json = read_json(require(path / filename, "transforms.json"))
        frames = meta_json.get("frames") if isinstance(meta_json, dict) else None
        if not isinstance(frames, list):
            raise ViewsetError("malformed_metadata", f"{path / filename}: no frames list")
        images, alphas, depths, names, K, c2w = [], [], [], [], [], []
        use_depth = load_depth and bool(frames) and all(f.get("depth_file_path") for f in frames)
        for fr in frames:
            try:
                rel, M = fr["file_path"], np.asarray(fr["transform_matrix"], dtype=np.float64)
            except (KeyError, TypeError, ValueError) as e:
                raise ViewsetError("malformed_metadata", f"frame without file_path/transform_matrix: {e}") from e
            if M.shape not in ((4, 4), (3, 4)):
                raise ViewsetError("malformed_metadata", f"{rel}: transform_matrix shape {M.shape}")
            rgb, a = read_rgba(_resolve(path, rel))
            if fr.get("mask_path") or meta_json.get("mask_path"):
                a = read_gray(path / (fr.get("mask_path") or meta_json.get("mask_path")))
            images.append(rgb)
            alphas.append(a)
            names.append(str(_resolve(path, rel).relative_to(path)))
            K.append(frame_intrinsics(meta_json, fr, tuple(rgb.shape[1:])))
            c2w.append(M)
            if use_depth:
                dp = path / fr["depth_file_path"]
                if dp.suffix == ".npy":
                    z = np.load(require(dp, "depth"), allow_pickle=False).astype(np.float32)
                else:
                    z = read_uint16(dp).astype(np.float32) * np.float32(depth_unit_scale_factor)
                depths.append(torch.from_numpy(np.where(np.isfinite(z) & (z > 0), z, 0)).float()[None])
        has_alpha = bool(alphas) and all(a is not None for a in alphas)
        return Viewset(
            images=stack_views(images, "image", names), K=corner_to_centre(np.stack(K)),
            w2c=opengl_c2w_to_opencv_w2c(np.stack(c2w)) if c2w else np.zeros((0, 4, 4)), names=names,
            alpha=stack_views(alphas, "mask", names) if has_alpha else None,
            depth=stack_views(depths, "depth", names) if use_depth else None,
            meta={"dataset": "transforms_json", "sequence": path.name, "source_pixel_convention": "corner",
                  "mask_source": "mask_path" if has_alpha else "none", "background": "real"})

    def list_sequences(self, root: Path, *, filename: str = "transforms.json", **_: Any) -> Iterator[SequenceRef]:
        """Every directory under ``root`` (recursively, sorted) holding ``filename``."""
        for p in sorted(root.rglob(filename)):
            try:
                n = len(read_json(p).get("frames", []))
            except (ViewsetError, AttributeError):
                n = None
            rel = p.parent.relative_to(root).as_posix()
            yield SequenceRef(f"transforms_json/{rel if rel != '.' else root.name}", str(p.parent),
                              self.name, n, None, None, (("filename", filename),) if filename != "transforms.json" else ())
