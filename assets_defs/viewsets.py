"""The posed multi-view ("viewset") assets, group ``viewsets`` (issue 14).

viewset_sources -> viewsets[b] -> viewset_shards[b] -> viewset_manifest

Runners and algorithms live in :mod:`pipelines.stages.viewsets`; checks in
:mod:`pipelines.stages.viewset_checks`. Partitioning, backfill policy, deps and code
versions come from :data:`pipelines.stages.specs.STAGES` (``assets_defs.assets.asset_kwargs``).
"""

import dagster as dg

from assets_defs.assets import asset_kwargs, buckets_of, run_bucketed
from assets_defs.metadata import to_result
from assets_defs.resources import ViewforgeSettings, clean_failures, section_config
from pipelines.stages import viewset_checks as C

GROUP = "viewsets"
ViewsetSourceConfig = section_config("viewset_source", "ViewsetSourceConfig")
ViewsetsConfig = section_config("viewsets", "ViewsetsConfig")
ViewsetShardsConfig = section_config("viewset_shards", "ViewsetShardsConfig")


def _kw(stage: str, kinds: set[str], description: str) -> dict:
    return {**asset_kwargs(stage, kinds, description), "group_name": GROUP}


@dg.asset(**_kw("viewset_sources", {"python", "parquet"},
                "List the posed multi-view sequences (CO3Dv2, transforms.json, COLMAP, SyncDreamer/GSO, SRN), "
                "content-key and validate them; bad sequences quarantined with a reason."))
def viewset_sources(context: dg.AssetExecutionContext, config: ViewsetSourceConfig,
                    settings: ViewforgeSettings) -> dg.MaterializeResult:
    from pipelines.stages.viewsets import run_viewset_sources

    with clean_failures():
        params = settings.params("viewset_source", config)
        params["num_buckets"] = len(buckets_of(params))
        return to_result(run_viewset_sources(settings.data_uri(), params), context)


@dg.asset(**_kw("viewsets", {"pytorch", "parquet"},
                "Per bucket: decode, object crop (K updated exactly), canonical +z-up world, encode as viewset/1."))
def viewsets(context: dg.AssetExecutionContext, config: ViewsetsConfig, settings: ViewforgeSettings):
    with clean_failures():
        yield from run_bucketed(context, "viewsets", settings, settings.params("viewsets", config),
                        "pipelines.stages.viewsets:run_viewsets_bucket")


@dg.asset(**_kw("viewset_shards", {"webdataset"},
                "Per bucket: deterministic WebDataset tars of viewsets (source split, else key hash) under "
                "viewset_shards/bucket=<b>/ with the bucket's manifest."))
def viewset_shards(context: dg.AssetExecutionContext, config: ViewsetShardsConfig, settings: ViewforgeSettings):
    from pipelines.stages.shards import guard_shrink

    with clean_failures():
        params = settings.params("viewset_shards", config)
        guard_shrink(settings.data_uri(), params, list(context.partition_keys), buckets_of(params),
                     source="viewsets", shard_dir="viewset_shards", section="viewset_shards")
        yield from run_bucketed(context, "viewset_shards", settings, params,
                        "pipelines.stages.viewsets:run_viewset_shards_bucket")


@dg.asset(**_kw("viewset_manifest", {"webdataset", "json"},
                "Merge the viewset bucket manifests into viewset_shards/manifest.json."))
def viewset_manifest(context: dg.AssetExecutionContext, config: ViewsetShardsConfig,
                     settings: ViewforgeSettings) -> dg.MaterializeResult:
    from pipelines.stages.viewsets import run_viewset_manifest

    with clean_failures():
        params = settings.params("viewset_shards", config)
        report = run_viewset_manifest(settings.data_uri(), params, buckets_of(params))
        return to_result(report, context, root=settings.data_uri())


def _check(asset, fn, name: str, description: str):
    @dg.asset_check(asset=asset, name=name, description=description, blocking=True)
    def _c(settings: ViewforgeSettings) -> dg.AssetCheckResult:
        passed, md = fn(settings.root())
        severity = dg.AssetCheckSeverity.WARN if md.pop("severity", None) == "WARN" else dg.AssetCheckSeverity.ERROR
        return dg.AssetCheckResult(passed=bool(passed), severity=severity,
                                   metadata={k: v for k, v in md.items() if v is not None})

    return _c


VIEWSET_ASSETS = [viewset_sources, viewsets, viewset_shards, viewset_manifest]
VIEWSET_CHECKS = [
    _check(viewset_sources, C.check_viewset_sources, "keys_unique_quarantine_explained",
           "At least one sequence accepted, keys unique, every quarantined sequence has a known reason."),
    _check(viewsets, C.check_viewsets, "every_sequence_accounted_cameras_rigid",
           "Every listed sequence is stored or quarantined with a reason; stored cameras rigid, f > 0."),
    _check(viewset_manifest, C.check_viewset_manifest, "shards_verify_and_valid",
           "Manifest verifies (sha256, sizes, counts); every sample is a valid viewset/1 sample."),
]
