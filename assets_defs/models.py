"""Model assets: ``trained_models`` (training through Dagster Pipes) and ``eval_reports``.

Training runs as a subprocess (``python -m training.pipes_entry``) through
``PipesSubprocessClient``; its loss and throughput stream into the run log and the asset
metadata. Both assets belong to the concurrency pool ``gpu``.
"""
import sys
from typing import Optional

import dagster as dg

import pipelines.versions as V
from assets_defs.assets import training_shards
from assets_defs.metadata import to_result
from assets_defs.resources import PARAMS, ViewforgeSettings

GROUP = "models"
_T = PARAMS.get("train") or {}
_E = PARAMS.get("eval") or {}


class TrainModelsConfig(dg.Config):
    """Training (``train`` in params.yaml)."""
    config: str = _T.get("config", "base")
    max_steps: Optional[int] = _T.get("max_steps")
    first_view_class_cond: str = _T.get("first_view_class_cond", "none")
    init_novel_from_first: bool = _T.get("init_novel_from_first", True)
    first_view: list[str] = list(_T.get("first_view") or [])
    novel_view: list[str] = list(_T.get("novel_view") or [])


class EvalConfig(dg.Config):
    """Evaluation (the main keys of ``eval`` in params.yaml; the rest are read from the file)."""
    split: str = _E.get("split", "test")
    resolution: int = _E.get("resolution", 128)
    protocols: list[str] = list(_E.get("protocols") or ["generation", "novel_view", "view_sweep"])
    num_samples: int = _E.get("num_samples", 10000)
    num_pairs: Optional[int] = _E.get("num_pairs", 1000)
    sweep_viewsets: int = _E.get("sweep_viewsets", 100)
    ddim_steps: int = _E.get("ddim_steps", 50)
    guidance_scale: float = _E.get("guidance_scale", 1.0)
    feature_extractor_weights_path: Optional[str] = _E.get("feature_extractor_weights_path")
    lpips_weights_path: Optional[str] = _E.get("lpips_weights_path")


@dg.asset(group_name=GROUP, code_version=V.TRAIN, deps=[training_shards], pool="gpu", kinds={"pytorch"},
          description="IVID first-view (optionally MIRAGE pose-conditioned) and novel-view diffusion models, "
                      "trained on the current shards through Dagster Pipes (torchrun-compatible trainer).")
def trained_models(context: dg.AssetExecutionContext, config: TrainModelsConfig,
                   settings: ViewforgeSettings) -> dg.MaterializeResult:
    from pipelines.stages.train import plan_training, record_training

    import time

    t0 = time.perf_counter()
    params = settings.params("train", config)
    plan = plan_training(settings.root(), params)
    client = dg.PipesSubprocessClient()
    metadata: dict = {}
    for job in plan.jobs:
        context.log.info(f"training {job.kind}: {job.overrides} -> {job.out}")
        invocation = client.run(command=[sys.executable, "-m", "training.pipes_entry"], context=context,
                                extras={"config": job.config, "shards": str(plan.manifest), "out": str(job.out),
                                        "overrides": job.overrides, "asset_key": "trained_models"})
        for result in invocation.get_results():
            for k, v in (result.metadata or {}).items():
                metadata[f"{job.kind}/{k}"] = v
    report = record_training(settings.root(), plan)
    report.seconds = time.perf_counter() - t0
    result = to_result(report, context)
    return dg.MaterializeResult(metadata={**metadata, **(result.metadata or {})}, data_version=result.data_version)


@dg.asset(group_name=GROUP, code_version=V.EVAL, deps=[trained_models], pool="gpu", kinds={"pytorch"},
          description="FID / KID / FD-DINOv2 generation, novel-view PSNR / SSIM / LPIPS (mask and holes) and the "
                      "IVID view sweep; Markdown + HTML report and DVC metrics.")
def eval_reports(context: dg.AssetExecutionContext, config: EvalConfig,
                 settings: ViewforgeSettings) -> dg.MaterializeResult:
    from pipelines.stages.train import latest_models
    from eval.run import run_eval_reports

    root = settings.root()
    models_dir, manifest = latest_models(root)
    report = run_eval_reports(root, settings.params("eval", config), models_dir=models_dir, manifest=manifest,
                              out_dir=root / "eval_reports", profile=settings.profile, device=settings.device)
    return to_result(report, context)


MODEL_ASSETS = [trained_models, eval_reports]
