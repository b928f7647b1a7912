"""Asset checks: one or more per stage (logic in :mod:`pipelines.stages.checks`)."""

import dagster as dg

from assets_defs.assets import (depth_maps, dinov2_features, pose_clusters, shard_manifest, source_images,
                                warp_pairs)
from assets_defs.models import eval_reports, trained_models
from assets_defs.resources import ViewforgeSettings
from pipelines.stages import checks as C


def _make(asset, fn, name: str, description: str):
    @dg.asset_check(asset=asset, name=name, description=description, blocking=True)
    def _check(settings: ViewforgeSettings) -> dg.AssetCheckResult:
        passed, md = fn(settings.root())
        severity = dg.AssetCheckSeverity.WARN if md.pop("severity", None) == "WARN" else dg.AssetCheckSeverity.ERROR
        return dg.AssetCheckResult(passed=bool(passed), severity=severity,
                                   metadata={k: v for k, v in md.items() if v is not None})

    return _check


ASSET_CHECKS = [
    _make(source_images, C.check_source_images, "keys_unique_quarantine_explained",
          "At least one image accepted, keys unique, every quarantined input has a reason."),
    _make(depth_maps, C.check_depth_maps, "no_nan_depth", "No NaN/inf depth, z in [near, 1/min_disparity], "
                                                          "every image has a depth map."),
    _make(warp_pairs, C.check_warp_pairs, "masks_non_empty", "Every condition mask is non-empty; "
                                                             "views_per_image pairs per image."),
    _make(dinov2_features, C.check_dinov2_features, "every_image_featurised", "Every accepted image has features."),
    _make(pose_clusters, C.check_pose_clusters, "every_image_labelled", "Every image has a pose in range."),
    _make(shard_manifest, C.check_training_shards, "shards_verify_and_complete",
          "Manifest verifies (sha256, sizes, counts); every sample has every member."),
    _make(trained_models, C.check_trained_models, "models_loadable",
          "The latest run has a first-view and a novel-view model directory."),
    _make(eval_reports, C.check_eval_reports, "metrics_finite", "metrics.json is flat and every number is finite."),
]
