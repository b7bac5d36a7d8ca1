import numpy as np

from helix_example_plugin import SignScaleCodec
from helix_framework.testing import check_codec_bits, check_codec_deterministic, check_codec_round_trip


def test_signscale_conforms():
    codec = SignScaleCodec()
    rows = np.random.default_rng(0).standard_normal((64, 100)).astype(np.float32)
    params = codec.Params()
    check_codec_round_trip(codec, params, rows, max_rel_l2=0.7)
    check_codec_deterministic(codec, params, rows, seed=1)
    check_codec_bits(codec, params, rows)


def test_row_abs_mean_kernel_matches_its_reference(monkeypatch):
    from helix_example_plugin.kernels import ROW_ABS_MEAN, reference, row_abs_mean

    rng = np.random.default_rng(1)
    for n, d in [(1, 5), (7, 16), (33, 100), (64, 576)]:
        rows = rng.standard_normal((n, d)).astype(np.float32)
        expected = np.empty(n, np.float32)
        reference("F32x16", {"d": d}, rows, expected, n)
        got = row_abs_mean(rows)
        assert np.array_equal(got, expected), (n, d)
        assert np.allclose(got, np.abs(rows).mean(axis=1), rtol=1e-6)
        monkeypatch.setenv("HELIX_JIT_DISABLE", "1")
        assert np.array_equal(row_abs_mean(rows), expected)
        monkeypatch.delenv("HELIX_JIT_DISABLE")
    assert len(ROW_ABS_MEAN.signature("F32x16", d=100)) == 64
