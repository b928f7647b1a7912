"""Multi-view model assets (issue 15), group ``models``, pool ``gpu``:

viewset_manifest -> viewset_models -> nvs_reports

``viewset_models`` trains the posed multi-view model (``training/configs/multiview_*.yaml``)
on the current viewset shards through Dagster Pipes (``python -m training.pipes_entry``, the
trainer of ``trained_models``); its loss and throughput stream into the run log and the
asset metadata. ``nvs_reports`` evaluates it under the named novel-view profiles
(:mod:`eval.nvs_run`) and writes HTML + Markdown + ``metrics.json`` + the stored eval index.
"""
import sys
import time

import dagster as dg

from assets_defs.metadata import to_result
from assets_defs.resources import ViewforgeSettings, clean_failures, section_config
from assets_defs.versions import asset_code_version
from assets_defs.viewsets import viewset_manifest

GROUP = "models"

#: ``viewset_train`` in params.yaml; unset fields take their params.yaml value at run time.
ViewsetTrainConfig = section_config("viewset_train", "ViewsetTrainConfig")
#: ``nvs_eval`` in params.yaml; unset fields take their params.yaml value at run time.
NvsEvalConfig = section_config("nvs_eval", "NvsEvalConfig")


@dg.asset(group_name=GROUP, code_version=asset_code_version("viewset_models"), deps=[viewset_manifest], pool="gpu",
          kinds={"pytorch"},
          description="Posed multi-view diffusion model (ViewDiff-style cross-view attention, ray-map cameras) "
                      "trained on the current viewset shards through Dagster Pipes.")
def viewset_models(context: dg.AssetExecutionContext, config: ViewsetTrainConfig,
                   settings: ViewforgeSettings) -> dg.MaterializeResult:
    from pipelines.config import REPO_ROOT
    from training.multiview_train import plan_viewset_training, record_viewset_training

    with clean_failures():
        t0 = time.perf_counter()
        root = settings.root()
        plan = plan_viewset_training(root, settings.params("viewset_train", config))
        context.log.info(f"training multiview: {plan['config']} {plan['overrides']} -> {plan['out']}")
        inv = dg.PipesSubprocessClient(cwd=str(REPO_ROOT)).run(
            command=[sys.executable, "-m", "training.pipes_entry"], context=context,
            extras={"config": plan["config"], "shards": str(plan["manifest"]), "out": str(plan["out"]),
                    "overrides": plan["overrides"], "asset_key": "viewset_models"})
        metadata = {k: v for r in inv.get_results() for k, v in (r.metadata or {}).items()}
        report = record_viewset_training(root, plan)
        report.seconds = time.perf_counter() - t0
        result = to_result(report, context)
        return dg.MaterializeResult(metadata={**metadata, **(result.metadata or {})}, data_version=result.data_version)


@dg.asset(group_name=GROUP, code_version=asset_code_version("nvs_reports"), deps=[viewset_models], pool="gpu",
          kinds={"pytorch"},
          description="Novel-view protocols of the multi-view model (co3d_challenge, viewdiff_single_image, "
                      "viewset_single_view, syncdreamer_ring): provenance-stamped numbers, per-view and "
                      "per-sequence tables, strips; HTML + Markdown + metrics.json; stored eval index.")
def nvs_reports(context: dg.AssetExecutionContext, config: NvsEvalConfig,
                settings: ViewforgeSettings) -> dg.MaterializeResult:
    from eval.nvs_run import run_nvs_reports
    from training.multiview_train import latest_viewset_model

    with clean_failures():
        root = settings.root()
        info = latest_viewset_model(root)
        params = settings.params("nvs_eval", config)
        report = run_nvs_reports(root, params, model=info["run_dir"], manifest=info["manifest"],
                                 out_dir=root / "nvs_reports", profile=params.get("profile"), device=settings.device)
        return to_result(report, context)


NVS_ASSETS = [viewset_models, nvs_reports]
