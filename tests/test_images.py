"""Ingestion: decoding rules, every kind of bad input quarantined, dedup, reuse."""
import io

import numpy as np
import pytest
from PIL import Image

from pipelines.images import BadImage, center_crop_resize, decode_image, decode_png, ingest, sample_key
from pipelines.sources import SourceItem, folder_items, manifest_items, sample_items
from pipelines.stage_store import StageStore


def _bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _gradient(w=120, h=90) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, 77)], -1).astype(np.uint8)


def test_sample_source_is_real_photographs():
    items = sample_items()
    assert len(items) == 8
    for it in items:
        img = decode_image(it.read_bytes(), min_size=64)
        assert img.mode == "RGB" and min(img.size) >= 256


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "I;16", "1"])
def test_any_mode_becomes_rgb(mode):
    base = Image.fromarray(_gradient())
    img = {"L": base.convert("L"), "P": base.convert("P"), "RGBA": base.convert("RGBA"), "LA": base.convert("LA"),
           "CMYK": base.convert("CMYK"), "1": base.convert("1"),
           "I;16": Image.fromarray((np.asarray(base.convert("L")).astype(np.uint16) * 257))}[mode]
    fmt = "JPEG" if mode == "CMYK" else ("TIFF" if mode == "I;16" else "PNG")
    out = decode_image(_bytes(img, fmt), min_size=8)
    assert out.mode == "RGB" and out.size == (120, 90)
    arr = np.asarray(out)
    if mode in ("L", "I;16"):  # grey value preserved; 16-bit scaled by 65535 -> 255
        ref = np.asarray(base.convert("L"))
        assert np.abs(arr[..., 0].astype(int) - ref).max() <= 1


def test_alpha_composited_over_white():
    rgba = np.zeros((80, 80, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:40, :, 3] = 255  # top opaque red, bottom fully transparent
    out = np.asarray(decode_image(_bytes(Image.fromarray(rgba, "RGBA")), min_size=8))
    assert (out[:40] == [255, 0, 0]).all() and (out[40:] == [255, 255, 255]).all()


def test_exif_orientation_applied():
    arr = _gradient(120, 90)
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    out = decode_image(_bytes(img, "JPEG", exif=exif.tobytes(), quality=95), min_size=8)
    assert out.size == (90, 120)
    expected = np.asarray(img.transpose(Image.Transpose.ROTATE_270))
    assert np.abs(np.asarray(out).astype(int) - expected).mean() < 4


def test_center_crop_resize_geometry():
    arr = np.zeros((100, 300, 3), np.uint8)
    arr[:, 100:200] = 255  # the centre square is white, sides black
    out = center_crop_resize(Image.fromarray(arr), 50)
    assert out.shape == (50, 50, 3) and out.dtype == np.uint8 and out.min() >= 250


def _bad_files(tmp_path):
    good = _bytes(Image.fromarray(_gradient(128, 96)))
    files = {
        "empty.png": b"",
        "truncated.png": good[: len(good) // 2],
        "corrupt.jpg": b"\xff\xd8\xff\xe0" + b"garbage" * 50,
        "notes.png": b"this is a text file, not an image",
        "tiny.png": _bytes(Image.fromarray(_gradient(40, 30))),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return good


def test_bad_inputs_quarantined_with_reason(tmp_path, monkeypatch):
    good = _bad_files(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "good.png").write_bytes(good)
    (tmp_path / "sub" / "copy.png").write_bytes(good)  # exact duplicate
    Image.fromarray(_gradient(200, 150)).save(tmp_path / "good2.webp", lossless=True)
    Image.fromarray(_gradient(300, 200)).save(tmp_path / "bomb.bmp")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300 * 200 - 1)  # 'bomb.bmp' exceeds it
    store = StageStore(tmp_path / "data", "source_images", "v1")
    res = ingest(folder_items(tmp_path), store, resolution=64, min_size=64)
    reasons = {r["uri"].rsplit("/", 1)[1]: r["reason"] for r in res.quarantine}
    assert set(reasons) == {"empty.png", "truncated.png", "corrupt.jpg", "notes.png", "tiny.png", "bomb.bmp"}
    assert "empty" in reasons["empty.png"]
    assert "truncated" in reasons["truncated.png"] or "corrupt" in reasons["truncated.png"]
    assert "not an image" in reasons["notes.png"]
    assert "too small" in reasons["tiny.png"]
    assert "decompression bomb" in reasons["bomb.bmp"]
    assert res.index.num_rows == 2 and res.duplicates == 1
    assert sample_key(good) in res.index.column("key").to_pylist()
    stored = decode_png(store.read([sample_key(good)]).column("image_png")[0].as_py())
    assert stored.shape == (64, 64, 3)


def test_reingest_reuses_and_counts(tmp_path):
    for i in range(3):
        Image.fromarray(np.roll(_gradient(), i * 7, axis=1)).save(tmp_path / f"{i}.png")
    store = StageStore(tmp_path / "data", "source_images", "v1")
    first = ingest(folder_items(tmp_path), store, resolution=32, min_size=16, chunk_size=2)
    Image.fromarray(np.roll(_gradient(), 50, axis=1)).save(tmp_path / "new.png")
    second = ingest(folder_items(tmp_path), store, resolution=32, min_size=16, chunk_size=2)
    assert (first.computed, first.reused) == (3, 0)
    assert (second.computed, second.reused) == (1, 3)
    assert second.index.column("width").to_pylist() == [120] * 4


def test_manifest_source_csv_relative_paths(tmp_path):
    Image.fromarray(_gradient()).save(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("path,label,split\na.png,cat,train\nmissing.png,dog,\n")
    items = manifest_items(tmp_path / "m.csv")
    assert items[0] == SourceItem(str(tmp_path / "a.png"), "cat", "train")
    res = ingest(items, StageStore(tmp_path / "d", "s", "v"), resolution=32, min_size=16)
    assert res.index.column("label").to_pylist() == ["cat"]
    assert res.quarantine[0]["uri"].endswith("missing.png") and "unreadable" in res.quarantine[0]["reason"]


def test_bad_image_is_value_error():
    with pytest.raises(BadImage):
        decode_image(b"", min_size=1)
