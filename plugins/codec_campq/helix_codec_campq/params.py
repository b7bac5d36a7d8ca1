"""The params schema of the campq codec (the config's ``params`` mapping)."""

from __future__ import annotations

from typing import Literal

import attrs

from helix_framework.errors import ConfigError
from helix_framework.params import codegen_false, in_range
from helix_jit.lanes import LaneWidth


@attrs.frozen
class Residual:
    """Residual stages: each encodes what the stages before it left over."""

    depth: int = attrs.field(default=0, validator=in_range(0, 8))
    centroids: int = attrs.field(default=256, validator=in_range(2, 65536))


@attrs.frozen
class CampqParams:
    """Product quantization of weight rows.

    Give either ``subspaces`` (M subspaces; uneven widths when the row width
    is not divisible) or ``subspace_dim`` (a fixed number of weights per
    code), not both.
    """

    subspaces: int | None = attrs.field(default=None, validator=in_range(1))
    subspace_dim: int | None = attrs.field(default=None, validator=in_range(1))
    centroids: int = attrs.field(default=256, validator=in_range(2, 65536))
    codebook: Literal["per_subspace", "shared"] = "per_subspace"
    row_scale: bool = False
    residual: Residual = Residual()
    lane_width: LaneWidth = LaneWidth.F32x16
    distance: Literal["adc_u8", "adc_i8"] = "adc_u8"
    allow_starved: bool = attrs.field(default=False, metadata=codegen_false())
    max_iter: int = attrs.field(default=25, validator=in_range(1, 10000), metadata=codegen_false())
    tol: float = attrs.field(default=1e-4, validator=in_range(0.0), metadata=codegen_false())

    def check(self) -> None:
        if (self.subspaces is None) == (self.subspace_dim is None):
            raise ConfigError(
                "give exactly one of subspaces (number of subspaces) or subspace_dim (weights per code)",
                path="$.subspaces" if self.subspaces is not None else "$",
            )
