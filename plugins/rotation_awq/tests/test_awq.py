"""The awq rotation: scales from activation magnitudes, exponent searched with the codec."""

import numpy as np
import pytest

from helix_framework.builtins import RtnCodec, RtnParams
from helix_framework.errors import ConfigError
from helix_framework.host import Host
from helix_framework.layer_stats import LayerStats
from helix_framework.testing import check_params_round_trip, check_rotation_invertible, check_rotation_stats
from helix_rotation_awq.rotation import AwqParams, AwqRotation, channel_scales

ROT = AwqRotation()
RTN, INT3 = RtnCodec(), RtnParams(bits=3, group_size=32, symmetric=False)


def inputs(tokens=2000, d=64, seed=0):
    """Activations with a few salient channels (50x the rest), as AWQ observes."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((tokens, d))
    x[:, rng.choice(d, 4, replace=False)] *= 50.0
    return x


def weights(n=96, d=64, seed=1):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def stats_of(x):
    return LayerStats(hessian=x.T @ x, n_tokens=x.shape[0])


class AwqWithCodec(AwqRotation):
    """The conformance helpers call fit without statistics or codec: supply them."""

    def fit(self, rows, params, rng, codec_params=None, stats=None, codec=None):
        return super().fit(rows, params, rng, INT3, stats or stats_of(inputs(d=rows.shape[1])), RTN)


def fit(w, x, params=AwqParams()):
    return ROT.fit(w, params, np.random.default_rng(0), codec_params=INT3, stats=stats_of(x), codec=RTN)


def output_error(w, x, state):
    stats = stats_of(x)
    ws = ROT.apply(state, w)
    cs = RTN.fit(ws, INT3, np.random.default_rng(0))
    y = ROT.invert(state, RTN.decode(cs, RTN.encode(cs, ws)))
    return stats.output_error(w - y)


def test_scaling_lowers_the_codec_output_error_on_salient_channels():
    w, x = weights(), inputs()
    state = fit(w, x)
    plain = output_error(w, x, ROT._state(np.ones(64, np.float32), 0.0))
    assert 0.0 < state.meta["alpha"] <= 1.0
    assert output_error(w, x, state) < 0.8 * plain
    errors = state.meta["output_errors"]
    assert min(errors) == pytest.approx(output_error(w, x, state), rel=1e-6)
    assert errors[0] == pytest.approx(plain, rel=1e-6)  # alpha 0: no scaling


def test_scales_follow_activation_magnitudes():
    x = inputs()
    s = channel_scales(stats_of(x), 0.5)
    rms = np.sqrt((x**2).mean(axis=0))
    np.testing.assert_allclose(s / s[0], np.sqrt(rms / rms[0]), rtol=1e-5)
    assert np.sqrt(s.max() * s.min()) == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_array_equal(channel_scales(stats_of(x), 0.0), np.ones(64, np.float32))
    x[:, 5] = 0.0  # a dead input gets the median magnitude, not 0 or infinity
    s = channel_scales(stats_of(x), 1.0)
    assert np.all(np.isfinite(s)) and s[5] > 0


def test_invertible_and_statistics_transform_as_on_the_activations():
    w, x = weights(), inputs()
    check_rotation_invertible(AwqWithCodec(), AwqParams(grid=3), w)
    check_rotation_stats(AwqWithCodec(), AwqParams(grid=3), w, x, rtol=1e-6)


def test_needs_statistics_and_codec():
    w = weights()
    with pytest.raises(ConfigError, match="calibration text"):
        ROT.fit(w, AwqParams(), np.random.default_rng(0), codec_params=INT3, codec=RTN)
    with pytest.raises(ConfigError, match="codec"):
        ROT.fit(w, AwqParams(), np.random.default_rng(0), stats=stats_of(inputs()))


def test_registered_through_its_entry_point():
    reg = Host().lookup("rotation", "awq")
    assert (reg.source, reg.distribution) == ("entry point", "helix-rotation-awq")
    assert reg.obj.takes_stats and reg.obj.takes_codec and not reg.obj.orthogonal
    check_params_round_trip(AwqParams(grid=5))


def test_the_host_passes_the_codec_and_the_searched_scaling_is_used():
    """A data-aware candidate with rotation awq fits through the host's
    fit_reconstruct (which must hand the rotation its codec)."""
    from helix_framework.calibrate import fit_reconstruct, resolve
    from helix_framework.config import candidate_from_mapping

    host = Host()
    cand = candidate_from_mapping({
        "name": "awq_int3", "codec": "rtn", "params": {"bits": 3, "group_size": 32, "symmetric": False},
        "rotation": {"kind": "awq", "grid": 5}, "rows": {"calibration": 64, "measurement": 32, "seed": 0},
        "calibration": {"text": "builtin", "sequences": 4, "tokens": 64},
    }, host)
    w, x = weights(), inputs()
    fitted = fit_reconstruct(w, np.arange(64), resolve(cand, host), cand.params, "w", np.random.default_rng(0),
                             stats=stats_of(x))
    direct = fit(w, x, AwqParams(grid=5))
    assert fitted.rot_state.meta["alpha"] == direct.meta["alpha"] > 0
    cs = RTN.fit(w, INT3, np.random.default_rng(0))
    plain = RTN.decode(cs, RTN.encode(cs, w))
    assert stats_of(x).output_error(w - fitted.reconstruction) < stats_of(x).output_error(w - plain)
    assert fitted.bits["rotation_bpw"] == pytest.approx(32 * w.shape[1] / w.size)
