"""Sweeps: grids of candidates, run by a process pool or Ray, results in LanceDB.

A sweep file::

    name: wider_codebook_sweep
    model: smollm2                 # optional; --model overrides
    codec: campq
    grid:                          # every axis a list; the product is the sweep
      centroids: [256, 1024]
      residual.depth: [0, 1]       # dotted paths reach nested params
      rotation: [{kind: identity}, {kind: hadamard}]
      lane_width: [F32x16]
    fixed:                         # shared by every point
      subspace_dim: 8
      rows: {calibration: 384, measurement: 192, seed: 42}
    measure: [rel_l2, icc_3_1, token_agreement]
    tensors: "blk\\.(0|15|29)\\."  # optional regex subset
    agreement: {positions: 2000, window: 512}   # optional

Axis and fixed names are fields of the codec's params (``centroids``,
``residual``, ``residual.depth``, ...), or ``rotation``/``rows`` (and their
dotted sub-keys), or ``params`` itself. An axis value replaces whatever
``fixed`` holds at its path. Axis names are checked against the codec's
params schema before anything else; each point is then validated exactly
like a candidate config (`candidate_from_mapping`). The cardinality (product
of the axis lengths) is checked before any point is built: over
`MAX_POINTS` the sweep is refused.

Invalid points are reported with their reason and skipped (``strict``
refuses the whole sweep). Each valid point is a candidate keyed by the
SHA-256 of its config (minus name and notes), the tensor filter and the
agreement settings; a candidate whose summary row (status ok) exists for the
same model hash is skipped, so a sweep resumes where it stopped (a failed
candidate keeps its failed row and is tried again).

Executors: ``local`` (a spawn process pool with one worker per core) and
``ray`` (`ray.init(address=...)`, else a local instance without dashboard).
Workers calibrate one candidate at a time, one tensor at a time (all the
reconstructions of the selected tensors are kept only when token agreement is
measured), and return plain rows; the driver alone writes LanceDB. Workers
on one machine take a per-kernel file lock around the kernel cache lookup, so
each distinct kernel signature is compiled once per sweep even when two
workers need it at the same moment.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import itertools
import json
import logging
import math
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import attrs

from helix_framework.config import (
    RowsConfig,
    canonical_json,
    YamlDocument,
    candidate_from_mapping,
    read_config_file,
    structure,
)
from helix_framework.errors import ConfigError, SweepError, SweepTooLarge
from helix_framework.summary import aggregate_figures
from helix_framework.routing import NOT_SELECTED, tensor_selector

log = logging.getLogger(__name__)

MAX_POINTS = 10_000
#: top-level candidate keys an axis or fixed key may name; anything else is a codec param
CANDIDATE_KEYS = ("params", "rotation", "rows", "in_sample", "routes")
#: environment passed on to workers (Ray workers do not inherit the driver's)
WORKER_ENV = ("HELIX_JIT_CACHE_DIR", "HELIX_CACHE_DIR", "HELIX_JIT_DISABLE", "HELIX_JIT_THREADS")






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
            cand = candidate_from_mapping(mapping, host)
        except ConfigError as exc:
            out.append(Point(i, values, mapping, error=f"{exc.path}: {exc.message}"))
            continue
        out.append(Point(i, values, mapping, cand, key=candidate_key(cand, spec)))
    return out


# -- one candidate (runs in a worker) --------------------------------------------


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def run_candidate(task: dict[str, Any]) -> dict[str, Any]:
    """Calibrate (and, when asked, token-agree) one candidate.

    ``task``: mapping (the candidate mapping), model (a path the worker can
    read), tensors (regex or None), positions, window, env. Returns plain
    rows (no Arrow, no LanceDB): ``tensor_rows``, ``summary``, ``kernels``.
    Errors become ``status: failed`` with the message, never an exception.
    """
    for key, value in (task.get("env") or {}).items():
        os.environ.setdefault(key, value)
    import helix_jit
    from threadpoolctl import threadpool_limits

    from helix_framework.calibrate import calibrate_matrix, mark_partial, partial_result, resolve, route_and_read
    from helix_framework.host import get_host
    from helix_framework.sources import open_source

    started = time.perf_counter()
    host = get_host()
    tensor_rows: list[dict[str, Any]] = []
    kernels: list[dict[str, Any]] = []
    summary: dict[str, Any] = {"status": "ok", "error": None}
    try:
        cand = candidate_from_mapping(task["mapping"], host)
        comp = resolve(cand, host)
        want_agree = "token_agreement" in cand.measure
        selector = tensor_selector(task.get("tensors"))
        weights: dict[str, Any] = {}
        left_out = 0
        with open_source(task["model"]) as source, helix_jit.record_kernels() as rec, \
                threadpool_limits(1, "blas"):
            for info in source.tensors():
                routed = route_and_read(source, info, cand, selector)
                if routed.route != "codec":
                    left_out += routed.reason == NOT_SELECTED
                    continue
                x = routed.rows
                result = calibrate_matrix(x, info.name, comp)
                tensor_rows.append(_tensor_row(info, x, result))
                if want_agree:
                    weights[info.name] = result.reconstruction.reshape(info.shape)
                del x, result, routed
            kernels = [{"signature": u.signature, "name": u.name, "lane_width": u.lane_width, "source": u.source}
                       for u in rec.kernels]
            calibrate_s = time.perf_counter() - started
            agreement = None
            agree_s = None
            if want_agree:
                if not weights:
                    raise SweepError("token_agreement: no tensor was routed to the codec")
                from helix_framework.agree import agree

                t0 = time.perf_counter()
                report = agree(task["model"], weights=weights, candidate_name=cand.name,
                               positions=task["positions"], window=task["window"], source=source)
                agree_s = time.perf_counter() - t0
                agreement = report.to_json()
                del weights
        summary.update(_summary_figures(tensor_rows, cand.in_sample))
        summary.update({"calibrate_s": calibrate_s, "agree_s": agree_s})
        if agreement is not None:
            agreement = mark_partial(agreement, partial_result(len(tensor_rows), left_out))
            lo, hi = agreement["intervals"]["top1"]
            summary.update({
                "positions": int(agreement["positions"]), "top1": float(agreement["top1"]),
                "top1_ci_low": float(lo), "top1_ci_high": float(hi), "top5": float(agreement["top5"]),
                "kl_mean": float(agreement["kl"]["mean"]), "certified": bool(agreement["certified"]),
                "agreement": json.dumps({k: v for k, v in agreement.items()
                                         if k not in ("divergence_positions", "prompts")}, default=str),
            })
    except Exception as exc:  # one bad candidate must not stop a sweep
        log.warning("candidate failed: %s", exc)
        summary = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        tensor_rows = []
    summary["seconds"] = time.perf_counter() - started
    summary["pid"] = os.getpid()
    return {"tensor_rows": tensor_rows, "summary": summary, "kernels": kernels}


def _tensor_row(info: Any, x: Any, result: Any) -> dict[str, Any]:
    label = result.split.held_out_label
    held, cal = result.metrics[label], result.metrics["calibration"]
    return {
        "tensor": info.name, "shape": json.dumps(list(info.shape)), "n_rows": int(x.shape[0]),
        "row_dim": int(x.shape[1]), "n_calibration": int(result.split.calibration.size),
        "n_held_out": int(result.split.held_out.size), "rows": json.dumps(result.split.to_json()),
        "rel_l2": _nan_to_none(held.get("rel_l2")), "icc_3_1": _nan_to_none(held.get("icc_3_1")),
        "calibration_rel_l2": _nan_to_none(cal.get("rel_l2")),
        "calibration_icc_3_1": _nan_to_none(cal.get("icc_3_1")),
        "in_sample": label == "in_sample", "metrics": json.dumps(result.metrics),
        "bits_per_weight": float(result.bits["total_bpw"]), "code_bpw": float(result.bits["code_bpw"]),
        "overhead_bpw": float(result.bits["overhead_bpw"]), "rotation_bpw": float(result.bits["rotation_bpw"]),
        "total_bits": float(result.bits["total_bits"]),
        "fit_s": result.timing["fit_s"], "encode_s": result.timing["encode_s"],
        "decode_s": result.timing["decode_s"], "measure_s": result.timing["measure_s"],
        "flags": json.dumps(list(result.flags)),
    }


def _summary_figures(rows: list[dict[str, Any]], in_sample: bool) -> dict[str, Any]:
    """Figures over tensors combined as `helix calibrate` combines them, and weighted bits."""
    if not rows:
        raise SweepError("no tensor was routed to the codec (check the tensors regex)")
    weights = [r["n_rows"] * r["row_dim"] for r in rows]
    label = "in_sample" if in_sample else "held_out"
    per = [json.loads(r["metrics"]) for r in rows]
    means = {split: {k: v for k, (_, v) in aggregate_figures(per, weights, split).items()}
             for split in (label, "calibration", "all")}
    flags: dict[str, int] = {}
    for r in rows:
        for f in json.loads(r["flags"]):
            flags[f] = flags.get(f, 0) + 1
    total_bits = sum(r["total_bits"] for r in rows)
    return {
        "tensors": len(rows), "weights": int(sum(weights)),
        "bits_per_weight": total_bits / sum(weights),
        "code_bpw": sum(r["code_bpw"] * w for r, w in zip(rows, weights)) / sum(weights),
        "rel_l2": _nan_to_none(means[label].get("rel_l2")), "icc_3_1": _nan_to_none(means[label].get("icc_3_1")),
        "calibration_rel_l2": _nan_to_none(means["calibration"].get("rel_l2")),
        "calibration_icc_3_1": _nan_to_none(means["calibration"].get("icc_3_1")),
        "in_sample": in_sample, "metrics": json.dumps(means), "flags": json.dumps(flags),
        **{k: sum(r[k] for r in rows) for k in ("fit_s", "encode_s", "decode_s", "measure_s")},
    }


# -- executors -----------------------------------------------------------------


def _run_local(tasks: list[dict[str, Any]], jobs: int, on_result: Callable[[int, dict[str, Any]], None]) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        futures = {pool.submit(run_candidate, task): i for i, task in enumerate(tasks)}
        try:
            for fut in as_completed(futures):
                on_result(futures[fut], fut.result())
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise


#: environment of a Ray instance this tool starts: everything on loopback, no
#: usage statistics. Ray replaces a loopback node address with the routable one
#: (found by a UDP "connect" to 8.8.8.8) unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
#: is 0, and its head process asks the cloud metadata endpoints
#: (169.254.169.254, metadata.google.internal) for the provider name even with
#: usage statistics off; a proxy on a closed loopback port turns those requests
#: into an immediate "connection refused", while loopback itself bypasses it.
RAY_LOCAL_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_USAGE_STATS_PROMPT_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    **{k: "http://127.0.0.1:9" for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")},
    **{k: "localhost,127.0.0.1,::1" for k in ("no_proxy", "NO_PROXY")},
}


@contextlib.contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` while the block runs (child processes
    started meanwhile keep them), then as it was."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _run_ray(tasks: list[dict[str, Any]], jobs: int, address: str | None,
             on_result: Callable[[int, dict[str, Any]], None]) -> None:
    """Run ``tasks`` as Ray tasks: on the cluster at ``address``, else on a
    Ray instance started here, bound to 127.0.0.1, dashboard and usage
    statistics off (`RAY_LOCAL_ENV`)."""
    with _environ({k: v for k, v in RAY_LOCAL_ENV.items() if not address or k.startswith("RAY_USAGE")}):
        try:
            import ray
        except ImportError:
            raise SweepError("executor ray needs Ray: pip install 'helix-framework[ray]'") from None
        env = {"RAY_USAGE_STATS_ENABLED": "0", **{k: os.environ[k] for k in WORKER_ENV if k in os.environ}}
        started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"log_to_driver": False, "runtime_env": {"env_vars": env}}
            if address:
                ray.init(address=address, **kwargs)
            else:
                ray.init(num_cpus=jobs, include_dashboard=False, _node_ip_address="127.0.0.1",
                         object_store_memory=200 * 1024**2, **kwargs)
            started = True
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(run_candidate)
        pending = {remote.remote(task): i for i, task in enumerate(tasks)}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                on_result(pending.pop(ref), ray.get(ref))
    finally:
        if started:
            ray.shutdown()


# -- the sweep -----------------------------------------------------------------


@attrs.frozen
class SweepSummary:
    """What a sweep did (what ``helix sweep --json`` prints)."""

    sweep: str
    db: str
    model: str
    model_hash: str
    run_id: str
    executor: str
    workers: int
    points: int
    valid: int
    invalid: list[dict[str, Any]]
    already_done: int
    ran: int
    ok: int
    failed: list[dict[str, Any]]
    orphan_rows_removed: int
    seconds: float
    kernels: dict[str, int]
    candidates: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


def model_hash_of(file_hashes: Mapping[str, str]) -> str:
    return hashlib.sha256(canonical_json(dict(file_hashes)).encode()).hexdigest()


def _plugin_meta(host: Any, kind: str, name: str) -> dict[str, Any]:
    reg = host.lookup(kind, name)
    return {"name": reg.name, "version": str(getattr(reg.obj, "version", "") or ""),
            "distribution": reg.distribution, "distribution_version": reg.version}


def run_sweep(
    spec: SweepSpec,
    db_dir: str | Path,
    *,
    model: str | Path | None = None,
    executor: str = "local",
    address: str | None = None,
    jobs: int | None = None,
    strict: bool = False,
    positions: int | None = None,
    window: int | None = None,
    host: Any = None,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
) -> SweepSummary:
    """Run every valid, not yet stored point of ``spec`` and append its rows.

    ``on_event(kind, data)`` is called with ``("invalid", point)``,
    ``("start", {...})`` and ``("candidate", row)`` as the sweep goes.
    """
    from helix_framework.config import kernel_signature
    from helix_framework.models import resolve_model
    from helix_framework.results import ResultsDB
    from helix_framework.sources import open_source

    if host is None:
        from helix_framework.host import get_host

        host = get_host()
    emit = on_event or (lambda kind, data: None)
    if executor not in ("local", "ray"):
        raise SweepError(f"unknown executor {executor!r}; expected local or ray")
    if positions is not None or window is not None:
        spec = attrs.evolve(spec, agreement=AgreementSettings(positions or spec.agreement.positions,
                                                              window or spec.agreement.window))
    model_arg = model or spec.model
    if not model_arg:
        raise SweepError("no model: give model: in the sweep file or --model")
    started = time.perf_counter()
    points = expand(spec, host)
    invalid = [{"index": p.index, "point": p.values, "reason": p.error} for p in points if p.error]
    for item in invalid:
        emit("invalid", item)
    if invalid and strict:
        first = invalid[0]
        raise SweepError(f"{len(invalid)} of {len(points)} points are invalid (--strict); first: point "
                         f"{first['index']} ({point_label(first['point'])}): {first['reason']}")
    valid = [p for p in points if not p.error]
    path = resolve_model(model_arg).resolve()
    with open_source(path) as source:
        file_hashes = source.file_hashes()
    mhash = model_hash_of(file_hashes)
    with ResultsDB.locked(db_dir) as db:
        removed = db.drop_orphans(mhash)
        done = db.done_keys(mhash)
        seen: set[str] = set()
        todo = []
        for p in valid:
            if p.key in done or p.key in seen:
                continue
            seen.add(p.key)
            todo.append(p)
        n_jobs = max(1, min(jobs or os.cpu_count() or 1, len(todo) or 1))
        run_id = uuid.uuid4().hex
        env = {k: os.environ[k] for k in WORKER_ENV if k in os.environ}
        if n_jobs > 1 and "HELIX_JIT_THREADS" not in env:
            env["HELIX_JIT_THREADS"] = "1"  # the workers already use every core
        tasks = [{"mapping": p.mapping, "model": str(path), "tensors": spec.tensors,
                  "positions": spec.agreement.positions, "window": spec.agreement.window, "env": env} for p in todo]
        emit("start", {"points": len(points), "valid": len(valid), "invalid": len(invalid),
                       "already_done": len(valid) - len(todo), "to_run": len(todo), "workers": n_jobs,
                       "executor": executor, "orphan_rows_removed": removed})
        if any("token_agreement" in p.candidate.measure for p in todo):
            _warm_reference(path, spec.agreement)

        kernel_sources: dict[str, set[str]] = {}
        compile_events = 0
        ok = 0
        failed: list[dict[str, Any]] = []
        written: list[dict[str, Any]] = []
        plugin_cache: dict[tuple[str, str], dict[str, Any]] = {}

        def plugin(kind: str, name: str) -> dict[str, Any]:
            if (kind, name) not in plugin_cache:
                plugin_cache[kind, name] = _plugin_meta(host, kind, name)
            return plugin_cache[kind, name]

        def on_result(i: int, result: dict[str, Any]) -> None:
            nonlocal compile_events, ok
            p = todo[i]
            cand = p.candidate
            now = _dt.datetime.now(_dt.timezone.utc)
            sig = kernel_signature(cand, host)
            common = {"candidate_key": p.key, "sweep": spec.name, "candidate": cand.name, "run_id": run_id,
                      "time": now, "model_id": str(model_arg), "model_hash": mhash, "kernel_signature": sig}
            compiled_here = 0
            for k in result["kernels"]:
                kernel_sources.setdefault(k["signature"], set()).add(k["source"])
                compiled_here += k["source"] == "compiled"
            compile_events += compiled_here
            codec, rotation = plugin("codec", cand.codec), plugin("rotation", cand.rotation.kind)
            config = cand.to_json()
            summary = {
                **common, **result["summary"],
                "codec": codec["name"], "codec_version": codec["version"],
                "codec_distribution": codec["distribution"],
                "codec_distribution_version": codec["distribution_version"],
                "rotation": rotation["name"], "rotation_version": rotation["version"],
                "rotation_distribution": rotation["distribution"],
                "rotation_distribution_version": rotation["distribution_version"],
                "point": json.dumps(p.values, sort_keys=True), "params": json.dumps(flatten(config["params"])),
                "config": json.dumps(config), "kernels": json.dumps(result["kernels"]),
                "kernels_compiled": compiled_here, "kernels_from_cache": len(result["kernels"]) - compiled_here,
            }
            worker_pid = summary.pop("pid", None)
            db.write_candidate([{**common, **row} for row in result["tensor_rows"]], summary)
            if summary["status"] == "ok":
                ok += 1
            else:
                failed.append({"index": p.index, "candidate": cand.name, "error": summary["error"]})
            view = {k: summary.get(k) for k in ("candidate", "status", "error", "bits_per_weight", "rel_l2", "icc_3_1",
                                                 "top1", "top5", "kl_mean", "certified", "seconds", "kernels_compiled")}
            view["worker_pid"] = worker_pid
            view["done"] = ok + len(failed)
            view["total"] = len(todo)
            written.append(view)
            emit("candidate", view)

        if todo:
            if executor == "local":
                _run_local(tasks, n_jobs, on_result)
            else:
                _run_ray(tasks, n_jobs, address, on_result)
        distinct = len(kernel_sources)
        compiled = sum("compiled" in s for s in kernel_sources.values())
        return SweepSummary(
            sweep=spec.name, db=str(db_dir), model=str(model_arg), model_hash=mhash, run_id=run_id, executor=executor,
            workers=n_jobs, points=len(points), valid=len(valid), invalid=invalid, already_done=len(valid) - len(todo),
            ran=len(todo), ok=ok, failed=failed, orphan_rows_removed=removed, seconds=time.perf_counter() - started,
            kernels={"distinct": distinct, "compiled": compiled, "from_cache": distinct - compiled,
                     "compile_events": compile_events},
            candidates=written,
        )


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


def _warm_reference(model: Path, settings: AgreementSettings) -> None:
    """Compute (or find) the reference logits once in the driver, so workers
    only ever read the cache instead of computing it concurrently."""
    from helix_framework import agree as agree_mod
    from helix_framework.prompts import load_prompts
    from helix_framework.reference import DecoderModel, load_model, load_tokenizer
    from helix_framework.sources import open_source

    with open_source(model) as source:
        reference = load_model(source)
        if not isinstance(reference, DecoderModel):
            return
        prompts = load_prompts(None)
        windows = agree_mod.token_windows(load_tokenizer(source), prompts, settings.positions, settings.window)
        key = agree_mod._cache_key(source, prompts, settings.positions, settings.window)
        t0 = time.perf_counter()
        with contextlib.suppress(Exception):
            agree_mod.reference_outputs(lambda: reference, source, windows, key)
        log.info("reference logits ready in %.1f s", time.perf_counter() - t0)


__all__ = ["MAX_POINTS", "AgreementSettings", "Point", "SweepError", "SweepSpec", "SweepSummary", "SweepTooLarge",
           "candidate_key", "expand", "flatten", "iter_points", "load_sweep", "point_label", "point_mapping",
           "run_candidate", "run_sweep", "sweep_from_mapping"]
