import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import helix_jit
from helix_jit import LaneWidth, pq_assign, pq_assign_reference, split_widths
from helix_jit.kernels._pq import round_bf16, u8_params, u8_quantize

from _shapes import LANE_WIDTHS, make_codebooks, pq_shapes, rng_for

SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def used_centroids(cb, lw):
    """The centroid values the lane width actually compares against (float64)."""
    if lw is LaneWidth.BF16x32:
        return round_bf16(cb).astype(np.float64)
    return cb.astype(np.float64)


def assert_codes_match(rows, codebooks, lw, got, want):
    """Codes equal, except where the two centroids' distances are a float near-tie.

    Every disagreement is checked: the exact (float64) squared distances of
    the two chosen centroids must differ by less than the rounding error of
    the norm-expansion formula in the lane width's precision.
    """
    assert got.dtype == want.dtype and got.shape == want.shape
    if lw is LaneWidth.U8x64:
        np.testing.assert_array_equal(got, want)  # integer distances: exact
        return
    eps = 2.0**-52 if lw is LaneWidth.F64x8 else 2.0**-23
    col = 0
    for m, cb in enumerate(codebooks):
        w = cb.shape[1]
        c = used_centroids(cb, lw)
        x = rows[:, col : col + w].astype(np.float64)
        for i in np.nonzero(got[:, m] != want[:, m])[0]:
            a, b = int(got[i, m]), int(want[i, m])
            da = ((x[i] - c[a]) ** 2).sum()
            db = ((x[i] - c[b]) ** 2).sum()
            scale = (x[i] ** 2).sum() + max((c[a] ** 2).sum(), (c[b] ** 2).sum())
            tol = 4 * (w + 4) * eps * scale
            assert abs(da - db) <= tol, f"row {i} subspace {m}: {a} vs {b} differ by {abs(da - db)} > {tol}"
        col += w


@pytest.mark.parametrize("lw", LANE_WIDTHS, ids=lambda w: w.value)
@SETTINGS
@given(shape=pq_shapes(), seed=st.integers(0, 2**32 - 1), dist=st.booleans())
def test_pq_assign_matches_reference(lw, shape, seed, dist):
    n, widths, K = shape
    rng = rng_for(seed)
    rows = rng.standard_normal((n, sum(widths))).astype(np.float32)
    cbs = make_codebooks(rng, widths, K)
    got = pq_assign(rows, cbs, lw, return_distances=dist)
    want = pq_assign_reference(rows, cbs, lw, return_distances=dist)
    if dist:
        (got, gd), (want, wd) = got, want
        assert gd.dtype == np.float32 and gd.shape == (n, len(widths))
        same = got == want
        tol = 1e-9 if lw is LaneWidth.U8x64 else 1e-4
        np.testing.assert_allclose(gd[same], wd[same], rtol=tol, atol=tol)
    assert got.dtype == (np.uint8 if K <= 256 else np.uint16)
    assert_codes_match(rows, cbs, lw, got, want)
    assert got.max(initial=0) < K


@pytest.mark.parametrize("lw", LANE_WIDTHS, ids=lambda w: w.value)
def test_pq_assign_65536_centroids(lw):
    rng = rng_for(1)
    rows = rng.standard_normal((3, 5)).astype(np.float32)
    cbs = make_codebooks(rng, split_widths(5, 2), 65536)
    got = pq_assign(rows, cbs, lw)
    assert got.dtype == np.uint16
    assert_codes_match(rows, cbs, lw, got, pq_assign_reference(rows, cbs, lw))


@pytest.mark.parametrize("lw", LANE_WIDTHS, ids=lambda w: w.value)
def test_pq_assign_ties_go_to_lowest_index(lw):
    rng = rng_for(2)
    base = rng.standard_normal((5, 3)).astype(np.float32)
    cb = np.concatenate([base, base, base])  # every centroid appears three times
    rows = base[[4, 0, 2, 1, 3]] + np.float32(0.01)
    got = pq_assign(rows, [cb], lw)
    want = pq_assign_reference(rows, [cb], lw)
    np.testing.assert_array_equal(got, want)
    assert got.max() < 5


