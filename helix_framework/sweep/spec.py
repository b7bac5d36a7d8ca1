"""The sweep file: its schema, the grid and its points (see `helix_framework.sweep`)."""

from __future__ import annotations

import os

import hashlib
import itertools
import json
import logging
import math
import re
from pathlib import Path
from typing import Any, Iterator, Mapping

import attrs

from helix_framework.config import RowsConfig, canonical_json, YamlDocument, candidate_from_mapping, read_config_file, structure
from helix_framework.errors import ConfigError, SweepTooLarge


log = logging.getLogger(__name__)

MAX_POINTS = 10_000
#: top-level candidate keys an axis or fixed key may name; anything else is a codec param
CANDIDATE_KEYS = ("params", "rotation", "rows", "in_sample", "routes")
#: environment passed on to workers (Ray workers do not inherit the driver's)
WORKER_ENV = ("HELIX_JIT_CACHE_DIR", "HELIX_CACHE_DIR", "HELIX_JIT_DISABLE", "HELIX_JIT_THREADS", "HELIX_THREADS")


# -- the sweep file ------------------------------------------------------------


@attrs.frozen
class AgreementSettings:
    positions: int = 2000
    window: int = 512

    def __attrs_post_init__(self) -> None:
        from helix_framework.params import ParamError

        for name in ("positions", "window"):
            if getattr(self, name) < 2:
                raise ParamError(name, f"must be >= 2, got {getattr(self, name)}")


@attrs.frozen
class _SweepShape:
    name: str
    codec: str
    grid: dict[str, Any]
    fixed: dict[str, Any] = attrs.field(factory=dict)
    measure: tuple[str, ...] = ("rel_l2",)
    tensors: str | None = None
    model: str | None = None
    notes: str = ""
    agreement: AgreementSettings = AgreementSettings()


@attrs.frozen
class SweepSpec:
    """A validated sweep file (the points themselves are built lazily)."""

    name: str
    codec: str
    axes: tuple[tuple[str, tuple[Any, ...]], ...]
    fixed: dict[str, Any]
    measure: tuple[str, ...]
    tensors: str | None
    model: str | None
    notes: str
    agreement: AgreementSettings
    source: str | None = None

    @property
    def cardinality(self) -> int:
        return math.prod(len(values) for _, values in self.axes)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "codec": self.codec, "grid": {k: list(v) for k, v in self.axes},
                "fixed": self.fixed, "measure": list(self.measure), "tensors": self.tensors, "model": self.model,
                "notes": self.notes, "agreement": attrs.asdict(self.agreement), "source": self.source}


def load_sweep(path: str | Path, host: Any = None) -> SweepSpec:
    """Read and check a sweep file (shape, axis names, cardinality)."""
    return sweep_from_document(read_config_file(path), host)


def sweep_from_document(doc: YamlDocument, host: Any = None) -> SweepSpec:
    """Check a sweep read by `read_config_file`; errors carry its lines."""
    try:
        return attrs.evolve(sweep_from_mapping(doc.data, host), source=doc.file)
    except ConfigError as exc:
        raise doc.error(exc) from None


def sweep_from_mapping(data: Any, host: Any = None) -> SweepSpec:
    """Check a loaded sweep mapping. Refuses a grid over MAX_POINTS before
    building a single point."""
    if host is None:
        from helix_framework.host import get_host

        host = get_host()
    if not isinstance(data, Mapping):
        raise ConfigError("expected a mapping at the top level")
    shape = structure(dict(data), _SweepShape)
    if not shape.grid:
        raise ConfigError("needs at least one axis", path="$.grid")
    axes = []
    for axis, values in shape.grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError("every axis must be a non-empty list of values", path=f"$.grid.{axis}")
        axes.append((str(axis), tuple(values)))
    points = math.prod(len(v) for _, v in axes)
    if points > MAX_POINTS:
        sizes = " x ".join(str(len(v)) for _, v in axes)
        raise SweepTooLarge(f"the grid has {points:,} points ({sizes}); at most {MAX_POINTS:,} are run: "
                            "split the sweep or shorten an axis")
    from helix_framework.errors import UnknownNameError

    try:
        codec = host.codec(shape.codec)
    except UnknownNameError as exc:
        raise ConfigError(str(exc), path="$.codec") from None
    for axis, _ in axes:
        _check_name(axis, codec.Params, f"$.grid.{axis}", shape.codec)
    for key in shape.fixed:
        _check_name(str(key), codec.Params, f"$.fixed.{key}", shape.codec)
        if str(key) in shape.grid:
            raise ConfigError("is both fixed and a grid axis; keep one", path=f"$.fixed.{key}")
    if shape.tensors is not None:
        try:
            re.compile(shape.tensors)
        except re.error as exc:
            raise ConfigError(f"invalid regular expression: {exc}", path="$.tensors") from None
    for i, name in enumerate(shape.measure):
        try:
            host.measurement(name)
        except UnknownNameError as exc:
            raise ConfigError(str(exc), path=f"$.measure[{i}]") from None
    return SweepSpec(shape.name, shape.codec, tuple(axes), dict(shape.fixed), shape.measure, shape.tensors,
                     shape.model, shape.notes, shape.agreement)


