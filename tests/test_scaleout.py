"""Scale-out proofs (issue: bucketed storage, Dagster partitions, Ray).

* equivalence: in-process vs a local Ray cluster vs 1 vs 16 buckets give the same per-sample
  results; the merged manifest digest is byte-identical for equal bucket counts and the
  content digest (what the samples are, not how they are split into shards) for all;
* incremental: adding images to one bucket recomputes only them and rewrites only that
  bucket's shards (other shard files keep bytes and mtimes); the merged manifest verifies;
* failure isolation: a bucket whose compute raises is reported with its reason, the other
  buckets are stored and reused by the retry.
"""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.buckets import bucket_of
from pipelines.images import sample_key
from pipelines.params_schema import validate_params
from pipelines.shard_manifest import verify
from pipelines.stages.graph import StageFailed, run_data_graph, run_stage, totals


def _image(rng, size=48) -> Image.Image:
    base = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(base).resize((size, size), Image.Resampling.BILINEAR)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    src = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(7)
    for i in range(10):
        _image(rng).save(src / f"img{i:02d}.png")
    (src / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return src


def params_for(src, depth_dir, dinov2_path, num_buckets=16, engine="local", **over):
    p = {"profile": "default", "num_buckets": num_buckets, "chunk_size": 3,
         "source": {"kind": "folder", "path": str(src)},
         "ingest": {"resolution": 32, "min_size": 32},
         "depth": {"local_dir": str(depth_dir), "model": None},
         "warp": {"views_per_image": 2, "supersample": 2, "min_coverage": 3},
         "features": {"local_path": str(dinov2_path), "image_size": 56},
         "pose": {"num_parts": 3, "num_poses": 2, "restarts": 1},
         "shards": {"maxcount": 3},
         "execution": {"engine": engine, "num_cpus": 2}}
    for k, v in over.items():
        p[k] = {**p.get(k, {}), **v} if isinstance(v, dict) else v
    return validate_params(p)


def per_sample(root: Path) -> dict[str, str]:
    """sample key -> sha256 of its members, read from the merged manifest's shards."""
    import hashlib

    import webdataset as wds

    m = json.loads((root / "shards" / "manifest.json").read_text())
    out = {}
    for s in m["shards"]:
        for sample in wds.WebDataset(str(root / "shards" / s["name"]), shardshuffle=False, empty_check=False):
            h = hashlib.sha256()
            for k in sorted(x for x in sample if not x.startswith("__")):
                h.update(k.encode() + sample[k])
            out[sample["__key__"]] = h.hexdigest()
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory, photos, tiny_depth_dir, tiny_dinov2_path):
    root = tmp_path_factory.mktemp("ref")
    reports = run_data_graph(str(root), params_for(photos, tiny_depth_dir, tiny_dinov2_path))
    return root, reports


def test_graph_runs_with_per_bucket_reports(reference):
    root, reports = reference
    assert reports["source_listing"].metadata["listed"] == 11
    assert totals(reports["source_images"]) == {"computed": 10, "reused": 0, "failed": 1}
    assert totals(reports["warp_pairs"])["computed"] == 10
    m = json.loads((root / "shards" / "manifest.json").read_text())
    assert verify(root / "shards" / "manifest.json").ok
    assert sum(s["count"] for s in m["shards"]) == 20
    assert all(s["name"].startswith("bucket=") for s in m["shards"])
    for b, r in reports["source_images"].items():      # each bucket has its own index and data version
        assert r.bucket == b and len(r.data_version) == 24


def test_one_bucket_gives_the_same_samples(tmp_path, reference, photos, tiny_depth_dir, tiny_dinov2_path):
    root16, _ = reference
    run_data_graph(str(tmp_path), params_for(photos, tiny_depth_dir, tiny_dinov2_path, num_buckets=1))
    m1 = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    m16 = json.loads((root16 / "shards" / "manifest.json").read_text())
    assert m1["content_digest"] == m16["content_digest"]
    assert per_sample(tmp_path) == per_sample(root16)
    assert {s["name"].split("/")[0] for s in m1["shards"]} == {"bucket=all"}


@pytest.mark.timeout(600)
def test_local_ray_cluster_gives_byte_identical_manifest(tmp_path, reference, photos, tiny_depth_dir,
                                                         tiny_dinov2_path):
    pytest.importorskip("ray")
    import ray

    root16, _ = reference
    try:
        run_data_graph(str(tmp_path), params_for(photos, tiny_depth_dir, tiny_dinov2_path, engine="ray"))
        workers = ray.nodes()
    finally:
        ray.shutdown()
    assert workers, "Ray cluster did not start"
    a = (root16 / "shards" / "manifest.json").read_bytes()
    b = (tmp_path / "shards" / "manifest.json").read_bytes()
    assert json.loads(a)["digest"] == json.loads(b)["digest"]
    assert a == b
    assert per_sample(tmp_path) == per_sample(root16)


