"""A ``.gguf`` file (memory-mapped; header by `gguf_header`, dequantization
by the ``gguf`` package).

GGUF stores dimensions reversed (``ne0`` first, the contiguous one); this
reader presents shapes rows-first like safetensors, so a linear layer is
``[out, in]``. Quantized types are dequantized to float32 with
`gguf.quants.dequantize`, in row chunks so the temporaries stay small.
``source_bits_per_weight`` is the type's true cost (type size x 8 / block
size: Q4_1 = 5.0, Q8_0 = 8.5). ``config`` is the metadata as a JSON-safe
dict, without the large tokenizer arrays (the full metadata is kept as
``metadata`` for code that needs them, e.g. the tokenizer).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from helix_framework.errors import SourceError
from helix_framework.sources.base import ModelSource, RawTensor, TensorInfo
from helix_framework.sources.gguf_header import GGUFFormatError, read_header

logger = logging.getLogger(__name__)

#: Arrays with more elements than this are left out of ``config``.
MAX_CONFIG_ARRAY = 1024
#: Metadata keys always left out of ``config`` (vocabulary-sized arrays).
DROPPED_KEYS = frozenset(
    {"tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.ggml.scores"}
)
#: Elements dequantized per chunk (bounds the dequantizer's temporaries).
CHUNK_ELEMENTS = 1 << 20
_INTEGER_TYPES = ("I8", "I16", "I32", "I64")
_FLOAT_VIEWS = {"F32": "<f4", "F16": "<f2", "F64": "<f8"}


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


class GGUFSource(ModelSource):
    """A GGUF file; tensors rows-first, quantized ones dequantized on read."""

    kind = "gguf"

    def __init__(self, path: Path):
        super().__init__(Path(path))
        try:
            import gguf
        except ImportError as exc:  # pragma: no cover - gguf is a dependency
            raise SourceError(f"reading GGUF needs the 'gguf' package ({exc}); pip install gguf", path=str(path)) from None
        self._gguf = gguf
        try:
            self._mapped = np.memmap(self.path, dtype=np.uint8, mode="r")
            header = read_header(self.path, self._mapped)
        except (GGUFFormatError, ValueError, OSError) as exc:
            raise SourceError(f"corrupt or unsupported GGUF file: {exc}", path=str(self.path)) from None
        size = self._mapped.shape[0]
        self.metadata = header.metadata
        config: dict[str, Any] = {}
        for key, value in header.metadata.items():
            if key in DROPPED_KEYS or (isinstance(value, list) and len(value) > MAX_CONFIG_ARRAY):
                logger.debug("%s: metadata %s left out of config", self.path.name, key)
                continue
            config[key] = _json_safe(value)
        self.config = config
        arch = config.get("general.architecture")
        self.architecture = arch if isinstance(arch, str) and arch else None
        self._tensors: dict[str, tuple[Any, np.ndarray]] = {}
        for t in header.tensors:
            try:
                qtype = gguf.GGMLQuantizationType(t.ggml_type)
            except ValueError:
                raise SourceError(f"unknown GGUF tensor type {t.ggml_type}", path=str(self.path), tensor=t.name) from None
            block, type_size = gguf.GGML_QUANT_SIZES[qtype]
            row = t.dims[0] if t.dims else 1
            if row % block:
                # rows must split into whole blocks, else the byte size and read() disagree
                raise SourceError(
                    f"ragged {qtype.name} data: row length {row} is not a multiple of the block size {block}",
                    path=str(self.path),
                    tensor=t.name,
                )
            shape = tuple(int(d) for d in reversed(t.dims))
            n_bytes = math.prod(t.dims) // block * type_size
            start = header.data_start + t.offset
            if start + n_bytes > size:
                raise SourceError(
                    f"truncated GGUF file: tensor data ends at byte {start + n_bytes}, file has {size}",
                    path=str(self.path),
                    tensor=t.name,
                )
            self._tensors[t.name] = (qtype, self._mapped[start : start + n_bytes])
            self._infos[t.name] = TensorInfo(
                name=t.name,
                dtype=qtype.name,
                shape=shape,
                source_bits_per_weight=type_size * 8 / block,
                file=str(self.path),
                nbytes=int(n_bytes),
            )
        logger.info("opened GGUF %s: %s, %d tensors", self.path, self.architecture, len(self._infos))

    def read(self, name: str) -> np.ndarray:
        """See `ModelSource.read`; quantized types are dequantized to float32."""
        info = self.tensor(name)
        qtype, raw = self._tensors[name]
        dtype = info.dtype
        if dtype in ("F32", "F16", "F64"):
            return raw.view(_FLOAT_VIEWS[dtype]).astype(np.float32).reshape(info.shape)
        if dtype in _INTEGER_TYPES:
            raise SourceError(
                f"dtype {dtype} cannot be read as float32 (it is an integer tensor); route it to passthrough",
                path=str(self.path),
                tensor=name,
            )
        out = np.empty(info.shape, dtype=np.float32)
        if out.size == 0:
            return out
        cols = info.shape[-1] if info.shape else 1
        block, type_size = self._gguf.GGML_QUANT_SIZES[qtype]
        data2 = np.asarray(raw).reshape(-1, cols // block * type_size)
        out2 = out.reshape(-1, cols)
        step = max(1, CHUNK_ELEMENTS // max(cols, 1))
        try:
            for i in range(0, data2.shape[0], step):
                out2[i : i + step] = self._gguf.quants.dequantize(data2[i : i + step], qtype)
        except NotImplementedError:
            raise SourceError(
                f"dtype {dtype} has no dequantizer in gguf {getattr(self._gguf, '__version__', '')}".rstrip(),
                path=str(self.path),
                tensor=name,
            ) from None
        return out

    def read_raw(self, name: str) -> RawTensor:
        """See `ModelSource.read_raw`: GGUF block bytes for quantized types."""
        info = self.tensor(name)
        return RawTensor(info.dtype, info.shape, np.asarray(self._tensors[name][1]))

    def close(self) -> None:
        """Drop the memory map."""
        self._tensors = {}
        self._mapped = None
