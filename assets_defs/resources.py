"""Dagster resources, the per-asset Config classes (generated from
:mod:`pipelines.params_schema`) and the translation of expected errors into
``dagster.Failure``.

Nothing here freezes a parameter at import: every Config field is optional with default
``None`` ("not set") and carries the schema's description for the launchpad; a run reads
``params.yaml`` when it starts (:meth:`ViewforgeSettings.params`) and applies only the
launchpad fields the user set. Consequence: a launchpad field cannot set a parameter to
``null``; edit params.yaml for that.
"""
from __future__ import annotations

import contextlib
import os
import types
import typing
from pathlib import Path
from typing import Any, Iterator, Literal, Optional, Union

import dagster as dg
from pydantic import Field, create_model

from pipelines.config import data_root, data_uri
from pipelines.params_schema import SECTIONS, ParamsError, ViewforgeParams, load_validated_params

_ROOT = ViewforgeParams.model_fields


def _config_type(ann: Any) -> Any:
    """The Dagster-config spelling of a schema annotation: Optional unwrapped, Literal ->
    the type of its values (checked by the schema at run time), containers recursed."""
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin in (Union, types.UnionType):
        return _config_type(next(a for a in args if a is not type(None)))
    if origin is Literal:
        return type(args[0])
    if origin is list:
        return list[_config_type(args[0])]
    if origin is dict:
        return dict[str, _config_type(args[1])]
    return ann


def _description(field: Any) -> str:
    ann = field.annotation
    choices = typing.get_args(ann) if typing.get_origin(ann) is Literal else ()
    extra = f" One of: {', '.join(map(str, choices))}." if choices else ""
    return f"{field.description}.{extra} Unset: the params.yaml value when the run starts."


def section_config(section: str, name: str, **nested: type[dg.Config]) -> type[dg.Config]:
    """A ``dagster.Config`` class for params section ``section``: one optional field per
    schema key (default None = not set; description from the schema), except keys marked
    ``launchpad=False``; ``nested`` adds Config fields for other sections (e.g. ``source``
    inside ``IngestConfig``), which :func:`config_overrides` maps to those sections."""
    model = SECTIONS[section]
    fields: dict[str, Any] = {}
    for key, f in model.model_fields.items():
        if (f.json_schema_extra or {}).get("launchpad", True):
            fields[key] = (Optional[_config_type(f.annotation)], Field(default=None, description=_description(f)))
    for key, cls in nested.items():
        fields[key] = (Optional[cls], Field(default=None, description=_ROOT[key].description))
    doc = f"{(model.__doc__ or section).strip()} Fields left unset take their params.yaml value at run time."
    return create_model(name, __base__=dg.Config, __doc__=doc, __module__=__name__, **fields)


def _drop_none(v: Any) -> Any:
    return {k: _drop_none(x) for k, x in v.items() if x is not None} if isinstance(v, dict) else v


def config_overrides(section: str, config: dg.Config) -> dict[str, Any]:
    """The launchpad fields the user set, as params overrides: ``{section: {key: value}}``
    plus ``{other_section: {...}}`` for nested Config fields (unset = None = dropped)."""
    out: dict[str, Any] = {}
    for key, value in _drop_none(config.model_dump()).items():
        if key in SECTIONS[section].model_fields:
            out.setdefault(section, {})[key] = value
        elif key in _ROOT:
            out[key] = value
        else:
            raise KeyError(f"{type(config).__name__}.{key} is no parameter of {section!r}")
    return out


