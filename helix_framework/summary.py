"""Per-tensor figures combined into a run's figures, the one way calibrate and
sweeps both report them.

Each figure is combined over the tensors that have it (a measurement may not
apply to some; see `helix_framework.errors.NotApplicable`) as its measurement
declared in ``Measurement.aggregate``; tensors record that choice under
``metrics["aggregate"]`` when it is not the plain mean.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["aggregate_figures", "not_applicable_counts"]

#: per-figure companions that are not figures to combine
_COMPANIONS = ("_n", "_ci_low", "_ci_high")


def aggregate_figures(
    metrics: Sequence[Mapping[str, Any]], weights: Sequence[float], split: str
) -> dict[str, tuple[str, float]]:
    """``figure -> (how, value)`` for one split label over the tensors' ``metrics``;
    ``weights`` (each tensor's number of weights) serve ``weighted_mean``."""
    keys = sorted({k for m in metrics for k in m[split] if not k.endswith(_COMPANIONS)})
    out: dict[str, tuple[str, float]] = {}
    for key in keys:
        pairs = [(m[split][key], w) for m, w in zip(metrics, weights) if key in m[split]]
        values = np.array([np.nan if v is None else v for v, _ in pairs], dtype=np.float64)
        how = next((m["aggregate"][key] for m in metrics if key in m.get("aggregate", {})), "mean")
        if how == "weighted_mean":
            value = np.average(values, weights=np.array([w for _, w in pairs], dtype=np.float64))
        else:
            value = {"mean": np.mean, "min": np.min, "max": np.max, "median": np.median}[how](values)
        out[key] = (how, float(value))
    return out


def not_applicable_counts(metrics: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """measurement -> number of tensors it did not apply to."""
    counts: dict[str, int] = {}
    for m in metrics:
        for name in m.get("not_applicable", {}):
            counts[name] = counts.get(name, 0) + 1
    return counts
