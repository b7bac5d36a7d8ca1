"""Candidate configs: YAML at the edge, frozen attrs classes inside.

A candidate names a codec and its params, a rotation, the row split and the
measurements. `load_candidate` safe-loads the YAML, keeps the line of every
key, and converts with the project's cattrs converter; every error is a
`ConfigError` naming the file, the key path (``$.params.subspaces``) and the
line. Validation happens here, before any kernel compiles or any model is
read: unknown keys, wrong types, values a Params schema refuses, lane widths
a codec does not support, unknown plugin names (with suggestions) and rows
that would overlap (`CalibrationEqualsMeasurement`, unless ``in_sample``).
"""

from __future__ import annotations

import hashlib
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

from helix_framework.codec import NoParams
# the one canonical JSON (sorted keys, no whitespace) of every signature, the kernel cache's included
from helix_jit.cache import canonical_json  # noqa: F401  (re-exported)
from helix_framework.errors import CalibrationEqualsMeasurement, ConfigError, HelixError
from helix_framework.params import ParamError
from helix_framework.yaml_loading import YamlDocument, load_yaml, read_yaml_file  # noqa: F401  (load_yaml: re-exported)

ROUTES = ("passthrough", "skip", "codec")


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
            raise TypeError(f"expected {expected}, got {_type_name(value)}")

        return structure

    conv.register_structure_hook_factory(_is_union, union_factory)

    def literal_factory(t: Any) -> Any:
        allowed = t.__args__

        def structure(value: Any, _cls: Any) -> Any:
            if isinstance(value, bool) or value not in allowed:
                raise ValueError(f"expected {_describe_type(t)}, got {_type_name(value)}")
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
        raise ConfigError(f"expected a mapping, got {_type_name(value)}", path=path)
    try:
        return converter.structure(value, cls)
    except Exception as exc:
        sub_path, message = _first_error(exc, path)
        raise ConfigError(message, path=sub_path) from None


def _type_name(value: Any) -> str:
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


# -- the candidate ---------------------------------------------------------


@attrs.frozen
class RowsConfig:
    """How many rows to fit on and to hold out, and the permutation seed.

    ``calibration: all`` fits on every row; ``measurement: calibration``
    measures on the calibration rows. Both overlap the two sets and are only
    accepted with ``in_sample: true``.
    """

    calibration: int | Literal["all"] = 2048
    measurement: int | Literal["calibration"] = 512
    seed: int = attrs.field(default=42, metadata={"codegen": False})

    def __attrs_post_init__(self) -> None:
        for name in ("calibration", "measurement"):
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool) and value < 1:
                raise ParamError(name, f"must be >= 1, got {value}")

    @property
    def overlapping(self) -> bool:
        return self.calibration == "all" or self.measurement == "calibration"


@attrs.frozen
class RotationChoice:
    """The ``rotation`` mapping: ``kind`` plus that rotation's own params."""

    kind: str = "identity"
    params: Any = NoParams()


@attrs.frozen
class RouteRule:
    """A user routing rule: regex searched in the tensor name, and a route."""

    match: str
    route: str

    def __attrs_post_init__(self) -> None:
        if self.route not in ROUTES:
            raise ParamError("route", f"must be one of {', '.join(ROUTES)}, got {self.route!r}")
        try:
            re.compile(self.match)
        except re.error as exc:
            raise ParamError("match", f"invalid regular expression: {exc}") from None