class ViewforgeSettings(dg.ConfigurableResource):
    """Run-wide settings. Every field left unset (None) is read when the run starts:
    the data root from ``$VIEWFORGE_DATA`` (else ``data/``), the rest from params.yaml."""

    data_root: Optional[str] = Field(None, description="data root (unset: $VIEWFORGE_DATA or data/)")
    params_file: Optional[str] = Field(None, description="params file (unset: $VIEWFORGE_PARAMS or params.yaml)")
    profile: Optional[str] = Field(None, description=f"{_ROOT['profile'].description}. Unset: $VIEWFORGE_PROFILE, "
                                                     "else params.yaml")
    seed: Optional[int] = Field(None, description=f"{_ROOT['seed'].description}. Unset: params.yaml")
    chunk_size: Optional[int] = Field(None, description=f"{_ROOT['chunk_size'].description}. Unset: params.yaml")
    device: Optional[str] = Field(None, description="torch device (unset: CUDA when available, else CPU)")

    def root(self) -> Path:
        """The data root as a local path (created); raises ValueError for a URI root."""
        p = Path(self.data_root) if self.data_root else data_root()
        if "://" in str(self.data_root or ""):
            raise ValueError(f"{self.data_root} is not a local path: training and evaluation need a local or "
                             "mounted data root")
        p.mkdir(parents=True, exist_ok=True)
        return p

    def data_uri(self) -> str:
        """The data root as the data stages address it: a local path or a ``pyarrow.fs`` URI."""
        uri = data_uri(self.data_root)
        if "://" not in uri:
            Path(uri).mkdir(parents=True, exist_ok=True)
        return uri

    def params(self, section: str | None = None, config: dg.Config | None = None) -> dict[str, Any]:
        """The full, validated params dict, read from the params file now (an edit applies
        to the next run without reloading definitions). Precedence, lowest first: schema
        defaults, params file, ``$VIEWFORGE_PROFILE``, this resource's set fields, the
        launchpad fields set in ``config`` (the Config of params section ``section``).

        Raises:
            dagster.Failure: invalid parameters (:func:`params_failure`), cause ParamsError.
        """
        over = {k: getattr(self, k) for k in ("profile", "seed", "chunk_size") if getattr(self, k) is not None}
        if section and config is not None:
            for k, v in config_overrides(section, config).items():
                over[k] = {**over.get(k, {}), **v} if isinstance(v, dict) and k in SECTIONS else v
        try:
            return load_validated_params(self.params_file, over)
        except ParamsError as e:
            raise params_failure(e) from e


def params_failure(err: ParamsError) -> dg.Failure:
    """``dagster.Failure`` for invalid parameters: short description naming each parameter,
    its rule and what to set; metadata ``parameter``, ``rule``, ``value``, ``params_file``."""
    return dg.Failure(description=err.describe(), allow_retries=False,
                      metadata={"parameter": err.param, "rule": err.rule, "value": repr(err.value),
                                "params_file": err.source or ""})


@contextlib.contextmanager
def clean_failures() -> Iterator[None]:
    """Turn expected failures inside an asset body into a short ``dagster.Failure``:
    invalid parameters (:class:`ParamsError`), weights that cannot be resolved
    (``WeightsUnavailableError``: its message names the parameters and the demo profile)
    a missing upstream result (``FileNotFoundError``: materialize upstream first), a shard
    set that would lose most of its samples (``ShrinkRefused``) and a bucket another run is
    writing (``LockedError``); the messages say what to do."""
    from pipelines.models import WeightsUnavailableError
    from pipelines.stages.shards import ShrinkRefused
    from pipelines.storage import LockedError
    try:
        yield
    except ParamsError as e:
        raise params_failure(e) from e
    except (ShrinkRefused, LockedError) as e:
        raise dg.Failure(description=str(e), allow_retries=False, metadata={"error": type(e).__name__}) from e
    except WeightsUnavailableError as e:
        raise dg.Failure(description=str(e), allow_retries=False, metadata={
            "error": "weights unavailable", "profile": os.environ.get("VIEWFORGE_PROFILE", ""),
            "fix": "set the local checkpoint / hub id parameters named above, or run with VIEWFORGE_PROFILE=demo"}) from e
    except FileNotFoundError as e:
        raise dg.Failure(description=f"{e}. Materialize the upstream assets first.", allow_retries=False,
                         metadata={"error": "missing input", "path": str(e.filename or "")}) from e


SourceConfig = section_config("source", "SourceConfig")
IngestConfig = section_config("ingest", "IngestConfig")
DepthConfig = section_config("depth", "DepthConfig")
WarpConfig = section_config("warp", "WarpConfig")
FeaturesConfig = section_config("features", "FeaturesConfig")
PoseConfig = section_config("pose", "PoseConfig")
ShardsConfig = section_config("shards", "ShardsConfig")
