"""Data-quality checks of each stage's materialized output (used by Dagster asset checks).

Each returns ``(passed, metadata)`` and reads only the data root.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipelines.storage import read_index, read_quarantine

Check = tuple[bool, dict[str, Any]]


def materialized_buckets(root: Path) -> list[str]:
    """The bucket ids of the current listing (``source_listing``)."""
    return list(read_index(root, "source_listing")[1].get("buckets", []))


def stage_table(root: Path, stage: str, name: str = "index") -> tuple[Any, dict[str, Any]]:
    """A stage's index (or quarantine, ``name="quarantine"``) over all buckets, concatenated
    (buckets not materialized are skipped), and the info of its last bucket."""
    import pyarrow as pa

    from pipelines.stages.specs import STAGES

    if not STAGES[stage].partitioned:
        return read_index(root, stage)
    tables, info = [], {}
    for b in materialized_buckets(root):
        try:
            if name == "quarantine":
                tables.append(read_quarantine(root, stage, b))
            else:
                t, info = read_index(root, stage, b)
                tables.append(t)
        except FileNotFoundError:
            continue
    return (pa.concat_tables(tables, promote_options="default") if tables else pa.table({"key": pa.array([], pa.string())}),
            info)


def check_source_images(root: Path) -> Check:
    """At least one image accepted, keys unique, every quarantined or skipped input has a
    reason, and every listed file is accounted for exactly once:
    ``listed = accepted + quarantined (unreadable + undecodable) + duplicates + skipped``."""
    table, _ = stage_table(root, "source_images")
    keys = table.column("key").to_pylist()
    q, _ = stage_table(root, "source_images", "quarantine")
    lq, skipped, dups = (read_quarantine(root, "source_listing", name=n) for n in
                         ("quarantine.parquet", "skipped.parquet", "duplicates.parquet"))
    listing, _ = read_index(root, "source_listing")
    listed = sum(listing.column("samples").to_pylist()) + lq.num_rows + skipped.num_rows + dups.num_rows
    no_reason = sum(1 for t in (q, lq, skipped) for r in t.column("reason").to_pylist() if not r)
    accounted = len(keys) + q.num_rows + lq.num_rows + dups.num_rows + skipped.num_rows
    return (len(keys) > 0 and len(set(keys)) == len(keys) and no_reason == 0 and accounted == listed,
            {"listed": listed, "accepted": len(keys), "quarantined": q.num_rows + lq.num_rows,
             "duplicates": dups.num_rows, "skipped": skipped.num_rows, "unaccounted": listed - accounted,
             "without_reason": no_reason})


def check_depth_maps(root: Path) -> Check:
    """No NaN/inf disparity; z-depth within [near, 1/min_disparity]; every image has depth."""
    table, info = stage_table(root, "depth_maps")
    src, _ = stage_table(root, "source_images")
    p = info["params"]
    nonfinite = int(np.sum(table.column("nonfinite").to_numpy())) if table.num_rows else 0
    lo = float(np.min(table.column("depth_min").to_numpy())) if table.num_rows else p["near"]
    hi = float(np.max(table.column("depth_max").to_numpy())) if table.num_rows else p["near"]
    in_range = lo >= p["near"] * (1 - 1e-5) and hi <= (1 / p["min_disparity"]) * (1 + 1e-5)
    missing = src.num_rows - table.num_rows
    return nonfinite == 0 and in_range and missing == 0, {"nonfinite_pixels": nonfinite, "depth_min": lo,
                                                          "depth_max": hi, "images_without_depth": missing}


def check_warp_pairs(root: Path) -> Check:
    """Every condition mask is non-empty and every sample has ``views_per_image`` views.

    An empty mask can be legitimate (a sampled camera that sees none of the surface), so
    a few of them (< 5% of pairs) only warn (``severity: WARN``); more is an error."""
    table, info = stage_table(root, "warp_pairs")
    frac = table.column("mask_fraction").to_numpy() if table.num_rows else np.zeros(0)
    views = int(info["params"]["views_per_image"])
    counts = np.unique(np.asarray(table.column("sample_key").to_pylist()), return_counts=True)[1] \
        if table.num_rows else np.zeros(0)
    empty = int(np.sum(frac <= 0))
    wrong = int(np.sum(counts != views))
    md = {"pairs": table.num_rows, "empty_masks": empty, "samples_with_wrong_view_count": wrong,
          "mask_fraction_min": float(frac.min()) if frac.size else None}
    if 0 < empty < 0.05 * table.num_rows and wrong == 0:
        md["severity"] = "WARN"
    return table.num_rows > 0 and empty == 0 and wrong == 0, md


def check_dinov2_features(root: Path) -> Check:
    """Every accepted image has features."""
    table, _ = stage_table(root, "dinov2_features")
    src, _ = stage_table(root, "source_images")
    return table.num_rows == src.num_rows and table.num_rows > 0, {"with_features": table.num_rows,
                                                                   "images": src.num_rows}


def check_pose_clusters(root: Path) -> Check:
    """Every featurised image has a pose label in [0, num_poses)."""
    _, info = read_index(root, "pose_clusters")
    import pyarrow as pa

    table = pa.concat_tables([read_index(root, "pose_clusters", b)[0] for b in info.get("buckets", [])])
    feats, _ = stage_table(root, "dinov2_features")
    labels = table.column("pose").to_numpy() if table.num_rows else np.zeros(0, int)
    k = int(info.get("num_poses_used", 0))
    bad = int(np.sum((labels < 0) | (labels >= k)))
    return table.num_rows == feats.num_rows and bad == 0, {"labelled": table.num_rows, "out_of_range": bad,
                                                           "num_poses": k}


def check_training_shards(root: Path) -> Check:
    """Manifest verifies (sha256, sizes, counts) and every sample is valid for the manifest's
    ``sample_schema`` (:meth:`pipelines.sample_schema.SampleSchema.validate_members`: every
    required member present, no unknown member, each decodes with the right dtype/shape)."""
    import json

    import webdataset as wds

    from pipelines.sample_schema import get_schema
    from pipelines.shard_manifest import resolve_shard, verify

    shard_dir = Path(root) / "shards"
    manifest = shard_dir / "manifest.json"
    report = verify(manifest)
    data = json.loads(manifest.read_text())
    try:
        schema = get_schema(data.get("sample_schema"))
    except ValueError as exn:
        return False, {"verified": report.ok, "problems": [str(exn), *report.problems][:20]}
    invalid, n, examples = 0, 0, []
    for s in data["shards"] if report.ok else []:  # names are validated by verify
        for sample in wds.WebDataset(str(resolve_shard(shard_dir, s["name"])), shardshuffle=False,
                                     empty_check=False):
            n += 1
            problems = schema.validate_members(sample)
            invalid += int(bool(problems))
            if problems and len(examples) < 20:
                examples.append(f"{s['name']} {sample.get('__key__')}: {'; '.join(problems)}")
    return report.ok and invalid == 0, {"verified": report.ok, "problems": list(report.problems)[:20],
                                        "sample_schema": schema.name, "samples": n,
                                        "invalid_samples": invalid, "invalid_examples": examples}
