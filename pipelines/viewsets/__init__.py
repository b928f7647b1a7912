"""Posed multi-view ("viewset") sources -> viewforge's camera convention (issue 14).

Public API::

    load_viewset(path, format, *, min_views=2, **options) -> Viewset
    list_sequences(root, format, **options) -> Iterator[SequenceRef]
    formats() -> list[str]
    ViewsetError(reason, detail)      # .reason in REASONS, for the quarantine table

Formats: ``co3d``, ``transforms_json``, ``colmap``, ``syncdreamer``, ``srn`` (modules in
``pipelines/viewsets/formats/``). Conventions: ``pipelines/camera_conventions.py``;
canonical world and model normalisations: ``normalise.py``; object crop: ``crop.py``;
SyncDreamer's fixed ring: ``ring.py``. Source facts: ``reference/multiview-formats.md``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from pipelines.viewsets.registry import Reader, formats, get_reader, register
from pipelines.viewsets.types import REASONS, SequenceRef, Viewset, ViewsetError
from pipelines.viewsets.validate import validate_viewset

__all__ = ["load_viewset", "list_sequences", "formats", "Viewset", "SequenceRef", "ViewsetError",
           "REASONS", "Reader", "register", "validate_viewset"]


def load_viewset(path: str | Path, format: str, *, min_views: int = 2, **options: Any) -> Viewset:
    """Load one sequence's views exactly as the source holds them, in viewforge's convention.

    Args:
        path: the sequence directory (``transforms_json``: the directory holding
            ``transforms.json``; ``co3d``: ``<root>/<category>/<sequence>``; ``colmap``: the
            workspace holding ``images/`` and ``sparse/[0/]`` (or ``cameras.txt``);
            ``syncdreamer``: ``<root>/target/<uid>``, ``<root>/input/<uid>`` or a GSO eval
            folder; ``srn``: ``<split_dir>/<object_id>``).
        format: one of :func:`formats`.
        min_views: fewer views raise ``ViewsetError("too_few_views")``.
        **options: format-specific (see each reader's ``load`` docstring).

    Returns:
        :class:`Viewset` (images float32 [V,3,H,W] in [0,1]; alpha/depth [V,1,H,W] or None;
        K [V,3,3], w2c [V,4,4] float64 numpy, OpenCV, pixel centres at integers; names).

    Raises:
        ValueError: unknown format. ViewsetError: anything to quarantine (``.reason`` in
        :data:`REASONS`): missing files, unreadable images, malformed metadata, degenerate
        cameras, too few views, inconsistent view sizes, unsupported camera models.
    """
    reader = get_reader(format)
    vs = reader.load(Path(path), **options)
    vs.format, vs.path = format, str(path)
    return validate_viewset(vs, min_views=min_views)


def list_sequences(root: str | Path, format: str, **options: Any) -> Iterator[SequenceRef]:
    """Lazily yield :class:`SequenceRef` descriptors of the sequences under ``root``.

    Reads only metadata (directory listings, annotation/set-list JSON of one category at a
    time for CO3D), never pixels; deterministic order. Options are format-specific (CO3D:
    ``categories``, ``subset``). Does not validate: ``load_viewset`` does.
    """
    yield from get_reader(format).list_sequences(Path(root), **options)
