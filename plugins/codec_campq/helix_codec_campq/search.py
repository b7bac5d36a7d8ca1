"""Beam search over residual stages (FAISS ResidualQuantizer's encoder), in numpy.

Greedy residual encoding takes the nearest centroid of each stage in turn;
a beam of B keeps, after every stage, the B partial encodings (of the
B x K extensions of the previous beam) with the least remaining error, and
returns the best at the end (B = 1 is greedy). Distances may be weighted
per coordinate (``sum_j a_j (r_j - c_j)^2``): the layer's input importance.
Everything is float64; ties keep the lowest (beam, centroid) index, so the
result is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["beam_step", "beam_search"]

#: Vectors per chunk, so the [vectors, beam, K] distance table stays small.
_CHUNK = 2048


def beam_step(
    resid: np.ndarray, err: np.ndarray, codebook: np.ndarray, beam: int, weights: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One stage: (parent beam index [n, B'], centroid [n, B'], new residuals
    [n, B', w], new errors [n, B']) from residuals [n, B, w] and their errors [n, B]."""
    n, b, w = resid.shape
    c = np.asarray(codebook, dtype=np.float64)
    k = c.shape[0]
    nb = min(int(beam), b * k)
    parent = np.empty((n, nb), dtype=np.int64)
    cent = np.empty((n, nb), dtype=np.int64)
    new_err = np.empty((n, nb))
    for i in range(0, n, _CHUNK):
        r = resid[i : i + _CHUNK]
        m = r.shape[0]
        # ||r - c||^2_a = err + [a, a r] . [c^2, -2 c]: one product per chunk
        a = np.ones((m, 1, w)) if weights is None else weights[i : i + _CHUNK][:, None, :]
        lhs = np.concatenate([np.broadcast_to(a, r.shape), a * r], axis=2)
        rhs = np.concatenate([c * c, -2.0 * c], axis=1).T
        d = (lhs.reshape(m * b, 2 * w) @ rhs).reshape(m, b, k) + err[i : i + _CHUNK][:, :, None]
        flat = d.reshape(m, b * k)
        if nb == 1:
            top = np.argmin(flat, axis=1)[:, None]
        else:
            part = np.argpartition(flat, nb - 1, axis=1)[:, :nb]
            # sort the kept ones by (distance, index): deterministic ties
            vals = np.take_along_axis(flat, part, axis=1)
            order = np.lexsort((part, vals), axis=1)
            top = np.take_along_axis(part, order, axis=1)
        parent[i : i + _CHUNK], cent[i : i + _CHUNK] = np.divmod(top, k)
        new_err[i : i + _CHUNK] = np.take_along_axis(flat, top, axis=1)
    rows = np.arange(n)[:, None]
    new_resid = resid[rows, parent] - c[cent]
    if weights is None:
        new_err = np.einsum("nbw,nbw->nb", new_resid, new_resid)  # exact, not the expanded form
    else:
        new_err = np.einsum("nbw,nbw,nw->nb", new_resid, new_resid, weights)
    return parent, cent, new_resid, new_err


def beam_search(
    target: np.ndarray, codebooks: Sequence[np.ndarray], beam: int, weights: np.ndarray | None = None
) -> np.ndarray:
    """Codes [n, stages] of ``target`` [n, w] over the stage ``codebooks``
    ([K_s, w] each), keeping ``beam`` partial encodings per vector.
    ``weights``: [n, w] or [w] per-coordinate weights, or None."""
    t = np.asarray(target, dtype=np.float64)
    n, w = t.shape
    a = None if weights is None else np.ascontiguousarray(np.broadcast_to(np.asarray(weights, np.float64), (n, w)))
    resid = t[:, None, :]
    err = (np.einsum("nw,nw->n", t, t) if a is None else np.einsum("nw,nw,nw->n", t, t, a))[:, None]
    codes = np.zeros((n, 1, 0), dtype=np.int64)
    rows = np.arange(n)[:, None]
    for cb in codebooks:
        parent, cent, resid, err = beam_step(resid, err, cb, beam, a)
        codes = np.concatenate([codes[rows, parent], cent[:, :, None]], axis=2)
    best = np.argmin(err, axis=1)
    return codes[np.arange(n), best]
