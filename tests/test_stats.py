"""helix_framework.measure.stats against published and hand-computed numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special

from helix_framework.errors import MeasurementError
from helix_framework.measure import stats

# Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges.
SF = np.array(
    [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]],
    dtype=np.float64,
)


@pytest.mark.parametrize(
    "form, expected",
    [("1,1", 0.17), ("2,1", 0.29), ("3,1", 0.71), ("1,k", 0.44), ("2,k", 0.62), ("3,k", 0.91)],
)
def test_icc_worked_example_all_six_forms(form, expected):
    result = stats.icc(SF, form)
    assert round(result.value, 2) == expected
    assert (result.n, result.k) == (6, 4)


def test_icc_accepts_the_numeric_k_form():
    assert stats.icc(SF, "1,4").value == stats.icc(SF, "1,k").value
    assert stats.icc(SF, "3,4").form == "3,k"


def test_icc_f_statistics_of_the_worked_example():
    # Mean squares of the example: MSR 11.24, MSW 6.26, MSE 1.02 (Shrout & Fleiss Table 2).
    one = stats.icc(SF, "1,1")
    three = stats.icc(SF, "3,1")
    assert one.F == pytest.approx(11.2417 / 6.2639, rel=1e-3)
    assert (one.df1, one.df2) == (5, 18)
    assert three.F == pytest.approx(11.2417 / 1.0194, rel=1e-3)
    assert (three.df1, three.df2) == (5, 15)


# 95% intervals printed by R psych::ICC on the same data (psych documentation
# example; reproduced in dwoll/RExRepos, interRaterICC.md), three decimals for
# the lower bounds and two for the upper.
PSYCH_CI = {
    "1,1": (-0.133, 0.72),
    "2,1": (0.019, 0.76),
    "3,1": (0.342, 0.95),
    "1,k": (-0.884, 0.91),
    "2,k": (0.071, 0.93),
    "3,k": (0.676, 0.99),
}


@pytest.mark.parametrize("form", sorted(PSYCH_CI))
def test_icc_ci_matches_published_psych_output(form):
    low, high = PSYCH_CI[form]
    result = stats.icc(SF, form)
    assert round(result.ci_low, 3) == low
    assert round(result.ci_high, 2) == high


def _f_quantile_by_bisection(q, d1, d2):
    """F quantile from the regularized incomplete beta, independent of scipy.stats."""

    def cdf(x):
        return special.betainc(d1 / 2, d2 / 2, d1 * x / (d1 * x + d2))

    lo, hi = 0.0, 1e6
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < q else (lo, mid)
    return (lo + hi) / 2


def test_icc_3_1_ci_independently_recomputed():
    # By hand from the example's mean squares (SS_R 56.21, SS_E 15.29) and the
    # Shrout & Fleiss CI formula, with F quantiles found by bisection.
    msr, mse, k = 56.208333 / 5, 15.291667 / 15, 4
    f = msr / mse
    f_l = f / _f_quantile_by_bisection(0.975, 5, 15)
    f_u = f * _f_quantile_by_bisection(0.975, 15, 5)
    result = stats.icc(SF, "3,1")
    assert result.ci_low == pytest.approx((f_l - 1) / (f_l + k - 1), abs=1e-6)
    assert result.ci_high == pytest.approx((f_u - 1) / (f_u + k - 1), abs=1e-6)


def test_icc_perfect_agreement_is_one_with_a_degenerate_interval():
    x = np.array([1.0, 2.0, 4.0, 7.0])
    for form in stats.ICC_FORMS:
        result = stats.icc(np.stack([x, x], axis=1), form)
        assert result.value == pytest.approx(1.0)
        assert result.ci_low == pytest.approx(1.0) and result.ci_high == pytest.approx(1.0)
        assert math.isinf(result.F)


def test_icc_3_1_ignores_a_constant_offset_but_1_1_does_not():
    x = np.array([1.0, 2.0, 4.0, 7.0, 3.0])
    m = np.stack([x, x + 10.0], axis=1)
    assert stats.icc(m, "3,1").value == pytest.approx(1.0)
    assert stats.icc(m, "1,1").value < 0.2


@pytest.mark.parametrize(
    "matrix, message",
    [
        (np.ones((1, 2)), "at least 2 targets"),
        (np.ones((5, 1)), "at least 2 raters"),
        (np.full((4, 3), 2.5), "zero variance"),
        (np.array([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]]), "no variance"),
        (np.array([[1.0, np.nan], [2.0, 3.0]]), "non-finite"),
        (np.ones(4), "2-D"),
    ],
)
def test_icc_degenerate_inputs_raise(matrix, message):
    with pytest.raises(MeasurementError, match=message):
        stats.icc(matrix, "3,1")


def test_icc_unknown_form_raises():
    with pytest.raises(MeasurementError, match="unknown ICC form"):
        stats.icc(SF, "3,2")


def test_rel_l2_hand_computed():
    x = np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32)
    y = np.array([[3.0, 3.0], [0.0, 1.0]], dtype=np.float32)
    # error energy 1 + 1 = 2, signal energy 25: sqrt(2/25)
    assert stats.rel_l2(x, y) == pytest.approx(math.sqrt(2 / 25), rel=1e-15)
    assert stats.rel_l2(x, x) == 0.0


def test_rel_l2_accumulates_in_float64():
    x = np.full((1000, 1000), 1.0, dtype=np.float32)
    y = x + np.float32(1e-3)
    assert stats.rel_l2(x, y) == pytest.approx(float(np.float32(1e-3) + np.float32(1.0)) - 1.0, rel=1e-6)


def test_rel_l2_degenerate_inputs_raise():
    with pytest.raises(MeasurementError, match="all zeros"):
        stats.rel_l2(np.zeros((2, 3)), np.ones((2, 3)))
    with pytest.raises(MeasurementError, match="shape mismatch"):
        stats.rel_l2(np.ones((2, 3)), np.ones((3, 2)))
    with pytest.raises(MeasurementError, match="non-finite"):
        stats.rel_l2(np.ones(3), np.array([1.0, np.inf, 1.0]))


def test_row_cosines_hand_computed_with_zero_rows():
    x = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0], [2.0, 0.0]])
    y = np.array([[0.0, 1.0], [2.0, 2.0], [0.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    np.testing.assert_allclose(stats.row_cosines(x, y), [0.0, 1.0, 1.0, 0.0, -1.0], rtol=1e-15)
    x2 = np.array([[3.0, 4.0]])
    y2 = np.array([[4.0, 3.0]])
    assert stats.row_cosines(x2, y2)[0] == pytest.approx(24 / 25, rel=1e-15)


def test_pair_cosines_hand_computed():
    x = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0], [0.0, 0.0]])
    pairs = np.array([[0, 1], [0, 2], [1, 2], [2, 3], [3, 3]])
    np.testing.assert_allclose(stats.pair_cosines(x, pairs), [0.0, 0.6, 0.8, 0.0, 1.0], rtol=1e-15)
    with pytest.raises(MeasurementError, match="out of range"):
        stats.pair_cosines(x, np.array([[0, 4]]))


@pytest.mark.parametrize("n_rows, n_pairs", [(2, 1), (5, 10), (50, 100), (3000, 4096)])
def test_draw_pairs_distinct_seeded_and_in_range(n_rows, n_pairs):
    pairs = stats.draw_pairs(n_rows, n_pairs, seed=11)
    assert pairs.shape == (n_pairs, 2) and pairs.dtype == np.int64
    assert np.all(pairs[:, 0] < pairs[:, 1])
    assert pairs.min() >= 0 and pairs.max() < n_rows
    assert len({tuple(p) for p in pairs}) == n_pairs
    np.testing.assert_array_equal(pairs, stats.draw_pairs(n_rows, n_pairs, seed=11))
    if n_pairs < n_rows * (n_rows - 1) // 2:
        assert not np.array_equal(pairs, stats.draw_pairs(n_rows, n_pairs, seed=12))


def test_draw_pairs_covers_every_pair_before_repeating():
    pairs = stats.draw_pairs(4, 14, seed=0)  # 6 distinct pairs exist
    counts = {}
    for p in map(tuple, pairs):
        counts[p] = counts.get(p, 0) + 1
    assert len(counts) == 6 and sorted(counts.values()) == [2, 2, 2, 2, 3, 3]


def test_draw_pairs_unranking_is_exact_for_large_indices():
    m = np.array([0, 1, 2, 3, 10**12, 10**12 + 1, 2**40 - 1], dtype=np.int64)
    ij = stats._unrank_pairs(m)
    i, j = ij[:, 0], ij[:, 1]
    assert np.all(i < j) and np.all(i >= 0)
    np.testing.assert_array_equal(j * (j - 1) // 2 + i, m)


def test_draw_pairs_needs_two_rows():
    with pytest.raises(MeasurementError):
        stats.draw_pairs(1, 1, seed=0)


def test_wilson_interval_known_values():
    low, high = stats.wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    # All successes: upper bound 1, lower bound n/(n + z^2).
    low, high = stats.wilson_interval(20, 20)
    assert high == pytest.approx(1.0, abs=1e-15) and low == pytest.approx(20 / (20 + 1.959964**2), rel=1e-12)
    assert stats.wilson_interval(0, 5)[0] == 0.0


def test_wilson_interval_bad_input_raises():
    with pytest.raises(MeasurementError):
        stats.wilson_interval(0, 0)
    with pytest.raises(MeasurementError):
        stats.wilson_interval(11, 10)


@pytest.mark.parametrize("form", stats.ICC_FORMS)
def test_icc_paired_in_chunks_equals_icc_of_the_stacked_matrix(form):
    rng = np.random.default_rng(4)
    a = rng.standard_normal((9, 7)).astype(np.float32)
    b = (0.8 * a + 0.3 + 0.5 * rng.standard_normal(a.shape)).astype(np.float32)
    want = stats.icc(np.stack([a.ravel(), b.ravel()], axis=1), form)
    got = stats.icc_paired(a, b, form, chunk=10)
    for field in ("value", "ci_low", "ci_high", "F"):
        assert getattr(got, field) == pytest.approx(getattr(want, field), rel=1e-10), field
    assert (got.n, got.k, got.df1, got.df2, got.form) == (want.n, want.k, want.df1, want.df2, want.form)


def test_icc_paired_degenerate_inputs_raise():
    with pytest.raises(MeasurementError, match="differ in size"):
        stats.icc_paired(np.ones(3), np.ones(4), "3,1")
    with pytest.raises(MeasurementError, match="zero variance"):
        stats.icc_paired(np.ones(5), np.ones(5), "1,1")
    with pytest.raises(MeasurementError, match="at least 2 targets"):
        stats.icc_paired(np.ones(1), np.ones(1), "1,1")
    with pytest.raises(MeasurementError, match="non-finite"):
        stats.icc_paired(np.array([1.0, np.nan]), np.ones(2), "3,1", chunk=1)


def test_streaming_reductions_match_direct_computation(monkeypatch):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((13, 11)).astype(np.float32)
    y = (x + 0.2 * rng.standard_normal(x.shape)).astype(np.float32)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    want_l2 = math.sqrt(np.sum((x64 - y64) ** 2) / np.sum(x64**2))
    want_cos = np.sum(x64 * y64, axis=1) / np.linalg.norm(x64, axis=1) / np.linalg.norm(y64, axis=1)
    monkeypatch.setattr(stats, "_CHUNK", 7)  # blocks smaller than a row
    assert stats.rel_l2(x, y) == pytest.approx(want_l2, rel=1e-12)
    np.testing.assert_allclose(stats.row_cosines(x, y), want_cos, rtol=1e-12)
    monkeypatch.setattr(stats, "_CHUNK", 30)  # a few rows per block
    np.testing.assert_allclose(stats.row_cosines(x, y), want_cos, rtol=1e-12)
