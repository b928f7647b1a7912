"""Parameters (``params.yaml``), the data root, and stable hashing of parameters.

``params.yaml`` holds the values users edit (types, defaults, rules and descriptions:
:mod:`pipelines.params_schema`, whose ``load_validated_params`` is the validated way to
read it); the Dagster assets read it when a run starts and DVC tracks it with ``params:``. The file is found at
``$VIEWFORGE_PARAMS`` or ``params.yaml`` in the working directory (falling back to the
repository root), and the data root at ``$VIEWFORGE_DATA`` or ``data/``.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent


def params_path() -> Path:
    """Path of the active params file (``$VIEWFORGE_PARAMS``, ./params.yaml, repo params.yaml)."""
    env = os.environ.get("VIEWFORGE_PARAMS")
    if env:
        return Path(env)
    local = Path.cwd() / "params.yaml"
    return local if local.exists() else REPO_ROOT / "params.yaml"


def load_params(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Load the params YAML as a plain dict.

    Raises:
        FileNotFoundError: the file does not exist.
    """
    p = Path(path) if path is not None else params_path()
    with open(p, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def data_root() -> Path:
    """The data root: ``$VIEWFORGE_DATA`` or ``data/`` under the working directory.

    Raises:
        ValueError: the root is a URI (``s3://...``): use :func:`data_uri` (only the data
            stages run on object stores; training and evaluation need a mounted file system).
    """
    uri = data_uri()
    if "://" in uri:
        raise ValueError(f"{uri} is not a local path: training and evaluation need a local or mounted "
                         "data root (VIEWFORGE_DATA=/mnt/...)")
    return Path(uri)


def data_uri(root: str | None = None) -> str:
    """The data root as a string: a URI (``s3://bucket/prefix``, any ``pyarrow.fs`` / fsspec
    scheme) unchanged, a local path made absolute. ``root`` defaults to ``$VIEWFORGE_DATA``
    or ``data/``."""
    r = root if root is not None else os.environ.get("VIEWFORGE_DATA", "data")
    return r.rstrip("/") if "://" in r else str(Path(r).absolute())


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return ``base`` updated recursively with ``override`` (neither is modified)."""
    out = copy.deepcopy(dict(base))
    for k, v in (override or {}).items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def stable_hash(obj: Any, length: int = 16) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys), hex, first ``length`` chars.

    Tuples become lists and floats keep their repr, so equal parameters hash equal
    across runs and machines.
    """
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def stage_version(stage: str, code_version: str, params: Mapping[str, Any],
                  upstream: Mapping[str, str] | None = None) -> str:
    """Version id of a stage's per-sample results.

    A stored result is reused only when this id matches: it hashes the stage name, its
    code version, its parameters and the version ids of the stages it reads, so a
    changed parameter reruns the stage and everything downstream, and nothing upstream.
    """
    return stable_hash({"stage": stage, "code": code_version, "params": dict(params),
                        "upstream": dict(sorted((upstream or {}).items()))})
