"""Asset checks (logic in :mod:`pipelines.stages.checks`).

Data assets declare their checks as ``check_specs`` (:func:`check_specs_for`) and evaluate
them inside their own step, after their materializations (:func:`check_results`): no extra
step, no extra process, and a failing blocking check stops the downstream steps of the run.
A check of a bucketed asset looks at every materialized bucket (the whole asset), not
only at the buckets of the run. The model assets (:mod:`assets_defs.models`) keep
separate ``@asset_check`` definitions (:data:`ASSET_CHECKS`); the jobs run them in-process.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import dagster as dg

from assets_defs.resources import ViewforgeSettings
from eval import checks as model_checks
from pipelines.stages import checks as C


@dataclass(frozen=True)
class CheckDef:
    """One check: ``fn(root) -> (passed, metadata)``; ``metadata["severity"] == "WARN"``
    downgrades a failure to a warning."""
    asset: str
    name: str
    fn: Callable[[Path], C.Check]
    description: str


DATA_CHECKS: list[CheckDef] = [
    CheckDef("source_images", "keys_unique_quarantine_explained", C.check_source_images,
             "At least one image accepted, keys unique, every quarantined input has a reason."),
    CheckDef("depth_maps", "no_nan_depth", C.check_depth_maps,
             "No NaN/inf depth, z in [near, 1/min_disparity], every image has a depth map."),
    CheckDef("warp_pairs", "masks_non_empty", C.check_warp_pairs,
             "Every condition mask is non-empty; views_per_image pairs per image."),
    CheckDef("dinov2_features", "every_image_featurised", C.check_dinov2_features,
             "Every accepted image has features."),
    CheckDef("pose_clusters", "every_image_labelled", C.check_pose_clusters, "Every image has a pose in range."),
    CheckDef("shard_manifest", "shards_verify_and_complete", C.check_training_shards,
             "Manifest verifies (sha256, sizes, counts); every sample has every member."),
]

MODEL_CHECKS: list[CheckDef] = [
    CheckDef("trained_models", "models_loadable", model_checks.check_trained_models,
             "The latest run has a first-view and a novel-view model directory."),
    CheckDef("eval_reports", "metrics_finite", model_checks.check_eval_reports,
             "metrics.json is flat and every number is finite."),
]

_BY_KEY = {(c.asset, c.name): c for c in DATA_CHECKS + MODEL_CHECKS}


def check_specs_for(asset: str) -> list[dg.AssetCheckSpec]:
    """The ``check_specs`` of data asset ``asset`` (blocking: a failure with severity ERROR
    stops its downstream steps in the same run)."""
    return [dg.AssetCheckSpec(c.name, asset=c.asset, description=c.description, blocking=True)
            for c in DATA_CHECKS if c.asset == asset]


def evaluate(check: CheckDef, root: Path | str) -> dg.AssetCheckResult:
    """Run one check on the data root; a check that raises fails (ERROR) with the error as
    metadata instead of failing the step, so the materializations stay recorded."""
    try:
        passed, md = check.fn(Path(root))
    except Exception as e:  # noqa: BLE001 -- reported as a failed check, with its reason
        passed, md = False, {"error": f"{type(e).__name__}: {e}"}
    md = dict(md)
    severity = dg.AssetCheckSeverity.WARN if md.pop("severity", None) == "WARN" else dg.AssetCheckSeverity.ERROR
    return dg.AssetCheckResult(asset_key=dg.AssetKey(check.asset), check_name=check.name, passed=bool(passed),
                               severity=severity, metadata={k: v for k, v in md.items() if v is not None})


def check_results(context: dg.AssetExecutionContext, root: Path | str) -> Iterator[dg.AssetCheckResult]:
    """Results of the checks of the running asset that the run selected
    (``context.selected_asset_check_keys``; a subset run may leave some out)."""
    for key in sorted(context.selected_asset_check_keys, key=lambda k: (k.asset_key.to_user_string(), k.name)):
        check = _BY_KEY.get((key.asset_key.to_user_string(), key.name))
        if check is not None:
            yield evaluate(check, root)


def _separate(check: CheckDef) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=check.asset, name=check.name, description=check.description, blocking=True)
    def _check(settings: ViewforgeSettings) -> dg.AssetCheckResult:
        return evaluate(check, settings.root())

    return _check


#: Separate check definitions, for the model assets only (data assets check inside their step).
ASSET_CHECKS = [_separate(c) for c in MODEL_CHECKS]
