"""Built-in codecs: ``passthrough`` (exact copy) and ``rtn`` (round to nearest).

``passthrough`` is the regression anchor: decode returns the input bit for
bit, at 32 bits per weight. ``rtn`` is the baseline every other codec is
compared with at equal bits: scalar round-to-nearest with one float16 scale
per row or per group of ``group_size`` weights.

Both run in numpy; neither emits kernels, so ``lane_width`` is accepted (so
a config may set it like any codec's) but changes nothing numerically.
"""

from __future__ import annotations

import functools
import math
from typing import Any, ClassVar

import attrs
import helix_jit
import numpy as np

from helix_framework.codec import BitsAccount, Codec, CodecState, Codes
from helix_framework.params import ParamError
from helix_jit.lanes import LaneWidth

__all__ = ["CLIP_SHRINK", "PassthroughCodec", "PassthroughParams", "RtnCodec", "RtnParams", "RTN_BITS"]

#: Bit widths ``rtn`` accepts.
RTN_BITS: tuple[int, ...] = (8, 7, 6, 5, 4, 3, 2)

_F16_MAX = float(np.finfo(np.float16).max)


def _lane_width_field(codegen: bool) -> Any:
    return attrs.field(
        default=LaneWidth.F32x16,
        converter=LaneWidth.parse,
        metadata={} if codegen else {"codegen": False},
    )


def _rows_f32(rows: np.ndarray) -> np.ndarray:
    arr = np.asarray(rows)
    if arr.ndim != 2:
        raise ValueError(f"expected 2-D rows [n_rows, row_dim]; got shape {arr.shape}")
    return arr.astype(np.float32, copy=False)


@attrs.frozen
class PassthroughParams:
    """Params of ``passthrough``. ``lane_width`` only exists so configs may
    set it; passthrough generates no code (hence ``codegen: False``)."""

    lane_width: LaneWidth = _lane_width_field(codegen=False)


class PassthroughCodec(Codec):
    """``passthrough``: the rows stored as float32, decoded bit for bit.

    Code bits are the honest 32 per weight of the stored float32 copy.
    """

    name: ClassVar[str] = "passthrough"
    version: ClassVar[str] = "1.0.0"
    Params: ClassVar[type] = PassthroughParams

    def fit(self, rows: np.ndarray, params: Any, rng: np.random.Generator) -> CodecState:
        return CodecState(meta={"row_dim": int(_rows_f32(rows).shape[1])})

    def encode(self, state: CodecState, rows: np.ndarray) -> Codes:
        # A private copy: the codes must not alias the caller's (maybe mmapped) rows.
        return Codes(arrays={"rows": np.array(_rows_f32(rows), dtype=np.float32, copy=True, order="C")})

    def decode(self, state: CodecState, codes: Codes) -> np.ndarray:
        return np.array(codes.arrays["rows"], dtype=np.float32, copy=True)

    def bits(self, state: CodecState, n_rows: int, row_dim: int) -> BitsAccount:
        n = int(n_rows) * int(row_dim)
        return BitsAccount(n_weights=n, code_bits=32 * n, overhead_bits=0)


