"""The text-compressor contract.

A compressor shortens model context to a target length. A plugin registers
an instance of a `Compressor` subclass through
``helix_register_compressors(register)``.

Class attributes: ``name``, ``version``, ``override``.

``compress(text, target, content_type=None, question=None)`` returns a
`CompressionResult`: the text (never longer than ``target`` characters), the
ratio (output characters / input characters), the path that ran (e.g.
``"headroom.LogCompressor"`` or ``"truncate"``), whether it fell back to a
simpler path, and why.
"""

from __future__ import annotations

import os
import stat
from typing import ClassVar

import attrs

from helix_framework.errors import InputFileError

#: Default limit of `read_text_file` (``helix compress --max-bytes``).
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


@attrs.frozen
class CompressionResult:
    text: str
    ratio: float
    path: str
    fell_back: bool = False
    reason: str | None = None


class Compressor:
    """Base class of text compressors; see the module docstring."""

    name: ClassVar[str]
    version: ClassVar[str] = "0.0.0"
    override: ClassVar[bool] = False

    def compress(
        self, text: str, target: int, content_type: str | None = None, question: str | None = None
    ) -> CompressionResult:
        raise NotImplementedError


def ratio_of(original: str, compressed: str) -> float:
    """Output characters over input characters (1.0 for empty input)."""
    return len(compressed) / len(original) if original else 1.0


def read_text_file(path: str, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """The UTF-8 text of a regular file of at most ``max_bytes`` bytes.

    Anything else (a FIFO, a device such as /dev/zero, a directory) would
    block or read without end, so it is an `InputFileError`, as is a file
    over the limit; undecodable bytes become U+FFFD.
    """
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise InputFileError(f"not a regular file ({_kind(st.st_mode)}); only regular files are read", path=path)
        if st.st_size > max_bytes:
            raise InputFileError(f"{st.st_size} bytes is over the --max-bytes limit of {max_bytes}", path=path)
        # O_NONBLOCK: a FIFO swapped in after the check must not block the open
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise InputFileError("not a regular file; only regular files are read", path=path)
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise InputFileError(f"cannot read: {exc.strerror or exc}", path=path) from None
    if len(data) > max_bytes:  # it grew after the size check
        raise InputFileError(f"more than the --max-bytes limit of {max_bytes} bytes", path=path)
    return data.decode("utf-8", errors="replace")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a file"
