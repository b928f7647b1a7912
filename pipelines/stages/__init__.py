"""Stage runners: each runs one pipeline stage over the data root, incrementally.

A runner reads its upstream stage indexes, reuses stored per-sample results whose
(sample key, stage version) match, computes the rest chunk by chunk, writes its own
index atomically and returns a :class:`~pipelines.stages.common.StageReport`. Runners are
plain functions, used by the Dagster assets (``assets_defs``), the CLI and the tests.
"""