def _check_bits(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value not in RTN_BITS:
        raise ParamError("bits", f"must be one of {', '.join(map(str, RTN_BITS))}, got {value!r}")


def _check_group_size(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ParamError("group_size", f"must be a positive integer or null (one group per row), got {value!r}")


def _check_flag(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, bool):
        raise ParamError(attribute.name, f"must be true or false, got {value!r}")


#: Code spacings ``rtn`` accepts (``levels``).
RTN_LEVELS: tuple[str, ...] = ("uniform", "gaussian")


def _check_levels(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value not in RTN_LEVELS:
        raise ParamError("levels", f"must be one of {', '.join(RTN_LEVELS)}, got {value!r}")


@attrs.frozen
class RtnParams:
    """Params of ``rtn``.

    - ``bits``: 2 to 8 bits per weight code (any integer in between).
    - ``group_size``: weights per scale; ``None`` = one group per row. A row
      whose width is not a multiple keeps every column: its last group is
      shorter.
    - ``symmetric``: True: scale = max|w| / (2^(b-1) - 1), codes in
      [-(2^(b-1) - 1), 2^(b-1) - 1] (int8 storage), 16 overhead bits per
      group. False: w ~ min + q * scale with scale = (max - min) / (2^b - 1),
      codes in [0, 2^b - 1] (uint8 storage), 32 overhead bits per group.
    - ``clip``: search each group's range: shrink it by each of
      `CLIP_SHRINK` (max|w| symmetric; the [min, max] interval about its
      centre asymmetric) and keep the factor with the least squared error of
      the group, weighted by the Hessian diagonal of its columns when layer
      statistics are given. Same format and bits; only the scales change.
    - ``levels``: ``uniform`` (evenly spaced codes, the default) or
      ``gaussian``: the 2^b (asymmetric) or 2^b - 1 (symmetric) levels of
      the Lloyd-Max quantizer of a standard normal, stretched so the outer
      levels sit where uniform's do. After a Hadamard rotation a group's
      weights are close to normal, and these levels give them less squared
      error than even spacing at the same bits; scales and zeros are stored
      as for ``uniform``.
    - ``lane_width``: accepted for config uniformity.

    ``bits``, ``group_size``, ``symmetric`` and ``levels`` would change the machine code
    of an RTN kernel; ``clip`` only changes which scales are stored.
    """

    bits: int = attrs.field(default=8, validator=_check_bits)
    group_size: int | None = attrs.field(default=None, validator=_check_group_size)
    symmetric: bool = attrs.field(default=True, validator=_check_flag)
    lane_width: LaneWidth = _lane_width_field(codegen=True)
    clip: bool = attrs.field(default=False, validator=_check_flag, metadata={"codegen": False})
    levels: str = attrs.field(default="uniform", validator=_check_levels)


#: Range shrink factors ``clip`` tries, largest first (ties keep the larger).
CLIP_SHRINK: tuple[float, ...] = tuple(float(v) for v in np.linspace(1.0, 0.5, 21))


class RtnCodec(Codec):
    """``rtn``: round-to-nearest scalar quantization with float16 scales.

    Data-free: ``fit`` only records the params and the row width; scales
    (and, asymmetric, the float16 group minimum) are computed per encoded
    row group and stored with the codes, so ``fit`` may see any rows.
    Quantization divides by the float16-rounded scale and decode multiplies
    by it, so the stored artifact (codes + float16 scales) reproduces
    ``decode`` exactly. Codes are stored one per byte (int8 symmetric, uint8
    asymmetric); the bits account counts the real bit width, not the byte.

    With layer statistics (``stats=``, a data-aware candidate) only the
    ``clip`` search changes: its group error is weighted by the Hessian
    diagonal. Without ``clip`` the statistics change nothing.

    Error feedback (``quantizes_columns``, one column at a time):
    ``bind_rows`` computes every group's scale (and zero) from the original
    matrix and puts them in the returned state; ``quantize_columns`` rounds a
    column on its group's bound grid, and ``encode`` with the bound state
    uses (and stores in the codes) those same scales, so it reproduces the
    quantized matrix exactly. The saved state is the one ``fit`` returned;
    the codes carry the scales as always.

    Codes: ``q`` [n_rows, row_dim], ``scales`` [n_rows, n_groups] float16,
    and ``zeros`` [n_rows, n_groups] float16 (the group minimum) when
    asymmetric. Magnitudes beyond the float16 range (65504) saturate, and a
    group whose scale is below float16's smallest subnormal (about 6e-8, so
    max|w| under about 4e-6 at int8) decodes to zero (symmetric) or to its
    float16 minimum (asymmetric): the limit of float16 scales, not a bug.
    """

    name: ClassVar[str] = "rtn"
    version: ClassVar[str] = "1.2.0"
    Params: ClassVar[type] = RtnParams
    takes_stats: ClassVar[bool] = True
    quantizes_columns: ClassVar[bool] = True
    refits_scales: ClassVar[bool] = True

    def fit(self, rows: np.ndarray, params: Any, rng: np.random.Generator, stats: Any = None) -> CodecState:
        row_dim = int(_rows_f32(rows).shape[1])
        meta = {
            "bits": int(params.bits),
            "group_size": None if params.group_size is None else int(params.group_size),
            "symmetric": bool(params.symmetric),
            "row_dim": row_dim,
        }
        if params.clip:
            meta["clip"] = True
        if params.levels != "uniform":
            meta["levels"] = params.levels
        return CodecState(meta=meta)

    @staticmethod
    def _group(meta: dict[str, Any], row_dim: int) -> tuple[int, int]:
        """(group size, groups per row) for a row of ``row_dim`` weights."""
        g = meta["group_size"] or row_dim
        return g, max(1, math.ceil(row_dim / g)) if row_dim else 0

    def _checked(self, state: CodecState, rows: np.ndarray) -> np.ndarray:
        x = _rows_f32(rows)
        if x.shape[1] != state.meta["row_dim"]:
            raise ValueError(f"rtn state was fitted on rows of width {state.meta['row_dim']}; got width {x.shape[1]}")
        if not np.all(np.isfinite(x)):
            raise ValueError("rtn cannot quantize non-finite weights (NaN or inf)")
        return x

    def _grouped(self, meta: dict[str, Any], x: np.ndarray) -> np.ndarray:
        """Rows as [n, n_groups, g]. The last group is padded by repeating the
        row's last column: that leaves its max|w|, min and max unchanged, and
        the padding is cut off after quantizing."""
        n, d = x.shape
        g, n_groups = self._group(meta, d)
        pad = n_groups * g - d
        xp = np.pad(x, ((0, 0), (0, pad)), mode="edge") if pad else x
        return xp.reshape(n, n_groups, g)

    def _scales(
        self, meta: dict[str, Any], groups: np.ndarray, stats: Any
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """float16 (scales, zeros or None) of every group, clip-searched when asked."""
        if not meta.get("clip"):
            return _group_scales(groups, meta["bits"], meta["symmetric"], 1.0)
        table = _level_table(meta)
        weights = None
        if stats is not None:
            diag = np.asarray(stats.diag, dtype=np.float64)
            weights = self._grouped(meta, diag[None, :])[0]
            weights = np.where(weights.sum(axis=1, keepdims=True) > 0, weights, 1.0)  # dead group: plain error
        bits, symmetric = meta["bits"], meta["symmetric"]
        extent = _group_extent(groups, symmetric)  # the same for every shrink
        grids = [_group_scales(groups, bits, symmetric, shrink, extent) for shrink in CLIP_SHRINK]
        scales = np.stack([s16 for s16, _ in grids])  # [S, n, G]
        zeros = None if symmetric else np.stack([lo16 for _, lo16 in grids])
        top = 2 ** (bits - 1) - 1 if symmetric else 2**bits - 1
        # One jit pass over the matrix for all shrinks: errors [S, G, n] summed
        # over each group's positions in order (helix_jit.grid_errors).
        err = helix_jit.grid_errors(
            groups.transpose(1, 2, 0),
            scales.astype(np.float32).transpose(0, 2, 1),
            None if zeros is None else zeros.astype(np.float32).transpose(0, 2, 1),
            np.ones(groups.shape[1:]) if weights is None else weights,
            table,
            (-top, top) if symmetric else (0, top),
        ).transpose(0, 2, 1)
        best, pick = err[0], np.zeros(err.shape[1:], dtype=np.intp)
        for k in range(1, len(grids)):  # ties keep the larger range
            better = err[k] < best
            best = np.where(better, err[k], best)
            pick = np.where(better, k, pick)
        chosen = lambda a: np.take_along_axis(a, pick[None], axis=0)[0]  # noqa: E731
        return chosen(scales), None if zeros is None else chosen(zeros)

    def encode(self, state: CodecState, rows: np.ndarray, stats: Any = None) -> Codes:
        x = self._checked(state, rows)
        meta = dict(state.meta)
        n, d = x.shape
        groups = self._grouped(meta, x)
        if "scales" in state.arrays:  # bound by bind_rows: the matrix's static scales
            s16 = np.asarray(state.arrays["scales"])
            lo16 = None if meta["symmetric"] else np.asarray(state.arrays["zeros"])
            if s16.shape[0] != n:
                raise ValueError(f"rtn state is bound to a matrix of {s16.shape[0]} rows; got {n} rows")
        else:
            s16, lo16 = self._scales(meta, groups, stats)
        q = _quantize(groups, s16, lo16, meta["bits"], _level_table(meta))
        arrays = {"scales": s16} if lo16 is None else {"scales": s16, "zeros": lo16}
        arrays["q"] = np.ascontiguousarray(q.reshape(n, -1)[:, :d])
        return Codes(arrays=arrays)

    def decode(self, state: CodecState, codes: Codes) -> np.ndarray:
        q = np.asarray(codes.arrays["q"])
        n, d = q.shape
        g, n_groups = self._group(dict(state.meta), d)
        s = np.repeat(np.asarray(codes.arrays["scales"]).astype(np.float32), g, axis=1)[:, :d]
        out = _code_values(q, _level_table(dict(state.meta))) * s
        if not state.meta["symmetric"]:
            out += np.repeat(np.asarray(codes.arrays["zeros"]).astype(np.float32), g, axis=1)[:, :d]
        return out

    def bits(self, state: CodecState, n_rows: int, row_dim: int) -> BitsAccount:
        meta = dict(state.meta)
        n_rows, row_dim = int(n_rows), int(row_dim)
        _, n_groups = self._group(meta, row_dim)
        groups = n_groups * n_rows  # one float16 scale each, and a float16 minimum when asymmetric
        return BitsAccount.of(n_rows * row_dim, meta["bits"] * n_rows * row_dim,
                              scales=16 * groups, zeros=0 if meta["symmetric"] else 16 * groups)

    # -- error feedback -----------------------------------------------------------

    def bind_rows(self, state: CodecState, rows: np.ndarray, stats: Any = None) -> CodecState:
        """``state`` plus every group's float16 scale (and zero) of ``rows``."""
        x = self._checked(state, rows)
        s16, lo16 = self._scales(dict(state.meta), self._grouped(dict(state.meta), x), stats)
        arrays = {"scales": s16} if lo16 is None else {"scales": s16, "zeros": lo16}
        return CodecState(arrays=arrays, meta=dict(state.meta))

    def quantize_columns(self, state: CodecState, values: np.ndarray, start: int) -> np.ndarray:
        if "scales" not in state.arrays:
            raise ValueError("rtn quantize_columns needs the state bind_rows returned (the matrix's scales)")
        meta = state.meta
        g, _ = self._group(dict(meta), int(meta["row_dim"]))
        grp = int(start) // g
        v = np.asarray(values, dtype=np.float32)[:, :, None]  # [n, 1 column, 1] like [n, groups, g]
        s16 = np.asarray(state.arrays["scales"])[:, grp : grp + 1]
        lo16 = None if meta["symmetric"] else np.asarray(state.arrays["zeros"])[:, grp : grp + 1]
        table = _level_table(meta)
        return _dequantize(_quantize(v, s16, lo16, meta["bits"], table), s16, lo16, table)[:, :, 0]

    def refit_scales(self, state: CodecState, codes: Codes, rows: np.ndarray, hessian: np.ndarray) -> Codes:
        """``codes`` with every row's scales (and zeros) re-solved for its codes.

        With the integer codes fixed, a row's reconstruction is linear in its
        group scales and zeros, so the output error
        ``(w - w_hat)^T H (w - w_hat)`` against the original row ``w`` has a
        closed-form minimum: one small least-squares system per row (2 x
        groups unknowns asymmetric, groups symmetric). The float16-rounded
        solution is kept only for rows where it lowers that error.
        """
        meta = dict(state.meta)
        w = self._checked(state, rows).astype(np.float64)
        table = _level_table(meta)
        q_codes = np.asarray(codes.arrays["q"])
        q = _code_values(q_codes, table).astype(np.float64)
        h = np.asarray(hessian, dtype=np.float64)
        n, d = q.shape
        g, n_groups = self._group(meta, d)
        starts = np.arange(0, d, g)
        k = n_groups if meta["symmetric"] else 2 * n_groups  # unknowns: the scales, then the zeros
        lhs = np.empty((n, k, k))
        for a, c0 in enumerate(starts):
            c1 = min(c0 + g, d)
            ha = h[c0:c1]  # [g, d]
            pq = q[:, c0:c1] @ ha  # q_a^T H[a, :], per row
            lhs[:, a, :n_groups] = np.add.reduceat(pq * q, starts, axis=1)
            if not meta["symmetric"]:
                p1 = ha.sum(axis=0)  # 1^T H[a, :]
                lhs[:, a, n_groups:] = np.add.reduceat(pq, starts, axis=1)
                lhs[:, n_groups + a, n_groups:] = np.add.reduceat(p1, starts)[None, :]
                lhs[:, n_groups + a, :n_groups] = np.add.reduceat(p1[None, :] * q, starts, axis=1)
        wh = w @ h
        rhs = [np.add.reduceat(wh * q, starts, axis=1)]
        if not meta["symmetric"]:
            rhs.append(np.add.reduceat(wh, starts, axis=1))
        rhs = np.concatenate(rhs, axis=1)
        # A tiny ridge keeps a group whose codes are all equal (scale and zero
        # not separable) solvable; it does not move a well-posed solution.
        ridge = 1e-9 * np.maximum(np.einsum("nii->n", lhs) / k, 1e-30)
        lhs[:, np.arange(k), np.arange(k)] += ridge[:, None]
        with np.errstate(all="ignore"):
            try:
                theta = np.linalg.solve(lhs, rhs[:, :, None])[:, :, 0]
            except np.linalg.LinAlgError:
                return codes
        s16 = np.clip(theta[:, :n_groups], -_F16_MAX, _F16_MAX).astype(np.float16)
        lo16 = None if meta["symmetric"] else np.clip(theta[:, n_groups:], -_F16_MAX, _F16_MAX).astype(np.float16)
        old_s = np.asarray(codes.arrays["scales"])
        old_lo = None if meta["symmetric"] else np.asarray(codes.arrays["zeros"])
        qg = self._grouped(meta, q_codes)

        def error(s: np.ndarray, lo: np.ndarray | None) -> np.ndarray:
            diff = w - _dequantize(qg, s, lo, table).reshape(n, -1)[:, :d]
            return np.einsum("nd,nd->n", diff @ h, diff)

        better = np.isfinite(theta).all(axis=1) & (error(s16, lo16) < error(old_s, old_lo))
        arrays = dict(codes.arrays)
        arrays["scales"] = np.where(better[:, None], s16, old_s)
        if lo16 is not None:
            arrays["zeros"] = np.where(better[:, None], lo16, old_lo)
        return attrs.evolve(codes, arrays=arrays)


def _group_extent(groups: np.ndarray, symmetric: bool) -> tuple[np.ndarray, ...]:
    """(max|w|,) symmetric or (min, max) asymmetric of every group [n, G, g]."""
    if symmetric:
        return (np.abs(groups).max(axis=2),)
    return groups.min(axis=2), groups.max(axis=2)


def _group_scales(groups: np.ndarray, bits: int, symmetric: bool, shrink: float,
                  extent: tuple[np.ndarray, ...] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """float16 scales (and zeros, asymmetric) of groups [n, G, g], range shrunk
    by ``shrink``; ``extent``: `_group_extent` of the groups, when known."""
    extent = _group_extent(groups, symmetric) if extent is None else extent
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if symmetric:
            (amax,) = extent
            if shrink != 1.0:
                amax = amax * np.float32(shrink)
            scale = amax / np.float32(2 ** (bits - 1) - 1)
            return np.minimum(scale, _F16_MAX).astype(np.float16), None
        lo, hi = extent
        if shrink != 1.0:
            cut = (hi - lo) * np.float32((1.0 - shrink) / 2.0)
            lo, hi = lo + cut, hi - cut
        lo16 = np.clip(lo, -_F16_MAX, _F16_MAX).astype(np.float16)
        # Scale from the float16 minimum actually stored, so the top code
        # still reaches the (shrunk) maximum.
        scale = (hi - lo16.astype(np.float32)) / np.float32(2**bits - 1)
        return np.clip(scale, 0.0, _F16_MAX).astype(np.float16), lo16


@functools.cache
def _gaussian_levels(count: int) -> np.ndarray:
    """The ``count`` Lloyd-Max levels of a standard normal, divided by the outermost (so in [-1, 1])."""
    from scipy.special import ndtr, ndtri  # the normal CDF and its inverse (scipy.stats imports for seconds)

    def pdf(x: np.ndarray) -> np.ndarray:
        return np.exp(-0.5 * np.square(x)) / math.sqrt(2 * math.pi)

    levels = ndtri((np.arange(count) + 0.5) / count)
    for _ in range(500):  # Lloyd: thresholds at midpoints, levels at the centroids between them
        edges = np.concatenate(([-np.inf], (levels[1:] + levels[:-1]) / 2, [np.inf]))
        levels = (pdf(edges[:-1]) - pdf(edges[1:])) / (ndtr(edges[1:]) - ndtr(edges[:-1]))
    levels = (levels - levels[::-1]) / 2  # exactly antisymmetric
    return levels / levels[-1]


def _level_table(meta: dict[str, Any]) -> np.ndarray | None:
    """The float32 value of each code (indexed from the lowest code), or None for uniform codes."""
    if meta.get("levels", "uniform") == "uniform":
        return None
    bits = int(meta["bits"])
    if meta["symmetric"]:  # 2^b - 1 levels spanning [-qmax, qmax]
        qmax = 2 ** (bits - 1) - 1
        return (qmax * _gaussian_levels(2 * qmax + 1)).astype(np.float32)
    top = 2**bits - 1  # 2^b levels spanning [0, 2^b - 1]
    return (top / 2 * (1.0 + _gaussian_levels(top + 1))).astype(np.float32)


def _nearest_level(x: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Index of the level nearest each x (a tie goes to the lower level): the
    number of midpoints between levels below x."""
    mid = (table[1:] + table[:-1]) / 2
    if len(mid) > 31 or x.size < 16384:  # wide tables, or one column (per-call overhead)
        return np.searchsorted(mid, x, side="left")
    q = np.zeros(x.shape, dtype=np.int16)  # up to 5 bits, a compare per midpoint is 10x faster
    for m in mid:
        q += x > m
    return q


def _code_values(q: np.ndarray, table: np.ndarray | None) -> np.ndarray:
    """float32 value of every code: the code itself (uniform) or its level."""
    if table is None:
        return q.astype(np.float32)
    offset = (len(table) - 1) // 2 if q.dtype == np.int8 else 0  # symmetric codes start at -qmax
    return table[q.astype(np.intp) + offset]


def _quantize(groups: np.ndarray, s16: np.ndarray, lo16: np.ndarray | None, bits: int,
              table: np.ndarray | None = None) -> np.ndarray:
    """Integer codes of groups [n, G, g] on the grid (s16, lo16) [n, G] (and levels ``table``)."""
    s = s16.astype(np.float32)[:, :, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        x = groups / s if lo16 is None else (groups - lo16.astype(np.float32)[:, :, None]) / s
        if table is None:
            q = np.where(s > 0, np.rint(x), 0.0)
        else:
            start = -((len(table) - 1) // 2) if lo16 is None else 0
            q = np.where(s > 0, _nearest_level(x, table) + start, 0)  # x is NaN only where s is 0
        if lo16 is None:
            qmax = 2 ** (bits - 1) - 1
            return np.clip(q, -qmax, qmax).astype(np.int8)
        return np.clip(q, 0, 2**bits - 1).astype(np.uint8)


def _dequantize(q: np.ndarray, s16: np.ndarray, lo16: np.ndarray | None,
                table: np.ndarray | None = None) -> np.ndarray:
    """The float32 values of codes [n, G, g]: the same operations as ``decode``."""
    out = _code_values(q, table) * s16.astype(np.float32)[:, :, None]
    if lo16 is not None:
        out += lo16.astype(np.float32)[:, :, None]
    return out
