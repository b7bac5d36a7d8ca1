"""Helpers for writing Params schemas (frozen attrs classes).

Validators here raise `ParamError`, which carries the field name so the
config loader can point at the exact YAML key and line. Plain attrs
validators work too; their messages are kept as they are.

Fields that never change generated code (seeds, tolerances, flags that only
affect training) should be declared with ``codegen_false()`` metadata so
they stay out of the kernel signature::

    @attrs.frozen
    class Params:
        centroids: int = attrs.field(default=256, validator=in_range(2, 65536))
        max_iter: int = attrs.field(default=25, metadata=codegen_false())
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from helix_framework.errors import ParamError

__all__ = ["ParamError", "codegen_false", "in_range", "one_of", "power_of_two"]


def codegen_false() -> dict[str, Any]:
    """Field metadata: this field never changes generated code."""
    return {"codegen": False}


def in_range(lo: int | float, hi: int | float | None = None) -> Callable[[Any, Any, Any], None]:
    """Validator: lo <= value (<= hi). None values pass (optional fields)."""

    def check(_inst: Any, attribute: Any, value: Any) -> None:
        if value is None:
            return
        if value < lo or (hi is not None and value > hi):
            bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
            raise ParamError(attribute.name, f"must be {bound}, got {value}")

    return check


def one_of(choices: Iterable[Any]) -> Callable[[Any, Any, Any], None]:
    """Validator: value is one of the choices."""
    allowed = tuple(choices)

    def check(_inst: Any, attribute: Any, value: Any) -> None:
        if value not in allowed:
            raise ParamError(attribute.name, f"must be one of {', '.join(map(str, allowed))}, got {value!r}")

    return check


def power_of_two(_inst: Any, attribute: Any, value: Any) -> None:
    """Validator: a positive power of two (None passes)."""
    if value is not None and (value <= 0 or value & (value - 1)):
        raise ParamError(attribute.name, f"must be a power of two, got {value}")
