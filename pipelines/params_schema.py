"""The params schema: one typed pydantic (v2) model per ``params.yaml`` section.

This module is the one home of every parameter's default, description and validation
rule. ``params.yaml`` holds the values users edit; :func:`load_validated_params` reads it
(at call time), fills what it omits with these defaults and rejects invalid values before
any work with a :class:`ParamsError` that names the dotted parameter and the rule. The
Dagster Config classes (``assets_defs.resources``) are generated from these models, and
:func:`params_code_version` hashes the result-determining parameters into asset code
versions. Keys marked ``affects_results=False`` (batch sizes, worker and thread counts,
the ``execution`` section, ...) change speed or guards only and are left out of every
result hash. Dagster-free: imports pydantic and :mod:`pipelines.config` only.
"""
from __future__ import annotations

import difflib
import functools
import os
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from pipelines.config import load_params, params_path, stable_hash
from pipelines.params_sections import (  # noqa: F401 (the section models, re-exported)
    DepthParams, EVAL_PROTOCOLS, EvalParams, ExecutionParams, F, FeaturesParams, IngestParams, NVS_PROFILES,
    NvsEvalParams, PROFILES, PoseParams, SMALL_PROFILES, ShardsParams, SourceParams, TrainParams,
    ViewforgeParams, ViewsetShardsParams, ViewsetSourceParams, ViewsetTrainParams, ViewsetsParams, WarpParams,
    _Rule, _Section, apply_small, _Small)


#: section name -> model
SECTIONS: dict[str, type[_Section]] = {
    k: f.annotation for k, f in ViewforgeParams.model_fields.items()
    if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)}


def _affects_results(field: Any) -> bool:
    return bool((field.json_schema_extra or {}).get("affects_results", True))


#: section (``""`` = top level) -> keys that never change results (excluded from result hashes)
NON_RESULT_KEYS: dict[str, frozenset[str]] = {
    "": frozenset(k for k, f in ViewforgeParams.model_fields.items() if not _affects_results(f)),
    **{s: frozenset(k for k, f in m.model_fields.items() if not _affects_results(f) or k == "small_profile")
       for s, m in SECTIONS.items()}}


class ParamsError(ValueError):
    """Invalid parameters. ``problems`` lists ``(dotted_param, rule, value)``; ``param``,
    ``rule`` and ``value`` are the first one's; ``source`` is the params file, if any."""

    def __init__(self, problems: list[tuple[str, str, Any]], source: str | None = None):
        self.problems, self.source = list(problems), source
        self.param, self.rule, self.value = self.problems[0]
        super().__init__("; ".join(f"{p}: {r} (got {v!r})" for p, r, v in self.problems))

    def describe(self) -> str:
        """Short, ``dagster.Failure``-ready text: what is wrong and what to set."""
        lines = [f"Invalid parameter `{p}` = {v!r}: {r}." for p, r, v in self.problems]
        where = f"params.yaml ({self.source})" if self.source else "params.yaml"
        names = ", ".join(f"`{p}`" for p, _, _ in self.problems)
        return "\n".join(lines + [f"Set {names} in {where} or in the asset's launchpad config, then rerun."])


def _problems(err: ValidationError, prefix: tuple[str, ...] = ()) -> list[tuple[str, str, Any]]:
    out = []
    for e in err.errors():
        loc = prefix + tuple(str(x) for x in e["loc"])
        rule = e["msg"].removeprefix("Value error, ").replace("Input should be", "must be", 1)
        value = e.get("input")
        cause = (e.get("ctx") or {}).get("error")
        if isinstance(cause, _Rule):
            loc, rule = loc + (cause.field,), cause.message
            value = value.get(cause.field) if isinstance(value, Mapping) else value
        elif e["type"] == "extra_forbidden":
            model = SECTIONS.get(loc[0]) if len(loc) == 2 else ViewforgeParams
            known = list(model.model_fields) if model is not None and len(loc) <= 2 else []
            close = difflib.get_close_matches(loc[-1], known, n=1)
            rule = "unknown parameter (not in pipelines/params_schema.py)" + (
                f"; did you mean `{'.'.join(loc[:-1] + (close[0],))}`?" if close else "")
        out.append((".".join(loc), rule, value))
    return out


def validate_params(params: Mapping[str, Any], source: str | None = None) -> dict[str, Any]:
    """The full params dict, validated, with every omitted key set to its default.

    Args:
        params: a params dict as read from ``params.yaml`` (sections may be partial).
        source: where it came from (named in error messages).

    Raises:
        ParamsError: every broken rule, each with its dotted parameter name.
    """
    try:
        return ViewforgeParams.model_validate(dict(params)).model_dump()
    except ValidationError as e:
        raise ParamsError(_problems(e), source) from None


def validate_section(section: str, values: Mapping[str, Any] | None) -> dict[str, Any]:
    """One section (``params[section]``), validated and completed with defaults.

    Raises:
        ParamsError: names ``<section>.<key>``; KeyError: unknown section.
    """
    try:
        return SECTIONS[section].model_validate(dict(values or {})).model_dump()
    except ValidationError as e:
        raise ParamsError(_problems(e, (section,))) from None


