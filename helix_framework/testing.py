"""Conformance helpers for codec, rotation, compressor and measurement plugins.

The built-in components and third-party plugins call these from their own
tests, so every plugin is held to the same contract (round trip, determinism
for a seed, honest bits, invertible rotations, params that survive JSON).
Each helper raises `AssertionError` with a message saying what broke, and
returns something useful (a reconstruction, a bits account) for further
checks. Example, in a plugin's ``tests/test_my_codec.py``::

    import numpy as np
    from helix_framework import testing
    from my_plugin import MyCodec

    ROWS = np.random.default_rng(0).standard_normal((64, 96)).astype(np.float32)

    def test_conformance():
        codec, params = MyCodec(), MyCodec.Params(centroids=16)
        testing.check_params_round_trip(params)
        testing.check_codec_round_trip(codec, params, ROWS, max_rel_l2=0.5)
        testing.check_codec_deterministic(codec, params, ROWS, seed=7)
        testing.check_codec_bits(codec, params, ROWS)

The helpers use only numpy and attrs/cattrs; pytest is not required.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import attrs
import cattrs
import numpy as np

from helix_framework.codec import BitsAccount, Codec, CodecState, Codes
from helix_framework.compressor import CompressionResult, Compressor, ratio_of
from helix_framework.measure.stats import rel_l2
from helix_framework.measurement import MeasureContext, Measurement
from helix_framework.rotation import Rotation, RotationState

__all__ = [
    "check_codec_artifact_round_trip",
    "check_codec_bits",
    "check_codec_deterministic",
    "check_codec_fixture",
    "check_codec_round_trip",
    "check_compressor",
    "check_kernel",
    "check_measurement",
    "check_params_round_trip",
    "check_rotation_invertible",
    "check_rotation_stats",
    "write_codec_fixture",
]


def _label(component: Any) -> str:
    return f"{type(component).__name__} {getattr(component, 'name', '?')!r}"


def _rows(rows: np.ndarray) -> np.ndarray:
    arr = np.asarray(rows)
    assert arr.ndim == 2, f"test rows must be 2-D [n_rows, row_dim]; got shape {arr.shape}"
    return np.ascontiguousarray(arr, dtype=np.float32)


def _fit_encode(codec: Codec, params: Any, rows: np.ndarray, seed: int) -> tuple[CodecState, Codes]:
    label = _label(codec)
    assert isinstance(codec, Codec), f"{label} is not a helix_framework.Codec"
    assert isinstance(params, codec.Params), (
        f"{label}: params is a {type(params).__name__}, expected its Params {codec.Params.__name__}"
    )
    codec.validate(params)
    state = codec.fit(rows.copy(), params, np.random.default_rng(seed))
    assert isinstance(state, CodecState), f"{label}.fit returned {type(state).__name__}, not CodecState"
    codes = codec.encode(state, rows.copy())
    assert isinstance(codes, Codes), f"{label}.encode returned {type(codes).__name__}, not Codes"
    return state, codes


def check_codec_round_trip(
    codec: Codec,
    params: Any,
    rows: np.ndarray,
    *,
    max_rel_l2: float | None = None,
    exact: bool = False,
    seed: int = 0,
) -> np.ndarray:
    """fit, encode and decode ``rows``; return the reconstruction.

    Checks that decode gives finite float32 rows of the input's shape, that
    the caller's rows are left untouched, and, if ``exact``, that every bit
    matches (compared as raw bits, so -0.0 vs 0.0 or NaN payloads count);
    else, if ``max_rel_l2`` is given, that the pooled relative L2 is at most
    that bound.
    """
    x = _rows(rows)
    before = x.copy()
    state, codes = _fit_encode(codec, params, x, seed)
    y = codec.decode(state, codes)
    label = _label(codec)
    assert np.array_equal(x, before), f"{label} modified the caller's rows in place"
    assert isinstance(y, np.ndarray), f"{label}.decode returned {type(y).__name__}, not ndarray"
    assert y.shape == x.shape, f"{label}.decode shape {y.shape} != encoded shape {x.shape}"
    assert y.dtype == np.float32, f"{label}.decode dtype {y.dtype}, expected float32"
    assert np.all(np.isfinite(y)), f"{label}.decode produced non-finite values"
    if exact:
        diff = np.flatnonzero(x.view(np.uint32) != y.view(np.uint32))
        assert diff.size == 0, (
            f"{label} is not bit-exact: {diff.size} of {x.size} weights differ, "
            f"first at flat index {diff[0]}: {x.ravel()[diff[0]]!r} -> {y.ravel()[diff[0]]!r}"
        )
    elif max_rel_l2 is not None and np.any(x):
        err = rel_l2(x, y)
        assert err <= max_rel_l2, f"{label}: relative L2 {err:.6g} exceeds the bound {max_rel_l2:.6g}"
    return y


def _assert_same_arrays(what: str, a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> None:
    assert set(a) == set(b), f"{what}: array names differ between runs: {sorted(a)} vs {sorted(b)}"
    for key in a:
        x, y = np.asarray(a[key]), np.asarray(b[key])
        assert x.dtype == y.dtype and x.shape == y.shape, (
            f"{what}[{key!r}]: {x.dtype}{x.shape} vs {y.dtype}{y.shape} between runs"
        )
        assert x.tobytes() == y.tobytes(), f"{what}[{key!r}] differs between two runs with the same seed"


def check_codec_deterministic(codec: Codec, params: Any, rows: np.ndarray, seed: int) -> None:
    """Two fits and encodes with the same seed give identical state and codes
    (arrays byte for byte, with dtype and shape, and equal metadata)."""
    x = _rows(rows)
    s1, c1 = _fit_encode(codec, params, x, seed)
    s2, c2 = _fit_encode(codec, params, x, seed)
    label = _label(codec)
    _assert_same_arrays(f"{label} state", s1.arrays, s2.arrays)
    _assert_same_arrays(f"{label} codes", c1.arrays, c2.arrays)
    assert dict(s1.meta) == dict(s2.meta), f"{label} state meta differs: {s1.meta} vs {s2.meta}"
    assert dict(c1.meta) == dict(c2.meta), f"{label} codes meta differs: {c1.meta} vs {c2.meta}"


def check_codec_bits(codec: Codec, params: Any, rows: np.ndarray, *, seed: int = 0) -> BitsAccount:
    """The bits account of ``rows`` is a `BitsAccount` over every weight, with
    positive code bits, non-negative overhead and total_bpw >= code_bpw."""
    x = _rows(rows)
    state, _ = _fit_encode(codec, params, x, seed)
    n, d = x.shape
    acct = codec.bits(state, n, d)
    label = _label(codec)
    assert isinstance(acct, BitsAccount), f"{label}.bits returned {type(acct).__name__}, not BitsAccount"
    assert acct.n_weights == n * d, f"{label}.bits counts {acct.n_weights} weights, expected {n}x{d}={n * d}"
    assert acct.code_bits > 0, f"{label}.bits: code_bits must be positive; got {acct.code_bits}"
    assert acct.overhead_bits >= 0, f"{label}.bits: overhead_bits is negative ({acct.overhead_bits})"
    assert acct.total_bpw >= acct.code_bpw, f"{label}.bits: total_bpw {acct.total_bpw} < code_bpw {acct.code_bpw}"
    return acct


def check_rotation_invertible(
    rotation: Rotation, params: Any, rows: np.ndarray, atol: float = 1e-5, *, rtol: float = 1e-5, seed: int = 0
) -> None:
    """invert(apply(rows)) == rows within ``atol + rtol * max|rows|`` (float32
    rounding), float32 and shape kept, the caller's rows untouched, and a
    non-negative integer overhead."""
    x = _rows(rows)
    before = x.copy()
    label = _label(rotation)
    assert isinstance(rotation, Rotation), f"{label} is not a helix_framework.Rotation"
    assert isinstance(params, rotation.Params), (
        f"{label}: params is a {type(params).__name__}, expected {rotation.Params.__name__}"
    )
    rotation.validate(params)
    state = rotation.fit(x.copy(), params, np.random.default_rng(seed))
    assert isinstance(state, RotationState), f"{label}.fit returned {type(state).__name__}, not RotationState"
    z = rotation.apply(state, x)
    assert np.array_equal(x, before), f"{label}.apply modified the caller's rows in place"
    assert z.shape == x.shape and z.dtype == np.float32, f"{label}.apply gave {z.dtype}{z.shape}, expected float32{x.shape}"
    back = rotation.invert(state, z)
    assert back.shape == x.shape and back.dtype == np.float32, (
        f"{label}.invert gave {back.dtype}{back.shape}, expected float32{x.shape}"
    )
    tol = atol + rtol * float(np.max(np.abs(x), initial=0.0))
    worst = float(np.max(np.abs(back.astype(np.float64) - x), initial=0.0))
    assert worst <= tol, f"{label}: invert(apply(x)) is off by up to {worst:.3g} (tolerance {tol:.3g})"
    bits = rotation.overhead_bits(state)
    assert isinstance(bits, (int, np.integer)) and bits >= 0, f"{label}.overhead_bits gave {bits!r}"


def check_rotation_stats(
    rotation: Rotation, params: Any, rows: np.ndarray, inputs: np.ndarray, *, codec_params: Any = None,
    rtol: float = 1e-4, seed: int = 0,
) -> float:
    """The layer-output error computed through ``transform_stats`` equals the
    error computed on the activations themselves.

    ``inputs`` [tokens, row_dim] are the layer's inputs X. The rotated rows
    ``W A`` are rounded to a coarse grid (any reconstruction will do); the
    error ``trace(dR H' dR^T)`` with the transformed statistics H' must equal
    ``||X (W - invert(W_hat_rot))^T||^2`` within ``rtol``. Returns that error.
    """
    from helix_framework.layer_stats import LayerStats

    w, x = _rows(rows), np.asarray(inputs, dtype=np.float64)
    label = _label(rotation)
    stats = LayerStats(hessian=x.T @ x, n_tokens=x.shape[0])
    kwargs = {"stats": stats} if rotation.takes_stats else {}
    state = rotation.fit(w.copy(), params, np.random.default_rng(seed), codec_params=codec_params, **kwargs)
    wr = rotation.apply(state, w)
    step = float(np.std(wr)) / 2 or 1.0
    w_hat_rot = (np.round(wr / step) * step).astype(np.float32)
    rotated = rotation.transform_stats(state, stats)
    assert isinstance(rotated, LayerStats), f"{label}.transform_stats returned {type(rotated).__name__}"
    through = rotated.output_error(wr - w_hat_rot)
    delta = w.astype(np.float64) - rotation.invert(state, w_hat_rot)
    direct = float(np.sum((x @ delta.T) ** 2))
    assert abs(through - direct) <= rtol * direct, (
        f"{label}: output error through transform_stats {through:.6g} != on the activations {direct:.6g}"
    )
    return direct


def check_params_round_trip(params: Any, converter: cattrs.Converter | None = None) -> Any:
    """unstructure -> JSON text -> structure gives an equal params object.

    ``converter`` defaults to the project's converter, the one configs go
    through.
    """
    assert attrs.has(type(params)), f"{type(params).__name__} is not an attrs class"
    if converter is None:
        from helix_framework.config import converter as conv
    else:
        conv = converter
    raw = conv.unstructure(params)
    try:
        text = json.dumps(raw)
    except TypeError as exc:
        raise AssertionError(f"{type(params).__name__} does not unstructure to JSON-safe data: {exc}") from None
    back = conv.structure(json.loads(text), type(params))
    assert back == params, f"{type(params).__name__} changed through JSON: {params!r} -> {back!r}"
    return back


def check_compressor(compressor: Compressor, text: str, target: int, **kwargs: Any) -> CompressionResult:
    """compress(text, target) returns a `CompressionResult` no longer than
    ``target``, whose ratio is output/input characters, with a path named."""
    label = _label(compressor)
    result = compressor.compress(text, target, **kwargs)
    assert isinstance(result, CompressionResult), f"{label} returned {type(result).__name__}, not CompressionResult"
    assert isinstance(result.text, str), f"{label}: result text is a {type(result.text).__name__}"
    assert len(result.text) <= target, f"{label}: {len(result.text)} characters, over the target {target}"
    expected = ratio_of(text, result.text)
    assert math.isclose(result.ratio, expected, rel_tol=1e-9, abs_tol=1e-12), (
        f"{label}: ratio {result.ratio} but output/input is {len(result.text)}/{len(text)} = {expected}"
    )
    assert isinstance(result.path, str) and result.path, f"{label}: result.path must name the path that ran"
    assert isinstance(result.fell_back, bool), f"{label}: fell_back must be a bool"
    return result


def check_measurement(measurement: Measurement, context: MeasureContext) -> dict[str, float]:
    """measure(context) returns a non-empty dict of finite floats, the same
    on a second call with the same context."""
    label = _label(measurement)
    figures = measurement.measure(context)
    assert isinstance(figures, dict) and figures, f"{label} returned {figures!r}, expected a non-empty dict"
    for key, value in figures.items():
        assert isinstance(key, str), f"{label}: figure name {key!r} is not a string"
        assert isinstance(value, (float, int, np.floating, np.integer)) and math.isfinite(value), (
            f"{label}: figure {key!r} = {value!r} is not a finite number"
        )
    again = measurement.measure(context)
    assert again == figures, f"{label} is not deterministic for a fixed context: {figures} vs {again}"
    return figures


# -- kernels -------------------------------------------------------------------


@contextlib.contextmanager
def _jit_disabled(disabled: bool) -> Iterator[None]:
    old = os.environ.get("HELIX_JIT_DISABLE")
    os.environ["HELIX_JIT_DISABLE"] = "1" if disabled else "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HELIX_JIT_DISABLE", None)
        else:
            os.environ["HELIX_JIT_DISABLE"] = old


def check_kernel(
    kernel: Any,
    lane_width: Any,
    constants: Mapping[str, Any],
    make_args: Callable[[], Sequence[Any]],
    outputs: Sequence[int],
    *,
    rtol: float = 0.0,
    atol: float = 0.0,
) -> list[np.ndarray]:
    """Run a declared kernel (`helix_jit.declare_kernel`) compiled and as its
    numpy reference (``HELIX_JIT_DISABLE=1``) on the same inputs and compare.

    ``make_args()`` returns a fresh argument list each call (arrays for the
    pointer arguments, numbers for the scalars); ``outputs`` are the indices of
    the arguments the kernel writes. Exact by default; give ``rtol``/``atol``
    where the IR reorders float sums. Returns the compiled outputs.
    """
    results = []
    for disabled in (False, True):
        with _jit_disabled(disabled):
            fn = kernel.get(lane_width, **constants)
            args = list(make_args())
            fn(*args)
            results.append([np.array(args[i], copy=True) for i in outputs])
    label = f"kernel {kernel.name!r} at {getattr(lane_width, 'value', lane_width)} with {dict(constants)}"
    for i, jit_out, ref_out in zip(outputs, *results):
        assert jit_out.shape == ref_out.shape and jit_out.dtype == ref_out.dtype, (
            f"{label}: argument {i} is {jit_out.dtype}{jit_out.shape} compiled, {ref_out.dtype}{ref_out.shape} reference"
        )
        if rtol == 0 and atol == 0:
            bad = np.flatnonzero(~((jit_out == ref_out) | (np.isnan(jit_out) & np.isnan(ref_out))).ravel()) \
                if jit_out.dtype.kind == "f" else np.flatnonzero((jit_out != ref_out).ravel())
            assert bad.size == 0, (
                f"{label}: argument {i} differs from the reference at {bad.size} element(s), first at flat index "
                f"{int(bad[0])}: {jit_out.ravel()[bad[0]]!r} vs {ref_out.ravel()[bad[0]]!r}"
            )
        else:
            assert np.allclose(jit_out, ref_out, rtol=rtol, atol=atol, equal_nan=True), (
                f"{label}: argument {i} differs from the reference beyond rtol={rtol}, atol={atol}; "
                f"max |diff| {float(np.nanmax(np.abs(jit_out.astype(np.float64) - ref_out))):.3g}"
            )
    return results[0]


# -- artifacts -----------------------------------------------------------------


def _save_encoded(directory: Path, state: CodecState, codes: Codes) -> Path:
    from helix_framework.artifacts import write_safetensors

    arrays = {f"codes.{k}": np.ascontiguousarray(v) for k, v in codes.arrays.items()}
    arrays.update({f"state.{k}": np.ascontiguousarray(v) for k, v in state.arrays.items()})
    meta = json.dumps({"state": dict(state.meta), "codes": dict(codes.meta)}, sort_keys=True)
    name, _, _ = write_safetensors(directory, "codec", arrays, {"helix_meta": meta})
    return directory / name


def _load_encoded(path: Path) -> tuple[CodecState, Codes]:
    # The safetensors package itself reads it back: a second, independent reader.
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        meta = json.loads(f.metadata()["helix_meta"])
        arrays = {k: f.get_tensor(k) for k in f.keys()}
    state = {k[6:]: np.array(v) for k, v in arrays.items() if k.startswith("state.")}
    codes = {k[6:]: np.array(v) for k, v in arrays.items() if k.startswith("codes.")}
    return CodecState(state, meta["state"]), Codes(codes, meta["codes"])


def check_codec_artifact_round_trip(
    codec: Codec, params: Any, rows: np.ndarray, directory: str | Path, *, seed: int = 0
) -> np.ndarray:
    """Fit and encode, save state and codes as safetensors (their metadata as
    JSON), reload them and check ``decode`` gives the same rows bit for bit.

    This is how helix stores a codec's output in an artifact: every array must
    be a numpy array safetensors can hold, every ``meta`` value JSON-safe, and
    ``decode`` must need nothing that is not stored. Returns the decode."""
    label = _label(codec)
    x = _rows(rows)
    state, codes = _fit_encode(codec, params, x, seed)
    try:
        json.dumps({"state": dict(state.meta), "codes": dict(codes.meta)})
    except TypeError as exc:
        raise AssertionError(f"{label}: state or codes meta is not JSON-safe: {exc}") from None
    before = codec.decode(state, codes)
    path = _save_encoded(Path(directory), state, codes)
    after = codec.decode(*_load_encoded(path))
    assert before.dtype == after.dtype and np.array_equal(before, after, equal_nan=True), (
        f"{label}: decode after a safetensors round trip differs from decode in memory"
    )
    return after


def write_codec_fixture(codec: Codec, params: Any, rows: np.ndarray, directory: str | Path, *, seed: int = 0) -> Path:
    """Write a backward-compatibility fixture: the encoded rows and their decode.

    Commit the file with the plugin's tests; `check_codec_fixture` then
    proves that a later version still decodes what this version wrote (as
    numcodecs keeps fixtures per codec). The file, written into
    ``directory``, is named by a content hash; its path is returned."""
    x = _rows(rows)
    state, codes = _fit_encode(codec, params, x, seed)
    codes = Codes({**codes.arrays, "__expected__": codec.decode(state, codes)}, codes.meta)
    return _save_encoded(Path(directory), state, codes)


def check_codec_fixture(codec: Codec, path: str | Path) -> np.ndarray:
    """Decode a fixture written by `write_codec_fixture` (by this or an older
    version of the codec) and check it equals the decode stored in it."""
    state, codes = _load_encoded(Path(path))
    expected = codes.arrays["__expected__"]
    got = codec.decode(state, Codes({k: v for k, v in codes.arrays.items() if k != "__expected__"}, codes.meta))
    assert got.shape == expected.shape and np.array_equal(got, expected, equal_nan=True), (
        f"{_label(codec)} {codec.version}: decoding the fixture {Path(path).name} no longer gives the rows it "
        "stored: the encoded format changed (bump the codec's name or keep decoding the old format)"
    )
    return got
