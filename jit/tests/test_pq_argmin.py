"""pq_assign's GEMM path (wide subspaces, many centroids): sgemm + the fused pq_argmin kernel."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helix_jit import LaneWidth, pq_assign, pq_assign_reference
from helix_jit.kernels import pq_argmin

from _shapes import make_codebooks, rng_for
from test_pq_assign import _float64_codes, assert_codes_match

F32 = LaneWidth.F32x16

# (widths, K) on either side of the dispatch threshold (w >= 48 and w * K >= 65536);
# uneven widths, K below, at and above 256
GEMM_SHAPES = [((64, 64), 1024), ((49, 48, 48), 2048), ((129, 128), 512), ((256,), 256), ((300, 299), 220)]
KERNEL_SHAPES = [((64, 63), 1024), ((47, 47), 2048), ((128, 127), 512), ((255,), 256), ((299, 299), 219)]
ids = lambda s: f"{'-'.join(map(str, s[0]))}x{s[1]}"  # noqa: E731


@pytest.fixture(params=["jit", "numpy"])
def path(request, monkeypatch):
    """Both sides of HELIX_JIT_DISABLE; the GEMM path runs with either."""
    monkeypatch.setenv("HELIX_JIT_DISABLE", "1" if request.param == "numpy" else "0")
    return request.param


@pytest.fixture
def gemm_calls(monkeypatch):
    """Counts the GEMM path's runs, so a test knows which path it checked."""
    calls = []
    real = pq_argmin.gemm_assign

    def spy(*args):
        calls.append(args[0].shape)
        return real(*args)

    monkeypatch.setattr(pq_argmin, "gemm_assign", spy)
    return calls


def test_dispatch_threshold(gemm_calls):
    rng = rng_for(0)
    for shapes, want in ((GEMM_SHAPES, True), (KERNEL_SHAPES, False)):
        for widths, K in shapes:
            assert pq_argmin.use_gemm(K, widths) is want, (widths, K)
            pq_assign(rng.standard_normal((3, sum(widths))).astype(np.float32), make_codebooks(rng, widths, K))
    assert len(gemm_calls) == len(GEMM_SHAPES)
    # other lane widths keep their kernel at any shape
    widths, K = GEMM_SHAPES[0]
    for lw in (LaneWidth.F64x8, LaneWidth.BF16x32, LaneWidth.U8x64):
        pq_assign(rng.standard_normal((3, sum(widths))).astype(np.float32), make_codebooks(rng, widths, K), lw)
    assert len(gemm_calls) == len(GEMM_SHAPES)


def exact_distances(rows, cbs, codes):
    """float64 squared distance of each row's chosen centroid, and its rounding scale."""
    out, scale, col = [], [], 0
    for m, cb in enumerate(cbs):
        w = cb.shape[1]
        x = rows[:, col : col + w].astype(np.float64)
        c = cb.astype(np.float64)[codes[:, m].astype(np.int64)]
        out.append(((x - c) ** 2).sum(1))
        scale.append((w + 4) * ((x * x).sum(1) + (c * c).sum(1)))
        col += w
    return np.stack(out, 1), np.stack(scale, 1)


@pytest.mark.parametrize("shape", GEMM_SHAPES, ids=ids)
@pytest.mark.parametrize("n", [1, 257, 700])
def test_codes_and_distances_match_float64_search(shape, n, path, gemm_calls):
    widths, K = shape
    rng = rng_for(n * 7 + K)
    rows = rng.standard_normal((n, sum(widths))).astype(np.float32)
    cbs = make_codebooks(rng, widths, K)
    codes, dist = pq_assign(rows, cbs, F32, return_distances=True)
    assert gemm_calls and codes.dtype == (np.uint8 if K <= 256 else np.uint16) and dist.dtype == np.float32
    assert codes.shape == dist.shape == (n, len(widths))
    assert_codes_match(rows, cbs, F32, codes, _float64_codes(rows, cbs).astype(codes.dtype))
    assert_codes_match(rows, cbs, F32, codes, pq_assign_reference(rows, cbs, F32))
    np.testing.assert_array_equal(codes, pq_assign(rows, cbs, F32))  # the mode changes outputs, not codes
    want, scale = exact_distances(rows, cbs, codes)
    assert (np.abs(dist - want) <= 4 * 2.0**-24 * scale).all()


