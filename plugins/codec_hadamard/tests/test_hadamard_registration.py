import numpy as np
import pytest

from helix_codec_hadamard.rotation import HadamardParams
from helix_framework.errors import NotImplementedInThisVersion
from helix_framework.host import Host
from helix_framework.testing import check_params_round_trip


def test_registered_through_its_entry_point():
    reg = Host().lookup("rotation", "hadamard")
    assert (reg.source, reg.distribution) == ("entry point", "helix-codec-hadamard")
    check_params_round_trip(HadamardParams(seed=7))


def test_use_is_refused_until_implemented():
    rotation = Host().rotation("hadamard")
    with pytest.raises(NotImplementedInThisVersion, match="not implemented in this version"):
        rotation.fit(np.zeros((4, 4), np.float32), HadamardParams(), np.random.default_rng(0))
