"""Built-in text compressor ``truncate``: the legacy baseline ``text[:target]``."""

from __future__ import annotations

from typing import ClassVar

from helix_framework.compressor import CompressionResult, Compressor, ratio_of

__all__ = ["TruncateCompressor"]


class TruncateCompressor(Compressor):
    """``truncate``: keep the first ``target`` characters; never falls back."""

    name: ClassVar[str] = "truncate"
    version: ClassVar[str] = "1.0.0"

    def compress(
        self, text: str, target: int, content_type: str | None = None, question: str | None = None
    ) -> CompressionResult:
        if isinstance(target, bool) or not isinstance(target, int) or target < 0:
            raise ValueError(f"target must be a non-negative number of characters; got {target!r}")
        out = text[:target]
        return CompressionResult(text=out, ratio=ratio_of(text, out), path="truncate", fell_back=False)
