"""Checks of the model assets (``trained_models``, ``eval_reports``); each returns
``(passed, metadata)`` like :mod:`pipelines.stages.checks` and reads only the data root."""
from __future__ import annotations

from pathlib import Path

from pipelines.stages.checks import Check


def check_trained_models(root: Path) -> Check:
    """The latest training run has a loadable first-view and novel-view model."""
    import json

    from training.sample import resolve_model_dir

    info = json.loads((Path(root) / "models" / "latest.json").read_text())
    found = {}
    for job in info["jobs"]:
        try:
            found[job["kind"]] = str(resolve_model_dir(job["out"]))
        except FileNotFoundError:
            found[job["kind"]] = None
    return all(found.values()) and len(found) == 2, {"run_id": info["run_id"], **found}


def check_eval_reports(root: Path) -> Check:
    """metrics.json exists, is flat and every number is finite."""
    import json
    import math

    metrics = json.loads((Path(root) / "eval_reports" / "metrics.json").read_text())
    bad = [k for k, v in metrics.items() if not isinstance(v, (int, float)) or not math.isfinite(v)]
    return bool(metrics) and not bad, {"metrics": len(metrics), "non_finite_or_nested": bad[:20]}
