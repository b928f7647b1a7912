"""``make demo``: materialize the whole asset graph on the built-in sample images.

Runs in the ``demo`` profile (tiny random models when real weights cannot be resolved,
labelled as such), with an in-process Dagster instance, then prints a short summary.
Usage: ``python -m assets_defs.demo [--data DIR] [--source-kind folder --source-path DIR]``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import dagster as dg


def range_tags(keys: list[str]) -> dict[str, str]:
    """Run tags of a single run over the partition range ``keys[0]...keys[-1]`` (what a
    single-run backfill of the range launches)."""
    return {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=None, help="data root (default $VIEWFORGE_DATA or data/)")
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--source-kind", default="sample")
    ap.add_argument("--source-path", default=None)
    ap.add_argument("--log-level", default="INFO", help="Dagster console log level (DEBUG shows every event)")
    args = ap.parse_args(argv)
    import os

    # the bucket partitions are defined when the code location loads: profile first
    os.environ["VIEWFORGE_PROFILE"] = args.profile
    from assets_defs.assets import DATA_ASSETS, PARTITIONS
    from assets_defs.checks import ASSET_CHECKS
    from assets_defs.definitions import NoStorageIOManager
    from assets_defs.models import MODEL_ASSETS
    from assets_defs.resources import ViewforgeSettings
    from pipelines.config import data_root

    root = Path(args.data).absolute() if args.data else data_root()
    settings = ViewforgeSettings(data_root=str(root), profile=args.profile)
    t0 = time.perf_counter()
    result = dg.materialize(
        [*DATA_ASSETS, *MODEL_ASSETS, *ASSET_CHECKS],
        resources={"settings": settings, "io_manager": NoStorageIOManager()},
        run_config={"ops": {"source_listing": {"config": {"kind": args.source_kind, "path": args.source_path}}},
                    "loggers": {"console": {"config": {"log_level": args.log_level}}}},
        tags=range_tags(PARTITIONS.get_partition_keys()), raise_on_error=False)
    wall = time.perf_counter() - t0
    mats: dict = {}
    for event in result.get_asset_materialization_events():
        m = event.event_specific_data.materialization
        if m.partition is None or "stage_version" in m.metadata:   # per-bucket events sum up
            cur = mats.setdefault(m.asset_key.to_user_string(), {})
            for k, v in m.metadata.items():
                v = getattr(v, "value", v)
                cur[k] = cur.get(k, 0) + v if isinstance(v, (int, float)) and m.partition is not None and \
                    not isinstance(v, bool) else v
    checks = [e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]

    def val(asset, key):
        return mats.get(asset, {}).get(key)

    print("\n== viewforge demo ==")
    print(f"data root         : {root}")
    print(f"files listed      : {val('source_listing', 'listed')}  duplicates: {val('source_listing', 'duplicates')}"
          f"  skipped: {val('source_listing', 'skipped')}  unreadable: {val('source_listing', 'unreadable')}")
    print(f"images accepted   : {val('source_images', 'accepted')}  quarantined: {val('source_images', 'quarantined')}")
    print(f"pairs written     : {val('shard_manifest', 'samples')}  (warp_pairs: {val('warp_pairs', 'pairs')})")
    for asset in ("source_listing", "source_images", "depth_maps", "warp_pairs", "dinov2_features", "pose_clusters",
                  "training_shards", "shard_manifest", "trained_models", "eval_reports"):
        print(f"  {asset:<16} {val(asset, 'seconds') or 0:8.2f} s  computed {val(asset, 'computed')}"
              f"  reused {val(asset, 'reused')}  weights {val(asset, 'weights') or '-'}")
    print(f"shards            : {val('shard_manifest', 'shards')}  samples {val('shard_manifest', 'samples')}")
    print(f"manifest          : {val('shard_manifest', 'manifest')}")
    print(f"models            : {val('trained_models', 'run_dir')}")
    print(f"eval report       : {val('eval_reports', 'report_html')}")
    print("checks            : " + ", ".join(f"{c.asset_key.to_user_string()}:{c.check_name}="
                                             f"{'ok' if c.passed else 'FAILED'}" for c in checks))
    print(f"total time        : {wall:.1f} s")
    if not result.success or not all(c.passed for c in checks):
        failed = [e.step_key for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        print(f"FAILED steps: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
