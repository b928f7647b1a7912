"""The whole data graph through Dagster on real sample photographs, with tiny models loaded
through the real local-checkpoint code path: one single-run materialization over the whole
bucket range, per-bucket materializations recorded by the instance, incremental reruns, a
failed bucket reported with its reason; then stock webdataset reads the shards."""
import json
import shutil
from pathlib import Path

import dagster as dg
import pytest
import webdataset as wds

from assets_defs.assets import DATA_ASSETS, PARTITIONS
from assets_defs.checks import ASSET_CHECKS
from assets_defs.definitions import NoStorageIOManager
from assets_defs.demo import range_tags
from assets_defs.resources import ViewforgeSettings
from pipelines.sample_schema import IVID_PAIR
from pipelines.sources import sample_items

DATA_KEYS = {a.key for a in DATA_ASSETS}
DATA_CHECKS = [c for c in ASSET_CHECKS if next(iter(c.check_keys)).asset_key in DATA_KEYS]
BUCKETS = PARTITIONS.get_partition_keys()


def run_config(src: Path, depth_dir, dinov2_path, **warp):
    return {"ops": {
        "source_listing": {"config": {"kind": "folder", "path": str(src)}},
        "source_images": {"config": {"resolution": 64, "min_size": 64}},
        "depth_maps": {"config": {"local_dir": str(depth_dir)}},
        "warp_pairs": {"config": {"views_per_image": 2, **warp}},
        "dinov2_features": {"config": {"local_path": str(dinov2_path), "image_size": 56}},
        "pose_clusters": {"config": {"num_parts": 3, "num_poses": 2, "restarts": 1}},
        "training_shards": {"config": {"maxcount": 4}},
    }}


def materialize(root, cfg, instance, ok=True):
    res = dg.materialize([*DATA_ASSETS, *DATA_CHECKS], run_config=cfg, instance=instance, raise_on_error=False,
                         tags=range_tags(BUCKETS),
                         resources={"settings": ViewforgeSettings(data_root=str(root), profile="default",
                                                                  chunk_size=2),
                                    "io_manager": NoStorageIOManager()})
    assert res.success == ok
    if ok:
        checks = [e.event_specific_data for e in res.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
        assert checks and all(c.passed for c in checks), checks
    # per asset: metadata summed over its per-bucket materializations (the last event of each partition)
    out: dict = {}
    for e in res.get_asset_materialization_events():
        m = e.event_specific_data.materialization
        if m.partition is not None and "stage_version" not in m.metadata:
            continue                                  # the range-level output event
        cur = out.setdefault(m.asset_key.to_user_string(), {})
        for k, v in m.metadata.items():
            v = getattr(v, "value", v)
            cur[k] = cur.get(k, 0) + v if m.partition is not None and isinstance(v, int) else v
    return res, out


@pytest.fixture
def photo_dir(tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    for item in sample_items()[:3]:
        shutil.copy(item.uri, src / Path(item.uri).name)
    (src / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (src / "notes.txt").write_text("not an image")
    return src


@pytest.mark.timeout(900)
def test_whole_graph_partitions_and_incremental_reruns(tmp_path, photo_dir, tiny_depth_dir, tiny_dinov2_path):
    root = tmp_path / "data"
    instance = dg.DagsterInstance.ephemeral()
    _, md = materialize(root, run_config(photo_dir, tiny_depth_dir, tiny_dinov2_path), instance)
    assert md["source_listing"]["listed"] == 5 and md["source_listing"]["skipped"] == 1
    assert md["source_images"]["accepted"] == 3 and md["source_images"]["quarantined"] == 1
    assert md["warp_pairs"]["pairs"] == 6 and md["shard_manifest"]["samples"] == 6

    # the instance knows every bucket of every partitioned asset, each with its own data version
    for key in ("source_images", "depth_maps", "warp_pairs", "dinov2_features", "training_shards"):
        assert instance.get_materialized_partitions(dg.AssetKey(key)) == set(BUCKETS), key
    versions = {b: instance.get_latest_data_version_record(dg.AssetKey("depth_maps"), partition_key=b)
                .event_log_entry.dagster_event.event_specific_data.materialization.tags["dagster/data_version"]
                for b in BUCKETS}
    assert len(set(versions.values())) >= 3          # 3 non-empty buckets differ from the empty ones

    manifest = json.loads((root / "shards" / "manifest.json").read_text())
    seen = []
    for shard in manifest["shards"]:
        for sample in wds.WebDataset(str(root / "shards" / shard["name"]), shardshuffle=False):
            assert IVID_PAIR.validate_members(sample) == [], sample["__key__"]
            seen.append(sample["__key__"])
    assert len(seen) == 6 and len(set(seen)) == 6

    # add 2 images: only they are computed
    for item in sample_items()[3:5]:
        shutil.copy(item.uri, photo_dir / Path(item.uri).name)
    _, md = materialize(root, run_config(photo_dir, tiny_depth_dir, tiny_dinov2_path), instance)
    for asset in ("source_images", "depth_maps", "dinov2_features", "warp_pairs"):
        assert (md[asset]["computed"], md[asset]["reused"]) == (2, 3), (asset, md[asset])
    assert md["shard_manifest"]["samples"] == 10

    # change a warp parameter: depth reuses everything, warp recomputes everything
    _, md = materialize(root, run_config(photo_dir, tiny_depth_dir, tiny_dinov2_path, blur_p=0.5), instance)
    assert (md["depth_maps"]["computed"], md["depth_maps"]["reused"]) == (0, 5)
    assert (md["warp_pairs"]["computed"], md["warp_pairs"]["reused"]) == (5, 0)


def test_a_failed_bucket_fails_the_run_with_its_reason(tmp_path, photo_dir, tiny_depth_dir, tiny_dinov2_path):
    """A bucket whose every item fails is reported failed with the reason; the other buckets
    are materialized, and a retry recomputes only the failed one."""
    root = tmp_path / "data"
    instance = dg.DagsterInstance.ephemeral()
    cfg = run_config(photo_dir, tiny_depth_dir, tiny_dinov2_path)
    cfg["ops"]["depth_maps"]["config"]["local_dir"] = str(tmp_path / "missing-checkpoint")
    res, md = materialize(root, cfg, instance, ok=False)
    failure = [e for e in res.all_events if e.event_type_value == "STEP_FAILURE"][0]
    assert failure.step_key == "depth_maps"
    assert "depth.local_dir" in failure.event_specific_data.error.message
    assert instance.get_materialized_partitions(dg.AssetKey("source_images")) == set(BUCKETS)


def test_definitions_load_and_validate():
    from assets_defs.definitions import defs

    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"source_listing", "source_images", "depth_maps", "warp_pairs", "dinov2_features", "pose_clusters",
            "training_shards", "shard_manifest", "trained_models", "eval_reports"} <= keys
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.code_version and node.group_name and node.description, key


def test_bucket_count_must_match_the_code_locations_partitions():
    from assets_defs.assets import buckets_of

    n = len(BUCKETS)
    assert buckets_of({"num_buckets": n, "profile": "default"}) == BUCKETS
    other = 4096 if n != 4096 else 256
    with pytest.raises(dg.Failure, match="VIEWFORGE_PROFILE"):
        buckets_of({"num_buckets": other, "profile": "default"})
