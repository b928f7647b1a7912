"""Data-quality checks of the viewset stages (Dagster asset checks in ``assets_defs/viewsets.py``).

Each returns ``(passed, metadata)`` and reads only the data root.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.storage import exists, index_path, read_index, read_quarantine
from pipelines.viewsets import REASONS

Check = tuple[bool, dict[str, Any]]
#: max ``|R R^T - I| + |det R - 1|`` of a stored camera
RIGID_TOL = 1e-6


def _buckets(root: Path) -> list[str]:
    return list(read_index(root, "viewset_sources")[1].get("buckets", []))


def _bad_reasons(rows: list[str]) -> int:
    return sum(1 for r in rows if not r or r.split(":")[0] not in REASONS)


def check_viewset_sources(root: Path) -> Check:
    """Keys unique across buckets; every quarantined sequence has a reason from
    :data:`pipelines.viewsets.REASONS`. WARN (not error) when nothing was accepted."""
    keys, views = [], 0
    for b in _buckets(root):
        t, _ = read_index(root, "viewset_sources", b)
        keys += t.column("key").to_pylist()
        views += sum(t.column("num_views").to_pylist())
    q = read_quarantine(root, "viewset_sources").column("reason").to_pylist()
    bad = _bad_reasons(q)
    md = {"sequences": len(keys), "views": views, "quarantined": len(q), "quarantine_bad_reason": bad}
    if not keys:
        md["severity"] = "WARN"
    return len(set(keys)) == len(keys) and bad == 0 and bool(keys), md


def check_viewsets(root: Path) -> Check:
    """Every listed sequence is either in its bucket's ``viewsets`` index or quarantined
    there with a reason from REASONS; the stored cameras of each bucket's first sequences
    are rigid with positive focal lengths and their sizes match ``hw``."""
    from pipelines.sample_schema import VIEWSET
    from pipelines.stages.common import open_input
    from pipelines.camera_conventions import rigidity_error

    missing, bad_reason, bad_cams, n, examples = 0, 0, 0, 0, []
    for b in _buckets(root):
        listed = set(read_index(root, "viewset_sources", b)[0].column("key").to_pylist())
        if not exists(index_path(root, "viewsets", b)):
            missing += len(listed)
            continue
        inp = open_input(root, "viewsets", b)
        have = set(inp.keys)
        q = read_quarantine(root, "viewsets", b).column("reason").to_pylist()
        bad_reason += _bad_reasons(q)
        missing += max(0, len(listed) - len(have) - len(q))
        n += len(have)
        for row in (inp.store.read(sorted(have)[:2]).to_pylist() if have else []):
            cams = VIEWSET.decode("cams.npz", row["data"][row["members"].index("cams.npz")])
            ok = (np.all(rigidity_error(cams["w2c"]) < RIGID_TOL) and np.all(cams["K"][:, 0, 0] > 0)
                  and np.all(cams["K"][:, 1, 1] > 0) and len(cams["hw"]) == row["num_views"])
            if not ok:
                bad_cams += 1
                examples.append(row["key"])
    return missing == 0 and bad_reason == 0 and bad_cams == 0, {
        "sequences": n, "unaccounted": missing, "quarantine_bad_reason": bad_reason, "bad_cameras": bad_cams,
        "bad_examples": examples[:20]}


def check_viewset_manifest(root: Path) -> Check:
    """``viewset_shards/manifest.json`` verifies (sha256, sizes, counts, no strays), its
    ``sample_schema`` is ``viewset/1`` and every sample passes
    :meth:`pipelines.sample_schema.SampleSchema.validate_members` with one ``views.json``
    entry per view."""
    import webdataset as wds

    from pipelines.sample_schema import VIEWSET
    from pipelines.shard_manifest import resolve_shard, verify

    shard_dir = Path(root) / "viewset_shards"
    report = verify(shard_dir / "manifest.json")
    data = json.loads((shard_dir / "manifest.json").read_text())
    invalid, n, examples = 0, 0, []
    for s in data["shards"] if report.ok else []:
        for sample in wds.WebDataset(str(resolve_shard(shard_dir, s["name"])), shardshuffle=False, empty_check=False):
            n += 1
            problems = VIEWSET.validate_members(sample)
            invalid += int(bool(problems))
            if problems and len(examples) < 20:
                examples.append(f"{s['name']} {sample.get('__key__')}: {'; '.join(problems)}")
    ok = report.ok and invalid == 0 and data.get("sample_schema") == VIEWSET.name
    return ok, {"verified": report.ok, "problems": list(report.problems)[:20], "sample_schema": data.get("sample_schema"),
                "samples": n, "invalid_samples": invalid, "invalid_examples": examples}
