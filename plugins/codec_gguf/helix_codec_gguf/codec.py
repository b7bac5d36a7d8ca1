"""The ``gguf`` codec: rows stored as GGUF blocks of one llama.cpp type.

Codes are the block bytes llama.cpp writes (``blocks``: uint8
[n_rows, bytes_per_row]), so `helix export` copies them into a GGUF as they
are. Without statistics the bytes equal llama.cpp's reference quantizer; with
a `LayerStats` the Hessian diagonal divided by the token count (the mean
square input of each column, what llama.cpp's imatrix holds) is the
importance of each column, as llama.cpp's ``quant_weights``.

A row width the type cannot hold falls back as llama.cpp's quantizer does
(`FALLBACK`; then F16 if the width is not a multiple of 32 either); the
type actually used is ``effective_type`` in the state meta.
"""

from __future__ import annotations

from typing import Literal

import attrs
import gguf
import numpy as np

from helix_codec_gguf.quants import BLOCK, TYPE_SIZE, quantize_blocks
from helix_framework.codec import BitsAccount, Codec, CodecState, Codes
from helix_framework.errors import ConfigError
from helix_jit.lanes import LaneWidth

GgufType = Literal["Q8_0", "Q5_0", "Q5_1", "Q4_0", "Q4_1", "IQ4_NL", "Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q2_K"]

#: llama.cpp's replacement for a K-quant on rows that are not a multiple of 256
#: (its quantizer's fallback table, as in llama-cpp-python 0.3.36).
FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


def effective_type(qtype: str, row_dim: int) -> str:
    """The type llama.cpp would write for rows of ``row_dim`` weights."""
    if row_dim % BLOCK[qtype]:
        qtype = FALLBACK.get(qtype, qtype)
    if qtype != "F16" and row_dim % BLOCK[qtype]:
        return "F16"
    return qtype


def _type_size(qtype: str) -> tuple[int, int]:
    return (1, 2) if qtype == "F16" else (BLOCK[qtype], TYPE_SIZE[qtype])


@attrs.frozen
class GgufParams:
    """``type``: the GGUF block type; ``lane_width``: accepted for config
    compatibility (the codec has no kernels, numerics are llama.cpp's)."""

    type: GgufType = "Q4_0"
    lane_width: LaneWidth = attrs.field(default=LaneWidth.F32x16, converter=LaneWidth.parse)


class GgufCodec(Codec):
    """GGUF block formats, bit-exact with llama.cpp's quantizers."""

    name = "gguf"
    version = "0.1.0"
    Params = GgufParams
    takes_stats = True

    def validate(self, params: GgufParams) -> None:
        if params.type not in BLOCK:
            raise ConfigError(f"unknown GGUF type {params.type!r}; one of {', '.join(BLOCK)}", path="$.type")

    def fit(self, rows: np.ndarray, params: GgufParams, rng: np.random.Generator, stats=None) -> CodecState:
        row_dim = int(np.shape(rows)[1])
        eff = effective_type(params.type, row_dim)
        return CodecState(meta={"type": params.type, "effective_type": eff, "row_dim": row_dim})

    def encode(self, state: CodecState, rows: np.ndarray, stats=None) -> Codes:
        eff = state.meta["effective_type"]
        x = np.ascontiguousarray(rows, dtype=np.float32)
        if eff == "F16":
            return Codes({"blocks": x.astype(np.float16).view(np.uint8)})
        weights = None
        if stats is not None:  # the importance of each column: its mean square input
            weights = (np.asarray(stats.diag, dtype=np.float64) / max(stats.n_tokens, 1)).astype(np.float32)
        return Codes({"blocks": quantize_blocks(x, eff, weights)})

    def decode(self, state: CodecState, codes: Codes) -> np.ndarray:
        eff = state.meta["effective_type"]
        blocks = np.ascontiguousarray(codes.arrays["blocks"], dtype=np.uint8)
        n = blocks.shape[0]
        out = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType[eff])
        return np.ascontiguousarray(out, dtype=np.float32).reshape(n, -1)

    def bits(self, state: CodecState, n_rows: int, row_dim: int) -> BitsAccount:
        # Block bytes hold codes and fp16 scales together; the scales are overhead.
        eff = effective_type(state.meta["type"], row_dim)
        bs, size = _type_size(eff)
        total = n_rows * row_dim // bs * size * 8
        code_bits = total if eff == "F16" else n_rows * row_dim // bs * _code_bytes(eff) * 8
        return BitsAccount(n_weights=n_rows * row_dim, code_bits=code_bits, overhead_bits=total - code_bits)


def _code_bytes(qtype: str) -> int:
    """Bytes of a block that are per-weight codes (the rest are scales/mins)."""
    return {"Q8_0": 32, "Q5_0": 20, "Q5_1": 20, "Q4_0": 16, "Q4_1": 16, "IQ4_NL": 16,
            "Q6_K": 192, "Q5_K": 160, "Q4_K": 128, "Q3_K": 96, "Q2_K": 64}[qtype]
