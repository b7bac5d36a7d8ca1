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

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# value type -> (struct format, numpy dtype)
_SCALARS = {0: ("<B", "<u1"), 1: ("<b", "<i1"), 2: ("<H", "<u2"), 3: ("<h", "<i2"), 4: ("<I", "<u4"),
            5: ("<i", "<i4"), 6: ("<f", "<f4"), 7: ("<?", "?"), 10: ("<Q", "<u8"), 11: ("<q", "<i8"), 12: ("<d", "<f8")}
_STRING, _ARRAY = 8, 9


class GGUFFormatError(ValueError):
    """The bytes are not a GGUF header this reader understands."""


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

    def value(self, vtype: int) -> Any:
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, count = self.take("<I"), self.take("<Q")
            if etype == _STRING:
                return [self.string() for _ in range(count)]
            if etype in _SCALARS:
                dtype = np.dtype(_SCALARS[etype][1])
                end = self.pos + dtype.itemsize * count
                if end > len(self.buf):
                    raise GGUFFormatError(f"array of {count} items runs past the end of the file")
                arr = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
                self.pos = end
                return arr.tolist()
            return [self.value(etype) for _ in range(count)]
        if vtype not in _SCALARS:
            raise GGUFFormatError(f"unknown metadata value type {vtype} at byte {self.pos}")
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
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string()
        metadata[key] = cur.value(cur.take("<I"))
    tensors = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.take("<I")
        if n_dims > 8:
            raise GGUFFormatError(f"tensor {name!r} claims {n_dims} dimensions")
        dims = tuple(cur.take("<Q") for _ in range(n_dims))
        tensors.append(GGUFTensorEntry(name, dims, cur.take("<I"), cur.take("<Q")))
    alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT)) or DEFAULT_ALIGNMENT
    data_start = -(-cur.pos // alignment) * alignment
    return GGUFHeader(version, metadata, tensors, data_start)
