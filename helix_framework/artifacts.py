"""Calibration artifacts: safetensors files, the manifest, verify.

Layout of an output directory::

    DIR/manifest.json                       written last, atomically
    DIR/tensors/<name>-<hash16>.safetensors one file per source tensor

Every file is written to a temporary name in the same directory and renamed
into place, and its name carries the first 16 hex digits of its SHA-256, so
a new run never overwrites a file an older manifest points at: until the new
manifest replaces the old one, the old result stays whole. Files no manifest
refers to are removed after the swap.

Safetensors files are written by a small streaming writer (header, then each
array's bytes straight from its buffer) so a memory-mapped passthrough tensor
is never copied into a second full buffer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from helix_framework.errors import HelixError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
TENSOR_DIR = "tensors"
SCHEMA_VERSION = 1

_NUMPY_DTYPES = {
    np.dtype(np.float32): "F32",
    np.dtype(np.float16): "F16",
    np.dtype(np.float64): "F64",
    np.dtype(np.int8): "I8",
    np.dtype(np.uint8): "U8",
    np.dtype(np.int16): "I16",
    np.dtype(np.uint16): "U16",
    np.dtype(np.int32): "I32",
    np.dtype(np.uint32): "U32",
    np.dtype(np.int64): "I64",
    np.dtype(np.uint64): "U64",
    np.dtype(np.bool_): "BOOL",
}
_SAFETENSORS_TO_NUMPY = {v: k for k, v in _NUMPY_DTYPES.items()}
#: Dtype tags safetensors can hold (BF16 has no numpy dtype: read back as raw bytes).
SAFETENSORS_DTYPES = frozenset({*_SAFETENSORS_TO_NUMPY, "BF16"})
_ITEMSIZE = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
             "I8": 1, "U8": 1, "BOOL": 1}


class ArtifactError(HelixError):
    """An artifact directory is missing, incomplete or does not match its manifest."""


def _mkstemp(directory: Path, suffix: str) -> tuple[int, str]:
    """A temporary file beside the destination, readable like a normal file."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=suffix)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return fd, tmp


def sanitize(name: str) -> str:
    """A file-name stem for a tensor name: only [A-Za-z0-9._-], never a path.

    A short hash of the original name keeps two names that sanitise alike
    apart (``a/b`` and ``a_b``).
    """
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".-") or "tensor"
    return f"{stem[:120]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def _raw(value: Any) -> tuple[str, list[int], memoryview]:
    """(safetensors dtype, shape, flat byte view) of an array or a raw tensor."""
    if isinstance(value, tuple) and len(value) == 3:  # RawTensor(dtype, shape, data)
        dtype, shape, data = value
        return dtype, [int(s) for s in shape], memoryview(np.ascontiguousarray(data)).cast("B")
    arr = np.asarray(value)
    if arr.dtype not in _NUMPY_DTYPES:
        raise ArtifactError(f"cannot store dtype {arr.dtype} in safetensors")
    arr = np.ascontiguousarray(arr)
    return _NUMPY_DTYPES[arr.dtype], list(arr.shape), memoryview(arr.reshape(-1)).cast("B") if arr.size else memoryview(b"")