def _target(name: str) -> tuple[str, ...]:
    parts = tuple(name.split("."))
    return parts if parts[0] in CANDIDATE_KEYS else ("params", *parts)


def _check_name(name: str, params_cls: type, path: str, codec: str) -> None:
    """An axis or fixed key must name a field of the params schema (dotted
    paths through nested attrs classes), or a top-level candidate key."""
    parts = _target(name)
    if any(not p for p in parts):
        raise ConfigError(f"invalid key {name!r}", path=path)
    if parts[0] == "rows" and len(parts) > 1:
        fields = attrs.fields_dict(RowsConfig)
        if parts[1] not in fields or len(parts) > 2:
            raise ConfigError(f"unknown rows key {parts[1]!r}; expected one of {', '.join(fields)}", path=path)
        return
    if parts[0] != "params" or len(parts) == 1:
        return  # rotation sub-keys depend on the kind: checked per point
    cls: Any = params_cls
    for seg in parts[1:]:
        if not attrs.has(cls):
            raise ConfigError(f"codec {codec!r}: {'.'.join(parts[1:])!r} goes below a field that is not a mapping",
                              path=path)
        attrs.resolve_types(cls)
        fields = attrs.fields_dict(cls)
        if seg not in fields:
            raise ConfigError(f"codec {codec!r} params have no field {seg!r}; expected one of "
                              f"{', '.join(fields)} (or rotation, rows)", path=path)
        cls = fields[seg].type


def _set(mapping: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = mapping
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[path[-1]] = _copy(value)


def _copy(value: Any) -> Any:
    return json.loads(json.dumps(value)) if isinstance(value, (dict, list)) else value


def iter_points(spec: SweepSpec) -> Iterator[dict[str, Any]]:
    """Every point of the grid in order: {axis: value} (lazy)."""
    names = [a for a, _ in spec.axes]
    for combo in itertools.product(*(values for _, values in spec.axes)):
        yield dict(zip(names, combo))


def point_label(point: Mapping[str, Any]) -> str:
    """A short readable label: ``centroids=256 rotation=hadamard``."""
    def fmt(v: Any) -> str:
        if isinstance(v, dict):
            kind = v.get("kind")
            rest = ",".join(f"{k}:{fmt(x)}" for k, x in v.items() if k != "kind")
            return f"{kind}({rest})" if kind and rest else (kind or "{" + rest + "}")
        if isinstance(v, list):
            return "[" + ",".join(fmt(x) for x in v) + "]"
        return str(v)

    return " ".join(f"{k}={fmt(v)}" for k, v in point.items())


def point_mapping(spec: SweepSpec, index: int, point: Mapping[str, Any]) -> dict[str, Any]:
    """The candidate mapping of one point: fixed, then each axis at its path."""
    data: dict[str, Any] = {"name": f"{spec.name}/{point_label(point)}", "codec": spec.codec,
                            "measure": list(spec.measure), "notes": f"{spec.name} point {index}"}
    for key, value in spec.fixed.items():
        _set(data, _target(str(key)), value)
    for axis, value in point.items():
        _set(data, _target(axis), value)
    data.setdefault("params", {})
    return data


@attrs.frozen
class Point:
    index: int
    values: dict[str, Any]
    mapping: dict[str, Any] = attrs.field(repr=False)
    candidate: Any = attrs.field(default=None, repr=False)
    error: str | None = None
    key: str | None = None


def candidate_key(candidate: Any, spec: SweepSpec) -> str:
    """SHA-256 of what determines a candidate's results (model aside)."""
    config = {k: v for k, v in candidate.to_json().items() if k not in ("name", "notes")}
    payload = {"config": config, "tensors": spec.tensors}
    if "token_agreement" in candidate.measure:
        payload["agreement"] = attrs.asdict(spec.agreement)
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def expand(spec: SweepSpec, host: Any = None) -> list[Point]:
    """Validate every point as a candidate config; invalid ones keep their reason."""
    if host is None:
        from helix_framework.host import get_host

        host = get_host()
    if spec.cardinality > MAX_POINTS:  # a spec built by hand
        raise SweepTooLarge(f"the grid has {spec.cardinality:,} points; at most {MAX_POINTS:,} are run")
    out = []
    for i, values in enumerate(iter_points(spec)):
        mapping = point_mapping(spec, i, values)
        try:
            cand = candidate_from_mapping(mapping, host,
                                          base_dir=os.path.dirname(spec.source) if spec.source else None)
        except ConfigError as exc:
            out.append(Point(i, values, mapping, error=f"{exc.path}: {exc.message}"))
            continue
        out.append(Point(i, values, mapping, cand, key=candidate_key(cand, spec)))
    return out


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"residual": {"depth": 1}}`` -> ``{"residual.depth": 1}``."""
    if not isinstance(value, Mapping):
        return {prefix: value} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in value.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out
