"""Model assets: ``trained_models`` (training through Dagster Pipes) and ``eval_reports``.

Training runs as a subprocess (``python -m training.pipes_entry``) through
``PipesSubprocessClient``; its loss and throughput stream into the run log and the asset
metadata. Both assets belong to the concurrency pool ``gpu``.
"""
import sys

import dagster as dg

from assets_defs.assets import shard_manifest
from assets_defs.versions import asset_code_version
from assets_defs.metadata import to_result
from assets_defs.resources import ViewforgeSettings, section_config

GROUP = "models"

#: Training (``train`` in params.yaml); unset fields take their params.yaml value at run time.
TrainModelsConfig = section_config("train", "TrainModelsConfig")
#: Evaluation (``eval`` in params.yaml); unset fields take their params.yaml value at run time.
EvalConfig = section_config("eval", "EvalConfig")


@dg.asset(group_name=GROUP, code_version=asset_code_version("trained_models"), deps=[shard_manifest], pool="gpu", kinds={"pytorch"},
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


@dg.asset(group_name=GROUP, code_version=asset_code_version("eval_reports"), deps=[trained_models], pool="gpu", kinds={"pytorch"},
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
