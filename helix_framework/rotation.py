"""The rotation contract.

A rotation is an invertible linear map applied to weight rows before a codec
fits them, and undone after decoding. A plugin registers an instance of a
`Rotation` subclass through ``helix_register_rotations(register)``.

Class attributes: ``name`` (the config's ``rotation.kind``), ``version``,
``Params`` (frozen attrs class: the other keys of the ``rotation`` mapping),
``override``.

Methods:

- ``fit(rows, params, rng, codec_params=None) -> RotationState``: learn
  from calibration rows (a data-free rotation ignores them but may use their
  width). ``codec_params`` are the candidate codec's params, for rotations
  that adapt to the codec (OPQ reads the subspaces and centroids).
- ``apply(state, rows)`` and ``invert(state, rows)``: float32 rows in and out;
  ``invert(apply(x)) == x`` up to float32 rounding, which each rotation's
  tests must show (`helix_framework.testing.check_rotation_invertible`).
- ``overhead_bits(state)``: bits the state costs in an artifact (counted in
  bits per weight). The default counts every array's bytes.
- ``transform_stats(state, stats) -> LayerStats``: the layer statistics of
  the rotated inputs. With ``apply(rows) = rows @ A`` the layer computes
  ``(X A^-T)(W A)^T``, so the Hessian becomes ``A^-1 H A^-T``. Rotations that
  set ``orthogonal = True`` get ``A^T H A`` by default, in float64 with
  ``A = apply(I)`` (one d x d apply and two d^3 products); others
  must override it to be used in a data-aware candidate.
- ``takes_stats = True``: ``fit`` also receives ``stats=`` (the layer
  statistics in the original basis, or None when the candidate is data-free).
- ``takes_codec = True``: ``fit`` also receives ``codec=``, the candidate's
  codec instance (with ``codec_params`` its params), for rotations that
  search their own parameters by running the codec (awq).
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import attrs
import numpy as np

from helix_framework.codec import NoParams
from helix_framework.layer_stats import LayerStats


@attrs.frozen
class RotationState:
    """What fit learned: arrays (saved as safetensors) and JSON-safe metadata."""

    arrays: Mapping[str, np.ndarray] = attrs.field(factory=dict)
    meta: Mapping[str, Any] = attrs.field(factory=dict)


class Rotation:
    """Base class of rotations; see the module docstring for the contract."""

    name: ClassVar[str]
    version: ClassVar[str] = "0.0.0"
    Params: ClassVar[type] = NoParams
    override: ClassVar[bool] = False
    #: ``apply`` is ``rows @ A`` with ``A`` orthogonal (A^-1 = A^T).
    orthogonal: ClassVar[bool] = False
    #: fit accepts ``stats=`` (see the module docstring).
    takes_stats: ClassVar[bool] = False
    #: fit accepts ``codec=`` (see the module docstring).
    takes_codec: ClassVar[bool] = False

    def validate(self, params: Any) -> None:
        """Cross-field checks; raise ConfigError(path=...) on a bad value."""

    def fit(
        self, rows: np.ndarray, params: Any, rng: np.random.Generator, codec_params: Any = None
    ) -> RotationState:
        raise NotImplementedError

    def apply(self, state: RotationState, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def invert(self, state: RotationState, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def rows_of(self, state: RotationState, rows: np.ndarray) -> np.ndarray:
        """``rows`` as float32 [n, row_dim], checked against the width the state
        was fitted on (``state.meta["row_dim"]``); a helper for ``apply``/``invert``."""
        x = np.asarray(rows)
        if x.ndim != 2 or x.shape[1] != state.meta["row_dim"]:
            raise ValueError(f"{self.name} state is for rows of width {state.meta['row_dim']}; got shape {x.shape}")
        return x.astype(np.float32, copy=False)

    def overhead_bits(self, state: RotationState) -> int:
        return sum(int(a.nbytes) * 8 for a in state.arrays.values())

    def transform_stats(self, state: RotationState, stats: LayerStats) -> LayerStats:
        """Statistics of the rotated inputs (see the module docstring)."""
        if not self.orthogonal:
            raise NotImplementedError(f"rotation {self.name!r} does not say how layer statistics transform under it")
        h = np.asarray(stats.hessian, dtype=np.float64)
        # A = apply(I), the float32 matrix the rows really meet; the product
        # is then formed in float64 (apply on H itself would round H to
        # float32, and a Hessian with one massive input channel has a
        # condition number float32 cannot carry).
        a = np.asarray(self.apply(state, np.eye(h.shape[0], dtype=np.float32)), dtype=np.float64)
        rotated = a.T @ h @ a
        return LayerStats(hessian=(rotated + rotated.T) * 0.5, n_tokens=stats.n_tokens)
