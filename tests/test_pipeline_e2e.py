"""The whole asset graph through Dagster on real sample photographs, with tiny models
loaded through the real local-checkpoint code path; then stock webdataset reads the shards."""
import json
import shutil
from pathlib import Path

import dagster as dg
import pytest
import webdataset as wds

from assets_defs.assets import DATA_ASSETS
from assets_defs.checks import ASSET_CHECKS
from assets_defs.resources import ViewforgeSettings
from pipelines.sources import sample_items

DATA_CHECKS = [c for c in ASSET_CHECKS if next(iter(c.check_keys)).asset_key in {a.key for a in DATA_ASSETS}]
MEMBERS = {"__key__", "target.png", "target_depth.png", "cond.png", "cond_depth.png", "mask.png", "mask_rgb.png",
           "camera.json", "pose.cls", "meta.json"}


def run_config(src: Path, depth_dir, dinov2_path, **warp):
    return {"ops": {
        "source_images": {"config": {"source": {"kind": "folder", "path": str(src)}, "resolution": 64,
                                     "min_size": 64}},
        "depth_maps": {"config": {"local_dir": str(depth_dir), "model": None}},
        "warp_pairs": {"config": {"views_per_image": 2, **warp}},
        "dinov2_features": {"config": {"local_path": str(dinov2_path), "image_size": 56}},
        "pose_clusters": {"config": {"num_parts": 3, "num_poses": 2, "restarts": 1}},
        "training_shards": {"config": {"maxcount": 4}},
    }}


def materialize(root, cfg):
    res = dg.materialize([*DATA_ASSETS, *DATA_CHECKS], run_config=cfg,
                         resources={"settings": ViewforgeSettings(data_root=str(root), profile="default",
                                                                  chunk_size=2)})
    assert res.success
    checks = [e.event_specific_data for e in res.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert len(checks) == len(DATA_CHECKS) and all(c.passed for c in checks), checks
    return {e.event_specific_data.materialization.asset_key.to_user_string():
            {k: getattr(v, "value", v) for k, v in e.event_specific_data.materialization.metadata.items()}
            for e in res.get_asset_materialization_events()}


@pytest.fixture
def photo_dir(tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    for item in sample_items()[:3]:
        shutil.copy(item.uri, src / Path(item.uri).name)
    (src / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return src


@pytest.mark.timeout(600)
def test_whole_graph_then_incremental_reruns(tmp_path, photo_dir, tiny_depth_dir, tiny_dinov2_path):
    root = tmp_path / "data"
    md = materialize(root, run_config(photo_dir, tiny_depth_dir, tiny_dinov2_path))
    assert md["source_images"]["accepted"] == 3 and md["source_images"]["rejected"] == 1
    assert md["warp_pairs"]["pairs"] == 6 and md["training_shards"]["samples"] == 6
    manifest = json.loads((root / "shards" / "manifest.json").read_text())
    seen = []
    for shard in manifest["shards"]:
        for sample in wds.WebDataset(str(root / "shards" / shard["name"]), shardshuffle=False):
            assert MEMBERS <= set(sample), set(sample)
            seen.append(sample["__key__"])
    assert len(seen) == 6 and len(set(seen)) == 6

    # add 2 images: only they are computed
    for item in sample_items()[3:5]:
        shutil.copy(item.uri, photo_dir / Path(item.uri).name)
    md = materialize(root, run_config(photo_dir, tiny_depth_dir, tiny_dinov2_path))
    for asset in ("depth_maps", "dinov2_features", "warp_pairs"):
        assert (md[asset]["computed"], md[asset]["reused"]) == (2, 3), (asset, md[asset])
    assert md["training_shards"]["samples"] == 10

    # change a warp parameter: depth reuses everything, warp recomputes everything
    md = materialize(root, run_config(photo_dir, tiny_depth_dir, tiny_dinov2_path, blur_p=0.5))
    assert (md["depth_maps"]["computed"], md["depth_maps"]["reused"]) == (0, 5)
    assert (md["warp_pairs"]["computed"], md["warp_pairs"]["reused"]) == (5, 0)


def test_definitions_load_and_validate():
    from assets_defs.definitions import defs

    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == {"source_images", "depth_maps", "warp_pairs", "dinov2_features", "pose_clusters",
                    "training_shards", "trained_models", "eval_reports"}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.code_version and node.group_name and node.description, key
