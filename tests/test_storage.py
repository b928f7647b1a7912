"""Atomic writes and the per-sample stage store."""
import os

import pyarrow as pa
import pytest

from pipelines.config import stage_version
from pipelines.stages.common import run_incremental
from pipelines.storage import StageStore, atomic_path, read_index, write_index


def test_atomic_path_leaves_old_file_on_error(tmp_path):
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["x.bin"]


def test_store_read_order_and_duplicate_parts(tmp_path):
    s = StageStore(tmp_path, "st", "v", key_column="sample_key")
    s.write(pa.table({"sample_key": ["b", "b", "a"], "view": [0, 1, 0]}))
    s.write(pa.table({"sample_key": ["c", "a"], "view": [0, 0]}))  # 'a' also here: first part wins
    t = s.read(["c", "b", "a"])
    assert t.column("sample_key").to_pylist() == ["c", "b", "b", "a"]
    assert t.column("view").to_pylist() == [0, 0, 1, 0]
    with pytest.raises(KeyError):
        s.read(["zzz"])
    assert s.missing(["a", "q", "q", "c"]) == ["q"]


def test_incremental_counts_and_failures(tmp_path):
    s = StageStore(tmp_path, "st", "v")
    calls = []

    def compute(chunk):
        calls.append(list(chunk))
        good = [k for k in chunk if k != "bad"]
        return pa.table({"key": good}), [{"key": "bad", "reason": "x"}] if "bad" in chunk else []

    assert run_incremental(s, ["a", "b", "bad"], compute, 2)[:2] == (2, 0)
    computed, reused, failures = run_incremental(s, ["a", "b", "bad", "c"], compute, 2)
    assert (computed, reused) == (1, 2) and calls[-1] == ["bad", "c"] and failures[0]["key"] == "bad"


def test_stage_version_changes_with_params_code_and_upstream():
    base = stage_version("warp", "warp-1", {"a": 1}, {"depth": "x"})
    assert base == stage_version("warp", "warp-1", {"a": 1}, {"depth": "x"})
    assert len({base, stage_version("warp", "warp-2", {"a": 1}, {"depth": "x"}),
                stage_version("warp", "warp-1", {"a": 2}, {"depth": "x"}),
                stage_version("warp", "warp-1", {"a": 1}, {"depth": "y"})}) == 4


def test_index_data_version_is_content_hash(tmp_path):
    t = pa.table({"key": ["a", "b"]})
    v1 = write_index(tmp_path, "s", t, {"version": "1"})
    v2 = write_index(tmp_path, "s", t, {"version": "1"})
    v3 = write_index(tmp_path, "s", pa.table({"key": ["a", "c"]}), {"version": "1"})
    assert v1 == v2 != v3
    assert read_index(tmp_path, "s")[1]["data_version"] == v3