def test_adding_images_to_one_bucket_recomputes_and_rewrites_only_it(tmp_path, photos, tiny_depth_dir,
                                                                      tiny_dinov2_path):
    src = tmp_path / "src"
    shutil.copytree(photos, src)
    root = tmp_path / "data"
    params = params_for(src, tiny_depth_dir, tiny_dinov2_path)
    run_data_graph(str(root), params)
    shards_before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (root / "shards").rglob("*.tar")}
    # a new image whose key lands in a bucket of its own choosing
    rng = np.random.default_rng(99)
    target = bucket_of(sample_key((src / "img00.png").read_bytes()), 16)
    while True:
        img = _image(rng)
        path = tmp_path / "new.png"
        img.save(path)
        if bucket_of(sample_key(path.read_bytes()), 16) == target:
            break
    shutil.copy(path, src / "zz_new.png")
    reports = run_data_graph(str(root), params)
    assert reports["source_listing"].computed == 1            # only the new file was hashed
    for stage in ("source_images", "depth_maps", "warp_pairs", "dinov2_features"):
        t = totals(reports[stage])
        assert t["computed"] == 1, (stage, t)
        assert [b for b, r in reports[stage].items() if r.computed] == [target]
    assert verify(root / "shards" / "manifest.json").ok
    for p, (data, mtime) in shards_before.items():
        if f"bucket={target}" in str(p):
            continue
        assert p.read_bytes() == data and p.stat().st_mtime_ns == mtime, p


def test_a_failing_bucket_is_reported_and_the_others_are_kept(tmp_path, photos, tiny_depth_dir, tiny_dinov2_path,
                                                               monkeypatch):
    import pipelines.stages.depth as D

    root = str(tmp_path)
    params = params_for(photos, tiny_depth_dir, tiny_dinov2_path)
    run_stage("source_listing", root, params)
    run_stage("source_images", root, params)
    keys = sorted(sample_key(p.read_bytes()) for p in photos.glob("img*.png"))
    bad_bucket = bucket_of(keys[0], 16)
    real = D.estimate_disparity

    def flaky(model, images, **kw):
        if os.environ.get("VF_BREAK") == "1" and flaky.bucket == bad_bucket:
            raise RuntimeError("GPU fell off the bus")
        return real(model, images, **kw)

    real_run = D.run_depth_bucket

    def run(ctx):
        flaky.bucket = ctx.bucket
        return real_run(ctx)

    monkeypatch.setattr(D, "estimate_disparity", flaky)
    monkeypatch.setattr(D, "run_depth_bucket", run)
    monkeypatch.setenv("VF_BREAK", "1")
    with pytest.raises(StageFailed, match=f"bucket {bad_bucket}: .*GPU fell off the bus"):
        run_stage("depth_maps", root, params)
    monkeypatch.setenv("VF_BREAK", "0")
    reports = run_stage("depth_maps", root, params)
    t = totals(reports)
    n_bad = sum(bucket_of(k, 16) == bad_bucket for k in keys)
    assert t == {"computed": n_bad, "reused": 10 - n_bad, "failed": 0}


def test_fully_cached_model_stages_never_build_the_model(reference, photos, tiny_depth_dir, tiny_dinov2_path):
    root, _ = reference
    params = params_for(photos, tiny_depth_dir, tiny_dinov2_path)
    for stage in ("depth_maps", "dinov2_features"):
        reports = run_stage(stage, str(root), params)
        assert totals(reports) == {"computed": 0, "reused": 10, "failed": 0}, stage
        assert not any(r.metadata["model_loaded"] for r in reports.values()), stage


def test_a_set_that_lost_most_samples_is_not_published_unless_allowed(tmp_path, photos, tiny_depth_dir,
                                                                      tiny_dinov2_path):
    from pipelines.stages.shards import ShrinkRefused

    src = tmp_path / "src"
    shutil.copytree(photos, src)
    root = str(tmp_path / "data")
    run_data_graph(root, params_for(src, tiny_depth_dir, tiny_dinov2_path))
    before = (tmp_path / "data" / "shards" / "manifest.json").read_bytes()
    for p in sorted(src.glob("img*.png"))[2:]:
        p.unlink()                                   # 8 of 10 images vanish (e.g. a wrong source path)
    with pytest.raises(ShrinkRefused, match=r"refusing to publish 4 samples in place of the current 20"):
        run_data_graph(root, params_for(src, tiny_depth_dir, tiny_dinov2_path))
    assert (tmp_path / "data" / "shards" / "manifest.json").read_bytes() == before
    assert verify(tmp_path / "data" / "shards" / "manifest.json").ok      # no bucket's shards were touched
    with pytest.raises(ShrinkRefused):
        run_stage("training_shards", root, params_for(src, tiny_depth_dir, tiny_dinov2_path))
    allowed = params_for(src, tiny_depth_dir, tiny_dinov2_path, shards={"allow_shrink": True})
    run_stage("training_shards", root, allowed)
    run_stage("shard_manifest", root, allowed)
    m = json.loads((tmp_path / "data" / "shards" / "manifest.json").read_text())
    assert sum(s["count"] for s in m["shards"]) == 4 and verify(tmp_path / "data" / "shards" / "manifest.json").ok
