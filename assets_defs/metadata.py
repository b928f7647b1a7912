"""Turn stage reports into Dagster materializations (whole-asset or one per bucket)."""
from __future__ import annotations

from typing import Any, Iterator

import dagster as dg

from pipelines.models import RANDOM_WEIGHTS
from pipelines.previews import markdown_image
from pipelines.stages.common import StageReport

#: The event tag Dagster reads a materialization's data version from (scale-notes §2.1:
#: one AssetMaterialization per partition with this tag gives each bucket its own version).
DATA_VERSION_TAG = "dagster/data_version"


def report_metadata(report: StageReport) -> dict[str, Any]:
    """Dagster metadata of a report: counts, timings, its own metadata, failures table
    (user strings escaped), previews as inline images."""
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
        md[f"preview_{name}"] = dg.MetadataValue.md(markdown_image(png, name))
    return md


def to_result(report: StageReport, context: dg.AssetExecutionContext | None = None) -> dg.MaterializeResult:
    """MaterializeResult with counts, timings, previews (Markdown) and a content DataVersion.

    When any model ran on random weights the metadata says ``weights: random (not meaningful)``
    and a warning is logged.
    """
    md = report_metadata(report)
    if context is not None:
        if "weights" in md:
            context.log.warning(f"{report.stage}: model weights are {RANDOM_WEIGHTS}")
        scalars = {k: v for k, v in report.summary().items() if isinstance(v, (int, float, str)) and len(str(v)) < 200}
        context.log.info(f"{report.stage}: {scalars}")
    return dg.MaterializeResult(metadata=md, data_version=dg.DataVersion(report.data_version))


def emit_buckets(context: dg.AssetExecutionContext, stage: str, outcomes: list, params: dict[str, Any],
                 root: str) -> Iterator[Any]:
    """Events of a bucketed step: when every bucket succeeded, first the step's output (one
    event per partition of the range, superseded next), then one ``AssetMaterialization``
    per bucket with its own metadata and data version (the latest event of each partition).
    Failed buckets: the good buckets' events, then ``dagster.Failure`` naming each failed
    bucket and its reason (a retry of the range recomputes only what is missing).
    """
    ok = [o for o in outcomes if o.error is None]
    failed = [o for o in outcomes if o.error is not None]
    totals = {k: sum(getattr(o.report, k) for o in ok) for k in ("computed", "reused", "failed")}
    weights = sorted({str(o.report.metadata.get("weights")) for o in ok if o.report.metadata.get("weights")})
    if not failed:
        yield dg.Output(None, metadata={**{k: dg.MetadataValue.int(v) for k, v in totals.items()},
                                        "buckets": dg.MetadataValue.int(len(ok))})
    for o in ok:
        yield dg.AssetMaterialization(asset_key=context.asset_key, partition=o.bucket,
                                      metadata=report_metadata(o.report),
                                      tags={DATA_VERSION_TAG: o.report.data_version})
    context.log.info(f"{stage}: {len(ok)} buckets ok, {len(failed)} failed; {totals}"
                     + (f"; weights {weights}" if weights else ""))
    if RANDOM_WEIGHTS in weights:
        context.log.warning(f"{stage}: model weights are {RANDOM_WEIGHTS}")
    if failed:
        from pipelines.text import escape_md

        lines = "; ".join(f"bucket {o.bucket}: {o.error}" for o in failed[:10])
        raise dg.Failure(
            description=f"{len(failed)} of {len(outcomes)} buckets of {stage} failed ({lines}). The other buckets "
                        "are stored; fix the cause and rematerialize the failed partitions.",
            metadata={"failed_buckets": dg.MetadataValue.json([o.bucket for o in failed]),
                      "reasons": dg.MetadataValue.md("\n".join(f"- `{o.bucket}`: {escape_md(o.error)}"
                                                                for o in failed[:50]))})
