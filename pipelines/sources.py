"""Image sources: the built-in ``sample`` set, a ``folder``, or a ``manifest`` table.

Each source lists :class:`SourceItem` objects (a URI plus optional label and split) in a
deterministic order; bytes are read lazily so a chunk, not the dataset, is in memory.
"""
from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.parquet as pq

SOURCE_KINDS = ("sample", "folder", "manifest")
SPLIT_NAMES = ("train", "val", "test")
"""Split names a manifest's ``split`` column may use (those of ``shards.split_fractions``)."""


def image_extensions() -> frozenset[str]:
    """Lower-case file extensions (with the dot) of every format the installed Pillow can
    open: ``PIL.Image.registered_extensions()`` restricted to formats with an opener
    (``Image.OPEN``), plus ``.mpo`` (multi-picture JPEG, opened by Pillow's JPEG plugin).
    E.g. jpg, png, webp, gif, bmp, tiff, ico, tga, qoi, avif (when built in), ppm, psd.
    """
    from PIL import Image

    Image.init()
    exts = {e.lower() for e, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    return frozenset(exts | {".mpo"})


@dataclass(frozen=True)
class SourceItem:
    """One input image. ``uri`` is an absolute local path; label/split are optional strings
    (``split`` is one of :data:`SPLIT_NAMES` or None: None lets the hash split decide)."""
    uri: str
    label: str | None = None
    split: str | None = None

    def read_bytes(self) -> bytes:
        """The file's bytes. Raises OSError when unreadable."""
        return Path(self.uri).read_bytes()


@dataclass
class SourceListing(Sequence[SourceItem]):
    """What a source lists: every file (or manifest row) ends in exactly one of ``items``
    (to ingest) or ``skipped`` (with the reason it is not ingested).

    A ``Sequence`` of its ``items`` (``len(listing) == len(listing.items)``), so it can be
    passed wherever a list of items is expected. ``skipped`` rows are
    ``{"uri": str, "reason": str}`` like ingestion's quarantine rows.

    Accounting (what ingest metadata reports): ``listed = len(items) + len(skipped)``;
    after ingestion ``listed == accepted + quarantined + duplicates + skipped``.
    """
    items: list[SourceItem]
    skipped: list[dict[str, str]] = field(default_factory=list)

    @property
    def listed(self) -> int:
        """Files (or manifest rows) seen: items + skipped."""
        return len(self.items) + len(self.skipped)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):  # type: ignore[override]
        return self.items[i]

    def __iter__(self) -> Iterator[SourceItem]:
        return iter(self.items)


class EmptySourceError(ValueError):
    """A folder or manifest source that lists no image to ingest."""


def sample_items() -> list[SourceItem]:
    """The built-in sample set: real colour photographs shipped inside the scikit-image
    (``skimage/data``) and scikit-learn (``sklearn/datasets/images``) wheels. Nothing is
    downloaded. Returns 8 items, sorted by URI.

    Raises:
        FileNotFoundError: a photograph is missing from the installed wheels.
    """
    import skimage.data
    import sklearn.datasets

    sk = Path(skimage.data.__file__).parent
    sl = Path(sklearn.datasets.__file__).parent / "images"
    paths = [sk / n for n in ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg",
                              "motorcycle_left.png", "motorcycle_right.png")]
    paths += [sl / "china.jpg", sl / "flower.jpg"]
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"sample photograph missing from the installed wheel: {p}")
    return sorted((SourceItem(str(p)) for p in paths), key=lambda i: i.uri)


def _symlink_problem(path: Path) -> str | None:
    """Why the symlink ``path`` cannot be followed, or None when its target exists."""
    try:
        os.stat(path)
        return None
    except OSError as e:
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        if e.errno == errno.ELOOP:
            return f"symlink loop (-> {target!r}): too many levels of symbolic links"
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return f"dangling symlink: target {target!r} does not exist"
        return f"unreadable symlink (-> {target!r}): {e.strerror or e}"


def _walk(root: Path, items: list[Path], skipped: list[dict[str, str]], exts: frozenset[str]) -> None:
    """Depth-first listing of ``root``, following directory symlinks once per real directory."""
    seen: dict[tuple[int, int], str] = {}
    stack = [root]
    while stack:
        d = stack.pop()
        st = os.stat(d)
        ident = (st.st_dev, st.st_ino)
        if ident in seen:
            skipped.append({"uri": str(d), "reason": f"symlink loop or repeated directory: already listed as "
                                                     f"{seen[ident]!r}"})
            continue
        seen[ident] = str(d)
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as e:
            skipped.append({"uri": str(d), "reason": f"unreadable directory: {e.strerror or e}"})
            continue
        subdirs = []
        for e in entries:
            p = Path(e.path)
            if e.is_symlink() and (problem := _symlink_problem(p)) is not None:
                skipped.append({"uri": str(p), "reason": problem})
                continue
            try:
                mode = os.stat(p).st_mode
            except OSError as err:
                skipped.append({"uri": str(p), "reason": f"unreadable: {err.strerror or err}"})
                continue
            if stat.S_ISDIR(mode):
                subdirs.append(p)
            elif not stat.S_ISREG(mode):
                skipped.append({"uri": str(p), "reason": "not a regular file (fifo, socket or device)"})
            elif p.suffix.lower() not in exts:
                what = f"extension {p.suffix!r}" if p.suffix else "no file extension"
                skipped.append({"uri": str(p), "reason": f"not an image type: {what} is not a format Pillow reads"})
            else:
                items.append(p)
        stack.extend(reversed(subdirs))


