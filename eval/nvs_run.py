"""Runner of the ``nvs_reports`` asset (and CLI): the multi-view model on the viewset shards
under the named profiles of :mod:`eval.nvs_protocols`, report by :mod:`eval.nvs_report`.

Usage::

    python -m eval.nvs_run --model data/viewset_models/<run_id> --manifest data/viewset_shards/manifest.json \\
        --out data/nvs_reports [--profile smoke] [--set nvs_eval.n_samples=4]

Every number carries its provenance: profile, background, SSIM variant, resolution, number
of samples, shard dataset version and split, the eval index file and its sha256, the model
checkpoint and its hash, the sampler, and the LPIPS source (or the reason it was skipped).
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from eval import nvs_metrics as NM
from eval import nvs_protocols as P
from eval.nvs_report import write_nvs_report
from pipelines.config import load_params, stable_hash
from pipelines.models import pick_device
from pipelines.params_schema import effective_section
from pipelines.stages.common import StageReport
from pipelines.versions import NVS_EVAL as CODE_VERSION

log = logging.getLogger("viewforge")


def resolve_checkpoint(path: str | Path, weights: str = "ema") -> tuple[Path, dict[str, Any]]:
    """A run dir (its latest checkpoint), a checkpoint dir or a model dir -> (model dir with
    ``weights`` (``ema`` | ``model``), the checkpoint's ``state.json`` or ``{}``).
    Raises FileNotFoundError when nothing loadable is there."""
    from training.multiview import MV_MODEL_JSON
    from training.trainer import latest_checkpoint
    p = Path(path)
    ck = latest_checkpoint(p) or p
    if (ck / weights / MV_MODEL_JSON).is_file():
        return ck / weights, json.loads((ck / "state.json").read_text()) if (ck / "state.json").is_file() else {}
    if (p / MV_MODEL_JSON).is_file():
        return p, {}
    raise FileNotFoundError(f"{path}: no multi-view model (run dir, checkpoint or model dir); "
                            "materialize `viewset_models` first")


def _stat_records(summary: dict[str, Any], spec: dict[str, Any], prov: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for bg, metrics in summary.items():
        for metric, s in metrics.items():
            hib = P.HIGHER[metric]
            smp, ms = s["samples"], s["mean_sample"]
            stats = [("mean", smp["mean"], smp["count"], smp["n_inf"])]
            cols = ms["count"] + ms["n_inf"] + ms["n_nan"]          # items (views) behind a best-of-n mean
            stats += [(f"best_of_{n}", v, cols - smp["best_of_n_inf"][n], smp["best_of_n_inf"][n])
                      for n, v in smp["best_of"].items()]
            stats.append(("mean_sample", ms["mean"], ms["count"], ms["n_inf"]))
            for stat, v, count, n_inf in stats:
                out.append({"key": f"{spec['name']}.{bg}.{metric}.{stat}", "profile": spec["name"], "background": bg,
                            "metric": metric, "statistic": stat, "value": P.finite(v), "higher_is_better": hib,
                            "n_values": smp["count"] if count is None else count, "n_inf": n_inf, **prov})
    return out


def _tables(run: P.ProfileRun) -> dict[str, list[dict[str, Any]]]:
    """Per-view rows (mean over samples, best of all samples, mean sample) of the first
    background, and per-sequence means of those rows."""
    if not run.values:
        return {}
    bg = next(iter(run.values))
    per_view = []
    for j, v in enumerate(run.views):
        row = {**v, "background": bg}
        for k, vals in run.values[bg].items():
            col = vals[:, j]
            fin = col[torch.isfinite(col)]
            best = (col.max() if P.HIGHER[k] else col.min()).item()
            row[f"{k}_mean"] = fin.mean().item() if len(fin) else None
            row[f"{k}_best"] = best if torch.isfinite(torch.tensor(best)) else None
            row[f"{k}_mean_sample"] = P.finite(run.mean_sample[bg][k][0, j].item())
        per_view.append(row)
    per_seq: dict[str, dict[str, Any]] = {}
    for row in per_view:
        acc = per_seq.setdefault(row["key"], {"key": row["key"], "views": 0, "_sums": {}, "_n": {}})
        acc["views"] += 1
        for k, v in row.items():
            if k.endswith(("_mean", "_best", "_mean_sample")) and v is not None:
                acc["_sums"][k] = acc["_sums"].get(k, 0.0) + v
                acc["_n"][k] = acc["_n"].get(k, 0) + 1
    seq_rows = []
    cols = [k for k in per_view[0] if k.endswith(("_mean", "_best", "_mean_sample"))]
    for acc in per_seq.values():
        seq_rows.append({"key": acc["key"], "views": acc["views"], "background": bg,
                         **{k: (acc["_sums"][k] / acc["_n"][k] if acc["_n"].get(k) else None) for k in cols}})
    return {"per_view": per_view, "per_sequence": seq_rows}


def run_nvs_reports(root: str | Path, params: dict[str, Any], *, model: str | Path, manifest: str | Path,
                    out_dir: str | Path, profile: str | None = None, device: str | None = None,
                    lpips: NM.LpipsHook | None = None) -> StageReport:
    """Evaluate the multi-view model under ``nvs_eval.profiles`` and write the report.

    Args:
        root: data root (unused beyond provenance; the eval index lives in ``out_dir``).
        params: full params (``nvs_eval``, ``profile``); demo/smoke apply ``small_profile``.
        model: ``viewset_models`` run dir, checkpoint or model dir.
        manifest: viewset ``manifest.json`` (its ``dataset_version`` stamps every number).
        out_dir: report directory (:mod:`eval.nvs_report` layout).
        lpips: a pre-built hook (tests); default :func:`eval.nvs_metrics.lpips_hook` of
            ``nvs_eval.lpips_weights_path`` (VGG), skipped without it.
    Returns: StageReport (metadata: flat finite metrics, report paths, Markdown; previews: strips).
    Raises:
        FileNotFoundError: no model / manifest. ValueError: split not in the manifest, a model
        trained on another adapter's world, or a resolution the UNet cannot take.
    """
    from pipelines.shard_manifest import read_manifest
    from training.diffusion import DiffusionConfig
    from training.multiview import load_multiview_model
    from training.multiview_sampling import sample_multiview
    from eval.run import checkpoint_hash

    t0 = time.perf_counter()
    profile = profile or params.get("profile", "default")
    nvs = effective_section({"nvs_eval": params.get("nvs_eval") or {}, "profile": profile}, "nvs_eval")
    man, _ = read_manifest(manifest)
    dataset_version, split = str(man["dataset_version"]), nvs["split"]
    if split not in man["splits"]:
        raise ValueError(f"nvs_eval.split {split!r} not in the manifest's splits {sorted(man['splits'])}")
    mdir, state = resolve_checkpoint(model, nvs["weights"])
    adapter = ((state.get("task") or {}).get("data") or {}).get("adapter", "viewdiff")
    if adapter != "viewdiff":
        raise ValueError(f"model trained with data.adapter={adapter!r}; the NVS protocols pose views in the "
                         "ViewDiff world (train with data.adapter=viewdiff)")
    dev = pick_device(device)
    net = load_multiview_model(mdir).to(dev).eval()
    dcfg = DiffusionConfig.from_dict(state["diffusion"]) if state.get("diffusion") else DiffusionConfig()
    steps = int(nvs["ddim_steps"])

    def sampler(kimg, kK, kw, tK, tw, seed):
        return sample_multiview(net, known_images=kimg.to(dev), known_K=kK.to(dev), known_w2c=kw.to(dev),
                                target_K=tK.to(dev), target_w2c=tw.to(dev), steps=steps, diffusion_cfg=dcfg,
                                generator=seed)

    lp = lpips or NM.lpips_hook(nvs["lpips_weights_path"], "vgg", dev)
    model_info = {"model": str(mdir), "model_hash": checkpoint_hash(mdir), "sampler": f"DDIM {steps} steps, eta 0"}
    out = Path(out_dir)
    seqs = P.list_sequences(manifest, split)
    records, skipped, tables, strips, notes = [], [], {}, {}, []
    if not lp.available:
        notes.append(lp.note)
    for name in nvs["profiles"]:
        spec = P.profile_spec(name, nvs)
        if spec["resolution"] % net.config.downscale:
            raise ValueError(f"{name}: resolution {spec['resolution']} not divisible by {net.config.downscale}")
        index, ipath, created = P.load_or_draw_index(out / "eval_index", spec, seqs, dataset_version=dataset_version,
                                                     split=split, seed=int(nvs["seed"]),
                                                     max_sequences=nvs["max_sequences"], num_pairs=int(nvs["num_pairs"]))
        prov = {"profile": name, "ssim_variant": spec.get("ssim_variant") if name != "co3d_challenge" else "-",
                "resolution": spec["resolution"], "n_samples": spec["n_samples"], "dataset_version": dataset_version,
                "split": split, "eval_index": str(ipath.relative_to(out)), "eval_index_sha256": P.file_sha256(ipath),
                "source": spec.get("source", ""), **model_info,
                "lpips": f"lpips-vgg {lp.note}" if lp.available else lp.note}
        if not index["items"]:
            reason = ("no full-frame fixed16@30 ring sequence in the split" if name == "syncdreamer_ring"
                      else "no sequence with >= 2 views in the split")
            skipped.append({**prov, "reason": reason})
            continue
        seq = P.load_sequences(manifest, split, spec["resolution"], {it["key"] for it in index["items"]})
        run = P.run_profile(spec, index, seq, sampler, seed=int(nvs["seed"]), lpips=lp)
        records += _stat_records(P.summarize_run(run), spec, prov)
        skipped += [{**prov, "background": k.split("/")[0], "metric": k.split("/")[1] if "/" in k else "-",
                     "reason": r} for k, r in run.skipped.items()]
        tables[name], strips[name] = _tables(run), run.strip
        notes += [f"{name}: {n}" for n in run.notes]
        notes.append(f"{name}: {len(index['items'])} items from {ipath.name} ({'drawn now' if created else 'stored'})")
    header = {"dataset_version": dataset_version, "split": split, "profile": profile, **model_info,
              "params_hash": stable_hash(nvs), "code_version": CODE_VERSION}
    rep = write_nvs_report(out, header=header, records=records, skipped=skipped, tables=tables, strips=strips,
                           notes=notes)
    flat = {r["key"]: r["value"] for r in records if r["value"] is not None}
    md = {**flat, "report_dir": str(out), "report_html": str(rep["paths"]["report.html"]),
          "report_markdown": rep["markdown"], "dataset_version": dataset_version, "skipped": len(skipped)}
    data_version = stable_hash({"metrics": rep["metrics"], "header": header}, 24)
    return StageReport("nvs_reports", stable_hash({"code": CODE_VERSION, "nvs_eval": nvs}), data_version,
                       computed=len(tables), seconds=time.perf_counter() - t0, metadata=md,
                       previews=dict(rep["images"]))


def main(argv: list[str] | None = None) -> int:
    """CLI: see the module docstring. Prints the finite metrics as JSON."""
    ap = argparse.ArgumentParser(prog="python -m eval.nvs_run", description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="viewset_models run dir, checkpoint or model dir")
    ap.add_argument("--manifest", required=True, help="viewset manifest.json or its directory")
    ap.add_argument("--out", required=True, help="report directory")
    ap.add_argument("--params", default=None)
    ap.add_argument("--profile", default=None, help="default | demo | smoke")
    ap.add_argument("--device", default=None)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. nvs_eval.n_samples=4")
    a = ap.parse_args(argv)
    from training.train import apply_overrides
    params = load_params(a.params)
    params = apply_overrides(params, a.set)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    rep = run_nvs_reports(Path(a.out).parent, params, model=a.model, manifest=a.manifest, out_dir=a.out,
                          profile=a.profile, device=a.device)
    print(json.dumps({k: v for k, v in rep.metadata.items() if isinstance(v, (int, float))}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
