"""Calibration artifacts: safetensors files, the manifest, verify.

Layout of an output directory::

    DIR/manifest.json                       written last, atomically
    DIR/tensors/<name>-<hash16>.safetensors one file per source tensor

Every file is written to a temporary name in the same directory and renamed
into place, and its name carries the first 16 hex digits of its SHA-256, so
a new run never overwrites a file an older manifest points at: until the new
manifest replaces the old one, the old result stays whole. After the swap,
only files this tool wrote (named by the old manifest or written by the run)
and the new manifest does not name are removed; anything else a user put in
the directory stays. Temporaries are named ``.helix-tmp-<pid>-*`` so a later
run can tell its own leftovers (those of dead processes) from anything else.

Safetensors files are written by a small streaming writer (header, then each
array's bytes straight from its buffer) so a memory-mapped passthrough tensor
is never copied into a second full buffer.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Mapping

import numpy as np

from helix_framework.errors import ArtifactError, OutputError, SourceError
from helix_framework.outlock import pid_alive
from helix_framework.sources.hf_directory import TOKENIZER_FILES

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
#: Bytes per element of every dtype decode writes back (F8 as stored bytes).
_ITEMSIZE = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
             "I8": 1, "U8": 1, "BOOL": 1, "F8_E5M2": 1, "F8_E4M3": 1}
WRITABLE_DTYPES = frozenset(_ITEMSIZE)


#: Plain file names `decode` copies from a Hugging Face source directory (nothing else).
SIDE_FILES = ("config.json", "generation_config.json", *TOKENIZER_FILES)
SOURCE_KINDS = frozenset({"safetensors", "hf_directory", "gguf"})
ROUTES = frozenset({"codec", "passthrough", "skip"})
#: Prefix of every temporary this module creates (then the creator's pid).
TMP_PREFIX = ".helix-tmp-"
_TMP_NAME = re.compile(re.escape(TMP_PREFIX) + r"(\d+)-")




def _mkstemp(directory: Path, suffix: str) -> tuple[int, str]:
    """A temporary file beside the destination, readable like a normal file."""
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f"{TMP_PREFIX}{os.getpid()}-", suffix=suffix)
    except OSError as exc:
        raise OutputError.from_oserror(directory, exc) from None
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return fd, tmp


def clean_temporaries(directory: Path) -> int:
    """Remove this tool's temporaries in ``directory`` whose process has died."""
    removed = 0
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for path in Path(directory).iterdir():
            m = _TMP_NAME.match(path.name)
            if m and not pid_alive(int(m.group(1))) and not path.is_symlink() and path.is_file():
                path.unlink(missing_ok=True)
                removed += 1
    return removed


def make_output_dir(path: Path, what: str = "") -> bool:
    """Create the output directory ``path`` (and its parents); True when it
    did not exist before. A path that is a file, lies under one, or cannot be
    created is one `OutputError`."""
    if path.exists() and not path.is_dir():
        raise OutputError(f"exists and is not a directory{what}", path=str(path))
    existed = path.is_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError.from_oserror(path, exc) from None
    return not existed


def rebuild_problem(dtype: str, shape: Any) -> str | None:
    """Why `decode` could not rebuild a tensor of this dtype and shape bit-exactly, or None."""
    if len(shape) > 64:
        return f"{len(shape)} dimensions (at most 64)"
    itemsize = _ITEMSIZE.get(dtype)
    if itemsize is None:
        if not _dequantizable(dtype):
            return f"dtype {dtype!r} is neither a safetensors dtype nor a GGML type with a dequantizer"
        itemsize = 4  # dequantized to F32
    if any(d >= 2**63 for d in shape) or math.prod(max(d, 1) for d in shape) * itemsize >= 2**63:
        return f"shape {_short(list(shape))} has more elements than an array can address"
    return None


