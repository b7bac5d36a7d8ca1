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

With ``calibration: {target: reference}`` the statistics also carry
``drift = X^T (X_ref - X)``, where ``X_ref`` are the same tokens' inputs to
the same layer in the uncompressed model. The layer is then fitted to
reproduce the uncompressed model's output ``X_ref W^T`` from the inputs it
really sees (GPTQ's objective made asymmetric, as GPTAQ): the minimum of
``||X W_hat^T - X_ref W^T||`` over ``W_hat`` is at
``W' = W (H + drift)^T H^-1``, and
``||X W_hat^T - X_ref W^T||^2 = ||X (W_hat - W')^T||^2 + const``, so fitting
``W'`` with the Hessian ``H`` (every codec, rotation and error feedback
unchanged) minimises the asymmetric error. `LayerStats.reference_target`
computes ``W'``.
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
    - ``drift``: float32 or float64 [in, in], ``sum_t x_t^T (x_ref_t - x_t)`` (``x_ref``:
      the same tokens' inputs in the uncompressed model), or None; only with
      ``target: reference``, and consumed by the host (`reference_target`)
      before a rotation or codec sees the rows. Summed (in float64) as the
      difference, not as ``X^T X_ref - H``: the two are close, and their
      difference would lose most of its digits.
    """

    hessian: np.ndarray = attrs.field(eq=False, repr=False)
    n_tokens: int
    drift: np.ndarray | None = attrs.field(default=None, eq=False, repr=False)

    @property
    def diag(self) -> np.ndarray:
        """Per-input-feature sum of squares (the importance of each column)."""
        return np.diagonal(self.hessian)

    def output_error(self, delta: np.ndarray) -> float:
        """``||X delta^T||_F^2`` for a weight error ``delta`` [out, in]."""
        d = np.asarray(delta, dtype=np.float64)
        return float(np.einsum("ij,jk,ik->", d, self.hessian, d))

    def reference_target(self, rows: np.ndarray, damp: float) -> np.ndarray:
        """The rows ``W'`` whose output on this layer's inputs is closest to
        the uncompressed model's (see the module docstring):
        ``W' = W + W drift^T (H + damp mean(diag H) I)^-1``, float32.
        Without ``drift`` the rows are returned as they are. Damping keeps
        the solve well posed (dead inputs get a unit diagonal, and it grows
        tenfold until the factorisation succeeds), and it shrinks the
        correction, never the weights: with ``X_ref = X``, ``W' = W``.

        The factorisation is float32 (one [in, in] float32 copy: at 5,632
        inputs float64 copies beside the Hessian and drift were the peak of
        a 1 B model's calibration), refined once against the float64
        Hessian, which restores float64's accuracy for a well-damped system;
        the rows are solved a few hundred at a time for the same reason.
        """
        if self.drift is None:
            return rows
        from scipy.linalg import cho_factor, cho_solve

        w = np.asarray(rows, dtype=np.float32)
        h = np.asarray(self.hessian, dtype=np.float64)
        diag = np.diagonal(h)
        dead = diag <= 0  # an input never seen: its row and column are zero
        mean = float(np.mean(np.where(dead, 1.0, diag))) if diag.size else 1.0
        d = max(float(damp), 1e-6)
        for _ in range(13):
            shift = dead + d * mean  # (H + shift I) is the damped system
            a = h.astype(np.float32)
            a[np.diag_indices_from(a)] += shift.astype(np.float32)
            try:
                factor = cho_factor(a, lower=True, overwrite_a=True, check_finite=False)
            except np.linalg.LinAlgError:
                d *= 10.0
                continue
            out = np.empty_like(w)
            for r0 in range(0, w.shape[0], 256):
                rhs = (self.drift @ w[r0:r0 + 256].astype(self.drift.dtype).T).astype(np.float64)  # [in, rows]
                chunk = w[r0:r0 + 256].astype(np.float64)
                z = cho_solve(factor, rhs.astype(np.float32), check_finite=False).astype(np.float64)
                rhs -= h @ z
                rhs -= shift[:, None] * z
                z += cho_solve(factor, rhs.astype(np.float32), check_finite=False)
                out[r0:r0 + 256] = chunk + z.T
            if np.all(np.isfinite(out)):
                return out
            d *= 10.0
        raise ValueError(f"the Hessian stays singular even damped by {d / 10:g} of its mean diagonal")
