"""Sample schemas of viewforge's WebDataset shards: one object per sample kind that owns the
member names, encoders, decoders and validation, used by the shard writer
(:func:`pipelines.shards.encode_sample`), the shard check
(:func:`pipelines.stages.checks.check_training_shards`), the loader
(:func:`training.data.make_dataset`) and the tests.

A sample exists in two forms:

* **fields** (what the writer takes and :meth:`SampleSchema.decode_sample` returns): ``key``
  plus one entry per member field (numpy arrays, dicts, lists, ints; ``None`` for an absent
  optional field). Per-view fields are sequences of ``V`` arrays (view ``v`` is stored as
  member ``f"{v:03d}.{suffix}"``).
* **members** (what a tar holds and stock ``webdataset`` yields): ``{"__key__": key,
  "<member name>": bytes}``. webdataset splits a tar member name at the *first* dot after the
  last ``/``, so keys contain neither ``.`` nor ``/``.

Every member uses an encoding that stock webdataset decodes losslessly (its default
``gzfilter``, ``basichandlers`` and ``imagehandler``, ``webdataset/autodecode.py``): 8-bit
PNG for images and masks, gzipped ``.npy`` (``.npy.gz``) for 16-bit depth (webdataset's
image decoders would clip a 16-bit PNG to 8 bit; gzip keeps a smooth 256 px depth map at
~16 KB instead of the 131 KB of a raw ``.npy``), ``.npz`` for camera arrays, ``.json``,
``.cls``. All encoders give deterministic bytes (PNG without time chunks and gzip with
``mtime=0`` at fixed zlib levels, npz with fixed zip timestamps, compact key-sorted JSON).

**Writing tars**: use ``webdataset.TarWriter(..., encoder=False)`` with the bytes of
:meth:`SampleSchema.encode`; TarWriter's default encoder would gzip ``.gz`` members a
second time (with the current time in the header).

Instances: :data:`IVID_PAIR` (``ivid_pair/2``), :data:`IVID_PAIR_V1` (``ivid_pair/1``, the
16-bit PNG depth of earlier shard sets; read support), :data:`VIEWSET` (``viewset/1``);
:func:`get_schema` looks one up by the manifest's ``sample_schema`` name.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from pipelines.sample_codecs import (CLS, GRAY8_PNG, JSON_DICT, JSON_LIST, MASK_PNG, NPZ,  # noqa: F401 (re-exported)
                                     PNG_COMPRESS_LEVEL, RGB8_PNG, U16_NPY_GZ, U16_PNG, Codec, _array_problem,
                                     _is_int)

#: USTAR tar member names are at most 100 bytes.
TAR_NAME_MAX = 100
VIEW_DIGITS = 3

@dataclass(frozen=True)
class Member:
    """One member field. Stored as ``suffix`` (e.g. ``"target.png"``), or per view as
    ``f"{v:03d}.{suffix}"`` when ``per_view``."""

    field: str
    suffix: str
    codec: Codec
    required: bool = True
    per_view: bool = False


_PER_VIEW_RE = re.compile(r"^(\d{%d})\.(.+)$" % VIEW_DIGITS)


@dataclass(frozen=True)
class SampleSchema:
    """Members, encoders, decoders and validation of one sample kind.

    Attributes:
        name: ``"<kind>/<version>"``, stored as the manifest's ``sample_schema``.
        members: the member fields, in a fixed order.
        rules: cross-member checks on the fields form (shapes agree, required keys of a
            dict member, ...): ``rules(fields) -> list of problem strings``; called only
            when every present value passed its codec check.
        pack / unpack: optional field transforms applied before encoding / after decoding
            (e.g. IVID's ``sample_key`` travels inside ``meta.json``).
    """

    name: str
    members: tuple[Member, ...]
    rules: Callable[[dict], list[str]] = lambda fields: []
    pack: Callable[[dict], dict] | None = None
    unpack: Callable[[dict], dict] | None = None

    def __reduce__(self):  # pickled by name (spawned DataLoader workers): one instance per name
        return get_schema, (self.name,)

    # -- names
    def member_for(self, name: str) -> tuple[Member, int | None] | None:
        """The member (and view index, for per-view members) of a member name such as
        ``"target.png"`` or ``"003.rgb.png"`` (a leading ``.`` is ignored); None if unknown."""
        name = name[1:] if name.startswith(".") else name
        m = _PER_VIEW_RE.match(name)
        for mem in self.members:
            if mem.per_view and m and m.group(2) == mem.suffix:
                return mem, int(m.group(1))
            if not mem.per_view and name == mem.suffix:
                return mem, None
        return None

    def max_key_length(self) -> int:
        """Longest key whose member names fit a USTAR tar header (<= 100 bytes)."""
        longest = max(len(m.suffix) + (VIEW_DIGITS + 1 if m.per_view else 0) for m in self.members)
        return TAR_NAME_MAX - 1 - longest

    def key_problem(self, key: Any) -> str | None:
        """Why ``key`` cannot be a sample key (webdataset splits names at the first ``.``),
        or None."""
        if not isinstance(key, str) or not key or "." in key or "/" in key or \
                len(key) > self.max_key_length() or key.strip() != key:
            return (f"invalid sample key {key!r}: non-empty str, no '.' or '/', no surrounding "
                    f"space, at most {self.max_key_length()} chars")
        return None

    # -- validation
    def validate(self, sample: Mapping[str, Any]) -> list[str]:
        """Problems of a sample in fields form (writer input or :meth:`decode_sample` output);
        ``[]`` if it is valid. Checks the key, presence of required fields, each value's
        dtype/shape/type (per view for per-view fields) and the schema's ``rules``."""
        problems = []
        if (p := self.key_problem(sample.get("key"))):
            problems.append(p)
        for m in self.members:
            v = sample.get(m.field)
            if v is None:
                if m.required:
                    problems.append(f"{m.field}: missing")
                continue
            if m.per_view:
                if isinstance(v, (str, bytes, Mapping)) or not hasattr(v, "__len__") or len(v) == 0:
                    problems.append(f"{m.field}: must be a non-empty sequence of per-view values")
                    continue
                problems += [f"{m.field}[{i}]: {p}" for i, x in enumerate(v)
                             if (p := ("missing" if x is None else m.codec.check(x)))]
            elif (p := m.codec.check(v)):
                problems.append(f"{m.field}: {p}")
        return problems or list(self.rules(dict(sample)))

    def validate_members(self, raw: Mapping[str, Any]) -> list[str]:
        """Problems of a sample in members form (as stock webdataset yields it): unknown or
        missing members, members that do not decode, then :meth:`validate` of the decoded
        fields. ``[]`` if valid."""
        problems = [f"{k}: unknown member" for k in raw
                    if not k.startswith("__") and self.member_for(k) is None]
        try:
            fields = self.decode_sample(raw)
        except ValueError as exn:
            return problems + [str(exn)]
        return problems + self.validate(fields)

    # -- encode / decode
    def encode(self, sample: Mapping[str, Any]) -> dict[str, bytes | str]:
        """Fields form -> members form ``{"__key__": key, member name: bytes}`` (absent
        optional fields produce no member). Deterministic bytes.

        Raises:
            ValueError: :meth:`validate` found problems (all listed in the message).
        """
        problems = self.validate(sample)
        if problems:
            raise ValueError(f"{self.name} sample {sample.get('key')!r}: " + "; ".join(problems))
        fields = self.pack(dict(sample)) if self.pack else sample
        out: dict[str, bytes | str] = {"__key__": sample["key"]}
        for m in self.members:
            v = fields.get(m.field)
            if v is None:
                continue
            if m.per_view:
                for i, x in enumerate(v):
                    out[f"{i:0{VIEW_DIGITS}d}.{m.suffix}"] = m.codec.encode(x)
            else:
                out[m.suffix] = m.codec.encode(v)
        return out

    def decode(self, key: str, data: bytes) -> Any:
        """A webdataset decoder handler: ``wds.WebDataset(url).decode(schema.decode)``.

        Args:
            key: member name as webdataset passes it (``".target.png"``) or without the dot.
            data: the member's bytes.

        Returns:
            The decoded value (numpy array, dict, list or int), or None for a member this
            schema does not know (webdataset then tries its next handler).
        """
        hit = self.member_for(key)
        return None if hit is None else hit[0].codec.decode(data)

    def decode_sample(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Members form -> fields form: ``{"key": raw["__key__"], field: value}``; absent
        optional fields are None, per-view fields are lists indexed by view (None at a
        missing view). Values that are not bytes are taken as already decoded.

        Raises:
            ValueError: a required member is missing or a member does not decode.
        """
        out: dict[str, Any] = {"key": raw.get("__key__")}
        views: dict[str, dict[int, Any]] = {}
        for name, data in raw.items():
            if name.startswith("__") or (hit := self.member_for(name)) is None:
                continue
            mem, view = hit
            try:
                value = mem.codec.decode(data) if isinstance(data, (bytes, bytearray)) else data
            except Exception as exn:  # noqa: BLE001 (any decoder error -> one clear message)
                raise ValueError(f"{name}: does not decode as {mem.codec.name} "
                                 f"({type(exn).__name__}: {exn})") from exn
            if view is None:
                out[mem.field] = value
            else:
                views.setdefault(mem.field, {})[view] = value
        for field, by_view in views.items():
            out[field] = [by_view.get(i) for i in range(max(by_view) + 1)]
        missing = [m.suffix for m in self.members if m.required and out.get(m.field) is None]
        if missing:
            raise ValueError(f"sample {out['key']!r}: missing members {missing}")
        for m in self.members:
            out.setdefault(m.field, None)
        return self.unpack(out) if self.unpack else out


# ---------------------------------------------------------------------------- IVID pairs
def _ivid_rules(s: dict) -> list[str]:
    hw = s["target_depth"].shape
    problems = [f"{k}: shape {s[k].shape[:2]} != target_depth {hw}"
                for k in ("target", "cond", "cond_depth", "mask", "mask_rgb") if s[k].shape[:2] != hw]
    enc = s["camera"].get("depth_encoding")
    if not isinstance(enc, dict) or not {"near", "far"} <= enc.keys():
        problems.append("camera['depth_encoding'] missing; use shards.depth_encoding()")
    if not isinstance(s.get("sample_key"), str) or not s["sample_key"]:
        problems.append("sample_key: must be a non-empty str")
    return problems


def _ivid_pack(s: dict) -> dict:
    return {**s, "meta": {**s["meta"], "sample_key": s["sample_key"]}}


def _ivid_unpack(s: dict) -> dict:
    meta = s.get("meta")
    return {**s, "sample_key": meta.get("sample_key") if isinstance(meta, dict) else None}


def _ivid_members(depth: Codec, ext: str) -> tuple[Member, ...]:
    return (Member("target", "target.png", RGB8_PNG), Member("target_depth", f"target_depth.{ext}", depth),
            Member("cond", "cond.png", RGB8_PNG), Member("cond_depth", f"cond_depth.{ext}", depth),
            Member("mask", "mask.png", MASK_PNG), Member("mask_rgb", "mask_rgb.png", MASK_PNG),
            Member("camera", "camera.json", JSON_DICT), Member("meta", "meta.json", JSON_DICT),
            Member("pose", "pose.cls", CLS), Member("label", "label.cls", CLS, required=False))


#: One IVID training pair (DESIGN.md "Shard sample schema (IVID pair)"). Fields: ``key``
#: (``f"{sample_key}_{view:02d}"``), ``sample_key`` str (stored in ``meta.json``),
#: ``target``/``cond`` uint8 [H,W,3] RGB (``*.png``), ``target_depth``/``cond_depth`` uint16
#: [H,W] IVID z-buffer (:mod:`pipelines.depth_convention`; ``*.npy.gz``), ``mask``/``mask_rgb``
#: bool [H,W] (8-bit 0/255 PNG), ``camera`` dict with ``depth_encoding`` {near, far}
#: (``camera.json``), ``meta`` dict (``meta.json``), ``pose`` int (``pose.cls``), ``label``
#: int or None (``label.cls``, omitted when None).
IVID_PAIR = SampleSchema("ivid_pair/2", _ivid_members(U16_NPY_GZ, "npy.gz"), _ivid_rules,
                         _ivid_pack, _ivid_unpack)
#: Shard sets written before ``shards-2``: the same, with depth as 16-bit grayscale PNG.
IVID_PAIR_V1 = SampleSchema("ivid_pair/1", _ivid_members(U16_PNG, "png"), _ivid_rules,
                            _ivid_pack, _ivid_unpack)


# ---------------------------------------------------------------------------- viewsets
#: Required ``cams.npz`` arrays: leading dimension V, float64 except ``hw`` (integer).
VIEWSET_CAMS = {"w2c": (4, 4), "K": (3, 3), "hw": (2,), "crop_xywh": (4,), "scale": (2,)}


def _viewset_rules(s: dict) -> list[str]:
    v = len(s["rgb"])
    hws = [x.shape[:2] for x in s["rgb"]]
    problems = [f"{f}: {len(s[f])} views, rgb has {v}" for f in ("alpha", "depth", "depthmask", "views")
                if s.get(f) is not None and len(s[f]) != v]
    problems += [f"{f}[{i}]: shape {x.shape[:2]} != rgb {hws[i]}" for f in ("alpha", "depth", "depthmask")
                 if s.get(f) is not None and len(s[f]) == v for i, x in enumerate(s[f]) if x.shape[:2] != hws[i]]
    cams = s["cams"]
    for name, tail in VIEWSET_CAMS.items():
        a = cams.get(name)
        if a is None or a.shape != (v, *tail):
            problems.append(f"cams.{name}: must have shape {(v, *tail)}, got {getattr(a, 'shape', None)}")
        elif name == "hw" and (not np.issubdtype(a.dtype, np.integer) or a.tolist() != [list(h) for h in hws]):
            problems.append(f"cams.hw: must be integer and equal the rgb sizes {hws}, got {a.tolist()}")
        elif name != "hw" and (a.dtype != np.float64 or not np.isfinite(a).all()):
            problems.append(f"cams.{name}: must be finite float64")
    w2c = cams.get("w2c")
    if w2c is not None and w2c.shape == (v, 4, 4) and not np.array_equal(w2c[:, 3], np.tile([0., 0, 0, 1], (v, 1))):
        problems.append("cams.w2c: last row must be [0, 0, 0, 1]")
    if s.get("depth") is not None:
        scale = s["meta"].get("depth_scale")
        if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale) or scale <= 0:
            problems.append(f"meta.depth_scale: must be a finite number > 0 with depth, got {scale!r}")
    if not all(isinstance(x, dict) for x in s["views"]):
        problems.append("views: every entry must be a dict")
    return problems


#: One posed multi-view sequence (DESIGN.md "Viewset sample schema";
#: ``reference/multiview-formats.md`` 6.1). Fields: ``key``; per view ``v`` (member
#: ``f"{v:03d}.<suffix>"``): ``rgb`` uint8 [H,W,3] un-composited (``rgb.png``), ``alpha``
#: uint8 [H,W] soft foreground (``alpha.png``, optional), ``depth`` uint16 [H,W] with
#: z-depth = value * ``meta["depth_scale"]`` in canonical world units, 0 = invalid
#: (``depth.npy.gz``, optional), ``depthmask`` bool [H,W] (``depthmask.png``, optional);
#: ``cams`` dict of arrays (``cams.npz``: ``w2c`` [V,4,4] float64 OpenCV world-to-camera,
#: ``K`` [V,3,3] float64 in viewforge's pixel convention at the stored size, ``hw`` [V,2]
#: int, ``crop_xywh`` [V,4] float64 in source pixels, ``scale`` [V,2] float64 (sx, sy) source ->
#: stored; further arrays such as ``src_K``, ``src_hw`` allowed); ``views`` list of V dicts
#: (``views.json``); ``meta`` dict (``meta.json``; ``depth_scale`` required with depth).
VIEWSET = SampleSchema("viewset/1", (
    Member("rgb", "rgb.png", RGB8_PNG, per_view=True),
    Member("alpha", "alpha.png", GRAY8_PNG, required=False, per_view=True),
    Member("depth", "depth.npy.gz", U16_NPY_GZ, required=False, per_view=True),
    Member("depthmask", "depthmask.png", MASK_PNG, required=False, per_view=True),
    Member("cams", "cams.npz", NPZ), Member("views", "views.json", JSON_LIST),
    Member("meta", "meta.json", JSON_DICT)), _viewset_rules)

SCHEMAS: dict[str, SampleSchema] = {s.name: s for s in (IVID_PAIR, IVID_PAIR_V1, VIEWSET)}


def get_schema(name: str) -> SampleSchema:
    """The schema registered under a manifest's ``sample_schema`` name.

    Raises:
        ValueError: unknown name (lists the known ones).
    """
    try:
        return SCHEMAS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown sample_schema {name!r}; known: {sorted(SCHEMAS)}") from None
