"""Training the posed multi-view model through :class:`training.trainer.Trainer` (issue 15).

The trainer is model-agnostic behind a small *task* hook: for ``model: multiview`` configs it
holds a :class:`MultiViewTask`, which supplies the four things that differ from the IVID
models -- building / loading the network (:class:`training.multiview.MultiViewModel`), the
data stream (:func:`training.viewset_data.make_viewset_dataset` with the adapter named in the
config's ``data:`` section, views at the model's ``resolution``, ``num_views`` per sample)
and the loss (:func:`training.multiview.multiview_loss`, condition views drawn with
:func:`training.multiview.draw_clean_views` from the trainer's per-step seeded generator).
Everything else -- EMA, AdamW, checkpoints, exact resume, DDP, CSV / TensorBoard logs,
Dagster Pipes -- is the trainer's, unchanged.

Config (``training/configs/multiview_*.yaml``): the keys of
:func:`training.multiview.parse_multiview_config` plus an optional ``data:`` section
(:class:`ViewsetDataConfig`)::

    data: {adapter: viewdiff, selection: random, crop: center, background: null}

The ``viewset_models`` stage (Dagster asset / DVC stage) plans its run here:
:func:`plan_viewset_training` keys a run directory by the viewset shard dataset version and a
hash of the configuration (``<root>/viewset_models/<run_id>``; a rerun with nothing changed
resumes or finds the run finished), :func:`record_viewset_training` points
``<root>/viewset_models/latest.json`` at it, :func:`latest_viewset_model` reads it back.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from diffusers import DDPMScheduler

from pipelines.config import REPO_ROOT, stable_hash
from pipelines.params_schema import effective_section
from pipelines.stages.common import StageReport
from pipelines.storage import write_json_atomic
from pipelines.versions import VIEWSET_TRAIN as CODE_VERSION

from .models import config_from_dict
from .multiview import (MULTIVIEW, MultiViewConfig, MultiViewModel, draw_clean_views, load_multiview_model,
                        multiview_inputs, multiview_loss, parse_multiview_config)

STAGE = "viewset_models"
#: adapters whose samples carry ``images [V,3,S,S]`` in [-1, 1], pixel ``K [V,3,3]`` and OpenCV
#: ``w2c [V,4,4]`` (training.viewset_data); SyncDreamer's fixed ring (1 input + 16 targets,
#: corner-convention K) is an evaluation profile here, not a training adapter.
TRAIN_ADAPTERS = ("viewdiff", "viewset_diffusion")


@dataclass
class ViewsetDataConfig:
    """The ``data:`` section of a multi-view config.

    Attributes:
        adapter: ``viewdiff`` (centre square crop, ViewDiff world, AABB -> [-1, 1]^3) or
            ``viewset_diffusion`` (PyTorch3D box-crop placement, composited background,
            Viewset world); see :mod:`training.viewset_data`.
        selection: viewdiff view choice, ``random`` | ``sequence``.
        crop: viewdiff crop, ``center`` | ``random``.
        background: viewset_diffusion composite colour in [0, 1] (None: per source).
    """
    adapter: str = "viewdiff"
    selection: str = "random"
    crop: str = "center"
    background: float | None = None

    def __post_init__(self) -> None:
        if self.adapter not in TRAIN_ADAPTERS:
            raise ValueError(f"data.adapter must be one of {TRAIN_ADAPTERS}, got {self.adapter!r}")

    def adapter_kwargs(self, mcfg: MultiViewConfig) -> dict[str, Any]:
        """``make_viewset_dataset`` adapter arguments at the model's views and resolution."""
        kw: dict[str, Any] = {"n_views": mcfg.num_views, "size": mcfg.resolution}
        if self.adapter == "viewdiff":
            kw.update(selection=self.selection, crop=self.crop)
        else:
            kw.update(background=self.background)
        return kw


def parse_multiview_train_config(cfg: dict[str, Any]):
    """Raw ``model: multiview`` config -> ``(MultiViewConfig, DiffusionConfig, TrainConfig,
    MultiViewTask)``. Raises ValueError on unknown keys (also inside ``data:``)."""
    rest = {k: v for k, v in cfg.items() if k != "data"}
    mcfg, dcfg, tcfg = parse_multiview_config(rest)
    data = config_from_dict(ViewsetDataConfig, cfg.get("data") or {}, "data")
    return mcfg, dcfg, tcfg, MultiViewTask(data)


