"""Content-type detection for the headroom bridge, in the bridge's order:
diff/patch first, then log, code, JSON, and prose for everything else.

Pure Python (no headroom import), so detection works and is testable
without headroom-ai installed.
"""

from __future__ import annotations

import ast
import json
import re
import threading

__all__ = ["CONTENT_TYPES", "detect_content_type", "is_python", "normalize_content_type", "parse_python"]

# ast.parse from several threads at once can raise "SystemError: AST
# constructor recursion depth mismatch" on CPython 3.11 (gh-106905). Ours run
# one at a time; a clash with another library's ast.parse (headroom's, in a
# worker thread) is retried.
_AST_LOCK = threading.Lock()


def parse_python(text: str) -> ast.Module:
    """`ast.parse`, serialised across threads and retried on that SystemError."""
    with _AST_LOCK:
        for attempt in range(8):
            try:
                return ast.parse(text)
            except SystemError as exc:
                if "recursion depth mismatch" not in str(exc) or attempt == 7:
                    raise
    raise AssertionError("unreachable")

#: The content types the bridge dispatches on, in detection order.
CONTENT_TYPES: tuple[str, ...] = ("diff", "log", "code", "json", "prose")

_ALIASES = {"patch": "diff", "text": "prose", "python": "code", "source": "code"}

_LOG_LINE = re.compile(
    r"""^\s*(?:
        \[?\d{4}-\d{2}-\d{2}[T\ ]\d{2}:\d{2}                  # ISO timestamp
      | \[?(?:TRACE|DEBUG|INFO|NOTICE|WARN|WARNING|ERROR|CRITICAL|FATAL)\b   # leading level
      | \S+\ (?:TRACE|DEBUG|INFO|WARNING|ERROR|CRITICAL)\b[:\]]               # logger + level
      | Traceback\ \(most\ recent\ call\ last\)
      | File\ ".*",\ line\ \d+
      | .*\ \.\.\.\ (?:ok|FAIL|ERROR|skipped.*|expected\ failure)$          # unittest -v
      | .*\ (?:PASSED|FAILED|SKIPPED|XFAIL)\b                               # pytest -v
      | (?:=|-){10,}
      | Ran\ \d+\ tests?\ in
      | (?:FAILED|OK)\b
      | (?:Compiling|Listing)\ 
    )""",
    re.VERBOSE,
)
_CODE_START = re.compile(
    r"^\s*(?:def |class |import |from \S+ import |async def |@\w|#include\b|package |func |fn |pub |"
    r"public |private |protected |static |const |let |var |function |interface |struct |enum |impl |"
    r"return\b|if \(|for \(|while \()"
)


def normalize_content_type(content_type: str | None) -> str | None:
    """Canonical name of a given content type ("patch" -> "diff", "text" ->
    "prose"); None stays None. Raises ValueError for an unknown type."""
    if content_type is None:
        return None
    name = _ALIASES.get(content_type.strip().lower(), content_type.strip().lower())
    if name not in CONTENT_TYPES:
        known = ", ".join(CONTENT_TYPES + tuple(_ALIASES))
        raise ValueError(f"unknown content type {content_type!r}; expected one of {known}")
    return name


def is_python(text: str) -> bool:
    """The text parses as a Python module with at least one statement that is
    not a bare expression (so a JSON document does not count as Python)."""
    try:
        tree = parse_python(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return any(not isinstance(node, ast.Expr) for node in tree.body)


def _is_diff(lines: list[str]) -> bool:
    if any(line.startswith("diff --git ") for line in lines):
        return True
    has_hunk = any(line.startswith("@@ ") for line in lines)
    has_headers = any(a.startswith("--- ") and b.startswith("+++ ") for a, b in zip(lines, lines[1:]))
    return has_hunk and has_headers


def _is_log(lines: list[str]) -> bool:
    body = [line for line in lines if line.strip()]
    if len(body) < 3:
        return False
    hits = sum(1 for line in body if _LOG_LINE.match(line))
    return hits >= 3 and hits / len(body) >= 0.3


def _is_code(text: str, lines: list[str]) -> bool:
    if is_python(text):
        return True
    body = [line.rstrip() for line in lines if line.strip()]
    if len(body) < 3:
        return False
    enders = sum(1 for line in body if line.endswith((";", "{", "}")))
    starts = sum(1 for line in body if _CODE_START.match(line))
    return enders / len(body) >= 0.3 or starts / len(body) >= 0.2


def _is_json(text: str) -> bool:
    stripped = text.strip()
    if not stripped or stripped[0] not in "[{":
        return False
    try:
        json.loads(stripped)
    except (ValueError, RecursionError):
        return False
    return True


def detect_content_type(text: str) -> str:
    """One of `CONTENT_TYPES`: diff/patch first, then log, code, JSON, prose."""
    lines = text.splitlines()[:5000]
    if _is_diff(lines):
        return "diff"
    if _is_log(lines):
        return "log"
    if _is_json(text):
        # A whole-text JSON document is never source code, but its lines
        # end in "{" and "}" like C's: check it before code's line heuristics.
        return "json"
    if _is_code(text, lines):
        return "code"
    return "prose"
