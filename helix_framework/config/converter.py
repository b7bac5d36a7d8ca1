"""The project's cattrs converter: strict structuring, and errors that name the key path."""

from __future__ import annotations

import re
import types
import typing
from typing import Any, Literal, Mapping

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

from helix_framework.errors import ConfigError, HelixError
from helix_framework.params import ParamError


# -- the project converter -------------------------------------------------


def _strict(kind: type, *, also: tuple[type, ...] = ()) -> Any:
    accepted = (kind, *also)

    def structure(value: Any, _cls: Any) -> Any:
        # bool is an int subclass; YAML's `yes` must not become 1
        if isinstance(value, bool) and kind is not bool:
            raise TypeError(f"expected {kind.__name__}, got a boolean")
        if not isinstance(value, accepted):
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__} {value!r}")
        return kind(value)

    return structure


def _is_homogeneous_tuple(t: Any) -> bool:
    return getattr(t, "__origin__", None) is tuple and len(t.__args__) == 2 and t.__args__[1] is Ellipsis


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)
    conv.register_structure_hook(int, _strict(int))
    conv.register_structure_hook(float, _strict(float, also=(int,)))
    conv.register_structure_hook(str, _strict(str))
    conv.register_structure_hook(bool, _strict(bool))

    def tuple_factory(t: Any) -> Any:
        item = t.__args__[0]

        def structure(value: Any, _cls: Any) -> tuple:
            # a bare string must not become a tuple of its characters
            if not isinstance(value, (list, tuple)):
                raise TypeError(f"expected a list, got {type(value).__name__} {value!r}")
            errors, out = [], []
            for i, v in enumerate(value):
                try:
                    out.append(conv.structure(v, item))
                except Exception as exc:
                    exc.__notes__ = [*getattr(exc, "__notes__", []), _IndexNote(i)]
                    errors.append(exc)
            if errors:
                raise IterableValidationError(f"While structuring {t}", errors, t)
            return tuple(out)

        return structure

    conv.register_structure_hook_factory(_is_homogeneous_tuple, tuple_factory)

    def union_factory(t: Any) -> Any:
        members = [m for m in t.__args__ if m is not type(None)]
        optional = len(members) < len(t.__args__)
        expected = " or ".join(_describe_type(m) for m in members) + (" or null" if optional else "")

        def structure(value: Any, _cls: Any) -> Any:
            if value is None and optional:
                return None
            for member in members:
                try:
                    return conv.structure(value, member)
                except Exception:
                    continue
            raise TypeError(f"expected {expected}, got {type_name(value)}")

        return structure

    conv.register_structure_hook_factory(_is_union, union_factory)

    def literal_factory(t: Any) -> Any:
        allowed = t.__args__

        def structure(value: Any, _cls: Any) -> Any:
            if isinstance(value, bool) or value not in allowed:
                raise ValueError(f"expected {_describe_type(t)}, got {type_name(value)}")
            return value

        return structure

    conv.register_structure_hook_factory(lambda t: typing.get_origin(t) is Literal, literal_factory)

    from helix_jit.lanes import LaneWidth

    def lane(value: Any, _cls: Any) -> LaneWidth:
        if not isinstance(value, str):
            raise TypeError(f"expected a lane width name, got {value!r}")
        return LaneWidth.parse(value)

    conv.register_structure_hook(LaneWidth, lane)
    conv.register_unstructure_hook(LaneWidth, lambda w: w.value)
    return conv


def _is_union(t: Any) -> bool:
    return typing.get_origin(t) in (typing.Union, types.UnionType)


def _describe_type(t: Any) -> str:
    if typing.get_origin(t) is Literal:
        return "one of " + ", ".join(repr(a) for a in t.__args__)
    return getattr(t, "__name__", str(t))


class _IndexNote(str):
    def __new__(cls, index: int) -> _IndexNote:
        obj = super().__new__(cls, f"item {index}")
        obj.index = index  # type: ignore[attr-defined]
        return obj


converter = _make_converter()


def structure(value: Any, cls: type, *, path: str = "$") -> Any:
    """Structure ``value`` into ``cls`` with the project converter.

    Raises `ConfigError` whose path points at the first bad key.
    """
    if value is None and attrs.has(cls):
        value = {}
    if attrs.has(cls) and not isinstance(value, Mapping):
        raise ConfigError(f"expected a mapping, got {type_name(value)}", path=path)
    try:
        return converter.structure(value, cls)
    except Exception as exc:
        sub_path, message = _first_error(exc, path)
        raise ConfigError(message, path=sub_path) from None


def type_name(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"


def _first_error(exc: BaseException, path: str) -> tuple[str, str]:
    if isinstance(exc, ClassValidationError):
        with_notes, without = exc.group_exceptions()
        for sub, note in with_notes:
            return _first_error(sub, f"{path}.{note.name}")
        for sub in without:
            return _first_error(sub, path)
    if isinstance(exc, IterableValidationError):
        for sub in exc.exceptions:
            notes = [n for n in getattr(sub, "__notes__", []) if hasattr(n, "index")]
            return _first_error(sub, f"{path}[{notes[-1].index}]" if notes else path)
    if isinstance(exc, ForbiddenExtraKeysError):
        extra = sorted(map(str, exc.extra_fields))
        allowed = ", ".join(a.name for a in attrs.fields(exc.cl)) if attrs.has(exc.cl) else ""
        return f"{path}.{extra[0]}", f"unknown key {extra[0]!r}" + (f"; expected one of {allowed}" if allowed else "")
    if isinstance(exc, ParamError):
        return f"{path}.{exc.field}", exc.message
    if isinstance(exc, ConfigError):
        return path + exc.path[1:], exc.message
    if isinstance(exc, KeyError) and not isinstance(exc, HelixError):
        # cattrs' note already named the field: "$.name", not "$.name.name"
        key = f".{exc.args[0]}"
        return (path if path.endswith(key) else path + key), "required key is missing"
    message = str(exc)
    m = re.match(r"^'(\w+)' (.*)$", message)  # attrs' own validators: "'x' must be >= 1: 0"
    if m:
        return f"{path}.{m.group(1)}", m.group(2)
    if isinstance(exc, AttributeError) and "keys" in message:
        return path, "expected a mapping"
    return path, message or type(exc).__name__
