"""Readers register by name; adding a source format is adding a module to
``pipelines/viewsets/formats/`` that defines a :class:`Reader` subclass decorated with
:func:`register`."""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any, Iterator

from pipelines.viewsets.types import SequenceRef, Viewset

_READERS: dict[str, "Reader"] = {}
_DISCOVERED = False


class Reader:
    """A source format: ``load`` one sequence directory, ``list_sequences`` under a root.

    Subclasses set ``name`` and implement both methods; they raise
    :class:`~pipelines.viewsets.types.ViewsetError` for anything quarantinable.
    """

    name: str = ""

    def load(self, path: Path, **options: Any) -> Viewset:  # pragma: no cover - interface
        raise NotImplementedError

    def list_sequences(self, root: Path, **options: Any) -> Iterator[SequenceRef]:  # pragma: no cover
        raise NotImplementedError


def register(cls: type[Reader]) -> type[Reader]:
    """Class decorator: register an instance of ``cls`` under ``cls.name``."""
    if not cls.name or cls.name in _READERS:
        raise ValueError(f"reader name {cls.name!r} empty or already registered")
    _READERS[cls.name] = cls()
    return cls


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    pkg = importlib.import_module("pipelines.viewsets.formats")
    for m in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        importlib.import_module(f"{pkg.__name__}.{m.name}")


def get_reader(format: str) -> Reader:
    """The registered reader called ``format``. Raises ValueError naming the known formats."""
    _discover()
    try:
        return _READERS[format]
    except KeyError:
        raise ValueError(f"unknown viewset format {format!r}; known: {sorted(_READERS)}") from None


def formats() -> list[str]:
    """Names of all registered formats (sorted)."""
    _discover()
    return sorted(_READERS)
