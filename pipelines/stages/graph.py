"""The data graph without Dagster: every stage in order over every bucket.

For tests, benchmarks and scripts; the Dagster assets call the same runners with the
buckets of their partition range. Each partitioned stage fans its buckets out with the
engine of ``params['execution']``.
"""
from __future__ import annotations

from typing import Any, Callable

from pipelines.buckets import bucket_ids
from pipelines.params_schema import effective_num_buckets
from pipelines.stages.common import StageReport, run_partitioned

#: partitioned stage -> (runner, shared-model factory or None)
RUNNERS = {
    "source_images": ("pipelines.stages.ingest:run_images_bucket", None),
    "depth_maps": ("pipelines.stages.depth:run_depth_bucket", "pipelines.stages.depth:load_resource"),
    "warp_pairs": ("pipelines.stages.warp:run_warp_bucket", None),
    "dinov2_features": ("pipelines.stages.features:run_features_bucket", "pipelines.stages.features:load_resource"),
    "training_shards": ("pipelines.stages.shards:run_shards_bucket", None),
}


class StageFailed(RuntimeError):
    """A stage had failed buckets (their reasons are in the message)."""


def run_stage(stage: str, root: Any, params: dict[str, Any], buckets: list[str] | None = None,
              device: str | None = None) -> dict[str, StageReport] | StageReport:
    """Run one stage: per-bucket reports for a partitioned stage, one report otherwise.

    Raises:
        StageFailed: a bucket failed (the others' results are stored).
    """
    from pipelines.stages.ingest import run_listing
    from pipelines.stages.pose import run_pose
    from pipelines.stages.shards import run_manifest

    n = effective_num_buckets(params)
    buckets = buckets if buckets is not None else bucket_ids(n)
    if stage == "source_listing":
        return run_listing(root, {**params, "num_buckets": n})
    if stage == "pose_clusters":
        return run_pose(root, params, bucket_ids(n))
    if stage == "shard_manifest":
        return run_manifest(root, params, bucket_ids(n))
    if stage == "training_shards":
        from pipelines.stages.shards import guard_shrink

        guard_shrink(root, params, buckets, bucket_ids(n))
    runner, resource = RUNNERS[stage]
    outcomes = run_partitioned(stage, root, params, buckets, runner=runner, resource=resource, device=device)
    bad = [o for o in outcomes if o.error]
    if bad:
        raise StageFailed(f"{stage}: " + "; ".join(f"bucket {o.bucket}: {o.error}" for o in bad))
    reports = {o.bucket: o.report for o in outcomes}
    t = totals(reports)
    if t["failed"] and not (t["computed"] or t["reused"]):
        raise StageFailed(f"{stage}: every item failed ({t['failed']})")
    return reports


ORDER = ["source_listing", "source_images", "depth_maps", "warp_pairs", "dinov2_features", "pose_clusters",
         "training_shards", "shard_manifest"]


def run_data_graph(root: Any, params: dict[str, Any], *, device: str | None = None,
                   on_stage: Callable[[str, Any], None] | None = None) -> dict[str, Any]:
    """Materialize the whole data graph (listing to merged shard manifest) under ``root``.

    Returns ``{stage: report or {bucket: report}}``. Raises :class:`StageFailed` on the
    first stage with a failed bucket.
    """
    out: dict[str, Any] = {}
    for stage in ORDER:
        out[stage] = run_stage(stage, root, params, device=device)
        if on_stage:
            on_stage(stage, out[stage])
    return out


def totals(reports: dict[str, StageReport]) -> dict[str, int]:
    """computed / reused / failed summed over buckets."""
    return {k: sum(getattr(r, k) for r in reports.values()) for k in ("computed", "reused", "failed")}
