"""Lazy, thread-safe adapters around headroom-ai's compressors.

`Engines.get(kind)` returns an `Engine` for a content type, creating the
headroom compressor behind it once, on first use, under a lock; later calls
(from any thread) reuse it. A kind that cannot be served (headroom-ai not
installed, tree-sitter missing, a constructor that raised) raises
`EngineUnavailable` with the reason, and that verdict is cached too.

Before headroom is first imported, `apply_offline_env` switches off every
path by which it could reach the network or the user's home directory
(model-hub downloads, the telemetry beacon, the update check, persistent
stores); every compressor is created with CCR (compress-cache-retrieve,
which writes ~/.headroom/ccr_store.db and appends retrieval markers) off.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Callable

import attrs

__all__ = ["OFFLINE_ENV", "Engine", "EngineUnavailable", "Engines", "apply_offline_env", "default_engines"]

#: Set (overwriting) before headroom is imported: no hub, no beacon, no telemetry, no state.
OFFLINE_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HEADROOM_OFFLINE": "1",
    "HEADROOM_BEACON": "off",
    "HEADROOM_TELEMETRY": "off",
    "HEADROOM_STATELESS": "1",
    "DO_NOT_TRACK": "1",
}

#: The Kompress model; used only when it is already in the local hub cache.
KOMPRESS_MODEL_ID = "chopratejas/kompress-v2-base"


def apply_offline_env() -> None:
    """Put `OFFLINE_ENV` into os.environ (idempotent)."""
    for key, value in OFFLINE_ENV.items():
        os.environ[key] = value


class EngineUnavailable(Exception):
    """A content type cannot be served by headroom here; the message says why."""


@attrs.frozen
class Engine:
    """One headroom compressor behind a uniform call.

    ``run(text, target, question)`` returns headroom's compressed text;
    ``path`` names it (``"headroom.LogCompressor"``); ``python_check`` asks
    the bridge to verify that compressed Python still parses.
    """

    path: str
    run: Callable[[str, int, str | None], str]
    python_check: bool = False


def _import_transforms() -> Any:
    apply_offline_env()
    try:
        import headroom.transforms as transforms
    except ImportError as exc:
        raise EngineUnavailable(f"headroom-ai is not installed ({exc})") from None
    return transforms


def _build_diff() -> Engine:
    t = _import_transforms()
    comp = t.DiffCompressor(t.DiffCompressorConfig(enable_ccr=False))

    def run(text: str, target: int, question: str | None) -> str:
        if text.startswith("diff --git ") or "\ndiff --git " in text:
            return comp.compress(text, context=question or "").compressed
        # DiffCompressor leaves a plain `diff -u` untouched without a git
        # header: add one for the call and take it off the result.
        header = "diff --git a/file b/file\n"
        out = comp.compress(header + text, context=question or "").compressed
        return out[len(header):] if out.startswith(header) else out

    return Engine("headroom.DiffCompressor", run)


def _build_log() -> Engine:
    t = _import_transforms()
    comp = t.LogCompressor(t.LogCompressorConfig(enable_ccr=False))
    return Engine("headroom.LogCompressor", lambda text, target, q: comp.compress(text, context=q or "").compressed)


def _build_code() -> Engine:
    t = _import_transforms()
    if not t.is_tree_sitter_available():
        raise EngineUnavailable("tree-sitter is not installed (pip install 'headroom-ai[code]')")
    comp = t.CodeAwareCompressor(t.CodeCompressorConfig(enable_ccr=False, fallback_to_kompress=False))

    def run(text: str, target: int, question: str | None) -> str:
        result = comp.compress(text, context=question or "")
        if not result.syntax_valid:
            raise ValueError("CodeAwareCompressor reports its output as syntactically invalid")
        return result.compressed

    return Engine("headroom.CodeAwareCompressor", run, python_check=True)


def _build_json() -> Engine:
    t = _import_transforms()
    from headroom.config import CCRConfig

    comp = t.SmartCrusher(t.SmartCrusherConfig(), ccr_config=CCRConfig(enabled=False, inject_retrieval_marker=False))
    return Engine("headroom.SmartCrusher", lambda text, target, q: comp.crush(text, query=q or "").compressed)


def _kompress_on_disk() -> bool:
    """The Kompress model is already in the local hub cache (never downloads)."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    repo = "models--" + KOMPRESS_MODEL_ID.replace("/", "--")
    return (Path(constants.HF_HUB_CACHE) / repo / "snapshots").is_dir()


def _build_prose() -> Engine:
    t = _import_transforms()
    if _kompress_on_disk():
        try:
            from headroom.transforms.kompress_compressor import KompressCompressor, KompressConfig

            komp = KompressCompressor(KompressConfig(enable_ccr=False, device="cpu"))
            komp.preload(allow_download=False)
            return Engine("headroom.KompressCompressor", lambda text, target, q: komp.compress(text, context=q or "").compressed)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:  # noqa: BLE001 - e.g. KompressModelNotCached, OfflineEgressBlocked
            pass  # a partial or unusable cache: TextCrusher below
    from headroom.transforms.text_crusher import TextCrusher, TextCrusherConfig

    comp = TextCrusher(TextCrusherConfig())

    def run(text: str, target: int, question: str | None) -> str:
        ratio = min(1.0, max(0.01, target / max(1, len(text))))
        return comp.compress(text, question or "", ratio).compressed

    del t
    return Engine("headroom.TextCrusher", run)


BUILDERS: dict[str, Callable[[], Engine]] = {
    "diff": _build_diff,
    "log": _build_log,
    "code": _build_code,
    "json": _build_json,
    "prose": _build_prose,
}


class Engines:
    """Lazily created engines, one per content type, shared by all threads."""

    def __init__(self, builders: dict[str, Callable[[], Engine]] | None = None):
        self._builders = dict(BUILDERS if builders is None else builders)
        self._lock = threading.Lock()
        self._made: dict[str, Engine | EngineUnavailable] = {}
        self.created: dict[str, int] = {}  # how often each builder ran (tests: exactly once)

    def get(self, kind: str) -> Engine:
        made = self._made.get(kind)
        if made is None:
            with self._lock:
                made = self._made.get(kind)
                if made is None:
                    made = self._build(kind)
                    self._made[kind] = made
        if isinstance(made, EngineUnavailable):
            raise made
        return made

    def _build(self, kind: str) -> Engine | EngineUnavailable:
        self.created[kind] = self.created.get(kind, 0) + 1
        builder = self._builders.get(kind)
        if builder is None:
            return EngineUnavailable(f"no headroom compressor for content type {kind!r}")
        try:
            return builder()
        except EngineUnavailable as exc:
            return exc
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - OfflineEgressBlocked derives from BaseException
            return EngineUnavailable(f"creating the {kind} compressor failed: {type(exc).__name__}: {exc}")


_DEFAULT: Engines | None = None
_DEFAULT_LOCK = threading.Lock()


def default_engines() -> Engines:
    """The process-wide engines, created on first use."""
    global _DEFAULT
    if _DEFAULT is None:
        with _DEFAULT_LOCK:
            if _DEFAULT is None:
                _DEFAULT = Engines()
    return _DEFAULT
