"""The Dagster ``Definitions`` of viewforge (``dagster dev -w workspace.yaml``)."""
from __future__ import annotations

import dagster as dg

from assets_defs.assets import DATA_ASSETS
from assets_defs.checks import ASSET_CHECKS
from assets_defs.models import MODEL_ASSETS
from assets_defs.resources import ViewforgeSettings

#: The main job: images -> WebDataset training shards.
shards_job = dg.define_asset_job(
    "build_training_shards", selection=dg.AssetSelection.assets(*DATA_ASSETS),
    description="Materialize source_images -> depth_maps -> warp_pairs / dinov2_features -> pose_clusters "
                "-> training_shards.")

#: Training and evaluation on the current shards (GPU pool ``gpu``).
models_job = dg.define_asset_job(
    "train_and_evaluate", selection=dg.AssetSelection.assets(*MODEL_ASSETS),
    description="Materialize trained_models (Dagster Pipes subprocess) -> eval_reports.")

defs = dg.Definitions(
    assets=[*DATA_ASSETS, *MODEL_ASSETS],
    asset_checks=ASSET_CHECKS,
    jobs=[shards_job, models_job],
    resources={"settings": ViewforgeSettings()},
)
