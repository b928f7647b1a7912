"""Atomic writes and the per-sample stage store."""
import os

import pyarrow as pa
import pytest

from pipelines.config import stage_version
from pipelines.stages.common import run_incremental
from pipelines.stage_store import StageStore
from pipelines.storage import atomic_path, read_index, write_index


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


def test_bucket_store_reads_touch_only_the_parts_holding_the_keys(tmp_path, monkeypatch):
    """A chunk read opens the key map once and then only the parts that hold its keys,
    however many parts the bucket has (O(1) files per chunk)."""
    import pipelines.stage_store as S

    s = StageStore(tmp_path, "st", "v", bucket="a")
    for i in range(40):
        s.write(pa.table({"key": [f"a{i:03d}x", f"a{i:03d}y"], "v": [i, i]}))
    s.flush()
    opened = []
    real = S.read_parquet
    monkeypatch.setattr(S, "read_parquet", lambda path, *a, **k: opened.append(str(path)) or real(path, *a, **k))
    fresh = StageStore(tmp_path, "st", "v", bucket="a")
    t = fresh.read(["a007y", "a007x", "a031x"])
    assert t.column("v").to_pylist() == [7, 7, 31]
    parts = [p for p in opened if "part-" in p]
    assert len(parts) == 2 and sum("_keys.parquet" in p for p in opened) == 1
    with pytest.raises(ValueError, match="does not belong to bucket"):
        fresh.write(pa.table({"key": ["b1"], "v": [0]}))


def test_unflushed_parts_are_found_again(tmp_path):
    """A run killed before ``flush`` leaves parts the key map does not list; they are found by listing."""
    s = StageStore(tmp_path, "st", "v", bucket="a")
    s.write(pa.table({"key": ["a1"], "v": [1]}))
    s.flush()
    s.write(pa.table({"key": ["a2"], "v": [2]}))      # no flush: "killed"
    assert StageStore(tmp_path, "st", "v", bucket="a").keys() == {"a1", "a2"}


def test_growing_num_buckets_reuses_results_of_the_ancestor_bucket(tmp_path):
    coarse = StageStore(tmp_path, "st", "v", bucket="a")
    coarse.write(pa.table({"key": ["a1x", "a2x", "a1y"], "v": [1, 2, 3]}))
    coarse.flush()
    fine = StageStore(tmp_path, "st", "v", bucket="a1")
    assert fine.keys() == {"a1x", "a1y"} and fine.missing(["a1x", "a1z"]) == ["a1z"]
    assert fine.read(["a1y"]).column("v").to_pylist() == [3]


def test_store_and_index_on_an_fsspec_memory_filesystem():
    """The data root may be any pyarrow.fs / fsspec URI (here fsspec's in-memory file system)."""
    root = "memory://viewforge-test/root"
    s = StageStore(root, "st", "v", bucket="a")
    s.write(pa.table({"key": ["a1", "a2"], "v": [1, 2]}))
    s.flush()
    assert StageStore(root, "st", "v", bucket="a").read(["a2"]).column("v").to_pylist() == [2]
    dv = write_index(root, "st", pa.table({"key": ["a1"]}), {"version": "v"}, bucket="a")
    assert read_index(root, "st", "a")[1]["data_version"] == dv


def test_files_follow_the_umask_and_errors_name_the_path(tmp_path):
    from pipelines.storage import write_bytes_atomic

    old = os.umask(0o022)
    try:
        p = write_bytes_atomic(tmp_path / "f.bin", b"x")
        assert (os.stat(p).st_mode & 0o777) == 0o644
    finally:
        os.umask(old)
    with pytest.raises(OSError, match="f.bin"):
        with atomic_path(tmp_path / "f.bin"):
            raise OSError(28, "No space left on device")


def _lock_in_child(root, bucket, q):
    from pipelines.storage import LockedError, writer_lock

    try:
        with writer_lock(root, "st", bucket):
            q.put("acquired")
    except LockedError as e:
        q.put(str(e))


def _child_tries(root, bucket):
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_lock_in_child, args=(str(root), bucket, q))
    p.start()
    p.join(120)
    return q.get(timeout=5)


def test_writer_lock_fails_fast_for_a_second_writer_of_the_same_bucket(tmp_path):
    """Two runs on one (stage, bucket) never interleave: the second fails fast with a clear
    message; a run on another bucket is not blocked; after release the bucket is free."""
    from pipelines.storage import writer_lock

    with writer_lock(tmp_path, "st", "a"):
        assert "st bucket a is being written by another run" in _child_tries(tmp_path, "a")
        assert _child_tries(tmp_path, "b") == "acquired"
    assert _child_tries(tmp_path, "a") == "acquired"


def test_a_bucket_run_removes_temporaries_left_by_a_killed_writer(tmp_path):
    """Temporaries of a killed run (cache parts and indexes) are removed by the next run of
    that bucket, under its lock; other buckets' files are left alone."""
    from pipelines.engine import BucketOutcome  # noqa: F401  (engine importable without Ray)
    from pipelines.stages.common import _BucketFn

    stale = [tmp_path / "cache" / "source_listing" / "v" / "bucket=a" / ".part-x.parquet.123.tmp",
             tmp_path / "source_listing" / "bucket=a" / ".index.parquet.9.tmp"]
    other = tmp_path / "cache" / "source_listing" / "v" / "bucket=b" / ".part-y.parquet.1.tmp"
    for p in [*stale, other]:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"half")
    fn = _BucketFn("source_listing", "test_storage:_noop_runner", str(tmp_path), {}, None)
    fn("a", lambda: None)
    assert not any(p.exists() for p in stale) and other.exists()


def _noop_runner(ctx):
    from pipelines.stages.common import StageReport

    return StageReport("source_listing", "v")
