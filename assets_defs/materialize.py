"""Materialize assets over every bucket in one run: ``python -m assets_defs.materialize A [B ...]``.

What ``dvc.yaml``'s stage commands call (DVC runs in its own environment, so it shells out).
Partitioned assets get the whole bucket range as one single-run backfill (range tags), so a
stage is one Dagster run whatever ``num_buckets`` is. With ``$DAGSTER_HOME`` set the run is
recorded in that instance (visible in the UI), else in an ephemeral one.
"""
from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("assets", nargs="+", help="asset names, e.g. training_shards shard_manifest")
    args = ap.parse_args(argv)
    import dagster as dg

    from assets_defs.assets import PARTITIONS
    from assets_defs.definitions import defs

    keys = [dg.AssetKey(a) for a in args.assets]
    instance = dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()
    job = defs.resolve_implicit_global_asset_job_def()
    buckets = PARTITIONS.get_partition_keys()
    result = job.execute_in_process(
        instance=instance, asset_selection=keys, raise_on_error=False,
        tags={"dagster/asset_partition_range_start": buckets[0], "dagster/asset_partition_range_end": buckets[-1]})
    for e in result.all_events:
        if e.event_type_value == "STEP_FAILURE":
            print(f"FAILED {e.step_key}: {e.event_specific_data.error.message.strip()}", file=sys.stderr)
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main())
