"""Evaluation report: Markdown, self-contained HTML, ``metrics.json`` and plot data for DVC.

Layout of ``out_dir`` (every file written atomically, :mod:`pipelines.storage`)::

    metrics.json                flat {key: number} for `dvc metrics show/diff` (finite values)
    report.json                 every metric with its protocol info, notes, header (provenance)
    report.md                   tables + images linked from images/
    report.html                 the same, images embedded as base64 PNG (one file to share)
    images/<protocol>_grid.png  sample grid per protocol; images/<plot>.png matplotlib plots
    plots/view_sweep_fid.csv    yaw, abs_yaw, fid, num_images   (for `dvc plots`)
    plots/novel_view_pairs.csv  key, hole_fraction, psnr*, ssim*, lpips* per held-out pair

Numbers are never rounded in the machine-readable files; tables show 4 significant digits.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from eval.protocols import Metric, ProtocolResult
from pipelines.models import RANDOM_WEIGHTS
from pipelines.storage import write_bytes_atomic, write_json_atomic
from pipelines.text import escape_md, md_code_block, md_table

RANDOM_BANNER = (f"WARNING: some networks ran on random weights -- these numbers are {RANDOM_WEIGHTS}; "
                 "they only show that the pipeline runs.")
_COUNT_KEYS = {"generation": "num_samples", "novel_view": "num_pairs", "view_sweep": "num_viewsets"}


def png_bytes(image: torch.Tensor) -> bytes:
    """PNG of a uint8 [3, H, W] tensor."""
    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).cpu().numpy()).save(buf, format="PNG")
    return buf.getvalue()


def flat_metrics(results: Sequence[ProtocolResult]) -> dict[str, float]:
    """``{metric key: value}`` over all protocols (finite values only) plus each protocol's
    sample count (``<protocol>_<count key>``), all plain floats/ints: what DVC reads."""
    out: dict[str, float] = {}
    for r in results:
        for m in r.metrics:
            if isinstance(m.value, (int, float)) and math.isfinite(m.value):
                out[m.key] = float(m.value)
        ck = _COUNT_KEYS.get(r.name)
        if ck and isinstance(r.info.get(ck), (int, float)):
            out[f"{r.name}_{ck}"] = int(r.info[ck])
    return out


def is_random(results: Sequence[ProtocolResult], header: dict[str, Any]) -> bool:
    """True when any network (feature extractor, LPIPS or evaluated model) is random."""
    vals = [v for r in results for m in r.metrics for v in m.info.values()] + list(header.values())
    return any(v == RANDOM_WEIGHTS for v in vals)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) else f"{v:.4g}"
    return str(v)


def _table(metrics: Sequence[Metric]) -> list[list[str]]:
    head = ["metric", "value", "better", "N", "resolution", "feature extractor (weights)", "dataset / split",
            "model (checkpoint hash)"]
    rows = [head]
    for m in metrics:
        i = m.info
        n = i.get("num_pairs_counted", i.get("num_samples", i.get("num_pairs", "")))
        real = f" vs {i['num_real']} real" if "num_real" in i else ""
        fx = f"{i['feature_extractor']} ({i.get('weights_origin', '?')})" if "feature_extractor" in i else "-"
        rows.append([m.label, _fmt(m.value), "higher" if m.higher_is_better else "lower", f"{n}{real}",
                     str(i.get("resolution", "")), fx, f"{i.get('dataset_version', '?')} / {i.get('split', '?')}",
                     f"{i.get('model', '?')} ({i.get('model_hash', '?')})"])
    return rows


def _html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def plots(results: Sequence[ProtocolResult]) -> dict[str, bytes]:
    """matplotlib figures as PNG bytes: ``view_sweep_fid`` (FID vs |yaw|, one line per
    yaw sign) and ``novel_view_psnr`` (histogram of per-pair PSNR on mask and on holes)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, bytes] = {}
    for r in results:
        fig = None
        if "view_sweep_fid" in r.rows:
            rows = r.rows["view_sweep_fid"]
            fig, ax = plt.subplots(figsize=(5, 3.5))
            for sign, style in ((1, "o-"), (-1, "s--")):
                pts = sorted((x["abs_yaw"], x["fid"]) for x in rows if x["yaw"] * sign >= 0)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=f"yaw {'>=' if sign > 0 else '<='} 0")
            ax.set(xlabel="|yaw| (rad)", ylabel="FID (lower is better)", title="FID vs |yaw|")
            ax.legend()
            name = "view_sweep_fid"
        elif "novel_view_pairs" in r.rows:
            rows = r.rows["novel_view_pairs"]
            fig, ax = plt.subplots(figsize=(5, 3.5))
            for k in ("psnr_mask", "psnr_holes"):
                v = [x[k] for x in rows if math.isfinite(x[k])]
                if v:
                    ax.hist(v, bins=min(30, max(5, len(v) // 4)), alpha=0.6, label=k.replace("_", " on "))
            ax.set(xlabel="PSNR (dB)", ylabel="pairs", title="Per-pair PSNR")
            ax.legend()
            name = "novel_view_psnr"
        if fig is not None:
            fig.tight_layout()
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=100)
            plt.close(fig)
            out[name] = buf.getvalue()
    return out


def csv_bytes(rows: list[dict[str, Any]]) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue().encode()


def render(results: Sequence[ProtocolResult], header: dict[str, Any], notes: Sequence[str],
           images: dict[str, bytes], *, embed: bool, title: str = "viewforge evaluation") -> tuple[str, str]:
    """(Markdown, HTML) text. ``images`` maps names to PNG bytes (``<protocol>_grid`` and plot
    names); Markdown links ``images/<name>.png`` (or data URIs when ``embed``), HTML always
    embeds them."""
    def md_img(name: str) -> str:
        src = (f"data:image/png;base64,{base64.b64encode(images[name]).decode()}" if embed
               else f"images/{name}.png")
        return f"![{escape_md(name)}]({src})"

    def html_img(name: str) -> str:
        return f'<img alt="{html.escape(name)}" src="data:image/png;base64,{base64.b64encode(images[name]).decode()}">'

    rnd = is_random(results, header)
    md = [f"# {escape_md(title)}", ""] + ([f"> **{RANDOM_BANNER}**", ""] if rnd else [])
    md += [md_table([["field", "value"]] + [[k, _fmt(v)] for k, v in header.items()]), ""]
    hb = [f"<h1>{html.escape(title)}</h1>"] + ([f'<p class="warn">{html.escape(RANDOM_BANNER)}</p>'] if rnd else [])
    hb.append(_html_table([["field", "value"]] + [[str(k), _fmt(v)] for k, v in header.items()]))
    for r in results:
        md += [f"## {escape_md(r.title)}", "", md_table(_table(r.metrics)), ""]
        hb += [f"<h2>{html.escape(r.title)}</h2>", _html_table(_table(r.metrics))]
        extra = {k: v for k, v in r.info.items() if k not in ("protocol",) and not isinstance(v, (dict,))}
        md += ["<details><summary>protocol</summary>", "",
               md_code_block("\n".join(f"{k}: {v}" for k, v in extra.items())), "</details>", ""]
        hb.append("<details><summary>protocol</summary><pre>" +
                  html.escape("\n".join(f"{k}: {v}" for k, v in extra.items())) + "</pre></details>")
        for note in r.notes:
            md += [f"*Note: {escape_md(note)}*", ""]
            hb.append(f"<p><em>Note: {html.escape(note)}</em></p>")
        for name in (n for n in images if n.startswith(r.name)):
            md += [md_img(name), ""]
            hb.append(html_img(name))
        md.append(f"*{escape_md(r.name)}: {r.seconds:.1f} s*\n")
    add_notes(md, hb, notes)
    return "\n".join(md), html_page(title, hb, ".warn{background:#fdd;padding:.5em;font-weight:bold}")


def add_notes(md: list[str], hb: list[str], notes: Sequence[str]) -> None:
    """Append a "Notes" section (user strings escaped) to Markdown lines and HTML parts."""
    if notes:
        md += ["## Notes", ""] + [f"- {escape_md(n)}" for n in notes] + [""]
        hb += ["<h2>Notes</h2><ul>"] + [f"<li>{html.escape(n)}</li>" for n in notes] + ["</ul>"]


def html_page(title: str, body: Sequence[str], extra_style: str = "") -> str:
    """A self-contained HTML report page (title escaped; ``body`` parts already HTML)."""
    style = ("body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}img{max-width:100%;display:block;"
             "margin:.5em 0}" + extra_style)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")


def write_report(results: Sequence[ProtocolResult], out_dir: str | Path, *, header: dict[str, Any],
                 notes: Sequence[str] = (), title: str = "viewforge evaluation") -> dict[str, Any]:
    """Write every file listed in the module docstring into ``out_dir``.

    Args:
        results: protocol results (any subset, report order).
        header: run-level fields (dataset version, models, profile, ...), shown first.
        notes: run-level notes (skipped metrics, caveats).

    Returns:
        ``{"paths": {name: Path}, "metrics": flat metrics dict, "images": {name: PNG bytes},
        "markdown": the report's Markdown without images (for Dagster metadata; show
        ``images`` beside it), "random": bool}``.
    """
    out = Path(out_dir)
    images = {f"{r.name}_grid": png_bytes(r.grid) for r in results if r.grid is not None}
    images.update(plots(results))
    paths: dict[str, Path] = {}
    for name, png in images.items():
        paths[f"images/{name}.png"] = write_bytes_atomic(out / "images" / f"{name}.png", png)
    for r in results:
        for name, rows in r.rows.items():
            if rows:
                paths[f"plots/{name}.csv"] = write_bytes_atomic(out / "plots" / f"{name}.csv", csv_bytes(rows))
    flat = flat_metrics(results)
    paths["metrics.json"] = write_json_atomic(out / "metrics.json", flat)
    prov = {"header": header, "notes": list(notes),
            "protocols": [{"name": r.name, "info": r.info, "notes": r.notes, "seconds": r.seconds,
                           "metrics": [{"key": m.key, "label": m.label, "value": m.value if math.isfinite(m.value)
                                        else None, "higher_is_better": m.higher_is_better, "info": m.info}
                                       for m in r.metrics]} for r in results]}
    paths["report.json"] = write_json_atomic(out / "report.json", json.loads(json.dumps(prov, default=str)))
    md_files, page = render(results, header, notes, images, embed=False, title=title)
    md_tables, _ = render(results, header, notes, {}, embed=True, title=title)
    paths["report.md"] = write_bytes_atomic(out / "report.md", md_files.encode())
    paths["report.html"] = write_bytes_atomic(out / "report.html", page.encode())
    return {"paths": paths, "metrics": flat, "images": images, "markdown": md_tables,
            "random": is_random(results, header)}
