"""CO3Dv2 reader (``frame_annotations.jgz``, ``sequence_annotations.jgz``, set lists, eval
batches, images, masks, float16-in-PNG depths, depth masks), plain gzip + json.

Format facts: reference/multiview-formats.md section 4.1 (facebookresearch/co3d@eb51d75
README "Dataset format", ``co3d/dataset/data_types.py``; pytorch3d@9381c40
``implicitron/dataset/utils.py::load_16big_png_depth``, ``frame_data.py``). Cameras: section
4.2 via :func:`pipelines.camera_conventions.pytorch3d_ndc_to_opencv` (both intrinsics
formats; the PyTorch3D default for a missing ``intrinsics_format`` is
``ndc_norm_image_bounds``, ``implicitron/dataset/types.py::ViewpointAnnotation``).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from pipelines.camera_conventions import pytorch3d_ndc_to_opencv
from pipelines.viewsets.io import read_gray, read_json, read_rgba, read_uint16, require
from pipelines.viewsets.registry import Reader, register
from pipelines.viewsets.types import SequenceRef, Viewset, ViewsetError
from pipelines.viewsets.validate import stack_views

DEFAULT_INTRINSICS_FORMAT = "ndc_norm_image_bounds"


def decode_depth_png(u16: np.ndarray, scale_adjustment: float) -> np.ndarray:
    """CO3D depth: the uint16 PNG holds **float16 bit patterns**;
    ``depth = frombuffer(png, float16) * scale_adjustment``, non-finite -> 0 (invalid).

    Source: pytorch3d ``implicitron/dataset/utils.py::load_16big_png_depth`` / ``load_depth``.
    Args: u16: uint16 [H, W]. Returns: float32 [H, W] z-depth in the sequence's world units.
    """
    d = np.ascontiguousarray(u16, dtype=np.uint16).view(np.float16).astype(np.float32)
    d = d * np.float32(scale_adjustment)
    d[~np.isfinite(d)] = 0.0
    return d


def encode_depth_png(depth: np.ndarray, scale_adjustment: float) -> np.ndarray:
    """Inverse of :func:`decode_depth_png` (for fixtures/exports): float16 bits of
    ``depth / scale_adjustment`` as uint16 [H, W]; invalid (<= 0, non-finite) -> 0."""
    d = np.asarray(depth, dtype=np.float64) / scale_adjustment
    d = np.where(np.isfinite(d) & (d > 0), d, 0.0)
    return d.astype(np.float16).view(np.uint16)


@functools.lru_cache(maxsize=2)
def _category_index(cat_dir: str, mtime_ns: int) -> dict[str, list[dict]]:
    """``{sequence_name: [frame annotation, ...] sorted by frame_number}`` of one category."""
    frames = read_json(Path(cat_dir) / "frame_annotations.jgz", gz=True)
    if not isinstance(frames, list):
        raise ViewsetError("malformed_metadata", f"{cat_dir}/frame_annotations.jgz is not a list")
    index: dict[str, list[dict]] = {}
    for fa in frames:
        try:
            index.setdefault(fa["sequence_name"], []).append(fa)
        except (TypeError, KeyError) as e:
            raise ViewsetError("malformed_metadata", f"{cat_dir}: frame annotation without sequence_name") from e
    for v in index.values():
        v.sort(key=lambda fa: int(fa.get("frame_number", 0)))
    return index


def category_index(cat_dir: Path) -> dict[str, list[dict]]:
    p = require(cat_dir / "frame_annotations.jgz", "CO3D frame annotations")
    return _category_index(str(cat_dir), p.stat().st_mtime_ns)


def _sequence_annotation(cat_dir: Path, seq: str) -> dict | None:
    p = cat_dir / "sequence_annotations.jgz"
    if not p.exists():
        return None
    for sa in read_json(p, gz=True):
        if isinstance(sa, dict) and sa.get("sequence_name") == seq:
            return sa
    return None


def _set_list(cat_dir: Path, subset: str) -> dict[str, list]:
    return read_json(require(cat_dir / "set_lists" / f"set_lists_{subset}.json", "CO3D set list"))


def _derived(path: str, kind: str) -> str:
    """Mask / depth path from the image path (``co3d_submission.py`` rule)."""
    if kind == "mask":
        return path.replace("/images/", "/masks/").rsplit(".", 1)[0] + ".png"
    return path.replace("/images/", "/depths/") + ".geometric.png"


@register
class CO3DReader(Reader):
    name = "co3d"

    def load(self, path: Path, *, subset: str | None = None, split: str | list[str] | None = None,
             load_masks: bool = True, load_depth: bool = True, **_: Any) -> Viewset:
        """Load ``<root>/<category>/<sequence>``; annotations from ``<root>/<category>/``.

        Args:
            subset: a set-list name (``fewview_dev`` ...): keep only its frames; ``split``
                (``"train"``/``"val"``/``"test"`` or a list) narrows to those splits.
            load_masks / load_depth: read ``masks/`` (alpha = P(fg)) / ``depths/`` and
                ``depth_masks/``.
        Returns: :class:`Viewset`, views sorted by ``frame_number``; ``names`` are the image
            paths relative to the sequence dir; ``meta`` has category, sequence,
            intrinsics_formats, split per view (with a subset), eval_batches (frame numbers,
            first = target) when ``eval_batches/eval_batches_<subset>.json`` exists,
            point_cloud and viewpoint_quality_score from the sequence annotation.
        Raises: ViewsetError (missing annotations/files, malformed, unreadable, degenerate).
        """
        cat_dir, seq, root = path.parent, path.name, path.parent.parent
        frames = category_index(cat_dir).get(seq)
        if not frames:
            raise ViewsetError("missing_files", f"sequence {seq!r} has no frames in {cat_dir}/frame_annotations.jgz")
        meta: dict[str, Any] = {"dataset": "co3d", "category": cat_dir.name, "sequence": seq,
                                "source_pixel_convention": "pytorch3d_ndc", "background": "real",
                                "mask_source": "co3d_fg_probability" if load_masks else "none"}
        splits_of: dict[int, str] = {}
        if subset is not None:
            for sp, entries in _set_list(cat_dir, subset).items():
                for e in entries:
                    if e[0] == seq:
                        splits_of[int(e[1])] = sp
            want = None if split is None else ({split} if isinstance(split, str) else set(split))
            frames = [f for f in frames if int(f["frame_number"]) in splits_of
                      and (want is None or splits_of[int(f["frame_number"])] in want)]
            meta["subset"] = subset
            meta["splits"] = [splits_of[int(f["frame_number"])] for f in frames]
            eb = cat_dir / "eval_batches" / f"eval_batches_{subset}.json"
            if eb.exists():
                meta["eval_batches"] = [[int(e[1]) for e in b] for b in read_json(eb) if b and b[0][0] == seq]
        if not frames:
            raise ViewsetError("too_few_views", f"{seq}: no frames in subset {subset!r} split {split!r}")
        sa = _sequence_annotation(cat_dir, seq)
        if sa is not None:
            meta["point_cloud"] = sa.get("point_cloud")
            meta["viewpoint_quality_score"] = sa.get("viewpoint_quality_score")
        images, alphas, depths, dmasks, names, Rs, Ts, fs, ps, hws, fmts = ([] for _ in range(11))
        for fa in frames:
            try:
                img_rel = fa["image"]["path"]
                vp = fa["viewpoint"]
            except (TypeError, KeyError) as e:
                raise ViewsetError("malformed_metadata", f"{seq} frame {fa.get('frame_number')}: {e}") from e
            if vp is None:
                raise ViewsetError("degenerate_camera", f"{seq} frame {fa.get('frame_number')}: no viewpoint")
            rgb, _ = read_rgba(root / img_rel)
            H, W = rgb.shape[1:]
            if "size" in fa["image"] and fa["image"]["size"] and list(fa["image"]["size"]) != [H, W]:
                raise ViewsetError("inconsistent_views", f"{img_rel}: annotated size {fa['image']['size']} != {[H, W]}")
            images.append(rgb)
            names.append(str(Path(img_rel).relative_to(Path(cat_dir.name) / seq))
                         if img_rel.startswith(f"{cat_dir.name}/{seq}/") else img_rel)
            if load_masks:
                m = (fa.get("mask") or {}).get("path") or _derived(img_rel, "mask")
                alphas.append(read_gray(root / m))
            if load_depth:
                d = fa.get("depth") or {}
                dpath = d.get("path") or _derived(img_rel, "depth")
                z = decode_depth_png(read_uint16(root / dpath), float(d.get("scale_adjustment", 1.0)))
                depths.append(torch.from_numpy(z)[None])
                if d.get("mask_path"):
                    dmasks.append(read_gray(root / d["mask_path"]) > 0)
            fmt = vp.get("intrinsics_format", DEFAULT_INTRINSICS_FORMAT)
            Rs.append(vp["R"]); Ts.append(vp["T"]); fs.append(vp["focal_length"])
            ps.append(vp["principal_point"]); hws.append((H, W)); fmts.append(fmt)
        try:
            w2c, K = zip(*(pytorch3d_ndc_to_opencv(R, T, f, p, hw, fmt)
                           for R, T, f, p, hw, fmt in zip(Rs, Ts, fs, ps, hws, fmts)))
        except ValueError as e:
            raise ViewsetError("malformed_metadata", f"{seq}: {e}") from e
        meta["intrinsics_formats"] = sorted(set(fmts))
        return Viewset(
            images=stack_views(images, "image", names), K=np.stack(K), w2c=np.stack(w2c), names=names,
            alpha=stack_views(alphas, "mask", names) if load_masks else None,
            depth=stack_views(depths, "depth", names) if load_depth else None,
            depth_mask=stack_views(dmasks, "depth_mask", names) if len(dmasks) == len(images) and dmasks else None,
            frame_numbers=[int(f["frame_number"]) for f in frames], meta=meta)

    def list_sequences(self, root: Path, *, categories: list[str] | None = None,
                       subset: str | None = None, **_: Any) -> Iterator[SequenceRef]:
        """Sequences of the selected ``categories`` (default: the keys of
        ``category_to_subset_name_list.json``, else every directory with
        ``frame_annotations.jgz``), one category's annotations in memory at a time.
        With ``subset``: only sequences in ``set_lists_<subset>.json`` (categories without
        it are skipped), ``split`` = the set-list splits holding its frames (``"+"``-joined)
        and ``num_views`` = its frames in the set list."""
        if categories is None:
            c2s = root / "category_to_subset_name_list.json"
            if c2s.exists():
                categories = sorted(read_json(c2s))
            else:
                categories = sorted(p.parent.name for p in root.glob("*/frame_annotations.jgz"))
        for cat in categories:
            cat_dir = root / cat
            if subset is not None and not (cat_dir / "set_lists" / f"set_lists_{subset}.json").exists():
                continue
            index = category_index(cat_dir)
            if subset is None:
                for seq in sorted(index):
                    yield SequenceRef(f"co3d/{cat}/{seq}", str(cat_dir / seq), "co3d", len(index[seq]), None, cat)
                continue
            per: dict[str, dict[str, int]] = {}
            for sp, entries in sorted(_set_list(cat_dir, subset).items()):
                for e in entries:
                    per.setdefault(e[0], {}).setdefault(sp, 0)
                    per[e[0]][sp] += 1
            for seq in sorted(per):
                yield SequenceRef(f"co3d/{cat}/{seq}", str(cat_dir / seq), "co3d", sum(per[seq].values()),
                                  "+".join(sorted(per[seq])), cat, (("subset", subset),))