def _dequantizable(dtype: str) -> bool:
    import gguf

    try:
        qtype = gguf.GGMLQuantizationType[dtype]
        block = gguf.GGML_QUANT_SIZES[qtype][1]
        gguf.quants.dequantize(np.zeros(block, np.uint8), qtype)
    except (KeyError, NotImplementedError, ValueError):
        return False
    return True


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
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError.from_oserror(directory, exc) from None
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

    def write(f: BinaryIO) -> None:
        for chunk in (len(head).to_bytes(8, "little"), head, *(p[3] for p in parts)):
            f.write(chunk)
            digest.update(chunk)

    def final_name() -> Path:
        return directory / f"{stem}-{digest.hexdigest()[:16]}.safetensors"

    final = atomic_write(directory, ".safetensors", write, final_name).name
    sha = digest.hexdigest()
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

    def write(f: BinaryIO) -> None:
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

    atomic_write(path.parent, ".safetensors", write, lambda: path, where=path)
    return digest.hexdigest()


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Read every array of an artifact file (memory-mapped, read-only).

    The header goes through the same checked parser as model sources; a file
    that does not parse is an `ArtifactError` naming it (artifacts come from a
    manifest that may have been edited)."""
    from helix_framework.sources.safetensors_file import SafetensorsFile

    try:
        f = SafetensorsFile(Path(path))
    except SourceError as exc:
        raise ArtifactError(f"bad safetensors file: {exc}") from None
    out = {}
    for name, info in f.entries.items():
        raw, dtype = f.raw(name), _SAFETENSORS_TO_NUMPY.get(info.dtype)
        out[name] = raw.view(dtype).reshape(info.shape) if dtype is not None else raw
    return out


def sha256_of(path: Path) -> str:
    from helix_framework.sources.base import sha256_file

    return sha256_file(path)


def write_json_atomic(path: Path, value: Any) -> None:
    """Write JSON to a temporary file beside ``path`` and rename it over."""
    text = json.dumps(value, indent=1, sort_keys=False, allow_nan=False) + "\n"
    atomic_write(path.parent, ".json", lambda f: f.write(text.encode("utf-8")), lambda: path, where=path)


def atomic_write(directory: Path, suffix: str, write: Callable[[BinaryIO], Any], final: Callable[[], Path],
                 where: Path | None = None) -> Path:
    """Run ``write`` on a fresh temporary in ``directory``, fsync it and rename
    it to ``final()``. On any failure the temporary is removed; an OSError
    (full disk, read-only) becomes an `OutputError` naming ``where`` (default
    the directory)."""
    fd, tmp = _mkstemp(directory, suffix)
    target = where or directory
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        dest = final()
        os.replace(tmp, dest)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError.from_oserror(target, exc) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of a calibration output, its structure checked (`check_manifest`)."""
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path}: no manifest (not a calibration output, or the run did not finish)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    except (ValueError, RecursionError) as exc:
        raise ArtifactError(f"{path}: invalid JSON: {str(exc)[:200] or 'too deeply nested'}") from None
    check_manifest(manifest, path)
    return manifest


_SHA256 = re.compile(r"[0-9a-f]{64}")
_ARTIFACT_FILE = re.compile(re.escape(TENSOR_DIR) + r"/[A-Za-z0-9_][A-Za-z0-9._-]*\.safetensors")