def viewset_batch_tensors(batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A collated adapter batch -> ``images`` float32 [B,V,3,S,S] in [0, 1], ``K`` float32
    [B,V,3,3] (pixels at S, integer pixel centres) and ``w2c`` float32 [B,V,4,4] (OpenCV)."""
    images = (batch["images"].float() + 1) / 2
    K = torch.as_tensor(np.stack([np.asarray(k) for k in batch["K"]]), dtype=torch.float32)
    w2c = torch.as_tensor(np.stack([np.asarray(w) for w in batch["w2c"]]), dtype=torch.float32)
    return images.clamp(0, 1), K, w2c


class MultiViewTask:
    """The :class:`training.trainer.Trainer` hook for ``model: multiview`` (module docstring)."""

    kind = MULTIVIEW

    def __init__(self, data: ViewsetDataConfig | None = None):
        self.data = data or ViewsetDataConfig()

    def build_model(self, cfg: MultiViewConfig) -> MultiViewModel:
        """A randomly initialised :class:`MultiViewModel` (the trainer seeds torch first)."""
        return MultiViewModel(cfg)

    def load_model(self, path: str | Path) -> MultiViewModel:
        """:func:`training.multiview.load_multiview_model` (local only)."""
        return load_multiview_model(path)

    def dataset_factory(self, mcfg: MultiViewConfig) -> Callable[..., Any]:
        """``(shards, split, *, batch_size, shuffle_buffer, seed, resampled) -> WebDataset``:
        :func:`training.viewset_data.make_viewset_dataset` with this task's adapter."""
        from .viewset_data import make_viewset_dataset
        kw = self.data.adapter_kwargs(mcfg)
        adapter = self.data.adapter

        def make(shards: Any, split: str, **opts: Any):
            return make_viewset_dataset(shards, split, adapter, **opts, **kw)
        return make

    def loss(self, model: MultiViewModel, net: torch.nn.Module, scheduler: DDPMScheduler, batch: dict[str, Any],
             device: torch.device, generator: torch.Generator) -> torch.Tensor:
        """Epsilon MSE of one micro-batch (scalar). ``net`` is ``model`` or its DDP wrapper;
        the clean-view draw, timesteps and noise all come from ``generator`` in that order."""
        images, K, w2c = viewset_batch_tensors(batch)
        inputs = multiview_inputs(model, images.to(device), K.to(device), w2c.to(device))
        B, V = images.shape[:2]
        cfg = model.config
        clean = draw_clean_views(B, V, cfg.p_clean, cfg.max_clean, generator=generator, device=device)
        return multiview_loss(net, scheduler, inputs, clean, generator=generator)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "data": asdict(self.data)}


# ----------------------------------------------------------------------------- the stage
def _config_path(name: str) -> Path:
    p = Path(name)
    return p if p.suffix in (".yaml", ".yml") and p.exists() else REPO_ROOT / "training" / "configs" / f"{name}.yaml"


def plan_viewset_training(root: str | Path, params: dict[str, Any]) -> dict[str, Any]:
    """The ``viewset_models`` training job for the current viewset shards.

    ``params["viewset_train"]`` (:class:`pipelines.params_schema.ViewsetTrainParams`; its
    ``small_profile`` in demo/smoke) names the config, step count and overrides.

    Returns:
        ``{"run_id", "out" (run dir), "config" (YAML path), "overrides" (list[str]),
        "manifest" (Path), "dataset_version"}``.
    Raises:
        FileNotFoundError: no viewset manifest (materialize ``viewset_manifest`` first).
    """
    tp = effective_section(params, "viewset_train")
    manifest = Path(root) / "viewset_shards" / "manifest.json"
    if not manifest.exists():
        raise FileNotFoundError(f"{manifest} not found: materialize `viewset_manifest` first")
    dataset_version = json.loads(manifest.read_text())["dataset_version"]
    config = _config_path(str(tp["config"]))
    overrides = ([f"train.max_steps={int(tp['max_steps'])}"] if tp.get("max_steps") else []) + list(tp["overrides"])
    run_id = stable_hash({"code": CODE_VERSION, "dataset": dataset_version, "config": config.read_text(),
                          "overrides": overrides})
    return {"run_id": run_id, "out": Path(root) / STAGE / run_id, "config": str(config), "overrides": overrides,
            "manifest": manifest, "dataset_version": dataset_version}


def record_viewset_training(root: str | Path, plan: dict[str, Any]) -> StageReport:
    """Point ``<root>/viewset_models/latest.json`` at the finished run; the report's data
    version hashes the run id and the final EMA weights' checkpoint name."""
    from .trainer import latest_checkpoint
    ck = latest_checkpoint(plan["out"])
    info = {"run_id": plan["run_id"], "run_dir": str(plan["out"]), "checkpoint": str(ck) if ck else None,
            "manifest": str(plan["manifest"]), "dataset_version": plan["dataset_version"],
            "config": plan["config"], "overrides": plan["overrides"], "code_version": CODE_VERSION}
    write_json_atomic(Path(root) / STAGE / "latest.json", info)
    return StageReport(STAGE, plan["run_id"], stable_hash(info, 24), computed=1,
                       metadata={"run_id": plan["run_id"], "run_dir": str(plan["out"]),
                                 "dataset_version": plan["dataset_version"],
                                 "checkpoint": str(ck) if ck else ""})


def latest_viewset_model(root: str | Path) -> dict[str, Any]:
    """``<root>/viewset_models/latest.json`` (keys of :func:`record_viewset_training`).

    Raises:
        FileNotFoundError: ``viewset_models`` has not been materialized.
    """
    p = Path(root) / STAGE / "latest.json"
    if not p.exists():
        raise FileNotFoundError(f"{p} not found: materialize `viewset_models` first")
    return json.loads(p.read_text())
