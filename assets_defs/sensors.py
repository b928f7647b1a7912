"""Automation: a sensor that rebuilds the training shards when a folder source changes.

``source_folder_sensor`` watches the folder of a ``source.kind: folder`` source (read from
params.yaml at each evaluation). Its cursor is the hash of the folder's listing (the image
files ingestion would list, :func:`pipelines.sources.folder_items`, with their relative
path, size and modification time); when the hash differs from the cursor (files added,
removed or rewritten) it requests one run of ``build_training_shards`` over every bucket
(a single-run backfill of the range), with the run key = the listing hash, so a listing is
never built twice. The stages reuse every cached sample, so only new files cost work.
Off by default: turn it on in the UI (Automation) or with ``dagster sensor start``.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import dagster as dg

#: The job the sensor runs (:data:`assets_defs.definitions.shards_job`).
JOB_NAME = "build_training_shards"


def listing_hash(folder: str | os.PathLike) -> tuple[str, int]:
    """``(sha256 hex, number of image files)`` of the image files under ``folder``, each as
    (path relative to ``folder``, size in bytes, mtime in ns), in sorted order.

    Raises:
        NotADirectoryError: ``folder`` is not a directory.
        pipelines.sources.EmptySourceError: no image file under ``folder``.
    """
    from pipelines.sources import folder_items

    root = Path(folder).absolute()
    h = hashlib.sha256()
    items = folder_items(root).items
    for item in items:
        st = os.stat(item.uri)
        h.update(f"{os.path.relpath(item.uri, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest(), len(items)


@dg.sensor(job_name=JOB_NAME, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED,
           description="Runs build_training_shards over all buckets when the files of the folder source "
                       "(source.kind: folder, source.path in params.yaml) change; cursor = listing hash.")
def source_folder_sensor(context: dg.SensorEvaluationContext):
    from assets_defs.assets import PARTITIONS
    from assets_defs.demo import range_tags
    from pipelines.params_schema import ParamsError, load_validated_params
    from pipelines.sources import EmptySourceError

    try:
        params = load_validated_params()
    except ParamsError as e:
        return dg.SkipReason(f"params invalid: {e.describe()}")
    source = params["source"]
    if source["kind"] != "folder":
        return dg.SkipReason(f"source.kind is {source['kind']!r}: this sensor watches a folder source "
                             "(set source.kind: folder and source.path in params.yaml)")
    try:
        digest, n = listing_hash(source["path"])
    except (NotADirectoryError, EmptySourceError) as e:
        return dg.SkipReason(str(e))
    if digest == context.cursor:
        return dg.SkipReason(f"no change in {source['path']} ({n} image files)")
    context.update_cursor(digest)
    keys = PARTITIONS.get_partition_keys()
    return dg.RunRequest(
        run_key=digest,
        run_config={"ops": {"source_listing": {"config": {"source": {"kind": "folder", "path": source["path"]}}}}},
        tags={**range_tags(keys), "viewforge/source_listing_hash": digest[:16]})


SENSORS = [source_folder_sensor]
