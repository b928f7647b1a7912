"""Small preview images for asset metadata (PNG bytes shown as Markdown in Dagster)."""
from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from pipelines.text import escape_md


def colorize(values: np.ndarray, cmap: str = "magma", invalid: np.ndarray | None = None) -> np.ndarray:
    """Map a float [H,W] array to uint8 RGB [H,W,3] (min-max over finite values,
    matplotlib colormap); ``invalid`` pixels (and non-finite ones) are black."""
    from matplotlib import colormaps

    v = np.asarray(values, dtype=np.float64)
    bad = ~np.isfinite(v) if invalid is None else (invalid | ~np.isfinite(v))
    good = v[~bad]
    lo, hi = (good.min(), good.max()) if good.size else (0.0, 1.0)
    t = np.clip((np.where(bad, lo, v) - lo) / max(hi - lo, 1e-12), 0, 1)
    rgb = (colormaps[cmap](t)[..., :3] * 255).round().astype(np.uint8)
    rgb[bad] = 0
    return rgb


def as_rgb(arr: np.ndarray) -> np.ndarray:
    """uint8 [H,W] or bool -> [H,W,3]; uint8 [H,W,3] unchanged."""
    a = np.asarray(arr)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    return np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a


def grid_png(rows: list[list[np.ndarray]], tile: int = 96, pad: int = 2) -> bytes:
    """PNG of a grid: ``rows[i][j]`` uint8 [H,W,3] (or [H,W]/bool), each resized to ``tile``."""
    ncols = max((len(r) for r in rows), default=0)
    canvas = Image.new("RGB", (ncols * (tile + pad) + pad, len(rows) * (tile + pad) + pad), (255, 255, 255))
    for i, row in enumerate(rows):
        for j, a in enumerate(row):
            im = Image.fromarray(as_rgb(a)).resize((tile, tile), Image.Resampling.BILINEAR)
            canvas.paste(im, (pad + j * (tile + pad), pad + i * (tile + pad)))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def markdown_image(png: bytes, alt: str = "preview") -> str:
    """Inline Markdown image (data URI) for Dagster ``MetadataValue.md``; ``alt`` is escaped
    (:func:`pipelines.text.escape_md`)."""
    return f"![{escape_md(alt)}](data:image/png;base64,{base64.b64encode(png).decode()})"
