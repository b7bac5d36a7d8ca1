import numpy as np
import pytest

from helix_codec_opq.rotation import OpqParams
from helix_framework.errors import NotImplementedInThisVersion
from helix_framework.host import Host
from helix_framework.testing import check_params_round_trip


def test_registered_through_its_entry_point():
    reg = Host().lookup("rotation", "opq")
    assert (reg.source, reg.distribution) == ("entry point", "helix-codec-opq")
    check_params_round_trip(OpqParams(iterations=20))
    with pytest.raises(ValueError, match="iterations"):
        OpqParams(iterations=0)


def test_use_is_refused_until_implemented():
    rotation = Host().rotation("opq")
    with pytest.raises(NotImplementedInThisVersion, match="not implemented in this version"):
        rotation.fit(np.zeros((4, 4), np.float32), OpqParams(), np.random.default_rng(0))
