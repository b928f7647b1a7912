"""Novel-view protocols and the nvs_reports asset (issue 15): stored, deterministic eval
index; profile semantics against analytic values; provenance on every number; LPIPS skipped
and reported; end to end through Dagster (viewset shards -> viewset_models -> nvs_reports)."""
from __future__ import annotations

import json
import math

import dagster as dg
import pytest
import torch

from eval import nvs_metrics as NM
from eval import nvs_protocols as P

torch.set_num_threads(1)
PROV = ("profile", "ssim_variant", "resolution", "n_samples", "dataset_version", "split", "eval_index",
        "eval_index_sha256", "model_hash", "lpips")


def _seqs():
    return [{"key": f"s{i}", "num_views": 6, "ring": False} for i in range(5)] + \
        [{"key": "ring0", "num_views": 16, "ring": True}, {"key": "one", "num_views": 1, "ring": False}]


def test_index_is_deterministic_stored_and_never_redrawn(tmp_path):
    kw = dict(dataset_version="v1" * 8, split="test", seed=0, max_sequences=None, num_pairs=7)
    spec = P.profile_spec("viewset_single_view", {})
    a, pa, created = P.load_or_draw_index(tmp_path, spec, _seqs(), **kw)
    assert created and pa.is_file() and len(a["items"]) == 7
    assert all(it["known"] != it["targets"] and it["key"] != "one" for it in a["items"])   # distinct views
    b, pb, created = P.load_or_draw_index(tmp_path, spec, [], **kw)       # data gone: still the stored list
    assert not created and pb == pa and b == a
    c, pc, created = P.load_or_draw_index(tmp_path / "fresh", spec, _seqs(), **kw)
    assert created and c == a and pc.read_bytes() == pa.read_bytes()       # same draw from the same inputs
    d, pd, _ = P.load_or_draw_index(tmp_path, spec, _seqs(), **{**kw, "dataset_version": "v2" * 8})
    assert pd != pa and pa.is_file()                                        # a new version, the old kept
    # viewdiff: per-sequence choice depends on the key only, not on the order or the other sequences
    vd = P.profile_spec("viewdiff_single_image", {})
    items = P.draw_items("viewdiff_single_image", _seqs(), seed=0, max_sequences=None, num_pairs=0)
    rev = P.draw_items("viewdiff_single_image", _seqs()[::-1], seed=0, max_sequences=None, num_pairs=0)
    assert sorted(items, key=str) == sorted(rev, key=str) and vd["n_samples"] == 20
    assert all(len(it["targets"]) == 4 and it["known"][0] not in it["targets"] for it in items)
    ring = P.draw_items("syncdreamer_ring", _seqs(), seed=0, max_sequences=None, num_pairs=0)
    assert ring == [{"key": "ring0", "known": [0], "targets": list(range(16))}]   # all 16, view 0 included