def load_validated_params(path: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None,
                          *, env: bool = True) -> dict[str, Any]:
    """Read the params file now and return it validated and completed with defaults.

    Precedence, lowest first: schema defaults, the file (``path``, else
    :func:`pipelines.config.params_path`), ``$VIEWFORGE_PROFILE`` (when ``env``),
    ``overrides``. ``overrides`` is ``{section: {key: value}}`` and/or ``{top_key: value}``;
    an override replaces the key's value whole (a dict-valued parameter such as
    ``shards.split_fractions`` is replaced, not merged).

    Raises:
        FileNotFoundError: no params file; ParamsError: invalid values (dotted names).
    """
    src = str(path if path is not None else params_path())
    raw = dict(load_params(src) or {})
    if env and os.environ.get("VIEWFORGE_PROFILE"):
        raw["profile"] = os.environ["VIEWFORGE_PROFILE"]
    for k, v in (overrides or {}).items():
        if k in SECTIONS and isinstance(v, Mapping) and isinstance(raw.get(k), Mapping):
            raw[k] = {**raw[k], **v}
        else:
            raw[k] = v
    return validate_params(raw, src)


def effective_section(params: Mapping[str, Any], section: str) -> dict[str, Any]:
    """``params[section]`` validated, with its ``small_profile`` applied when
    ``params["profile"]`` is demo or smoke (the one place the small profiles act)."""
    sec = validate_section(section, params.get(section))
    if params.get("profile") in SMALL_PROFILES and "small_profile" in sec:
        sec.update(apply_small(sec, sec["small_profile"]))
    return sec


def effective_num_buckets(params: Mapping[str, Any]) -> int:
    """``num_buckets``, except 16 in profiles demo/smoke (few samples, few partitions)."""
    return 16 if params.get("profile") in SMALL_PROFILES else int(params.get(
        "num_buckets", ViewforgeParams.model_fields["num_buckets"].default))


def result_params(params: Mapping[str, Any], section: str, **extra: Any) -> dict[str, Any]:
    """The parameters of ``section`` that determine results (``NON_RESULT_KEYS`` and
    ``small_profile`` dropped, the small profile applied), merged with ``extra``. A
    top-level key (``seed``, ``profile``, ``num_buckets``) gives ``{key: value}``."""
    if section not in SECTIONS:
        if section not in ViewforgeParams.model_fields:
            raise KeyError(f"unknown params section {section!r}")
        if section in NON_RESULT_KEYS[""]:
            return {**extra}
        value = (effective_num_buckets(params) if section == "num_buckets"
                 else params.get(section, ViewforgeParams.model_fields[section].default))
        return {section: value, **extra}
    sec = effective_section(params, section)
    return {**{k: v for k, v in sec.items() if k not in NON_RESULT_KEYS[section]}, **extra}


#: model assets: the sections they add to those of the shard set they read
MODEL_PARAM_SECTIONS: dict[str, list[str]] = {"trained_models": ["profile", "train"],
                                              "eval_reports": ["profile", "train", "eval"],
                                              "viewset_models": ["profile", "viewset_train"],
                                              "nvs_reports": ["profile", "viewset_train", "nvs_eval"]}
#: model assets that read a shard set other than ``shard_manifest``'s
MODEL_DATA_ASSET: dict[str, str] = {"viewset_models": "viewset_manifest", "nvs_reports": "viewset_manifest"}


@functools.cache
def _asset_param_sections() -> dict[str, list[str]]:
    from pipelines.stages.specs import STAGES, param_sections   # the stage graph's one home
    out = {name: param_sections(name) for name in STAGES}
    for name, extra in MODEL_PARAM_SECTIONS.items():
        out[name] = sorted(set(out[MODEL_DATA_ASSET.get(name, "shard_manifest")]) | set(extra))
    return out


def __getattr__(name: str) -> Any:
    """``ASSET_PARAM_SECTIONS``: asset -> the params sections that determine its results, its
    own and those of every upstream stage (:func:`pipelines.stages.specs.param_sections`;
    model assets add :data:`MODEL_PARAM_SECTIONS`). Built on first access, so this module
    never imports the stage graph at import time. Speed-only keys never count
    (:func:`result_params`)."""
    if name == "ASSET_PARAM_SECTIONS":
        return _asset_param_sections()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def params_code_version(code_version: str, params: Mapping[str, Any], sections: list[str]) -> str:
    """``"<code_version>+p<8 hex>"``: the code version plus a sha256 (canonical JSON,
    :func:`pipelines.config.stable_hash`) of :func:`result_params` of ``sections`` of the
    validated ``params``. Equal values hash equal whether written or defaulted, and
    speed-only keys never change it. E.g. ``params_code_version("warp-2", p,
    ASSET_PARAM_SECTIONS["warp_pairs"])`` -> ``"warp-2+p3fa9c1d2"``.

    Raises:
        ParamsError: invalid params; KeyError: an unknown section.
    """
    full = validate_params(params)
    payload = {s: result_params(full, s) for s in sorted(set(sections))}
    return f"{code_version}+p{stable_hash(payload, 8)}"
