"""Sources: every file under a folder or row of a manifest is accounted for (item or skipped
row with a reason); multi-frame images decode to their first frame, recorded; manifest splits."""
from __future__ import annotations

import io
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.images import decode_image, decode_image_info, ingest
from pipelines.sources import (EmptySourceError, SourceItem, SourceListing, folder_items, image_extensions,
                               list_source, manifest_items)
from pipelines.stage_store import StageStore


def _frames(n=3, w=100, h=80):
    return [Image.fromarray(np.full((h, w, 3), 10 + 100 * i, np.uint8)) for i in range(n)]


def _messy_folder(root):
    """A PNG, an animated GIF, a duplicate, a broken .jpg, a .txt, a dangling symlink, a file
    symlink loop, a directory symlink back to the root, a good symlink. Returns the names."""
    (root / "sub").mkdir()
    Image.fromarray(np.arange(96 * 96 * 3, dtype=np.uint32).reshape(96, 96, 3).astype(np.uint8)).save(root / "a.png")
    f = _frames()
    f[0].save(root / "sub" / "anim.GIF", save_all=True, append_images=f[1:], duration=50, loop=0)
    (root / "sub" / "copy.png").write_bytes((root / "a.png").read_bytes())
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    (root / "notes.txt").write_text("hello")
    (root / "README").write_text("no extension")
    os.symlink(root / "gone.png", root / "dangling.png")
    os.symlink("self.png", root / "self.png")  # a link to itself: ELOOP
    os.symlink(root, root / "sub" / "up")  # directory link back to an ancestor
    os.symlink(root / "a.png", root / "sub" / "link.png")  # a good link: an item (dedup later)


def test_folder_listing_accounts_for_every_entry(tmp_path):
    _messy_folder(tmp_path)
    listing = list_source("folder", str(tmp_path))
    assert isinstance(listing, SourceListing)
    items = {os.path.relpath(i.uri, tmp_path) for i in listing.items}
    skipped = {os.path.relpath(r["uri"], tmp_path): r["reason"] for r in listing.skipped}
    assert items == {"a.png", "broken.jpg", "sub/anim.GIF", "sub/copy.png", "sub/link.png"}
    assert set(skipped) == {"notes.txt", "README", "dangling.png", "self.png", "sub/up"}
    assert "not an image type" in skipped["notes.txt"] and "'.txt'" in skipped["notes.txt"]
    assert "no file extension" in skipped["README"]
    assert skipped["dangling.png"].startswith("dangling symlink") and "gone.png" in skipped["dangling.png"]
    assert skipped["self.png"].startswith("symlink loop")
    assert skipped["sub/up"].startswith("symlink loop") and str(tmp_path) in skipped["sub/up"]
    # every directory entry (recursively, symlinks not followed) appears exactly once
    entries = {os.path.relpath(os.path.join(d, n), tmp_path) for d, ds, fs in os.walk(tmp_path) for n in ds + fs}
    entries -= {"sub"}  # a real directory is walked, not listed
    assert sorted(items | set(skipped)) == sorted(entries)
    assert len(items) + len(skipped) == len(entries) == listing.listed
    assert [i.uri for i in listing] == sorted(i.uri for i in listing.items)  # a Sequence of items, sorted
    assert len(listing) == len(listing.items) and listing[0] == listing.items[0]

    # ingestion closes the books: listed = accepted + quarantined + duplicates + skipped
    res = ingest(listing.items, StageStore(tmp_path / "data", "source_images", "v1"), resolution=32, min_size=16)
    accepted = res.index.num_rows
    assert (accepted, len(res.quarantine), res.duplicates) == (2, 1, 2)  # a.png+anim; broken; copy+link
    assert listing.listed == accepted + len(res.quarantine) + res.duplicates + len(listing.skipped)


