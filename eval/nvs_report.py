"""Novel-view report files of ``nvs_reports``: metrics.json (DVC), report.json (every number
with its provenance), report.md / report.html (summary, per-sequence and per-view tables,
a strip image per profile), tables/*.csv. Rendering helpers from :mod:`eval.report`
(``png_bytes``, ``_html_table``, ``_fmt``) and :mod:`pipelines.text` (``escape_md``,
``md_table``); files written atomically (:mod:`pipelines.storage`).

Layout of ``out_dir``::

    metrics.json                 {profile: {background: {metric: {statistic: value}}}} (finite only)
    report.json                  {"header", "notes", "records": [...], "skipped": [...]}
    report.md / report.html      human-readable (HTML embeds the images)
    images/<profile>_strip.png   condition | samples | ground truth of the first item
    tables/<profile>_per_view.csv, tables/<profile>_per_sequence.csv
    eval_index/<profile>-<dataset version>-<hash>.json   the stored view selections
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any, Sequence

from eval.report import _fmt, _html_table, add_notes, csv_bytes, html_page, png_bytes
from pipelines.storage import write_bytes_atomic, write_json_atomic
from pipelines.text import escape_md, md_table

SUMMARY_COLS = ["profile", "background", "metric", "statistic", "value", "better", "N", "inf", "SSIM variant",
                "resolution", "samples", "dataset version"]
MAX_MD_ROWS = 40


def metrics_tree(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``{profile: {background: {metric: {statistic: value}}}}`` of the finite records."""
    out: dict[str, Any] = {}
    for r in records:
        if r.get("value") is not None:
            out.setdefault(r["profile"], {}).setdefault(r["background"], {}).setdefault(r["metric"], {})[
                r["statistic"]] = r["value"]
    return out


def _summary_rows(records: Sequence[dict[str, Any]], skipped: Sequence[dict[str, Any]]) -> list[list[str]]:
    rows = [SUMMARY_COLS]
    for r in records:
        rows.append([r["profile"], r["background"], r["metric"], r["statistic"],
                     _fmt(r["value"]) if r["value"] is not None else "n/a", "higher" if r["higher_is_better"]
                     else "lower", str(r["n_values"]), str(r["n_inf"]), r.get("ssim_variant", "-"),
                     str(r["resolution"]), str(r["n_samples"]), r["dataset_version"]])
    for s in skipped:
        rows.append([s["profile"], s.get("background", "-"), s.get("metric", "-"), "skipped", "skipped",
                     "-", "0", "0", s.get("ssim_variant", "-"), str(s.get("resolution", "-")),
                     str(s.get("n_samples", "-")), s["dataset_version"]])
    return rows


def _table_rows(rows: Sequence[dict[str, Any]]) -> list[list[str]]:
    if not rows:
        return []
    head = list(rows[0])
    return [head] + [[_fmt(r[k]) if r[k] is not None else "n/a" for k in head] for r in rows]


def write_nvs_report(out_dir: str | Path, *, header: dict[str, Any], records: list[dict[str, Any]],
                     skipped: list[dict[str, Any]], tables: dict[str, dict[str, list[dict[str, Any]]]],
                     strips: dict[str, bytes | Any], notes: Sequence[str],
                     title: str = "viewforge novel-view evaluation") -> dict[str, Any]:
    """Write the files of the module docstring.

    Args:
        header: run fields (dataset version, split, model, hashes...), shown first.
        records: one dict per number (``profile, background, metric, statistic, value`` (None
            when not finite), ``higher_is_better, n_values, n_inf`` + provenance fields).
        skipped: one dict per skipped metric / profile (``profile, reason`` + provenance).
        tables: ``{profile: {"per_view": rows, "per_sequence": rows}}`` (dict rows).
        strips: ``{profile: uint8 [3, H, W] tensor}``.
    Returns: ``{"paths", "metrics" (the tree), "markdown" (no images), "images" (PNG bytes)}``.
    """
    out = Path(out_dir)
    paths: dict[str, Path] = {}
    images = {f"{p}_strip": png_bytes(t) for p, t in strips.items() if t is not None}
    for name, png in images.items():
        paths[f"images/{name}.png"] = write_bytes_atomic(out / "images" / f"{name}.png", png)
    for prof, tabs in tables.items():
        for tname, rows in tabs.items():
            if rows:
                paths[f"tables/{prof}_{tname}.csv"] = write_bytes_atomic(out / "tables" / f"{prof}_{tname}.csv",
                                                                         csv_bytes(rows))
    tree = metrics_tree(records)
    paths["metrics.json"] = write_json_atomic(out / "metrics.json", tree)
    paths["report.json"] = write_json_atomic(out / "report.json", json.loads(json.dumps(
        {"header": header, "notes": list(notes), "records": records, "skipped": skipped}, default=str)))

    md = [f"# {escape_md(title)}", "", md_table([["field", "value"]] + [[k, _fmt(v)] for k, v in header.items()]), ""]
    hb = [f"<h1>{html.escape(title)}</h1>", _html_table([["field", "value"]] + [[str(k), _fmt(v)]
                                                                                for k, v in header.items()])]
    summary = _summary_rows(records, skipped)
    md += ["## Summary", "", md_table(summary), ""]
    hb += ["<h2>Summary</h2>", _html_table(summary)]
    if skipped:
        md += ["### Skipped", ""] + [f"- {escape_md(s['profile'])} {escape_md(s.get('background', ''))} "
                                     f"{escape_md(s.get('metric', ''))}: {escape_md(s['reason'])}" for s in skipped] + [""]
        hb += ["<h3>Skipped</h3><ul>"] + [f"<li>{html.escape(s['profile'])} {html.escape(s.get('background', ''))} "
                                          f"{html.escape(s.get('metric', ''))}: {html.escape(s['reason'])}</li>"
                                          for s in skipped] + ["</ul>"]
    md_imgs: list[str] = []
    for prof, tabs in tables.items():
        md += [f"## {escape_md(prof)}", ""]
        hb.append(f"<h2>{html.escape(prof)}</h2>")
        if f"{prof}_strip" in images:
            md_imgs.append(prof)
            md += [f"![{escape_md(prof)} strip](images/{prof}_strip.png)", "",
                   "*rows: target views; columns: condition, samples, ground truth*", ""]
            b64 = base64.b64encode(images[f"{prof}_strip"]).decode()
            hb.append(f'<img alt="{html.escape(prof)} strip" src="data:image/png;base64,{b64}">'
                      "<p><em>rows: target views; columns: condition, samples, ground truth</em></p>")
        for tname in ("per_sequence", "per_view"):
            rows = _table_rows(tabs.get(tname) or [])
            if not rows:
                continue
            cut = len(rows) - 1 > MAX_MD_ROWS
            md += [f"### {tname.replace('_', ' ')}", "", md_table(rows[:MAX_MD_ROWS + 1]), ""]
            if cut:
                md += [f"*first {MAX_MD_ROWS} of {len(rows) - 1} rows; all in tables/{escape_md(prof)}_{tname}.csv*", ""]
            hb += [f"<h3>{tname.replace('_', ' ')}</h3>", _html_table(rows)]
    add_notes(md, hb, notes)
    page = html_page(title, hb, "img{image-rendering:pixelated}")
    text = "\n".join(md)
    paths["report.md"] = write_bytes_atomic(out / "report.md", text.encode())
    paths["report.html"] = write_bytes_atomic(out / "report.html", page.encode())
    no_img = "\n".join(line for line in md if not line.startswith("!["))
    return {"paths": paths, "metrics": tree, "markdown": no_img, "images": images}
