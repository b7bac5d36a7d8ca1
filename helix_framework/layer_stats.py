"""Statistics of one linear layer's inputs, collected from calibration text.

A data-aware candidate (one with a ``calibration:`` section) runs the model
block by block over calibration windows; for every linear layer it gathers
the inputs ``X`` [tokens, in_features] and hands codecs and rotations a
`LayerStats`. Weight rows are ``W`` [out_features, in_features], so the
Hessian is over the row dimension: the layer-output error of a
reconstruction ``W_hat`` is ``trace((W - W_hat) H (W - W_hat)^T)``, which is
``||X (W - W_hat)^T||_F^2`` exactly.

After a rotation ``rows -> rows @ A`` the codec's inputs are ``X A^-T``, so it
must see ``A^-1 H A^-T``: each rotation says how, in
``Rotation.transform_stats``.
"""

from __future__ import annotations

import attrs
import numpy as np

__all__ = ["LayerStats"]


@attrs.frozen
class LayerStats:
    """Second moments of a layer's inputs.

    - ``hessian``: float64 [in_features, in_features], ``sum_t x_t^T x_t`` over
      the calibration tokens (not divided by their count; not damped).
    - ``n_tokens``: how many input rows were summed.
    """

    hessian: np.ndarray = attrs.field(eq=False, repr=False)
    n_tokens: int

    @property
    def diag(self) -> np.ndarray:
        """Per-input-feature sum of squares (the importance of each column)."""
        return np.diagonal(self.hessian)

    def output_error(self, delta: np.ndarray) -> float:
        """``||X delta^T||_F^2`` for a weight error ``delta`` [out, in]."""
        d = np.asarray(delta, dtype=np.float64)
        return float(np.einsum("ij,jk,ik->", d, self.hessian, d))
