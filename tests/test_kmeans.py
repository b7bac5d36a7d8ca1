import numpy as np
import pytest

from helix_framework.kmeans import distinct_count, kmeans, kmeans_subspaces


def blobs(n_per, centers, spread=0.05, seed=0):
    rng = np.random.default_rng(seed)
    c = np.asarray(centers, dtype=np.float32)
    x = np.repeat(c, n_per, axis=0) + spread * rng.standard_normal((n_per * len(c), c.shape[1]))
    return x.astype(np.float32)


def test_finds_well_separated_clusters():
    centers = np.random.default_rng(1).standard_normal((8, 4)) * 10
    x = blobs(60, centers)
    res = kmeans(x, 8, np.random.default_rng(0))
    assert res.codebook.shape == (8, 4) and res.codebook.dtype == np.float32
    # every true center has a centroid next to it
    d = ((centers[:, None, :] - res.codebook[None]) ** 2).sum(-1)
    assert d.min(axis=1).max() < 0.05
    assert res.converged == (True,) and res.iterations[0] < 25
    assert res.inertia[0] == pytest.approx(float(((x - res.codebook[np.argmin(
        ((x[:, None] - res.codebook[None]) ** 2).sum(-1), axis=1)]) ** 2).sum()), rel=1e-5)


def test_deterministic_for_a_seed():
    x = np.random.default_rng(2).standard_normal((3000, 6)).astype(np.float32)
    a = kmeans(x, 32, np.random.default_rng(7))
    b = kmeans(x, 32, np.random.default_rng(7))
    c = kmeans(x, 32, np.random.default_rng(8))
    assert a.codebook.tobytes() == b.codebook.tobytes()
    assert (a.inertia, a.iterations, a.k_eff) == (b.inertia, b.iterations, b.k_eff)
    assert a.codebook.tobytes() != c.codebook.tobytes()


def test_true_count_never_zero_filled():
    x = np.random.default_rng(3).standard_normal((20, 5)).astype(np.float32)
    res = kmeans(x, 64, np.random.default_rng(0))
    assert res.k_eff == 20 and res.k_requested == 64 and res.codebook.shape == (20, 5)
    # each training row is a centroid
    assert sorted(map(tuple, res.codebook)) == sorted(map(tuple, x))
    dup = np.repeat(x[:3], 50, axis=0)
    dup[::2] *= -1.0  # -x is distinct; -0.0 vs 0.0 is not
    zeros = np.zeros((10, 5), np.float32)
    zeros[::2] = -0.0
    assert distinct_count(np.vstack([dup, zeros])) == 7
    res = kmeans(np.vstack([dup, zeros]), 16, np.random.default_rng(0))
    assert res.k_eff == 7 and len({tuple(c) for c in res.codebook}) == 7
    assert res.inertia[0] == pytest.approx(0.0, abs=1e-9)


def test_empty_clusters_are_reseeded_from_the_largest():
    x = blobs(100, [[0.0, 0.0], [10.0, 10.0]], spread=1.0, seed=4)
    # a hot start with three centroids far from every point: their clusters start empty
    init = np.array([[0.0, 0.0], [10.0, 10.0], [500, 500], [600, 600], [-700, 0]], np.float32)
    res = kmeans(x, 5, np.random.default_rng(0), init=init)
    assert res.reseeded >= 3
    assert np.abs(res.codebook).max() < 20  # every centroid now sits among the points
    counts = np.bincount(np.argmin(((x[:, None] - res.codebook[None]) ** 2).sum(-1), axis=1), minlength=5)
    assert counts.min() > 0


def test_tolerance_and_max_iter():
    x = np.random.default_rng(5).standard_normal((4000, 4)).astype(np.float32)
    loose = kmeans(x, 64, np.random.default_rng(0), tol=1e-1)
    tight = kmeans(x, 64, np.random.default_rng(0), tol=0.0, max_iter=6)
    assert loose.converged == (True,) and loose.iterations[0] < 6
    assert tight.iterations == (6,) and tight.inertia[0] < loose.inertia[0]


def test_subspaces_at_once_match_separate_runs_in_quality():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2500, 20)).astype(np.float32)
    widths = (7, 7, 6)
    res = kmeans_subspaces(x, widths, 32, np.random.default_rng(0))
    assert [c.shape for c in res.centroids] == [(32, 7), (32, 7), (32, 6)]
    assert len(res.inertia) == 3
    single = kmeans(np.ascontiguousarray(x[:, 14:]), 32, np.random.default_rng(1))
    assert res.inertia[2] == pytest.approx(single.inertia[0], rel=0.05)


def test_kmeanspp_on_a_subsample_is_fast_and_good():
    # 256 centroids on 80,000 points: seeding uses 256 x 256 points at most; the result
    # is as good as FAISS's published PQ figure on Gaussian data (16 dims, 8 bits: 0.583)
    x = np.random.default_rng(7).standard_normal((80000, 16)).astype(np.float32)
    res = kmeans(x, 256, np.random.default_rng(0), max_iter=10)
    rel = res.inertia[0] / float((x.astype(np.float64) ** 2).sum())
    assert 0.5 < rel < 0.62


def test_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        kmeans(np.array([[np.nan, 0]], np.float32), 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="no training rows"):
        kmeans(np.zeros((0, 3), np.float32), 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="widths"):
        kmeans_subspaces(np.zeros((4, 3), np.float32), (2, 2), 2, np.random.default_rng(0))


def test_jit_and_reference_train_the_same_codebook(monkeypatch):
    x = np.random.default_rng(8).standard_normal((3000, 12)).astype(np.float32)
    monkeypatch.delenv("HELIX_JIT_DISABLE", raising=False)
    a = kmeans_subspaces(x, (6, 6), 64, np.random.default_rng(0))
    monkeypatch.setenv("HELIX_JIT_DISABLE", "1")
    b = kmeans_subspaces(x, (6, 6), 64, np.random.default_rng(0))
    for ca, cb in zip(a.centroids, b.centroids):
        np.testing.assert_array_equal(ca, cb)


def test_codes_are_the_nearest_centroids_of_the_result():
    x = np.random.default_rng(9).standard_normal((5000, 8)).astype(np.float32)
    res = kmeans(x, 64, np.random.default_rng(0), max_iter=5)
    d = ((x.astype(np.float64)[:, None] - res.codebook.astype(np.float64)[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(res.codes[:, 0], np.argmin(d, axis=1))
    assert res.inertia[0] == pytest.approx(float(d.min(axis=1).sum()), rel=1e-12)
