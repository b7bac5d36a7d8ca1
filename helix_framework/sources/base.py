"""The model-source contract and its value classes.

A `ModelSource` is an open model: a list of tensors (`TensorInfo`, in file
order, shapes rows-first like safetensors, i.e. ``[out, in]`` for a linear
layer) that can be read one at a time as float32 (`read`) or as their
original bytes (`read_raw`, for bit-identical passthrough). Files are
memory-mapped; reading one tensor touches only that tensor's bytes.

Subclasses (one module per format) fill in ``_infos`` (name -> TensorInfo in
file order) and implement `read` and `read_raw`.
"""

from __future__ import annotations

import abc
import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import attrs
import numpy as np

from helix_framework.errors import SourceError
from helix_framework.routing import block_count

logger = logging.getLogger(__name__)

#: Dtypes `read` converts to float32 (besides dequantized GGUF types).
FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")

#: File suffixes of pickle-based checkpoints, refused on sight.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")

PICKLE_REFUSAL = (
    "refusing to load a pickle-based checkpoint: unpickling can execute arbitrary code "
    "from the file. Convert it to safetensors first (for a transformers model: "
    "model.save_pretrained(out_dir, safe_serialization=True)) and open the result"
)


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in value)


@attrs.frozen
class TensorInfo:
    """One tensor of a source, as stored.

    ``dtype`` is the source dtype string ("F32", "BF16", "Q4_1", ...);
    ``shape`` is rows-first (GGUF's reversed dims are already un-reversed);
    ``source_bits_per_weight`` is the storage cost of one element in the
    source (16 for F16/BF16, 5.0 for GGUF Q4_1, 8.5 for Q8_0); ``file`` is
    the path of the file holding the tensor; ``nbytes`` its size there.
    """

    name: str
    dtype: str
    shape: tuple[int, ...] = attrs.field(converter=_shape)
    source_bits_per_weight: float | None
    file: str
    nbytes: int = 0

    @property
    def n_elements(self) -> int:
        """Number of elements (1 for a 0-D tensor, 0 if any dim is 0)."""
        return math.prod(self.shape)

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return len(self.shape)


class RawTensor(NamedTuple):
    """A tensor's original bytes: ``(dtype, shape, data)``.

    ``data`` is a read-only, flat uint8 view of the memory-mapped file (no
    copy); it stays valid while the source is open.
    """

    dtype: str
    shape: tuple[int, ...]
    data: np.ndarray


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Streamed SHA-256 of a file, lowercase hex (never loads the file)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        buf = bytearray(chunk)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


class DuplicateKey(ValueError):
    """A JSON object repeats a key (json keeps the last one silently)."""

    def __init__(self, key: str):
        self.key = key
        super().__init__(f"key {key!r} appears twice")


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey(key)
        out[key] = value
    return out


def parse_json(text: str | bytes, *, path: str, what: str) -> Any:
    """Parse a header or config JSON; every failure is one `SourceError`.

    Repeated keys are refused (the reference readers refuse them too, and a
    repeated tensor name would silently hide one tensor); nesting deeper than
    the interpreter's recursion limit and numbers past the integer digit
    limit are errors instead of tracebacks.
    """
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return json.loads(text, object_pairs_hook=_unique_pairs)
    except DuplicateKey as exc:
        raise SourceError(f"corrupt {what}: {exc}", path=path) from None
    except RecursionError:
        raise SourceError(f"corrupt {what}: JSON nested too deeply", path=path) from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise SourceError(f"corrupt {what}: not valid JSON ({exc})", path=path) from None


def bf16_to_float32(u16: np.ndarray) -> np.ndarray:
    """Bit-exact bfloat16 -> float32: the 16 bits become the high half."""
    out = u16.astype(np.uint32)
    out <<= 16
    return out.view(np.float32)


class ModelSource(abc.ABC):
    """An open model: tensors listed in file order, read one at a time.

    Attributes: ``path`` (what was opened), ``kind`` ("safetensors" |
    "hf_directory" | "gguf"), ``architecture`` (str or None), ``config``
    (JSON-safe dict: config.json or the GGUF metadata). Use as a context
    manager or call `close` to release the memory maps.
    """

    kind: str = ""

    def __init__(self, path: Path):
        self.path = path
        self.architecture: str | None = None
        self.config: dict[str, Any] = {}
        self._infos: dict[str, TensorInfo] = {}
        self._hashes: dict[str, str] | None = None

    # -- listing -------------------------------------------------------
    def tensors(self) -> list[TensorInfo]:
        """Every tensor of the source, in file order."""
        return list(self._infos.values())

    @property
    def n_blocks(self) -> int:
        """How many blocks the model has, from its tensor names (what a
        ``blocks:`` route rule counts from the end with)."""
        return block_count(self._infos)

    def tensor(self, name: str) -> TensorInfo:
        """The `TensorInfo` of ``name``; SourceError if there is none."""
        try:
            return self._infos[name]
        except KeyError:
            import difflib

            close = difflib.get_close_matches(name, list(self._infos), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else "; `helix tensors MODEL` lists them"
            raise SourceError(
                f"no such tensor (the source has {len(self._infos)} tensors){hint}",
                path=str(self.path),
                tensor=name,
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._infos

    def __iter__(self) -> Iterator[TensorInfo]:
        return iter(self.tensors())

    def __len__(self) -> int:
        return len(self._infos)

    # -- reading -------------------------------------------------------
    @abc.abstractmethod
    def read(self, name: str) -> np.ndarray:
        """The tensor as a new float32 array of its (rows-first) shape.

        F32/F16/BF16/F64 are converted exactly as numpy's astype would (BF16
        bit-exactly); quantized GGUF types are dequantized. Any other dtype
        raises SourceError naming the tensor.
        """

    @abc.abstractmethod
    def read_raw(self, name: str) -> RawTensor:
        """``(dtype, shape, data)`` with ``data`` the original bytes, uncopied."""

    def tokenizer_files(self) -> list[Path]:
        """Tokenizer files beside the weights (HF directories only; else empty)."""
        return []

    # -- hashing -------------------------------------------------------
    def _hashed_files(self) -> dict[str, Path]:
        """Relative name -> path of every file `file_hashes` covers."""
        return {Path(self.path).name: Path(self.path)}

    def file_hashes(self) -> dict[str, str]:
        """Streamed SHA-256 (lowercase hex) of each source file, by relative name.

        Computed once and cached for the life of the source.
        """
        if self._hashes is None:
            hashes = {}
            for rel, p in sorted(self._hashed_files().items()):
                logger.debug("hashing %s", p)
                hashes[rel] = sha256_file(p)
            self._hashes = hashes
        return dict(self._hashes)

    # -- lifetime ------------------------------------------------------
    def close(self) -> None:
        """Release memory maps. Arrays from `read_raw` must not be used after."""

    def __enter__(self) -> ModelSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.kind} {str(self.path)!r}: {len(self._infos)} tensors, architecture={self.architecture!r}>"
