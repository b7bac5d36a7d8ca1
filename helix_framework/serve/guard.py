"""The safety edge of `helix serve`: roots, body size, error bodies.

Every error a client sees is `RequestError`: an HTTP status, one message and
the key path of the request field it concerns. Library errors are mapped
here (a `ConfigError` keeps its path and line; `OutputLocked` is 409), and
anything unexpected is a 500 with its class name only, never a traceback.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from helix_framework.errors import ConfigError, HelixError, OutputLocked

MAX_BODY_BYTES = 1 << 20
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


class RequestError(Exception):
    """An HTTP error with a JSON body ``{"error", "path"[, "line"]}``."""

    def __init__(self, status: int, message: str, path: str | None = None, line: int | None = None):
        super().__init__(message)
        self.status, self.message, self.path, self.line = status, message, path, line

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.message, "path": self.path}
        if self.line is not None:
            out["line"] = self.line
        return out


def describe(exc: BaseException, path: str | None = None) -> RequestError:
    """The client-facing form of any exception raised while serving."""
    if isinstance(exc, RequestError):
        return exc
    if isinstance(exc, ConfigError):
        key = exc.path if path is None else (path + exc.path[1:] if exc.path.startswith("$") else exc.path)
        return RequestError(400, exc.message, key, exc.line)
    if isinstance(exc, OutputLocked):
        return RequestError(409, str(exc), path)
    if isinstance(exc, HelixError):
        return RequestError(422, str(exc), path)
    return RequestError(500, f"internal error ({type(exc).__name__}); see the server log", path)


class Roots:
    """The directories request paths must resolve inside."""

    def __init__(self, roots: list[Path]):
        self.roots = [r.resolve() for r in roots]

    def path(self, value: Any, key: str) -> Path:
        """``value`` resolved (symlinks followed, relative to the first root) if inside a root, else 403."""
        if not isinstance(value, str) or not value:
            raise RequestError(400, "expected a non-empty path string", key)
        p = Path(value)
        resolved = (p if p.is_absolute() else self.roots[0] / p).resolve()
        if not any(resolved == r or resolved.is_relative_to(r) for r in self.roots):
            raise RequestError(403, f"{value!r} is outside the server's roots", key)
        return resolved

    def model(self, value: Any, key: str, names: set[str]) -> str:
        """An embedded or preloaded model name as is, or a path inside a root."""
        if isinstance(value, str) and value in names:
            return value
        return str(self.path(value, key))


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_HOSTS


def default_roots() -> list[Path]:
    from helix_framework.agree import cache_root

    return [Path(os.getcwd()), cache_root()]
