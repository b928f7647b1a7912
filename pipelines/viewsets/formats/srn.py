"""ShapeNet-SRN reader (PixelNeRF release: ``<split>/<object_id>/{rgb/NNNNNN.png,
pose/NNNNNN.txt, intrinsics.txt}``).

Format (reference/multiview-formats.md section 3.1; sxyu/pixel-nerf@d0bbb06
``src/data/SRNDataset.py``; vsitzmann/scene-representation-networks ``data_util.py::
parse_intrinsics``): ``pose/*.txt`` = 16 floats, a 4x4 camera-to-world with **OpenCV**
camera axes; ``intrinsics.txt`` line 1 ``f cx cy 0.``, line 2 the grid barycentre, line 3
the scale, last line ``H W`` (the size the values refer to; rescaled exactly, corner
convention, when the images differ). Corner pixel convention (``cx = 64`` at 128 px).
Images are RGB on a white background; alpha = "any channel < 255" (PixelNeRF's mask rule).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pipelines.camera_conventions import corner_to_centre, opencv_c2w_to_w2c, pinhole_K
from pipelines.viewsets.io import read_rgba, require
from pipelines.viewsets.registry import Reader, register
from pipelines.viewsets.types import SequenceRef, Viewset, ViewsetError
from pipelines.viewsets.validate import stack_views


def read_intrinsics_txt(path: Path) -> tuple[float, float, float, int, int]:
    """``(f, cx, cy, H, W)`` from an SRN ``intrinsics.txt`` (first and last lines)."""
    with open(require(path, "SRN intrinsics.txt"), encoding="utf-8") as fh:
        lines = [ln.split() for ln in fh if ln.strip()]
    try:
        f, cx, cy = (float(v) for v in lines[0][:3])
        H, W = (int(float(v)) for v in lines[-1][:2])
    except (IndexError, ValueError) as e:
        raise ViewsetError("malformed_metadata", f"{path}: {e}") from e
    return f, cx, cy, H, W


def read_pose_txt(path: Path) -> np.ndarray:
    """4x4 float64 camera-to-world from 16 whitespace-separated floats (any line layout)."""
    try:
        return np.loadtxt(require(path, "SRN pose"), dtype=np.float64).reshape(4, 4)
    except ValueError as e:
        raise ViewsetError("malformed_metadata", f"{path}: {e}") from e


@register
class SRNReader(Reader):
    name = "srn"

    def load(self, path: Path, *, alpha_from_white: bool = True, **_: Any) -> Viewset:
        """Load one object ``path``; views sorted by file name; a view whose pose file is
        missing raises ``missing_files``. ``alpha_from_white``: alpha = any channel < 255."""
        f, cx, cy, H0, W0 = read_intrinsics_txt(path / "intrinsics.txt")
        files = sorted(p for p in (path / "rgb").glob("*.png")) if (path / "rgb").is_dir() else []
        if not files:
            raise ViewsetError("missing_files", f"no rgb/*.png in {path}")
        images, c2w = [], []
        for p in files:
            images.append(read_rgba(p)[0])
            c2w.append(read_pose_txt(path / "pose" / (p.stem + ".txt")))
        names = [f"rgb/{p.name}" for p in files]
        imgs = stack_views(images, "image", names)
        H, W = imgs.shape[2:]
        sx, sy = W / W0, H / H0                     # corner convention: exact c' = c s
        K = corner_to_centre(pinhole_K(f * sx, f * sy, cx * sx, cy * sy))
        alpha = (imgs < 1.0).any(1, keepdim=True).float() if alpha_from_white else None
        return Viewset(images=imgs, K=np.tile(K, (len(files), 1, 1)), w2c=opencv_c2w_to_w2c(np.stack(c2w)),
                       names=names, alpha=alpha, frame_numbers=[int(p.stem) if p.stem.isdigit() else i
                                                                for i, p in enumerate(files)],
                       meta={"dataset": "srn", "category": path.parent.name, "sequence": path.name,
                             "source_pixel_convention": "corner", "background": "white",
                             "mask_source": "white_background" if alpha_from_white else "none"})

    def list_sequences(self, root: Path, **_: Any) -> Iterator[SequenceRef]:
        """Object dirs under ``root`` (a ``cars_train``-style split dir, or a dir of them):
        those with ``intrinsics.txt``; ``split`` from a ``*_train|_val|_test`` parent name."""
        dirs = sorted(p.parent for p in root.glob("intrinsics.txt")) or \
            sorted(p.parent for p in root.glob("*/intrinsics.txt")) or sorted(p.parent for p in root.glob("*/*/intrinsics.txt"))
        for d in dirs:
            tail = d.parent.name.rsplit("_", 1)[-1]
            split = tail if tail in ("train", "val", "test") else None
            n = len(list((d / "rgb").glob("*.png"))) if (d / "rgb").is_dir() else 0
            yield SequenceRef(f"srn/{d.parent.name}/{d.name}", str(d), self.name, n, split, d.parent.name)
