"""The awq rotation: per-input-channel scales from activation magnitudes.

AWQ (Lin et al., "Activation-aware Weight Quantization", 2023): a few input
channels carry large activations, and the weights that multiply them matter
most. Scaling column ``j`` of the weights up by ``s_j`` (and the input down
by it, so the layer computes the same thing) gives those weights more of the
codec's resolution. Here ``s_j = m_j^alpha`` with ``m_j`` the RMS of input
``j`` over the calibration tokens (``sqrt(H_jj / n_tokens)``), normalised so
that ``sqrt(max(s) min(s)) = 1``, and ``alpha`` chosen from ``grid`` values
in [0, 1] (0 = no scaling) to minimise the layer-output error
``trace(dW H dW^T)`` of the candidate's own codec: for every alpha the codec
is fitted, encodes and decodes the scaled rows it was given, with the same
seed, and the scaling is undone before the error is taken. The search runs
the codec without error feedback.

The map is ``apply(W) = W diag(s)``, ``invert(Y) = Y diag(1/s)`` (exact up to
float32 rounding); the codec's inputs become ``X diag(1/s)``, so
``transform_stats`` gives ``diag(1/s) H diag(1/s)``. Inputs that never fire
(zero Hessian diagonal) get the median magnitude, so their weights are not
blown up or crushed.

State: ``scales`` float32 [d] (32 bits per column, counted); meta records
alpha and the error of every alpha tried. Needs calibration statistics and
the codec: a data-free candidate gets a `ConfigError`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import numpy as np

from helix_framework.errors import ConfigError
from helix_framework.layer_stats import LayerStats
from helix_framework.params import codegen_false, in_range
from helix_framework.rotation import Rotation, RotationState
from helix_rotation_awq import __version__

__all__ = ["AwqParams", "AwqRotation", "channel_scales"]


@attrs.frozen
class AwqParams:
    """``grid``: how many alphas, evenly spaced over [0, 1], are tried."""

    grid: int = attrs.field(default=11, validator=in_range(2, 101), metadata=codegen_false())


def channel_scales(stats: LayerStats, alpha: float) -> np.ndarray:
    """float32 scales ``m^alpha`` (m = input RMS), normalised to geometric-mean-of-extremes 1."""
    m = np.sqrt(np.maximum(np.asarray(stats.diag, dtype=np.float64), 0.0) / max(int(stats.n_tokens), 1))
    live = m > 0
    if not live.any():
        return np.ones(m.shape, dtype=np.float32)
    m = np.where(live, m, np.median(m[live]))
    s = m ** float(alpha)
    s /= np.sqrt(s.max() * s.min())
    return s.astype(np.float32)


class AwqRotation(Rotation):
    """``awq``: activation-aware column scaling (see the module docstring)."""

    name: ClassVar[str] = "awq"
    version: ClassVar[str] = __version__
    Params: ClassVar[type] = AwqParams
    takes_stats: ClassVar[bool] = True
    takes_codec: ClassVar[bool] = True

    def fit(
        self,
        rows: np.ndarray,
        params: AwqParams,
        rng: np.random.Generator,
        codec_params: Any = None,
        stats: LayerStats | None = None,
        codec: Any = None,
    ) -> RotationState:
        if stats is None:
            raise ConfigError("the awq rotation needs layer statistics: give the candidate calibration text",
                              path="$.rotation")
        if codec is None or codec_params is None:
            raise ConfigError("the awq rotation searches its exponent with the candidate's codec, "
                              "which the host did not pass", path="$.rotation")
        w = np.ascontiguousarray(rows, dtype=np.float32)
        if w.ndim != 2 or w.shape[1] != stats.hessian.shape[0]:
            raise ValueError(f"awq fit: rows of shape {w.shape} do not match statistics of width {stats.hessian.shape[0]}")
        seed = int(rng.integers(0, 2**63))  # every alpha fits the codec with the same draws
        alphas = np.linspace(0.0, 1.0, int(params.grid))
        errors = []
        for alpha in alphas:
            state = self._state(channel_scales(stats, alpha), alpha)
            y = self._round_trip(codec, codec_params, state, w, stats, seed)
            errors.append(stats.output_error(w.astype(np.float64) - y))
        best = int(np.argmin(errors))
        state = self._state(channel_scales(stats, alphas[best]), alphas[best])
        meta = {**state.meta, "grid": [round(float(a), 6) for a in alphas], "output_errors": [float(e) for e in errors]}
        return RotationState(arrays=state.arrays, meta=meta)

    @staticmethod
    def _state(scales: np.ndarray, alpha: float) -> RotationState:
        return RotationState(arrays={"scales": scales}, meta={"row_dim": int(scales.size), "alpha": float(alpha)})

    def _round_trip(self, codec, codec_params, state, w, stats, seed) -> np.ndarray:
        """The codec's reconstruction of ``w`` under this scaling, back in the original basis."""
        ws = self.apply(state, w)
        kwargs = {"stats": self.transform_stats(state, stats)} if codec.takes_stats else {}
        cstate = codec.fit(ws, codec_params, np.random.default_rng(seed), **kwargs)
        return self.invert(state, codec.decode(cstate, codec.encode(cstate, ws, **kwargs)))

    def apply(self, state: RotationState, rows: np.ndarray) -> np.ndarray:
        return self.rows_of(state, rows) * np.asarray(state.arrays["scales"], dtype=np.float32)

    def invert(self, state: RotationState, rows: np.ndarray) -> np.ndarray:
        return self.rows_of(state, rows) / np.asarray(state.arrays["scales"], dtype=np.float32)

    def transform_stats(self, state: RotationState, stats: LayerStats) -> LayerStats:
        """``diag(1/s) H diag(1/s)``: the statistics of the inputs ``X diag(1/s)``."""
        inv = 1.0 / np.asarray(state.arrays["scales"], dtype=np.float64)
        h = np.asarray(stats.hessian, dtype=np.float64) * inv[:, None] * inv[None, :]
        return LayerStats(hessian=h, n_tokens=stats.n_tokens)
