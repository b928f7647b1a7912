"""Planning and bookkeeping of the ``trained_models`` stage (the training itself is
:mod:`training.trainer`, launched by the asset through Dagster Pipes or by hand).

A training run directory is keyed by the dataset version of the shards and a hash of
the training configuration, so a rerun with nothing changed resumes (or finds finished)
the same run, and new shards or new settings start a new run:
``<root>/models/<run_id>/{first_view,novel_view}``; ``<root>/models/latest.json`` names
the run the evaluation reads.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.config import REPO_ROOT, stable_hash
from pipelines.params_schema import effective_section
from pipelines.stages.common import StageReport
from pipelines.storage import write_json_atomic
from pipelines.versions import TRAIN as CODE_VERSION

STAGE = "trained_models"


@dataclass
class TrainJob:
    kind: str
    config: str
    overrides: list[str]
    out: Path


@dataclass
class TrainPlan:
    run_id: str
    run_dir: Path
    manifest: Path
    dataset_version: str
    jobs: list[TrainJob] = field(default_factory=list)


def _config_path(name: str) -> str:
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return str(p)
    return str(REPO_ROOT / "training" / "configs" / f"{name}.yaml")


def plan_training(root: Path, params: dict[str, Any]) -> TrainPlan:
    """The two training jobs (first view, then novel view) for the current shards.

    In the demo and smoke profiles ``train.small_profile`` overrides the config and step
    count (the tiny config trains in seconds on CPU).

    Raises:
        FileNotFoundError: no shard manifest (materialize ``training_shards`` first).
    """
    tp = effective_section(params, "train")      # small_profile applied in the demo / smoke profiles
    manifest = Path(root) / "shards" / "manifest.json"
    if not manifest.exists():
        raise FileNotFoundError(f"{manifest} not found: materialize `training_shards` first")
    mf = json.loads(manifest.read_text())
    common = [f"train.max_steps={int(tp['max_steps'])}"] if tp.get("max_steps") else []
    fv = list(common)
    cc = tp.get("first_view_class_cond", "none")
    if cc == "pose":
        summary = json.loads((Path(root) / "pose_clusters" / "summary.json").read_text())
        fv += ["class_cond=pose", f"num_classes={int(summary['num_poses_used'])}"]
    elif cc == "label":
        fv += ["class_cond=label", f"num_classes={max(1, len(mf.get('extra', {}).get('labels', [])))}"]
    fv += ["model=first_view", *tp.get("first_view", [])]
    nv = [*common, "model=novel_view", *tp.get("novel_view", [])]
    config = _config_path(str(tp.get("config", "base")))
    run_id = stable_hash({"code": CODE_VERSION, "dataset": mf["dataset_version"], "config": Path(config).read_text(),
                          "fv": fv, "nv": nv, "init": bool(tp.get("init_novel_from_first", True))})
    run_dir = Path(root) / "models" / run_id
    if tp.get("init_novel_from_first", True):
        nv.append(f"train.init_from={run_dir / 'first_view'}")
    return TrainPlan(run_id, run_dir, manifest, mf["dataset_version"],
                     [TrainJob("first_view", config, fv, run_dir / "first_view"),
                      TrainJob("novel_view", config, nv, run_dir / "novel_view")])


def record_training(root: Path, plan: TrainPlan) -> StageReport:
    """Point ``models/latest.json`` at the finished run and report it."""
    info = {"run_id": plan.run_id, "run_dir": str(plan.run_dir), "manifest": str(plan.manifest),
            "dataset_version": plan.dataset_version, "code_version": CODE_VERSION,
            "jobs": [{"kind": j.kind, "config": j.config, "overrides": j.overrides, "out": str(j.out)}
                     for j in plan.jobs]}
    write_json_atomic(Path(root) / "models" / "latest.json", info)
    return StageReport(STAGE, plan.run_id, stable_hash(info, 24), computed=len(plan.jobs),
                       metadata={"run_id": plan.run_id, "run_dir": str(plan.run_dir),
                                 "dataset_version": plan.dataset_version})


def latest_models(root: Path) -> tuple[Path, Path]:
    """(models run dir, shard manifest) of the latest training run.

    Raises:
        FileNotFoundError: ``trained_models`` has not been materialized.
    """
    p = Path(root) / "models" / "latest.json"
    if not p.exists():
        raise FileNotFoundError(f"{p} not found: materialize `trained_models` first")
    info = json.loads(p.read_text())
    return Path(info["run_dir"]), Path(info["manifest"])
