"""Error feedback: GPTQ's column-by-column quantization for any codec that can.

GPTQ (Frantar, Ashkboos, Hoefler, Alistarh, 2022) quantizes a weight matrix
``W`` [out, in] one input column at a time and spreads each column's
rounding error over the columns not yet quantized, so that the layer output
``X W^T`` moves as little as possible. With ``H = sum_t x_t^T x_t`` (a
`LayerStats`) and the upper Cholesky factor ``U`` of ``H^-1``
(``H^-1 = U^T U``), quantizing column ``j`` to ``q_j`` updates the rest by
``W[:, j+1:] -= (w_j - q_j) / U[j, j] * U[j, j+1:]``.

Here the unit is the codec's *atom* (``column_atom``: 1 column for a scalar
codec, a subspace of columns for a vector codec, as in GPTVQ): the atom is
quantized jointly by ``codec.quantize_columns``, and the exact update for
the whole atom ``S`` is ``E = (W_S - Q_S) U_SS^-1``,
``W[:, rest] -= E U[S, rest]`` (for one column it is GPTQ's). As in GPTQ:

- **dead inputs** (zero Hessian diagonal: the column never sees a non-zero
  input) get ``H[j, j] = 1``, so they are quantized plainly and pass no
  error on; their weights are kept (GPTQ zeroes them), so row-level
  figures stay meaningful;
- **damping**: ``damp`` times the mean diagonal is added to the diagonal;
  when the Cholesky factorisation still fails (a numerically singular
  Hessian), the damping is multiplied by 10 and retried, never a crash;
- **lazy batch updates**: the updates inside a block of ``block`` columns
  are applied at once to the columns after it (same result, far fewer
  passes over ``W``);
- **act order**: atoms in order of decreasing Hessian diagonal (summed over
  the atom), so the most important inputs are quantized first while the
  most columns remain to absorb their error. Group scales stay static (the
  codec's ``bind_rows`` fixes them from the original weights before any
  update), so the codes need no column permutation index.

Afterwards, ``cd_passes`` passes of **coordinate descent** (as QuantEase,
Behdin et al., 2023, started from GPTQ's solution) may revisit every atom
with all the others fixed. With ``E = W - Q`` and ``G = H E^T``, the
objective ``sum_rows e^T H e`` as a function of atom ``S`` alone is
``(q_S - t_S)^T H_SS (q_S - t_S) + const`` with
``t_S = q_S + H_SS^-1 G_S``: error feedback only ever looks forward, while
this step also sees the columns quantized after ``S``. The atom is
re-quantized at ``t_S`` and the new codes are kept in the rows where they
lower that quadratic (for one column the nearest level is its exact minimum,
so every row's objective falls or stays), so no pass can raise the output
error. Updates to ``G`` are lazy per block, like GPTQ's.

The codec contract is in `helix_framework.codec`: ``bind_rows``,
``column_atom``, ``quantize_columns`` and an ``encode`` that reproduces the
quantized matrix exactly (checked here; a codec that breaks it raises
`ErrorFeedbackError` naming the codec).
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np
from scipy.linalg import blas, lapack

from helix_framework.codec import Codec, CodecState, Codes
from helix_framework.errors import ErrorFeedbackError
from helix_framework.layer_stats import LayerStats
from helix_framework.params import ParamError

__all__ = ["ErrorFeedbackParams", "damped_hessian", "inverse_cholesky", "quantize_with_feedback"]

#: Damping retries (each multiplies it by 10) before giving up on the Hessian.
MAX_DAMP_RETRIES = 12
#: Rows per tile when a [d, d] or [d, n] array is updated in place (bounds the temporaries).
_SYM_TILE = 512
#: More passes than this is a typo: each costs about one error-feedback pass.
MAX_CD_PASSES = 100


def _check_damp(_inst: Any, _attr: Any, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
        raise ParamError("damp", f"must be a finite number >= 0 (a fraction of the mean Hessian diagonal), got {value!r}")


def _check_block(_inst: Any, _attr: Any, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ParamError("block", f"must be a positive integer (columns per lazy update), got {value!r}")


def _check_passes(_inst: Any, _attr: Any, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_CD_PASSES:
        raise ParamError("cd_passes", f"must be an integer from 0 to {MAX_CD_PASSES} (coordinate-descent passes), got {value!r}")


def _check_flag(_inst: Any, attr: Any, value: Any) -> None:
    if not isinstance(value, bool):
        raise ParamError(attr.name, f"must be true or false, got {value!r}")


@attrs.frozen
class ErrorFeedbackParams:
    """The config's ``error_feedback`` mapping.

    - ``damp``: fraction of the mean Hessian diagonal added to the diagonal.
    - ``block``: columns per lazy batch update (rounded down to a multiple of
      the codec's atom, at least one atom).
    - ``act_order``: quantize atoms in order of decreasing Hessian diagonal.
    - ``refit``: afterwards, re-solve the codec's per-row scales for the
      codes chosen (codecs with ``refits_scales``; see ``quantize_with_feedback``).
    - ``cd_passes``: coordinate-descent passes over the atoms after error
      feedback (0: none; see the module docstring).
    """

    damp: float = attrs.field(default=0.01, validator=_check_damp)
    block: int = attrs.field(default=128, validator=_check_block)
    act_order: bool = attrs.field(default=True, validator=_check_flag)
    refit: bool = attrs.field(default=False, validator=_check_flag)
    cd_passes: int = attrs.field(default=0, validator=_check_passes)


def _live_symmetric(h: np.ndarray) -> tuple[np.ndarray, float]:
    """Symmetrize ``h`` in place and give dead inputs a unit diagonal; (diagonal, its mean)."""
    # By tiles: ``h += h.T`` copies the whole transposed view first (254 MB at
    # 5632 inputs). Each pair of tiles gets the same sums either way.
    d = h.shape[0]
    for i0 in range(0, d, _SYM_TILE):
        i1 = min(i0 + _SYM_TILE, d)
        for j0 in range(i0, d, _SYM_TILE):
            j1 = min(j0 + _SYM_TILE, d)
            tile = h[i0:i1, j0:j1] + h[j0:j1, i0:i1].T
            h[i0:i1, j0:j1] = tile
            h[j0:j1, i0:i1] = tile.T
    h *= 0.5
    dead = np.diagonal(h) <= 0
    h[dead, :] = 0.0
    h[:, dead] = 0.0
    h[dead, dead] = 1.0
    base = np.diagonal(h).copy()
    return base, float(np.mean(base)) if h.size else 1.0


def damped_hessian(hessian: np.ndarray, damp: float, overwrite: bool = False) -> np.ndarray:
    """The float64 Hessian error feedback works with: symmetric, dead inputs
    at a unit diagonal, ``damp`` times the mean diagonal added. ``overwrite``:
    a float64 ``hessian`` is changed in place and returned."""
    h = np.asarray(hessian, dtype=np.float64) if overwrite else np.array(hessian, dtype=np.float64, copy=True)
    base, mean = _live_symmetric(h)
    np.fill_diagonal(h, base + float(damp) * mean)
    return h


def inverse_cholesky(hessian: np.ndarray, damp: float, overwrite: bool = False) -> tuple[np.ndarray, float]:
    """(U, damp used): upper triangular ``U`` with ``U^T U = (H + damp mean(diag) I)^-1``.

    Dead inputs (zero diagonal) get a unit diagonal first. The damping is
    multiplied by 10 until the factorisations succeed; raises ValueError if
    the Hessian has non-finite entries or no damping helps. ``overwrite``:
    a float64 ``hessian`` is used as the work array (and spoiled).
    """
    h = np.asarray(hessian, dtype=np.float64) if overwrite else np.array(hessian, dtype=np.float64, copy=True)
    if h.ndim != 2 or h.shape[0] != h.shape[1]:
        raise ValueError(f"the Hessian must be square; got shape {h.shape}")
    if not np.all(np.isfinite(h)):
        raise ValueError("the Hessian has NaN or infinite entries (the layer's inputs are not finite)")
    # LAPACK in place, one d x d array besides h: at 5632 inputs (the down
    # projection of a 1 B model) each is 254 MB, and numpy's inv route held
    # about eight at once.
    base, mean = _live_symmetric(h)
    d = float(damp)
    for _ in range(MAX_DAMP_RETRIES + 1):
        np.fill_diagonal(h, base + d * mean)
        lower, info = lapack.dpotrf(h, lower=1, clean=1)
        if info == 0:
            hinv, info = lapack.dpotri(lower, lower=1, overwrite_c=1)  # H^-1, lower triangle only
            del lower
            if info == 0:
                # L L^T = H^-1 in the same buffer (dpotrf reads the lower triangle only); U = L^T.
                chol, info = lapack.dpotrf(hinv, lower=1, clean=1, overwrite_a=1)
                if info == 0 and np.all(np.isfinite(chol)):
                    return chol.T, d
        d = max(d, 1e-6) * 10.0
    raise ValueError(f"the Hessian stays singular even damped by {d / 10:g} of its mean diagonal")


def _codec_name(codec: Codec) -> str:
    return str(getattr(codec, "name", type(codec).__name__))


def _quantize_atom(codec: Codec, bound: CodecState, columns: np.ndarray, start: int) -> np.ndarray:
    """``codec.quantize_columns`` of ``columns`` [atom, n] (one atom, transposed), checked."""
    values = np.ascontiguousarray(columns.T, dtype=np.float32)
    q = np.asarray(codec.quantize_columns(bound, values, start))
    if q.shape != values.shape or q.dtype != np.float32:
        name = _codec_name(codec)
        raise ErrorFeedbackError(
            f"codec {name!r}: quantize_columns returned {q.dtype}{q.shape}, expected float32{values.shape}",
            codec=name,
        )
    return q


def _subtract_outer(out: np.ndarray, h: np.ndarray, delta: np.ndarray) -> None:
    """``out -= h @ delta`` in place (a rank-``atom`` update, BLAS dger for one column)."""
    if h.shape[1] == 1:
        # out is C-ordered [m, n], so out.T is Fortran-ordered and dger updates it in place
        blas.dger(-1.0, delta[0], h[:, 0], a=out.T, overwrite_a=1)
    else:
        out -= h @ delta


def _upper_atoms(h_bb: np.ndarray, atom: int) -> np.ndarray:
    """``h_bb`` with the entries of atom pairs (row atom, column atom) where the
    column atom comes before the row atom set to zero."""
    idx = np.arange(h_bb.shape[0]) // atom
    return np.where(idx[None, :] >= idx[:, None], h_bb, 0.0)


def _outside(b0: int, b1: int, d: int) -> list[tuple[int, int]]:
    """Row ranges of [0, d) outside [b0, b1), at most ``_SYM_TILE`` rows each."""
    return [(r, min(r + _SYM_TILE, end)) for start, end in ((0, b0), (b1, d)) for r in range(start, end, _SYM_TILE)]


def _descend(
    codec: Codec,
    bound: CodecState,
    err: np.ndarray,
    quant: np.ndarray,
    hessian: np.ndarray,
    order: np.ndarray,
    atom: int,
    width: int,
    passes: int,
) -> list[float]:
    """Coordinate descent on ``quant`` [d, n] and its error ``err`` = target -
    quant (both in place, columns as rows, in the atom order of ``order``)
    under ``hessian`` [d, d] (permuted the same way, damped). Returns the
    objective before and after each pass."""
    d = quant.shape[0]
    grad = hessian @ err  # G = H E^T, kept exact inside the current block, lazily outside it
    objective = [float(np.einsum("ij,ij->", err, grad))]
    for _ in range(passes):
        for b0 in range(0, d, width):
            b1 = min(b0 + width, d)
            moved = np.zeros((b1 - b0, quant.shape[1]))
            for c0 in range(b0, b1, atom):
                c1 = c0 + atom
                h_ss = hessian[c0:c1, c0:c1]
                old = quant[c0:c1].astype(np.float64)
                if atom == 1:
                    t = old + grad[c0:c1] / h_ss[0, 0]
                else:
                    t = old + np.linalg.solve(h_ss, grad[c0:c1])
                new = _quantize_atom(codec, bound, t, int(order[c0 // atom]) * atom).T
                # keep the new codes only where the atom's quadratic falls (per row)
                a, b = new - t, old - t
                if atom == 1:  # h_ss > 0: compare the distances themselves
                    better = np.abs(b[0]) > np.abs(a[0])
                else:
                    better = np.einsum("in,in->n", b, h_ss @ b) > np.einsum("in,in->n", a, h_ss @ a)
                if not better.any():
                    continue
                quant[c0:c1] = np.where(better, new, quant[c0:c1])
                delta = quant[c0:c1] - old  # exact: differences of float32 values in float64
                err[c0:c1] -= delta
                if c1 < b1:  # the atoms after this one in the block see the change now
                    _subtract_outer(grad[c1:b1], hessian[c1:b1, c0:c1], delta)
                moved[c0 - b0 : c1 - b0] = delta
            if moved.any():
                for r0, r1 in _outside(b0, b1, d):  # in slices: a [d, n] temporary was the peak at 1 B shapes
                    grad[r0:r1] -= hessian[r0:r1, b0:b1] @ moved
                # the block's own rows still miss the changes of their atom and the atoms after it
                grad[b0:b1] -= _upper_atoms(hessian[b0:b1, b0:b1], atom) @ moved
        objective.append(float(np.einsum("ij,ij->", err, grad)))
    return objective


def quantize_with_feedback(
    codec: Codec, state: CodecState, rows: np.ndarray, stats: LayerStats, params: ErrorFeedbackParams
) -> Codes:
    """Encode the whole matrix ``rows`` [out, in] with GPTQ error feedback.

    ``state`` is what ``codec.fit`` returned (on any rows of this matrix);
    ``stats`` are the statistics of the codec's inputs (after the rotation).
    Returns the codes, which decode with ``state`` to the error-corrected
    quantized matrix; ``codes.meta["error_feedback"]`` records the damping
    used and the order.
    """
    name = _codec_name(codec)
    if not getattr(codec, "quantizes_columns", False):
        raise ErrorFeedbackError(f"codec {name!r} cannot quantize a block of columns (error_feedback)", codec=name)
    w = np.ascontiguousarray(rows, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"error feedback expects 2-D rows [n_rows, row_dim]; got shape {w.shape}")
    n, d = w.shape
    h = np.asarray(stats.hessian)
    if h.shape != (d, d):
        raise ErrorFeedbackError(f"layer statistics are {h.shape[0]}-wide but the rows are {d}-wide", codec=name)
    if params.refit and not getattr(codec, "refits_scales", False):
        raise ErrorFeedbackError(f"codec {name!r} cannot refit its scales (error_feedback.refit)", codec=name)
    bound = codec.bind_rows(state, w, stats=stats)
    atom = int(codec.column_atom(bound))
    if atom < 1 or d % atom:
        raise ErrorFeedbackError(f"codec {name!r}: column atom {atom} does not divide the row width {d}", codec=name)
    n_atoms = d // atom
    diag = np.diagonal(h).astype(np.float64)
    if params.act_order:
        # stable: equal importance keeps column order, so the run is deterministic
        order = np.argsort(-diag.reshape(n_atoms, atom).sum(axis=1), kind="stable")
    else:
        order = np.arange(n_atoms)
    perm = (order[:, None] * atom + np.arange(atom)[None, :]).reshape(-1)
    try:
        upper, damp_used = inverse_cholesky(h[np.ix_(perm, perm)], params.damp, overwrite=True)
    except ValueError as exc:
        raise ErrorFeedbackError(str(exc), codec=name) from exc

    # Transposed: column j of the weights is row j here, so every update
    # below runs over contiguous memory.
    work = np.ascontiguousarray(w.T[perm], dtype=np.float64)  # [d, n]
    quant = np.empty((d, n), dtype=np.float32)
    width = max(atom, (int(params.block) // atom) * atom)
    for b0 in range(0, d, width):
        b1 = min(b0 + width, d)
        block = work[b0:b1]  # a view: updates inside the block land in work
        errors = np.empty((b1 - b0, n))
        for j in range(0, b1 - b0, atom):
            c0, c1 = b0 + j, b0 + j + atom
            q = _quantize_atom(codec, bound, block[j : j + atom], int(order[c0 // atom]) * atom)
            quant[c0:c1] = q.T
            diff = block[j : j + atom] - q.T
            if atom == 1:
                err = diff / upper[c0, c0]
            else:  # U_SS^T E^T = diff^T, U_SS upper triangular
                err = np.linalg.solve(upper[c0:c1, c0:c1].T, diff)
            errors[j : j + atom] = err
            block[j + atom :] -= upper[c0:c1, c1:b1].T @ err
        work[b1:] -= upper[b0:b1, b1:].T @ errors
    del upper, work
    block = None  # a view of work: dropping it frees work before the descent
    descent = None
    if params.cd_passes:
        hp = damped_hessian(h[np.ix_(perm, perm)], damp_used, overwrite=True)
        err = np.ascontiguousarray(w.T[perm], dtype=np.float64)
        err -= quant
        descent = _descend(codec, bound, err, quant, hp, order, atom, width, params.cd_passes)
        del hp, err

    w_hat = np.empty((n, d), dtype=np.float32)
    w_hat[:, perm] = quant.T
    codes = codec.encode(bound, w_hat, stats=stats) if getattr(codec, "takes_stats", False) else codec.encode(bound, w_hat)
    back = codec.decode(state, codes)
    if back.shape != w_hat.shape or not np.array_equal(back, w_hat):
        bad = int(np.sum(back != w_hat)) if back.shape == w_hat.shape else w_hat.size
        raise ErrorFeedbackError(
            f"codec {name!r}: encode of the error-corrected columns does not reproduce them "
            f"({bad} of {w_hat.size} weights differ): its quantize_columns and encode disagree",
            codec=name,
        )
    if params.refit:
        h_damped = np.array(h, dtype=np.float64)
        h_damped[np.diag_indices(d)] += damp_used * float(np.mean(diag)) if d else 0.0
        codes = codec.refit_scales(state, codes, w, h_damped)
    meta = {
        "damp": damp_used,
        "block": width,
        "act_order": bool(params.act_order),
        "refit": bool(params.refit),
        "column_atom": atom,
        "dead_inputs": int(np.sum(diag <= 0)),
    }
    if descent is not None:  # the objective sum_rows e^T H e before and after each pass
        meta["cd_passes"] = params.cd_passes
        meta["cd_objective"] = descent
    return attrs.evolve(codes, meta={**codes.meta, "error_feedback": meta})
