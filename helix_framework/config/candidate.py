"""Candidates: the schema, its validation against the plugins, the kernel signature."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Literal, Mapping

import attrs

from helix_framework.codec import NoParams
from helix_jit.cache import canonical_json
from helix_framework.errors import CalibrationEqualsMeasurement, ConfigError
from helix_framework.params import ParamError
from helix_framework.yaml_loading import YamlDocument
from helix_framework.config.converter import converter, structure, type_name
from helix_framework.config.files import read_config_file


ROUTES = ("passthrough", "skip", "codec")


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
        raise ConfigError(f"expected a mapping at the top level, got {type_name(data)}")
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
        raise ConfigError(f"expected a mapping like {{kind: identity}}, got {type_name(value)}", path="$.rotation")
    rest = dict(value)
    kind = rest.pop("kind", "identity")
    if not isinstance(kind, str):
        raise ConfigError(f"expected a rotation name, got {type_name(kind)}", path="$.rotation.kind")
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
