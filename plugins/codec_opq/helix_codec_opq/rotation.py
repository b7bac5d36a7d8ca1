"""The opq rotation: a rotation learned for product quantization.

Non-parametric OPQ (Ge, He, Ke, Sun, "Optimized Product Quantization",
CVPR 2013; FAISS ``OPQMatrix``): alternate

1. train a PQ on the rotated calibration rows X R (k-means per subspace,
   `helix_framework.kmeans`; hot-started from the previous centroids, with
   ``10 x pq_iterations`` Lloyd steps the first time, as FAISS runs 40 then
   4), and reconstruct them: Y;
2. the orthogonal Procrustes step: R = U V^T from the SVD U S V^T = X^T Y,
   the rotation minimising ||X R - Y||.

``iterations`` outer steps. Initialisation: the parametric OPQ solution of
the same paper (eigenvalue allocation: principal directions dealt to the
subspaces so each gets a balanced product of variances), which Ge et al.
use to start the non-parametric one.

The PQ mirrors the codec: ``codec_params.subspaces`` (widths from
``helix_jit.split_widths``) or ``row_dim // codec_params.subspace_dim``
subspaces, and ``codec_params.centroids`` centroids, capped by the data:
at most one per 39 calibration rows (the FAISS threshold, so the rotation
is not fitted to a memorised codebook) unless the codec allows starved
codebooks, then at most one per row.

State: ``matrix``, the rotation R as float32 [d, d] (orthonormal to float32
rounding; 32 d^2 bits, counted by the default `Rotation.overhead_bits`).
``apply`` is X R and ``invert`` is Y R^T, exact up to float32 rounding.
Works with any lane width: the codec's kernels never see R.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import attrs
import numpy as np

import helix_jit
from helix_codec_opq import __version__
from helix_framework.errors import ConfigError
from helix_framework.kmeans import FAISS_MIN_POINTS_PER_CENTROID, kmeans_subspaces
from helix_framework.params import codegen_false, in_range
from helix_framework.rotation import Rotation, RotationState

__all__ = ["OpqParams", "OpqRotation", "opq_subspaces"]


@attrs.frozen
class OpqParams:
    """Outer iterations (rotation updates) and PQ iterations per update.

    ``seed`` is mixed into the pipeline's generator for the PQ training.
    """

    iterations: int = attrs.field(default=20, validator=in_range(1, 1000), metadata=codegen_false())
    pq_iterations: int = attrs.field(default=4, validator=in_range(1, 1000), metadata=codegen_false())
    seed: int = attrs.field(default=0, metadata=codegen_false())


def opq_subspaces(codec_params: Any, row_dim: int, n_rows: int) -> tuple[tuple[int, ...], int]:
    """(subspace widths, centroids) of the PQ that OPQ trains, from the codec's params."""
    if codec_params is None:
        raise ConfigError("the opq rotation needs the codec's params (subspaces or subspace_dim, centroids)",
                          path="$.rotation")
    M = getattr(codec_params, "subspaces", None)
    w = getattr(codec_params, "subspace_dim", None)
    if M is None and w is not None:
        M = max(1, int(row_dim) // int(w))
    if M is None:
        raise ConfigError(
            "the opq rotation learns a rotation for a product quantizer: the codec's params need "
            "subspaces or subspace_dim", path="$.params")
    M = min(int(M), int(row_dim))
    K = int(getattr(codec_params, "centroids", 256))
    if getattr(codec_params, "allow_starved", False):
        cap = n_rows
    else:
        cap = n_rows // FAISS_MIN_POINTS_PER_CENTROID
    return tuple(helix_jit.split_widths(int(row_dim), M)), max(1, min(K, cap))


def _eigen_allocation(x: np.ndarray, widths: tuple[int, ...]) -> np.ndarray:
    """Parametric OPQ init: principal directions dealt to subspaces (balanced log-variance)."""
    xc = x.astype(np.float64) - x.mean(axis=0, dtype=np.float64)
    cov = xc.T @ xc / max(1, x.shape[0])
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(-evals, kind="stable")
    logs = np.zeros(len(widths))
    slots: list[list[int]] = [[] for _ in widths]
    for i in order:
        free = [m for m in range(len(widths)) if len(slots[m]) < widths[m]]
        m = min(free, key=lambda j: (logs[j], j))
        slots[m].append(int(i))
        logs[m] += math.log(max(float(evals[i]), 1e-30))
    cols = [i for s in slots for i in s]
    return evecs[:, cols]


def _procrustes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The orthogonal R minimising ||x R - y||: the polar factor of M = x^T y,
    M (M^T M)^(-1/2), from one symmetric eigendecomposition (about 2.6x
    cheaper than an SVD at d = 1536). An ill-conditioned M (fewer rows than
    dimensions, say) falls back to the SVD, which stays orthogonal there."""
    m = x.T @ y
    evals, v = np.linalg.eigh(m.T @ m)
    if evals[0] <= evals[-1] * 1e-8:  # cond(M) over 1e4: squaring it would cost orthogonality
        u, _, vt = np.linalg.svd(m)
        return u @ vt
    return m @ ((v / np.sqrt(evals)) @ v.T)


class OpqRotation(Rotation):
    """``opq``: learned rotation for product quantization (see the module docstring)."""

    name: ClassVar[str] = "opq"
    version: ClassVar[str] = __version__
    Params: ClassVar[type] = OpqParams
    orthogonal: ClassVar[bool] = True  # layer statistics transform as A^T H A

    def fit(
        self, rows: np.ndarray, params: OpqParams, rng: np.random.Generator, codec_params: Any = None
    ) -> RotationState:
        x = np.asarray(rows)
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"opq fit: expected calibration rows [n, d] with n >= 1; got shape {x.shape}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not np.all(np.isfinite(x)):
            raise ValueError("opq fit: rows contain NaN or infinite values")
        n, d = x.shape
        widths, K = opq_subspaces(codec_params, d, n)
        # own stream: the seed param varies the rotation without touching the codec's draws
        gen = np.random.default_rng([int(params.seed), int(rng.integers(0, 2**63))])
        x64 = x.astype(np.float64)
        R = _eigen_allocation(x, widths)
        cents = None
        history = []
        for it in range(int(params.iterations)):
            xr = np.ascontiguousarray((x64 @ R).astype(np.float32))
            steps = params.pq_iterations * (10 if it == 0 else 1)
            res = kmeans_subspaces(xr, widths, K, gen, max_iter=steps, tol=0.0, init=cents)
            cents = list(res.centroids)
            codes = helix_jit.pq_assign(xr, cents, "F64x8")
            y = helix_jit.pq_decode([codes], [cents], "F64x8").astype(np.float64)
            history.append(float(((xr - y) ** 2).sum() / max(float((xr.astype(np.float64) ** 2).sum()), 1e-300)))
            R = _procrustes(x64, y)
        R32 = np.ascontiguousarray(R.astype(np.float32))  # R is a float64 polar factor already
        meta = {
            "row_dim": int(d),
            "widths": list(widths),
            "centroids": int(K),
            "k_eff": int(res.k_eff),
            "iterations": int(params.iterations),
            "pq_iterations": int(params.pq_iterations),
            "calibration_rows": int(n),
            "init": "eigenvalue_allocation",
            "pq_rel_error_history": [round(h, 6) for h in history],
        }
        return RotationState(arrays={"matrix": R32}, meta=meta)

    def apply(self, state: RotationState, rows: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.rows_of(state, rows) @ np.asarray(state.arrays["matrix"], np.float32))

    def invert(self, state: RotationState, rows: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.rows_of(state, rows) @ np.asarray(state.arrays["matrix"], np.float32).T)
