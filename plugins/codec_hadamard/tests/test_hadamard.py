import numpy as np
import pytest

from helix_codec_hadamard.rotation import (
    HadamardParams,
    HadamardRotation,
    construction,
    hadamard_matrix,
    is_hadamard_order,
)
from helix_framework.testing import check_rotation_invertible, check_rotation_stats

ROT = HadamardRotation()


def rows(n, d, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


@pytest.mark.parametrize(
    "d, expected",
    [
        (576, {"construction": "kronecker", "K": 36, "pow2": 16}),
        (1536, {"construction": "kronecker", "K": 12, "pow2": 128}),
        (384, {"construction": "kronecker", "K": 12, "pow2": 32}),
        (1024, {"construction": "walsh", "pow2": 1024}),
        (100, {"construction": "block_diagonal", "blocks": [96, 4]}),
    ],
)
def test_constructions_invert_and_preserve_norms(d, expected):
    assert construction(d) == expected
    x = rows(40, d)
    check_rotation_invertible(ROT, HadamardParams(seed=3), x)
    state = ROT.fit(x, HadamardParams(seed=3), np.random.default_rng(0))
    assert {k: state.meta[k] for k in expected} == expected
    y = ROT.apply(state, x)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), np.linalg.norm(x, axis=1), rtol=1e-5)
    # orthonormal: the image of the identity is an orthogonal matrix
    if d <= 576:
        q = ROT.apply(state, np.eye(d, dtype=np.float32)).astype(np.float64)
        np.testing.assert_allclose(q @ q.T, np.eye(d), atol=1e-5)
    # signs are stored (int8) and counted at 8 bits each
    assert state.arrays["signs"].dtype == np.int8 and ROT.overhead_bits(state) == 8 * d


def test_spreads_an_outlier_column():
    x = np.zeros((1, 576), np.float32)
    x[0, 5] = 24.0
    y = ROT.apply(ROT.fit(x, HadamardParams(seed=1), np.random.default_rng(0)), x)
    np.testing.assert_allclose(np.abs(y), 1.0, rtol=1e-5)  # 24 / sqrt(576) in every column


def test_known_orders_are_hadamard():
    for K in (12, 20, 28, 36, 44, 60, 76, 108, 148):
        assert is_hadamard_order(K)
        H = hadamard_matrix(K).astype(np.int64)
        np.testing.assert_array_equal(H @ H.T, K * np.eye(K, dtype=np.int64))
    assert not is_hadamard_order(100) and not is_hadamard_order(6)


def test_deterministic_per_seed():
    x = rows(8, 384)
    a = ROT.fit(x, HadamardParams(seed=5), np.random.default_rng(0))
    b = ROT.fit(x, HadamardParams(seed=5), np.random.default_rng(99))
    c = ROT.fit(x, HadamardParams(seed=6), np.random.default_rng(0))
    np.testing.assert_array_equal(a.arrays["signs"], b.arrays["signs"])
    assert not np.array_equal(a.arrays["signs"], c.arrays["signs"])
    np.testing.assert_array_equal(ROT.apply(a, x), ROT.apply(b, x))


def test_jit_and_reference_agree(monkeypatch):
    x = rows(16, 1536)
    state = ROT.fit(x, HadamardParams(seed=2), np.random.default_rng(0))
    monkeypatch.delenv("HELIX_JIT_DISABLE", raising=False)
    y_jit = ROT.apply(state, x)
    monkeypatch.setenv("HELIX_JIT_DISABLE", "1")
    y_ref = ROT.apply(state, x)
    np.testing.assert_array_equal(y_jit, y_ref)


def correlated_inputs(tokens, d, seed=1):
    """Inputs with one massive channel and correlated others, like a real layer's."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((tokens, d)) @ (np.eye(d) + 0.5 * rng.standard_normal((d, d)) / np.sqrt(d))
    x[:, 3] *= 300.0
    return x


@pytest.mark.parametrize("d", [576, 1024, 100, 20])
def test_orthonormal_and_statistics_transform_as_on_the_activations(d):
    state = ROT.fit(rows(2, d), HadamardParams(seed=3), np.random.default_rng(0))
    a = ROT.apply(state, np.eye(d, dtype=np.float32)).astype(np.float64)
    np.testing.assert_allclose(a.T @ a, np.eye(d), atol=2e-6)
    assert ROT.orthogonal
    check_rotation_stats(ROT, HadamardParams(seed=3), rows(24, d, seed=2), correlated_inputs(300, d), rtol=1e-5)
