"""The folder-source sensor (assets_defs/sensors.py) and the in-step checks / metadata
helpers of the Dagster layer (assets_defs/checks.py, assets_defs/metadata.py)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import yaml
from PIL import Image

import dagster as dg


def _img(path, value: int) -> None:
    Image.fromarray(np.full((80, 80, 3), value, np.uint8)).save(path)


@pytest.fixture()
def folder_params(tmp_path, monkeypatch):
    src = tmp_path / "photos"
    src.mkdir()
    _img(src / "a.png", 10)
    _img(src / "b.png", 20)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"profile": "demo", "source": {"kind": "folder", "path": str(src)}}))
    monkeypatch.setenv("VIEWFORGE_PARAMS", str(params))
    monkeypatch.delenv("VIEWFORGE_PROFILE", raising=False)
    return src, params


def test_sensor_requests_one_run_per_new_listing(folder_params):
    from assets_defs.assets import PARTITIONS
    from assets_defs.sensors import listing_hash, source_folder_sensor

    src, _ = folder_params
    with dg.instance_for_test() as instance:
        ctx = dg.build_sensor_context(instance=instance)
        first = source_folder_sensor(ctx)
        assert isinstance(first, dg.RunRequest)
        assert first.run_key == listing_hash(src)[0] == ctx.cursor
        keys = PARTITIONS.get_partition_keys()
        assert first.tags["dagster/asset_partition_range_start"] == keys[0]
        assert first.tags["dagster/asset_partition_range_end"] == keys[-1]
        assert first.run_config["ops"]["source_listing"]["config"]["source"] == {"kind": "folder", "path": str(src)}

        # unchanged folder: no run; a non-image file does not count either
        (src / "notes.txt").write_text("x")
        again = source_folder_sensor(dg.build_sensor_context(instance=instance, cursor=ctx.cursor))
        assert isinstance(again, dg.SkipReason) and "no change" in again.skip_message

        # a new image: a new run with a new key
        _img(src / "c.png", 30)
        ctx3 = dg.build_sensor_context(instance=instance, cursor=ctx.cursor)
        third = source_folder_sensor(ctx3)
        assert isinstance(third, dg.RunRequest) and third.run_key != first.run_key
        assert listing_hash(src) == (ctx3.cursor, 3)


def test_listing_hash_sees_rewrites_and_is_location_independent(tmp_path):
    from assets_defs.sensors import listing_hash

    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        _img(d / "x.png", 5)
        os.utime(d / "x.png", ns=(1_000_000_000, 1_000_000_000))
    assert listing_hash(a) == listing_hash(b)   # relative paths: same listing elsewhere, same hash
    _img(b / "x.png", 200)
    os.utime(b / "x.png", ns=(2_000_000_000, 2_000_000_000))
    assert listing_hash(a)[0] != listing_hash(b)[0]


def test_sensor_skips_non_folder_source(tmp_path, monkeypatch):
    from assets_defs.sensors import source_folder_sensor

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"source": {"kind": "sample"}}))
    monkeypatch.setenv("VIEWFORGE_PARAMS", str(params))
    with dg.instance_for_test() as instance:
        out = source_folder_sensor(dg.build_sensor_context(instance=instance))
    assert isinstance(out, dg.SkipReason) and "source.kind" in out.skip_message


def test_definitions_load_with_sensor_and_in_step_checks():
    from assets_defs.checks import DATA_CHECKS
    from assets_defs.definitions import defs, shards_job

    repo = defs.get_repository_def()
    assert repo.has_sensor_def("source_folder_sensor")
    assert shards_job.executor_def is dg.in_process_executor
    for c in DATA_CHECKS:   # data checks are declared by their asset (evaluated in its step)
        assets_def = defs.resolve_assets_def(c.asset)
        assert dg.AssetCheckKey(dg.AssetKey(c.asset), c.name) in assets_def.check_keys


def test_thumbnail_fits_inline_limit_and_decodes():
    import base64
    import io

    from pipelines.previews import INLINE_MARKDOWN_LIMIT, colorize, grid_png, markdown_thumbnail

    rng = np.random.default_rng(0)
    png = grid_png([[rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(6)],
                    [colorize(rng.random((64, 64))) for _ in range(6)]])
    md = markdown_thumbnail(png, "depth")
    assert md is not None and len(md) < INLINE_MARKDOWN_LIMIT
    data = md.split("base64,", 1)[1].rstrip(")")
    im = Image.open(io.BytesIO(base64.b64decode(data)))
    full = Image.open(io.BytesIO(png))
    assert im.format == "WEBP" and abs(im.width / im.height - full.width / full.height) < 0.05


def test_colorize_normalises_per_image_and_keeps_constant_maps_visible():
    from matplotlib import colormaps

    from pipelines.previews import colorize

    ramp = np.linspace(0.0, 1.0, 101)[None, :]
    a, b = colorize(ramp), colorize(ramp / 1024.0)   # other scale (a power of two: exact in floats)
    np.testing.assert_array_equal(a, b)
    # percentile ends map to the colormap ends (2% / 98%)
    turbo = (np.asarray(colormaps["turbo"]([0.0, 1.0]))[:, :3] * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(a[0, 0], turbo[0])
    np.testing.assert_array_equal(a[0, -1], turbo[1])
    const = colorize(np.full((4, 4), 3.0))
    mid = (np.asarray(colormaps["turbo"](0.5))[:3] * 255).round().astype(np.uint8)
    assert (const == mid).all() and const.max() > 0
    inv = colorize(np.ones((2, 2)), invalid=np.array([[True, False], [False, False]]))
    assert (inv[0, 0] == 0).all()
