"""Built-in measurements and the statistics behind them.

`BUILTIN_MEASUREMENTS` holds one instance of each built-in measurement
(``rel_l2``, ``cosine``, ``icc_3_1``, ``icc_1_1``, ``icc_3_1_pairs``,
``icc_1_1_pairs``); the host registers them as a default plugin. The
statistics themselves live in `helix_framework.measure.stats`.

Importing this package costs numpy and attrs only; scipy is imported when an
ICC confidence interval is first computed.
"""

from __future__ import annotations

from helix_framework.measure.builtin import (
    BUILTIN_MEASUREMENTS,
    CosineMeasurement,
    Icc11Measurement,
    Icc11PairsMeasurement,
    Icc31Measurement,
    Icc31PairsMeasurement,
    RelL2Measurement,
)

__all__ = [
    "BUILTIN_MEASUREMENTS",
    "CosineMeasurement",
    "Icc11Measurement",
    "Icc11PairsMeasurement",
    "Icc31Measurement",
    "Icc31PairsMeasurement",
    "RelL2Measurement",
]
