"""Novel-view protocols of the multi-view model on viewset shards (issue 15; reference
``multiview-formats.md`` 6.4). Metrics are :mod:`eval.nvs_metrics`; this module decides *what*
is compared: which sequences and views, at which resolution and background, how many samples.

Profiles (:func:`profile_spec`, from :data:`eval.nvs_metrics.PROFILES` plus ``nvs_eval``
params):

* ``viewdiff_single_image`` -- 1 known + 4 target views per sequence (ViewDiff ``test.py``:
  view 0 known, 4 random frames of the same sequence), n samples; PSNR, SSIM (skimage 7x7,
  ``data_range`` 1), LPIPS-VGG; ``with_bkgd`` and ``only_fg`` (GT soft mask over white);
  mean over samples, best-of-n, metrics of the per-pixel mean sample.
* ``viewset_single_view`` -- fixed (condition, target) pairs (Viewset Diffusion draws them with
  ``randperm``; here they are drawn once per dataset version and stored), n samples; best-of-n
  PSNR / SSIM, mean LPIPS, PSNR of the mean sample.
* ``syncdreamer_ring`` -- ``fixed16@30`` ring sources only: view 0 known, all 16 ring views
  (including view 0) generated and averaged, on white; SSIM = torchmetrics Gaussian.
* ``co3d_challenge`` -- 1 known + 1 target; ``psnr_masked``, ``psnr_fg``, ``psnr_full_image``
  as ``co3d/challenge/metric_utils.py``; ``iou`` and ``depth_abs_fg`` need a predicted mask and
  depth, which the RGB model does not produce: reported as skipped with that reason.

View selections are an *eval index* (:func:`load_or_draw_index`): a JSON file named by the
profile, the shard dataset version and a hash of the selection spec, drawn once from
``(seed, key)`` and reused by every later run; its sha256 is stamped on every number.
Views come from :class:`AllViews` (ViewDiff adapter geometry: centre square crop, ViewDiff
world, K at the eval resolution), so the model must have been trained with ``data.adapter:
viewdiff`` (checked by the runner).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from eval import nvs_metrics as NM
from pipelines.config import stable_hash
from pipelines.storage import write_json_atomic
from pipelines.viewsets.ring import RING_NAME
from training.viewset_data import ViewDiffAdapter, make_viewset_dataset, view_rng

NVS_PROFILE_NAMES = ("co3d_challenge", "viewdiff_single_image", "viewset_single_view", "syncdreamer_ring")
CO3D_METRICS = ("psnr_masked", "psnr_fg", "psnr_full_image", "iou", "depth_abs_fg")
INDEX_VERSION = 1
#: ``(known_images [1,Kn,3,R,R], known_K, known_w2c, target_K [1,T,3,3], target_w2c, seed) -> [1,T,3,R,R]``
Sampler = Callable[..., torch.Tensor]


def profile_spec(name: str, nvs: dict[str, Any]) -> dict[str, Any]:
    """The fields of profile ``name`` for this run: :data:`eval.nvs_metrics.PROFILES` with
    ``nvs_eval.resolution`` / ``n_samples`` overriding when set; ``best_of`` restricted to
    ``<= n_samples`` and always containing ``n_samples``. Raises KeyError for unknown names."""
    base = dict(NM.PROFILES[name])
    s = dict(base, name=name)
    s["resolution"] = int(nvs.get("resolution") or base.get("resolution", 128))
    s["n_samples"] = int(nvs.get("n_samples") or base["n_samples"]) if name != "co3d_challenge" else 1
    s["best_of"] = sorted({b for b in base.get("best_of", (1,)) if b <= s["n_samples"]} | {s["n_samples"]})
    s.setdefault("ssim_variant", "skimage")
    s.setdefault("backgrounds", ("with_bkgd",))
    return s


class AllViews(ViewDiffAdapter):
    """Every view of a sequence with the ViewDiff adapter's geometry (centre square crop to
    ``size``, K centre convention at ``size``, ViewDiff-normalised OpenCV w2c); adds
    ``has_alpha`` (bool), ``ring`` (a full-frame ``fixed16@30`` source) and ``num_views``.
    With ``keys`` set, other sequences come back as ``{"key", "skip": True}`` undecoded."""

    def __init__(self, size: int, keys: set[str] | None = None):
        super().__init__(n_views=1, size=size)
        self.keys = keys

    def select(self, n: int, rng: np.random.Generator) -> list[int]:
        return list(range(n))

    def __call__(self, s, rng):
        ring = ((s.meta.get("source") or {}).get("ring") == RING_NAME and s.num_views == 16
                and bool(s.meta.get("full_frame")))
        if self.keys is not None and s.key not in self.keys:
            return {"key": s.key, "skip": True, "num_views": s.num_views, "ring": ring}
        out = super().__call__(s, rng)
        out.update(has_alpha="000.alpha.png" in s.raw, ring=ring, num_views=s.num_views, skip=False)
        return out


def list_sequences(manifest: str | Path, split: str) -> list[dict[str, Any]]:
    """``[{"key", "num_views", "ring"}]`` of ``split`` in key order (cameras and meta only)."""
    rows = [{k: r[k] for k in ("key", "num_views", "ring")}
            for r in make_viewset_dataset(manifest, split, AllViews(8, keys=set()))]
    return sorted(rows, key=lambda r: r["key"])


def load_sequences(manifest: str | Path, split: str, size: int, keys: set[str]) -> dict[str, dict[str, Any]]:
    """``{key: AllViews sample}`` for ``keys``: ``images`` float32 [N,3,S,S] in [0, 1],
    ``foreground_prob`` [N,1,S,S], ``K`` float64 [N,3,3], ``w2c`` [N,4,4], ``has_alpha``."""
    out = {}
    for r in make_viewset_dataset(manifest, split, AllViews(size, keys=keys)):
        if not r["skip"]:
            r["images"] = ((r["images"] + 1) / 2).clamp(0, 1)
            out[r["key"]] = r
    return out


def draw_items(name: str, seqs: list[dict[str, Any]], *, seed: int, max_sequences: int | None,
               num_pairs: int) -> list[dict[str, Any]]:
    """The view selection of profile ``name``: ``[{"key", "known": [i], "targets": [j, ...]}]``,
    each sequence's choice from ``view_rng(key, 0, seed)`` (independent of the other
    sequences and of the order). Sequences that cannot serve the profile are left out."""
    items = []
    if name == "syncdreamer_ring":
        return [{"key": s["key"], "known": [0], "targets": list(range(16))}
                for s in seqs if s["ring"]][:max_sequences]
    usable = [s for s in seqs if s["num_views"] >= 2][:max_sequences]
    if name == "viewset_single_view":
        for i in range(num_pairs if usable else 0):
            s = usable[i % len(usable)]
            c, t = view_rng(s["key"], i, seed).choice(s["num_views"], 2, replace=False)
            items.append({"key": s["key"], "known": [int(c)], "targets": [int(t)]})
        return items
    n_t = 4 if name == "viewdiff_single_image" else 1
    for s in usable:
        order = view_rng(s["key"], 0, seed).permutation(s["num_views"])
        items.append({"key": s["key"], "known": [int(order[0])],
                      "targets": [int(v) for v in order[1:1 + n_t]]})
    return items


def load_or_draw_index(index_dir: str | Path, spec: dict[str, Any], seqs: list[dict[str, Any]], *,
                       dataset_version: str, split: str, seed: int, max_sequences: int | None,
                       num_pairs: int) -> tuple[dict[str, Any], Path, bool]:
    """The stored eval index of a profile for this dataset version, drawn and written once.

    File: ``index_dir/<profile>-<dataset_version[:16]>-<selection hash>.json`` holding
    ``{"version", "profile", "dataset_version", "split", "selection": {...}, "items": [...]}``.
    An existing file is read back, never redrawn. Returns ``(index, path, created)``.
    """
    selection = {"seed": seed, "max_sequences": max_sequences, "split": split,
                 "num_pairs": num_pairs if spec["name"] == "viewset_single_view" else None}
    path = Path(index_dir) / f"{spec['name']}-{dataset_version[:16]}-{stable_hash(selection, 8)}.json"
    if path.is_file():
        return json.loads(path.read_text()), path, False
    index = {"version": INDEX_VERSION, "profile": spec["name"], "dataset_version": dataset_version, "split": split,
             "selection": selection, "items": draw_items(spec["name"], seqs, seed=seed, max_sequences=max_sequences,
                                                         num_pairs=num_pairs)}
    write_json_atomic(path, index)
    return index, path, True


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def sample_seed(seed: int, profile: str, item: int, sample: int) -> int:
    """Noise seed of one sample: sha256 of ``(seed, profile, item, sample)`` (63 bits)."""
    return int.from_bytes(hashlib.sha256(f"{seed}|{profile}|{item}|{sample}".encode()).digest()[:8], "big") >> 1


def _white(x: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
    return x if m is None else x * m + (1 - m)


@dataclass
class ProfileRun:
    """One profile's per-value arrays: ``values[background][metric]`` float64 [S, N] over the N
    target views of all items (or :data:`eval.nvs_metrics.SKIPPED` + reason in ``skipped``);
    ``mean_sample`` the same as [1, N]; ``views`` one row per target view (key, item, view);
    ``strip`` uint8 [3, H, W] (condition | samples | ground truth) of the first item."""
    spec: dict[str, Any]
    values: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    mean_sample: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    views: list[dict[str, Any]] = field(default_factory=list)
    strip: torch.Tensor | None = None
    notes: list[str] = field(default_factory=list)


def strip_image(cond: torch.Tensor, samples: torch.Tensor, gt: torch.Tensor, max_rows: int = 4,
                max_samples: int = 4) -> torch.Tensor:
    """uint8 [3, rows*R, (2 + k)*R]: per target row the condition view, ``k`` samples and the
    ground truth. cond [3,R,R]; samples [S,T,3,R,R]; gt [T,3,R,R]; all in [0, 1]."""
    rows = []
    for t in range(min(max_rows, gt.shape[0])):
        rows.append(torch.cat([cond, *samples[:max_samples, t], gt[t]], dim=2))
    return (torch.cat(rows, dim=1).clamp(0, 1) * 255).round().to(torch.uint8)


def run_profile(spec: dict[str, Any], index: dict[str, Any], sequences: dict[str, dict[str, Any]],
                sampler: Sampler, *, seed: int, lpips: NM.LpipsHook | None) -> ProfileRun:
    """Sample every item of ``index`` ``spec["n_samples"]`` times and measure the profile's
    metrics (module docstring). Backgrounds needing a mask are skipped (with the reason) when
    a source has no alpha; ``syncdreamer_ring`` composites GT and condition on white."""
    run = ProfileRun(spec)
    name, S = spec["name"], spec["n_samples"]
    bgs = {"co3d_challenge": ["co3d"], "syncdreamer_ring": ["white"]}.get(name, list(spec["backgrounds"]))
    acc: dict[str, dict[str, list[torch.Tensor]]] = {b: {} for b in bgs}
    accm: dict[str, dict[str, list[torch.Tensor]]] = {b: {} for b in bgs}
    for i, item in enumerate(index["items"]):
        seq = sequences[item["key"]]
        kn, tg = item["known"], item["targets"]
        mask = seq["foreground_prob"] if seq["has_alpha"] else None
        imgs = seq["images"]
        if name == "syncdreamer_ring":
            imgs = _white(imgs, mask)
            if mask is None and "ring source without alpha: views used as stored" not in run.notes:
                run.notes.append("ring source without alpha: views used as stored")
        K = torch.as_tensor(seq["K"], dtype=torch.float32)
        w2c = torch.as_tensor(seq["w2c"], dtype=torch.float32)
        samples = torch.stack([sampler(imgs[kn][None], K[kn][None], w2c[kn][None], K[tg][None], w2c[tg][None],
                                       sample_seed(seed, name, i, s))[0].float().cpu() for s in range(S)])
        gt, m = imgs[tg], (mask[tg] if mask is not None else None)
        if run.strip is None:
            run.strip = strip_image(imgs[kn[0]], samples, gt)
        run.views += [{"item": i, "key": item["key"], "known": kn[0], "view": v} for v in tg]
        for bg in bgs:
            if name == "co3d_challenge":
                vals = _co3d_values(samples, gt, m)
                mvals = _co3d_values(samples.mean(0, keepdim=True), gt, m)
            elif bg == "only_fg" and m is None:
                run.skipped[bg] = "only_fg needs the GT soft mask; the source has no alpha"
                continue
            else:   # "white" (ring): GT and condition already composited on white, predictions as generated
                mode = "only_fg" if bg == "only_fg" else "with_bkgd"
                per = [NM.image_metrics(*NM.apply_background(x, gt, m, mode), ssim_variant=spec["ssim_variant"],
                                        lpips=lpips) for x in samples]
                avg = NM.image_metrics(*NM.apply_background(NM.mean_sample(samples), gt, m, mode),
                                       ssim_variant=spec["ssim_variant"], lpips=lpips)
                vals = {k: (torch.stack([p[k] for p in per]) if not isinstance(per[0][k], str) else NM.SKIPPED)
                        for k in NM.HIGHER_IS_BETTER}
                mvals = {k: (v[None] if not isinstance(v, str) else NM.SKIPPED) for k, v in avg.items()}
            for k, v in vals.items():
                acc[bg].setdefault(k, []).append(v)
                accm[bg].setdefault(k, []).append(mvals[k])
    for bg in bgs:
        if bg in run.skipped:
            continue
        run.values[bg], run.mean_sample[bg] = {}, {}
        for k, parts in acc[bg].items():
            if any(isinstance(p, str) for p in parts):
                run.skipped[f"{bg}/{k}"] = (lpips.note if k == "lpips" and lpips is not None else
                                            _CO3D_SKIP if k in ("iou", "depth_abs_fg") else "not computed")
                continue
            run.values[bg][k] = torch.cat(parts, dim=1)
            run.mean_sample[bg][k] = torch.cat(accm[bg][k], dim=1)
    return run


_CO3D_SKIP = "needs a predicted foreground mask and depth; the multi-view model predicts RGB only"


def _co3d_values(samples: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor | None) -> dict[str, Any]:
    """CO3D challenge PSNRs [S, T] (:func:`eval.nvs_metrics.co3d_psnr`, GT mask > 0.5 on black);
    ``iou`` / ``depth_abs_fg`` skipped. Without a mask only ``psnr_full_image`` is computed."""
    out: dict[str, Any] = {k: NM.SKIPPED for k in CO3D_METRICS}
    full, masked, fg = [], [], []
    for x in samples:
        full.append([NM.co3d_psnr(p.numpy(), g.numpy()) for p, g in zip(x, gt)])
        if mask is not None:
            gm = (mask > 0.5).double()
            masked.append([NM.co3d_psnr(p.numpy(), (g * b).numpy()) for p, g, b in zip(x, gt, gm)])
            fg.append([NM.co3d_psnr(p.numpy(), (g * b).numpy(), b.numpy()) for p, g, b in zip(x, gt, gm)])
    out["psnr_full_image"] = torch.tensor(full, dtype=torch.float64)
    if mask is not None:
        out["psnr_masked"], out["psnr_fg"] = (torch.tensor(v, dtype=torch.float64) for v in (masked, fg))
    return out


HIGHER = {**NM.HIGHER_IS_BETTER, **{k: k != "depth_abs_fg" for k in CO3D_METRICS}}


def summarize_run(run: ProfileRun) -> dict[str, dict[str, dict[str, Any]]]:
    """``{background: {metric: {"samples": summarize([S, N]), "mean_sample": summarize([1, N])}}}``
    (:func:`eval.nvs_metrics.summarize`: inf recorded, counted and excluded)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for bg, metrics in run.values.items():
        out[bg] = {k: {"samples": NM.summarize(v, HIGHER[k], run.spec["best_of"]),
                       "mean_sample": NM.summarize(run.mean_sample[bg][k], HIGHER[k])}
                   for k, v in metrics.items()}
    return out


def finite(x: float) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None
