"""Built-in rotation ``identity``: rows pass through unchanged."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from helix_framework.layer_stats import LayerStats
from helix_framework.rotation import Rotation, RotationState

__all__ = ["IdentityRotation"]


class IdentityRotation(Rotation):
    """``identity``: apply and invert return the rows as float32 (no copy
    when they already are: codecs never modify their input).

    Stores no arrays, so it costs no bits per weight.
    """

    name: ClassVar[str] = "identity"
    version: ClassVar[str] = "1.0.0"
    orthogonal: ClassVar[bool] = True

    def fit(
        self, rows: np.ndarray, params: Any, rng: np.random.Generator, codec_params: Any = None
    ) -> RotationState:
        return RotationState(meta={"row_dim": int(np.shape(rows)[-1])})

    def apply(self, state: RotationState, rows: np.ndarray) -> np.ndarray:
        return np.asarray(rows, dtype=np.float32)

    def invert(self, state: RotationState, rows: np.ndarray) -> np.ndarray:
        return np.asarray(rows, dtype=np.float32)

    def transform_stats(self, state: RotationState, stats: LayerStats) -> LayerStats:
        """The statistics unchanged (the inputs are not rotated)."""
        return stats
