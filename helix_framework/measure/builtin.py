"""The built-in measurements: rel_l2, cosine and the ICC family.

Each compares the float32 ``original`` rows of one split with their
``reconstruction`` (see `helix_framework.measurement`). Figures are named for
what they compute; every ICC comes with its 95% confidence interval and its
number of targets (``*_n``), because a reliability figure without its
evidence is not one. Anything that cannot be measured raises
`MeasurementError` naming the tensor and split.
"""

from __future__ import annotations

from typing import Callable, ClassVar

import numpy as np

from helix_framework.errors import MeasurementError, NotApplicable
from helix_framework.measure import stats
from helix_framework.measurement import MeasureContext, Measurement

__all__ = [
    "BUILTIN_MEASUREMENTS",
    "MAX_PAIRS",
    "CosineMeasurement",
    "Icc11Measurement",
    "Icc11PairsMeasurement",
    "Icc31Measurement",
    "Icc31PairsMeasurement",
    "OutputRelL2Measurement",
    "RelL2Measurement",
    "TokenAgreementMeasurement",
]

#: Upper bound on the row pairs the ``*_pairs`` measurements rate.
MAX_PAIRS = 4096


def _rows(context: MeasureContext) -> tuple[np.ndarray, np.ndarray]:
    """The context's two arrays as matching 2-D arrays, or MeasurementError."""
    x = np.asarray(context.original)
    y = np.asarray(context.reconstruction)
    if x.shape != y.shape:
        raise MeasurementError(f"shape mismatch: original {x.shape} vs reconstruction {y.shape}")
    if x.ndim != 2:
        raise MeasurementError(f"expected 2-D rows [n_rows, row_dim]; got shape {x.shape}")
    return x, y


def _located(name: str, context: MeasureContext, fn: Callable[[], dict[str, float]]) -> dict[str, float]:
    """Run fn; prefix any MeasurementError with the measurement, tensor and split."""
    try:
        return fn()
    except MeasurementError as exc:
        where = f"tensor {context.tensor!r}, " if context.tensor else ""
        raise MeasurementError(f"{name} ({where}split {context.split!r}): {exc}") from exc


def _icc_figures(prefix: str, result: stats.IccResult) -> dict[str, float]:
    return {
        prefix: result.value,
        f"{prefix}_ci_low": result.ci_low,
        f"{prefix}_ci_high": result.ci_high,
        f"{prefix}_n": float(result.n),
    }


class RelL2Measurement(Measurement):
    """``rel_l2``: pooled relative L2, sqrt(sum (x - x_hat)^2 / sum x^2), float64."""

    name: ClassVar[str] = "rel_l2"
    version: ClassVar[str] = "1.0.0"

    def measure(self, context: MeasureContext) -> dict[str, float]:
        def run() -> dict[str, float]:
            x, y = _rows(context)
            return {"rel_l2": stats.rel_l2(x, y)}

        return _located(self.name, context, run)


class CosineMeasurement(Measurement):
    """``cosine``: per-row cosine of original vs reconstruction; figures
    ``cosine_mean`` and ``cosine_min`` (zero rows as in `stats.row_cosines`)."""

    name: ClassVar[str] = "cosine"
    version: ClassVar[str] = "1.0.0"

    def measure(self, context: MeasureContext) -> dict[str, float]:
        def run() -> dict[str, float]:
            x, y = _rows(context)
            if x.shape[0] == 0:
                raise MeasurementError("no rows to measure")
            cos = stats.row_cosines(x, y)
            return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())}

        return _located(self.name, context, run)


class _ElementIcc(Measurement):
    """ICC with every weight element a target, rated by original and reconstruction."""

    form: ClassVar[str]

    def measure(self, context: MeasureContext) -> dict[str, float]:
        def run() -> dict[str, float]:
            x, y = _rows(context)
            # Chunked: a [n_weights, 2] float64 copy of a large tensor would
            # multiply peak memory.
            return _icc_figures(self.name, stats.icc_paired(x, y, self.form))

        return _located(self.name, context, run)


class Icc31Measurement(_ElementIcc):
    """``icc_3_1``: ICC(3,1) (two-way mixed, consistency) over weight elements.

    Blind to a constant offset between original and reconstruction: pair it
    with ``rel_l2``. Figures ``icc_3_1``, ``icc_3_1_ci_low``,
    ``icc_3_1_ci_high``, ``icc_3_1_n`` (elements).
    """

    name: ClassVar[str] = "icc_3_1"
    version: ClassVar[str] = "1.0.0"
    form: ClassVar[str] = "3,1"


class Icc11Measurement(_ElementIcc):
    """``icc_1_1``: ICC(1,1) (one-way random, absolute agreement) over weight
    elements. Figures ``icc_1_1``, ``icc_1_1_ci_low``, ``icc_1_1_ci_high``,
    ``icc_1_1_n``."""

    name: ClassVar[str] = "icc_1_1"
    version: ClassVar[str] = "1.0.0"
    form: ClassVar[str] = "1,1"