def write_safetensors(
    directory: Path, stem: str, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None
) -> tuple[str, str, int]:
    """Stream ``tensors`` into ``directory/<stem>-<sha16>.safetensors`` atomically.

    Values are numpy arrays or ``(dtype, shape, uint8 buffer)`` triples.
    Returns (file name, SHA-256, size in bytes).
    """
    directory.mkdir(parents=True, exist_ok=True)
    parts = [(name, *_raw(value)) for name, value in sorted(tensors.items())]
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, dtype, shape, data in parts:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + data.nbytes]}
        offset += data.nbytes
    head = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    head += b" " * (-len(head) % 8)
    digest = hashlib.sha256()
    fd, tmp = _mkstemp(directory, ".safetensors")
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in (len(head).to_bytes(8, "little"), head, *(p[3] for p in parts)):
                f.write(chunk)
                digest.update(chunk)
            f.flush()
            os.fsync(f.fileno())
        sha = digest.hexdigest()
        final = f"{stem}-{sha[:16]}.safetensors"
        os.replace(tmp, directory / final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return final, sha, 8 + len(head) + offset


def write_safetensors_stream(
    path: Path,
    specs: list[tuple[str, str, list[int]]],
    produce: Any,
    metadata: Mapping[str, str] | None = None,
) -> str:
    """Write a (large) safetensors file one tensor at a time, atomically.

    ``specs`` lists (name, dtype, shape) in file order; ``produce(name)``
    returns that tensor's array (or raw triple) when its turn comes, so only
    one tensor is in memory. Returns the SHA-256.
    """
    header: dict[str, Any] = {"__metadata__": {str(k): str(v) for k, v in (metadata or {}).items()}}
    offset = 0
    for name, dtype, shape in specs:
        nbytes = _ITEMSIZE[dtype] * int(np.prod(shape, dtype=np.int64))
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    digest = hashlib.sha256()
    fd, tmp = _mkstemp(path.parent, ".safetensors")
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in (len(head).to_bytes(8, "little"), head):
                f.write(chunk)
                digest.update(chunk)
            for name, dtype, _shape in specs:
                got_dtype, _got_shape, data = _raw(produce(name))
                start, end = header[name]["data_offsets"]
                if got_dtype != dtype or data.nbytes != end - start:
                    raise ArtifactError(f"tensor {name!r}: produced {got_dtype} of {data.nbytes} bytes, "
                                        f"expected {dtype} of {end - start}")
                f.write(data)
                digest.update(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest.hexdigest()


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Read every array of an artifact file (memory-mapped, read-only)."""
    data = np.memmap(path, dtype=np.uint8, mode="r")
    if data.size < 8:
        raise ArtifactError(f"{path}: truncated safetensors file")
    n = int.from_bytes(bytes(data[:8]), "little")
    if n > data.size - 8:
        raise ArtifactError(f"{path}: header length {n} beyond the file")
    try:
        header = json.loads(bytes(data[8 : 8 + n]))
    except ValueError as exc:
        raise ArtifactError(f"{path}: bad safetensors header: {exc}") from None
    header.pop("__metadata__", None)
    out = {}
    for name, spec in header.items():
        start, end = spec["data_offsets"]
        dtype = _SAFETENSORS_TO_NUMPY.get(spec["dtype"])
        view = data[8 + n + start : 8 + n + end]
        out[name] = view.view(dtype).reshape(spec["shape"]) if dtype is not None else view
    return out


def sha256_of(path: Path) -> str:
    from helix_framework.sources.base import sha256_file

    return sha256_file(path)


def write_json_atomic(path: Path, value: Any) -> None:
    """Write JSON to a temporary file beside ``path`` and rename it over."""
    fd, tmp = _mkstemp(path.parent, ".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(value, f, indent=1, sort_keys=False, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_manifest(directory: Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path}: no manifest (not a calibration output, or the run did not finish)") from None
    except ValueError as exc:
        raise ArtifactError(f"{path}: invalid JSON: {exc}") from None
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ArtifactError(f"{path}: schema_version {manifest.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    return manifest


def artifact_files(manifest: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    """Every {file, sha256, bytes} record the manifest points at."""
    for entry in manifest.get("tensors", []):
        yield from entry.get("files", [])


def verify(directory: Path) -> list[str]:
    """Re-hash every artifact file; return one problem line per bad file."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    problems = []
    for record in artifact_files(manifest):
        path = directory / record["file"]
        if not _inside(directory, path):
            problems.append(f"{record['file']}: path escapes the output directory")
        elif not path.is_file():
            problems.append(f"{record['file']}: missing")
        elif (actual := sha256_of(path)) != record["sha256"]:
            problems.append(f"{record['file']}: sha256 {actual} does not match the manifest's {record['sha256']}")
    return problems


def _inside(directory: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(directory.resolve())
        return True
    except ValueError:
        return False


def remove_unreferenced(directory: Path, manifest: Mapping[str, Any]) -> int:
    """Delete tensor files (and stale temporaries) no manifest refers to."""
    keep = {Path(r["file"]).name for r in artifact_files(manifest)}
    removed = 0
    tensor_dir = directory / TENSOR_DIR
    if tensor_dir.is_dir():
        for path in tensor_dir.iterdir():
            if path.name not in keep and path.suffix == ".safetensors":
                path.unlink(missing_ok=True)
                removed += 1
    return removed
