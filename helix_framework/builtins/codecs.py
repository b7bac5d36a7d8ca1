"""Built-in codecs: ``passthrough`` (exact copy) and ``rtn`` (round to nearest).

``passthrough`` is the regression anchor: decode returns the input bit for
bit, at 32 bits per weight. ``rtn`` is the baseline every other codec is
compared with at equal bits: scalar round-to-nearest with one float16 scale
per row or per group of ``group_size`` weights.

Both run in numpy; neither emits kernels, so ``lane_width`` is accepted (so
a config may set it like any codec's) but changes nothing numerically.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import attrs
import numpy as np

from helix_framework.codec import BitsAccount, Codec, CodecState, Codes
from helix_framework.params import ParamError
from helix_jit.lanes import LaneWidth

__all__ = ["PassthroughCodec", "PassthroughParams", "RtnCodec", "RtnParams", "RTN_BITS"]

#: Bit widths ``rtn`` accepts.
RTN_BITS: tuple[int, ...] = (8, 4, 3, 2)

_F16_MAX = float(np.finfo(np.float16).max)


def _lane_width_field(codegen: bool) -> Any:
    return attrs.field(
        default=LaneWidth.F32x16,
        converter=LaneWidth.parse,
        metadata={} if codegen else {"codegen": False},
    )


def _rows_f32(rows: np.ndarray) -> np.ndarray:
    arr = np.asarray(rows)
    if arr.ndim != 2:
        raise ValueError(f"expected 2-D rows [n_rows, row_dim]; got shape {arr.shape}")
    return arr.astype(np.float32, copy=False)


@attrs.frozen
class PassthroughParams:
    """Params of ``passthrough``. ``lane_width`` only exists so configs may
    set it; passthrough generates no code (hence ``codegen: False``)."""

    lane_width: LaneWidth = _lane_width_field(codegen=False)


class PassthroughCodec(Codec):
    """``passthrough``: the rows stored as float32, decoded bit for bit.

    Code bits are the honest 32 per weight of the stored float32 copy.
    """

    name: ClassVar[str] = "passthrough"
    version: ClassVar[str] = "1.0.0"
    Params: ClassVar[type] = PassthroughParams

    def fit(self, rows: np.ndarray, params: Any, rng: np.random.Generator) -> CodecState:
        return CodecState(meta={"row_dim": int(_rows_f32(rows).shape[1])})

    def encode(self, state: CodecState, rows: np.ndarray) -> Codes:
        # A private copy: the codes must not alias the caller's (maybe mmapped) rows.
        return Codes(arrays={"rows": np.array(_rows_f32(rows), dtype=np.float32, copy=True, order="C")})

    def decode(self, state: CodecState, codes: Codes) -> np.ndarray:
        return np.array(codes.arrays["rows"], dtype=np.float32, copy=True)

    def bits(self, state: CodecState, n_rows: int, row_dim: int) -> BitsAccount:
        n = int(n_rows) * int(row_dim)
        return BitsAccount(n_weights=n, code_bits=32 * n, overhead_bits=0)


def _check_bits(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value not in RTN_BITS:
        raise ParamError("bits", f"must be one of {', '.join(map(str, RTN_BITS))}, got {value!r}")


def _check_group_size(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ParamError("group_size", f"must be a positive integer or null (one group per row), got {value!r}")


def _check_symmetric(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, bool):
        raise ParamError("symmetric", f"must be true or false, got {value!r}")


@attrs.frozen
class RtnParams:
    """Params of ``rtn``.

    - ``bits``: 8, 4, 3 or 2 bits per weight code.
    - ``group_size``: weights per scale; ``None`` = one group per row. A row
      whose width is not a multiple keeps every column: its last group is
      shorter.
    - ``symmetric``: True: scale = max|w| / (2^(b-1) - 1), codes in
      [-(2^(b-1) - 1), 2^(b-1) - 1] (int8 storage), 16 overhead bits per
      group. False: w ~ min + q * scale with scale = (max - min) / (2^b - 1),
      codes in [0, 2^b - 1] (uint8 storage), 32 overhead bits per group.
    - ``lane_width``: accepted for config uniformity.

    Every field would change the machine code of an RTN kernel, so none is
    marked ``codegen: False``.
    """

    bits: int = attrs.field(default=8, validator=_check_bits)
    group_size: int | None = attrs.field(default=None, validator=_check_group_size)
    symmetric: bool = attrs.field(default=True, validator=_check_symmetric)
    lane_width: LaneWidth = _lane_width_field(codegen=True)


class RtnCodec(Codec):
    """``rtn``: round-to-nearest scalar quantization with float16 scales.

    Data-free: ``fit`` only records the params and the row width; scales
    (and, asymmetric, the float16 group minimum) are computed per encoded
    row group and stored with the codes. Quantization divides by the
    float16-rounded scale and decode multiplies by it, so the stored
    artifact (codes + float16 scales) reproduces ``decode`` exactly.
    Codes are stored one per byte (int8 symmetric, uint8 asymmetric); the
    bits account counts the real bit width, not the byte.

    Codes: ``q`` [n_rows, row_dim], ``scales`` [n_rows, n_groups] float16,
    and ``zeros`` [n_rows, n_groups] float16 (the group minimum) when
    asymmetric. Magnitudes beyond the float16 range (65504) saturate, and a
    group whose scale is below float16's smallest subnormal (about 6e-8, so
    max|w| under about 4e-6 at int8) decodes to zero (symmetric) or to its
    float16 minimum (asymmetric): the limit of float16 scales, not a bug.
    """

    name: ClassVar[str] = "rtn"
    version: ClassVar[str] = "1.0.0"
    Params: ClassVar[type] = RtnParams

    def fit(self, rows: np.ndarray, params: Any, rng: np.random.Generator) -> CodecState:
        row_dim = int(_rows_f32(rows).shape[1])
        return CodecState(
            meta={
                "bits": int(params.bits),
                "group_size": None if params.group_size is None else int(params.group_size),
                "symmetric": bool(params.symmetric),
                "row_dim": row_dim,
            }
        )

    @staticmethod
    def _group(meta: dict[str, Any], row_dim: int) -> tuple[int, int]:
        """(group size, groups per row) for a row of ``row_dim`` weights."""
        g = meta["group_size"] or row_dim
        return g, max(1, math.ceil(row_dim / g)) if row_dim else 0

    def encode(self, state: CodecState, rows: np.ndarray) -> Codes:
        x = _rows_f32(rows)
        meta = dict(state.meta)
        n, d = x.shape
        if d != meta["row_dim"]:
            raise ValueError(f"rtn state was fitted on rows of width {meta['row_dim']}; got width {d}")
        if not np.all(np.isfinite(x)):
            raise ValueError("rtn cannot quantize non-finite weights (NaN or inf)")
        g, n_groups = self._group(meta, d)
        # Pad the last group by repeating the row's last column: that leaves
        # its max|w|, min and max unchanged, and the padding is cut off below.
        pad = n_groups * g - d
        xp = np.pad(x, ((0, 0), (0, pad)), mode="edge") if pad else x
        groups = xp.reshape(n, n_groups, g)
        bits = meta["bits"]
        with np.errstate(divide="ignore", invalid="ignore"):
            if meta["symmetric"]:
                qmax = 2 ** (bits - 1) - 1
                scale = np.abs(groups).max(axis=2) / np.float32(qmax)
                s16 = np.minimum(scale, _F16_MAX).astype(np.float16)
                s = s16.astype(np.float32)[:, :, None]
                q = np.where(s > 0, np.rint(groups / s), 0.0)
                q = np.clip(q, -qmax, qmax).astype(np.int8)
                arrays = {"scales": s16}
            else:
                qmax = 2**bits - 1
                lo16 = np.clip(groups.min(axis=2), -_F16_MAX, _F16_MAX).astype(np.float16)
                lo = lo16.astype(np.float32)
                # Scale from the float16 minimum actually stored, so the top
                # code still reaches the group's maximum.
                scale = (groups.max(axis=2) - lo) / np.float32(qmax)
                s16 = np.clip(scale, 0.0, _F16_MAX).astype(np.float16)
                s = s16.astype(np.float32)[:, :, None]
                q = np.where(s > 0, np.rint((groups - lo[:, :, None]) / s), 0.0)
                q = np.clip(q, 0, qmax).astype(np.uint8)
                arrays = {"scales": s16, "zeros": lo16}
        arrays["q"] = np.ascontiguousarray(q.reshape(n, n_groups * g)[:, :d])
        return Codes(arrays=arrays)

    def decode(self, state: CodecState, codes: Codes) -> np.ndarray:
        q = np.asarray(codes.arrays["q"])
        n, d = q.shape
        g, n_groups = self._group(dict(state.meta), d)
        s = np.repeat(np.asarray(codes.arrays["scales"]).astype(np.float32), g, axis=1)[:, :d]
        out = q.astype(np.float32) * s
        if not state.meta["symmetric"]:
            out += np.repeat(np.asarray(codes.arrays["zeros"]).astype(np.float32), g, axis=1)[:, :d]
        return out

    def bits(self, state: CodecState, n_rows: int, row_dim: int) -> BitsAccount:
        meta = dict(state.meta)
        n_rows, row_dim = int(n_rows), int(row_dim)
        _, n_groups = self._group(meta, row_dim)
        per_group = 16 if meta["symmetric"] else 32
        return BitsAccount(
            n_weights=n_rows * row_dim,
            code_bits=meta["bits"] * n_rows * row_dim,
            overhead_bits=per_group * n_groups * n_rows,
        )
