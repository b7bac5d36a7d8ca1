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
