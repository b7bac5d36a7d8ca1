"""Model readers: one tensor at a time, memory-mapped.

`open_source(path)` dispatches on what ``path`` is:

- a ``.safetensors`` file -> `SafetensorsSource`;
- a directory with config.json and model.safetensors or
  model.safetensors.index.json -> `HFDirectorySource`;
- a ``.gguf`` file -> `GGUFSource`;
- a pickle checkpoint (.bin, .pt, .pth, .ckpt) -> refused (`SourceError`):
  loading one can execute arbitrary code.

Every source lists `TensorInfo` values in file order with rows-first shapes,
reads one tensor as float32 (`read`) or as its original bytes (`read_raw`),
and hashes its files (`file_hashes`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from helix_framework.errors import SourceError
from helix_framework.sources.base import (
    FLOAT_DTYPES,
    PICKLE_REFUSAL,
    PICKLE_SUFFIXES,
    ModelSource,
    RawTensor,
    TensorInfo,
    sha256_file,
)
from helix_framework.sources.gguf_file import GGUFSource
from helix_framework.sources.hf_directory import HFDirectorySource
from helix_framework.sources.safetensors_file import SafetensorsSource

__all__ = [
    "FLOAT_DTYPES",
    "GGUFSource",
    "HFDirectorySource",
    "ModelSource",
    "RawTensor",
    "SafetensorsSource",
    "TensorInfo",
    "open_source",
    "sha256_file",
]

logger = logging.getLogger(__name__)


def open_source(path: str | os.PathLike[str]) -> ModelSource:
    """Open a model for reading, choosing the reader from what ``path`` is.

    Raises `SourceError` for a missing path, a pickle checkpoint (refused:
    unpickling can execute arbitrary code; convert to safetensors), an
    unknown file type, or a corrupt file (naming the file).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise SourceError("no such file or directory", path=str(p))
    if p.is_dir():
        return HFDirectorySource(p)
    if not p.is_file():
        # a FIFO would block the open, a device would read without end
        raise SourceError("not a regular file (a model is a file or a directory)", path=str(p))
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        return SafetensorsSource(p)
    if suffix == ".gguf":
        return GGUFSource(p)
    if suffix in PICKLE_SUFFIXES:
        raise SourceError(PICKLE_REFUSAL, path=str(p))
    try:
        with open(p, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise SourceError(f"cannot read file: {exc}", path=str(p)) from None
    if magic == b"GGUF":
        logger.info("%s has GGUF magic; reading as GGUF", p)
        return GGUFSource(p)
    if magic[:2] == b"PK" or magic[:1] == b"\x80":
        raise SourceError(PICKLE_REFUSAL + " (the file looks like a torch zip or pickle)", path=str(p))
    raise SourceError(
        "unsupported model file: expected a .safetensors file, a .gguf file or a Hugging Face "
        "directory (config.json + model.safetensors or model.safetensors.index.json)",
        path=str(p),
    )
