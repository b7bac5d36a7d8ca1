"""A fast reader of the GGUF header: metadata and tensor directory.

`gguf.GGUFReader` builds a numpy view for every part of every field; on
SmolLM2's 49k-token vocabulary that took 5-8 s per open. This walks the
header once with `struct` and `numpy.frombuffer` (about 0.1 s) and leaves the
tensor data memory-mapped. Format: GGUF v2/v3 (magic, version, tensor count,
key-value count, key-values, tensor infos, aligned data).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from helix_framework.errors import GGUFFormatError

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
#: Arrays of arrays nested deeper than this are refused.
MAX_ARRAY_DEPTH = 4

# value type -> (struct format, numpy dtype)
_SCALARS = {0: ("<B", "<u1"), 1: ("<b", "<i1"), 2: ("<H", "<u2"), 3: ("<h", "<i2"), 4: ("<I", "<u4"),
            5: ("<i", "<i4"), 6: ("<f", "<f4"), 7: ("<?", "?"), 10: ("<Q", "<u8"), 11: ("<q", "<i8"), 12: ("<d", "<f8")}
_STRING, _ARRAY, _UINT32 = 8, 9, 4
_TYPE_NAMES = {0: "uint8", 1: "int8", 2: "uint16", 3: "int16", 4: "uint32", 5: "int32", 6: "float32", 7: "bool",
               8: "string", 9: "array", 10: "uint64", 11: "int64", 12: "float64"}

# The fewest bytes one item can take; counts read from the file are checked
# against the bytes left before anything is allocated for them.
_MIN_ARRAY_ITEM = {_STRING: 8, _ARRAY: 4 + 8}
_MIN_KV = 8 + 4 + 1  # key length, value type, a one-byte value
_MIN_TENSOR = 8 + 4 + 4 + 8  # name length, n_dims, type, offset




@attrs.frozen
class GGUFTensorEntry:
    name: str
    dims: tuple[int, ...]  # GGUF order: ne0 (contiguous) first
    ggml_type: int
    offset: int  # relative to the start of the data section


@attrs.frozen
class GGUFHeader:
    version: int
    metadata: dict[str, Any]
    tensors: list[GGUFTensorEntry]
    data_start: int


class _Cursor:
    def __init__(self, buf: memoryview):
        self.buf = buf
        self.pos = 0

    def take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise GGUFFormatError(f"header ends early at byte {self.pos}")
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        n = self.take("<Q")
        if self.pos + n > len(self.buf):
            raise GGUFFormatError(f"string of {n} bytes runs past the end of the file at byte {self.pos}")
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return raw.decode("utf-8", "replace")

    def count(self, n: int, item_bytes: int, what: str) -> int:
        """``n`` if ``n`` items of at least ``item_bytes`` each fit in the bytes left."""
        left = len(self.buf) - self.pos
        if n * item_bytes > left:
            raise GGUFFormatError(f"{what} {n} cannot fit in the {left} bytes left at byte {self.pos}")
        return n

    def value(self, vtype: int, key: str, depth: int = 0) -> Any:
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, count = self.take("<I"), self.take("<Q")
            if etype == _ARRAY and depth + 1 >= MAX_ARRAY_DEPTH:
                raise GGUFFormatError(f"metadata {key!r}: arrays nested more than {MAX_ARRAY_DEPTH} deep")
            if etype in _SCALARS:
                dtype = np.dtype(_SCALARS[etype][1])
                self.count(count, dtype.itemsize, f"metadata {key!r}: array of")
                arr = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
                self.pos += dtype.itemsize * count
                return arr.tolist()
            if etype not in _MIN_ARRAY_ITEM:
                raise GGUFFormatError(f"metadata {key!r}: unknown array item type {etype} at byte {self.pos}")
            self.count(count, _MIN_ARRAY_ITEM[etype], f"metadata {key!r}: array of")
            return [self.value(etype, key, depth + 1) for _ in range(count)]
        if vtype not in _SCALARS:
            raise GGUFFormatError(f"metadata {key!r}: unknown value type {vtype} at byte {self.pos}")
        return self.take(_SCALARS[vtype][0])


def read_header(path: str | Path, mapped: np.ndarray | None = None) -> GGUFHeader:
    """Parse the header of a GGUF file (``mapped``: its bytes, memory-mapped)."""
    data = mapped if mapped is not None else np.memmap(path, dtype=np.uint8, mode="r")
    buf = memoryview(data)
    if bytes(buf[:4]) != MAGIC:
        raise GGUFFormatError("not a GGUF file (bad magic)")
    cur = _Cursor(buf)
    cur.pos = 4
    version = cur.take("<I")
    if version not in (2, 3):
        raise GGUFFormatError(f"GGUF version {version} is not supported (2 and 3 are)")
    n_tensors, n_kv = cur.take("<Q"), cur.take("<Q")
    cur.count(n_tensors, _MIN_TENSOR, "tensor count")
    cur.count(n_kv, _MIN_KV, "metadata count")
    metadata: dict[str, Any] = {}
    alignment = DEFAULT_ALIGNMENT
    for _ in range(n_kv):
        key = cur.string()
        if key in metadata:
            raise GGUFFormatError(f"metadata key {key!r} appears twice")
        vtype = cur.take("<I")
        metadata[key] = cur.value(vtype, key)
        if key == "general.alignment":
            alignment = _alignment(vtype, metadata[key])
    tensors = []
    names: set[str] = set()
    for _ in range(n_tensors):
        name = cur.string()
        if name in names:
            raise GGUFFormatError(f"tensor {name!r} appears twice in the tensor directory")
        names.add(name)
        n_dims = cur.take("<I")
        if n_dims > 8:
            raise GGUFFormatError(f"tensor {name!r} claims {n_dims} dimensions")
        dims = tuple(cur.take("<Q") for _ in range(n_dims))
        entry = GGUFTensorEntry(name, dims, cur.take("<I"), cur.take("<Q"))
        if entry.offset % alignment:
            raise GGUFFormatError(
                f"tensor {name!r}: data offset {entry.offset} is not a multiple of the alignment {alignment}"
            )
        tensors.append(entry)
    data_start = -(-cur.pos // alignment) * alignment
    return GGUFHeader(version, metadata, tensors, data_start)


def _alignment(vtype: int, value: Any) -> int:
    """``general.alignment``: a uint32 power of two, as the reference readers require."""
    if vtype != _UINT32 or value <= 0 or value & (value - 1):
        shown = "an array" if vtype == _ARRAY else f"{_TYPE_NAMES.get(vtype, vtype)} {value!r}"
        raise GGUFFormatError(f"general.alignment must be a uint32 power of two, got {shown}")
    return value