def check_manifest(manifest: Any, path: Path | str = MANIFEST) -> None:
    """Raise `ArtifactError` naming the first field of ``manifest`` that is not
    of the shape verify and decode rely on (types, artifact file names inside
    ``tensors/``, side-file names from `SIDE_FILES`, shapes decode can rebuild)."""

    def fail(where: str, what: str) -> ArtifactError:
        return ArtifactError(f"{path}: {where}: {what}")

    def obj(value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise fail(where, f"expected an object, got {type(value).__name__}")
        return value

    def text(value: Any, where: str) -> str:
        if not isinstance(value, str) or not value or "\0" in value:
            raise fail(where, f"expected a non-empty string, got {_short(value)}")
        return value

    def integer(value: Any, where: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise fail(where, f"expected a non-negative integer, got {_short(value)}")
        return value

    obj(manifest, "$")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise fail("$.schema_version", f"{_short(manifest.get('schema_version'))}, expected {SCHEMA_VERSION}")
    source = obj(manifest.get("source"), "$.source")
    if not os.path.isabs(text(source.get("path"), "$.source.path")):
        raise fail("$.source.path", f"not an absolute path: {_short(source['path'])}")
    if source.get("kind") not in SOURCE_KINDS:
        raise fail("$.source.kind", f"{_short(source.get('kind'))}, expected one of {', '.join(sorted(SOURCE_KINDS))}")
    side = source.get("tokenizer_files", [])
    if not isinstance(side, list):
        raise fail("$.source.tokenizer_files", "expected a list")
    for i, name in enumerate(side):
        if name not in SIDE_FILES:
            raise fail(f"$.source.tokenizer_files[{i}]", f"{_short(name)} is not a side file decode copies")
    text(obj(manifest.get("config"), "$.config").get("name"), "$.config.name")
    for key in ("codec", "rotation"):
        text(obj(manifest.get(key), f"$.{key}").get("name"), f"$.{key}.name")
    entries = manifest.get("tensors")
    if not isinstance(entries, list):
        raise fail("$.tensors", "expected a list")
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        at = f"$.tensors[{i}]"
        obj(entry, at)
        name = text(entry.get("name"), f"{at}.name")
        if name in seen:
            raise fail(f"{at}.name", f"tensor {name!r} listed twice")
        seen.add(name)
        if entry.get("route") not in ROUTES:
            raise fail(f"{at}.route", f"{_short(entry.get('route'))}, expected one of {', '.join(sorted(ROUTES))}")
        dtype = text(entry.get("dtype"), f"{at}.dtype")
        shape = entry.get("shape")
        if not isinstance(shape, list):
            raise fail(f"{at}.shape", "expected a list")
        for j, d in enumerate(shape):
            integer(d, f"{at}.shape[{j}]")
        if (problem := rebuild_problem("F32" if entry["route"] == "codec" else dtype, shape)) is not None:
            raise fail(at, f"tensor {name!r}: {problem}; decode cannot rebuild it")
        files = entry.get("files")
        if not isinstance(files, list) or not files:
            raise fail(f"{at}.files", "expected a non-empty list")
        for j, record in enumerate(files):
            rat = f"{at}.files[{j}]"
            obj(record, rat)
            if not isinstance(record.get("file"), str) or not _ARTIFACT_FILE.fullmatch(record["file"]):
                raise fail(f"{rat}.file", f"{_short(record.get('file'))} is not a file name inside {TENSOR_DIR}/")
            if not isinstance(record.get("sha256"), str) or not _SHA256.fullmatch(record["sha256"]):
                raise fail(f"{rat}.sha256", f"{_short(record.get('sha256'))} is not a SHA-256 in hex")
            integer(record.get("bytes"), f"{rat}.bytes")
        if entry["route"] == "codec":
            if "choice" in entry:
                choice = obj(entry["choice"], f"{at}.choice")
                for key in ("codec", "rotation"):
                    text(obj(choice.get(key), f"{at}.choice.{key}").get("name"), f"{at}.choice.{key}.name")
                text(obj(choice.get("config"), f"{at}.choice.config").get("name"), f"{at}.choice.config.name")
            meta = obj(entry.get("codec_meta"), f"{at}.codec_meta")
            obj(meta.get("state"), f"{at}.codec_meta.state")
            obj(meta.get("codes"), f"{at}.codec_meta.codes")
            obj(entry.get("rotation_meta"), f"{at}.rotation_meta")


def compressed_by(entry: Mapping[str, Any], manifest: Mapping[str, Any]) -> Mapping[str, Any]:
    """Where a codec entry's ``codec``, ``rotation`` and ``config`` are recorded:
    its route choice (a mixed-precision config), else the manifest's top level."""
    return entry.get("choice") or manifest


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


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
        elif path.is_symlink() or not path.is_file():
            problems.append(f"{record['file']}: missing or not a regular file")
        elif (actual := sha256_of(path)) != record["sha256"]:
            problems.append(f"{record['file']}: sha256 {actual} does not match the manifest's {record['sha256']}")
    return problems


def unreferenced(directory: Path, manifest: Mapping[str, Any]) -> list[str]:
    """Names (``tensors/...``) of entries in ``tensors/`` the manifest does not point at."""
    keep = {r["file"] for r in artifact_files(manifest)}
    tensor_dir = Path(directory) / TENSOR_DIR
    if not tensor_dir.is_dir():
        return []
    return sorted(f"{TENSOR_DIR}/{p.name}" for p in tensor_dir.iterdir() if f"{TENSOR_DIR}/{p.name}" not in keep)


def _inside(directory: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(directory.resolve())
        return True
    except ValueError:
        return False


def remove_owned(directory: Path, owned: Iterable[str], manifest: Mapping[str, Any] | None) -> int:
    """Delete the artifact files in ``owned`` (``tensors/...`` names this tool
    wrote) that ``manifest`` does not point at; nothing else is touched."""
    keep = {r["file"] for r in artifact_files(manifest)} if manifest else set()
    removed = 0
    for rel in sorted(set(owned) - keep):
        if _ARTIFACT_FILE.fullmatch(rel):
            path = Path(directory) / rel
            if path.is_file() and not path.is_symlink():
                path.unlink(missing_ok=True)
                removed += 1
    return removed


def refuse_run_files(directory: Path, out_file: Path, manifest: Mapping[str, Any], command: str) -> None:
    """Refuse an output file (of ``decode``, ``export``) that would overwrite the
    calibration run's own manifest or artifacts, the source model, or a directory."""
    def refuse(why: str) -> OutputError:
        return OutputError(f"refused as {command} output: {why}", path=str(out_file))

    if out_file.is_dir():
        raise refuse("is a directory; give a file name")
    target, run = out_file.resolve(), Path(directory).resolve()
    own = [Path(directory) / MANIFEST, *(Path(directory) / r["file"] for r in artifact_files(manifest))]
    if target == run / MANIFEST or target.is_relative_to(run / TENSOR_DIR) or any(_same_file(out_file, p) for p in own):
        raise refuse(f"it is a file of the calibration output {directory} itself")
    source = Path(manifest["source"]["path"])
    if manifest["source"]["kind"] == "hf_directory":
        if target.is_relative_to(source.resolve()):
            raise refuse(f"it is inside the source model directory {source}")
    elif target == source.resolve() or _same_file(out_file, source):
        raise refuse(f"it is the source model {source}")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def split_arrays(arrays: dict[str, np.ndarray]) -> tuple[dict, dict, dict]:
    """Artifact arrays back into (codes, state, rotation) dicts."""
    parts: dict[str, dict[str, np.ndarray]] = {"codes": {}, "state": {}, "rotation": {}}
    for key, value in arrays.items():
        prefix, _, rest = key.partition(".")
        parts[prefix][rest] = np.asarray(value)
    return parts["codes"], parts["state"], parts["rotation"]
