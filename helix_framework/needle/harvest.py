"""Harvesting key=value needles, with the rules that keep phantoms out.

The phantoms of the needle benchmark this lab learned from (its first
needles were mostly docstrings, call expressions, prose keys and type
annotations) and the rule that excludes each:

- docstring phantoms (``include_heterochromatin=Include`` inside a
  docstring): Python is harvested from its syntax tree, where a docstring is
  an expression statement, never an assignment; in text, values must contain
  a digit.
- call-expression phantoms (``queries_path=os.path.join``): in Python only an
  assignment whose value is a literal constant counts (a call is not a
  constant); in text, a pair inside unclosed parentheses (a keyword
  argument), on a doctest line, or whose value is followed by "(" is skipped.
- prose-key phantoms (``note=Kept``): in text, values must contain a digit;
  in prose, keys must be identifiers with an underscore, not plain words.
- type-annotation phantoms (``model: str`` read as ``model=str``): annotated
  assignments are skipped and a value must be a literal, not a name.

Two more rules hold for every needle: the assignment comes right after the
key (Python: ``key = value`` exactly, from the key on; text: ``key=value``
with nothing between), and the value occurs exactly once in the whole corpus
as a whole token (see `grading`), and the key once in its document, so the
question "what is the value of KEY?" has one answer.
"""

from __future__ import annotations

import ast
import re
from typing import Iterable

import attrs

from helix_framework.needle.grading import count_token

__all__ = [
    "Candidate",
    "Needle",
    "harvest_diff",
    "harvest_python",
    "harvest_text",
    "select_needles",
]

_STR_VALUE = re.compile(r"[\w.\-:/+@]{3,64}")
_TEXT_PAIR = re.compile(r"(?<![\w.\-=])([A-Za-z_][A-Za-z0-9_]*)=([^\s,;()\[\]{}'\"<>]+)")
_TEXT_VALUE = re.compile(r"[\w.\-:/+]{2,64}")


@attrs.frozen
class Candidate:
    """A key=value fact found in one document, before corpus-wide checks."""

    key: str
    value: str
    line: int  # 1-based line in the document


@attrs.frozen
class Needle:
    """A graded fact: ``value`` must survive in the compressed ``doc_id``."""

    doc_id: str
    content_type: str
    key: str
    value: str
    line: int

    @property
    def question(self) -> str:
        return f"What is the value of {self.key}?"


def _literal_text(node: ast.expr, line: str) -> str | None:
    """The value as the reader sees it, or None if it is not a needle literal."""
    if not isinstance(node, ast.Constant) or isinstance(node.value, bool):
        return None
    if node.end_lineno != node.lineno:
        return None
    src = line[node.col_offset : node.end_col_offset] if node.end_col_offset is not None else ""
    if isinstance(node.value, (int, float)):
        return src or None
    if isinstance(node.value, str):
        if _STR_VALUE.fullmatch(node.value) and any(c.isalnum() for c in node.value) and node.value in src:
            return node.value
    return None


def harvest_python(source: str) -> list[Candidate]:
    """Module-, class- and function-level ``name = <literal>`` assignments.

    Only `ast.Assign` with one plain-name target and a constant int, float or
    short token-like string value, on one line, where the line reads
    ``name = value`` from the name on. Source that does not parse gives [].
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError):
        return []
    lines = source.splitlines()
    found: list[Candidate] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assign) or len(node.targets) != 1:
            continue
        target = node.targets[0]
        if not isinstance(target, ast.Name) or node.lineno != node.end_lineno or node.lineno > len(lines):
            continue
        line = lines[node.lineno - 1]
        value = _literal_text(node.value, line)
        if value is None:
            continue
        # the assignment right after the key: "key = <value literal>"
        head = line[target.col_offset : node.value.end_col_offset]
        literal = line[node.value.col_offset : node.value.end_col_offset]
        if not re.fullmatch(rf"{re.escape(target.id)}\s*=\s*{re.escape(literal)}", head):
            continue
        found.append(Candidate(target.id, value, node.lineno))
    return sorted(found, key=lambda c: c.line)


def _inside_parentheses(line: str, pos: int) -> bool:
    depth = 0
    for ch in line[:pos]:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
    return depth > 0


def harvest_text(text: str, *, prose: bool = False) -> list[Candidate]:
    """``key=value`` pairs in log or prose text (see the module docstring)."""
    found: list[Candidate] = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.lstrip()
        if stripped.startswith((">>>", "... ")):
            continue
        for m in _TEXT_PAIR.finditer(line):
            key, value = m.group(1), m.group(2).rstrip(".:")
            if prose and "_" not in key.strip("_"):
                continue
            if not _TEXT_VALUE.fullmatch(value) or not any(c.isdigit() for c in value):
                continue
            end = m.start(2) + len(value)
            if line[end : end + 1] == "(" or _inside_parentheses(line, m.start()):
                continue
            found.append(Candidate(key, value, number))
    return found


_HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+(\d+)(?:,\d+)? @@")


def harvest_diff(diff: str, new_source: str) -> list[Candidate]:
    """Needles of a unified diff: added lines that are, in the new version
    of the file, assignments `harvest_python` accepts. ``line`` is the line
    in the diff text."""
    by_line = {c.line: c for c in harvest_python(new_source)}
    new_lines = new_source.splitlines()
    found: list[Candidate] = []
    new_line = 0
    for number, line in enumerate(diff.splitlines(), 1):
        m = _HUNK.match(line)
        if m:
            new_line = int(m.group(1))
            continue
        if line.startswith(("+++", "---")) or not new_line:
            continue
        if line.startswith("+"):
            cand = by_line.get(new_line)
            if cand is not None and line[1:] == new_lines[new_line - 1]:
                found.append(Candidate(cand.key, cand.value, number))
            new_line += 1
        elif line.startswith(" "):
            new_line += 1
    return found


def select_needles(docs: Iterable[tuple[str, str, str, list[Candidate]]]) -> list[Needle]:
    """Apply the corpus-wide rules to ``(doc_id, content_type, text,
    candidates)``: the value occurs once as a whole token in all the texts
    together, and ``key=`` or ``key =`` once in its document (in a diff,
    not counting removed lines)."""
    docs = list(docs)
    corpus = "\n\x00\n".join(text for _, _, text, _ in docs)
    needles: list[Needle] = []
    for doc_id, content_type, text, cands in docs:
        if content_type == "diff":  # a re-valued key appears on its "-" line too
            text = "\n".join(line for line in text.splitlines() if not line.startswith("-"))
        seen: set[str] = set()
        for c in cands:
            if c.value in seen or len(re.findall(rf"(?<![\w.]){re.escape(c.key)}\s*=(?!=)", text)) != 1:
                continue
            if count_token(corpus, c.value, limit=2) != 1:
                continue
            seen.add(c.value)
            needles.append(Needle(doc_id, content_type, c.key, c.value, c.line))
    return needles
