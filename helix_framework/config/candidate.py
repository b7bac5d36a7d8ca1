"""Candidates: the schema, its validation against the plugins, the kernel signature."""

from __future__ import annotations

import hashlib
import math
import os
import re
from pathlib import Path
from typing import Any, Literal, Mapping

import attrs

from helix_framework.codec import NoParams
from helix_jit.cache import canonical_json
from helix_framework.errors import CalibrationEqualsMeasurement, ConfigError
from helix_framework.params import ParamError
from helix_framework.routing import block_index
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


def _non_negative(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not (math.isfinite(value) and value >= 0.0):
        raise ParamError(attribute.name, f"must be a finite number >= 0, got {value}")


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
    through the ``quantized`` block just fitted, or the ``reference`` one;
    ``target``: each layer is fitted to reproduce its own output on the
    inputs it sees (``layer``) or the uncompressed model's output of that
    layer (``reference``, with ``propagate: quantized`` only; see
    `helix_framework.layer_stats`), solved with ``target_damp`` times the
    mean Hessian diagonal added.
    """

    text: str = "builtin"
    sequences: int = attrs.field(default=128, validator=_positive)
    tokens: int = attrs.field(default=512, validator=_positive)
    seed: int = 0
    held_out: float = attrs.field(default=0.125, validator=_fraction)
    propagate: Literal["quantized", "reference"] = "quantized"
    target: Literal["layer", "reference"] = "layer"
    target_damp: float = attrs.field(default=0.1, validator=_non_negative)

    def __attrs_post_init__(self) -> None:
        if not self.text.strip():
            raise ParamError("text", "must be builtin, a .txt file or a directory of .txt files")
        if self.tokens < 2:
            raise ParamError("tokens", f"must be >= 2, got {self.tokens}")
        if self.target == "reference" and self.propagate != "quantized":
            raise ParamError("target", "reference needs propagate: quantized (with reference inputs the two "
                             "targets are the same)")


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
    choices: tuple[TensorChoice, ...] = ()

    def choice_index(self, name: str, n_blocks: int | None = None) -> int | None:
        """The index of the first `TensorChoice` that chooses ``name`` (its regex
        is found in the name and, with ``blocks``, the tensor's block is one of
        them in a model of ``n_blocks`` blocks), or None."""
        for i, choice in enumerate(self.choices):
            if choice.matches(name, n_blocks):
                return i
        return None

    def for_tensor(self, name: str, n_blocks: int | None = None) -> CandidateConfig:
        """The candidate that compresses tensor ``name``: its route choice's
        (with this config's routes, calibration and measurements), or this one."""
        i = self.choice_index(name, n_blocks)
        return self if i is None else self.choices[i].candidate

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
            "routes": [converter.unstructure(r) for r in self.routes] + [c.to_json() for c in self.choices],
        }
        if self.calibration is not None:
            out["calibration"] = converter.unstructure(self.calibration)
            if self.calibration.target == "layer":  # left out so existing configs keep their JSON
                del out["calibration"]["target"], out["calibration"]["target_damp"]
        if self.error_feedback is not None:
            out["error_feedback"] = converter.unstructure(self.error_feedback)
            if not self.error_feedback.cd_passes:  # left out so existing configs keep their JSON
                del out["error_feedback"]["cd_passes"]
        return out


@attrs.frozen
class TensorChoice:
    """A ``routes:`` rule that chooses how the tensors it matches are compressed.

    ``{match, candidate: FILE.yaml or a mapping}`` or ``{match, codec, params,
    rotation}``; ``candidate`` is the resolved config (it carries the
    enclosing config's routes, calibration and measurements); ``file`` the
    YAML it came from, if any. It never changes a tensor's route: norms and
    embeddings stay as the route rules and defaults leave them.
    """

    match: str
    candidate: CandidateConfig
    file: str | None = None
    blocks: tuple[str, ...] | None = None

    def matches(self, name: str, n_blocks: int | None) -> bool:
        """Whether the rule chooses tensor ``name`` of a model with ``n_blocks`` blocks."""
        if not re.search(self.match, name):
            return False
        if self.blocks is None:
            return True
        if n_blocks is None:
            raise ValueError(f"rule /{self.match}/ selects blocks: the model's block count is needed")
        i = block_index(name)
        return i is not None and i in selected_blocks(self.blocks, n_blocks)

    def to_json(self) -> dict[str, Any]:
        inner = self.candidate.to_json()
        inner.pop("routes")
        out: dict[str, Any] = {"match": self.match, "candidate": inner}
        if self.blocks is not None:
            out["blocks"] = list(self.blocks)
        if self.file is not None:
            out["file"] = self.file
        return out


_BLOCK_ITEM = re.compile(r"^\s*(-?\d+)?\s*(?::\s*(-?\d+)?\s*(?::\s*(-?\d+)?\s*)?)?$")


def _block_slice(item: Any) -> slice:
    """One ``blocks:`` item: an int (a block, negative from the end) or a
    Python slice string ``"start:stop[:step]"`` over the block indices."""
    if isinstance(item, int) and not isinstance(item, bool):
        return slice(item, None if item == -1 else item + 1)
    m = _BLOCK_ITEM.match(item) if isinstance(item, str) and len(item) <= 64 else None
    if m is None or (":" not in item and m.group(1) is None):
        raise ParamError("blocks", f"expected a block number or a slice such as '0:4', '5:-4:3' or '-4:', "
                         f"got {item!r}")
    start, stop, step = (None if g is None else int(g) for g in m.groups())
    if ":" not in item:
        return slice(start, None if start == -1 else start + 1)
    if step is not None and step < 1:
        raise ParamError("blocks", f"a slice step must be >= 1, got {item!r}")
    return slice(start, stop, step)


def selected_blocks(blocks: tuple[str, ...], n_blocks: int) -> frozenset[int]:
    """The block indices ``blocks`` picks in a model of ``n_blocks`` blocks
    (the union of its items, each as Python indexes ``range(n_blocks)``)."""
    picked: set[int] = set()
    for item in blocks:
        picked.update(range(n_blocks)[_block_slice(_block_item(item))])
    return frozenset(picked)


def _block_item(text: str) -> Any:
    return int(text) if re.fullmatch(r"-?\d+", text) else text


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
    routes: Any = ()
    calibration: Any = None
    error_feedback: Any = None


def load_candidate(path: str | Path, host: Any = None) -> CandidateConfig:
    """Read, validate and convert a candidate YAML file."""
    return candidate_from_document(read_config_file(path), host)


def candidate_from_document(doc: YamlDocument, host: Any = None) -> CandidateConfig:
    """Validate a candidate read by `read_config_file`; errors carry its lines."""
    base = os.path.dirname(doc.file) if doc.file else None
    try:
        return attrs.evolve(candidate_from_mapping(doc.data, host, base_dir=base), source=doc.file)
    except ConfigError as exc:
        raise doc.error(exc) from None


def candidate_from_mapping(data: Any, host: Any = None, *, base_dir: str | None = None) -> CandidateConfig:
    """Validate and convert an already-loaded mapping (paths, no lines).

    ``base_dir``: where ``candidate:`` files named in ``routes`` are looked
    for first (the directory of the config that names them), before the
    current directory.
    """
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
    routes, choice_rules = _split_routes(shape.routes)
    result = CandidateConfig(
        name=shape.name,
        codec=shape.codec,
        params=params,
        rotation=rotation,
        rows=rows,
        measure=shape.measure,
        notes=shape.notes,
        in_sample=shape.in_sample,
        routes=routes,
        calibration=calibration,
        error_feedback=feedback,
    )
    if not choice_rules:
        return result
    choices = tuple(_choice(i, rule, data, result, host, base_dir) for i, rule in choice_rules)
    return attrs.evolve(result, choices=choices)


def _split_routes(value: Any) -> tuple[tuple[RouteRule, ...], list[tuple[int, Mapping[str, Any]]]]:
    """Route rules (``route:``) and the choice rules (``candidate:`` / ``codec:``) with their indices."""
    if value is None:
        return (), []
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"expected a list of rules, got {type_name(value)}", path="$.routes")
    routes, choices = [], []
    for i, rule in enumerate(value):
        at = f"$.routes[{i}]"
        if not isinstance(rule, Mapping):
            raise ConfigError(f"expected a mapping with match and route, candidate or codec, got {type_name(rule)}",
                              path=at)
        kinds = [k for k in ("route", "candidate", "codec") if k in rule]
        if len(kinds) != 1:
            raise ConfigError("a rule has exactly one of route, candidate or codec"
                              + (f" (it has {', '.join(kinds)})" if kinds else ""), path=at)
        if kinds[0] == "route":
            routes.append(structure(dict(rule), RouteRule, path=at))
        else:
            match = rule.get("match")
            if not isinstance(match, str):
                raise ConfigError(f"expected a regular expression string, got {type_name(match)}", path=f"{at}.match")
            try:
                re.compile(match)
            except re.error as exc:
                raise ConfigError(f"invalid regular expression: {exc}", path=f"{at}.match") from None
            choices.append((i, rule))
    return tuple(routes), choices


