"""The ``headroom`` compressor: dispatch by content type to headroom-ai's
compressors, falling back to the built-in ``truncate``.

Dispatch (content type given, else detected in this order): diff/patch ->
DiffCompressor, log -> LogCompressor, code -> CodeAwareCompressor (needs
tree-sitter; compressed Python must still parse with `ast`), JSON ->
SmartCrusher, prose -> KompressCompressor when its model is already on disk,
else TextCrusher.

It falls back to ``text[:target]`` (``fell_back=True`` with the reason) when
``HELIX_DISABLE_HEADROOM=1``, headroom-ai is not installed or cannot serve
the content type, the compressor raises (any BaseException except
KeyboardInterrupt and SystemExit, which propagate), returns empty text or
text no shorter than the input, or runs past ``time_limit`` seconds. Output
longer than the target is cut to it. Text that already fits is returned as
it is (path ``"passthrough"``).
"""

from __future__ import annotations

import os
import threading
from typing import Any, ClassVar

from helix_compressor_headroom import __version__
from helix_compressor_headroom.detect import detect_content_type, is_python, normalize_content_type, parse_python
from helix_compressor_headroom.engines import EngineUnavailable, Engines, default_engines
from helix_framework.builtins.compressors import TruncateCompressor
from helix_framework.compressor import CompressionResult, Compressor, ratio_of

__all__ = ["DISABLE_ENV", "HeadroomCompressor"]

#: Set to 1 (or true/yes/on) to force truncation.
DISABLE_ENV = "HELIX_DISABLE_HEADROOM"
_TRUE = frozenset({"1", "true", "yes", "on"})
_TRUNCATE = TruncateCompressor()


def _disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").strip().lower() in _TRUE


class HeadroomCompressor(Compressor):
    """See the module docstring. ``engines`` defaults to the process-wide
    lazy singletons; ``time_limit`` bounds one compression in seconds."""

    name: ClassVar[str] = "headroom"
    version: ClassVar[str] = __version__

    def __init__(self, *, engines: Engines | None = None, time_limit: float = 10.0):
        if not time_limit > 0:
            raise ValueError(f"time_limit must be positive seconds; got {time_limit!r}")
        self._engines = engines
        self.time_limit = float(time_limit)

    @property
    def engines(self) -> Engines:
        return self._engines if self._engines is not None else default_engines()

    def compress(
        self, text: str, target: int, content_type: str | None = None, question: str | None = None
    ) -> CompressionResult:
        if isinstance(target, bool) or not isinstance(target, int) or target < 0:
            raise ValueError(f"target must be a non-negative number of characters; got {target!r}")
        kind = normalize_content_type(content_type)
        if len(text) <= target:
            return CompressionResult(text=text, ratio=ratio_of(text, text), path="passthrough")
        if _disabled():
            return self._fallback(text, target, f"{DISABLE_ENV}=1")
        kind = kind or detect_content_type(text)
        status, value = self._run(kind, text, target, question)
        if status == "fallback":
            return self._fallback(text, target, value)
        engine, out = value
        if not isinstance(out, str):
            return self._fallback(text, target, f"{engine.path} returned {type(out).__name__}, not text")
        if not out.strip():
            return self._fallback(text, target, f"{engine.path} returned empty text")
        if out == text or len(out) >= len(text):
            return self._fallback(text, target, f"{engine.path} returned the input unchanged (or longer)")
        # cut first, then check: the reader gets the cut text, and cutting
        # compressed code that ran over the target can break its syntax
        out = out[:target]
        if engine.python_check and is_python(text):
            try:
                parse_python(out)
            except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
                return self._fallback(text, target, f"{engine.path} output does not parse as Python: {exc}")
        return CompressionResult(text=out, ratio=ratio_of(text, out), path=engine.path)

    def _run(self, kind: str, text: str, target: int, question: str | None) -> tuple[str, Any]:
        """Create (once) and run the engine in a worker thread bounded by the
        time limit. Returns ("ok", (engine, output)) or ("fallback", reason)."""
        box: dict[str, Any] = {}
        engines = self.engines

        def work() -> None:
            try:
                engine = engines.get(kind)
                box["engine"] = engine
                box["out"] = engine.run(text, target, question)
            except BaseException as exc:  # noqa: BLE001 - judged by the caller below
                box["exc"] = exc

        worker = threading.Thread(target=work, name=f"helix-headroom-{kind}", daemon=True)
        worker.start()
        worker.join(self.time_limit)
        if worker.is_alive():
            what = box["engine"].path if "engine" in box else f"creating the {kind} compressor"
            return "fallback", f"{what} exceeded the time limit of {self.time_limit:g} s"
        exc = box.get("exc")
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise exc
        if isinstance(exc, EngineUnavailable):
            return "fallback", str(exc)
        if exc is not None:
            where = box["engine"].path if "engine" in box else f"the {kind} compressor"
            return "fallback", f"{where} raised {type(exc).__name__}: {exc}"
        return "ok", (box["engine"], box["out"])

    @staticmethod
    def _fallback(text: str, target: int, reason: str) -> CompressionResult:
        out = _TRUNCATE.compress(text, target).text
        return CompressionResult(text=out, ratio=ratio_of(text, out), path="truncate", fell_back=True, reason=reason)
