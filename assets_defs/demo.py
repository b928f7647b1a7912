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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=None, help="data root (default $VIEWFORGE_DATA or data/)")
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--source-kind", default="sample")
    ap.add_argument("--source-path", default=None)
    ap.add_argument("--log-level", default="INFO", help="Dagster console log level (DEBUG shows every event)")
    args = ap.parse_args(argv)

    from assets_defs.assets import DATA_ASSETS
    from assets_defs.checks import ASSET_CHECKS
    from assets_defs.models import MODEL_ASSETS
    from assets_defs.resources import ViewforgeSettings
    from pipelines.config import data_root

    root = Path(args.data).absolute() if args.data else data_root()
    settings = ViewforgeSettings(data_root=str(root), profile=args.profile)
    t0 = time.perf_counter()
    result = dg.materialize(
        [*DATA_ASSETS, *MODEL_ASSETS, *ASSET_CHECKS], resources={"settings": settings},
        run_config={"ops": {"source_images": {"config": {"source": {"kind": args.source_kind,
                                                                     "path": args.source_path}}}},
                    "loggers": {"console": {"config": {"log_level": args.log_level}}}},
        raise_on_error=False)
    wall = time.perf_counter() - t0
    mats = {}
    for event in result.get_asset_materialization_events():
        m = event.event_specific_data.materialization
        mats[m.asset_key.to_user_string()] = m.metadata
    checks = [e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]

    def val(asset, key):
        v = mats.get(asset, {}).get(key)
        return getattr(v, "value", v)

    print("\n== viewforge demo ==")
    print(f"data root         : {root}")
    print(f"images accepted   : {val('source_images', 'accepted')}  rejected: {val('source_images', 'rejected')}"
          f"  duplicates: {val('source_images', 'duplicates')}")
    print(f"pairs written     : {val('training_shards', 'samples')}  (warp_pairs: {val('warp_pairs', 'pairs')})")
    for asset in ("source_images", "depth_maps", "warp_pairs", "dinov2_features", "pose_clusters",
                  "training_shards", "trained_models", "eval_reports"):
        print(f"  {asset:<16} {val(asset, 'seconds') or 0:8.2f} s  computed {val(asset, 'computed')}"
              f"  reused {val(asset, 'reused')}  weights {val(asset, 'weights') or '-'}")
    for path in val("training_shards", "shard_paths") or []:
        print(f"shard             : {path}")
    print(f"manifest          : {val('training_shards', 'manifest')}")
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
