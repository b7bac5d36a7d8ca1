"""The params schema of the campq codec (the config's ``params`` mapping)."""

from __future__ import annotations

from typing import Literal

import attrs

from helix_framework.errors import ConfigError
from helix_framework.params import codegen_false, in_range
from helix_jit.lanes import LaneWidth


@attrs.frozen
class Residual:
    """Residual stages: each encodes what the stages before it left over.

    ``depth`` stages after the base one, each with ``centroids`` centroids,
    trained on the residual of the calibration rows only.

    ``beam``: partial encodings kept per sub-vector after every stage (beam
    search, as FAISS's ResidualQuantizer; 1 = greedy, each stage takes the
    nearest centroid). With a beam above 1 the stages also train on the
    residuals of every kept encoding, as FAISS does. Changes which codes are
    chosen, never the format.
    """

    depth: int = attrs.field(default=0, validator=in_range(0, 8))
    centroids: int = attrs.field(default=256, validator=in_range(2, 65536))
    beam: int = attrs.field(default=1, validator=in_range(1, 64), metadata=codegen_false())


@attrs.frozen
class CampqParams:
    """Product quantization of weight rows.

    Give either ``subspaces`` (M subspaces; uneven widths when the row width
    is not divisible, see ``helix_jit.split_widths``) or ``subspace_dim`` (a
    fixed number of weights per code; with ``per_subspace`` codebooks the
    last subspace is narrower when the width is not divisible), not both;
    with neither, ``subspace_dim`` is 8 (vectors of 8 weights, the layout of
    the shipped candidates). No column is ever dropped.

    - ``centroids``: K of the base stage (2..65,536); codes are uint8 when
      the trained count is <= 256, else uint16.
    - ``codebook``: ``per_subspace`` (one codebook per subspace, trained on
      the n calibration rows) or ``shared`` (one codebook for all subspaces,
      trained on n x M sub-vectors; needs equal widths).
    - ``row_scale``: divide each row by its float16 RMS before quantizing
      (16 bits per row, counted).
    - ``residual``: extra stages, see `Residual`.
    - ``lane_width``: numerics of the encode/decode kernels (BF16x32 rounds
      the codebooks to bfloat16, U8x64 assigns on a uint8 grid).
    - ``allow_starved``: train even with fewer than 39 vectors per centroid
      (the FAISS threshold); the tensor is flagged ``starved``.
    - ``max_iter``, ``tol``: Lloyd iterations and the relative-inertia
      tolerance of k-means.
    - ``distance``: the ADC table type used by matvec kernels (not by
      encode/decode).
    """

    subspaces: int | None = attrs.field(default=None, validator=in_range(1))
    subspace_dim: int | None = attrs.field(default=None, validator=in_range(1))
    centroids: int = attrs.field(default=256, validator=in_range(2, 65536))
    codebook: Literal["per_subspace", "shared"] = "per_subspace"
    row_scale: bool = False
    residual: Residual = Residual()
    lane_width: LaneWidth = attrs.field(default=LaneWidth.F32x16, converter=LaneWidth.parse)
    distance: Literal["adc_u8", "adc_i8"] = "adc_u8"
    allow_starved: bool = attrs.field(default=False, metadata=codegen_false())
    max_iter: int = attrs.field(default=25, validator=in_range(1, 10000), metadata=codegen_false())
    tol: float = attrs.field(default=1e-4, validator=in_range(0.0), metadata=codegen_false())

    def check(self) -> None:
        """Cross-field checks that need no row width (ConfigError with the key)."""
        if self.subspaces is not None and self.subspace_dim is not None:
            raise ConfigError(
                "give one of subspaces (number of subspaces) or subspace_dim (weights per code), not both",
                path="$.subspaces",
            )
