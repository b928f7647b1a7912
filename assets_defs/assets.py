"""The data assets. Each asset only reads config, hands its buckets to a stage runner in
``pipelines.stages`` and reports metadata; the algorithms live in ``pipelines``.

source_listing -> source_images[b] -> depth_maps[b] -> warp_pairs[b] ---------------+
                        |                                                            +-> training_shards[b] -> shard_manifest
                        +----------> dinov2_features[b] -> pose_clusters ------------+

``[b]``: partitioned by bucket (:mod:`pipelines.buckets`), ``BackfillPolicy.single_run()``:
a backfill of a range is one run whose buckets fan out to the engine of
``params['execution']`` (in-process or Ray). Each bucket gets its own materialization,
metadata and data version; a failed bucket fails the run with its reason after the other
buckets' results are stored (a retry of the range recomputes only what is missing).
Deps, partitioning and pools come from :data:`pipelines.stages.specs.STAGES`.
"""

import dagster as dg

from assets_defs.checks import check_specs_for
from assets_defs.metadata import emit_buckets, to_result
from assets_defs.resources import (DepthConfig, FeaturesConfig, IngestConfig, PoseConfig, ShardsConfig, SourceConfig,
                                   ViewforgeSettings, WarpConfig, clean_failures)
from assets_defs.versions import asset_code_version, bucket_partitions
from pipelines.params_schema import effective_num_buckets
from pipelines.stages.specs import STAGES

GROUP = "data"
OWNERS = ["team:data-engineering"]
PARTITIONS = bucket_partitions()
POLICY = dg.BackfillPolicy.single_run()


def _deps(stage: str) -> list[str]:
    return list(STAGES[stage].inputs)


def asset_kwargs(stage: str, kinds: set[str], description: str) -> dict:
    spec = STAGES[stage]
    kw = dict(name=stage, group_name=GROUP, code_version=asset_code_version(stage), deps=_deps(stage),
              kinds=kinds, description=description, owners=OWNERS,
              tags={"bucketed": "true"} if spec.partitioned else {}, check_specs=check_specs_for(stage))
    if spec.partitioned:
        kw.update(partitions_def=PARTITIONS, backfill_policy=POLICY, output_required=False)
    if spec.gpu:
        kw["pool"] = "gpu"
    return kw


def buckets_of(params: dict) -> list[str]:
    """All bucket ids for ``params`` (``num_buckets``; 16 in demo / smoke).

    Raises:
        dagster.Failure: they differ from this code location's partitions (which were built
            from params.yaml and ``$VIEWFORGE_PROFILE`` when it loaded).
    """
    n = effective_num_buckets(params)
    keys = PARTITIONS.get_partition_keys()
    if len(keys) != n:
        raise dg.Failure(description=f"The run's parameters ask for {n} buckets (num_buckets / profile "
                                     f"{params.get('profile')!r}) but this code location's partitions have {len(keys)}. "
                                     "Set num_buckets and VIEWFORGE_PROFILE before starting Dagster (then reload "
                                     "definitions) so both agree.", allow_retries=False)
    return keys


def run_bucketed(context: dg.AssetExecutionContext, stage: str, settings: ViewforgeSettings, params: dict,
                 runner: str, resource: str | None = None):
    from pipelines.stages.common import run_partitioned

    buckets_of(params)
    buckets = list(context.partition_keys)
    outcomes = run_partitioned(stage, settings.data_uri(), params, buckets, runner=runner, resource=resource,
                               device=settings.device,
                               progress=lambda o: context.log.info(
                                   f"{stage} bucket {o.bucket}: " + (f"FAILED {o.error}" if o.error else
                                                                     f"computed {o.report.computed} reused "
                                                                     f"{o.report.reused}")))
    yield from emit_buckets(context, stage, outcomes, params, settings.data_uri())


@dg.asset(**asset_kwargs("source_listing", {"python", "parquet"},
                    "Ingest phase 1: list the source (sample / folder / manifest), sha256 every file, dedup by "
                    "content key, bucket; unreadable files quarantined, non-image files skipped, with reasons."))
def source_listing(context: dg.AssetExecutionContext, config: SourceConfig,
                   settings: ViewforgeSettings) -> dg.MaterializeResult:
    from pipelines.stages.ingest import run_listing

    with clean_failures():
        params = settings.params("source", config)
        params["num_buckets"] = len(buckets_of(params))
        return to_result(run_listing(settings.data_uri(), params), context, root=settings.data_uri())


