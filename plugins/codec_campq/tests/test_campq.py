import math

import numpy as np
import pytest

from helix_codec_campq.codec import CampqCodec, subspace_widths
from helix_codec_campq.params import CampqParams, Residual
from helix_framework import testing
from helix_framework.errors import CentroidStarved, ConfigError
from helix_framework.measure.stats import rel_l2

CODEC = CampqCodec()


def normal(n, d, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def correlated(n, d, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((d, d)) * np.exp(-np.arange(d) / 8.0)[None, :]
    return (rng.standard_normal((n, d)) @ a.T).astype(np.float32)


def rel_mse(x, y):
    return float(((x.astype(np.float64) - y) ** 2).sum() / (x.astype(np.float64) ** 2).sum())


def round_trip(params, train, test, seed=0):
    state = CODEC.fit(train, params, np.random.default_rng(seed))
    codes = CODEC.encode(state, test)
    return state, codes, CODEC.decode(state, codes)


# -- conformance -------------------------------------------------------------------

ROWS = normal(400, 24)


@pytest.mark.parametrize(
    "params",
    [
        CampqParams(subspaces=3, centroids=8),
        CampqParams(subspace_dim=4, centroids=16, codebook="shared", row_scale=True, residual=Residual(1, 8)),
        CampqParams(subspaces=5, centroids=8, lane_width="BF16x32"),
        CampqParams(subspaces=4, centroids=8, lane_width="U8x64", residual=Residual(1, 4)),
        CampqParams(subspaces=4, centroids=8, lane_width="F64x8"),
    ],
    ids=["per_subspace", "shared_scaled_residual", "bf16_uneven", "u8_residual", "f64"],
)
def test_conformance(params):
    testing.check_params_round_trip(params)
    testing.check_codec_round_trip(CODEC, params, ROWS, max_rel_l2=0.9)
    testing.check_codec_deterministic(CODEC, params, ROWS, seed=7)
    acct = testing.check_codec_bits(CODEC, params, ROWS)
    state = CODEC.fit(ROWS, params, np.random.default_rng(0))
    M = state.meta["subspaces"]
    assert acct.code_bits == 400 * sum(M * math.ceil(math.log2(s["k_eff"])) for s in state.meta["stages"])


def test_validate_names_the_key():
    with pytest.raises(ConfigError, match="not both") as info:
        CODEC.validate(CampqParams(subspaces=4, subspace_dim=8))
    assert info.value.path == "$.subspaces"


# -- subspace layout -----------------------------------------------------------------


def test_uneven_widths_keep_every_column():
    x = correlated(1200, 100, seed=1)
    params = CampqParams(subspaces=6, centroids=16)
    state, codes, y = round_trip(params, x[:1000], x[1000:])
    assert state.meta["widths"] == [17, 17, 17, 17, 16, 16]
    assert state.arrays["stage0.codebook"].shape == (16, 100)
    assert codes.arrays["stage0"].shape == (200, 6) and codes.arrays["stage0"].dtype == np.uint8
    # decode is the coded centroid of every subspace, over all 100 columns
    cb, c = state.arrays["stage0.codebook"], codes.arrays["stage0"]
    bounds = np.cumsum([0, 17, 17, 17, 17, 16, 16])
    manual = np.concatenate([cb[c[:, m], bounds[m]:bounds[m + 1]] for m in range(6)], axis=1)
    np.testing.assert_array_equal(y, manual)
    # and no column is dropped (a dropped column would have error = its energy)
    test = x[1000:].astype(np.float64)
    per_col = ((test - y) ** 2).sum(0) / (test**2).sum(0)
    assert per_col.max() < 1.0 and per_col[-16:].mean() < 0.9, per_col


def test_subspace_dim_with_narrower_last_subspace():
    params = CampqParams(subspace_dim=8, centroids=4)
    assert subspace_widths(params, 20) == (8, 8, 4)
    state, _, y = round_trip(params, normal(300, 20), normal(50, 20, seed=1))
    assert state.meta["widths"] == [8, 8, 4] and y.shape == (50, 20)


def test_shared_codebook():
    x = normal(700, 32, seed=2)
    params = CampqParams(subspace_dim=4, centroids=64, codebook="shared")
    # 600 rows x 8 subspaces = 4800 training vectors >= 39 x 64: not starved
    state, codes, y = round_trip(params, x[:600], x[600:])
    assert state.arrays["stage0.codebook"].shape == (64, 4)
    assert state.meta["stages"][0]["training_vectors"] == 4800 and state.meta["flags"] == []
    assert codes.arrays["stage0"].shape == (100, 8)
    assert rel_mse(x[600:], y) < 0.2
    acct = CODEC.bits(state, 100, 32)
    assert acct.overhead_bits == 64 * 4 * 32 and acct.code_bits == 100 * 8 * 6


def test_shared_codebook_needs_equal_widths():
    with pytest.raises(ConfigError, match="subspace_dim 5 does not divide the row width 32") as err:
        CODEC.fit(normal(2000, 32), CampqParams(subspace_dim=5, codebook="shared", centroids=4), np.random.default_rng(0))
    assert err.value.path == "$.params.subspace_dim"
    with pytest.raises(ConfigError, match="equal subspace widths") as err:
        CODEC.fit(normal(2000, 30), CampqParams(subspaces=4, codebook="shared", centroids=4), np.random.default_rng(0))
    assert err.value.path == "$.params.subspaces"


def test_wide_codebook_uses_uint16_codes():
    x = normal(2500, 16, seed=3)
    params = CampqParams(subspace_dim=2, centroids=512, codebook="shared", max_iter=5)
    state, codes, _ = round_trip(params, x, x[:100])
    assert state.meta["stages"][0]["k_eff"] == 512
    assert codes.arrays["stage0"].dtype == np.uint16
    assert CODEC.bits(state, 100, 16).code_bits == 100 * 8 * 9


# -- residual stages, row scales -----------------------------------------------------


def test_residual_stage_lowers_held_out_error():
    x = correlated(2000, 32, seed=4)
    train, test = x[:1600], x[1600:]
    base = CampqParams(subspaces=4, centroids=32)
    deep = CampqParams(subspaces=4, centroids=32, residual=Residual(depth=1, centroids=32))
    _, _, y0 = round_trip(base, train, test)
    state, codes, y1 = round_trip(deep, train, test)
    assert set(codes.arrays) == {"stage0", "stage1"}
    assert rel_mse(test, y1) < 0.7 * rel_mse(test, y0)
    assert CODEC.bits(state, 400, 32).code_bits == 400 * 4 * (5 + 5)


def test_row_scale():
    rng = np.random.default_rng(5)
    scales = np.exp(rng.uniform(-4, 4, size=(1200, 1))).astype(np.float32)
    x = normal(1200, 16, seed=5) * scales
    x[7] = 0.0  # a zero row has scale 0 and decodes to zeros
    train, test = x[:1000], x[1000:]
    scaled = CampqParams(subspaces=4, centroids=16, row_scale=True)
    state, codes, y = round_trip(scaled, train, test)
    s16 = codes.arrays["row_scale"]
    assert s16.dtype == np.float16 and s16.shape == (200,)
    np.testing.assert_array_equal(s16, np.sqrt((test.astype(np.float64) ** 2).mean(1)).astype(np.float16))
    _, _, y_plain = round_trip(CampqParams(subspaces=4, centroids=16), train, test)
    # per-row relative error: scaling makes small rows as well coded as big ones
    rel = lambda a, b: np.median(np.linalg.norm(a - b, axis=1) / np.linalg.norm(a, axis=1))  # noqa: E731
    assert rel(test, y) < 0.6 * rel(test, y_plain)
    assert CODEC.bits(state, 200, 16).overhead_bits == 16 * 16 * 32 + 16 * 200
    st, cd, z = round_trip(scaled, train, x[:10])
    assert np.all(z[7] == 0.0) and cd.arrays["row_scale"][7] == 0


# -- starved codebooks, true centroid counts -------------------------------------------


def test_starved_is_refused_with_numbers_and_fix():
    params = CampqParams(subspaces=4, centroids=64)
    with pytest.raises(CentroidStarved) as err:
        CODEC.fit(normal(1000, 16), params, np.random.default_rng(0))
    msg = str(err.value)
    assert "1000 calibration rows" in msg and "15.6 per centroid" in msg and "2496" in msg
    assert "allow_starved: true" in msg and "codebook: shared" in msg and "at most 25 centroids" in msg
    # a starved residual stage is refused too, naming residual.centroids
    with pytest.raises(CentroidStarved, match="residual stage 1.*residual.centroids"):
        CODEC.fit(normal(1000, 16), CampqParams(subspaces=4, centroids=16, residual=Residual(1, 64)),
                  np.random.default_rng(0))


def test_starved_allowed_is_flagged():
    state, _, _ = round_trip(CampqParams(subspaces=4, centroids=64, allow_starved=True), normal(1000, 16), normal(10, 16))
    assert state.meta["flags"] == ["starved"]
    assert state.meta["stages"][0]["k_eff"] == 64


def test_fewer_training_vectors_than_centroids_stores_the_true_count():
    train = normal(50, 16, seed=6)
    params = CampqParams(subspaces=4, centroids=256, allow_starved=True)
    state, codes, y = round_trip(params, train, train)
    assert state.meta["stages"][0]["k_eff"] == 50
    assert state.arrays["stage0.codebook"].shape == (50, 16)  # never zero-filled to 256
    assert not np.any(np.all(state.arrays["stage0.codebook"] == 0, axis=1))
    assert CODEC.bits(state, 50, 16).code_bits == 50 * 4 * 6  # ceil(log2(50)) = 6
    np.testing.assert_allclose(y, train, atol=1e-6)  # every row is its own centroid: the overfit, visible
    # duplicates: 10 distinct rows repeated give 10 centroids
    dup = np.repeat(normal(10, 8, seed=7), 20, axis=0)
    state, _, _ = round_trip(CampqParams(subspaces=2, centroids=64, allow_starved=True), dup, dup)
    assert state.meta["stages"][0]["k_eff"] == 10 and state.arrays["stage0.codebook"].shape == (10, 8)


# -- numerics ---------------------------------------------------------------------------


def test_bf16_codebooks_hold_bf16_values():
    state, _, _ = round_trip(CampqParams(subspaces=4, centroids=8, lane_width="BF16x32"), ROWS, ROWS)
    cb = state.arrays["stage0.codebook"]
    assert np.all(cb.view(np.uint32) & 0xFFFF == 0)
    assert CODEC.bits(state, 400, 24).overhead_bits == cb.size * 16


def _near_ties(target, cbs, widths, a, b, rows, subs):
    """True for every (row, subspace) where centroids a and b are equally near in float32."""
    bounds = np.cumsum([0] + list(widths))
    out = []
    for r, m, ca, cb in zip(rows, subs, a, b):
        v = target[r, bounds[m]:bounds[m + 1]].astype(np.float64)
        da = ((v - cbs[m][ca]) ** 2).sum()
        db = ((v - cbs[m][cb]) ** 2).sum()
        scale = (v**2).sum() + (cbs[m][ca].astype(np.float64) ** 2).sum()
        out.append(abs(da - db) <= 1e-5 * scale)
    return np.array(out, dtype=bool)


def test_jit_and_numpy_reference_agree(monkeypatch):
    x = correlated(3000, 48, seed=8)
    train = x[:2400]
    params = CampqParams(subspaces=5, centroids=32, residual=Residual(1, 16))
    monkeypatch.delenv("HELIX_JIT_DISABLE", raising=False)
    s_jit, c_jit, y_jit = round_trip(params, train, x)
    monkeypatch.setenv("HELIX_JIT_DISABLE", "1")
    s_ref, c_ref, y_ref = round_trip(params, train, x)
    # training codes follow the float64 tie rule: the same codebooks either way
    for key in s_jit.arrays:
        np.testing.assert_array_equal(s_jit.arrays[key], s_ref.arrays[key])
    widths = s_jit.meta["widths"]
    cbs = CODEC._stage_codebooks(s_jit)
    a, b = c_jit.arrays["stage0"], c_ref.arrays["stage0"]
    rows, subs = np.nonzero(a != b)
    assert rows.size <= a.size // 1000
    assert _near_ties(x, cbs[0], widths, a[rows, subs], b[rows, subs], rows, subs).all()
    held = slice(2400, None)
    e_jit, e_ref = rel_l2(x[held], y_jit[held]), rel_l2(x[held], y_ref[held])
    assert abs(e_jit - e_ref) <= 1e-4 * e_ref


def test_pq8x8_on_gaussian_matches_the_published_figure():
    # FAISS ProductQuantizer 8x8 on i.i.d. N(0,1), d=128: relative MSE 0.583, measured on this machine.
    x = normal(10500, 128, seed=9)
    params = CampqParams(subspaces=8, centroids=256, max_iter=15)
    state, _, y = round_trip(params, x[:10000], x[10000:])
    assert state.meta["flags"] == []  # 10,000 rows >= 39 x 256
    assert 0.55 <= rel_mse(x[10000:], y) <= 0.62


@pytest.mark.parametrize("distance", ["adc_u8", "adc_i8"])
def test_matmul_from_codes_is_within_the_adc_bound(distance):
    import helix_jit

    codec = CampqCodec()
    assert codec.compressed_matmul
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((2000, 32)).astype(np.float32)
    params = CampqParams(subspaces=4, centroids=16, row_scale=True, distance=distance,
                         residual=Residual(depth=1, centroids=16))
    state = codec.fit(rows, params, np.random.default_rng(0))
    codes = codec.encode(state, rows)
    x = rng.standard_normal((32, 5)).astype(np.float32)
    y = codec.matmul(state, codes, x, params)
    exact = codec.decode(state, codes).astype(np.float64) @ x
    stage_codes = [codes.arrays["stage0"], codes.arrays["stage1"]]
    bound = helix_jit.adc_error_bound(stage_codes, codec._stage_codebooks(state), x, distance,
                                      params.lane_width, row_scale=codes.arrays["row_scale"].astype(np.float32))
    assert y.shape == (2000, 5) and y.dtype == np.float32
    assert np.all(np.abs(y - exact) <= bound + 1e-5)
    assert np.abs(y - exact).max() > 0  # quantized tables: not the exact product


def test_shared_residual_fit_is_byte_identical_across_runs_and_paths(monkeypatch):
    # the 4-stage shared-VQ recipe, small: two runs with one seed, and a run on the numpy
    # references, give the same bytes (training codes follow the float64 tie rule)
    x = correlated(700, 64, seed=12)
    params = CampqParams(subspace_dim=8, centroids=64, codebook="shared", row_scale=True,
                         residual=Residual(3, 64), max_iter=8)
    monkeypatch.delenv("HELIX_JIT_DISABLE", raising=False)
    runs = [round_trip(params, x[:600], x) for _ in range(2)]
    monkeypatch.setenv("HELIX_JIT_DISABLE", "1")
    runs.append(round_trip(params, x[:600], x))
    first = runs[0][0]
    assert len(first.meta["stages"]) == 4
    for state, codes, y in runs[1:]:
        assert state.meta == first.meta
        for key, a in first.arrays.items():
            assert a.tobytes() == state.arrays[key].tobytes(), key
    assert runs[0][2].tobytes() == runs[1][2].tobytes()
