import numpy as np
import pytest

from helix_codec_campq.params import CampqParams, Residual
from helix_framework.errors import ConfigError, NotImplementedInThisVersion
from helix_framework.host import Host
from helix_framework.testing import check_params_round_trip
from helix_jit.lanes import ALL_LANE_WIDTHS


def test_registered_through_its_entry_point():
    reg = Host().lookup("codec", "campq")
    assert (reg.source, reg.distribution) == ("entry point", "helix-codec-campq")
    assert reg.obj.Params is CampqParams and reg.obj.lane_widths == ALL_LANE_WIDTHS


def test_params_schema():
    params = CampqParams(subspaces=6, residual=Residual(depth=1, centroids=512))
    check_params_round_trip(params)
    with pytest.raises(ValueError, match="centroids"):
        CampqParams(subspaces=6, centroids=1)
    with pytest.raises(ConfigError, match="exactly one of subspaces"):
        CampqParams().check()


def test_use_is_refused_until_implemented():
    codec = Host().codec("campq")
    with pytest.raises(NotImplementedInThisVersion, match="campq.*not implemented in this version"):
        codec.fit(np.zeros((4, 4), np.float32), CampqParams(subspaces=2), np.random.default_rng(0))
