import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helix_jit import (
    LaneWidth,
    adc_error_bound,
    adc_matvec,
    adc_matvec_reference,
    fwht,
    fwht_reference,
    pq_decode,
    pq_decode_reference,
    supported_lane_widths,
)

from _shapes import LANE_WIDTHS, make_codebooks, make_codes, pq_shapes, rng_for

SETTINGS = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def residual_problem(rng, n, widths, K, stages):
    cbs, codes = [], []
    for s in range(stages):
        ws = widths if s == 0 else list(reversed(widths))  # later stages may split differently
        cbs.append(make_codebooks(rng, ws, K))
        codes.append(make_codes(rng, n, len(ws), K))
    return codes, cbs


def exact_decode(codes, cbs):
    n = codes[0].shape[0]
    d = sum(c.shape[1] for c in cbs[0])
    W = np.zeros((n, d))
    for c, s in zip(codes, cbs):
        col = 0
        for m, cb in enumerate(s):
            W[:, col : col + cb.shape[1]] += cb.astype(np.float64)[c[:, m].astype(np.int64)]
            col += cb.shape[1]
    return W


@pytest.mark.parametrize("lw", LANE_WIDTHS, ids=lambda w: w.value)
@SETTINGS
@given(shape=pq_shapes(), seed=st.integers(0, 2**32 - 1), stages=st.integers(1, 3))
def test_pq_decode_equals_reference(lw, shape, seed, stages):
    n, widths, K = shape
    codes, cbs = residual_problem(rng_for(seed), n, widths, K, stages)
    got = pq_decode(codes, cbs, lw)
    assert got.dtype == np.float32 and got.shape == (n, sum(widths))
    np.testing.assert_array_equal(got, pq_decode_reference(codes, cbs, lw))
    if lw is LaneWidth.F32x16 and stages == 1:
        np.testing.assert_array_equal(got, exact_decode(codes, cbs).astype(np.float32))


@pytest.mark.parametrize("lw", LANE_WIDTHS, ids=lambda w: w.value)
@pytest.mark.parametrize("mode", ["f32", "adc_u8", "adc_i8"])
@SETTINGS
@given(shape=pq_shapes(max_k=257), seed=st.integers(0, 2**32 - 1), stages=st.integers(1, 2),
       b=st.sampled_from([0, 1, 3, 16]), scaled=st.booleans())
def test_adc_matvec_within_bound(lw, mode, shape, seed, stages, b, scaled):
    n, widths, K = shape
    rng = rng_for(seed)
    codes, cbs = residual_problem(rng, n, widths, K, stages)
    d = sum(widths)
    x = rng.standard_normal(d if b == 0 else (d, b)).astype(np.float32)
    rs = rng.standard_normal(n).astype(np.float32) if scaled else None
    got = adc_matvec(codes, cbs, x, mode, lw, row_scale=rs)
    assert got.shape == ((n,) if b == 0 else (n, b)) and got.dtype == np.float32
    np.testing.assert_array_equal(got, adc_matvec_reference(codes, cbs, x, mode, lw, row_scale=rs))
    exact = exact_decode(codes, cbs) @ x.astype(np.float64)
    if rs is not None:
        exact *= rs[:, None] if b else rs
    bound = adc_error_bound(codes, cbs, x, mode, lw, row_scale=rs)
    assert bound.shape == got.shape
    err = np.abs(got - exact)
    assert np.all(err <= bound), float(np.max(err / np.maximum(bound, 1e-30)))


def test_adc_bound_is_tight_enough_to_mean_something():
    rng = rng_for(5)
    codes, cbs = residual_problem(rng, 64, [8] * 16, 256, 1)
    x = rng.standard_normal(128).astype(np.float32)
    y = adc_matvec(codes, cbs, x, "adc_u8")
    exact = exact_decode(codes, cbs) @ x
    bound = adc_error_bound(codes, cbs, x, "adc_u8")
    assert np.all(np.abs(y - exact) <= bound)
    assert bound.max() < 0.05 * np.abs(exact).max()  # a few percent, not vacuous
    assert adc_error_bound(codes, cbs, x, "f32").max() < 1e-4 * np.abs(exact).max()


@pytest.mark.parametrize("lw", supported_lane_widths("fwht"), ids=lambda w: w.value)
@SETTINGS
@given(logd=st.integers(0, 12), n=st.sampled_from([1, 2, 5, 9]), seed=st.integers(0, 2**32 - 1), signed=st.booleans())
def test_fwht_matches_reference_orthonormal_self_inverse(lw, logd, n, seed, signed):
    d = 2**logd
    rng = rng_for(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    signs = np.where(rng.random(d) < 0.5, -1, 1).astype(np.float32) if signed else None
    y = fwht(x.copy(), signs, lw)
    np.testing.assert_array_equal(y, fwht_reference(x.copy(), signs, lw))
    # orthonormal: norms kept; self-inverse: H(H(s*x)) = s*x
    tol = 1e-5 if lw is LaneWidth.F32x16 else 1e-6
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), np.linalg.norm(x, axis=1), rtol=tol * (logd + 1), atol=1e-6)
    back = fwht(y.copy(), None, lw)
    want = x * signs if signed else x
    np.testing.assert_allclose(back, want, rtol=0, atol=4 * tol * (logd + 1) * max(1.0, float(np.abs(x).max())))


def test_fwht_is_the_hadamard_matrix():
    from scipy.linalg import hadamard

    x = rng_for(7).standard_normal((3, 64)).astype(np.float32)
    want = x.astype(np.float64) @ hadamard(64).T / 8.0
    np.testing.assert_allclose(fwht(x.copy()), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        fwht(np.zeros((2, 12), np.float32))