def test_pq_assign_k1_and_distances_are_exact_for_u8():
    rng = rng_for(3)
    rows = rng.standard_normal((4, 7)).astype(np.float32)
    cbs = make_codebooks(rng, [3, 4], 1)
    codes, dist = pq_assign(rows, cbs, "F32x16", return_distances=True)
    assert not codes.any()
    exact = np.stack([((rows[:, :3] - cbs[0][0]) ** 2).sum(1), ((rows[:, 3:] - cbs[1][0]) ** 2).sum(1)], 1)
    np.testing.assert_allclose(dist, exact, rtol=1e-5, atol=1e-5)
    # U8: the integer distance on the uint8 grid times scale^2
    codes, dist = pq_assign(rows, cbs, "U8x64", return_distances=True)
    lo, s = u8_params(cbs[0])
    qx = u8_quantize(rows[:, :3], lo, np.float32(1) / s)
    qc = u8_quantize(cbs[0], lo, np.float32(1) / s)
    np.testing.assert_allclose(dist[:, 0], ((qx - qc[0]) ** 2).sum(1) * s * s, rtol=1e-6)


def test_split_widths():
    assert split_widths(10, 4) == (3, 3, 2, 2)
    assert split_widths(1024, 6) == (171, 171, 171, 171, 170, 170)
    assert sum(split_widths(576, 128)) == 576
    with pytest.raises(ValueError):
        split_widths(3, 4)


def test_rejects_bad_input():
    rows = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError):
        pq_assign(rows, [np.zeros((3, 3), np.float32)])  # widths do not sum to d
    with pytest.raises(TypeError):
        pq_assign(rows.astype(np.float64), [np.zeros((3, 4), np.float32)])
    with pytest.raises(ValueError):
        helix_jit.get_kernel("fwht").get("U8x64", d=4, signed=0)


def _float64_codes(rows, codebooks):
    out, col = [], 0
    for cb in codebooks:
        w = cb.shape[1]
        x = rows[:, col : col + w].astype(np.float64)
        col += w
        out.append(np.argmin(((x[:, None, :] - cb.astype(np.float64)[None]) ** 2).sum(axis=2), axis=1))
    return np.stack(out, axis=1)


@pytest.mark.parametrize("M", [1, 3])
def test_exact_codes_are_the_float64_search_on_near_ties(M):
    # rows halfway between two centroids (and on duplicated centroids): float32 rounding
    # decides these near ties arbitrarily; exact=True must give the float64 codes on both paths
    rng = np.random.default_rng(11)
    widths = split_widths(8 * M + 1, M)
    cbs = [rng.standard_normal((256, w)).astype(np.float32) for w in widths]
    for cb in cbs:
        cb[7] = cb[3]  # an exact tie: the lowest index wins
    i, j = rng.integers(0, 256, 3000), rng.integers(0, 256, 3000)
    rows = np.concatenate([((cb[i] + cb[j]) / 2).astype(np.float32) for cb in cbs], axis=1)
    rows[:20, : widths[0]] = cbs[0][7]
    want = _float64_codes(rows, cbs)
    plain = pq_assign(rows, cbs, "F32x16")
    assert (plain != want).any()  # the case is hard: plain float32 gets some wrong
    got = pq_assign(rows, cbs, "F32x16", exact=True)
    ref = pq_assign_reference(rows, cbs, "F32x16", exact=True)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(ref, want)
    assert (got[:20, 0] == 3).all()


def test_exact_is_float32_only_and_codes_only():
    rows = np.zeros((4, 8), np.float32)
    cb = [np.ones((2, 8), np.float32)]
    with pytest.raises(ValueError, match="F32x16"):
        pq_assign(rows, cb, "F64x8", exact=True)
    with pytest.raises(ValueError, match="codes only"):
        pq_assign(rows, cb, "F32x16", return_distances=True, exact=True)
    # every centroid equal and every row zero: 0 / 0 gaps count as near ties
    np.testing.assert_array_equal(pq_assign(rows, [np.zeros((3, 8), np.float32)], "F32x16", exact=True), 0)