class _PairsIcc(Measurement):
    """ICC over row geometry: targets are seeded random row pairs (i != j),
    rater 1 the cosine of the original rows, rater 2 that of the reconstructed
    rows. min(MAX_PAIRS, n(n-1)/2) distinct pairs, drawn with the context's
    seed, so a rerun measures the same pairs."""

    form: ClassVar[str]

    def measure(self, context: MeasureContext) -> dict[str, float]:
        def run() -> dict[str, float]:
            x, y = _rows(context)
            n = x.shape[0]
            if n < 3:
                # 2 rows give one pair: an ICC needs at least 2 targets.
                raise MeasurementError(f"row-pair ICC needs at least 3 rows; got {n}")
            pairs = stats.draw_pairs(n, min(MAX_PAIRS, n * (n - 1) // 2), context.seed)
            ratings = np.stack([stats.pair_cosines(x, pairs), stats.pair_cosines(y, pairs)], axis=1)
            return _icc_figures(self.name, stats.icc(ratings, self.form))

        return _located(self.name, context, run)


class Icc31PairsMeasurement(_PairsIcc):
    """``icc_3_1_pairs``: ICC(3,1) of pairwise row cosines, original vs
    reconstruction. Figures ``icc_3_1_pairs``, ``..._ci_low``, ``..._ci_high``,
    ``..._n`` (pairs)."""

    name: ClassVar[str] = "icc_3_1_pairs"
    version: ClassVar[str] = "1.0.0"
    form: ClassVar[str] = "3,1"


class Icc11PairsMeasurement(_PairsIcc):
    """``icc_1_1_pairs``: ICC(1,1) of pairwise row cosines (what the origin lab
    mislabelled "ICC_3_1"). Figures ``icc_1_1_pairs``, ``..._ci_low``,
    ``..._ci_high``, ``..._n``."""

    name: ClassVar[str] = "icc_1_1_pairs"
    version: ClassVar[str] = "1.0.0"
    form: ClassVar[str] = "1,1"


class OutputRelL2Measurement(Measurement):
    """``output_rel_l2``: relative error of the layer's output,
    ``||X (W - W_hat)^T|| / ||X W^T||``, with ``X`` the layer's inputs on
    calibration windows held out from the fit (through their Hessian, exactly).
    Only data-aware candidates have those inputs; a tensor without them (outside
    the decoder blocks) gets no figure."""

    name: ClassVar[str] = "output_rel_l2"
    version: ClassVar[str] = "1.0.0"
    needs_stats: ClassVar[bool] = True

    def measure(self, context: MeasureContext) -> dict[str, float]:
        def run() -> dict[str, float]:
            x, y = _rows(context)
            if context.stats is None:
                raise NotApplicable("no layer inputs: the tensor is outside the decoder blocks")
            if context.stats.hessian.shape[0] != x.shape[1]:
                raise MeasurementError(f"layer inputs have {context.stats.hessian.shape[0]} features, rows {x.shape[1]}")
            # trace(D H D^T) as float32 BLAS products, summed in float64: a
            # three-operand einsum loops in C, and float64 products cost twice
            # as much for a figure reported to a few digits.
            h = context.stats.hessian.astype(np.float32)
            w = np.asarray(x, dtype=np.float32)
            d = w - np.asarray(y, dtype=np.float32)
            signal = float(np.sum((w @ h) * w, dtype=np.float64))
            if signal <= 0:
                raise MeasurementError("the layer output on the held-out windows is zero")
            error = float(np.sum((d @ h) * d, dtype=np.float64))
            return {"output_rel_l2": float(np.sqrt(max(error, 0.0) / signal))}

        return _located(self.name, context, run)


class TokenAgreementMeasurement(Measurement):
    """``token_agreement``: a model-level measurement. ``helix calibrate``
    runs it once over the whole compressed model after every tensor is
    written (see `helix_framework.agree`); it has no per-tensor figure."""

    name: ClassVar[str] = "token_agreement"
    version: ClassVar[str] = "1.0.0"
    scope: ClassVar[str] = "model"

    def measure(self, context: MeasureContext) -> dict[str, float]:
        raise MeasurementError(
            "token_agreement compares whole models; it runs once per calibration (helix calibrate) "
            "or with helix agree, not per tensor"
        )


BUILTIN_MEASUREMENTS: tuple[Measurement, ...] = (
    RelL2Measurement(),
    CosineMeasurement(),
    Icc31Measurement(),
    Icc11Measurement(),
    Icc31PairsMeasurement(),
    Icc11PairsMeasurement(),
    OutputRelL2Measurement(),
    TokenAgreementMeasurement(),
)