@pytest.mark.parametrize("shape", GEMM_SHAPES[:2] + GEMM_SHAPES[3:4], ids=ids)
def test_jit_numpy_and_thread_counts_give_identical_codes(shape, monkeypatch):
    # the argmin is over the same sgemm products on every path, in tiles fixed by the shape
    widths, K = shape
    rng = rng_for(5)
    rows = rng.standard_normal((1100, sum(widths))).astype(np.float32)
    cbs = make_codebooks(rng, widths, K)
    results = {}
    for disable in ("0", "1"):
        for threads in ("1", "2"):
            monkeypatch.setenv("HELIX_JIT_DISABLE", disable)
            monkeypatch.setenv("HELIX_JIT_THREADS", threads)
            results[disable, threads] = pq_assign(rows, cbs, F32, return_distances=True)
    for codes, dist in results.values():
        np.testing.assert_array_equal(codes, results["0", "1"][0])
    np.testing.assert_array_equal(results["0", "2"][1], results["0", "1"][1])
    np.testing.assert_allclose(results["1", "1"][1], results["0", "1"][1], rtol=1e-6)  # ||x||^2 order only


@pytest.mark.parametrize("widths, K", [((64, 64), 1024), ((256,), 256), ((300,), 300)], ids=["64x1024", "256x256", "300x300"])
def test_exact_ties_go_to_lowest_index(widths, K, path, gemm_calls):
    # small integers: every product and sum is exact in float32, so equal distances are
    # exactly equal on every path, and many rows have several nearest centroids
    rng = rng_for(K)
    cbs = [rng.integers(-1, 2, (K, w)).astype(np.float32) for w in widths]
    for cb in cbs:
        cb[K // 2 :] = cb[: K - K // 2]  # every centroid also appears at a higher index
    rows = rng.integers(-2, 3, (600, sum(widths))).astype(np.float32)
    rows[:50] = np.concatenate([cb[K - 1] for cb in cbs])  # on a duplicated centroid
    want = _float64_codes(rows, cbs)
    got = pq_assign(rows, cbs, F32)
    assert gemm_calls
    np.testing.assert_array_equal(got, want)
    assert (got[:50] < K - K // 2).all()  # the lower copy wins
    np.testing.assert_array_equal(pq_assign(rows, cbs, F32, exact=True), want)


@pytest.mark.parametrize("widths, K", [((65, 64, 64), 1024), ((256,), 256)], ids=["uneven-1024", "256x256"])
def test_exact_mode_codes_are_the_float64_search_and_todays(widths, K, path, gemm_calls, monkeypatch):
    # rows halfway between two centroids: float32 rounding decides these near ties arbitrarily
    rng = rng_for(11)
    cbs = make_codebooks(rng, widths, K)
    i, j = rng.integers(0, K, 1500), rng.integers(0, K, 1500)
    rows = np.concatenate([((cb[i] + cb[j]) / 2).astype(np.float32) for cb in cbs], axis=1)
    want = _float64_codes(rows, cbs)
    assert (pq_assign(rows, cbs, F32) != want).any()  # the case is hard: plain float32 gets some wrong
    got = pq_assign(rows, cbs, F32, exact=True)
    assert len(gemm_calls) == 2
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(pq_assign_reference(rows, cbs, F32, exact=True), want)
    monkeypatch.setattr(pq_argmin, "use_gemm", lambda K, widths: False)  # today's kernel
    np.testing.assert_array_equal(pq_assign(rows, cbs, F32, exact=True), want)
    assert len(gemm_calls) == 2


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(1, 70),
    widths=st.lists(st.integers(40, 80), min_size=1, max_size=3),
    K=st.sampled_from([200, 819, 820, 1024, 1100]),
    seed=st.integers(0, 2**32 - 1),
)
def test_exact_codes_are_the_float64_search_around_the_threshold(n, widths, K, seed, path):
    # either path, whichever side of the threshold the shape falls on
    rng = rng_for(seed)
    rows = rng.standard_normal((n, sum(widths))).astype(np.float32)
    cbs = make_codebooks(rng, widths, K)
    codes = pq_assign(rows, cbs, F32, exact=True)
    np.testing.assert_array_equal(codes, _float64_codes(rows, cbs))
    codes2, dist = pq_assign(rows, cbs, F32, return_distances=True)
    assert_codes_match(rows, cbs, F32, codes2, codes)
    want, scale = exact_distances(rows, cbs, codes2)
    assert (np.abs(dist - want) <= 4 * 2.0**-24 * scale).all()


def test_no_rows(path, gemm_calls):
    widths, K = GEMM_SHAPES[0]
    cbs = make_codebooks(rng_for(1), widths, K)
    rows = np.zeros((0, sum(widths)), np.float32)
    assert pq_assign(rows, cbs).shape == (0, 2)
    codes, dist = pq_assign(rows, cbs, return_distances=True)
    assert codes.shape == dist.shape == (0, 2) and codes.dtype == np.uint16
    assert pq_assign(rows, cbs, exact=True).shape == (0, 2)
    assert len(gemm_calls) == 3


@pytest.mark.parametrize("mode", [pq_argmin.NONE, pq_argmin.DIST, pq_argmin.GAP])
@pytest.mark.parametrize("K, nt", [(1, 5), (17, 64), (300, 100), (1024, 256)])
def test_argmin_kernel_matches_its_reference(mode, K, nt, monkeypatch):
    # the kernel alone, on a buffer with garbage past nt rows, at a row / column offset
    monkeypatch.setenv("HELIX_JIT_DISABLE", "0")
    rng = rng_for(K + nt)
    T, n, d, M, m, col, w, row0 = 256, 400, 70, 3, 1, 20, 37, 33
    dots = rng.standard_normal((K, T)).astype(np.float32)
    dots[:, nt:] = np.nan
    dots[K // 2, :] = dots[0, :]  # exact ties between centroids 0 and K // 2
    cn = rng.random((M, K)).astype(np.float32) * 4
    cn[m, K // 2] = cn[m, 0]
    x = rng.standard_normal((n, d)).astype(np.float32)
    out = {}
    for name, fn in (("jit", pq_argmin.KERNEL.get(F32, dist=mode, wide=int(K > 256))), ("ref", None)):
        codes = np.full((n, M), 7, np.uint16 if K > 256 else np.uint8)
        dist = np.full((n, M), -1, np.float32)
        args = (dots, nt, T, K, cn, x, d, col, w, codes, dist, M, m, row0, 1.5)
        fn(*args) if fn else pq_argmin._reference(F32, {"dist": mode}, *args)
        out[name] = codes, dist
    (codes, dist), (rcodes, rdist) = out["jit"], out["ref"]
    np.testing.assert_array_equal(codes, rcodes)
    touched = np.zeros((n, M), bool)
    touched[row0 : row0 + nt, m] = True
    assert (codes[~touched] == 7).all() and (dist[~touched] == -1).all()
    if K > 1:
        assert (codes[touched] != K // 2).all()  # the tie goes to centroid 0
    if mode == pq_argmin.NONE:
        assert (dist == -1).all()
    else:
        np.testing.assert_allclose(dist[touched], rdist[touched], rtol=1e-5)
    if mode == pq_argmin.GAP and K == 1:
        assert np.isinf(dist[touched]).all()


def blas_threads():
    from threadpoolctl import threadpool_info

    return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}


def test_blas_runs_at_one_thread_inside_and_is_restored(monkeypatch):
    import threading

    from threadpoolctl import threadpool_limits

    from helix_jit import _rows

    seen = []
    real = _rows.run_rows

    def spy(*args, **kwargs):
        seen.append(blas_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(_rows, "run_rows", spy)
    monkeypatch.setenv("HELIX_JIT_THREADS", "2")
    widths, K = GEMM_SHAPES[0]
    rng = rng_for(3)
    rows = rng.standard_normal((900, sum(widths))).astype(np.float32)
    cbs = make_codebooks(rng, widths, K)
    with threadpool_limits(2, "blas"):
        want = pq_assign(rows, cbs)
        assert seen == [{1}] and blas_threads() == {2}
    # concurrent calls: one thread at a time holds the process-wide limit; it is restored after
    before = blas_threads()
    out = [None] * 4
    workers = [threading.Thread(target=lambda i=i: out.__setitem__(i, pq_assign(rows, cbs))) for i in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert blas_threads() == before and len(seen) == 5
    for codes in out:
        np.testing.assert_array_equal(codes, want)
    with threadpool_limits(2, "blas"):  # and the main thread can still set it
        assert blas_threads() == {2}
