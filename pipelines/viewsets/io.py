"""File decoding shared by the viewset readers; every failure becomes a :class:`ViewsetError`.

Images are decoded with Pillow and never EXIF-rotated (the cameras belong to the stored
pixel grid). Formats: 8-bit RGB/RGBA/L/P, 16-bit greyscale PNG (depth).
"""
from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipelines.viewsets.types import ViewsetError


def require(path: Path, what: str = "file") -> Path:
    """``path`` if it exists, else ``ViewsetError("missing_files")`` naming it."""
    if not Path(path).exists():
        raise ViewsetError("missing_files", f"{what} not found: {path}")
    return Path(path)


def read_array(path: Path) -> np.ndarray:
    """Decoded pixels as a numpy array (uint8 [H,W(,C)] or uint16/int32 [H,W] for 16-bit PNG).

    Raises: ViewsetError ``missing_files`` / ``unreadable_image``.
    """
    require(path, "image")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode in ("1", "LA", "CMYK", "YCbCr"):
                im = im.convert({"1": "L", "LA": "RGBA", "CMYK": "RGB", "YCbCr": "RGB"}[im.mode])
            return np.array(im)
    except ViewsetError:
        raise
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise ViewsetError("unreadable_image", f"{path}: {type(e).__name__}: {e}") from e


def read_rgba(path: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """RGB float32 [3,H,W] in [0,1] and alpha float32 [1,H,W] (None if the file has none)."""
    a = read_array(path)
    if a.dtype != np.uint8:
        raise ViewsetError("unreadable_image", f"{path}: expected 8-bit colour, got {a.dtype}")
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, -1)
    t = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float() / 255.0
    return (t[:3], t[3:4]) if t.shape[0] == 4 else (t[:3], None)


def read_gray(path: Path) -> torch.Tensor:
    """8-bit (or 1-bit) greyscale mask -> float32 [1,H,W] in [0,1] (``value / 255``; a
    colour file uses its first channel)."""
    a = read_array(path)
    if a.dtype != np.uint8:
        raise ViewsetError("unreadable_image", f"{path}: expected 8-bit mask, got {a.dtype}")
    if a.ndim == 3:
        a = a[..., 0]
    return torch.from_numpy(np.ascontiguousarray(a)).float()[None] / 255.0


def read_uint16(path: Path) -> np.ndarray:
    """16-bit greyscale PNG -> uint16 [H,W]. Raises ``unreadable_image`` for other depths."""
    a = read_array(path)
    if a.ndim != 2 or a.dtype not in (np.uint16, np.int32, np.uint32):
        raise ViewsetError("unreadable_image", f"{path}: expected a 16-bit greyscale PNG, "
                                               f"got {a.dtype} {a.shape}")
    if a.dtype != np.uint16:
        if a.min() < 0 or a.max() > 65535:
            raise ViewsetError("unreadable_image", f"{path}: values outside uint16")
        a = a.astype(np.uint16)
    return a


def write_uint16_png(path: Path, a: np.ndarray) -> None:
    """Write uint16 [H,W] as a 16-bit greyscale PNG (lossless; inverse of :func:`read_uint16`)."""
    Image.fromarray(np.ascontiguousarray(a, dtype=np.uint16)).save(path)


def read_json(path: Path, gz: bool = False):
    """JSON (``gz``: gzip-compressed, CO3D ``.jgz``). Raises missing / ``malformed_metadata``."""
    require(path, "metadata")
    try:
        if gz:
            with gzip.open(path, "rt", encoding="utf-8") as f:
                return json.load(f)
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError, EOFError) as e:
        raise ViewsetError("malformed_metadata", f"{path}: {type(e).__name__}: {e}") from e


_NUMPY_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
}
_BUILTIN_GLOBALS = {"list", "tuple", "dict", "set", "frozenset", "int", "float", "complex",
                    "str", "bytes", "bytearray", "bool", "slice", "range"}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _NUMPY_GLOBALS:
            # numpy 2 moved numpy.core to numpy._core; old pickles name the former.
            if module.startswith("numpy.core"):
                module = module.replace("numpy.core", "numpy._core" if hasattr(np, "_core") else "numpy.core")
            return super().find_class(module, name)
        if module == "builtins" and name in _BUILTIN_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")


def load_pickle_restricted(path: Path):
    """Load a pickle that may hold **only numpy arrays/scalars and builtin containers**.

    Security: a pickle can run arbitrary code on load; SyncDreamer's ``meta.pkl``,
    ``camera-16.pkl`` and ``uid_set.pkl`` come from third-party downloads, so this uses an
    ``Unpickler`` whose ``find_class`` allows only ``numpy.ndarray``, ``numpy.dtype``,
    numpy's array/scalar reconstructors and plain builtin types; any other global raises.
    Raises: ViewsetError ``missing_files``, or ``malformed_metadata`` (also for a forbidden
    global).
    """
    require(path, "pickle")
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f).load()
    except Exception as e:
        raise ViewsetError("malformed_metadata", f"{path}: {type(e).__name__}: {e}") from e