def _positive(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value < 1:
        raise ParamError(attribute.name, f"must be >= 1, got {value}")


def _fraction(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not 0.0 <= value < 1.0:
        raise ParamError(attribute.name, f"must be in [0, 1), got {value}")


@attrs.frozen
class CalibrationConfig:
    """The ``calibration`` mapping of a data-aware candidate.

    ``text``: ``builtin``, a ``.txt`` file or a directory of them;
    ``sequences`` windows of ``tokens`` tokens drawn with ``seed``;
    ``held_out``: the fraction of windows kept out of the fit for
    ``output_rel_l2``; ``propagate``: the windows reach the next block
    through the ``quantized`` block just fitted, or the ``reference`` one.
    """

    text: str = "builtin"
    sequences: int = attrs.field(default=128, validator=_positive)
    tokens: int = attrs.field(default=512, validator=_positive)
    seed: int = 0
    held_out: float = attrs.field(default=0.125, validator=_fraction)
    propagate: Literal["quantized", "reference"] = "quantized"

    def __attrs_post_init__(self) -> None:
        if not self.text.strip():
            raise ParamError("text", "must be builtin, a .txt file or a directory of .txt files")
        if self.tokens < 2:
            raise ParamError("tokens", f"must be >= 2, got {self.tokens}")


@attrs.frozen
class CandidateConfig:
    """One validated candidate."""

    name: str
    codec: str
    params: Any
    rotation: RotationChoice = RotationChoice()
    rows: RowsConfig = RowsConfig()
    measure: tuple[str, ...] = ("rel_l2",)
    notes: str = ""
    in_sample: bool = False
    routes: tuple[RouteRule, ...] = ()
    calibration: CalibrationConfig | None = None
    error_feedback: Any = None
    source: str | None = attrs.field(default=None, eq=False)

    def to_json(self) -> dict[str, Any]:
        """JSON-safe form (what manifests and result tables store)."""
        out = {
            "name": self.name,
            "codec": self.codec,
            "params": converter.unstructure(self.params),
            "rotation": {"kind": self.rotation.kind, **converter.unstructure(self.rotation.params)},
            "rows": converter.unstructure(self.rows),
            "measure": list(self.measure),
            "notes": self.notes,
            "in_sample": self.in_sample,
            "routes": [converter.unstructure(r) for r in self.routes],
        }
        if self.calibration is not None:
            out["calibration"] = converter.unstructure(self.calibration)
        if self.error_feedback is not None:
            out["error_feedback"] = converter.unstructure(self.error_feedback)
        return out


@attrs.frozen
class _CandidateShape:
    """The top-level keys and their types, before plugin-specific parts."""

    name: str
    codec: str
    params: Any = None
    rotation: Any = None
    rows: Any = None
    measure: tuple[str, ...] = ("rel_l2",)
    notes: str = ""
    in_sample: bool = False
    routes: tuple[RouteRule, ...] = ()
    calibration: Any = None
    error_feedback: Any = None


def read_config_file(path: str | Path) -> YamlDocument:
    """Read one YAML config file (a candidate or a sweep) with its key lines."""
    return read_yaml_file(path)


def is_sweep(doc: YamlDocument) -> bool:
    """A sweep file is the mapping with a ``grid``; anything else is a candidate."""
    return isinstance(doc.data, Mapping) and "grid" in doc.data


def load_candidate(path: str | Path, host: Any = None) -> CandidateConfig:
    """Read, validate and convert a candidate YAML file."""
    return candidate_from_document(read_config_file(path), host)


def candidate_from_document(doc: YamlDocument, host: Any = None) -> CandidateConfig:
    """Validate a candidate read by `read_config_file`; errors carry its lines."""
    try:
        return attrs.evolve(candidate_from_mapping(doc.data, host), source=doc.file)
    except ConfigError as exc:
        raise doc.error(exc) from None


def candidate_from_mapping(data: Any, host: Any = None) -> CandidateConfig:
    """Validate and convert an already-loaded mapping (paths, no lines)."""
    from helix_framework.errors import UnknownNameError

    if host is None:
        from helix_framework.host import get_host

        host = get_host()
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a mapping at the top level, got {_type_name(data)}")
    shape = structure(dict(data), _CandidateShape)
    if not shape.name.strip():
        raise ConfigError("must not be empty", path="$.name")

    try:
        codec = host.codec(shape.codec)
    except UnknownNameError as exc:
        raise ConfigError(str(exc), path="$.codec") from None
    params = structure(shape.params, codec.Params, path="$.params")
    _run_validate(codec, params, "$.params")
    lane = getattr(params, "lane_width", None)
    if lane is not None and lane not in codec.lane_widths:
        supported = ", ".join(w.value for w in codec.lane_widths)
        raise ConfigError(
            f"codec {shape.codec!r} does not support lane width {lane.value}; supported: {supported}",
            path="$.params.lane_width",
        )

    rotation = _rotation(shape.rotation, host)
    rows = structure(shape.rows, RowsConfig, path="$.rows")
    if rows.overlapping and not shape.in_sample:
        raise CalibrationEqualsMeasurement(
            "calibration and measurement rows would overlap (in-sample figures overfit: with enough centroids "
            "every row becomes its own centroid); use disjoint row counts, or set in_sample: true to label "
            "every figure in-sample",
            path="$.rows",
        )
    for i, name in enumerate(shape.measure):
        try:
            host.measurement(name)
        except UnknownNameError as exc:
            raise ConfigError(str(exc), path=f"$.measure[{i}]") from None
    calibration, feedback = _data_aware(shape, codec, host)
    return CandidateConfig(
        name=shape.name,
        codec=shape.codec,
        params=params,
        rotation=rotation,
        rows=rows,
        measure=shape.measure,
        notes=shape.notes,
        in_sample=shape.in_sample,
        routes=shape.routes,
        calibration=calibration,
        error_feedback=feedback,
    )


def _data_aware(shape: _CandidateShape, codec: Any, host: Any) -> tuple[Any, Any]:
    """The ``calibration`` and ``error_feedback`` keys, checked against the components."""
    if shape.calibration is None:
        for i, name in enumerate(shape.measure):
            if host.measurement(name).needs_stats:
                raise ConfigError(f"measurement {name!r} needs layer inputs: add a calibration: section",
                                  path=f"$.measure[{i}]")
        if shape.error_feedback is not None:
            raise ConfigError("error feedback needs layer statistics: add a calibration: section",
                              path="$.error_feedback")
        return None, None
    calibration = structure(shape.calibration, CalibrationConfig, path="$.calibration")
    if calibration.held_out == 0 and any(host.measurement(m).needs_stats for m in shape.measure):
        raise ConfigError("output_rel_l2 is measured on held-out windows: held_out must be > 0",
                          path="$.calibration.held_out")
    if shape.error_feedback is None:
        return calibration, None
    if not codec.quantizes_columns:
        raise ConfigError(f"codec {shape.codec!r} cannot quantize a block of columns (quantizes_columns), "
                          "so it cannot run error feedback", path="$.error_feedback")
    from helix_framework.error_feedback import ErrorFeedbackParams

    return calibration, structure(shape.error_feedback, ErrorFeedbackParams, path="$.error_feedback")


def _rotation(value: Any, host: Any) -> RotationChoice:
    from helix_framework.errors import UnknownNameError

    if value is None:
        value = {"kind": "identity"}
    if not isinstance(value, Mapping):
        raise ConfigError(f"expected a mapping like {{kind: identity}}, got {_type_name(value)}", path="$.rotation")
    rest = dict(value)
    kind = rest.pop("kind", "identity")
    if not isinstance(kind, str):
        raise ConfigError(f"expected a rotation name, got {_type_name(kind)}", path="$.rotation.kind")
    try:
        rotation = host.rotation(kind)
    except UnknownNameError as exc:
        raise ConfigError(str(exc), path="$.rotation.kind") from None
    params = structure(rest, rotation.Params, path="$.rotation")
    _run_validate(rotation, params, "$.rotation")
    return RotationChoice(kind, params)


def _run_validate(component: Any, params: Any, prefix: str) -> None:
    try:
        component.validate(params)
    except ConfigError as exc:
        raise exc.located(prefix=prefix) from None
    except ParamError as exc:
        raise ConfigError(exc.message, path=f"{prefix}.{exc.field}") from None


# -- kernel signature ------------------------------------------------------


def _codegen_fields(params: Any) -> Any:
    if not attrs.has(type(params)):
        return converter.unstructure(params)
    out = {}
    for field in attrs.fields(type(params)):
        if field.metadata.get("codegen", True):
            out[field.name] = _codegen_fields(getattr(params, field.name))
    return out


def kernel_signature(candidate: CandidateConfig, host: Any = None) -> str:
    """SHA-256 of every candidate field that changes generated code.

    Covers the codec and rotation names, their versions and their params
    except fields marked ``codegen: False`` (seeds, tolerances); never the
    rows, the measurements or the notes.
    """
    if host is None:
        from helix_framework.host import get_host

        host = get_host()
    payload = {
        "codec": candidate.codec,
        "codec_version": host.codec(candidate.codec).version,
        "params": _codegen_fields(candidate.params),
        "rotation": candidate.rotation.kind,
        "rotation_version": host.rotation(candidate.rotation.kind).version,
        "rotation_params": _codegen_fields(candidate.rotation.params),
    }
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()
