"""What every stage reads and writes, declared once.

The Dagster assets take their ``deps``, partitioning and pools from :data:`STAGES`;
``tests/test_stage_specs.py`` checks ``dvc.yaml`` against it (deps = the stage's code files
and its inputs' outputs; params = the sections of the stage and its upstream stages; outs).
A runner is *handed* its declared inputs (:func:`pipelines.stages.common.open_input`); it
never opens another stage's store by itself.
"""
from __future__ import annotations

from dataclasses import dataclass

import pipelines.versions as V


@dataclass(frozen=True)
class StageSpec:
    """One stage.

    Attributes:
        name: stage = Dagster asset = DVC stage name.
        inputs: stages it reads (their outputs are its DVC deps, their assets its Dagster deps).
        params: params.yaml sections that determine its own results (top-level keys such
            as ``seed`` count as sections).
        code: repository files whose code determines its results (DVC deps).
        outputs: paths under the data root it writes (DVC outs).
        partitioned: per-sample stage, partitioned by bucket.
        code_version: :mod:`pipelines.versions` string.
        key_column: cache key column (several rows may share a key).
        gpu: uses a model (depth, DINOv2): runs in Ray actors, pool ``gpu`` in Dagster.
    """
    name: str
    inputs: tuple[str, ...]
    params: tuple[str, ...]
    code: tuple[str, ...]
    outputs: tuple[str, ...]
    partitioned: bool
    code_version: str
    key_column: str = "key"
    gpu: bool = False


_COMMON = ("pipelines/stages/common.py", "pipelines/stages/specs.py", "pipelines/storage.py", "pipelines/params_schema.py", "pipelines/params_sections.py",
           "pipelines/stage_store.py", "pipelines/buckets.py", "pipelines/engine.py", "pipelines/versions.py",
           "pipelines/config.py")

#: the viewset readers, conventions and crop/normalisation code (pipelines/viewsets is a package)
_VIEWSET_CODE = ("pipelines/viewsets", "pipelines/camera_conventions.py", "pipelines/stages/viewsets.py")

STAGES: dict[str, StageSpec] = {s.name: s for s in [
    StageSpec("source_listing", (), ("source", "num_buckets"),
              ("pipelines/sources.py", "pipelines/listing.py", "pipelines/stages/ingest.py", *_COMMON),
              ("source_listing",), partitioned=False, code_version=V.LISTING),
    StageSpec("source_images", ("source_listing",), ("ingest",),
              ("pipelines/images.py", "pipelines/stages/ingest.py", *_COMMON),
              ("source_images", "cache/source_images"), partitioned=True, code_version=V.IMAGES),
    StageSpec("depth_maps", ("source_images",), ("depth",),
              ("pipelines/depth.py", "pipelines/depth_convention.py", "pipelines/models.py",
               "pipelines/stages/depth.py", *_COMMON),
              ("depth_maps", "cache/depth_maps"), partitioned=True, code_version=V.DEPTH, gpu=True),
    StageSpec("warp_pairs", ("source_images", "depth_maps"), ("seed", "warp"),
              ("pipelines/warping.py", "pipelines/raster.py", "pipelines/camera.py", "pipelines/augment.py",
               "pipelines/pairs.py", "pipelines/stages/warp.py", *_COMMON),
              ("warp_pairs", "cache/warp_pairs"), partitioned=True, code_version=V.WARP, key_column="sample_key"),
    StageSpec("dinov2_features", ("source_images",), ("features",),
              ("pipelines/features.py", "pipelines/models.py", "pipelines/stages/features.py", *_COMMON),
              ("dinov2_features", "cache/dinov2_features"), partitioned=True, code_version=V.FEATURES,
              gpu=True),
    StageSpec("pose_clusters", ("dinov2_features",), ("seed", "pose"),
              ("pipelines/pose_clustering.py", "pipelines/pose_assign.py", "pipelines/pose_report.py", "pipelines/stages/pose.py",
               *_COMMON),
              ("pose_clusters",), partitioned=False, code_version=V.POSE),
    StageSpec("training_shards", ("source_listing", "source_images", "depth_maps", "warp_pairs", "pose_clusters"), ("shards",),
              ("pipelines/shards.py", "pipelines/shard_manifest.py", "pipelines/sample_schema.py", "pipelines/sample_codecs.py",
               "pipelines/stages/shards.py", *_COMMON),
              ("shards",), partitioned=True, code_version=V.SHARDS),
    StageSpec("shard_manifest", ("training_shards",), ("shards",),
              ("pipelines/shard_manifest.py", "pipelines/stages/shards.py", *_COMMON),
              ("shards/manifest.json",), partitioned=False, code_version=V.SHARDS),
    # posed multi-view data (issue 14): a second dataset kind beside the IVID pairs
    StageSpec("viewset_sources", (), ("viewset_source", "num_buckets"),
              (*_VIEWSET_CODE, *_COMMON),
              ("viewset_sources",), partitioned=False, code_version=V.VIEWSET_SOURCES),
    StageSpec("viewsets", ("viewset_sources",), ("viewsets",),
              (*_VIEWSET_CODE, "pipelines/sample_schema.py", *_COMMON),
              ("viewsets", "cache/viewsets"), partitioned=True, code_version=V.VIEWSETS),
    StageSpec("viewset_shards", ("viewsets",), ("viewset_shards",),
              ("pipelines/shards.py", "pipelines/shard_manifest.py", "pipelines/sample_schema.py", "pipelines/sample_codecs.py",
               "pipelines/stages/viewsets.py", *_COMMON),
              ("viewset_shards",), partitioned=True, code_version=V.VIEWSET_SHARDS),
    StageSpec("viewset_manifest", ("viewset_shards",), ("viewset_shards",),
              ("pipelines/shard_manifest.py", "pipelines/stages/shards.py", *_COMMON),
              ("viewset_shards/manifest.json",), partitioned=False, code_version=V.VIEWSET_SHARDS),
]}


def upstream_closure(name: str) -> list[str]:
    """``name`` and every stage it depends on, transitively, in graph order."""
    out: list[str] = []

    def visit(n: str) -> None:
        for i in STAGES[n].inputs:
            visit(i)
        if n not in out:
            out.append(n)

    visit(name)
    return out


def param_sections(name: str) -> list[str]:
    """The params.yaml sections that determine the results of ``name``: its own and those
    of every upstream stage (sorted). ``dvc.yaml`` lists exactly these."""
    return sorted({s for n in upstream_closure(name) for s in STAGES[n].params})
