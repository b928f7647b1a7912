"""Runner of the ``training_shards`` stage (see :mod:`pipelines.shards`)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterator

import pipelines.versions as V
from pipelines.images import decode_png, load_images
from pipelines.stages.common import StageReport, Timer, chunked
from pipelines.stages.depth import open_depth
from pipelines.stages.ingest import open_images
from pipelines.stages.warp import open_pairs
from pipelines.storage import read_index

STAGE = "training_shards"
SHARD_DIR = "shards"


def _pose_lookup(root: Path) -> tuple[dict[str, tuple[int, bool]], dict[str, Any]]:
    try:
        table, info = read_index(root, "pose_clusters")
    except FileNotFoundError:
        return {}, {}
    return {k: (int(p), bool(o)) for k, p, o in zip(table.column("key").to_pylist(), table.column("pose").to_pylist(),
                                                    table.column("is_outlier").to_pylist())}, info


def run_shards(root: Path, params: dict[str, Any]) -> StageReport:
    """Write the current pairs as WebDataset shards under ``<root>/shards``.

    The dataset version hashes every pair key with the versions of the stages that made
    them and the shard parameters; when ``shards/manifest.json`` already has this version
    and verifies, nothing is rewritten (reported as reused).
    """
    from pipelines.shard_manifest import MANIFEST_NAME, verify
    from pipelines.shards import write_shards

    sp = params["shards"]
    out = Path(root) / SHARD_DIR
    pairs, pair_store, winfo = open_pairs(root)
    img_keys, img_store, img_info = open_images(root)
    _, depth_store, dinfo = open_depth(root)
    poses, pinfo = _pose_lookup(root)
    src, _ = read_index(root, "source_images")
    uri_of = dict(zip(src.column("key").to_pylist(), src.column("uri").to_pylist()))
    label_of = dict(zip(src.column("key").to_pylist(), src.column("label").to_pylist()))
    label_ids = {name: i for i, name in enumerate(img_info.get("labels", []))}
    versions = {"source_images": img_info["version"], "depth_maps": dinfo["version"],
                "warp_pairs": winfo["version"], "pose_clusters": pinfo.get("data_version", "none")}
    code_versions = {"images": V.IMAGES, "depth": V.DEPTH, "warp": V.WARP, "features": V.FEATURES,
                     "pose": V.POSE, "shards": V.SHARDS}
    params_hash = hashlib.sha256(json.dumps({"versions": versions, "shards": sp}, sort_keys=True).encode()
                                 ).hexdigest()[:16]
    keys = sorted(pairs.column("key").to_pylist())
    h = hashlib.sha256(json.dumps({"versions": versions, "code": code_versions, "shards": sp},
                                  sort_keys=True).encode())
    for k in keys:
        h.update(k.encode() + b"\n")
    dataset_version = h.hexdigest()[:16]
    sample_keys = sorted(set(pairs.column("sample_key").to_pylist()))

    def generate() -> Iterator[dict]:
        for chunk in chunked(sample_keys, int(params.get("chunk_size", 256))):
            chunk = list(chunk)
            rows = pair_store.read(chunk)
            images = dict(zip(chunk, load_images(img_store, chunk)))
            depth_rows = depth_store.read(chunk, columns=["depth_png"])
            depths = {k: decode_png(b) for k, b in zip(depth_rows.column("key").to_pylist(),
                                                       depth_rows.column("depth_png").to_pylist())}
            cols = {n: rows.column(n).to_pylist() for n in rows.column_names}
            order = sorted(range(rows.num_rows), key=lambda i: cols["key"][i])
            for i in order:
                sk = cols["sample_key"][i]
                pose, outlier = poses.get(sk, (-1, False))
                label = label_of.get(sk)
                yield {"key": cols["key"][i], "sample_key": sk, "target": images[sk], "target_depth": depths[sk],
                       "cond": decode_png(cols["cond_png"][i]), "cond_depth": decode_png(cols["cond_depth_png"][i]),
                       "mask": decode_png(cols["mask_png"][i]) > 127,
                       "mask_rgb": decode_png(cols["mask_rgb_png"][i]) > 127,
                       "camera": json.loads(cols["camera_json"][i]), "pose": pose,
                       "label": label_ids.get(label) if label is not None else None,
                       "meta": {"source_uri": uri_of.get(sk), "sample_key": sk, "view": cols["view"][i],
                                "pose_outlier": outlier, "label_name": label, "code_versions": code_versions,
                                "params_hash": params_hash}}

    with Timer() as t:
        reused = False
        manifest_path = out / MANIFEST_NAME
        if manifest_path.exists():
            old = json.loads(manifest_path.read_text())
            reused = old.get("dataset_version") == dataset_version and verify(manifest_path).ok
        if reused:
            manifest = old
        else:
            manifest = write_shards(generate(), out, fractions=dict(sp["split_fractions"]),
                                    maxcount=int(sp["maxcount"]), maxsize=float(sp["maxsize"]),
                                    dataset_version=dataset_version,
                                    extra={"stage_versions": versions, "code_versions": code_versions,
                                           "labels": list(label_ids), "views_per_image":
                                               winfo.get("params", {}).get("views_per_image")})
    n = sum(s["count"] for s in manifest["shards"])
    return StageReport(STAGE, dataset_version, manifest["digest"][:24], computed=0 if reused else n,
                       reused=n if reused else 0, seconds=t.seconds,
                       metadata={"dataset_version": dataset_version, "samples": n, "shards": len(manifest["shards"]),
                                 "manifest": str(manifest_path),
                                 "splits": {s: v["count"] for s, v in manifest["splits"].items()},
                                 "bytes": sum(s["bytes"] for s in manifest["shards"]),
                                 "shard_paths": [str(out / s["name"]) for s in manifest["shards"]],
                                 "samples_per_s": round(n / max(t.seconds, 1e-9), 2) if not reused else None})