class _Alternating:
    """Sampler: constant images, 0.5 on even calls and 0.6 on odd ones (samples s = 0, 1)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, kimg, kK, kw, tK, tw, seed):
        v = 0.5 if self.calls % 2 == 0 else 0.6
        self.calls += 1
        T, (H, W) = tK.shape[1], kimg.shape[-2:]
        return torch.full((1, T, 3, H, W), v)


def _const_seq(values, size=16, alpha=True):
    n = len(values)
    imgs = torch.stack([torch.full((3, size, size), float(v)) for v in values])
    return {"images": imgs, "foreground_prob": torch.ones(n, 1, size, size), "has_alpha": alpha,
            "K": torch.eye(3).expand(n, 3, 3).clone(), "w2c": torch.eye(4).expand(n, 4, 4).clone()}


def test_profile_statistics_match_hand_computation():
    spec = P.profile_spec("viewdiff_single_image", {"n_samples": 2, "resolution": 16})
    gt_vals = [0.0, 0.1, 0.3, 0.5, 0.9]          # view 3 equals sample 0 exactly: PSNR inf
    index = {"items": [{"key": "a", "known": [0], "targets": [1, 2, 3, 4]}]}
    hook = NM.lpips_hook(None)
    run = P.run_profile(spec, index, {"a": _const_seq(gt_vals)}, _Alternating(), seed=0, lpips=hook)
    psnr = lambda p, g: -10 * math.log10((p - g) ** 2) if p != g else math.inf   # noqa: E731
    s = P.summarize_run(run)["with_bkgd"]["psnr"]
    vals = [[psnr(p, g) for g in gt_vals[1:]] for p in (0.5, 0.6)]
    fin = [v for row in vals for v in row if math.isfinite(v)]
    assert s["samples"]["mean"] == pytest.approx(sum(fin) / len(fin), rel=1e-6)
    assert s["samples"]["n_inf"] == 1 and s["samples"]["count"] == 7
    best = [max(a, b) for a, b in zip(*vals)]
    assert s["samples"]["best_of"][2] == pytest.approx(sum(b for b in best if math.isfinite(b)) / 3, rel=1e-6)
    assert s["samples"]["best_of_n_inf"][2] == 1
    ms = [psnr(0.55, g) for g in gt_vals[1:]]
    assert s["mean_sample"]["mean"] == pytest.approx(sum(ms) / 4, rel=1e-6)
    assert run.skipped["with_bkgd/lpips"].startswith("LPIPS-vgg skipped") and "only_fg" in run.values
    assert run.strip.dtype == torch.uint8 and run.strip.shape == (3, 4 * 16, 4 * 16)  # cond, 2 samples, gt
    # without alpha, only_fg is skipped with the reason, never computed on an empty mask
    run = P.run_profile(spec, index, {"a": _const_seq(gt_vals, alpha=False)}, _Alternating(), seed=0, lpips=hook)
    assert "only_fg" not in run.values and "alpha" in run.skipped["only_fg"]


def test_ring_and_co3d_profiles():
    # ring: GT composited on white with its alpha, all 16 views, torchmetrics Gaussian SSIM
    spec = P.profile_spec("syncdreamer_ring", {"resolution": 16})
    seq = _const_seq([0.2] * 16)
    seq["foreground_prob"][:, :, :8] = 0.0                              # top half background -> white
    run = P.run_profile(spec, {"items": [{"key": "r", "known": [0], "targets": list(range(16))}]}, {"r": seq},
                        _Alternating(), seed=0, lpips=None)
    assert spec["ssim_variant"] == "torchmetrics_gaussian" and spec["n_samples"] == 1
    v = run.values["white"]["psnr"]
    assert v.shape == (1, 16)
    expect = -10 * math.log10(0.5 * (0.5 - 0.2) ** 2 + 0.5 * (0.5 - 1.0) ** 2)
    assert torch.allclose(v, torch.full_like(v, expect), atol=1e-9)
    gt = seq["images"][:1] * seq["foreground_prob"][:1] + 1 - seq["foreground_prob"][:1]
    ssim = NM.ssim(torch.full_like(gt, 0.5), gt, "torchmetrics_gaussian")
    assert run.values["white"]["ssim"][0, 0].item() == pytest.approx(ssim.item(), abs=1e-6)
    # co3d: PSNRs as the challenge code, iou / depth skipped with the reason
    spec = P.profile_spec("co3d_challenge", {"resolution": 16})
    seq = _const_seq([0.2, 0.4])
    seq["foreground_prob"][1, :, :, :8] = 0.0                           # left half outside the GT mask
    run = P.run_profile(spec, {"items": [{"key": "c", "known": [0], "targets": [1]}]}, {"c": seq},
                        _Alternating(), seed=0, lpips=None)
    co = run.values["co3d"]
    assert co["psnr_full_image"].item() == pytest.approx(-10 * math.log10(0.01), rel=1e-6)
    assert co["psnr_fg"].item() == pytest.approx(-10 * math.log10(0.01), rel=1e-6)
    assert co["psnr_masked"].item() == pytest.approx(-10 * math.log10(0.5 * 0.01 + 0.5 * 0.25), rel=1e-6)
    assert "RGB only" in run.skipped["co3d/iou"] and "RGB only" in run.skipped["co3d/depth_abs_fg"]


def test_dagster_viewset_shards_to_models_to_nvs_reports(tmp_path, monkeypatch):
    """End to end through Dagster on test fixtures (SRN cars): viewset_sources ->
    viewsets[b] -> viewset_shards[b] -> viewset_manifest over the code location's bucket
    range, then viewset_models (Pipes subprocess, multiview_tiny) -> nvs_reports."""
    from assets_defs.assets import PARTITIONS
    from assets_defs.definitions import NoStorageIOManager
    from assets_defs.demo import range_tags
    from assets_defs.nvs import NVS_ASSETS
    from assets_defs.resources import ViewforgeSettings
    from assets_defs.viewsets import VIEWSET_ASSETS
    import viewset_fixtures as F

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    root = tmp_path / "data"
    src = tmp_path / "src" / "cars_train"
    for i in (0, 1):
        F.write_srn(src / f"car{i}", n=6, size=24, seed=i)
    keys = PARTITIONS.get_partition_keys()         # the buckets the code location loaded with
    settings = ViewforgeSettings(data_root=str(root), profile="smoke" if len(keys) == 16 else None)
    res_cfg = {"settings": settings, "io_manager": NoStorageIOManager()}
    shards = dg.materialize(VIEWSET_ASSETS, resources=res_cfg, tags=range_tags(keys), raise_on_error=False,
                            run_config={"ops": {"viewset_sources": {"config": {"root": str(src), "format": "srn"}},
                                                "viewset_shards": {"config": {"maxcount": 2}}}})
    assert shards.success
    run_config = {"ops": {"viewset_models": {"config": {"config": "multiview_tiny", "max_steps": 2}},
                          "nvs_reports": {"config": {"n_samples": 2, "ddim_steps": 2, "resolution": 16,
                                                     "max_sequences": 2, "num_pairs": 4, "split": "train"}}}}
    res = dg.materialize(NVS_ASSETS, resources=res_cfg, run_config=run_config, raise_on_error=False)
    assert res.success, [e.event_specific_data.error.message for e in res.all_events
                         if e.event_type_value == "STEP_FAILURE"]
    meta = res.asset_materializations_for_node("viewset_models")[-1].metadata
    assert meta["steps"].value == 2 and meta["model"].value == "multiview" and meta["final_loss"].value > 0
    out = root / "nvs_reports"
    rep = json.loads((out / "report.json").read_text())
    assert rep["records"] and all(r["value"] is not None and math.isfinite(r["value"]) for r in rep["records"])
    assert all(all(r.get(k) not in (None, "") for k in PROV) for r in rep["records"] + rep["skipped"])
    assert {r["profile"] for r in rep["records"]} == {"co3d_challenge", "viewdiff_single_image", "viewset_single_view"}
    skipped = {(s["profile"], s.get("background"), s.get("metric")): s["reason"] for s in rep["skipped"]}
    assert "ring" in skipped[("syncdreamer_ring", None, None)]
    assert "no local weights path" in skipped[("viewdiff_single_image", "with_bkgd", "lpips")]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["viewdiff_single_image"]["with_bkgd"]["psnr"].keys() == {"mean", "best_of_1", "best_of_2",
                                                                           "mean_sample"}
    md = (out / "report.md").read_text()
    assert "LPIPS-vgg skipped" in md and "per sequence" in md and "per view" in md
    assert (out / "images" / "viewdiff_single_image_strip.png").is_file() and (out / "report.html").is_file()
    index_files = sorted(p.name for p in (out / "eval_index").iterdir())
    assert len(index_files) == 4
    # a second evaluation reads the stored eval index back (never redrawn) and gives the same numbers
    before = {p: (out / "eval_index" / p).read_bytes() for p in index_files}
    res = dg.materialize(NVS_ASSETS, resources=res_cfg, selection=["nvs_reports"],
                         run_config={"ops": {"nvs_reports": run_config["ops"]["nvs_reports"]}})
    assert res.success
    rep2 = json.loads((out / "report.json").read_text())
    assert any("(stored)" in n for n in rep2["notes"]) and not any("drawn now" in n for n in rep2["notes"])
    assert {p: (out / "eval_index" / p).read_bytes() for p in index_files} == before
    assert json.loads((out / "metrics.json").read_text()) == metrics
