import numpy as np
import pytest

from helix_codec_campq.codec import subspace_widths
from helix_codec_campq.params import CampqParams, Residual
from helix_framework.errors import CentroidStarved, ConfigError
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
    with pytest.raises(ConfigError, match="one of subspaces .* not both"):
        CampqParams(subspaces=6, subspace_dim=8).check()
    CampqParams().check()  # the defaults are valid: vectors of 8 weights
    assert subspace_widths(CampqParams(), 576) == (8,) * 72


def test_use_through_the_host_fits_real_codes():
    # The registered codec is the real algorithm (no NotImplementedInThisVersion stub left).
    codec = Host().codec("campq")
    rows = np.random.default_rng(0).standard_normal((160, 8)).astype(np.float32)
    state = codec.fit(rows, CampqParams(subspaces=2, centroids=4), np.random.default_rng(0))
    codes = codec.encode(state, rows)
    assert codes.arrays["stage0"].shape == (160, 2)
    with pytest.raises(CentroidStarved):
        codec.fit(rows[:40], CampqParams(subspaces=2, centroids=4), np.random.default_rng(0))