def test_every_pillow_format_is_listed(tmp_path):
    exts = image_extensions()
    assert {".gif", ".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".ico", ".tga", ".ppm"} <= exts
    assert ".txt" not in exts and ".pdf" not in exts  # Pillow writes PDF but cannot read it
    for ext, fmt in ((".ico", "ICO"), (".tga", "TGA"), (".ppm", "PPM"), (".Gif", "GIF")):
        Image.fromarray(np.full((64, 64, 3), 7, np.uint8)).save(tmp_path / f"x{ext.lower()}a{ext}", format=fmt)
    listing = folder_items(tmp_path)
    assert len(listing.items) == 4 and not listing.skipped
    for it in listing.items:  # and each of them decodes
        assert decode_image(it.read_bytes(), min_size=16).size == (64, 64)


@pytest.mark.parametrize("fmt,kw", [("GIF", {"duration": 50}), ("PNG", {}), ("WEBP", {"lossless": True}),
                                    ("TIFF", {})])
def test_multi_frame_gives_first_frame_and_says_so(fmt, kw):
    f = _frames(3)
    buf = io.BytesIO()
    f[0].save(buf, format=fmt, save_all=True, append_images=f[1:], **kw)
    d = decode_image_info(buf.getvalue(), min_size=16)
    assert (d.format, d.frames) == (fmt, 3) and d.note == f"first of 3 frames ({fmt})"
    assert d.image.mode == "RGB" and d.image.size == (100, 80)
    assert np.abs(np.asarray(d.image).astype(int) - 10).max() <= 2  # frame 0, not frames 1/2 (110, 210)
    single = io.BytesIO()
    f[1].save(single, format="PNG")
    s = decode_image_info(single.getvalue(), min_size=16)
    assert (s.frames, s.note) == (1, "") and np.asarray(s.image)[0, 0, 0] == 110


def test_manifest_split_column_carried_and_validated(tmp_path):
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    pq.write_table(pa.table({"path": ["a.png", "b.png", None, str(tmp_path / "c.png")],
                             "label": ["cat", None, "x", "dog"], "split": ["val", "", "test", None]}),
                   tmp_path / "m.parquet")
    listing = list_source("manifest", str(tmp_path / "m.parquet"))
    assert listing.items == [SourceItem(str(tmp_path / "a.png"), "cat", "val"),
                             SourceItem(str(tmp_path / "b.png"), None, None),  # missing: ingest quarantines it
                             SourceItem(str(tmp_path / "c.png"), "dog", None)]
    assert listing.skipped == [{"uri": f"{tmp_path / 'm.parquet'}#row=3", "reason": "manifest row has an empty path"}]
    (tmp_path / "bad.csv").write_text("path,split\na.png,train\nb.png,validation\nc.png,Test\n")
    with pytest.raises(ValueError, match=r"'split' must be one of \('train', 'val', 'test'\).*row 2: 'validation'"):
        manifest_items(tmp_path / "bad.csv")
    assert manifest_items(tmp_path / "bad.csv", splits=("train", "validation", "Test"))[1].split == "validation"


def test_empty_sources_fail_clearly(tmp_path):
    (tmp_path / "m.csv").write_text("path,label,split\n")
    with pytest.raises(EmptySourceError, match="manifest .*m.csv' lists no files"):
        list_source("manifest", str(tmp_path / "m.csv"))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.txt").write_text("x")
    with pytest.raises(EmptySourceError, match=r"has no image files \(1 other entries skipped"):
        list_source("folder", str(tmp_path / "d"))
    assert issubclass(EmptySourceError, ValueError)


def test_fifo_is_skipped_not_read(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no fifos on this platform")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    os.mkfifo(tmp_path / "pipe.png")  # reading it would block forever
    listing = folder_items(tmp_path)
    assert [r["reason"] for r in listing.skipped] == ["not a regular file (fifo, socket or device)"]
    (tmp_path / "m.csv").write_text("path\na.png\npipe.png\n")
    assert len(manifest_items(tmp_path / "m.csv").skipped) == 1


def test_hash_listing_chunks_keep_listing_order_dedup_and_reuse(tmp_path):
    """Hashing fans out in chunks; dedup keeps the first file in listing order whatever the
    chunking, and unchanged (size, mtime) files are not read again."""
    from pipelines.listing import hash_listing
    from pipelines.sources import SourceItem

    paths = []
    for i, data in enumerate([b"a", b"b", b"a", b"c", b"b", b"d", b"e"]):
        p = tmp_path / f"f{i}.bin"
        p.write_bytes(data)
        paths.append(p)
    items = [SourceItem(str(p)) for p in paths] + [SourceItem(str(tmp_path / "missing.bin"))]
    one = hash_listing(items, chunk_size=100)
    many = hash_listing(items, chunk_size=2)
    assert one.table.equals(many.table)
    assert one.table.column("uri").to_pylist() == [str(paths[i]) for i in (0, 1, 3, 5, 6)]
    assert [d["uri"] for d in many.duplicates] == [str(paths[2]), str(paths[4])]
    assert len(many.quarantine) == 1 and "unreadable" in many.quarantine[0]["reason"]
    prev = {u: (s, m, k) for u, s, m, k in zip(*(one.table.column(c).to_pylist()
                                                 for c in ("uri", "size", "mtime_ns", "key")))}
    again = hash_listing(items, previous=prev, chunk_size=3)
    assert (again.hashed, again.reused) == (2, 5) and again.table.equals(one.table)
