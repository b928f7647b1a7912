"""Turn a :class:`pipelines.stages.common.StageReport` into Dagster materialization output."""
from __future__ import annotations

import dagster as dg

from pipelines.models import RANDOM_WEIGHTS
from pipelines.previews import markdown_image
from pipelines.stages.common import StageReport


def to_result(report: StageReport, context: dg.AssetExecutionContext | None = None) -> dg.MaterializeResult:
    """MaterializeResult with counts, timings, previews (Markdown) and a content DataVersion.

    When any model ran on random weights the metadata says ``weights: random (not meaningful)``
    and a warning is logged.
    """
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
        if context is not None:
            context.log.warning(f"{report.stage}: model weights are {RANDOM_WEIGHTS}")
    if report.failures:
        rows = "\n".join(f"| {f.get('uri', f.get('key', ''))} | {f['reason']} |" for f in report.failures[:50])
        md["failures"] = dg.MetadataValue.md(f"| item | reason |\n|---|---|\n{rows}")
    for name, png in report.previews.items():
        md[f"preview_{name}"] = dg.MetadataValue.md(markdown_image(png, name))
    if context is not None:
        scalars = {k: v for k, v in report.summary().items() if isinstance(v, (int, float, str)) and len(str(v)) < 200}
        context.log.info(f"{report.stage}: {scalars}")
    return dg.MaterializeResult(metadata=md, data_version=dg.DataVersion(report.data_version))
