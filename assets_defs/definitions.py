"""The Dagster ``Definitions`` of viewforge (``dagster dev -w workspace.yaml``)."""
from __future__ import annotations

import dagster as dg

from assets_defs.assets import DATA_ASSETS
from assets_defs.checks import ASSET_CHECKS
from assets_defs.models import MODEL_ASSETS
from assets_defs.nvs import NVS_ASSETS
from assets_defs.resources import ViewforgeSettings
from assets_defs.sensors import SENSORS
from assets_defs.viewsets import VIEWSET_ASSETS, VIEWSET_CHECKS


class NoStorageIOManager(dg.ConfigurableIOManager):
    """Assets write their own files (stage caches, indexes, shards); step outputs carry
    nothing. Unlike Dagster's default pickling IO manager this accepts an output that
    spans a range of partitions (single-run backfills of bucketed assets)."""

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        return None

    def load_input(self, context: dg.InputContext) -> None:
        return None


#: The main job: images -> WebDataset training shards, in one process (steps of one run share
#: it; buckets fan out to the execution engine, so a process per step would only add start-up).
shards_job = dg.define_asset_job(
    "build_training_shards", selection=dg.AssetSelection.assets(*DATA_ASSETS),
    executor_def=dg.in_process_executor,
    description="Materialize source_listing -> source_images -> depth_maps -> warp_pairs / dinov2_features -> "
                "pose_clusters -> training_shards -> shard_manifest.")

#: Training and evaluation on the current shards (GPU pool ``gpu``).
models_job = dg.define_asset_job(
    "train_and_evaluate", selection=dg.AssetSelection.assets(*MODEL_ASSETS),
    executor_def=dg.in_process_executor,
    description="Materialize trained_models (Dagster Pipes subprocess) -> eval_reports.")

#: Posed multi-view data (issue 14): sequences -> viewset WebDataset shards.
viewsets_job = dg.define_asset_job(
    "build_viewset_shards", selection=dg.AssetSelection.assets(*VIEWSET_ASSETS),
    executor_def=dg.in_process_executor,
    description="Materialize viewset_sources -> viewsets -> viewset_shards -> viewset_manifest.")

#: Multi-view model on the viewset shards and its novel-view report (issue 15; GPU pool ``gpu``).
viewset_models_job = dg.define_asset_job(
    "train_and_evaluate_multiview", selection=dg.AssetSelection.assets(*NVS_ASSETS),
    executor_def=dg.in_process_executor,
    description="Materialize viewset_models (Dagster Pipes subprocess) -> nvs_reports.")

defs = dg.Definitions(
    assets=[*DATA_ASSETS, *MODEL_ASSETS, *VIEWSET_ASSETS, *NVS_ASSETS],
    asset_checks=[*ASSET_CHECKS, *VIEWSET_CHECKS],
    jobs=[shards_job, models_job, viewsets_job, viewset_models_job],
    sensors=SENSORS,
    resources={"settings": ViewforgeSettings(), "io_manager": NoStorageIOManager()},
    executor=dg.in_process_executor,
)
