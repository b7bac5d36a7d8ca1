"""The codec contract.

A codec compresses the rows of a 2-D float32 weight matrix. A plugin
registers an instance of a `Codec` subclass through the
``helix_register_codecs(register)`` hook. The class declares:

- ``name``: the name configs use (``codec: campq``);
- ``version``: bumped whenever the encoded format or the numerics change;
- ``Params``: a frozen attrs class, the schema of the config's ``params``;
  fields whose metadata has ``codegen: False`` (seeds, tolerances, flags that
  only change training) are left out of the kernel signature;
- ``lane_widths``: the `LaneWidth` values it supports (config validation
  rejects any other ``params.lane_width``);
- ``override``: True to replace a same-named codec of another plugin.

Methods, all pure functions of their arguments:

- ``validate(params)``: cross-field checks, raising `ConfigError` with the
  key path (``$.residual.depth``); single-field checks belong in ``Params``.
- ``fit(rows, params, rng) -> CodecState``: train on calibration rows only.
- ``encode(state, rows) -> Codes``: codes for any rows.
- ``decode(state, codes) -> ndarray``: float32 rows, same shape as encoded.
- ``bits(state, n_rows, row_dim) -> BitsAccount``: code bits and overhead
  named by part (``BitsAccount.of(n, code_bits, scales=..., codebooks=...)``),
  so bits per weight are never only the codes and the manifest says what the
  overhead is.

Optional capabilities, declared as class attributes (the host never probes
with getattr):

- ``takes_stats = True``: ``fit`` and ``encode`` also receive ``stats=`` (a
  `helix_framework.layer_stats.LayerStats` of the rotated inputs, or None for
  a data-free candidate). A codec that leaves it False is called exactly as
  before and works unchanged in data-aware candidates.
- ``quantizes_columns = True``: the codec can be driven by the host's error
  feedback stage (GPTQ-style), which calls ``fit`` once, then
  ``quantize_columns`` on one atom of ``column_atom(state)`` columns at a
  time, in an order the host chooses, and finally ``encode`` on the
  quantized matrix. ``encode`` of rows that ``quantize_columns`` produced must
  decode to those rows exactly.

  The stage (`helix_framework.error_feedback`) first calls
  ``bind_rows(state, rows, stats=...)`` with the whole original matrix: it
  returns a state with every per-row parameter (rtn's group scales and
  zeros, campq's row scales) fixed from the original weights ("static
  groups"), because error feedback changes the weights before their group
  is reached. ``quantize_columns`` and ``encode`` then use that bound state;
  ``encode`` copies the bound parameters into the codes, so the codes decode
  with the state ``fit`` returned (the one the host saves) and ``fit`` may
  run on calibration rows only, as in a data-free candidate.
- ``refits_scales = True`` (with ``quantizes_columns``): after error
  feedback has chosen every code, ``refit_scales(state, codes, rows,
  hessian)`` may re-solve the codec's per-row parameters for those codes
  so that ``(w - w_hat)^T H (w - w_hat)`` against the original rows falls
  (rtn: each row's group scales and zeros, in closed form). It returns
  codes that decode with the saved state. Asked for by
  ``error_feedback: {refit: true}``.
- ``compressed_matmul = True``: the codec multiplies by its encoded matrix
  without decoding it (``helix agree --engine adc``):
  ``matmul(state, codes, x, params) -> y`` with ``x`` float32
  [row_dim, T] (the layer's inputs, already in the rotated basis, one column
  per token) and ``y`` float32 [n_rows, T] ~ ``decode(state, codes) @ x``.
  ``params`` are the candidate's params, so the codec reads its own keys
  (campq: ``distance`` and ``lane_width``).

Two codecs may share a name only if their formats are compatible.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import attrs
import numpy as np

from helix_jit.lanes import ALL_LANE_WIDTHS, LaneWidth


@attrs.frozen
class CodecState:
    """What fit learned: arrays (saved as safetensors) and JSON-safe metadata."""

    arrays: Mapping[str, np.ndarray] = attrs.field(factory=dict)
    meta: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Codes:
    """The encoded rows: arrays (saved as safetensors) and JSON-safe metadata."""

    arrays: Mapping[str, np.ndarray] = attrs.field(factory=dict)
    meta: Mapping[str, Any] = attrs.field(factory=dict)


def _parts_sum(instance: Any, attribute: Any, value: Mapping[str, int]) -> None:
    if value and sum(int(v) for v in value.values()) != instance.overhead_bits:
        raise ValueError(f"overhead_parts {dict(value)} do not add up to overhead_bits {instance.overhead_bits}")


@attrs.frozen
class BitsAccount:
    """Bits spent on one tensor. Per-weight figures divide by ``n_weights``.

    ``overhead_parts`` names what the overhead is ("scales", "zeros",
    "codebooks", "row_scales", ...) and must add up to ``overhead_bits``; a
    codec that gives only ``overhead_bits`` has one unnamed part. Build one
    with `BitsAccount.of` to have the total computed.
    """

    n_weights: int
    code_bits: int
    overhead_bits: int = 0
    overhead_parts: Mapping[str, int] = attrs.field(factory=dict, validator=_parts_sum)

    @classmethod
    def of(cls, n_weights: int, code_bits: int, **parts: int) -> BitsAccount:
        """An account whose overhead is the sum of the named ``parts`` (zero parts dropped)."""
        named = {k: int(v) for k, v in parts.items() if v}
        return cls(int(n_weights), int(code_bits), sum(named.values()), named)

    def parts_bpw(self) -> dict[str, float]:
        """The overhead per weight, by part (``overhead`` when unnamed)."""
        parts = dict(self.overhead_parts) or ({"overhead": self.overhead_bits} if self.overhead_bits else {})
        return {k: v / self.n_weights if self.n_weights else 0.0 for k, v in parts.items()}

    @property
    def code_bpw(self) -> float:
        return self.code_bits / self.n_weights if self.n_weights else 0.0

    @property
    def overhead_bpw(self) -> float:
        return self.overhead_bits / self.n_weights if self.n_weights else 0.0

    @property
    def total_bpw(self) -> float:
        return self.code_bpw + self.overhead_bpw


@attrs.frozen
class NoParams:
    """Params schema of a component that takes none."""


class Codec:
    """Base class of codecs; see the module docstring for the contract."""

    name: ClassVar[str]
    version: ClassVar[str] = "0.0.0"
    Params: ClassVar[type] = NoParams
    lane_widths: ClassVar[tuple[LaneWidth, ...]] = ALL_LANE_WIDTHS
    override: ClassVar[bool] = False
    #: fit and encode accept ``stats=`` (see the module docstring).
    takes_stats: ClassVar[bool] = False
    #: the codec implements ``column_atom`` and ``quantize_columns``.
    quantizes_columns: ClassVar[bool] = False
    #: the codec implements ``refit_scales`` (see the module docstring).
    refits_scales: ClassVar[bool] = False
    #: the codec implements ``matmul`` (see the module docstring).
    compressed_matmul: ClassVar[bool] = False

    def validate(self, params: Any) -> None:
        """Cross-field checks; raise ConfigError(path=...) on a bad value."""

    def fit(self, rows: np.ndarray, params: Any, rng: np.random.Generator) -> CodecState:
        raise NotImplementedError

    def encode(self, state: CodecState, rows: np.ndarray) -> Codes:
        raise NotImplementedError

    def decode(self, state: CodecState, codes: Codes) -> np.ndarray:
        raise NotImplementedError

    def bits(self, state: CodecState, n_rows: int, row_dim: int) -> BitsAccount:
        raise NotImplementedError

    def bind_rows(self, state: CodecState, rows: np.ndarray, stats: Any = None) -> CodecState:
        """The state for error feedback on the matrix ``rows`` (see the module docstring).

        Default: ``state`` unchanged, for codecs with no per-row parameters.
        """
        return state

    def column_atom(self, state: CodecState) -> int:
        """Columns quantized together (1 for scalar codecs, the subspace width for VQ)."""
        return 1

    def quantize_columns(self, state: CodecState, values: np.ndarray, start: int) -> np.ndarray:
        """Quantize-dequantize the atom of columns ``[start, start + column_atom)``.

        ``state`` is the one ``bind_rows`` returned. ``values`` [n_rows,
        column_atom] are those columns' current (error corrected) values,
        float32; the result has the same shape, float32, on the codec's grid,
        computed with the same float operations as ``decode``. Only codecs
        with ``quantizes_columns = True`` implement it.
        """
        raise NotImplementedError

    def refit_scales(self, state: CodecState, codes: Codes, rows: np.ndarray, hessian: np.ndarray) -> Codes:
        """``codes`` with the per-row parameters re-solved for the chosen codes.
        Only codecs with ``refits_scales = True`` implement it."""
        raise NotImplementedError

    def matmul(self, state: CodecState, codes: Codes, x: np.ndarray, params: Any) -> np.ndarray:
        """``decode(state, codes) @ x`` computed from the codes; x is [row_dim, T].
        Only codecs with ``compressed_matmul = True`` implement it."""
        raise NotImplementedError
