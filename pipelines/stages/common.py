"""Shared machinery of the stage runners: reports, declared inputs, per-bucket execution.

A partitioned stage is a function ``run_bucket(ctx: BucketContext) -> StageReport`` for one
bucket. :func:`run_partitioned` hands each bucket its declared inputs
(:data:`pipelines.stages.specs.STAGES`), holds the (stage, bucket) writer lock, and fans the
buckets out with :func:`pipelines.engine.run_buckets` (in-process or Ray).
"""
from __future__ import annotations

import importlib
from pathlib import Path
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import pyarrow as pa

from pipelines.config import stage_version
from pipelines.params_schema import result_params  # noqa: F401 (the one home; re-exported)
from pipelines.engine import BucketJob, BucketOutcome, run_buckets
from pipelines.stages.specs import STAGES
from pipelines.stage_store import StageStore
from pipelines.storage import (fs_path, is_local, read_index, remove_stale_temporaries, write_index,
                               write_quarantine, writer_lock)

log = logging.getLogger("viewforge")



@dataclass
class StageReport:
    """What a stage run (or one bucket of it) did. ``metadata`` holds JSON-able numbers/strings
    for the asset's materialization; ``previews`` PNG bytes by name."""
    stage: str
    version: str
    data_version: str = ""
    computed: int = 0
    reused: int = 0
    failed: int = 0
    seconds: float = 0.0
    metadata: dict[str, Any] = field(default_factory=dict)
    previews: dict[str, bytes] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)
    bucket: str | None = None

    def summary(self) -> dict[str, Any]:
        return {"stage": self.stage, "version": self.version, "data_version": self.data_version,
                "computed": self.computed, "reused": self.reused, "failed": self.failed,
                "seconds": round(self.seconds, 3), **self.metadata}


@dataclass
class BucketInput:
    """One bucket of an upstream stage, as handed to a runner: its index table, the info
    dict stored with it (version, params...) and its per-sample store."""
    stage: str
    bucket: str
    table: pa.Table
    info: dict[str, Any]
    store: StageStore

    @property
    def version(self) -> str:
        return self.info["version"]

    @property
    def keys(self) -> list[str]:
        col = STAGES[self.stage].key_column
        name = col if col in self.table.column_names else "key"
        return list(dict.fromkeys(self.table.column(name).to_pylist())) if self.table.num_rows else []


def open_input(root: Any, stage: str, bucket: str) -> BucketInput:
    """The materialized bucket ``bucket`` of ``stage``.

    Raises:
        FileNotFoundError: that bucket is not materialized (names the asset and bucket).
    """
    table, info = read_index(root, stage, bucket)
    return BucketInput(stage, bucket, table, info,
                       StageStore(root, stage, info.get("version", ""), bucket, STAGES[stage].key_column))


@dataclass
class BucketContext:
    """Everything a bucket runner may use: ``inputs`` are its declared upstream buckets."""
    root: Any
    params: dict[str, Any]
    bucket: str
    inputs: dict[str, BucketInput]
    resource: Callable[[], Any]
    device: str | None = None
    pending: list = field(default_factory=list)

    def publish(self, stage: str, table: pa.Table, info: dict[str, Any], quarantine: list | None = None) -> str:
        """Queue this bucket's index (and quarantine rows) of ``stage``; returns its data
        version. The framework writes them only if the bucket succeeds, so a bucket whose
        every item failed never replaces the last good index with an empty one."""
        from pipelines.storage import table_digest

        self.pending.append((stage, table, info, quarantine))
        return table_digest(table, str(info.get("version", "")))[:24]

    def previous_info(self, stage: str) -> dict[str, Any]:
        """The info of this bucket's current index of ``stage`` ({} when none)."""
        try:
            return read_index(self.root, stage, self.bucket)[1]
        except FileNotFoundError:
            return {}

    def resource_loaded(self) -> bool:
        """Whether the shared model was built in this process (or actor) so far."""
        return bool(getattr(self.resource, "__self__", None) and self.resource.__self__._resource)

    def store(self, stage: str, params: dict[str, Any], upstream: dict[str, str]) -> StageStore:
        """This bucket's store of ``stage`` for the version of (code, params, upstream)."""
        spec = STAGES[stage]
        version = stage_version(stage, spec.code_version, params, upstream)
        return StageStore(self.root, stage, version, self.bucket, spec.key_column)


def _resolve(dotted: str) -> Callable:
    mod, _, name = dotted.partition(":")
    return getattr(importlib.import_module(mod), name)


