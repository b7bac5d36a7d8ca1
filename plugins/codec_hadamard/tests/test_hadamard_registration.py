import numpy as np

from helix_codec_hadamard.rotation import HadamardParams
from helix_framework.host import Host
from helix_framework.testing import check_params_round_trip


def test_registered_through_its_entry_point():
    reg = Host().lookup("rotation", "hadamard")
    assert (reg.source, reg.distribution) == ("entry point", "helix-codec-hadamard")
    check_params_round_trip(HadamardParams(seed=7))


def test_use_through_the_host_rotates():
    rotation = Host().rotation("hadamard")
    x = np.eye(4, dtype=np.float32)
    state = rotation.fit(x, HadamardParams(), np.random.default_rng(0))
    y = rotation.apply(state, x)
    assert np.allclose(np.abs(y), 0.5)  # a Hadamard matrix of order 4, normalised
