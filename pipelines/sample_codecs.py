"""Member codecs of the shard sample schemas (:mod:`pipelines.sample_schema`): how one
member value becomes deterministic bytes and back, with its validation rule. PNG via
Pillow at a fixed zlib level, uint16 arrays as gzipped ``.npy`` with ``mtime=0`` (stock
webdataset's ``gzfilter`` + ``npy`` decoders read them exactly), ``.npz`` with fixed zip
timestamps, compact key-sorted JSON, integers as ``.cls`` text.
"""
from __future__ import annotations

import gzip
import io
import json
import zipfile
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from pipelines.images import decode_png, encode_png

PNG_COMPRESS_LEVEL = 6
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


# ---------------------------------------------------------------------------- codecs
@dataclass(frozen=True)
class Codec:
    """Encoding of one member value. ``check(value)`` returns a problem string or None;
    ``encode`` assumes a value that passed ``check``."""

    name: str
    encode: Callable[[Any], bytes]
    decode: Callable[[bytes], Any]
    check: Callable[[Any], str | None]


def _array_problem(v: Any, dtype: Any, ndim: int, channels: int | None = None) -> str | None:
    if not isinstance(v, np.ndarray) or v.dtype != dtype or v.ndim != ndim or \
            (channels is not None and v.shape[-1] != channels) or 0 in v.shape:
        want = f"{np.dtype(dtype)} [H,W{',%d' % channels if channels else ''}]"
        return f"must be {want}, got {getattr(v, 'dtype', type(v).__name__)} {getattr(v, 'shape', '')}"
    return None


def _png(arr: np.ndarray) -> bytes:
    return encode_png(np.ascontiguousarray(arr), PNG_COMPRESS_LEVEL)


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")),
                              version=(1, 0), allow_pickle=False)
    return buf.getvalue()


def _load_npy(data: bytes) -> np.ndarray:
    return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)


def _npy_gz(arr: np.ndarray) -> bytes:
    return gzip.compress(_npy(arr), compresslevel=6, mtime=0)


def _load_npy_gz(data: bytes) -> np.ndarray:
    return _load_npy(gzip.decompress(data))


def _npz(arrays: Mapping[str, np.ndarray]) -> bytes:
    """``np.savez`` layout (one ``<name>.npy`` per array, stored) with fixed zip timestamps:
    ``np.load`` / webdataset's ``npz`` decoder read it; equal arrays give equal bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", _ZIP_DATE), _npy(np.asarray(arrays[name])))
    return buf.getvalue()


def _load_npz(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _json_bytes(obj: Any) -> bytes:
    def default(o: Any) -> Any:
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, np.generic):
            return o.item()
        raise TypeError(f"not JSON-serialisable: {type(o).__name__}")
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=default).encode()


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _npz_problem(v: Any) -> str | None:
    if not isinstance(v, Mapping) or not all(isinstance(k, str) and isinstance(a, np.ndarray)
                                             and a.dtype != object for k, a in v.items()):
        return "must be a dict of str -> numeric numpy arrays"
    return None


RGB8_PNG = Codec("rgb8.png", _png, decode_png, lambda v: _array_problem(v, np.uint8, 3, 3))
GRAY8_PNG = Codec("gray8.png", _png, decode_png, lambda v: _array_problem(v, np.uint8, 2))
#: bool [H,W] stored as 8-bit 0/255; decoded as ``value > 127``.
MASK_PNG = Codec("mask.png", lambda v: _png(v.astype(np.uint8) * np.uint8(255)),
                 lambda b: decode_png(b) > 127, lambda v: _array_problem(v, np.bool_, 2))
#: uint16 [H,W] as gzipped ``.npy`` (webdataset's ``gzfilter`` + ``npy`` decoders read it).
U16_NPY_GZ = Codec("u16.npy.gz", _npy_gz, _load_npy_gz, lambda v: _array_problem(v, np.uint16, 2))
#: ivid_pair/1 depth (16-bit grayscale PNG): exact with PIL, clipped by webdataset's decoders.
U16_PNG = Codec("u16.png", _png, decode_png, lambda v: _array_problem(v, np.uint16, 2))
JSON_DICT = Codec("dict.json", _json_bytes, json.loads,
                  lambda v: None if isinstance(v, dict) else "must be a dict")
JSON_LIST = Codec("list.json", _json_bytes, json.loads,
                  lambda v: None if isinstance(v, list) else "must be a list")
CLS = Codec("int.cls", lambda v: str(int(v)).encode(), lambda b: int(b),
            lambda v: None if _is_int(v) else f"must be an int, got {type(v).__name__}")
NPZ = Codec("arrays.npz", _npz, _load_npz, _npz_problem)


# ---------------------------------------------------------------------------- schema
