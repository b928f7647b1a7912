"""Sampling CLI: first views, IVID autoregressive viewsets, MIRAGE pose sets.

Usage::

    python -m training.sample --model runs/tiny-first_view --out samples/first [key=value ...]
    python -m training.sample --model runs/fv --novel-model runs/nv --out samples/vs mode=viewset steps=50
    python -m training.sample --model runs/mirage --out samples/poses mode=poses poses=[0,3,5] guidance=4

``--model``/``--novel-model`` accept a run directory (its latest checkpoint), a checkpoint
directory (``ema/`` unless ``weights=model``) or a model directory
(``viewforge_model.json`` + diffusers files). Options (:class:`SampleConfig`) are
``key=value`` overrides, YAML-parsed, optionally from ``--config`` (a YAML mapping).

Writes ``out/samples.npz`` (``rgb`` uint8 [N, V, H, W, 3], ``depth`` float32 z-buffer
value [N, V, H, W] in [0, 1], ``cameras`` [V, 2] yaw/pitch radians, ``w2c`` [V, 4, 4]
OpenCV, ``K`` [3, 3]; viewsets also ``mask``/``mask_rgb`` [N, V, H, W]) and PNG grids
``out/rgb_{i:04d}.png`` / ``out/depth_{i:04d}.png`` (one row of views per scene; depth
shown near = bright) and ``out/summary.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import yaml
from PIL import Image

from .diffusion import DiffusionConfig
from .models import RGBDDiffusionModel, load_model
from .sampling import IVID_PITCHES, IVID_YAWS, ddim_sample, ivid_grid, sample_poses, sample_viewset
from .train import apply_overrides
from .trainer import latest_checkpoint


@dataclass
class SampleConfig:
    """Sampling options (CLI ``key=value``)."""
    mode: str = "first"            # first | viewset | poses
    num: int = 4                   # scenes / objects
    batch_size: int = 4
    steps: int = 50                # DDIM steps (first view; also novel views unless steps_novel)
    steps_novel: int | None = None
    guidance: float = 1.0          # CFG scale g (IVID strength s = g - 1)
    classes: list[int] | None = None   # class/pose id per scene (cycled); None = null class
    poses: list[int] = field(default_factory=lambda: [0, 1, 2])   # mode=poses
    cross_frame: bool = True       # mode=poses
    yaws: list[float] | None = None    # mode=viewset; default IVID 3x9 grid
    pitches: list[float] | None = None
    fov: float = 45.0
    near: float = 0.6
    far: float = 5.0
    height: int | None = None
    width: int | None = None
    seed: int = 0
    weights: str = "ema"           # ema | model
    device: str = "auto"           # auto | cpu | cuda[:i]


def resolve_model_dir(path: str | os.PathLike, weights: str = "ema") -> Path:
    """Model directory for a run dir, checkpoint dir or model dir. Raises FileNotFoundError."""
    p = Path(path)
    if (p / "viewforge_model.json").is_file():
        return p
    ck = latest_checkpoint(p)
    if ck is not None:
        p = ck
    if (p / weights / "viewforge_model.json").is_file():
        return p / weights
    raise FileNotFoundError(f"{path}: no viewforge model, checkpoint or run directory")


def _labels(cfg: SampleConfig, start: int, n: int) -> torch.Tensor | None:
    if not cfg.classes:
        return None
    return torch.tensor([cfg.classes[(start + i) % len(cfg.classes)] for i in range(n)])


def _save_grid(rows: np.ndarray, path: Path) -> None:
    """rows: [V, H, W, C] uint8 -> one PNG row."""
    Image.fromarray(np.concatenate(list(rows), axis=1).squeeze()).save(path)


def run_sampling(model_dir: str, out: str | os.PathLike, cfg: SampleConfig,
                 novel_dir: str | None = None) -> dict[str, Any]:
    """Sample per ``cfg`` and write outputs (module docstring). Returns a summary dict."""
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    model = load_model(resolve_model_dir(model_dir, cfg.weights)).to(device)
    dcfg_path = resolve_model_dir(model_dir, cfg.weights).parent / "state.json"
    dcfg = (DiffusionConfig.from_dict(json.loads(dcfg_path.read_text())["diffusion"])
            if dcfg_path.is_file() else DiffusionConfig())
    novel: RGBDDiffusionModel | None = None
    if cfg.mode == "viewset":
        if novel_dir is None:
            raise ValueError("mode=viewset needs --novel-model")
        novel = load_model(resolve_model_dir(novel_dir, cfg.weights)).to(device)
    elif cfg.mode not in ("first", "poses"):
        raise ValueError(f"mode must be first|viewset|poses, got {cfg.mode!r}")
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    cams = ivid_grid(cfg.yaws or IVID_YAWS, cfg.pitches or IVID_PITCHES)
    rgb, depth, masks = [], [], []
    for start in range(0, cfg.num, cfg.batch_size):
        n = min(cfg.batch_size, cfg.num - start)
        labels = _labels(cfg, start, n)
        if cfg.mode == "first":
            x = (ddim_sample(model, batch_size=n, height=cfg.height, width=cfg.width, steps=cfg.steps,
                             guidance_scale=cfg.guidance, class_labels=labels, diffusion_cfg=dcfg,
                             generator=gen)[:, None] + 1) / 2
            rgb.append(x[:, :, :3]), depth.append(x[:, :, 3:])
        elif cfg.mode == "poses":
            x = sample_poses(model, cfg.poses, num_objects=n, steps=cfg.steps, guidance_scale=cfg.guidance,
                             height=cfg.height, width=cfg.width, cross_frame=cfg.cross_frame,
                             diffusion_cfg=dcfg, generator=gen)
            rgb.append(x[:, :, :3]), depth.append(x[:, :, 3:])
        else:
            vs = sample_viewset(model, novel, batch_size=n, cameras=cams, height=cfg.height, width=cfg.width,
                                steps_first=cfg.steps, steps_novel=cfg.steps_novel or cfg.steps,
                                guidance_scale=cfg.guidance, class_labels=labels, fov_deg=cfg.fov,
                                near=cfg.near, far=cfg.far, diffusion_cfg=dcfg, generator=gen)
            rgb.append(vs.rgb), depth.append(vs.depth), masks.append(torch.cat([vs.mask, vs.mask_rgb], 2))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rgb_u8 = (torch.cat(rgb).permute(0, 1, 3, 4, 2).cpu().numpy() * 255).round().astype(np.uint8)
    dep = torch.cat(depth)[:, :, 0].cpu().numpy().astype(np.float32)
    arrays: dict[str, Any] = {"rgb": rgb_u8, "depth": dep}
    if cfg.mode == "viewset":
        from pipelines.camera import intrinsics_from_fov, novel_camera
        m = torch.cat(masks).cpu().numpy()
        h, w = rgb_u8.shape[2:4]
        arrays.update(mask=m[:, :, 0] > 0.5, mask_rgb=m[:, :, 1] > 0.5, cameras=np.array(cams),
                      w2c=np.stack([novel_camera(*c).w2c_novel for c in cams]), K=intrinsics_from_fov(cfg.fov, h, w))
    np.savez_compressed(out / "samples.npz", **arrays)
    for i in range(rgb_u8.shape[0]):
        _save_grid(rgb_u8[i], out / f"rgb_{i:04d}.png")
        _save_grid(((1 - dep[i]) * 255).round().astype(np.uint8)[..., None], out / f"depth_{i:04d}.png")
    summary = {"out": str(out), "mode": cfg.mode, "num": int(rgb_u8.shape[0]), "views": int(rgb_u8.shape[1]),
               "config": asdict(cfg)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m training.sample", description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="first-view (or pose) model: run, checkpoint or model dir")
    ap.add_argument("--novel-model", default=None, help="novel-view model for mode=viewset")
    ap.add_argument("--out", required=True)
    ap.add_argument("--config", default=None, help="YAML mapping of SampleConfig fields")
    ap.add_argument("overrides", nargs="*", help="key=value, e.g. mode=viewset steps=25 guidance=4")
    args = ap.parse_args(argv)
    raw = yaml.safe_load(Path(args.config).read_text()) if args.config else {}
    raw = apply_overrides(raw or {}, args.overrides)
    unknown = set(raw) - {f.name for f in fields(SampleConfig)}
    if unknown:
        raise SystemExit(f"unknown sampling options: {sorted(unknown)}")
    summary = run_sampling(args.model, args.out, SampleConfig(**raw), args.novel_model)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
