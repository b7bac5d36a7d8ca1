import numpy as np

from helix_jit.kernels import kmeanspp as kp


def _draws(xs, k, u, disable, monkeypatch):
    if disable:
        monkeypatch.setenv("HELIX_JIT_DISABLE", "1")
    else:
        monkeypatch.delenv("HELIX_JIT_DISABLE", raising=False)
    xt = np.ascontiguousarray(xs.T)
    d2 = kp.sq_distances(xt, xt[:, 0])
    picks = np.full(k, -1, np.int64)
    stop = kp.kmeanspp_draws(xt, d2, u, picks, 1, k)
    return stop, picks, d2


def test_jit_and_reference_draw_the_same_points(monkeypatch):
    rng = np.random.default_rng(3)
    xs = rng.standard_normal((5000, 8)).astype(np.float32)
    xs[1:40] = xs[0]  # duplicates of the first pick: weight 0, never drawn
    u = rng.random(200)
    a = _draws(xs, 200, u, False, monkeypatch)
    b = _draws(xs, 200, u, True, monkeypatch)
    assert a[0] == b[0] == 200
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2].tobytes() == b[2].tobytes()
    picked = a[1][1:]
    assert len(set(picked.tolist())) == 199 and not np.isin(picked, np.arange(40)).any()
    # every weight is the distance to the nearest chosen point but the last
    chosen = xs[np.concatenate([[0], picked[:-1]])].astype(np.float64)
    want = ((xs.astype(np.float64)[:, None] - chosen[None]) ** 2).sum(-1).min(1)
    np.testing.assert_allclose(a[2], want, rtol=1e-5, atol=1e-6)


def test_stops_when_every_weight_is_zero(monkeypatch):
    xs = np.repeat(np.eye(5, 6, dtype=np.float32), 30, axis=0)  # 5 distinct points
    u = np.random.default_rng(0).random(8)
    for disable in (False, True):
        stop, picks, d2 = _draws(xs, 8, u, disable, monkeypatch)
        assert stop == 5 and not d2.any()
        assert len({tuple(xs[p]) for p in np.concatenate([[0], picks[1:5]])}) == 5