@dataclass
class _BucketFn:
    """Picklable per-bucket callable (Ray pickles module-level references)."""
    stage: str
    runner: str
    root: Any
    params: dict[str, Any]
    device: str | None

    def __call__(self, bucket: str, resource: Callable[[], Any]) -> StageReport:
        spec = STAGES[self.stage]
        inputs = {s: open_input(self.root, s, bucket) for s in spec.inputs}   # every input is stored per bucket
        with writer_lock(self.root, self.stage, bucket, timeout=float(self.params.get("lock_timeout", 0))):
            if is_local(self.root):      # under the lock: no live writer owns these temporaries
                local = Path(fs_path(self.root)[1])
                for d in [local / self.stage / f"bucket={bucket}",
                          *(local / "cache" / self.stage).glob(f"*/bucket={bucket}")]:
                    remove_stale_temporaries(d)
            t0 = time.perf_counter()
            ctx = BucketContext(self.root, self.params, bucket, inputs, resource, self.device)
            report = _resolve(self.runner)(ctx)
            report.seconds = time.perf_counter() - t0
            report.bucket = bucket
            errors = [f for f in report.failures if f.get("error")]
            if errors and not report.computed and not report.reused:
                # every item failed because the computation raised (not because the data is
                # bad, which is quarantined): the bucket fails, its last good index stays
                raise BucketFailed(f"every item failed ({report.failed}), e.g. {errors[0]['reason']}", report)
            for stage, table, info, quarantine in ctx.pending:
                write_index(self.root, stage, table, info, bucket=bucket)
                if quarantine is not None:
                    write_quarantine(self.root, stage, quarantine, bucket=bucket)
        return report


@dataclass
class _Resource:
    factory: str
    params: dict[str, Any]
    device: str | None

    def __call__(self) -> Any:
        return _resolve(self.factory)(self.params, self.device)


class BucketFailed(RuntimeError):
    """A bucket whose every item failed: the run must fail (its report is attached)."""

    def __init__(self, message: str, report: StageReport):
        super().__init__(message)
        self.report = report


def run_partitioned(stage: str, root: Any, params: dict[str, Any], buckets: Sequence[str], *,
                    runner: str, resource: str | None = None, device: str | None = None,
                    progress: Callable[[BucketOutcome], None] | None = None) -> list[BucketOutcome]:
    """Run ``runner`` (``"module:function"`` taking a :class:`BucketContext`) on ``buckets``.

    ``resource`` (``"module:function(params, device)"``) builds the shared model, loaded
    lazily by the first bucket that needs it (a fully cached bucket never loads it).
    Returns one :class:`pipelines.engine.BucketOutcome` per bucket, in bucket order; a
    failed bucket has ``error`` set and never stops the others.
    """
    job = BucketJob(_BucketFn(stage, runner, root, params, device),
                    _Resource(resource, params, device) if resource else None, gpu=STAGES[stage].gpu)
    return run_buckets(job, buckets, params, progress)


def chunked(seq: Sequence, n: int) -> Iterator[Sequence]:
    """Consecutive slices of ``seq`` of length ``n`` (the last may be shorter)."""
    n = max(1, int(n))
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


def run_incremental(store: StageStore, keys: Sequence[str],
                    compute: Callable[[list[str]], tuple[pa.Table, list[dict[str, str]]]],
                    chunk_size: int, *, progress: Callable[[int, int], None] | None = None
                    ) -> tuple[int, int, list[dict[str, str]]]:
    """Compute and store results for the keys of ``keys`` that ``store`` lacks.

    ``compute(chunk_keys)`` returns ``(rows, failures)``; each failure is
    ``{"key", "reason"}`` (a bad item, quarantined) and does not stop the run. A chunk that
    raises is recorded as a failure of each of its keys with ``"error": "chunk"``, so one bad
    chunk never loses the others' results; a bucket whose every item failed that way fails. The
    store's key map is flushed at the end.

    Returns:
        ``(computed, reused, failures)``.
    """
    todo = store.missing(keys)
    reused = len(set(keys)) - len(todo)
    computed = 0
    failures: list[dict[str, str]] = []
    done = 0
    try:
        for chunk in chunked(todo, chunk_size):
            try:
                rows, bad = compute(list(chunk))
            except Exception as e:  # noqa: BLE001 - recorded per key, run goes on
                log.exception("%s: chunk of %d failed", store.stage, len(chunk))
                bad = [{"key": k, "reason": f"{type(e).__name__}: {e}", "error": "chunk"} for k in chunk]
                rows = None
            if rows is not None and rows.num_rows:
                store.write(rows)
                computed += len(set(rows.column(store.key_column).to_pylist()))
            failures.extend(bad)
            done += len(chunk)
            if progress:
                progress(done, len(todo))
    finally:
        store.flush()
    return computed, reused, failures


class Timer:
    """Context manager measuring wall seconds into ``.seconds``."""

    def __enter__(self) -> "Timer":
        self.t0 = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.t0
