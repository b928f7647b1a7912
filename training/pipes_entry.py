"""Dagster Pipes entry point of the ``trained_models`` and ``viewset_models`` assets (also
runs standalone). A ``model: multiview`` config trains the posed multi-view model on viewset
shards (:mod:`training.multiview_train`); the extras and reports are the same.

Under Dagster (``PipesSubprocessClient().run(command=[python, "-m", "training.pipes_entry"],
extras={...})``) the parameters come from the Pipes extras::

    {"config": "training/configs/base.yaml" | {raw config dict},
     "shards": "<shard dir or manifest.json>",
     "out": "<run dir>",
     "overrides": ["train.max_steps=1000", ...],   # optional
     "resume": true,                               # optional
     "asset_key": "trained_models"}                # optional (multi-asset steps)

Progress goes to the run log (``pipes.log.info``: step, loss, samples/s, lr) and, at
each log step, as a custom message ``{"kind": "training_progress", ...}``; at the end one
asset materialization carries ``final_loss``, ``samples_per_s``, ``steps``,
``checkpoint``, ``out``, ``params`` and ``world_size`` as metadata. Under ``torchrun``
only rank 0 talks to Dagster.

Standalone (no Pipes environment), it takes ``train.py``'s arguments::

    python -m training.pipes_entry --config tiny --shards data/shards --out runs/x [overrides]
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Sequence

from .train import build_parser, load_config, run_training


def _is_pipes_process() -> bool:
    from dagster_pipes import PipesEnvVarParamsLoader
    return PipesEnvVarParamsLoader().is_dagster_pipes_process()


def _config_from_extras(extras: dict[str, Any]) -> tuple[dict, str, str, bool]:
    missing = [k for k in ("config", "shards", "out") if k not in extras]
    if missing:
        raise ValueError(f"pipes extras lack {missing} (need config, shards, out)")
    cfg = extras["config"]
    overrides = list(extras.get("overrides") or [])
    if isinstance(cfg, dict):
        from .train import apply_overrides
        raw = apply_overrides(cfg, overrides)
    else:
        raw = load_config(cfg, overrides)
    return raw, str(extras["shards"]), str(extras["out"]), bool(extras.get("resume", True))


def run_with_pipes() -> dict[str, Any]:
    """Read params from Dagster Pipes, train, stream progress, report the materialization."""
    from dagster_pipes import open_dagster_pipes

    rank0 = int(os.environ.get("RANK", "0")) == 0
    with open_dagster_pipes() as pipes:
        raw, shards, out, resume = _config_from_extras(dict(pipes.extras))

        def progress(ev: dict[str, Any]) -> None:
            if not rank0:
                return
            if ev["event"] == "log":
                pipes.log.info(f"step {ev['step']}/{ev['max_steps']} loss {ev['loss']:.5f} "
                               f"{ev['samples_per_s']:.1f} samples/s lr {ev['lr']:.2e}")
                pipes.report_custom_message({"kind": "training_progress", **{k: ev[k] for k in (
                    "step", "max_steps", "loss", "samples_per_s", "lr", "elapsed_s")}})
            else:
                pipes.log.info(f"checkpoint {ev['path']} at step {ev['step']}")

        summary = run_training(raw, shards, out, resume=resume, progress_callback=progress)
        if rank0:
            meta = {"final_loss": float(summary["loss"]), "samples_per_s": float(summary["samples_per_s"]),
                    "steps": int(summary["step"]), "checkpoint": str(summary["checkpoint"]),
                    "out": str(summary["out"]), "params": int(summary["params"]),
                    "world_size": int(summary["world_size"]), "model": str(raw.get("model"))}
            pipes.report_asset_materialization(metadata=meta, asset_key=pipes.extras.get("asset_key"))
        return summary


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    if _is_pipes_process():
        return run_with_pipes()
    args = build_parser("python -m training.pipes_entry").parse_args(argv)
    raw = load_config(args.config, args.overrides)
    out = args.out or os.path.join("runs", f"{raw.get('model', 'model')}")
    summary = run_training(raw, args.shards, out, resume=not args.no_resume,
                           progress_callback=lambda ev: print(json.dumps(ev), flush=True))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
    import torch.distributed as dist
    if dist.is_initialized():
        dist.destroy_process_group()
