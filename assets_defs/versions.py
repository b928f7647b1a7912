"""What the code location computes when it loads: bucket partitions and code versions.

Dagster compares ``code_version`` after "Reload definitions": each asset's code version is
its stage code version plus a hash of the result-determining parameters of its own and its
upstream stages (:func:`pipelines.params_schema.params_code_version`), so editing
``warp.blur_p`` marks ``warp_pairs`` and everything downstream as changed, nothing upstream.
The parameter sections come from :func:`pipelines.stages.specs.param_sections` (the same
table ``dvc.yaml`` is tested against).
"""
from __future__ import annotations

import logging
from typing import Any

import dagster as dg

import pipelines.versions as V
from pipelines.buckets import bucket_ids
from pipelines.params_schema import ParamsError, effective_num_buckets, load_validated_params, params_code_version
from pipelines.stages.specs import STAGES, param_sections

log = logging.getLogger("viewforge")

#: model assets -> code version (their params sections: pipelines.params_schema.ASSET_PARAM_SECTIONS)
MODEL_ASSETS = {"trained_models": V.TRAIN, "eval_reports": V.EVAL, "viewset_models": V.VIEWSET_TRAIN,
                "nvs_reports": V.NVS_EVAL}


def load_params() -> dict[str, Any]:
    """params.yaml (+ ``$VIEWFORGE_PROFILE``) as the code location sees it now; on invalid
    params the schema defaults (the run itself then fails with the parameter named)."""
    try:
        return load_validated_params()
    except ParamsError as e:
        from pipelines.params_schema import validate_params

        log.warning("params invalid, code versions use schema defaults: %s", e)
        return validate_params({})


def sections_of(asset: str) -> list[str]:
    if asset in MODEL_ASSETS:
        from pipelines.params_schema import ASSET_PARAM_SECTIONS
        return ASSET_PARAM_SECTIONS[asset]
    return param_sections(asset)


def asset_code_version(asset: str, params: dict[str, Any] | None = None) -> str:
    """``"<stage code version>+p<hash of its result parameters>"`` (see module docstring)."""
    code = MODEL_ASSETS[asset] if asset in MODEL_ASSETS else STAGES[asset].code_version
    p = load_params() if params is None else params
    try:
        return params_code_version(code, p, sections_of(asset))
    except (ParamsError, KeyError):
        return code


def bucket_partitions(params: dict[str, Any] | None = None) -> dg.StaticPartitionsDefinition:
    """The bucket ids of ``num_buckets`` (16 in the demo / smoke profiles) as partitions."""
    p = load_params() if params is None else params
    return dg.StaticPartitionsDefinition(bucket_ids(effective_num_buckets(p)))
