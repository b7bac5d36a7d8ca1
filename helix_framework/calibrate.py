"""The calibration pipeline: source -> route -> split -> fit -> encode ->
measure -> artifacts.

One tensor is in memory at a time (its float32 rows, the rotated rows when
the rotation is not the identity, and the reconstruction). Every tensor of
the source gets a manifest entry with its route and reason. Rows are split by
a seeded permutation into disjoint calibration and held-out sets; every
figure is reported on held-out rows, calibration rows and all rows, labelled.
The manifest is written last and atomically (see `helix_framework.artifacts`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import shutil
import stat
import threading
import time
import weakref
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import attrs
import numpy as np

import helix_jit
from threadpoolctl import threadpool_limits

from helix_framework import artifacts, outlock
from helix_framework.artifacts import split_arrays
from helix_framework.codec import CodecState, Codes
from helix_framework.config import CandidateConfig, canonical_json, kernel_signature
from helix_framework.engine import BlockStats, BlockStore, each_tensor
from helix_framework.errors import AgreementError, CalibrationError, ConfigError, HelixError, NotApplicable, OutputError
from helix_framework.layer_stats import LayerStats
from helix_framework.measurement import MeasureContext
from helix_framework.rotation import RotationState
from helix_framework.routing import NOT_SELECTED, require_selection, route_tensor, tensor_selector
from helix_framework.models import resolve_model
from helix_framework.sources import ModelSource, open_source
from helix_framework.summary import aggregate_figures, not_applicable_counts

log = logging.getLogger(__name__)



# -- rows ----------------------------------------------------------------------


@attrs.frozen
class RowSplit:
    """Disjoint calibration and held-out row indices of one tensor."""

    n_rows: int
    calibration: np.ndarray = attrs.field(eq=False, repr=False)
    held_out: np.ndarray = attrs.field(eq=False, repr=False)
    seed: int
    in_sample: bool = False
    clamped: bool = False

    @property
    def held_out_label(self) -> str:
        return "in_sample" if self.in_sample else "held_out"

    def to_json(self) -> dict[str, Any]:
        return {
            "n_rows": self.n_rows,
            "calibration": int(self.calibration.size),
            "held_out": int(self.held_out.size),
            "seed": self.seed,
            "in_sample": self.in_sample,
            "clamped": self.clamped,
            "calibration_sha256": _index_hash(self.calibration),
            "held_out_sha256": _index_hash(self.held_out),
        }


def _index_hash(idx: np.ndarray) -> str:
    return hashlib.sha256(np.sort(idx).astype("<i8").tobytes()).hexdigest()


def split_rows(n_rows: int, rows: Any, in_sample: bool, name: str = "") -> RowSplit:
    """Draw the row split of a tensor with ``n_rows`` rows.

    Held-out rows come first in a seeded permutation, calibration rows after
    them, so the sets are disjoint by construction. When the tensor has fewer
    rows than both requests together, the held-out set shrinks to a quarter
    of the rows (at least one) and calibration takes the rest; the manifest
    records ``clamped``.
    """
    seed = int(rows.seed)
    perm = np.random.default_rng(seed).permutation(n_rows)
    if in_sample:
        n_cal = n_rows if rows.calibration == "all" else min(int(rows.calibration), n_rows)
        cal = np.sort(perm[:n_cal])
        if rows.measurement == "calibration":
            held = cal
        else:
            held = np.sort(perm[:min(int(rows.measurement), n_rows)])
        return RowSplit(n_rows, cal, held, seed, in_sample=True, clamped=n_cal < n_rows and rows.calibration == "all")
    if n_rows < 2:
        raise CalibrationError(f"tensor {name!r}: {n_rows} row(s), cannot hold any row out")
    want_cal, want_held = int(rows.calibration), int(rows.measurement)
    clamped = want_cal + want_held > n_rows
    n_held = min(want_held, max(1, n_rows // 4)) if clamped else want_held
    n_cal = min(want_cal, n_rows - n_held)
    held = np.sort(perm[:n_held])
    cal = np.sort(perm[n_held : n_held + n_cal])
    return RowSplit(n_rows, cal, held, seed, in_sample=False, clamped=clamped)


# -- one tensor ----------------------------------------------------------------


@attrs.frozen
class Components:
    """The resolved plugins of a candidate."""

    candidate: CandidateConfig
    codec: Any
    rotation: Any
    measurements: tuple[Any, ...]
    codec_reg: Any
    rotation_reg: Any
    choices: tuple[Components, ...] = ()

    def for_tensor(self, name: str, n_blocks: int | None = None) -> Components:
        """The components that compress ``name`` of a model with ``n_blocks``
        blocks (a route choice's, or these)."""
        i = self.candidate.choice_index(name, n_blocks)
        return self if i is None else self.choices[i]


def resolve(candidate: CandidateConfig, host: Any = None) -> Components:
    if host is None:
        from helix_framework.host import get_host

        host = get_host()
    codec_reg = host.lookup("codec", candidate.codec)
    rotation_reg = host.lookup("rotation", candidate.rotation.kind)
    measurements = tuple(host.measurement(m) for m in candidate.measure if host.measurement(m).scope == "tensor")
    choices = tuple(resolve(c.candidate, host) for c in candidate.choices)
    return Components(candidate, codec_reg.obj, rotation_reg.obj, measurements, codec_reg, rotation_reg, choices)


@attrs.frozen
class TensorResult:
    """What calibrating one matrix produced."""

    arrays: dict[str, np.ndarray] = attrs.field(repr=False)
    reconstruction: np.ndarray = attrs.field(repr=False)
    split: RowSplit
    metrics: dict[str, dict[str, float]]
    bits: dict[str, float]
    codec_meta: dict[str, Any]
    rotation_meta: dict[str, Any]
    timing: dict[str, float]
    flags: tuple[str, ...] = ()


def tensor_rng(seed: int, name: str) -> np.random.Generator:
    """A generator that depends on the seed and the tensor, not on tensor order."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


@attrs.frozen
class Fitted:
    """A matrix fitted on some rows and reconstructed whole."""

    rot_state: RotationState
    state: CodecState
    codes: Codes
    reconstruction: np.ndarray = attrs.field(repr=False)
    bits: dict[str, float]
    timing: dict[str, float]


def fit_reconstruct(
    x: np.ndarray, cal_idx: np.ndarray, comp: Components, params: Any, name: str, rng: np.random.Generator,
    stats: LayerStats | None = None,
) -> Fitted:
    """Fit the rotation and codec on rows ``cal_idx``; encode, decode and invert every row.

    With layer ``stats`` (a data-aware candidate) the components that take
    statistics get them (the codec sees them transformed by the rotation),
    and the candidate's error feedback stage, if any, quantizes the columns.
    Statistics with ``drift`` (``target: reference``) replace ``x`` by
    `LayerStats.reference_target` first: the reconstruction approximates it.
    """
    cand = comp.candidate
    t0 = time.perf_counter()
    try:
        if stats is not None and stats.drift is not None:  # target: reference (see `LayerStats`)
            try:
                x = stats.reference_target(x, cand.calibration.target_damp)
            except ValueError as exc:
                raise CalibrationError(str(exc)) from exc
        rot_extra = {"stats": stats} if stats is not None and comp.rotation.takes_stats else {}
        if comp.rotation.takes_codec:  # awq searches its exponent with the candidate's own codec
            rot_extra["codec"] = comp.codec
        rot_state = comp.rotation.fit(x[cal_idx], cand.rotation.params, rng, codec_params=params, **rot_extra)
        xr = comp.rotation.apply(rot_state, x)
        rstats = _rotated_stats(comp, rot_state, stats) if stats is not None else None
        codec_extra = {"stats": rstats} if rstats is not None and comp.codec.takes_stats else {}
        state = comp.codec.fit(xr[cal_idx], params, rng, **codec_extra)
        t1 = time.perf_counter()
        if rstats is not None and cand.error_feedback is not None:
            from helix_framework.error_feedback import quantize_with_feedback

            codes = quantize_with_feedback(comp.codec, state, xr, rstats, cand.error_feedback)
        else:
            codes = comp.codec.encode(state, xr, **codec_extra)
        del xr  # the rotated copy (if any) is not needed past encoding
        t2 = time.perf_counter()
        recon = comp.rotation.invert(rot_state, comp.codec.decode(state, codes))
        t3 = time.perf_counter()
        if recon.shape != x.shape or recon.dtype != np.float32:
            raise CalibrationError(f"codec {cand.codec!r} decoded {recon.dtype}{recon.shape}, expected float32{x.shape}")
        account = comp.codec.bits(state, x.shape[0], x.shape[1])
        rotation_bits = comp.rotation.overhead_bits(rot_state)
    except HelixError as exc:
        raise _named(exc, name) from exc
    total_bits = account.code_bits + account.overhead_bits + rotation_bits
    bits = {
        "code_bpw": account.code_bpw,
        "overhead_bpw": account.overhead_bpw,
        "overhead_parts_bpw": account.parts_bpw(),
        "rotation_bpw": rotation_bits / x.size,
        "total_bpw": total_bits / x.size,
        "total_bits": total_bits,
    }
    timing = {"fit_s": t1 - t0, "encode_s": t2 - t1, "decode_s": t3 - t2}
    return Fitted(rot_state, state, codes, recon, bits, timing)


# The last transformed statistics: q/k/v (and gate/up) share one Hessian
# array and are fitted one after the other, and a seeded rotation of one
# width is the same for each of them, so the d x d x d product is formed
# once per input. One entry, held only while its input Hessian lives (a
# weak reference): at 5,632 inputs a Hessian and its rotation are 0.5 GB,
# which must not outlive the block they belong to.
_ROTATED: dict[tuple[Any, ...], tuple[Any, LayerStats]] = {}
_ROTATED_LOCK = threading.RLock()  # a weak reference's callback may run where the lock is held


def _rotated_stats(comp: Components, rot_state: RotationState, stats: LayerStats) -> LayerStats:
    digest = hashlib.sha256(canonical_json(dict(rot_state.meta)).encode())
    for k in sorted(rot_state.arrays):
        a = np.ascontiguousarray(rot_state.arrays[k])
        digest.update(f"|{k}|{a.dtype}|{a.shape}|".encode() + a.tobytes())
    key = (id(stats.hessian), stats.n_tokens, comp.rotation.name, getattr(comp.rotation, "version", ""),
           digest.hexdigest())
    with _ROTATED_LOCK:
        hit = _ROTATED.get(key)
        if hit is not None and hit[0]() is stats.hessian:
            return hit[1]
    try:
        rotated = comp.rotation.transform_stats(rot_state, stats)
    except NotImplementedError as exc:
        raise ConfigError(f"rotation {comp.candidate.rotation.kind!r} cannot transform layer statistics: {exc}",
                          path="$.rotation") from None
    with _ROTATED_LOCK:
        _ROTATED.clear()
        _ROTATED[key] = (weakref.ref(stats.hessian, lambda _: _forget_rotated(key)), rotated)
    return rotated


def _forget_rotated(key: tuple[Any, ...]) -> None:
    with _ROTATED_LOCK:
        _ROTATED.pop(key, None)


def calibrate_matrix(x: np.ndarray, name: str, comp: Components, stats: BlockStats | None = None,
                     n_blocks: int | None = None) -> TensorResult:
    """Fit, encode, decode and measure one 2-D float32 matrix (with its
    layer statistics in a data-aware candidate; a route choice's components
    compress it when the candidate has one for ``name`` in a model of
    ``n_blocks`` blocks)."""
    comp = comp.for_tensor(name, n_blocks)
    cand = comp.candidate
    split = split_rows(x.shape[0], cand.rows, cand.in_sample, name)
    fitted = fit_reconstruct(x, split.calibration, comp, cand.params, name, tensor_rng(cand.rows.seed, name),
                             stats=stats.fit if stats is not None else None)
    t0 = time.perf_counter()
    metrics = measure_splits(x, fitted.reconstruction, split, comp.measurements, cand.rows.seed, name,
                             held_stats=stats.held_out if stats is not None else None)
    arrays = {f"codes.{k}": v for k, v in fitted.codes.arrays.items()}
    arrays.update({f"state.{k}": v for k, v in fitted.state.arrays.items()})
    arrays.update({f"rotation.{k}": v for k, v in fitted.rot_state.arrays.items()})
    flags = tuple(fitted.state.meta.get("flags", ()))
    if split.in_sample:
        flags += ("in_sample",)
    return TensorResult(
        arrays=arrays,
        reconstruction=fitted.reconstruction,
        split=split,
        metrics=metrics,
        bits=fitted.bits,
        codec_meta={"state": dict(fitted.state.meta), "codes": dict(fitted.codes.meta)},
        rotation_meta=dict(fitted.rot_state.meta),
        timing={**fitted.timing, "measure_s": time.perf_counter() - t0},
        flags=flags,
    )


def _named(exc: HelixError, name: str) -> HelixError:
    """The same error type with the tensor named (a ConfigError keeps its key
    path; CalibrationError for other types whose message is built from fields)."""
    if isinstance(exc, ConfigError):  # keep the file, key path and line; say which tensor raised it
        return ConfigError(f"tensor {name!r}: {exc.message}", file=exc.file, path=exc.path, line=exc.line)
    message = f"tensor {name!r}: {exc}"
    if type(exc).__str__ is not Exception.__str__ or type(exc).__init__ is not Exception.__init__:
        return CalibrationError(message)
    return type(exc)(message)


def measure_splits(
    x: np.ndarray, recon: np.ndarray, split: RowSplit, measurements: tuple[Any, ...], seed: int, name: str,
    held_stats: LayerStats | None = None,
) -> dict[str, dict[str, float]]:
    """Every measurement on held-out (or in-sample), calibration and all rows
    (``held_stats``: the layer's inputs on held-out calibration windows).

    Besides one mapping of figures per split label, the result may hold
    ``not_applicable`` (measurement -> reason) and ``aggregate`` (figure ->
    how the summary combines it, when not the plain mean)."""
    out: dict[str, Any] = {}
    for label, idx in ((split.held_out_label, split.held_out), ("calibration", split.calibration), ("all", None)):
        orig = x if idx is None else x[idx]
        rec = recon if idx is None else recon[idx]
        figures: dict[str, float] = {}
        for m in measurements:
            try:
                got = m.measure(MeasureContext(orig, rec, split=label, seed=seed, tensor=name,
                                             stats=held_stats))
            except NotApplicable as exc:
                out.setdefault("not_applicable", {}).setdefault(m.name, exc.reason)
                continue
            figures.update(got)
            if m.aggregate != "mean":
                out.setdefault("aggregate", {}).update(dict.fromkeys(got, m.aggregate))
        out[label] = figures
    return out


# -- the run -------------------------------------------------------------------


@attrs.frozen
class CalibrationSummary:
    """The headline figures of a run (what ``--json`` prints)."""

    out_dir: str
    candidate: str
    tensors: int
    routed: dict[str, int]
    held_out: dict[str, float]
    bits: dict[str, float]
    seconds: float
    flags: dict[str, int]
    kernels: dict[str, int]
    token_agreement: dict[str, Any] | None = None
    #: measurement -> number of codec tensors it did not apply to
    not_applicable: dict[str, int] = attrs.field(factory=dict)
    #: set when --tensors left codec tensors uncompressed (see `partial_of`)
    partial: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


def calibrate(
    model: str | Path,
    candidate: CandidateConfig,
    out_dir: str | Path,
    *,
    tensors: str | None = None,
    host: Any = None,
    progress: bool = False,
    on_tensor: Callable[[int, int, str], None] | None = None,
    block_store: BlockStore | None = None,
) -> CalibrationSummary:
    """Calibrate every routed tensor of ``model`` and write artifacts to ``out_dir``.

    ``on_tensor(i, n, name)`` is called before tensor ``i`` of ``n``; an
    exception it raises stops the run like an interrupt (`helix serve`
    reports progress and cancels jobs through it). ``block_store`` keeps
    the reference's blocks on the calibration windows between runs
    (`engine.ReferenceBlocks`).

    ``out_dir`` is created only once the model has opened and every tensor
    is one decode can rebuild, and is locked for the run (`outlock`). Only
    files this tool wrote are ever deleted there; an interrupted run leaves
    the previous result whole.
    """
    comp = resolve(candidate, host)
    selector = tensor_selector(tensors)
    out = Path(out_dir)
    started = time.perf_counter()
    model = resolve_model(model)
    with open_source(model) as source:
        for info in source.tensors():
            if (problem := artifacts.rebuild_problem(info.dtype, info.shape)) is not None:
                raise CalibrationError(f"tensor {info.name!r}: {problem}; decode could not rebuild it, "
                                       "so it is refused")
        require_selection(selector, source.tensors(), candidate.routes)
        created = artifacts.make_output_dir(out)
        try:
            with outlock.hold(out, "calibrate"):
                return _calibrate_locked(source, model, candidate, comp, out, tensors, selector, host, progress,
                                         started, on_tensor, block_store)
        except BaseException:
            if created:  # leave no empty output directory behind
                for d in (out / artifacts.TENSOR_DIR, out):
                    with contextlib.suppress(OSError):
                        d.rmdir()
            raise


def _previous_manifest(out: Path) -> dict[str, Any] | None:
    """The manifest an earlier run left in ``out``, if it is a valid one."""
    if not (out / artifacts.MANIFEST).is_file():
        return None
    try:
        return artifacts.read_manifest(out)
    except artifacts.ArtifactError as exc:
        log.warning("%s; its files are left alone", exc)
        return None


def _calibrate_locked(source: ModelSource, model: Path, candidate: CandidateConfig, comp: Components, out: Path,
                      tensors: str | None, selector: Any, host: Any, progress: bool,
                      started: float, on_tensor: Callable[[int, int, str], None] | None = None,
                      block_store: BlockStore | None = None) -> CalibrationSummary:
    tensor_dir = out / artifacts.TENSOR_DIR
    if tensor_dir.is_symlink() or (tensor_dir.exists() and not tensor_dir.is_dir()):
        raise OutputError(f"{artifacts.TENSOR_DIR} is a link or not a directory: artifacts are written inside "
                          "the output directory only", path=str(out))
    for d in (out, tensor_dir):
        artifacts.clean_temporaries(d)
    old = _previous_manifest(out)
    owned = {r["file"] for r in artifacts.artifact_files(old)} if old else set()
    written: set[str] = set()
    try:
        # One BLAS thread: per-tensor products are small, and on a 2-core machine
        # two OpenBLAS threads made them several times slower whenever the other
        # core was busy; the JIT kernels split rows over threads themselves.
        with helix_jit.record_kernels() as recorder, threadpool_limits(1, "blas"):
            infos = source.tensors()
            entries_by_name: dict[str, dict[str, Any]] = {}

            def handle(info: Any, stats: BlockStats | None) -> np.ndarray | None:
                kept: dict[str, np.ndarray] = {}
                entries_by_name[info.name] = _calibrate_one(source, info, comp, tensor_dir, selector, written,
                                                            stats=stats, keep=kept)
                return kept.get(info.name)

            calibration_text = each_tensor(source, infos, candidate.calibration, handle, progress=progress,
                                           on_tensor=on_tensor, block_store=block_store,
                                           wants_stats=wants_stats(candidate, selector))
            entries = [entries_by_name[info.name] for info in infos]  # source order, whatever the visit order
            manifest = {
                "schema_version": artifacts.SCHEMA_VERSION,
                "source": {
                    "path": str(Path(model).resolve()),
                    "kind": source.kind,
                    "architecture": source.architecture,
                    "files": source.file_hashes(),
                    "tokenizer_files": [p.name for p in source.tokenizer_files()],
                },
                "config": candidate.to_json(),
                "config_file": candidate.source,
                "kernel_signature": kernel_signature(candidate, host) if host is not None
                else kernel_signature(candidate),
                "codec": _plugin_json(comp.codec_reg),
                "rotation": _plugin_json(comp.rotation_reg),
                "tensor_filter": tensors,
                "kernels": _kernels_json(recorder),
                "tensors": entries,
            }
            if calibration_text is not None:
                manifest["calibration_text"] = calibration_text
        summary = _summarize(manifest, str(out), time.perf_counter() - started)
        manifest["summary"] = summary.to_json()
        artifacts.write_json_atomic(out / artifacts.MANIFEST, manifest)
    except BaseException:
        # Interrupted or failed before the swap: the old manifest still rules;
        # drop what this run added and the old manifest does not name.
        artifacts.remove_owned(out, written - owned, None)
        raise
    artifacts.remove_owned(out, owned | written, manifest)
    if "token_agreement" in candidate.measure:
        summary = _add_token_agreement(model, out, manifest, host, started)
    return summary


def _add_token_agreement(model: Path, out: Path, manifest: dict[str, Any], host: Any, started: float) -> CalibrationSummary:
    """Run token agreement on the artifacts just written and record it in
    the manifest (rewritten atomically: the tensors are already verified)."""
    from helix_framework.agree import agree
    from helix_framework.host import get_host
    from helix_framework.sources import open_source

    host = host or get_host()
    with open_source(model) as source:
        report = agree(model, weights=weights_from_artifacts(out, source, host),
                       candidate_name=manifest["config"]["name"], source=source)
    summary = _summarize(manifest, str(out), time.perf_counter() - started)
    manifest["token_agreement"] = mark_partial(report.to_json(), summary.partial)
    summary = attrs.evolve(summary, token_agreement=_agreement_headline(manifest["token_agreement"]))
    manifest["summary"] = summary.to_json()
    artifacts.write_json_atomic(out / artifacts.MANIFEST, manifest)
    return summary


def partial_of(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """``{"compressed": N, "codec_tensors": M, "message": ...}`` for a run whose
    ``--tensors`` left codec tensors uncompressed (manifest entries in), else None."""
    return partial_result(sum(e["route"] == "codec" for e in entries),
                          sum(e.get("reason") == NOT_SELECTED for e in entries))


def partial_result(compressed: int, left_out: int) -> dict[str, Any] | None:
    """The `partial_of` record from counts: codec tensors compressed, and
    codec tensors ``--tensors`` left out."""
    if not left_out:
        return None
    total = compressed + left_out
    return {"compressed": compressed, "codec_tensors": total,
            "message": f"partial: {compressed} of {total} codec tensors compressed"}


def mark_partial(agreement: dict[str, Any], partial: dict[str, Any] | None) -> dict[str, Any]:
    """An agreement result of a partial candidate never certifies the model:
    ``certified`` false and a verdict that starts with the partial message."""
    if partial is None or str(agreement.get("verdict", "")).startswith("partial:"):
        return agreement
    verdict = str(agreement["verdict"])
    if agreement.get("certified"):
        verdict = "the gate is met with only these tensors compressed: " + verdict.removeprefix("certified: ")
    else:
        verdict = "with only these tensors compressed: " + verdict
    return {**agreement, "certified": False, "partial": partial,
            "verdict": f"{partial['message']}; not a verdict on the model ({verdict})"}


def _agreement_headline(data: dict[str, Any]) -> dict[str, Any]:
    keys = ("positions", "top1", "top5", "certified", "verdict", "sentences", "cosine_mean", "cosine_min", "partial")
    out = {k: data[k] for k in keys if k in data}
    if "kl" in data:
        out["kl_mean"] = data["kl"]["mean"]
    return out


def _plugin_json(reg: Any) -> dict[str, Any]:
    return {"name": reg.name, "version": getattr(reg.obj, "version", None), "distribution": reg.distribution,
            "distribution_version": reg.version}


@attrs.frozen
class Routed:
    """A source tensor's final route, and its rows when a codec gets it."""

    route: str
    reason: str
    rule: str
    reshape: tuple[int, int] | None
    rows: np.ndarray | None = attrs.field(repr=False, eq=False)


def route_and_read(source: ModelSource, info: Any, candidate: CandidateConfig, selector: Any = None) -> Routed:
    """Route one tensor and, for the codec route, read it as 2-D float32 rows.

    Tensors a codec cannot take after all (unreadable dtype, one row, NaN or
    infinity) are turned into skips with the reason, never dropped.
    """
    name, shape = info.name, tuple(info.shape)
    decision = route_tensor(name, shape, candidate.routes)
    route, reason, reshape = decision.route, decision.reason, decision.reshape
    if selector is not None and not selector.search(name) and route == "codec":
        route, reason = "passthrough", NOT_SELECTED
    x = None
    if route == "codec":
        try:
            x = source.read(name).reshape(reshape or shape)
        except HelixError as exc:
            route, reason, x = "passthrough", f"cannot be read as float: {exc}; kept as is", None
        else:
            if x.shape[0] < 2 and not candidate.in_sample:
                route, reason, x = "skip", f"{x.shape[0]} row(s): no row can be held out; kept as is", None
            elif not np.isfinite(x).all():
                bad = int((~np.isfinite(x)).sum())
                route, reason, x = "skip", f"contains {bad} NaN or infinite value(s); kept as is", None
    return Routed(route, reason, decision.rule, reshape, x)


def wants_stats(candidate: CandidateConfig, selector: Any = None) -> Callable[[Any], bool]:
    """``wants(info)``: whether a tensor may reach the codec (its route and
    the ``--tensors`` filter), so `each_tensor` observes only those layers."""

    def wants(info: Any) -> bool:
        if selector is not None and not selector.search(info.name):
            return False
        return route_tensor(info.name, tuple(info.shape), candidate.routes).route == "codec"

    return wants


def _calibrate_one(
    source: ModelSource, info: Any, comp: Components, tensor_dir: Path, selector: Any, written: set[str],
    stats: BlockStats | None = None, keep: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """One tensor's artifact and manifest entry (``stats``: its layer
    statistics in a data-aware run; ``keep`` receives its reconstruction)."""
    name, shape = info.name, tuple(info.shape)
    routed = route_and_read(source, info, comp.candidate, selector)
    route, reshape, x = routed.route, routed.reshape, routed.rows
    entry: dict[str, Any] = {
        "name": name,
        "dtype": info.dtype,
        "shape": list(shape),
        "source_bits_per_weight": info.source_bits_per_weight,
        "route": route,
        "reason": routed.reason,
        "rule": routed.rule,
    }
    stem = artifacts.sanitize(name)
    if route != "codec":
        raw = source.read_raw(name)
        stored = raw.dtype in artifacts.SAFETENSORS_DTYPES
        payload = {"weight": raw} if stored else {"raw": ("U8", [raw.data.size], raw.data)}
        file, sha, size = artifacts.write_safetensors(tensor_dir, stem, payload)
        written.add(f"{artifacts.TENSOR_DIR}/{file}")
        entry["files"] = [{"file": f"{artifacts.TENSOR_DIR}/{file}", "sha256": sha, "bytes": size}]
        return entry
    if stats is not None and (reshape is not None or stats.fit.hessian.shape[0] != x.shape[1]):
        raise CalibrationError(f"tensor {name!r}: its rows do not match the layer's inputs; cannot use statistics")
    chosen = comp.for_tensor(name, source.n_blocks)
    if chosen is not comp:
        entry["choice"] = {"candidate": chosen.candidate.name, "codec": _plugin_json(chosen.codec_reg),
                           "rotation": _plugin_json(chosen.rotation_reg), "config": chosen.candidate.to_json()}
    entry["candidate"] = chosen.candidate.name
    comp = chosen
    result = calibrate_matrix(x, name, comp, n_blocks=source.n_blocks, **({"stats": stats} if stats is not None else {}))
    if keep is not None:
        keep[name] = result.reconstruction
    file, sha, size = artifacts.write_safetensors(tensor_dir, stem, result.arrays)
    written.add(f"{artifacts.TENSOR_DIR}/{file}")
    entry.update(
        {
            "reshape": list(reshape) if reshape else None,
            "n_rows": int(x.shape[0]),
            "row_dim": int(x.shape[1]),
            "files": [{"file": f"{artifacts.TENSOR_DIR}/{file}", "sha256": sha, "bytes": size}],
            "rows": result.split.to_json(),
            "metrics": result.metrics,
            "bits": {
                **result.bits,
                "source_bpw": info.source_bits_per_weight,
                "ratio_vs_source": (info.source_bits_per_weight / result.bits["total_bpw"])
                if info.source_bits_per_weight else None,
                "ratio_vs_f16": 16.0 / result.bits["total_bpw"],
            },
            "codec_meta": result.codec_meta,
            "rotation_meta": result.rotation_meta,
            "timing": result.timing,
            "flags": list(result.flags),
        }
    )
    return entry


def _summarize(manifest: dict[str, Any], out_dir: str, seconds: float) -> CalibrationSummary:
    entries = manifest["tensors"]
    routed: dict[str, int] = {}
    for e in entries:
        routed[e["route"]] = routed.get(e["route"], 0) + 1
    coded = [e for e in entries if e["route"] == "codec"]
    weights = np.array([e["n_rows"] * e["row_dim"] for e in coded], dtype=np.float64)
    held: dict[str, float] = {}
    not_applicable = not_applicable_counts([e["metrics"] for e in coded])
    if coded:
        label = "in_sample" if manifest["config"]["in_sample"] else "held_out"
        figures = aggregate_figures([e["metrics"] for e in coded], weights, label)
        held.update({f"{how}_{key}": value for key, (how, value) in figures.items()})
        held["label_in_sample"] = float(label == "in_sample")
    total_bits = float(sum(e["bits"]["total_bits"] for e in coded))
    bits = {
        "codec_weights": int(weights.sum()),
        "codec_total_bpw": total_bits / weights.sum() if coded else 0.0,
        "codec_code_bpw": float(sum(e["bits"]["code_bpw"] * w for e, w in zip(coded, weights)) / weights.sum())
        if coded else 0.0,
    }
    # the overhead by part (scales, codebooks, ...) and the rotation's, over all codec weights
    parts: dict[str, float] = {}
    for e, w in zip(coded, weights):
        for part, bpw in {**e["bits"].get("overhead_parts_bpw", {}), "rotation": e["bits"]["rotation_bpw"]}.items():
            parts[part] = parts.get(part, 0.0) + bpw * w
    bits.update({f"codec_{part}_bpw": v / weights.sum() for part, v in sorted(parts.items()) if v})
    flags: dict[str, int] = {}
    for e in coded:
        for f in e.get("flags", []):
            flags[f] = flags.get(f, 0) + 1
    kernels = manifest.get("kernels", {})
    return CalibrationSummary(
        out_dir=out_dir,
        candidate=manifest["config"]["name"],
        tensors=len(entries),
        routed=routed,
        held_out=held,
        bits=bits,
        seconds=seconds,
        flags=flags,
        kernels={k: v for k, v in kernels.items() if isinstance(v, int)},
        not_applicable=not_applicable,
        partial=partial_of(entries),
    )


def _kernels_json(recorder: Any) -> dict[str, Any]:
    """The kernels a run used, and how many were compiled versus loaded."""
    uses = [dataclasses.asdict(u) for u in recorder.kernels]
    count = {origin: sum(u["source"] == origin for u in uses) for origin in ("compiled", "disk", "memory", "reference")}
    return {"used": uses, **{f"n_{k}": v for k, v in count.items()}}


# -- candidate weights in memory -----------------------------------------------


def weights_from_artifacts(directory: str | Path, source: ModelSource, host: Any) -> Mapping[str, np.ndarray]:
    """Reconstructed matrices of a calibration output, in the source's shapes.

    The artifacts are checked against the manifest at once; each matrix is
    rebuilt when it is looked up (and again on every lookup), so a model
    loaded lazily from them holds one block's matrices at a time."""
    directory = Path(directory)
    manifest = artifacts.read_manifest(directory)
    if manifest["source"]["files"] != source.file_hashes():
        raise AgreementError(
            f"{directory}: the artifacts were calibrated from a different model "
            f"({manifest['source']['path']}); pass that model"
        )
    problems = artifacts.verify(directory)
    if problems:
        raise AgreementError(f"{directory}: artifacts do not match the manifest: {problems[0]}")
    return ArtifactWeights(directory, manifest, host)


class ArtifactWeights(Mapping):
    """Codec-routed tensors of a verified calibration output, rebuilt on lookup."""

    def __init__(self, directory: Path, manifest: dict[str, Any], host: Any):
        self._directory, self._manifest, self._host = directory, manifest, host
        self._entries = {e["name"]: e for e in manifest["tensors"] if e["route"] == "codec"}

    def __getitem__(self, name: str) -> np.ndarray:
        return reconstruct(self._entries[name], self._directory, self._host, self._manifest)

    def __contains__(self, name: object) -> bool:  # without rebuilding the tensor
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def weights_from_config(source: ModelSource, candidate: CandidateConfig, host: Any,
                        tensors: str | None = None,
                        on_tensor: Callable[[int, int, str], None] | None = None,
                        bits: dict[str, float] | None = None,
                        block_store: BlockStore | None = None) -> dict[str, np.ndarray]:
    """Fit every routed matrix in memory (on its calibration rows, and for a
    data-aware candidate block by block with its layer statistics, exactly as
    `calibrate` does) and keep the reconstructions. ``on_tensor(i, n,
    name)`` is called before each tensor; an exception it raises stops the fit.
    ``bits``, if given, receives each tensor's total bits (codes, overhead, rotation);
    ``block_store`` as in `calibrate`."""
    comp = resolve(candidate, host)
    selector = tensor_selector(tensors)
    require_selection(selector, source.tensors(), candidate.routes)
    out = {}

    def fit_one(info: Any, stats: BlockStats | None) -> np.ndarray | None:
        routed = route_and_read(source, info, candidate, selector)
        if routed.route != "codec":
            return None
        chosen = comp.for_tensor(info.name, source.n_blocks)  # a route choice's components, or the candidate's
        cand = chosen.candidate
        split = split_rows(routed.rows.shape[0], cand.rows, cand.in_sample, info.name)
        fitted = fit_reconstruct(routed.rows, split.calibration, chosen, cand.params, info.name,
                                 tensor_rng(cand.rows.seed, info.name), stats=stats.fit if stats is not None else None)
        out[info.name] = fitted.reconstruction.reshape(info.shape)
        if bits is not None:
            bits[info.name] = fitted.bits["total_bits"]
        return out[info.name]

    each_tensor(source, source.tensors(), candidate.calibration, fit_one, on_tensor=on_tensor,
                block_store=block_store, wants_stats=wants_stats(candidate, selector))
    return out


# -- decode --------------------------------------------------------------------


def reconstruct(entry: dict[str, Any], directory: Path, host: Any, manifest: dict[str, Any]) -> np.ndarray:
    """Rebuild one codec-routed tensor from its artifact (float32, source shape)."""
    arrays = artifacts.read_safetensors(directory / entry["files"][0]["file"])
    codes, state, rot = split_arrays(arrays)
    plugins = artifacts.compressed_by(entry, manifest)
    codec = host.codec(plugins["codec"]["name"])
    rotation = host.rotation(plugins["rotation"]["name"])
    meta = entry["codec_meta"]
    rows = codec.decode(CodecState(state, meta["state"]), Codes(codes, meta["codes"]))
    rows = rotation.invert(RotationState(rot, entry["rotation_meta"]), rows)
    return np.ascontiguousarray(rows, dtype=np.float32).reshape(entry["shape"])


def decode(directory: str | Path, out_file: str | Path, host: Any = None, progress: bool = False) -> dict[str, Any]:
    """Rebuild every tensor of a calibration into one safetensors file.

    For a Hugging Face source the side files of `artifacts.SIDE_FILES` the
    manifest names are copied beside ``out_file`` (each through a temporary
    renamed into place). Everything is checked before anything is written:
    the manifest, the artifacts, the target (never the run's own files, the
    source model, a directory or a ``.bin``/``.pt`` name) and the side files
    (regular files inside the source directory).
    """
    if host is None:
        from helix_framework.host import get_host

        host = get_host()
    directory, out_file = Path(directory), Path(out_file)
    manifest = artifacts.read_manifest(directory)
    _check_decode_target(directory, out_file, manifest)
    side = _side_files(manifest)
    if out_file.name in {name for name, _ in side}:
        raise OutputError(f"would be overwritten by the source's {out_file.name}; choose another name",
                          path=str(out_file))
    problems = artifacts.verify(directory)
    if problems:
        raise artifacts.ArtifactError(f"{directory}: artifacts do not match the manifest: {problems[0]}")

    def produce(entry: dict[str, Any]) -> Any:
        try:
            return rebuild(entry)
        except artifacts.ArtifactError as exc:
            raise artifacts.ArtifactError(f"tensor {entry['name']!r}: {exc}") from None
        except (ValueError, TypeError, KeyError, IndexError) as exc:  # artifacts disagreeing with their entry
            raise artifacts.ArtifactError(f"{directory}: tensor {entry['name']!r}: cannot rebuild it from its "
                                          f"artifact: {str(exc)[:200]}") from None

    def rebuild(entry: dict[str, Any]) -> Any:
        if entry["route"] == "codec":
            return reconstruct(entry, directory, host, manifest)
        arrays = artifacts.read_safetensors(directory / entry["files"][0]["file"])
        if "weight" in arrays:
            return (entry["dtype"], entry["shape"], np.asarray(arrays["weight"]).reshape(-1).view(np.uint8))
        if _out_dtype(entry) == entry["dtype"]:  # a safetensors dtype numpy lacks (F8): bytes as stored
            return (entry["dtype"], entry["shape"], np.asarray(arrays["raw"]))
        return _dequantize_raw(entry, np.asarray(arrays["raw"]))

    specs = [(e["name"], _out_dtype(e), e["shape"]) for e in manifest["tensors"]]
    entries = {e["name"]: e for e in manifest["tensors"]}
    artifacts.make_output_dir(out_file.parent)
    artifacts.clean_temporaries(out_file.parent)
    artifacts.write_safetensors_stream(
        out_file, specs, lambda name: produce(entries[name]),
        metadata={"helix_candidate": manifest["config"]["name"], "helix_source": manifest["source"]["path"]},
    )
    for name, real in side:
        def copy(f: Any, real: Path = real) -> None:
            with open(real, "rb") as src:
                shutil.copyfileobj(src, f)

        artifacts.atomic_write(out_file.parent, ".side", copy, lambda name=name: out_file.parent / name,
                               where=out_file.parent / name)
    return {"out": str(out_file), "tensors": len(specs), "copied": [name for name, _ in side]}


def _check_decode_target(directory: Path, out_file: Path, manifest: dict[str, Any]) -> None:
    """Refuse a decode target that is not a new or replaceable model file."""
    if out_file.suffix.lower() in (".bin", ".pt"):
        raise OutputError("refused as decode output: helix never reads .bin/.pt (pickle) files; "
                          "give a .safetensors name", path=str(out_file))
    artifacts.refuse_run_files(directory, out_file, manifest, "decode")


def _side_files(manifest: dict[str, Any]) -> list[tuple[str, Path]]:
    """(name, resolved path) of each side file decode copies, checked to be a
    regular file inside the source directory. In a Hugging Face hub cache
    (``snapshots/<rev>/`` whose files link to ``../../blobs/``) the repo's
    blobs directory counts as inside."""
    if manifest["source"]["kind"] != "hf_directory":
        return []
    src = Path(manifest["source"]["path"])
    roots = [src.resolve()]
    if src.parent.name == "snapshots":
        roots.append((src.parent.parent / "blobs").resolve())
    names = dict.fromkeys(["config.json", "generation_config.json", *manifest["source"].get("tokenizer_files", [])])
    found = []
    for name in names:
        path = src / name
        try:
            real = path.resolve(strict=True)
        except (OSError, RuntimeError):  # absent, a dangling link or a link loop: nothing to copy
            if os.path.lexists(path):
                log.warning("%s: side file cannot be resolved; not copied", path)
            continue
        if not any(real.is_relative_to(root) for root in roots):
            raise artifacts.ArtifactError(f"{path}: side file resolves to {real}, outside the source directory; "
                                          "refused")
        if not stat.S_ISREG(os.stat(real).st_mode):
            raise artifacts.ArtifactError(f"{path}: side file is not a regular file; refused")
        found.append((name, real))
    return found


def _out_dtype(entry: dict[str, Any]) -> str:
    if entry["route"] == "codec" or entry["dtype"] not in artifacts.WRITABLE_DTYPES:
        return "F32"
    return entry["dtype"]


def _dequantize_raw(entry: dict[str, Any], raw: np.ndarray) -> np.ndarray:
    import gguf

    qtype = gguf.GGMLQuantizationType[entry["dtype"]]
    values = gguf.quants.dequantize(raw.view(np.uint8), qtype)
    return np.ascontiguousarray(values, dtype=np.float32).reshape(entry["shape"])
