"""The asset graph. Each asset only reads config, calls a stage runner in
``pipelines.stages`` and reports metadata; the algorithms live in ``pipelines``.

source_images -> depth_maps -> warp_pairs ----------------+
      |                                                   +-> training_shards
      +--------> dinov2_features -> pose_clusters --------+
"""

import dagster as dg

import pipelines.versions as V

from assets_defs.metadata import to_result
from assets_defs.resources import (DepthConfig, FeaturesConfig, IngestConfig, PoseConfig, ShardsConfig,
                                   ViewforgeSettings, WarpConfig)

GROUP = "data"


@dg.asset(group_name=GROUP, code_version=V.IMAGES, kinds={"python", "parquet"},
          description="Ingest the configured source (sample / folder / manifest): decode, EXIF-orient, RGB, "
                      "centre-crop, LANCZOS resize; sha256 key; dedup; bad inputs quarantined with a reason.")
def source_images(context: dg.AssetExecutionContext, config: IngestConfig,
                  settings: ViewforgeSettings) -> dg.MaterializeResult:
    from pipelines.stages.ingest import run_ingest

    params = settings.params()
    params["ingest"] = {"resolution": config.resolution, "min_size": config.min_size}
    params["source"] = config.source.model_dump()
    return to_result(run_ingest(settings.root(), params), context)


@dg.asset(group_name=GROUP, code_version=V.DEPTH, deps=[source_images], kinds={"pytorch", "parquet"},
          description="Monocular relative disparity (transformers Depth Anything V2) and IVID z-depth.")
def depth_maps(context: dg.AssetExecutionContext, config: DepthConfig,
               settings: ViewforgeSettings) -> dg.MaterializeResult:
    from pipelines.stages.depth import run_depth

    return to_result(run_depth(settings.root(), settings.params("depth", config), device=settings.device), context)


@dg.asset(group_name=GROUP, code_version=V.WARP, deps=[source_images, depth_maps], kinds={"pytorch", "parquet"},
          description="IVID training pairs: novel camera sampled per (image, view), forward-backward warp, "
                      "condition RGBD with masks; blur and texture-erosion augmentation.")
def warp_pairs(context: dg.AssetExecutionContext, config: WarpConfig,
               settings: ViewforgeSettings) -> dg.MaterializeResult:
    from pipelines.stages.warp import run_warp

    return to_result(run_warp(settings.root(), settings.params("warp", config), device=settings.device), context)


@dg.asset(group_name=GROUP, code_version=V.FEATURES, deps=[source_images], kinds={"pytorch", "parquet"},
          description="DINOv2 (timm) L2-normalised patch tokens and CLS token, also of the mirrored image.")
def dinov2_features(context: dg.AssetExecutionContext, config: FeaturesConfig,
                    settings: ViewforgeSettings) -> dg.MaterializeResult:
    from pipelines.stages.features import run_features

    return to_result(run_features(settings.root(), settings.params("features", config), device=settings.device),
                     context)


@dg.asset(group_name=GROUP, code_version=V.POSE, deps=[dinov2_features], kinds={"faiss", "parquet"},
          description="MIRAGE pose clusters: DINOv2 part discovery, part visibility/location descriptors, "
                      "FAISS k-means poses, mirror pairs, cyclic order, outliers.")
def pose_clusters(context: dg.AssetExecutionContext, config: PoseConfig,
                  settings: ViewforgeSettings) -> dg.MaterializeResult:
    from pipelines.stages.pose import run_pose

    return to_result(run_pose(settings.root(), settings.params("pose", config)), context)


@dg.asset(group_name=GROUP, code_version=V.SHARDS, deps=[warp_pairs, pose_clusters], kinds={"webdataset"},
          description="Deterministic WebDataset tars of IVID pairs (split by sample-key hash) and a manifest.")
def training_shards(context: dg.AssetExecutionContext, config: ShardsConfig,
                    settings: ViewforgeSettings) -> dg.MaterializeResult:
    from pipelines.stages.shards import run_shards

    return to_result(run_shards(settings.root(), settings.params("shards", config)), context)


DATA_ASSETS = [source_images, depth_maps, warp_pairs, dinov2_features, pose_clusters, training_shards]
