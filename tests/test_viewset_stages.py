"""Viewset stages (issue 14) end to end: runners and Dagster, incremental reruns, quarantine,
stock webdataset, determinism. Fixtures: SRN objects in their exact on-disk format
(tests/viewset_fixtures.py), tiny sizes."""
from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import numpy as np
import torch
import webdataset as wds

import viewset_fixtures as F
from pipelines.params_schema import validate_params
from pipelines.sample_schema import VIEWSET
from pipelines.shard_manifest import resolve_shard, verify
from pipelines.stages.viewsets import run_viewset_graph
from pipelines.storage import read_quarantine

torch.set_num_threads(1)


def make_source(src: Path, cars=(0, 1, 2), bad=True) -> Path:
    split = src / "cars_train"
    for i in cars:
        F.write_srn(split / f"car{i}", n=4, size=24, seed=i)
    if bad:
        F.write_srn(split / "nopose", n=4, size=24, seed=7)
        (split / "nopose" / "pose" / "000002.txt").unlink()             # missing_files
        F.write_srn(split / "lonely", n=1, size=24, seed=8)              # too_few_views
    return split


def params(src: Path, **viewsets) -> dict:
    return validate_params({"profile": "smoke", "viewset_source": {"root": str(src), "format": "srn"},
                            "viewsets": viewsets, "viewset_shards": {"maxcount": 2}})


def totals(reports: dict) -> dict:
    return {k: sum(getattr(r, k) for r in reports.values()) for k in ("computed", "reused", "failed")}


def samples(shard_dir: Path) -> list[dict]:
    m = json.loads((shard_dir / "manifest.json").read_text())
    urls = [str(resolve_shard(shard_dir, s["name"])) for s in m["shards"]]
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False)) if urls else []


def test_runners_end_to_end_incremental_and_quarantine(tmp_path):
    src = make_source(tmp_path / "src")
    root = tmp_path / "data"
    out = run_viewset_graph(str(root), params(src))
    # bad sequences quarantined with their reason; the good ones go on
    q = read_quarantine(root, "viewset_sources").to_pylist()
    assert sorted((r["uri"].rsplit("/", 1)[1], r["reason"].split(":")[0]) for r in q) == \
        [("lonely", "too_few_views"), ("nopose", "missing_files")]
    assert out["viewset_manifest"].metadata["samples"] == 3
    shard_dir = root / "viewset_shards"
    assert verify(shard_dir / "manifest.json").ok
    got = samples(shard_dir)                                   # stock webdataset, no viewforge decoding
    assert len(got) == 3 and all(VIEWSET.validate_members(s) == [] for s in got)
    metas = [json.loads(s["meta.json"]) for s in got]
    assert all(m["split"] == "train" and m["split_rule"] == "source" for m in metas)   # cars_train
    assert sorted(m["source"]["sequence"] for m in metas) == ["car0", "car1", "car2"]
    # SRN renders: the canonical frame put the object at the origin; cams in that world
    for s in got:
        cams = np.load(__import__("io").BytesIO(s["cams.npz"]))
        assert cams["w2c"].shape == (4, 4, 4) and cams["scale"].shape == (4, 2)

    # adding a sequence computes only it
    F.write_srn(src / "car3", n=4, size=24, seed=3)
    out2 = run_viewset_graph(str(root), params(src))
    assert (out2["viewset_sources"].computed, out2["viewset_sources"].reused) == (1, 3)
    assert totals(out2["viewsets"]) == {"computed": 1, "reused": 3, "failed": 0}
    assert out2["viewset_manifest"].metadata["samples"] == 4
    shards_before = {p.name: p.stat().st_mtime_ns for p in shard_dir.glob("bucket=*/*.tar")}

    # changing the crop recomputes viewsets and shards only
    out3 = run_viewset_graph(str(root), params(src, crop_context=0.1))
    assert (out3["viewset_sources"].computed, out3["viewset_sources"].reused) == (0, 4)
    assert totals(out3["viewsets"]) == {"computed": 4, "reused": 0, "failed": 0}
    assert totals(out3["viewset_shards"])["computed"] == 4
    assert {p.name: p.stat().st_mtime_ns for p in shard_dir.glob("bucket=*/*.tar")} != shards_before
    # and an unchanged rerun rewrites nothing
    out4 = run_viewset_graph(str(root), params(src, crop_context=0.1))
    assert totals(out4["viewsets"])["computed"] == 0 and totals(out4["viewset_shards"])["computed"] == 0


def test_two_runs_give_byte_identical_shards(tmp_path):
    src = make_source(tmp_path / "src", cars=(0, 1), bad=False)
    blobs = []
    for name in ("a", "b"):
        root = tmp_path / name
        run_viewset_graph(str(root), params(src))
        d = root / "viewset_shards"
        blobs.append({p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()})
    assert blobs[0] == blobs[1] and "manifest.json" in blobs[0]


def test_dagster_materialize_per_bucket(tmp_path):
    from assets_defs.assets import PARTITIONS
    from assets_defs.demo import range_tags
    from assets_defs.definitions import NoStorageIOManager
    from assets_defs.resources import ViewforgeSettings
    from assets_defs.viewsets import VIEWSET_ASSETS, VIEWSET_CHECKS

    keys = PARTITIONS.get_partition_keys()          # the buckets the code location loaded with

    src = make_source(tmp_path / "src", cars=(0, 1))
    root = tmp_path / "data"
    res = dg.materialize(
        [*VIEWSET_ASSETS, *VIEWSET_CHECKS],
        resources={"settings": ViewforgeSettings(data_root=str(root), profile="smoke" if len(keys) == 16 else None),
                   "io_manager": NoStorageIOManager()},
        run_config={"ops": {"viewset_sources": {"config": {"root": str(src), "format": "srn"}}}},
        tags=range_tags(keys), raise_on_error=False)
    assert res.success
    mats = [e.event_specific_data.materialization for e in res.get_asset_materialization_events()]
    per_bucket = [m for m in mats if m.asset_key.to_user_string() == "viewsets" and "stage_version" in m.metadata]
    assert sorted(m.partition for m in per_bucket) == sorted(keys)            # one per bucket
    assert sum(m.metadata["sequences"].value for m in per_bucket) == 2
    checks = [e.event_specific_data for e in res.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert len(checks) == 3 and all(c.passed for c in checks), checks
    assert json.loads((root / "viewset_shards" / "manifest.json").read_text())["sample_schema"] == "viewset/1"