_CHOICE_KEYS = {"candidate": {"match", "blocks", "candidate", "file"},
                "codec": {"match", "blocks", "codec", "params", "rotation", "name"}}


def _choice(i: int, rule: Mapping[str, Any], data: Mapping[str, Any], mix: CandidateConfig, host: Any,
            base_dir: str | None) -> TensorChoice:
    at = f"$.routes[{i}]"
    kind = "candidate" if "candidate" in rule else "codec"
    extra = sorted(set(rule) - _CHOICE_KEYS[kind])
    if extra:
        raise ConfigError(f"unknown key(s) {', '.join(map(str, extra))} in a {kind} rule "
                          f"(allowed: {', '.join(sorted(_CHOICE_KEYS[kind]))})", path=at)
    file = None
    if kind == "codec":
        # the enclosing config with its codec (and rotation, if given) replaced
        mapping = {k: v for k, v in data.items() if k != "routes"}
        mapping.update({"name": rule.get("name", f"{mix.name}[{i}]"), "codec": rule["codec"],
                        "params": rule.get("params")})
        if "rotation" in rule:
            mapping["rotation"] = rule["rotation"]
        try:
            sub = candidate_from_mapping(mapping, host)
        except ConfigError as exc:
            raise exc.located(prefix=at) from None
    else:
        value = rule["candidate"]
        if isinstance(value, str):
            file = _find_candidate_file(value, base_dir, f"{at}.candidate")
            try:
                sub = load_candidate(file, host)
            except ConfigError as exc:
                raise ConfigError(f"candidate {value}: {exc}", path=f"{at}.candidate") from None
        elif isinstance(value, Mapping):
            file = rule.get("file") if isinstance(rule.get("file"), str) else None  # informational, as to_json writes it
            try:
                sub = candidate_from_mapping(value, host, base_dir=base_dir)
            except ConfigError as exc:
                raise exc.located(prefix=f"{at}.candidate") from None
        else:
            raise ConfigError(f"expected a candidate file name or mapping, got {type_name(value)}",
                              path=f"{at}.candidate")
        if sub.choices:
            raise ConfigError(f"candidate {sub.name!r} is a mix itself (candidate or codec routes); a candidate "
                              "named in routes must be uniform", path=f"{at}.candidate")
        if sub.routes and sub.routes != mix.routes:
            raise ConfigError(f"candidate {sub.name!r} has route rules other than this config's; the enclosing "
                              "config routes every tensor: give both the same rules, or none in the candidate",
                              path=f"{at}.candidate")
        if sub.calibration is not None and mix.calibration is None:
            raise ConfigError(f"candidate {sub.name!r} is data-aware: give this config the same calibration: "
                              "section (one calibration pass serves every tensor)", path=f"{at}.candidate")
        if sub.calibration is not None and sub.calibration != mix.calibration:
            raise ConfigError(f"candidate {sub.name!r} is calibrated on other text or windows than this config "
                              "(one calibration pass serves every tensor): give both the same calibration: section",
                              path=f"{at}.candidate")
        if sub.error_feedback is not None and mix.calibration is None:
            raise ConfigError(f"candidate {sub.name!r} uses error feedback, which needs layer statistics: "
                              "add a calibration: section to this config", path=f"{at}.candidate")
    sub = attrs.evolve(sub, routes=mix.routes, calibration=mix.calibration, measure=mix.measure)
    return TensorChoice(rule["match"], sub, file, _blocks(rule.get("blocks", None), f"{at}.blocks"))


