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

from typing import ClassVar

import attrs

from helix_framework.bounded_read import read_regular_file

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
    """The UTF-8 text of a regular file of at most ``max_bytes`` bytes
    (`InputFileError` otherwise); undecodable bytes become U+FFFD."""
    return read_regular_file(path, max_bytes, limit_name="--max-bytes limit").decode("utf-8", errors="replace")
