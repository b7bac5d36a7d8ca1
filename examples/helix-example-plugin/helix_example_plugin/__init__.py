"""A minimal third-party helix-framework plugin.

The codec ``signscale`` keeps one bit per weight (its sign) and one float16
scale per row (the mean absolute value of the row), so each row decodes to
``scale * sign(w)``: about 1 bit per weight, a real (and very lossy) codec.
The row scales come from the plugin's own JIT kernel (`kernels.py`).
"""

from __future__ import annotations

import attrs
import numpy as np

from helix_framework import hookimpl
from helix_framework.codec import BitsAccount, Codec, CodecState, Codes
from helix_jit.lanes import LaneWidth

__version__ = "0.1.0"


@attrs.frozen
class SignScaleParams:
    lane_width: LaneWidth = LaneWidth.F32x16


class SignScaleCodec(Codec):
    name = "signscale"
    version = __version__
    Params = SignScaleParams
    lane_widths = (LaneWidth.F32x16,)

    def fit(self, rows, params, rng):
        return CodecState(meta={"row_dim": int(rows.shape[1])})  # data-free: nothing to learn

    def encode(self, state, rows):
        from helix_example_plugin.kernels import row_abs_mean

        scale = row_abs_mean(rows).astype(np.float16)
        return Codes({"signs": np.packbits(rows >= 0, axis=1), "scale": scale})

    def decode(self, state, codes):
        row_dim = state.meta["row_dim"]
        signs = np.unpackbits(codes.arrays["signs"], axis=1, count=row_dim).astype(np.float32) * 2 - 1
        return signs * codes.arrays["scale"].astype(np.float32)[:, None]

    def bits(self, state, n_rows, row_dim):
        return BitsAccount(n_weights=n_rows * row_dim, code_bits=n_rows * row_dim, overhead_bits=16 * n_rows)


@hookimpl
def helix_register_codecs(register):
    register(SignScaleCodec())
