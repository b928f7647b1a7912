"""The warp_pairs stage gives the same pairs whatever the number of worker processes."""
import shutil
from pathlib import Path

import pytest

from pipelines.config import load_params
from pipelines.sources import sample_items
from pipelines.stages.depth import run_depth
from pipelines.stages.ingest import run_ingest
from pipelines.stages.warp import AUTO_MIN_PAIRS, open_pairs, resolve_workers, run_warp


def test_auto_workers_only_for_enough_pending_pairs(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert resolve_workers(None, AUTO_MIN_PAIRS - 1, on_cpu=True) == 1
    assert resolve_workers(None, AUTO_MIN_PAIRS, on_cpu=True) == 3
    assert resolve_workers(None, 10 ** 6, on_cpu=False) == 1      # GPU: one process
    assert resolve_workers(2, 0, on_cpu=True) == 2                # explicit count wins
    assert resolve_workers(0, 10 ** 6, on_cpu=True) == 1


@pytest.mark.timeout(300)
def test_worker_processes_do_not_change_results(tmp_path, tiny_depth_dir):
    photos = tmp_path / "photos"
    photos.mkdir()
    for item in sample_items()[:3]:
        shutil.copy(item.uri, photos / Path(item.uri).name)
    rows = {}
    for workers in (1, 2):
        root = tmp_path / f"data{workers}"
        p = load_params()
        p["source"] = {"kind": "folder", "path": str(photos)}
        p["ingest"] = {"resolution": 48, "min_size": 48}
        p["depth"] = {**p["depth"], "local_dir": str(tiny_depth_dir), "model": None}
        p["warp"] = {**p["warp"], "views_per_image": 2, "batch_size": 2, "workers": workers}
        run_ingest(root, p)
        run_depth(root, p)
        report = run_warp(root, p)
        assert report.computed == 3 and report.metadata["workers"] == workers
        index, store, _ = open_pairs(root)
        rows[workers] = store.read(sorted(set(index.column("sample_key").to_pylist())))
    assert rows[1].num_rows == 6
    assert rows[1].equals(rows[2])
