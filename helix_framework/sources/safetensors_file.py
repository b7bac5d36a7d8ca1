"""A single ``.safetensors`` file, parsed and validated here, read through mmap.

Format: 8 bytes little-endian header length N, N bytes of JSON header
(``name -> {dtype, shape, data_offsets: [begin, end]}`` plus an optional
``__metadata__``), then the data; offsets are relative to the data start.
Everything in the header is checked when the file is opened (length within
the file, valid JSON, offsets within the data, sizes matching dtype x shape,
no overlaps), so a corrupt or truncated file is a `SourceError` naming the
file, never a crash later.
"""

from __future__ import annotations

import logging
import math
import mmap
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from helix_framework.errors import SourceError
from helix_framework.sources.base import ModelSource, RawTensor, TensorInfo, bf16_to_float32, parse_json

logger = logging.getLogger(__name__)

#: Bits per element of every safetensors dtype.
DTYPE_BITS: dict[str, float] = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}

_NUMPY = {"F32": "<f4", "F16": "<f2", "F64": "<f8"}

#: The reference implementation refuses headers over 100 MB.
MAX_HEADER = 100_000_000


class SafetensorsFile:
    """One parsed safetensors file: validated header, lazily mapped data."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.metadata: dict[str, str] = {}
        self.entries: dict[str, TensorInfo] = {}
        self._offsets: dict[str, tuple[int, int]] = {}
        self._mmap: np.memmap | None = None
        self._parse()

    def _fail(self, message: str, tensor: str | None = None) -> SourceError:
        return SourceError(message, path=str(self.path), tensor=tensor)

    def _parse(self) -> None:
        try:
            size = os.path.getsize(self.path)
            with open(self.path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise self._fail(f"not a safetensors file: {size} bytes is shorter than the 8-byte header length")
                (n,) = struct.unpack("<Q", head)
                if n > size - 8:
                    raise self._fail(
                        f"corrupt or truncated safetensors file: header length {n} exceeds the "
                        f"{size - 8} bytes after the length field"
                    )
                if n > MAX_HEADER:
                    raise self._fail(f"safetensors header of {n} bytes is over the {MAX_HEADER}-byte limit")
                raw = f.read(n)
        except OSError as exc:
            raise self._fail(f"cannot read file: {exc}") from None
        header = parse_json(raw, path=str(self.path), what="safetensors header")
        if not isinstance(header, dict):
            raise self._fail("corrupt safetensors header: the JSON is not an object")
        self._data_start = 8 + n
        data_size = size - self._data_start
        meta = header.pop("__metadata__", None)
        if meta is not None:
            if not isinstance(meta, dict):
                raise self._fail("corrupt safetensors header: __metadata__ is not an object")
            self.metadata = {str(k): str(v) for k, v in meta.items()}

        parsed = []
        for name, entry in header.items():
            if not isinstance(entry, dict):
                raise self._fail("corrupt safetensors header: entry is not an object", name)
            dtype = entry.get("dtype")
            shape = entry.get("shape")
            offs = entry.get("data_offsets")
            if not isinstance(dtype, str):
                raise self._fail("corrupt safetensors header: missing or non-string dtype", name)
            if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
                raise self._fail(f"corrupt safetensors header: bad shape {shape!r}", name)
            if (
                not isinstance(offs, list)
                or len(offs) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)
                or not 0 <= offs[0] <= offs[1]
            ):
                raise self._fail(f"corrupt safetensors header: bad data_offsets {offs!r}", name)
            begin, end = offs
            if end > data_size:
                raise self._fail(
                    f"corrupt or truncated safetensors file: data_offsets [{begin}, {end}] reach beyond "
                    f"the {data_size} bytes of data",
                    name,
                )
            numel = math.prod(shape)
            bits = DTYPE_BITS.get(dtype)
            if bits is not None:
                expected = math.ceil(numel * bits / 8)
                if end - begin != expected:
                    raise self._fail(
                        f"corrupt safetensors header: {end - begin} bytes stored but {dtype} x {shape} "
                        f"needs {expected}",
                        name,
                    )
            elif numel:
                bits = (end - begin) * 8 / numel
            parsed.append((begin, end, name, dtype, tuple(shape), bits))

        parsed.sort(key=lambda p: (p[0], p[1]))
        prev_end, prev_name = 0, None
        for begin, end, name, dtype, shape, bits in parsed:
            if begin < prev_end:
                raise self._fail(f"corrupt safetensors header: data overlaps tensor {prev_name!r}", name)
            if end > begin:
                prev_end, prev_name = end, name
            self._offsets[name] = (begin, end)
            self.entries[name] = TensorInfo(
                name=name,
                dtype=dtype,
                shape=shape,
                source_bits_per_weight=float(bits) if bits is not None else None,
                file=str(self.path),
                nbytes=end - begin,
            )
        logger.debug("parsed %s: %d tensors, %d data bytes", self.path, len(self.entries), data_size)

    def _map(self) -> np.memmap:
        if self._mmap is None:
            self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
        return self._mmap

    def raw(self, name: str) -> np.ndarray:
        """Flat read-only uint8 view of the tensor's bytes (no copy)."""
        begin, end = self._offsets[name]
        mm = self._map()
        return np.asarray(mm[self._data_start + begin : self._data_start + end])

    def read(self, name: str) -> np.ndarray:
        """The tensor converted to a new float32 array."""
        info = self.entries[name]
        raw = self.raw(name)
        if info.dtype == "F64":
            src = raw.view("<f8")
            with np.errstate(over="ignore"):
                out = src.astype(np.float32)
            overflow = int(np.count_nonzero(np.isinf(out) & np.isfinite(src)))
            if overflow:
                logger.warning("%s: tensor %r: %d F64 values overflow float32 and became inf", self.path, name, overflow)
        elif info.dtype in _NUMPY:
            out = raw.view(_NUMPY[info.dtype]).astype(np.float32)
        elif info.dtype == "BF16":
            out = bf16_to_float32(raw.view("<u2"))
        else:
            raise self._fail(
                f"dtype {info.dtype} cannot be read as float32 (supported: F32, F16, BF16, F64); "
                "route it to passthrough or convert it",
                name,
            )
        self._unmap_pages(name)
        return out.reshape(info.shape)

    def _unmap_pages(self, name: str) -> None:
        """Drop the tensor's pages from this process's resident set (they stay
        in the page cache): a model read tensor by tensor, block at a time,
        would otherwise keep every page it ever mapped counted as resident."""
        madvise = getattr(getattr(self._map(), "_mmap", None), "madvise", None)
        if madvise is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        begin, end = self._offsets[name]
        start = (self._data_start + begin) // mmap.PAGESIZE * mmap.PAGESIZE
        length = self._data_start + end - start
        if length > 0:
            madvise(mmap.MADV_DONTNEED, start, length)

    def close(self) -> None:
        """Drop the memory map (numpy closes it when the last view goes)."""
        self._mmap = None


class SafetensorsSource(ModelSource):
    """A single ``.safetensors`` file (architecture unknown: no config.json)."""

    kind = "safetensors"

    def __init__(self, path: Path):
        super().__init__(Path(path))
        self._file = SafetensorsFile(self.path)
        self._infos = dict(self._file.entries)
        self.metadata: dict[str, Any] = dict(self._file.metadata)
        logger.info("opened safetensors %s: %d tensors", self.path, len(self._infos))

    def read(self, name: str) -> np.ndarray:
        """See `ModelSource.read`."""
        self.tensor(name)
        return self._file.read(name)

    def read_raw(self, name: str) -> RawTensor:
        """See `ModelSource.read_raw`."""
        info = self.tensor(name)
        return RawTensor(info.dtype, info.shape, self._file.raw(name))

    def close(self) -> None:
        """See `ModelSource.close`."""
        self._file.close()
