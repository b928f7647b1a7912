"""Shared machinery of the stage runners: reports, stage parameters, incremental loops."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pyarrow as pa

from pipelines.config import stage_version
from pipelines.storage import StageStore, read_index

log = logging.getLogger("viewforge")

#: keys of a section that change speed, never results; excluded from stage versions
NON_RESULT_KEYS = ("batch_size", "workers", "num_threads")


@dataclass
class StageReport:
    """What a stage run did. ``metadata`` holds JSON-able numbers/strings for the asset's
    materialization; ``previews`` PNG bytes by name (shown as Markdown in Dagster)."""
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

    def summary(self) -> dict[str, Any]:
        return {"stage": self.stage, "version": self.version, "data_version": self.data_version,
                "computed": self.computed, "reused": self.reused, "failed": self.failed,
                "seconds": round(self.seconds, 3), **self.metadata}


def result_params(params: dict[str, Any], section: str, **extra: Any) -> dict[str, Any]:
    """The parameters of ``section`` that determine results (speed-only keys dropped),
    merged with ``extra`` (e.g. the global seed, the weights origin)."""
    sec = {k: v for k, v in (params.get(section) or {}).items() if k not in NON_RESULT_KEYS}
    return {**sec, **extra}


def upstream(root: Path, stage: str) -> tuple[pa.Table, dict[str, Any]]:
    """An upstream stage's index table and info (raises FileNotFoundError if missing)."""
    return read_index(root, stage)


def make_store(root: Path, stage: str, code_version: str, params: dict[str, Any],
               upstream_versions: dict[str, str], key_column: str = "key") -> StageStore:
    """The :class:`StageStore` for this stage version."""
    version = stage_version(stage, code_version, params, upstream_versions)
    return StageStore(root, stage, version, key_column=key_column)


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
    ``{"key", "reason"}`` and does not stop the run. A chunk that raises is recorded as a
    failure of each of its keys, so one bad chunk never loses the others' results.

    Returns:
        ``(computed, reused, failures)``.
    """
    todo = store.missing(keys)
    reused = len(set(keys)) - len(todo)
    computed = 0
    failures: list[dict[str, str]] = []
    done = 0
    for chunk in chunked(todo, chunk_size):
        try:
            rows, bad = compute(list(chunk))
        except Exception as e:  # noqa: BLE001 - recorded per key, run goes on
            log.exception("%s: chunk of %d failed", store.stage, len(chunk))
            bad = [{"key": k, "reason": f"{type(e).__name__}: {e}"} for k in chunk]
            rows = None
        if rows is not None and rows.num_rows:
            store.write(rows)
            computed += len(set(rows.column(store.key_column).to_pylist()))
        failures.extend(bad)
        done += len(chunk)
        if progress:
            progress(done, len(todo))
    return computed, reused, failures


class Timer:
    """Context manager measuring wall seconds into ``.seconds``."""

    def __enter__(self) -> "Timer":
        self.t0 = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.t0
