"""The measurement contract.

A measurement turns an original tensor and its reconstruction into named
figures. A plugin registers an instance of a `Measurement` subclass through
``helix_register_measurements(register)``.

Class attributes: ``name`` (what configs list under ``measure``),
``version``, ``override``.

``measure(context) -> dict[str, float]`` receives a `MeasureContext` holding
float32 ``original`` and ``reconstruction`` rows of one split (``held_out``,
``calibration`` or ``all``) and a seed for anything random. The host calls
it once per split and labels the figures. A measurement that cannot compute
its figure raises `MeasurementError` (fatal: the run stops, naming the
tensor); it never returns a placeholder. One that does not apply to a tensor
(SQNR of an exact reconstruction, say) raises `NotApplicable(reason)`
instead: the tensor's entry records the reason, the summary counts it, and
the run goes on.

``aggregate`` declares how the run's summary combines a figure over the
codec tensors: ``mean`` (unweighted, the default), ``weighted_mean``
(weighted by each tensor's number of weights), ``min``, ``max`` or
``median``; the summary names each figure after it (``mean_rel_l2``,
``min_sqnr_db``).
In a data-aware candidate the context also carries ``stats``: the layer's
input statistics on calibration windows held out from the fit.
"""

from __future__ import annotations

from typing import ClassVar

#: the values ``Measurement.aggregate`` may take
AGGREGATES = ("mean", "weighted_mean", "min", "max", "median")

import attrs
import numpy as np

from helix_framework.layer_stats import LayerStats


@attrs.frozen
class MeasureContext:
    original: np.ndarray
    reconstruction: np.ndarray
    split: str = "all"
    seed: int = 0
    tensor: str | None = None
    #: Inputs of the layer on held-out calibration windows (data-aware candidates only).
    stats: LayerStats | None = None


class Measurement:
    """Base class of measurements; see the module docstring."""

    name: ClassVar[str]
    version: ClassVar[str] = "0.0.0"
    override: ClassVar[bool] = False
    #: how the summary combines its figures over tensors (one of `AGGREGATES`)
    aggregate: ClassVar[str] = "mean"
    #: "tensor": measured on each tensor's rows; "model": measured once on the
    #: whole compressed model (token agreement), never called per tensor
    scope: ClassVar[str] = "tensor"
    #: the figure needs ``context.stats`` (only data-aware candidates have them).
    needs_stats: ClassVar[bool] = False

    def measure(self, context: MeasureContext) -> dict[str, float]:
        raise NotImplementedError
