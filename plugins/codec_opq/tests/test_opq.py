from types import SimpleNamespace

import numpy as np

import helix_jit
from helix_codec_opq.rotation import OpqParams, OpqRotation, opq_subspaces
from helix_framework.kmeans import kmeans_subspaces
from helix_framework.testing import check_rotation_invertible, check_rotation_stats


def CampqParams(subspaces=None, subspace_dim=None, centroids=256, allow_starved=False, lane_width="F32x16"):
    """Stand-in for a codec's params (opq reads them by attribute; no dependency on campq)."""
    return SimpleNamespace(subspaces=subspaces, subspace_dim=subspace_dim, centroids=centroids,
                           allow_starved=allow_starved, lane_width=lane_width)


CODEC_PARAMS = CampqParams(subspaces=4, centroids=16)


class OpqForCampq(OpqRotation):
    """check_rotation_invertible calls fit without codec_params: supply the codec's."""

    def fit(self, rows, params, rng, codec_params=None):
        return super().fit(rows, params, rng, codec_params or CODEC_PARAMS)


def correlated(n, d, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((d, d)) * np.exp(-np.arange(d) / 5.0)[None, :]
    return (rng.standard_normal((n, d)) @ a.T).astype(np.float32)


def test_invertible_and_orthonormal():
    x = correlated(800, 30)  # 30 = uneven widths 8, 8, 7, 7
    check_rotation_invertible(OpqForCampq(), OpqParams(iterations=3), x)
    state = OpqForCampq().fit(x, OpqParams(iterations=3), np.random.default_rng(0))
    R = state.arrays["matrix"].astype(np.float64)
    assert R.shape == (30, 30) and state.arrays["matrix"].dtype == np.float32
    np.testing.assert_allclose(R.T @ R, np.eye(30), atol=1e-6)
    assert OpqRotation().overhead_bits(state) == 32 * 30 * 30
    assert state.meta["widths"] == [8, 8, 7, 7] and state.meta["centroids"] == 16


def test_lowers_pq_error_versus_identity():
    x = correlated(3000, 32, seed=1)
    train, test = x[:2400], x[2400:]

    def held_out_error(tr, te):
        cbs = kmeans_subspaces(tr, helix_jit.split_widths(32, 4), 16, np.random.default_rng(0)).centroids
        y = helix_jit.pq_decode([helix_jit.pq_assign(np.ascontiguousarray(te), cbs)], [cbs])
        return float(((y - te) ** 2).sum() / (te**2).sum())

    rot = OpqRotation()
    state = rot.fit(train, OpqParams(iterations=8), np.random.default_rng(0), codec_params=CODEC_PARAMS)
    e_id = held_out_error(train, test)
    e_opq = held_out_error(rot.apply(state, train), rot.apply(state, test))  # rotation preserves norms
    assert e_opq < 0.7 * e_id, (e_opq, e_id)
    hist = state.meta["pq_rel_error_history"]
    assert hist[-1] <= hist[0]


def test_deterministic():
    x = correlated(600, 16, seed=2)
    p = CampqParams(subspace_dim=4, centroids=8)
    a = OpqRotation().fit(x, OpqParams(iterations=3, seed=1), np.random.default_rng(5), codec_params=p)
    b = OpqRotation().fit(x, OpqParams(iterations=3, seed=1), np.random.default_rng(5), codec_params=p)
    assert a.arrays["matrix"].tobytes() == b.arrays["matrix"].tobytes() and a.meta == b.meta


def test_centroids_capped_by_data():
    assert opq_subspaces(CampqParams(subspaces=6, centroids=256), 576, 2048) == ((96,) * 6, 52)
    assert opq_subspaces(CampqParams(subspaces=6, centroids=256, allow_starved=True), 576, 100)[1] == 100
    assert opq_subspaces(CampqParams(subspace_dim=8, centroids=16), 20, 4000) == ((10, 10), 16)


def test_any_lane_width():
    x = correlated(400, 16, seed=3)
    for lw in ("F32x16", "F64x8", "BF16x32", "U8x64"):
        p = CampqParams(subspaces=2, centroids=8, lane_width=lw)
        state = OpqRotation().fit(x, OpqParams(iterations=2), np.random.default_rng(0), codec_params=p)
        back = OpqRotation().invert(state, OpqRotation().apply(state, x))
        np.testing.assert_allclose(back, x, atol=1e-5 * np.abs(x).max())


def test_statistics_transform_as_on_the_activations():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((400, 16)) * np.linspace(0.1, 20.0, 16)
    assert OpqRotation.orthogonal
    check_rotation_stats(OpqRotation(), OpqParams(iterations=3), correlated(400, 16), x,
                         codec_params=CampqParams(subspaces=4, centroids=8), rtol=1e-5)
