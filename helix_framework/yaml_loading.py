"""Bounded YAML loading: one safe-loaded document plus the line of every key.

YAML aliases share a node, so a few hundred bytes can describe a tree of a
billion nodes (the "billion laughs"). Everything after loading (the line
recorder, the converter, sweep expansion) walks that tree, so before
constructing anything the composed node graph is measured with aliases
expanded; a document whose expansion exceeds `alias_budget` of its size, or
whose aliases are recursive, is a `ConfigError` naming the file. Measuring
visits each distinct node once, so time and memory stay linear in the text.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import attrs
import yaml

from helix_framework.bounded_read import read_regular_file
from helix_framework.errors import ConfigError, InputFileError

#: Expanded nodes allowed per byte of YAML text, and the floor for small files.
NODES_PER_BYTE = 4
MIN_NODE_BUDGET = 100_000
#: Largest config or sweep file read (a real one is a few kilobytes).
MAX_FILE_BYTES = 16 * 1024 * 1024


def alias_budget(text: str) -> int:
    """The most nodes a document of ``text`` may expand to through aliases."""
    return max(MIN_NODE_BUDGET, NODES_PER_BYTE * len(text))


@attrs.frozen
class YamlDocument:
    """Loaded YAML data plus the line (1-based) of every key path."""

    data: Any
    lines: Mapping[str, int]
    file: str | None = None

    def line_of(self, path: str) -> int | None:
        """The line of ``path`` or of its nearest parent."""
        while path:
            if path in self.lines:
                return self.lines[path]
            cut = max(path.rfind("."), path.rfind("["))
            if cut <= 0:
                break
            path = path[:cut]
        return self.lines.get("$")

    def error(self, exc: ConfigError) -> ConfigError:
        return exc.located(file=self.file, line=self.line_of(exc.path))


def read_yaml_file(path: str | os.PathLike[str]) -> YamlDocument:
    """Read and load one YAML file: a regular file of at most `MAX_FILE_BYTES`."""
    file = os.fspath(path)
    try:
        text = read_regular_file(file, MAX_FILE_BYTES).decode("utf-8")
    except InputFileError as exc:
        raise ConfigError(exc.message, file=file) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read: {exc}", file=file) from None
    return load_yaml(text, file)


def load_yaml(text: str, file: str | None = None) -> YamlDocument:
    """Safe-load one YAML document, recording the line of every key.

    Raises `ConfigError` (naming ``file``) for invalid YAML, an empty
    document, nesting too deep, recursive aliases, or aliases expanding past
    `alias_budget`.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise ConfigError("the file is empty", file=file)
        _check_expansion(node, alias_budget(text), file)
        data = loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"invalid YAML: {problem}", file=file, line=mark.line + 1 if mark else None) from None
    except RecursionError:
        raise ConfigError("invalid YAML: nested too deeply", file=file) from None
    except ValueError as exc:  # e.g. an integer past Python's digit limit
        raise ConfigError(f"invalid YAML value: {exc}", file=file) from None
    finally:
        loader.dispose()
    lines: dict[str, int] = {}
    try:
        _record_lines(node, "$", lines)
    except ConfigError as exc:
        raise exc.located(file=file) from None
    except RecursionError:
        raise ConfigError("invalid YAML: nested too deeply", file=file) from None
    return YamlDocument(data, lines, file)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expansion(root: yaml.Node, budget: int, file: str | None) -> None:
    """Refuse a node graph whose alias-expanded tree exceeds ``budget`` nodes.

    Iterative post-order walk with one size per distinct node (memoized by
    identity), so a shared node is measured once however often it is aliased.
    """
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            total = 1 + sum(size[id(c)] for c in _children(node))
            if total > budget:
                raise ConfigError(
                    f"aliases expand to more than {budget} nodes (limit for a file of this size); "
                    "refusing a possible alias bomb",
                    file=file,
                    line=node.start_mark.line + 1,
                )
            size[key] = total
            continue
        if key in size:
            continue
        if key in on_path:
            raise ConfigError("recursive alias: a node contains itself", file=file, line=node.start_mark.line + 1)
        on_path.add(key)
        stack.append((node, True))
        for child in _children(node):
            cid = id(child)
            if cid in on_path:
                raise ConfigError("recursive alias: a node contains itself", file=file, line=child.start_mark.line + 1)
            if cid not in size:
                stack.append((child, False))


def _record_lines(node: yaml.Node, path: str, lines: dict[str, int]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = str(key.value)
            if isinstance(key, yaml.ScalarNode) and name in seen:
                raise ConfigError(f"duplicate key {name!r}", path=f"{path}.{name}", line=key.start_mark.line + 1)
            seen.add(name)
            lines.setdefault(f"{path}.{name}", key.start_mark.line + 1)
            _record_lines(value, f"{path}.{name}", lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _record_lines(item, f"{path}[{i}]", lines)
