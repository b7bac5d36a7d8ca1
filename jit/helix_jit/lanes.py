"""Lane widths: the vector shape of emitted IR, and part of a codec's numerics.

A lane width names an LLVM vector type. LLVM lowers it to whatever the CPU
has, so every width runs on every x86-64 machine, only at different speed.
The width also fixes how centroids and tables are stored and accumulated:

- F32x16: ``<16 x float>``, float32 storage and accumulation.
- F64x8: ``<8 x double>``, distances computed in float64.
- U8x64: ``<64 x i8>``, uint8 storage (tables, codes) with integer accumulation.
- BF16x32: ``<32 x bfloat>`` storage (held as i16), float32 accumulation.

This module must stay import-light (no llvmlite): the host imports it to
validate configs before anything compiles.
"""

from __future__ import annotations

import enum


class LaneWidth(str, enum.Enum):
    """A vector shape of the emitted IR; the value is the name used in YAML."""

    F32x16 = "F32x16"
    F64x8 = "F64x8"
    U8x64 = "U8x64"
    BF16x32 = "BF16x32"

    @property
    def lanes(self) -> int:
        return _LANES[self]

    @property
    def element(self) -> str:
        """Element type name: float, double, i8 or bfloat."""
        return _ELEMENT[self]

    @classmethod
    def parse(cls, value: str | LaneWidth) -> LaneWidth:
        if isinstance(value, cls):
            return value
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(m.value for m in cls)
            raise ValueError(f"unknown lane width {value!r}; expected one of {names}") from None


_LANES = {LaneWidth.F32x16: 16, LaneWidth.F64x8: 8, LaneWidth.U8x64: 64, LaneWidth.BF16x32: 32}
_ELEMENT = {LaneWidth.F32x16: "float", LaneWidth.F64x8: "double", LaneWidth.U8x64: "i8", LaneWidth.BF16x32: "bfloat"}

ALL_LANE_WIDTHS: tuple[LaneWidth, ...] = tuple(LaneWidth)
