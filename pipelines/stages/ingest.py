"""Runner of the ``source_images`` stage (ingestion; see :mod:`pipelines.images`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipelines.images import ingest, load_images
from pipelines.versions import IMAGES as CODE_VERSION
from pipelines.previews import grid_png
from pipelines.sources import list_source
from pipelines.stages.common import StageReport, Timer, make_store, result_params
from pipelines.storage import write_index, write_quarantine

STAGE = "source_images"


def run_ingest(root: Path, params: dict[str, Any]) -> StageReport:
    """Ingest the configured source (``params['source']``) into ``root``.

    Writes ``source_images/index.parquet`` (key, uri, label, split, width, height of the
    original) and ``source_images/quarantine.parquet`` (uri, reason); images are stored
    as PNG in the stage cache. Raises only for an unusable *source* (unknown kind,
    missing folder or manifest); bad *images* are quarantined.
    """
    src = params.get("source") or {}
    store = make_store(root, STAGE, CODE_VERSION, result_params(params, "ingest"), {})
    with Timer() as t:
        items = list_source(src.get("kind", "sample"), src.get("path"))
        res = ingest(items, store, resolution=int(params["ingest"]["resolution"]),
                     min_size=int(params["ingest"]["min_size"]), chunk_size=int(params.get("chunk_size", 256)))
        write_quarantine(root, STAGE, res.quarantine)
        labels = sorted({x for x in res.index.column("label").to_pylist() if x is not None})
        info = {"stage": STAGE, "version": store.version, "code_version": CODE_VERSION,
                "params": result_params(params, "ingest"), "source": src, "labels": labels}
        dv = write_index(root, STAGE, res.index, info)
    keys = res.index.column("key").to_pylist()
    previews = {}
    if keys:
        imgs = load_images(store, keys[:8])
        previews["images"] = grid_png([list(imgs)])
    return StageReport(
        STAGE, store.version, dv, computed=res.computed, reused=res.reused, failed=len(res.quarantine),
        seconds=t.seconds, previews=previews,
        metadata={"accepted": len(keys), "rejected": len(res.quarantine), "duplicates": res.duplicates,
                  "listed": len(items), "source_kind": src.get("kind", "sample"),
                  "images_per_s": round(len(items) / max(t.seconds, 1e-9), 2),
                  "quarantine_reasons": sorted({r["reason"].split(":")[0] for r in res.quarantine}),
                  "num_labels": len(labels)},
        failures=res.quarantine)


def open_images(root: Path) -> tuple[list[str], Any, dict[str, Any]]:
    """Keys, image store and info of the materialized ``source_images`` stage."""
    from pipelines.storage import StageStore, read_index

    table, info = read_index(root, STAGE)
    return table.column("key").to_pylist(), StageStore(root, STAGE, info["version"]), info


def images_float(store, keys) -> np.ndarray:
    """float32 [N,3,R,R] in [0,1] for ``keys``."""
    return load_images(store, keys).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
