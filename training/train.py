"""Training CLI and YAML config loading.

Usage::

    python -m training.train --config training/configs/tiny.yaml --shards data/shards/manifest.json \\
        [--out runs/tiny] [model=novel_view] [train.max_steps=200] [unet.layers_per_block=1]
    torchrun --nproc_per_node 8 -m training.train --config training/configs/base.yaml --shards ...

Config format (YAML; every key optional except ``model``; unknown keys raise)::

    model: first_view          # first_view | novel_view | multiview (training/multiview_train.py)
    resolution: 128            # training side, px
    class_cond: none           # none | pose (MIRAGE pose cluster) | label (class label)
    num_classes: 0             # > 0 with class_cond; the null class is num_classes
    unet: {block_out_channels: [...], down_block_types: [...], up_block_types: [...],
           layers_per_block: 2, attention_head_dim: 64, norm_num_groups: 32, dropout: 0.0}
    diffusion: {num_train_timesteps: 1000, beta_schedule: linear, beta_start: 1.0e-4,
                beta_end: 0.02, p_uncond: 0.1, ema_decay: 0.9999}
    train: {batch_size: 8, grad_accum: 1, lr: 1.0e-4, max_steps: ..., ...}   # TrainConfig

Overrides are ``dotted.key=value`` with YAML-parsed values. The run directory gets the
resolved config as ``config.yaml``; a rerun with the same ``--out`` resumes from its latest
checkpoint (``--no-resume`` starts over in place).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from .diffusion import DiffusionConfig
from .models import ModelConfig
from .trainer import TrainConfig, Trainer

CONFIG_DIR = Path(__file__).parent / "configs"
_MODEL_TOP = ("resolution", "class_cond", "num_classes")


def apply_overrides(cfg: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``cfg`` with ``a.b=value`` overrides applied (values parsed as YAML).

    Raises:
        ValueError: an override without ``=``.
    """
    cfg = copy.deepcopy(cfg)
    for ov in overrides:
        if "=" not in ov:
            raise ValueError(f"override must be key=value, got {ov!r}")
        key, val = ov.split("=", 1)
        node = cfg
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(val)
    return cfg


def load_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read a YAML config (a name like ``tiny`` means ``training/configs/tiny.yaml``) and
    apply overrides. Returns the raw dict (see module docstring)."""
    cfg: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists() and (CONFIG_DIR / f"{path}.yaml").exists():
            p = CONFIG_DIR / f"{path}.yaml"
        cfg = yaml.safe_load(p.read_text()) or {}
    return apply_overrides(cfg, overrides)


def parse_config(cfg: dict[str, Any]) -> tuple[ModelConfig, DiffusionConfig, TrainConfig]:
    """Raw config dict -> dataclasses. Raises ValueError on unknown or invalid keys.
    ``model: multiview`` configs go to :func:`training.multiview_train.parse_multiview_train_config`
    (its ``MultiViewConfig``, ``DiffusionConfig``, ``TrainConfig``)."""
    if cfg.get("model") == "multiview":
        from .multiview_train import parse_multiview_train_config
        return parse_multiview_train_config(cfg)[:3]
    known = {"model", "unet", "diffusion", "train", *_MODEL_TOP}
    unknown = set(cfg) - known
    if unknown:
        raise ValueError(f"unknown top-level config keys: {sorted(unknown)}")
    if "model" not in cfg:
        raise ValueError("config needs `model: first_view|novel_view`")
    m = {"kind": cfg["model"], **{k: cfg[k] for k in _MODEL_TOP if k in cfg}, **(cfg.get("unet") or {})}
    return (ModelConfig.from_dict(m), DiffusionConfig.from_dict(cfg.get("diffusion") or {}),
            TrainConfig.from_dict(cfg.get("train") or {}))


def run_training(cfg: dict[str, Any], shards: str | os.PathLike, out: str | os.PathLike, *,
                 resume: bool = True, progress_callback: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Train from a raw config dict; writes ``out/config.yaml``; returns the trainer summary
    (``step``, ``loss``, ``samples_per_s``, ``checkpoint``) plus ``out`` and ``params``."""
    mcfg, dcfg, tcfg = parse_config(cfg)
    task = None
    if cfg.get("model") == "multiview":
        from .multiview_train import parse_multiview_train_config
        task = parse_multiview_train_config(cfg)[3]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if int(os.environ.get("RANK", "0")) == 0:
        tmp = out / f".config.yaml.tmp{os.getpid()}"
        tmp.write_text(yaml.safe_dump(cfg, sort_keys=False))
        os.replace(tmp, out / "config.yaml")
    trainer = Trainer(mcfg, dcfg, tcfg, shards, out, progress_callback=progress_callback,
                      resume="auto" if resume else None, task=task)
    summary = trainer.train()
    summary.pop("losses", None)
    summary.update(out=str(out), params=trainer.model.num_parameters, world_size=trainer.world)
    return summary


def build_parser(prog: str = "python -m training.train") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description="Train an IVID/MIRAGE RGBD diffusion model on shards.")
    ap.add_argument("--config", required=True, help="YAML config path or name under training/configs/")
    ap.add_argument("--shards", required=True, help="shard manifest.json or its directory")
    ap.add_argument("--out", default=None, help="run directory (default runs/<config>-<model>)")
    ap.add_argument("--no-resume", action="store_true", help="ignore checkpoints already in --out")
    ap.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. train.max_steps=10")
    return ap


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    out = args.out or os.path.join("runs", f"{Path(args.config).stem}-{cfg.get('model', 'model')}")
    summary = run_training(cfg, args.shards, out, resume=not args.no_resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
    import torch.distributed as dist
    if dist.is_initialized():
        dist.destroy_process_group()
