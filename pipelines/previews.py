"""Small preview images for asset metadata (PNG bytes shown as Markdown in Dagster).

The Dagster UI (1.13, ``ui-core/src/metadata/MetadataEntry.tsx``) renders a Markdown
metadata value inline on the asset page only when its text is shorter than 1000
characters; longer ones hide behind "[Show Markdown]". :func:`markdown_thumbnail` therefore
re-encodes a preview as a small WebP data URI that fits; :func:`markdown_image` keeps the
full-size PNG for the dialog.
"""
from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from pipelines.text import escape_md


def colorize(values: np.ndarray, cmap: str = "turbo", invalid: np.ndarray | None = None,
             percentiles: tuple[float, float] = (2.0, 98.0)) -> np.ndarray:
    """Map a float [H,W] array (e.g. disparity, any unit) to uint8 RGB [H,W,3] with a
    matplotlib colormap, normalised per image: the ``percentiles`` (in %) of the finite,
    valid values map to the ends of the colormap (robust to a few extreme pixels). An image
    whose valid values span less than 1e-6 of their magnitude (e.g. a constant map from a
    tiny random model) maps to the middle colour, so it stays visible. ``invalid`` pixels
    (bool [H,W]) and non-finite ones are black; the default colormap (turbo) never reaches black.
    """
    from matplotlib import colormaps

    v = np.asarray(values, dtype=np.float64)
    bad = ~np.isfinite(v) if invalid is None else (np.asarray(invalid, bool) | ~np.isfinite(v))
    good = v[~bad]
    lo, hi = (np.percentile(good, percentiles[0]), np.percentile(good, percentiles[1])) if good.size else (0.0, 0.0)
    if hi - lo <= 1e-6 * max(abs(lo), abs(hi), 1e-12):
        t = np.full(v.shape, 0.5)
    else:
        t = np.clip((np.where(bad, lo, v) - lo) / (hi - lo), 0, 1)
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


#: The Dagster UI renders Markdown metadata inline below this many characters.
INLINE_MARKDOWN_LIMIT = 1000


def markdown_thumbnail(png: bytes, alt: str = "preview", limit: int = INLINE_MARKDOWN_LIMIT) -> str | None:
    """Inline Markdown image (WebP data URI) of ``png`` re-encoded small enough that the whole
    Markdown text has fewer than ``limit`` characters; the largest width (<= the original)
    and quality that fit are used. None when even a 48 px wide, quality-10 WebP is too long.
    ``alt`` is escaped (:func:`pipelines.text.escape_md`)."""
    im = Image.open(io.BytesIO(png)).convert("RGB")
    head = f"![{escape_md(alt)}](data:image/webp;base64,"
    for width in (320, 256, 224, 192, 160, 128, 96, 64, 48):
        if width > im.width and width != 48:
            continue
        small = im.resize((width, max(1, round(im.height * width / im.width))), Image.Resampling.LANCZOS)
        for quality in (70, 50, 30, 10):
            buf = io.BytesIO()
            small.save(buf, format="WEBP", quality=quality, method=6)
            text = f"{head}{base64.b64encode(buf.getvalue()).decode()})"
            if len(text) < limit:
                return text
    return None


def markdown_image(png: bytes, alt: str = "preview") -> str:
    """Inline Markdown image (data URI) for Dagster ``MetadataValue.md``; ``alt`` is escaped
    (:func:`pipelines.text.escape_md`)."""
    return f"![{escape_md(alt)}](data:image/png;base64,{base64.b64encode(png).decode()})"
