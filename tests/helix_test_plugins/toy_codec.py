"""A working test plugin: codec ``toy`` (F32x16 only), exact copy."""

import attrs
import numpy as np

from helix_framework import hookimpl
from helix_framework.codec import BitsAccount, Codec, CodecState, Codes
from helix_framework.params import codegen_false, in_range
from helix_jit.lanes import LaneWidth


@attrs.frozen
class ToyParams:
    centroids: int = attrs.field(default=16, validator=in_range(1))
    lane_width: LaneWidth = LaneWidth.F32x16
    seed: int = attrs.field(default=0, metadata=codegen_false())


class ToyCodec(Codec):
    name = "toy"
    version = "1.0"
    Params = ToyParams
    lane_widths = (LaneWidth.F32x16,)

    def fit(self, rows, params, rng):
        return CodecState()

    def encode(self, state, rows):
        return Codes({"rows": np.array(rows, dtype=np.float32)})

    def decode(self, state, codes):
        return codes.arrays["rows"].copy()

    def bits(self, state, n_rows, row_dim):
        return BitsAccount(n_rows * row_dim, 32 * n_rows * row_dim)


@hookimpl
def helix_register_codecs(register):
    register(ToyCodec())