def folder_items(path: str | os.PathLike) -> SourceListing:
    """Every file under ``path`` (recursive, following directory symlinks once per real
    directory), sorted by path. Files whose extension is a format Pillow opens
    (:func:`image_extensions`, case-insensitive) become items; they are not opened here: a
    broken file is listed and later quarantined by ingestion. Every other entry becomes a
    ``skipped`` row with its reason: another extension or none, a dangling symlink, a symlink
    loop (a file link pointing at itself, or a directory link back to an ancestor / a
    directory already listed), a fifo/socket/device, an unreadable directory.

    Returns:
        :class:`SourceListing`; items have ``label = split = None``.

    Raises:
        NotADirectoryError: ``path`` is not a directory.
        EmptySourceError: no file under ``path`` has an image extension (the message counts
            the skipped entries).
    """
    root = Path(path).absolute()
    if not root.is_dir():
        raise NotADirectoryError(f"source.path {str(root)!r} is not a directory")
    files: list[Path] = []
    skipped: list[dict[str, str]] = []
    _walk(root, files, skipped, image_extensions())
    if not files:
        raise EmptySourceError(f"folder {str(root)!r} has no image files ({len(skipped)} other entries skipped"
                               + (f", e.g. {skipped[0]['uri']!r}: {skipped[0]['reason']}" if skipped else "") + ")")
    return SourceListing([SourceItem(str(p)) for p in sorted(files)], sorted(skipped, key=lambda r: r["uri"]))


def _cell(v) -> str | None:
    """A manifest cell as a stripped string; None for null, NaN or empty."""
    if v is None or (isinstance(v, float) and v != v):
        return None
    s = str(v).strip()
    return s or None


def manifest_items(path: str | os.PathLike, *, splits: Sequence[str] = SPLIT_NAMES) -> SourceListing:
    """Rows of a Parquet or CSV/TSV manifest with a ``path`` column and optional ``label`` and
    ``split`` columns, in the manifest's order. Relative paths are resolved against the
    manifest's directory. Every row the user lists becomes an item, even when its file is
    missing or not an image (ingestion quarantines it with the reason), except rows with an
    empty path and paths that are not regular files (a fifo would block the reader), which
    are ``skipped`` with the reason. Empty ``label``/``split`` cells mean None.

    Args:
        path: the manifest file (``.parquet``, ``.csv`` or ``.tsv``).
        splits: allowed values of the ``split`` column (default :data:`SPLIT_NAMES`).

    Returns:
        :class:`SourceListing`; ``SourceItem.split`` carries the user's split.

    Raises:
        ValueError: unknown manifest extension; no ``path`` column; a ``split`` value not
            in ``splits`` (the message names the rows).
        EmptySourceError: the manifest has no rows ("manifest X lists no files").
    """
    p = Path(path).absolute()
    if p.suffix.lower() == ".parquet":
        table = pq.read_table(p)
    elif p.suffix.lower() in (".csv", ".tsv"):
        opts = pacsv.ParseOptions(delimiter="\t" if p.suffix.lower() == ".tsv" else ",")
        table = pacsv.read_csv(p, parse_options=opts)
    else:
        raise ValueError(f"manifest {p}: expected .parquet, .csv or .tsv")
    if "path" not in table.column_names:
        raise ValueError(f"manifest {p}: missing required column 'path' (has {table.column_names})")
    n = table.num_rows
    if n == 0:
        raise EmptySourceError(f"manifest {str(p)!r} lists no files")
    cols = {c: (table.column(c).to_pylist() if c in table.column_names else [None] * n)
            for c in ("path", "label", "split")}
    bad = [(i, v) for i, v in enumerate(cols["split"]) if _cell(v) is not None and _cell(v) not in splits]
    if bad:
        shown = ", ".join(f"row {i + 1}: {v!r}" for i, v in bad[:5])
        raise ValueError(f"manifest {p}: column 'split' must be one of {tuple(splits)} or empty; "
                         f"{len(bad)} rows are not ({shown}{', ...' if len(bad) > 5 else ''})")
    items: list[SourceItem] = []
    skipped: list[dict[str, str]] = []
    for i, (raw, lab, spl) in enumerate(zip(cols["path"], cols["label"], cols["split"])):
        rel = _cell(raw)
        if rel is None:
            skipped.append({"uri": f"{p}#row={i + 1}", "reason": "manifest row has an empty path"})
            continue
        uri = Path(rel) if Path(rel).is_absolute() else p.parent / rel
        try:
            mode = os.stat(uri).st_mode
            if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
                skipped.append({"uri": str(uri), "reason": "not a regular file (fifo, socket or device)"})
                continue
        except OSError:
            pass  # missing or unreadable: ingestion quarantines it with the OS reason
        items.append(SourceItem(str(uri), _cell(lab), _cell(spl)))
    return SourceListing(items, skipped)


def list_source(kind: str, path: str | None = None, *, splits: Sequence[str] = SPLIT_NAMES) -> SourceListing:
    """Dispatch on ``source.kind``: ``sample`` (:func:`sample_items`), ``folder``
    (:func:`folder_items`) or ``manifest`` (:func:`manifest_items`, split names checked
    against ``splits``).

    Returns:
        :class:`SourceListing` (items to ingest + skipped rows with reasons).

    Raises:
        ValueError: unknown kind, or ``path`` missing for folder/manifest; and what
            :func:`folder_items` / :func:`manifest_items` raise (``EmptySourceError`` is a
            ``ValueError``).
    """
    if kind == "sample":
        return SourceListing(sample_items())
    if kind not in SOURCE_KINDS:
        raise ValueError(f"source.kind must be one of {SOURCE_KINDS}, got {kind!r}")
    if not path:
        raise ValueError(f"source.kind={kind!r} needs source.path")
    return folder_items(path) if kind == "folder" else manifest_items(path, splits=splits)
