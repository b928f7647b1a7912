"""eval.run / eval.report end to end with tiny random models; `dvc metrics show` on the output."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from test_training_helpers import write_tiny_shards

from eval import extractors as X
from eval.run import eval_params, run_eval_reports
from pipelines.models import RANDOM_WEIGHTS


@pytest.fixture(scope="module")
def report(tmp_path_factory, tiny_dinov2_path):
    """One evaluation of tiny random first-view / novel-view UNets on 8 synthetic pairs."""
    from training.models import build_model, tiny_config
    tmp = tmp_path_factory.mktemp("eval")
    manifest = write_tiny_shards(tmp / "shards", n=8, size=16)
    for kind in ("first_view", "novel_view"):
        build_model(tiny_config(kind)).save_pretrained(tmp / "models" / kind)
    # a tiny timm DINOv2 stands in for both extractors (the Inception path is tested in
    # test_eval_metrics; at 299 px it is too slow for a CPU end-to-end test)
    ex = X.load_dinov2_extractor("vit_small_patch14_dinov2", str(tiny_dinov2_path), profile="default",
                                 image_size=56, device="cpu")
    params = {"eval": {"split": "train", "resolution": 16, "num_samples": 4, "num_pairs": 4, "sweep_viewsets": 1,
                       "ddim_steps": 1, "kid_subsets": 5, "sweep_yaws": [0.0, 0.3, -0.3], "sweep_pitches": [0.0, 0.15],
                       "batch_size": 4, "lpips_weights_path": str(tmp / "none.pth")}}
    rep = run_eval_reports(tmp / "data", params, models_dir=tmp / "models", manifest=manifest,
                           out_dir=tmp / "report", profile="default", device="cpu",
                           extractors={"inception": ex, "dinov2": ex})
    return tmp, rep


def test_report_renders_end_to_end(report):
    tmp, rep = report
    out = tmp / "report"
    for name in ("metrics.json", "report.json", "report.md", "report.html", "plots/view_sweep_fid.csv",
                 "plots/novel_view_pairs.csv", "images/generation_grid.png", "images/novel_view_grid.png",
                 "images/view_sweep_grid.png", "images/view_sweep_fid.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values())
    assert all(not isinstance(v, (dict, list)) for v in metrics.values())  # flat
    for key in ("generation_fid", "generation_kid_mean", "generation_fd_dinov2", "novel_view_psnr_mask",
                "novel_view_psnr_holes", "novel_view_ssim_mask", "view_sweep_fid_yaw_+0.30", "view_sweep_fid_mean"):
        assert key in metrics, key
    assert metrics["generation_num_samples"] == 4 and metrics["novel_view_num_pairs"] == 4
    assert len((out / "plots/view_sweep_fid.csv").read_text().splitlines()) == 1 + 3
    # every number states its protocol
    prov = json.loads((out / "report.json").read_text())
    for proto in prov["protocols"]:
        for m in proto["metrics"]:
            i = m["info"]
            assert i["dataset_version"] == "synthetic-test" and i["split"] == "train", m["key"]
            assert len(i["model_hash"]) >= 16 and ("num_samples" in i or "num_pairs" in i), m["key"]
            if "fid" in m["key"] or "kid" in m["key"] or "dinov2" in m["key"]:
                assert i["feature_extractor"].startswith("dinov2-cls") and i["weights_origin"].startswith("local:")
                assert i["resolution"] == 16 and i["num_real"] == 8
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 5 and "<img" in html and "src=\"images/" not in html
    md = (out / "report.md").read_text()
    assert "LPIPS skipped" in md and "eval.lpips_weights_path" in md and "synthetic-test" in md
    assert RANDOM_WEIGHTS not in md
    assert rep.metadata["generation_fid"] == metrics["generation_fid"] and rep.previews
    # real statistics were cached once per (dataset, split, extractor, resolution) and reused
    cached = list((tmp / "data" / "cache" / "eval_real_stats" / "synthetic-test" / "train").glob("*.npz"))
    assert len(cached) == 1
    sweep = next(p for p in prov["protocols"] if p["name"] == "view_sweep")
    assert sweep["info"]["real_cache_hit"] is True


def test_smoke_profile_caps_counts():
    p = eval_params({"eval": {"num_samples": 10000, "max_real": None}}, "smoke")
    assert p["num_samples"] == 8 and p["max_real"] == 64 and p["ddim_steps"] == 4   # eval.small_profile defaults
    assert eval_params({}, "default")["num_samples"] == 10000
    with pytest.raises(ValueError, match="eval.protocols"):
        eval_params({"eval": {"protocols": ["nope"]}}, "default")


def _dvc() -> str | None:
    local = Path(__file__).resolve().parents[1] / ".venv-dvc" / "bin" / "dvc"
    return str(local) if local.is_file() else shutil.which("dvc")


@pytest.mark.skipif(_dvc() is None or shutil.which("git") is None, reason="DVC CLI (or git) not installed")
def test_dvc_metrics_show_lists_numbers(report, tmp_path):
    _, rep = report
    metrics = json.loads((Path(rep.metadata["report_dir"]) / "metrics.json").read_text())
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(tmp_path)}
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True, env=env)
    subprocess.run([_dvc(), "init", "-q"], cwd=tmp_path, check=True, env=env)
    shutil.copy(Path(rep.metadata["report_dir"]) / "metrics.json", tmp_path / "metrics.json")
    (tmp_path / "dvc.yaml").write_text("metrics:\n  - metrics.json\n")
    res = subprocess.run([_dvc(), "metrics", "show", "--json"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    shown = json.loads(res.stdout)
    data = next(iter(shown.values()))["data"]["metrics.json"]["data"]
    assert data == pytest.approx(metrics)


def test_hostile_strings_render_as_text(tmp_path):
    """User strings (dataset version, split, model path, notes) cannot inject HTML or break
    a table, in report.md and report.html."""
    import html as h

    markdown_it = pytest.importorskip("markdown_it")
    from eval.protocols import Metric, ProtocolResult
    from eval.report import write_report

    evil = "<img src=x onerror=alert(1)>|evil.png"
    info = {"dataset_version": evil, "split": "a|b", "model": f"/models/{evil}", "model_hash": "`h`",
            "num_samples": 3, "feature_extractor": "dinov2-cls", "weights_origin": f"local:{evil}"}
    res = ProtocolResult("generation", "Generation", {"protocol": "x", "source": "```\n</details>" + evil},
                         [Metric("generation_fid", "FID", 1.5, False, info)], notes=[f"note {evil}\n# not a heading"])
    out = write_report([res], tmp_path, header={"dataset_version": evil, "label": "- [x](javascript:1)"},
                       notes=[evil], title=f"report {evil}")
    md = (tmp_path / "report.md").read_text()
    rendered = markdown_it.MarkdownIt("commonmark", {"html": True}).enable("table").render(md)
    assert "<img" not in rendered and "<a " not in rendered and "<h1>report &lt;img" in rendered
    # every table row keeps its column count (2 for the header table, 8 for the metrics table)
    tables = [t.split("</table>")[0] for t in rendered.split("<table>")[1:]]
    assert len(tables) == 2
    for table, ncols in zip(tables, (2, 8)):
        rows = table.split("<tr>")[1:]
        assert [r.count("<td>") + r.count("<th>") for r in rows] == [ncols] * len(rows)
    shown = h.escape(evil, quote=False)
    assert rendered.count(shown) >= 6  # title, header, 2 metric cells, note, run note: as text
    # the protocol block is verbatim code: its fence and </details> cannot be closed early
    code = rendered.split("<pre><code>", 1)[1].split("</code></pre>", 1)[0]
    assert h.unescape(code) == "source: ```\n</details>" + evil + "\n"
    page = (tmp_path / "report.html").read_text()
    assert "<img src=x" not in page and page.count(h.escape(evil)) >= 6
    assert "<img src=x" not in out["markdown"].split("```")[0]
