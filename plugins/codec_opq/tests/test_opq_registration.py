from types import SimpleNamespace

import numpy as np
import pytest

from helix_codec_opq.rotation import OpqParams
from helix_framework.errors import ConfigError
from helix_framework.host import Host
from helix_framework.testing import check_params_round_trip


def test_registered_through_its_entry_point():
    reg = Host().lookup("rotation", "opq")
    assert (reg.source, reg.distribution) == ("entry point", "helix-codec-opq")
    check_params_round_trip(OpqParams(iterations=20))
    with pytest.raises(ValueError, match="iterations"):
        OpqParams(iterations=0)


def test_use_through_the_host_needs_codec_params():
    rotation = Host().rotation("opq")
    x = np.random.default_rng(0).standard_normal((200, 8)).astype(np.float32)
    with pytest.raises(ConfigError, match="codec's params"):
        rotation.fit(x, OpqParams(), np.random.default_rng(0))
    state = rotation.fit(x, OpqParams(iterations=2), np.random.default_rng(0),
                         codec_params=SimpleNamespace(subspaces=2, centroids=4))
    assert state.arrays["matrix"].shape == (8, 8)
