"""Evaluation runner (called by the Dagster ``eval_reports`` asset) and CLI.

Usage::

    python -m eval.run --models-dir data/models --manifest data/shards/manifest.json \
        --out data/eval_reports [--params params.yaml] [--profile smoke] [--set eval.num_samples=500]

:func:`run_eval_reports` loads the trained models (``<models_dir>/<eval.first_view_model>``
and ``<eval.novel_view_model>``: a run, checkpoint or model directory), the feature
extractors (:mod:`eval.extractors`, weights policy of :mod:`pipelines.models`), runs the
protocols of ``eval.protocols`` (:mod:`eval.protocols`) on split ``eval.split`` of the
shard set and writes the report (:mod:`eval.report`). Real-image features are cached under
``<root>/cache/eval_real_stats``. In profiles ``demo``/``smoke`` the counts of
``eval.small_profile`` cap the run (a few samples, few DDIM steps).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from eval import extractors as X
from eval import metrics as M
from eval import protocols as P
from eval.report import write_report
from pipelines.config import load_params, stable_hash
from pipelines.models import RANDOM_OK_PROFILES, RANDOM_WEIGHTS, pick_device
from pipelines.params_schema import EVAL_PROTOCOLS, effective_section
from pipelines.stages.common import StageReport

log = logging.getLogger("viewforge")
CODE_VERSION = "eval/1"
ALL_PROTOCOLS = EVAL_PROTOCOLS


def eval_params(params: dict[str, Any], profile: str) -> dict[str, Any]:
    """``params["eval"]`` validated and completed with the schema defaults
    (:class:`pipelines.params_schema.EvalParams`); in profiles demo/smoke each count is capped
    by ``small_profile`` (non-numeric entries, e.g. ``split``, replace the value).
    Raises :class:`~pipelines.params_schema.ParamsError` (a ValueError) naming the parameter,
    e.g. ``eval.protocols`` for an unknown protocol."""
    return effective_section({"eval": params.get("eval") or {}, "profile": profile}, "eval")


def checkpoint_hash(model_dir: Path) -> str:
    """sha256 (16 hex) over the files of a model directory (names and bytes, sorted)."""
    h = hashlib.sha256()
    for f in sorted(q for q in model_dir.rglob("*") if q.is_file()):
        h.update(f.relative_to(model_dir).as_posix().encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def _load(models_dir: Path, name: str, weights: str, device: torch.device):
    from training.models import load_model
    from training.sample import resolve_model_dir
    path = models_dir / name
    try:
        d = resolve_model_dir(path, weights)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}. Train it (trained_models) or set eval.first_view_model / "
                                "eval.novel_view_model / eval.protocols") from e
    model = load_model(d).to(device).eval()
    return model, {"model": str(d.relative_to(models_dir) if d.is_relative_to(models_dir) else d),
                   "model_hash": checkpoint_hash(d)}


def _labels(model, n: int, seed: int) -> torch.Tensor | None:
    """Uniform class/pose ids for a class-conditional model (seeded), else None."""
    if not model.config.has_classes:
        return None
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.num_classes, (n,), generator=g)


def _real_batches(manifest: Path, split: str, batch_size: int) -> Iterator[torch.Tensor]:
    """Targets of ``split``, one per source image (first pair of each ``meta.sample_key``)."""
    from training.data import make_dataset
    seen: set[str] = set()
    for b in make_dataset(manifest, split, batch_size=batch_size):
        idx = []
        for i, (k, meta) in enumerate(zip(b["key"], b["meta"])):
            sk = (meta or {}).get("sample_key", k)
            if sk not in seen:
                seen.add(sk)
                idx.append(i)
        if idx:
            yield b["target"][idx]


def run_eval_reports(root: str | Path, params: dict[str, Any], *, models_dir: str | Path, manifest: str | Path,
                     out_dir: str | Path, profile: str | None = None, device: str | None = None,
                     extractors: dict[str, X.FeatureExtractor | None] | None = None) -> StageReport:
    """Run the configured protocols and write the report into ``out_dir``.

    Args:
        root: data root (real-image feature cache under ``root/cache/eval_real_stats``).
        params: the full params dict (sections ``eval``, ``features``, ``warp``, ``profile``).
        models_dir: directory holding the first-view and novel-view model directories.
        manifest: shard ``manifest.json`` (or its directory); its ``dataset_version`` is
            stamped on every number.
        out_dir: report directory (files: :mod:`eval.report`).
        profile: default | demo | smoke (default: ``params["profile"]``).
        device: torch device (default: CUDA when available).
        extractors: pre-built ``{"inception": ..., "dinov2": ...}`` (tests, callers that hold
            the networks); missing entries are loaded from params.

    Returns:
        :class:`~pipelines.stages.common.StageReport`: ``metadata`` holds the flat metrics,
        ``report_dir``, ``report_html``, ``report_markdown`` (tables, no images), ``weights``
        (``RANDOM_WEIGHTS`` when any network is random); ``previews`` the grids and plots.

    Raises:
        FileNotFoundError: manifest or a needed model is missing.
        pipelines.models.WeightsUnavailableError: Inception / DINOv2 weights unavailable
            outside demo/smoke (message names ``eval.feature_extractor_weights_path`` or
            ``features.local_path``).
        ValueError: bad parameters, too few real images or pairs.
    """
    from pipelines.shard_manifest import read_manifest
    from training.sampling import ddim_sample, sample_viewset
    from training.models import from_model_range, to_model_range
    from training.diffusion import class_labels_from_batch

    t0 = time.perf_counter()
    profile = profile or params.get("profile", "default")
    p = eval_params(params, profile)
    dev = pick_device(device)
    man, _ = read_manifest(manifest)
    manifest = Path(manifest)
    dataset_version, split = str(man["dataset_version"]), p["split"]
    if split not in man["splits"]:
        raise ValueError(f"eval.split {split!r} not in the manifest's splits {sorted(man['splits'])}")
    protos = list(p["protocols"])
    models_dir = Path(models_dir)
    first = novel = None
    if {"generation", "view_sweep"} & set(protos):
        first, first_info = _load(models_dir, p["first_view_model"], p["weights"], dev)
    if {"novel_view", "view_sweep"} & set(protos):
        novel, novel_info = _load(models_dir, p["novel_view_model"], p["weights"], dev)
    ex = dict(extractors or {})
    if "inception" not in ex and {"generation", "view_sweep"} & set(protos):
        ex["inception"] = X.load_inception(p["feature_extractor_weights_path"], profile=profile, device=dev)
    if "dinov2" not in ex and p["fd_dinov2"] and "generation" in protos:
        f = params.get("features") or {}
        name = p["dinov2_model"] or f.get("model", "vit_small_patch14_dinov2.lvd142m")
        local = p["dinov2_local_path"] if p["dinov2_model"] else (p["dinov2_local_path"] or f.get("local_path"))
        ex["dinov2"] = X.load_dinov2_extractor(name, local, profile=profile, image_size=p["dinov2_image_size"],
                                               device=dev)
    real = P.RealImages(dataset_version, split, lambda: _real_batches(manifest, split, p["batch_size"]),
                        p["max_real"], Path(root) / "cache" / "eval_real_stats")
    steps, g = int(p["ddim_steps"]), float(p["guidance_scale"])
    sampler = {"sampler": f"DDIM {steps} steps, eta 0", "guidance_scale": g}
    fov = float((params.get("warp") or {}).get("fov_deg", 45.0))
    results, notes = [], []

    def sample_first(n: int, seed: int) -> torch.Tensor:
        return from_model_range(ddim_sample(first, batch_size=n, steps=steps, guidance_scale=g,
                                            class_labels=_labels(first, n, seed), generator=seed))

    def complete(batch: dict[str, Any], seed: int) -> torch.Tensor:
        h, w = batch["target"].shape[-2:]
        cond = {"cond_rgb": to_model_range(batch["cond"]), "cond_depth": to_model_range(batch["cond_depth"]),
                "mask": (batch["mask"] > 0.5).float(), "mask_rgb": (batch["mask_rgb"] > 0.5).float()}
        labels = class_labels_from_batch(batch, novel.config.class_cond, novel.config.num_classes, dev)
        return from_model_range(ddim_sample(novel, batch_size=len(batch["key"]), height=h, width=w, steps=steps,
                                            guidance_scale=g, class_labels=labels, cond=cond, generator=seed))

    def viewsets(n: int, cams: list[tuple[float, float]], seed: int) -> torch.Tensor:
        return sample_viewset(first, novel, batch_size=n, cameras=cams, steps_first=steps, steps_novel=steps,
                              guidance_scale=g, class_labels=_labels(first, n, seed), fov_deg=fov,
                              generator=seed).rgb

    if "generation" in protos:
        results.append(P.generation(sample_first, real, inception=ex["inception"], dinov2=ex.get("dinov2"),
                                    num_samples=int(p["num_samples"]), resolution=int(p["resolution"]),
                                    batch_size=int(p["batch_size"]), seed=int(p["seed"]),
                                    kid_subsets=int(p["kid_subsets"]), kid_subset_size=int(p["kid_subset_size"]),
                                    model_info={**first_info, **sampler}))
    if "novel_view" in protos:
        from training.data import make_dataset, resize_batch
        lp, note = M.load_lpips(p["lpips_net"], p["lpips_weights_path"], device=dev)
        pairs = (resize_batch(b, int(p["resolution"])) for b in
                 make_dataset(manifest, split, batch_size=int(p["batch_size"])))
        results.append(P.novel_view(complete, pairs,
                                    dataset_version=dataset_version, split=split, max_pairs=p["num_pairs"],
                                    lpips=lp, lpips_note=note, seed=int(p["seed"]),
                                    model_info={**novel_info, **sampler}))
    if "view_sweep" in protos:
        results.append(P.view_sweep(viewsets, real, inception=ex["inception"], num_viewsets=int(p["sweep_viewsets"]),
                                    resolution=int(p["resolution"]), batch_size=int(p["sweep_batch_size"]),
                                    yaws=tuple(p["sweep_yaws"] or P.IVID_YAWS),
                                    pitches=tuple(p["sweep_pitches"] or P.IVID_PITCHES),
                                    seed=int(p["seed"]), model_info={
                                        "model": f"{first_info['model']} + {novel_info['model']}",
                                        "model_hash": f"{first_info['model_hash']}+{novel_info['model_hash']}",
                                        **sampler, "fov_deg": fov}))
    if ex.get("dinov2") is not None and "vit_large" not in ex["dinov2"].name:
        notes.append("FD-DINOv2 uses the pipeline's DINOv2 backbone; Stein et al. (2023) use ViT-L/14 "
                     "(vit_large_patch14_dinov2.lvd142m), so only that backbone gives comparable values.")
    if profile in RANDOM_OK_PROFILES:
        notes.append(f"profile {profile!r}: counts capped by eval.small_profile ({p['small_profile']}).")
    header = {"dataset_version": dataset_version, "split": split, "profile": profile, "resolution": p["resolution"],
              "models_dir": str(models_dir), "params_hash": stable_hash(p), "code_version": CODE_VERSION,
              **{f"extractor_{k}": f"{v.name} ({v.origin})" for k, v in ex.items() if v is not None},
              **({"weights": RANDOM_WEIGHTS} if any(v is not None and v.is_random for v in ex.values()) else {})}
    out = write_report(results, out_dir, header=header, notes=notes)
    md = {**out["metrics"], "report_dir": str(Path(out_dir)), "report_html": str(out["paths"]["report.html"]),
          "report_markdown": out["markdown"], "dataset_version": dataset_version, "protocols": protos}
    if out["random"]:
        md["weights"] = RANDOM_WEIGHTS
    data_version = stable_hash({"metrics": out["metrics"], "header": header,
                                "models": [r.info.get("model_hash") for r in results]}, 24)
    return StageReport("eval_reports", stable_hash({"code": CODE_VERSION, "eval": p}), data_version,
                       computed=len(results), seconds=time.perf_counter() - t0, metadata=md,
                       previews=dict(out["images"]))


def main(argv: list[str] | None = None) -> int:
    """CLI: see the module docstring. Prints the flat metrics as JSON."""
    ap = argparse.ArgumentParser(prog="python -m eval.run", description=__doc__.split("\n")[0])
    ap.add_argument("--models-dir", required=True)
    ap.add_argument("--manifest", required=True, help="shard manifest.json or its directory")
    ap.add_argument("--out", required=True, help="report directory")
    ap.add_argument("--params", default=None, help="params.yaml (default: $VIEWFORGE_PARAMS or ./params.yaml)")
    ap.add_argument("--root", default=None, help="data root (default: $VIEWFORGE_DATA or data/)")
    ap.add_argument("--profile", default=None, help="default | demo | smoke (default: params profile)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a parameter, e.g. eval.num_samples=500 (YAML value)")
    a = ap.parse_args(argv)
    from training.train import apply_overrides
    from pipelines.config import data_root
    params = load_params(a.params)
    params = apply_overrides(params, a.set)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    rep = run_eval_reports(a.root or data_root(), params, models_dir=a.models_dir, manifest=a.manifest,
                           out_dir=a.out, profile=a.profile, device=a.device)
    print(json.dumps({k: v for k, v in rep.metadata.items() if isinstance(v, (int, float))}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
