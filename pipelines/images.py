"""Image decoding and ingestion (the ``source_images`` stage).

Decode with Pillow, apply the EXIF orientation, convert any mode to RGB, centre-crop to a
square and resize with LANCZOS (as IVID's dataset transform, ``datasets/base.py``). The
sample key is the sha256 of the source bytes; exact duplicates are dropped and counted.
Bad inputs never raise out of :func:`ingest`: each becomes a quarantine row (uri, reason).
"""
from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from PIL import Image, ImageOps

from pipelines.sources import SourceItem
from pipelines.stage_store import StageStore


class BadImage(ValueError):
    """An input that cannot become a training image; ``str(e)`` is the quarantine reason."""


def sample_key(data: bytes) -> str:
    """Sample key: hex sha256 of the source file's bytes (64 chars)."""
    return hashlib.sha256(data).hexdigest()


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB. Alpha is composited over white; 16/32-bit integer images
    are scaled by their dtype range, float images are taken as [0, 1]."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img).astype(np.float64)
        if img.mode == "F":
            scale = 1.0
        elif img.mode.startswith("I;16") or arr.max(initial=0) <= 65535:
            scale = 65535.0
        else:
            scale = 2.0**32 - 1
        arr8 = np.clip(np.round(arr / scale * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


@dataclass(frozen=True)
class DecodedImage:
    """Result of :func:`decode_image_info`.

    Attributes:
        image: upright RGB ``PIL.Image`` of the original size (the first frame of a
            multi-frame file).
        format: Pillow's format name (``"PNG"``, ``"GIF"``, ``"MPO"``, ...).
        frames: number of frames/pages in the file (``Image.n_frames``; 1 for still
            images; None when a later frame is too corrupt to count).
        note: ``""`` for a single-frame file, else e.g. ``"first of 3 frames (GIF)"`` -- what
            ingestion records so a user sees that only one frame was used.
    """
    image: Image.Image
    format: str
    frames: int | None = 1
    note: str = ""


def decode_image_info(data: bytes, *, min_size: int = 64) -> DecodedImage:
    """Decode bytes (any format the installed Pillow opens) to an upright RGB image, with
    its format and frame count. Multi-frame files (animated GIF/PNG/WebP, multi-page TIFF,
    MPO) give their **first frame** (Pillow's frame 0, the one a viewer shows first; for MPO
    the primary image), and the result says so in ``frames`` / ``note``.

    Args:
        data: encoded file bytes.
        min_size: smallest accepted short side, in pixels (after EXIF orientation).

    Returns:
        :class:`DecodedImage`.

    Raises:
        BadImage: empty file, not an image, truncated/corrupt data (or a format Pillow
            identifies but cannot decode here, e.g. EPS without Ghostscript), a
            decompression bomb over Pillow's ``Image.MAX_IMAGE_PIXELS``, or a short side
            below ``min_size``.
    """
    if len(data) == 0:
        raise BadImage("empty file (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
            fmt = img.format or "?"
            try:
                frames: int | None = int(getattr(img, "n_frames", 1) or 1)
            except (OSError, SyntaxError, ValueError, EOFError):
                frames = None  # a later frame is broken; the first may still decode
            img.seek(0)
            img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise BadImage(f"decompression bomb: {e}") from None
        except Image.UnidentifiedImageError:
            raise BadImage("not an image (Pillow cannot identify the format)") from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise BadImage(f"corrupt or truncated image: {e}") from None
        try:
            img = ImageOps.exif_transpose(img)
        except Exception as e:  # noqa: BLE001 - malformed EXIF must not crash ingestion
            raise BadImage(f"unreadable EXIF orientation: {e}") from None
        img = _to_rgb(img)
    if min(img.size) < min_size:
        raise BadImage(f"too small: {img.size[0]}x{img.size[1]} px, short side < min_size={min_size}")
    note = ("" if frames == 1 else f"first of {frames} frames ({fmt})" if frames
            else f"first frame ({fmt}; the frame count is unreadable, a later frame is corrupt)")
    return DecodedImage(img, fmt, frames, note)


def decode_image(data: bytes, *, min_size: int = 64) -> Image.Image:
    """Decode bytes to an upright RGB Pillow image of the original size: the ``image`` of
    :func:`decode_image_info` (first frame of a multi-frame file; raises ``BadImage``
    exactly as it does)."""
    return decode_image_info(data, min_size=min_size).image


def center_crop_resize(img: Image.Image, resolution: int) -> np.ndarray:
    """Centre-crop to a square on the short side, resize with LANCZOS.

    Returns:
        uint8 array [resolution, resolution, 3].
    """
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    img = img.crop((left, top, left + s, top + s))
    if s != resolution:
        img = img.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.uint8)


def encode_png(arr: np.ndarray, compress_level: int = 6) -> bytes:
    """Lossless PNG of a uint8 [H,W,3]/[H,W] or uint16 [H,W] array (deterministic bytes).

    ``compress_level`` is zlib's 0-9 (Pillow): 1 is ~2.5x faster than 6 for ~7% more bytes,
    the right trade for stage caches that the shard writer re-encodes anyway.
    """
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """Inverse of :func:`encode_png`: PNG bytes -> uint8 or uint16 array."""
    with Image.open(io.BytesIO(data)) as im:
        return np.array(im)


IMAGE_SCHEMA = pa.schema([("key", pa.string()), ("image_png", pa.binary()),
                          ("width", pa.int32()), ("height", pa.int32())])
INDEX_SCHEMA = pa.schema([("key", pa.string()), ("uri", pa.string()), ("label", pa.string()),
                          ("split", pa.string()), ("width", pa.int32()), ("height", pa.int32())])


@dataclass
class IngestResult:
    """Outcome of :func:`ingest`. ``index`` has :data:`INDEX_SCHEMA` (one row per accepted
    unique image, in source order); ``quarantine`` rows are ``{"uri", "reason"}``."""
    index: pa.Table
    quarantine: list[dict[str, str]] = field(default_factory=list)
    duplicates: int = 0
    computed: int = 0
    reused: int = 0


def _chunks(seq: Sequence, n: int) -> Iterable[Sequence]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


def ingest(items: Sequence[SourceItem], store: StageStore, *, resolution: int = 256,
           min_size: int = 64, chunk_size: int = 256) -> IngestResult:
    """Read, key, dedup, decode and store images chunk by chunk.

    Images whose key already has a result in ``store`` (same code version and
    parameters) are not decoded again. Peak memory is one chunk of source bytes plus its
    decoded images.

    Returns:
        :class:`IngestResult`. Never raises for a bad input: unreadable files and
        :class:`BadImage` cases become quarantine rows.
    """
    rows: dict[str, list] = {n: [] for n in INDEX_SCHEMA.names}
    quarantine: list[dict[str, str]] = []
    seen: set[str] = set()
    have = store.keys()
    duplicates = computed = reused = 0
    for chunk in _chunks(list(items), max(1, chunk_size)):
        new_rows: dict[str, list] = {n: [] for n in IMAGE_SCHEMA.names}
        for item in chunk:
            try:
                data = item.read_bytes()
            except OSError as e:
                quarantine.append({"uri": item.uri, "reason": f"unreadable file: {e.strerror or e}"})
                continue
            key = sample_key(data)
            if key in seen:
                duplicates += 1
                continue
            if key in have:
                reused += 1
                width = height = None
            else:
                try:
                    img = decode_image(data, min_size=min_size)
                except BadImage as e:
                    quarantine.append({"uri": item.uri, "reason": str(e)})
                    continue
                width, height = img.size
                new_rows["key"].append(key)
                new_rows["image_png"].append(encode_png(center_crop_resize(img, resolution)))
                new_rows["width"].append(width)
                new_rows["height"].append(height)
                computed += 1
            seen.add(key)
            for n, v in (("key", key), ("uri", item.uri), ("label", item.label),
                         ("split", item.split), ("width", width), ("height", height)):
                rows[n].append(v)
        store.write(pa.table(new_rows, schema=IMAGE_SCHEMA))
    index = pa.table(rows, schema=INDEX_SCHEMA)
    # original sizes of reused images come from the store
    if reused:
        missing = [k for k, w in zip(rows["key"], rows["width"]) if w is None]
        sizes = store.read(missing, columns=["width", "height"])
        lookup = dict(zip(sizes.column("key").to_pylist(),
                          zip(sizes.column("width").to_pylist(), sizes.column("height").to_pylist())))
        w = [lookup[k][0] if v is None else v for k, v in zip(rows["key"], rows["width"])]
        h = [lookup[k][1] if v is None else v for k, v in zip(rows["key"], rows["height"])]
        index = index.set_column(4, "width", pa.array(w, pa.int32())).set_column(5, "height", pa.array(h, pa.int32()))
    return IngestResult(index, quarantine, duplicates, computed, reused)


def load_images(store: StageStore, keys: Sequence[str]) -> np.ndarray:
    """Decoded images for ``keys`` as uint8 [N, R, R, 3] (order of ``keys``).

    Raises:
        KeyError: a key has no stored image.
    """
    t = store.read(keys, columns=["image_png"])
    return np.stack([decode_png(b) for b in t.column("image_png").to_pylist()])