@dg.asset(**asset_kwargs("source_images", {"python", "parquet"},
                    "Ingest phase 2, per bucket: decode (first frame of multi-frame files), EXIF-orient, RGB, "
                    "centre-crop, LANCZOS resize; bad images quarantined with a reason."))
def source_images(context: dg.AssetExecutionContext, config: IngestConfig, settings: ViewforgeSettings):
    with clean_failures():
        yield from run_bucketed(context, "source_images", settings, settings.params("ingest", config),
                        "pipelines.stages.ingest:run_images_bucket")


@dg.asset(**asset_kwargs("depth_maps", {"pytorch", "parquet"},
                    "Monocular relative disparity (transformers Depth Anything V2) and IVID z-depth, per bucket."))
def depth_maps(context: dg.AssetExecutionContext, config: DepthConfig, settings: ViewforgeSettings):
    with clean_failures():
        yield from run_bucketed(context, "depth_maps", settings, settings.params("depth", config),
                        "pipelines.stages.depth:run_depth_bucket", "pipelines.stages.depth:load_resource")


@dg.asset(**asset_kwargs("warp_pairs", {"pytorch", "parquet"},
                    "IVID training pairs: novel camera sampled per (image, view), forward-backward warp, "
                    "condition RGBD with masks; blur and texture-erosion augmentation."))
def warp_pairs(context: dg.AssetExecutionContext, config: WarpConfig, settings: ViewforgeSettings):
    with clean_failures():
        yield from run_bucketed(context, "warp_pairs", settings, settings.params("warp", config),
                        "pipelines.stages.warp:run_warp_bucket")


@dg.asset(**asset_kwargs("dinov2_features", {"pytorch", "parquet"},
                    "DINOv2 (timm) L2-normalised patch tokens and CLS token, also of the mirrored image."))
def dinov2_features(context: dg.AssetExecutionContext, config: FeaturesConfig, settings: ViewforgeSettings):
    with clean_failures():
        yield from run_bucketed(context, "dinov2_features", settings, settings.params("features", config),
                        "pipelines.stages.features:run_features_bucket", "pipelines.stages.features:load_resource")


@dg.asset(**asset_kwargs("pose_clusters", {"faiss", "parquet"},
                    "MIRAGE pose clusters over all buckets: DINOv2 part discovery, part visibility/location "
                    "descriptors, FAISS k-means poses, mirror pairs, cyclic order, outliers; labels per bucket."))
def pose_clusters(context: dg.AssetExecutionContext, config: PoseConfig,
                  settings: ViewforgeSettings) -> dg.MaterializeResult:
    from pipelines.stages.pose import run_pose

    with clean_failures():
        params = settings.params("pose", config)
        return to_result(run_pose(settings.data_uri(), params, buckets_of(params)), context,
                         root=settings.data_uri())


@dg.asset(**asset_kwargs("training_shards", {"webdataset"},
                    "Per bucket: deterministic WebDataset tars of IVID pairs (user split, else split by sample-key "
                    "hash) under shards/bucket=<b>/ with the bucket's manifest."))
def training_shards(context: dg.AssetExecutionContext, config: ShardsConfig, settings: ViewforgeSettings):
    from pipelines.stages.shards import guard_shrink

    with clean_failures():
        params = settings.params("shards", config)
        guard_shrink(settings.data_uri(), params, list(context.partition_keys), buckets_of(params))
        yield from run_bucketed(context, "training_shards", settings, params,
                        "pipelines.stages.shards:run_shards_bucket")


@dg.asset(**asset_kwargs("shard_manifest", {"webdataset", "json"},
                    "Merge the bucket manifests into shards/manifest.json (per-shard sha256, counts, splits, "
                    "content digest); refuses to publish a set that lost most of its samples."))
def shard_manifest(context: dg.AssetExecutionContext, config: ShardsConfig,
                   settings: ViewforgeSettings) -> dg.MaterializeResult:
    from pipelines.stages.shards import run_manifest

    with clean_failures():
        params = settings.params("shards", config)
        report = run_manifest(settings.data_uri(), params, buckets_of(params))
        return to_result(report, context, root=settings.data_uri())


DATA_ASSETS = [source_listing, source_images, depth_maps, warp_pairs, dinov2_features, pose_clusters,
               training_shards, shard_manifest]
