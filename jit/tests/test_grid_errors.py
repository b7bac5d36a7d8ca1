import numpy as np
import pytest

from helix_jit.kernels.grid_errors import grid_errors

NF = np.array([-1.0, -0.6, -0.3, 0.0, 0.25, 0.55, 1.0], np.float32)  # uneven sorted levels


def _errors(monkeypatch, disable, *args, **kw):
    if disable:
        monkeypatch.setenv("HELIX_JIT_DISABLE", "1")
    else:
        monkeypatch.delenv("HELIX_JIT_DISABLE", raising=False)
    return grid_errors(*args, **kw)


def _case(rng, G=3, g=20, n=37, S=5, zeros=True):
    w = rng.standard_normal((G, g, n)).astype(np.float32)
    s = rng.uniform(0.05, 0.5, (S, G, n)).astype(np.float32)
    s[:, 0, :3] = 0.0  # a scale of zero: every code value is 0
    z = rng.standard_normal((S, G, n)).astype(np.float32) if zeros else None
    return w, s, z, rng.uniform(0.0, 2.0, (G, g))


@pytest.mark.parametrize("levels,codes,zeros", [(NF, (0, 0), True), (None, (0, 15), True), (NF, (0, 0), False),
                                                (None, (-3, 3), False)])
def test_jit_and_reference_give_the_same_bits_and_the_direct_error(monkeypatch, levels, codes, zeros):
    w, s, z, pw = _case(np.random.default_rng(1), zeros=zeros)
    if levels is not None:  # some weights exactly on a midpoint: the lower level wins
        mid = (NF[2] + NF[3]) / np.float32(2)
        w[1, 4, :5] = mid * s[0, 1, :5] + (z[0, 1, :5] if zeros else 0)
    a = _errors(monkeypatch, False, w, s, z, pw, levels, codes)
    b = _errors(monkeypatch, True, w, s, z, pw, levels, codes)
    assert a.tobytes() == b.tobytes()
    # against a direct float64 computation of the same grid rounding
    zz = np.zeros_like(s) if z is None else z
    with np.errstate(divide="ignore", invalid="ignore"):
        x = (w[None].astype(np.float64) - zz[:, :, None]) / s[:, :, None]
    if levels is None:
        v = np.clip(np.rint(x), *codes)
    else:
        v = NF.astype(np.float64)[np.abs(x[..., None] - NF).argmin(-1)]
    v = np.where(s[:, :, None] > 0, v, 0.0)
    want = (((v * s[:, :, None] + zz[:, :, None]) - w[None]) ** 2 * pw[None, :, :, None]).sum(2)
    np.testing.assert_allclose(a, want, rtol=1e-4, atol=1e-6)


def test_a_bad_shape_is_refused():
    w, s, z, pw = _case(np.random.default_rng(2))
    with pytest.raises(ValueError, match="weights"):
        grid_errors(w, s, z, pw[:, :3])