def _blocks(value: Any, at: str) -> tuple[str, ...] | None:
    """A rule's ``blocks:`` (an item or a list of them), checked, as strings."""
    if value is None:
        return None
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items or len(items) > 64:
        raise ConfigError(f"expected 1 to 64 block numbers or slices, got {len(items)}", path=at)
    for j, item in enumerate(items):
        try:
            _block_slice(item)
        except ParamError as exc:
            raise ConfigError(exc.message, path=f"{at}[{j}]" if isinstance(value, (list, tuple)) else at) from None
    return tuple(str(item) for item in items)


def _find_candidate_file(value: str, base_dir: str | None, at: str) -> str:
    """``value`` relative to the naming config's directory, else to the current one."""
    for base in ([base_dir] if base_dir else []) + [""]:
        path = os.path.join(base, value)
        if os.path.isfile(path):
            return os.path.normpath(path)
    raise ConfigError(f"candidate file {value!r} not found"
                      + (f" (looked in {base_dir} and the current directory)" if base_dir else ""), path=at)


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

    feedback = structure(shape.error_feedback, ErrorFeedbackParams, path="$.error_feedback")
    if feedback.refit and not codec.refits_scales:
        raise ConfigError(f"codec {shape.codec!r} cannot refit its scales (refits_scales)",
                          path="$.error_feedback.refit")
    return calibration, feedback


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
    if candidate.choices:
        # blocks only when given, so the signatures of rules without them stay as they were
        payload["choices"] = [[c.match, kernel_signature(c.candidate, host)] + ([list(c.blocks)] if c.blocks else [])
                              for c in candidate.choices]
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()
