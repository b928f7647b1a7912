"""Turn stage reports into Dagster materializations (whole-asset or one per bucket).

What an asset page shows (Dagster 1.13 UI): counts and timings; previews as small inline
images (Markdown under 1000 characters renders inline, :func:`pipelines.previews.markdown_thumbnail`)
plus the full-size PNG behind "[Show Markdown]"; the index table's column schema
(``dagster/column_schema``); paths as path values, Markdown reports rendered; the data
checks evaluated inside the step (:func:`assets_defs.checks.check_results`); and, on every
materialization whose data derives from a model with random weights, the metadata
``weights: random (not meaningful)``, the event tag ``weights=random-not-meaningful`` and the
same run tag.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterator

import dagster as dg

from pipelines.models import RANDOM_WEIGHTS
from pipelines.previews import markdown_image, markdown_thumbnail
from pipelines.stages.common import StageReport

log = logging.getLogger("viewforge")

#: The event tag Dagster reads a materialization's data version from (scale-notes §2.1:
#: one AssetMaterialization per partition with this tag gives each bucket its own version).
DATA_VERSION_TAG = "dagster/data_version"
#: Event / run tag of data derived from random weights (tag values allow only ``[A-Za-z0-9_.-]``;
#: the metadata value ``weights`` spells it out as :data:`pipelines.models.RANDOM_WEIGHTS`).
WEIGHTS_TAG = ("weights", "random-not-meaningful")
#: Report metadata keys shown as path values / rendered Markdown instead of text.
PATH_KEYS = ("report_html", "report_dir", "manifest", "run_dir", "montage")
MARKDOWN_KEYS = ("report_markdown",)


def _previews_of(stage: str) -> Callable[[str, str, dict[str, Any]], dict[str, bytes]] | None:
    """``fn(root, bucket, params) -> {name: png}`` previews of one materialized bucket."""
    from pipelines.stages.common import open_input

    if stage == "source_images":
        from pipelines.stages.ingest import image_previews
        return lambda root, b, p: image_previews(open_input(root, "source_images", b))
    if stage == "depth_maps":
        from pipelines.stages.depth import depth_previews
        return lambda root, b, p: depth_previews(open_input(root, "depth_maps", b),
                                                 open_input(root, "source_images", b), p)
    if stage == "warp_pairs":
        from pipelines.stages.warp import pair_previews
        return lambda root, b, p: pair_previews(open_input(root, "warp_pairs", b),
                                                open_input(root, "source_images", b))
    return None


def bucket_previews(stage: str, root: str, bucket: str, params: dict[str, Any]) -> dict[str, bytes]:
    """Preview PNGs of one materialized bucket of ``stage`` ({} for stages without previews,
    or when they cannot be made: a preview never fails a step, it is logged)."""
    fn = _previews_of(stage)
    if fn is None:
        return {}
    try:
        return fn(root, bucket, params)
    except Exception as e:  # noqa: BLE001 -- previews are best effort
        log.warning("no preview for %s bucket %s: %s", stage, bucket, e)
        return {}


def column_schema(root: str, stage: str, bucket: str | None = None) -> dg.TableSchema | None:
    """``dg.TableSchema`` of a stage's index table (of one bucket, or of an unpartitioned
    stage): column names and Arrow types, from the Parquet footer; None when absent."""
    import pyarrow.parquet as pq

    from pipelines.storage import fs_path, index_path

    try:
        fs, path = fs_path(index_path(root, stage, bucket))
        schema = pq.read_schema(path, filesystem=fs)
    except (FileNotFoundError, OSError):
        return None
    return dg.TableSchema(columns=[dg.TableColumn(f.name, str(f.type), constraints=dg.TableColumnConstraints(
        nullable=f.nullable)) for f in schema])


def random_weights_upstream(root: str, stage: str, buckets: list[str] | None) -> bool:
    """Whether the current data of ``stage`` (its ``buckets``; None = every listed bucket)
    derives from a model stage (:attr:`StageSpec.gpu`: depth, DINOv2) whose stored index
    says ``weights_origin: random (not meaningful)``; the stage itself counts."""
    from pipelines.stages.checks import materialized_buckets
    from pipelines.stages.specs import STAGES, upstream_closure
    from pipelines.storage import index_path, read_parquet_metadata

    models = [s for s in upstream_closure(stage) if STAGES[s].gpu]
    if not models:
        return False
    try:
        bs = list(buckets) if buckets is not None else materialized_buckets(root)
    except FileNotFoundError:
        return False
    for s in models:
        for b in bs:
            try:
                if read_parquet_metadata(index_path(root, s, b)).get("weights_origin") == RANDOM_WEIGHTS:
                    return True
            except (FileNotFoundError, OSError):
                continue
    return False


def provenance_tags(context: dg.AssetExecutionContext, bucket: str) -> dict[str, str]:
    """Dagster's data-provenance event tags for bucket ``bucket`` of the running asset: its
    current code version and, per upstream asset, the latest data version and event id of
    the matching upstream partition (the same bucket, or the unpartitioned asset). With them
    Dagster's staleness (``staleStatusByPartition``, the UI's "Code version" / "Upstream
    data" badges) works per bucket, as for materializations made from the step's output;
    without them it reports every bucket as fresh."""
    from dagster._core.definitions.data_version import (CODE_VERSION_TAG, extract_data_version_from_entry,
                                                        get_input_data_version_tag, get_input_event_pointer_tag)

    assets_def = context.assets_def
    tags: dict[str, str] = {}
    code_version = assets_def.code_versions_by_key.get(context.asset_key)
    if code_version is None:
        return tags
    tags[CODE_VERSION_TAG] = code_version
    from pipelines.stages.specs import STAGES

    for name in sorted(STAGES[context.asset_key.to_user_string()].inputs):   # = the asset's deps
        dep = dg.AssetKey(name)
        part = bucket if STAGES[name].partitioned else None
        record = context.instance.get_latest_data_version_record(dep, partition_key=part)
        version = extract_data_version_from_entry(record.event_log_entry) if record else None
        if record is not None and version is not None:
            tags[get_input_data_version_tag(dep)] = version.value
            tags[get_input_event_pointer_tag(dep)] = str(record.storage_id)
    return tags


def _mark_run_random(context: dg.AssetExecutionContext) -> None:
    try:
        context.instance.add_run_tags(context.run_id, dict([WEIGHTS_TAG]))
    except Exception as e:  # noqa: BLE001 -- a tag is informative only
        log.debug("cannot tag run: %s", e)


def report_metadata(report: StageReport) -> dict[str, Any]:
    """Dagster metadata of a report: counts, timings, its own metadata (:data:`PATH_KEYS` as
    path values, :data:`MARKDOWN_KEYS` as Markdown), failures table (user strings escaped),
    previews: ``preview_<name>`` an inline thumbnail, ``preview_<name>_full`` the PNG."""
    from pipelines.text import escape_md

    md: dict = {
        "computed": dg.MetadataValue.int(report.computed),
        "reused": dg.MetadataValue.int(report.reused),
        "failed": dg.MetadataValue.int(report.failed),
        "seconds": dg.MetadataValue.float(round(report.seconds, 3)),
        "stage_version": dg.MetadataValue.text(report.version),
    }
    for k, v in report.metadata.items():
        if v is None:
            continue
        if isinstance(v, bool):
            md[k] = dg.MetadataValue.bool(v)
        elif isinstance(v, int):
            md[k] = dg.MetadataValue.int(v)
        elif isinstance(v, float):
            md[k] = dg.MetadataValue.float(v)
        elif isinstance(v, str) and k in PATH_KEYS:
            md[k] = dg.MetadataValue.path(v)
        elif isinstance(v, str) and k in MARKDOWN_KEYS:
            md[k] = dg.MetadataValue.md(v)
        elif isinstance(v, str):
            md[k] = dg.MetadataValue.text(v)
        else:
            md[k] = dg.MetadataValue.json(v)
    if any(v == RANDOM_WEIGHTS for v in report.metadata.values()):
        md["weights"] = dg.MetadataValue.text(RANDOM_WEIGHTS)
    if report.failures:
        rows = "\n".join(f"| {escape_md(str(f.get('uri', f.get('key', ''))))} | {escape_md(str(f['reason']))} |"
                         for f in report.failures[:50])
        md["failures"] = dg.MetadataValue.md(f"| item | reason |\n|---|---|\n{rows}")
    for name, png in report.previews.items():
        thumb = markdown_thumbnail(png, name)
        if thumb is not None:
            md[f"preview_{name}"] = dg.MetadataValue.md(thumb)
        md[f"preview_{name}_full"] = dg.MetadataValue.md(markdown_image(png, name))
    return md


def to_result(report: StageReport, context: dg.AssetExecutionContext | None = None,
              root: str | None = None) -> dg.MaterializeResult:
    """MaterializeResult with counts, timings, previews (Markdown) and a content DataVersion.

    When any model ran on random weights the metadata says ``weights: random (not meaningful)``
    and a warning is logged. With ``root`` (the data root) and ``context``, also: the index
    table's column schema, the random-weights lineage (metadata, event and run tag, see the
    module docstring) and the results of the asset's selected checks.
    """
    md = report_metadata(report)
    tags: dict[str, str] = {}
    checks: list[dg.AssetCheckResult] = []
    if root is not None:
        schema = column_schema(root, report.stage)
        if schema is not None:
            md["dagster/column_schema"] = schema
        if "weights" not in md and random_weights_upstream(root, report.stage, None):
            md["weights"] = dg.MetadataValue.text(RANDOM_WEIGHTS)
        if context is not None:
            from assets_defs.checks import check_results

            checks = list(check_results(context, root))
    if "weights" in md and md["weights"].value == RANDOM_WEIGHTS:
        tags = dict([WEIGHTS_TAG])
    if context is not None:
        if tags:
            context.log.warning(f"{report.stage}: model weights are {RANDOM_WEIGHTS}")
            _mark_run_random(context)
        scalars = {k: v for k, v in report.summary().items() if isinstance(v, (int, float, str)) and len(str(v)) < 200}
        context.log.info(f"{report.stage}: {scalars}")
    return dg.MaterializeResult(metadata=md, data_version=dg.DataVersion(report.data_version), tags=tags or None,
                                check_results=checks or None)


def emit_buckets(context: dg.AssetExecutionContext, stage: str, outcomes: list, params: dict[str, Any],
                 root: str) -> Iterator[Any]:
    """Events of a bucketed step: when every bucket succeeded, first the step's output (one
    event per partition of the range, superseded next), then one ``AssetMaterialization``
    per bucket with its own metadata (previews of the bucket, :func:`bucket_previews`; the
    column schema of its index) and data version (the latest event of each partition; the
    bucket with the most samples last, as the asset page shows the latest event), then
    the results of the asset's selected checks over the whole asset.
    Failed buckets: the good buckets' events, then ``dagster.Failure`` naming each failed
    bucket and its reason (a retry of the range recomputes only what is missing).
    Buckets derived from random weights carry the weights metadata, event tag and run tag.
    """
    from assets_defs.checks import check_results

    ok = [o for o in outcomes if o.error is None]
    failed = [o for o in outcomes if o.error is not None]
    totals = {k: sum(getattr(o.report, k) for o in ok) for k in ("computed", "reused", "failed")}
    weights = sorted({str(o.report.metadata.get("weights")) for o in ok if o.report.metadata.get("weights")})
    if ok and not failed and totals["failed"] and not (totals["computed"] or totals["reused"]):
        from pipelines.text import escape_md

        reasons = sorted({f["reason"] for o in ok for f in o.report.failures})[:10]
        raise dg.Failure(description=f"every item of {stage} failed ({totals['failed']}): nothing to publish. "
                                     f"First reasons: {'; '.join(reasons)}",
                         metadata={"reasons": dg.MetadataValue.md("\n".join(f"- {escape_md(r)}" for r in reasons))})
    if not failed:
        yield dg.Output(None, metadata={**{k: dg.MetadataValue.int(v) for k, v in totals.items()},
                                        "buckets": dg.MetadataValue.int(len(ok))})
    any_random = False
    # the asset page's overview shows the latest event: emit the bucket with the most samples last
    for o in sorted(ok, key=lambda o: (o.report.computed + o.report.reused, o.bucket)):
        o.report.previews = {**bucket_previews(stage, root, o.bucket, params), **o.report.previews}
        md = report_metadata(o.report)
        schema = column_schema(root, stage, o.bucket)
        if schema is not None:
            md["dagster/column_schema"] = schema
        tags = {**provenance_tags(context, o.bucket), DATA_VERSION_TAG: o.report.data_version}
        if md.get("weights") is not None and md["weights"].value == RANDOM_WEIGHTS or \
                random_weights_upstream(root, stage, [o.bucket]):
            md["weights"] = dg.MetadataValue.text(RANDOM_WEIGHTS)
            tags.update([WEIGHTS_TAG])
            any_random = True
        yield dg.AssetMaterialization(asset_key=context.asset_key, partition=o.bucket, metadata=md, tags=tags)
    context.log.info(f"{stage}: {len(ok)} buckets ok, {len(failed)} failed; {totals}"
                     + (f"; weights {weights}" if weights else ""))
    if any_random:
        context.log.warning(f"{stage}: derived from model weights that are {RANDOM_WEIGHTS}")
        _mark_run_random(context)
    if failed:
        from pipelines.text import escape_md

        lines = "; ".join(f"bucket {o.bucket}: {o.error}" for o in failed[:10])
        raise dg.Failure(
            description=f"{len(failed)} of {len(outcomes)} buckets of {stage} failed ({lines}). The other buckets "
                        "are stored; fix the cause and rematerialize the failed partitions.",
            metadata={"failed_buckets": dg.MetadataValue.json([o.bucket for o in failed]),
                      "reasons": dg.MetadataValue.md("\n".join(f"- `{o.bucket}`: {escape_md(o.error)}"
                                                                for o in failed[:50]))})
    yield from check_results(context, root)
