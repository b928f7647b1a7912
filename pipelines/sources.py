"""Image sources: the built-in ``sample`` set, a ``folder``, or a ``manifest`` table.

Each source lists :class:`SourceItem` objects (a URI plus optional label and split) in a
deterministic order; bytes are read lazily so a chunk, not the dataset, is in memory.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.parquet as pq

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
SOURCE_KINDS = ("sample", "folder", "manifest")


@dataclass(frozen=True)
class SourceItem:
    """One input image. ``uri`` is an absolute local path; label/split are optional strings."""
    uri: str
    label: str | None = None
    split: str | None = None

    def read_bytes(self) -> bytes:
        """The file's bytes. Raises OSError when unreadable."""
        return Path(self.uri).read_bytes()


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


def folder_items(path: str | os.PathLike) -> list[SourceItem]:
    """Every file under ``path`` (recursive) whose extension is an image type
    (jpg, jpeg, png, webp, bmp, tif, tiff; case-insensitive), sorted by path. Files are
    not opened here: a broken file is listed and later quarantined by ingestion.

    Raises:
        NotADirectoryError: ``path`` is not a directory.
    """
    root = Path(path)
    if not root.is_dir():
        raise NotADirectoryError(f"source.path {str(root)!r} is not a directory")
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    return [SourceItem(str(p.absolute())) for p in sorted(files)]


def manifest_items(path: str | os.PathLike) -> list[SourceItem]:
    """Rows of a Parquet or CSV manifest with a ``path`` column and optional ``label`` and
    ``split`` columns. Relative paths are resolved against the manifest's directory.
    Order is the manifest's order.

    Raises:
        ValueError: no ``path`` column, or an unknown file extension.
    """
    p = Path(path)
    if p.suffix.lower() == ".parquet":
        table = pq.read_table(p)
    elif p.suffix.lower() in (".csv", ".tsv"):
        opts = pacsv.ParseOptions(delimiter="\t" if p.suffix.lower() == ".tsv" else ",")
        table = pacsv.read_csv(p, parse_options=opts)
    else:
        raise ValueError(f"manifest {p}: expected .parquet or .csv")
    if "path" not in table.column_names:
        raise ValueError(f"manifest {p}: missing required column 'path' (has {table.column_names})")
    cols = {c: table.column(c).to_pylist() for c in ("path", "label", "split") if c in table.column_names}
    items = []
    for i, raw in enumerate(cols["path"]):
        uri = Path(str(raw)) if raw is not None else Path("")
        if not uri.is_absolute():
            uri = (p.parent / uri).absolute()
        lab = cols.get("label", [None] * len(cols["path"]))[i]
        spl = cols.get("split", [None] * len(cols["path"]))[i]
        items.append(SourceItem(str(uri), None if lab is None else str(lab), None if spl is None else str(spl)))
    return items


def list_source(kind: str, path: str | None = None) -> list[SourceItem]:
    """Dispatch on ``source.kind``.

    Raises:
        ValueError: unknown kind, or ``path`` missing for folder/manifest.
    """
    if kind == "sample":
        return sample_items()
    if kind not in SOURCE_KINDS:
        raise ValueError(f"source.kind must be one of {SOURCE_KINDS}, got {kind!r}")
    if not path:
        raise ValueError(f"source.kind={kind!r} needs source.path")
    return folder_items(path) if kind == "folder" else manifest_items(path)
