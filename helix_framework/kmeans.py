"""Seeded k-means (k-means++ then Lloyd), shared by codecs and rotations.

One call trains the codebooks of one or many subspaces of the same rows at
once (product quantization): every Lloyd step runs a single
``helix_jit.pq_assign`` over all subspaces, so ``HELIX_JIT_DISABLE=1``
switches the hot loop to the numpy reference like every other kernel.

What it guarantees:

- **True centroid count.** ``k_eff = min(k, distinct training vectors)``
  (the minimum over the subspaces trained together, because one kernel call
  needs one centroid count). Nothing is ever zero-filled: a codebook with
  fewer real centroids than asked is returned with fewer rows.
- **Deterministic for a seed.** All randomness comes from the caller's
  ``numpy.random.Generator``; sums are accumulated in float64 in a fixed
  order.
- **k-means++ initialisation on a subsample.** D^2 sampling costs
  O(k * n * w) in k sequential steps, so the seeding runs on at most
  ``init_points_per_centroid * k`` points (default 32 per centroid) drawn
  without replacement; Lloyd then uses every point. FAISS subsamples its
  whole training to 256 points per centroid; for seeding alone 32 is
  plenty, and at 256 seeding a shared 256-centroid codebook cost 0.25 s
  per residual stage.
- **Lloyd until converged.** Each subspace stops when the relative change of
  its inertia falls under ``tol`` (``|prev - cur| <= tol * prev``) or after
  ``max_iter`` centroid updates; a converged subspace is frozen while the
  others continue.
- **Empty clusters are re-seeded from the largest cluster**: a point of the
  largest cluster (one not sitting on its centroid, chosen with the rng)
  becomes the empty centroid and leaves that cluster, which is then
  recomputed, as FAISS splits its largest cluster.
- **Training assignments in float32 with a float64 tie rule** (lane width
  F32x16, ``pq_assign(..., exact=True)``): the float32 search reports how
  close the runner-up was, and every near tie within float32 rounding is
  re-decided in float64, so the codes are those of a float64 search whether
  the jit or ``HELIX_JIT_DISABLE=1`` computed them, and a JIT run and a
  reference run train the same codebooks (a near tie flipped during training
  would move two centroids and change everything after it). The inertia,
  the tolerance test and the centroid update are float64 functions of those
  codes alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import numpy as np

import helix_jit
from helix_jit.kernels.kmeanspp import kmeanspp_draws, sq_distances
from helix_jit.lanes import LaneWidth

__all__ = [
    "KMeansResult",
    "distinct_count",
    "kmeans",
    "kmeans_subspaces",
    "weighted_assign",
    "weighted_lloyd",
    "FAISS_MIN_POINTS_PER_CENTROID",
]

#: FAISS warns below this many training points per centroid.
FAISS_MIN_POINTS_PER_CENTROID = 39


@attrs.frozen
class KMeansResult:
    """Trained codebooks of one or more subspaces.

    ``centroids``: one float32 [k_eff, w_m] array per subspace;
    ``inertia``: final sum of squared distances per subspace (float64);
    ``iterations``: centroid updates done per subspace; ``converged``: per
    subspace, whether the tolerance was met before ``max_iter``;
    ``reseeded``: empty clusters re-seeded, over all subspaces and steps;
    ``codes``: [n, M] nearest centroid of every training row under the
    returned centroids (the last Lloyd assignment; callers reuse it instead
    of assigning again).
    """

    centroids: tuple[np.ndarray, ...] = attrs.field(repr=False)
    k_requested: int
    k_eff: int
    inertia: tuple[float, ...]
    iterations: tuple[int, ...]
    converged: tuple[bool, ...]
    reseeded: int = 0
    codes: np.ndarray | None = attrs.field(default=None, repr=False, eq=False)

    @property
    def codebook(self) -> np.ndarray:
        """The codebook of a single-subspace run."""
        if len(self.centroids) != 1:
            raise ValueError(f"{len(self.centroids)} subspaces; use .centroids")
        return self.centroids[0]


def distinct_count(x: np.ndarray, limit: int | None = None) -> int:
    """Number of distinct rows of ``x`` (by value: -0.0 equals 0.0).

    With ``limit``, counting may stop once ``limit`` distinct rows are seen
    (the result is then ``limit``): growing prefixes are checked first, so
    data without many duplicates costs one small sort.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = x.shape[0]
    if n == 0:
        return 0
    size = n if limit is None else min(n, max(2 * limit, 1024))
    while True:
        part = x[:size] + np.float32(0.0)  # -0.0 + 0.0 == +0.0: compare values, not bits
        keys = np.ascontiguousarray(part).view(np.dtype((np.void, 4 * x.shape[1]))).ravel()
        count = int(np.unique(keys).size)
        if limit is not None and count >= limit:
            return int(limit)
        if size == n:
            return count
        size = min(n, size * 4)


def kmeans(
    x: np.ndarray,
    k: int,
    rng: np.random.Generator,
    *,
    max_iter: int = 25,
    tol: float = 1e-4,
    init: np.ndarray | None = None,
    lane_width: LaneWidth | str = LaneWidth.F32x16,
    init_points_per_centroid: int = 32,
) -> KMeansResult:
    """k-means of the rows of ``x`` (float32 [n, w]) into at most ``k`` centroids.

    ``init``: starting centroids [k_eff, w] (hot start) instead of k-means++.
    Returns a `KMeansResult`; ``result.codebook`` is float32 [k_eff, w].
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"kmeans: expected 2-D rows [n, w]; got shape {x.shape}")
    return kmeans_subspaces(
        x,
        (x.shape[1],),
        k,
        rng,
        max_iter=max_iter,
        tol=tol,
        init=None if init is None else [init],
        lane_width=lane_width,
        init_points_per_centroid=init_points_per_centroid,
    )


def kmeans_subspaces(
    x: np.ndarray,
    widths: Sequence[int],
    k: int,
    rng: np.random.Generator,
    *,
    max_iter: int = 25,
    tol: float = 1e-4,
    init: Sequence[np.ndarray] | None = None,
    lane_width: LaneWidth | str = LaneWidth.F32x16,
    init_points_per_centroid: int = 32,
) -> KMeansResult:
    """Independent k-means of each column block of ``x`` (float32 [n, d]).

    ``widths``: the subspace widths, summing to d (uneven allowed). All
    subspaces get the same ``k_eff`` (see the module docstring) and share the
    Lloyd loop, one ``pq_assign`` call per step.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    widths = tuple(int(w) for w in widths)
    if x.ndim != 2 or sum(widths) != x.shape[1] or min(widths, default=0) < 1:
        raise ValueError(f"kmeans: widths {widths} do not split rows of shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("kmeans: training rows contain NaN or infinite values")
    if int(k) < 1:
        raise ValueError(f"kmeans: k must be >= 1, got {k}")
    if max_iter < 0 or tol < 0:
        raise ValueError("kmeans: max_iter and tol must be >= 0")
    n = x.shape[0]
    if n == 0:
        raise ValueError("kmeans: no training rows")
    offsets = np.concatenate([[0], np.cumsum(widths)]).astype(np.intp)
    cols = [slice(int(offsets[m]), int(offsets[m + 1])) for m in range(len(widths))]
    if init is not None:
        cents = [np.array(c, dtype=np.float32, copy=True) for c in init]
        k_eff = cents[0].shape[0] if cents else 0
        if len(cents) != len(widths) or any(c.shape != (k_eff, w) for c, w in zip(cents, widths)) or k_eff < 1:
            raise ValueError(f"kmeans: init must be {len(widths)} arrays [k, w_m] for widths {widths}")
    else:
        k_eff = min(int(k), min(distinct_count(x[:, c], limit=int(k)) for c in cols))
        cents = _kmeans_pp(x, cols, offsets, k_eff, rng, init_points_per_centroid)
    return _lloyd(x, cols, cents, int(k), k_eff, rng, max_iter, float(tol), LaneWidth.parse(lane_width))


# -- k-means++ -------------------------------------------------------------------


def _kmeans_pp(
    x: np.ndarray, cols: list[slice], offsets: np.ndarray, k: int, rng: np.random.Generator, per_centroid: int
) -> list[np.ndarray]:
    """D^2 seeding of every subspace at once, on a subsample of the rows.

    A step costs a few float32 passes over the subsample for all subspaces
    (`_sq_distances`); the draw itself uses float64 running sums.
    """
    n, M, d = x.shape[0], len(cols), x.shape[1]
    n_init = min(n, max(1, int(per_centroid)) * k)
    idx = np.sort(rng.choice(n, size=n_init, replace=False)) if n_init < n else np.arange(n)
    xs = np.ascontiguousarray(x[idx])
    cents = [np.empty((k, c.stop - c.start), np.float32) for c in cols]
    if M * n_init * n_init <= _PAIRWISE_LIMIT:
        return _kmeans_pp_pairwise(x, xs, cols, cents, k, rng)
    if M == 1:
        cents[0][:] = _kmeans_pp_single(x, xs, k, rng)
        return cents
    starts = offsets[:-1]
    xn2 = np.add.reduceat(xs * xs, starts, axis=1).T.copy()  # [M, n_init]
    d2 = np.full((M, n_init), np.inf, np.float32)
    near_tol = np.float32(64 * max(int(w) for w in np.diff(offsets)) * np.finfo(np.float32).eps)
    for j in range(k):
        if j == 0:
            pick = rng.integers(0, n_init, size=M)
        else:
            cum = np.cumsum(d2, axis=1, dtype=np.float64)  # float64 running sums: the draw's resolution
            u = rng.random(M) * cum[:, -1]
            pick = np.array(
                [min(int(np.searchsorted(cum[m], u[m], side="right")), n_init - 1) if cum[m, -1] > 0 else -1
                 for m in range(M)],
                dtype=np.intp,
            )
        c = np.empty(d, np.float32)
        for m, sl in enumerate(cols):
            if pick[m] >= 0:
                cents[m][j] = xs[pick[m], sl]
            else:
                # The subsample has run out of distinct points (heavy duplicates):
                # take the first point of the full set, in a seeded order, that
                # differs from every centroid so far. One exists since k <= distinct.
                cents[m][j] = _unseen_point(x[:, sl], cents[m][:j], rng)
            c[sl] = cents[m][j]
        if j + 1 < k:
            d_new = _sq_distances(xs, xn2, c, starts, near_tol)
            np.minimum(d2, d_new, out=d2)
    return cents


def _kmeans_pp_single(x: np.ndarray, xs: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """D^2 seeding of one subspace (the shared-codebook case, the hot one):
    the k sequential draws run in one ``kmeanspp_draws`` kernel call (numpy
    reference under ``HELIX_JIT_DISABLE=1``, the same picks).

    Distances are float32 sums of squared differences, so duplicates of a
    chosen point have D = 0 and are never drawn again. When the subsample
    runs out of distinct points the kernel stops and the next centroid comes
    from the full set (`_unseen_point`), as in `_kmeans_pp`.
    """
    n = xs.shape[0]
    xt = np.ascontiguousarray(xs.T)
    cents = np.empty((k, xs.shape[1]), np.float32)
    pick = int(rng.integers(0, n, size=1)[0])
    cents[0] = xs[pick]
    u = np.empty(k)
    u[1:] = rng.random(k - 1)
    picks = np.full(k, -1, np.int64)
    d2 = sq_distances(xt, cents[0])
    j = 1
    while j < k:
        stop = kmeanspp_draws(xt, d2, u, picks, j, k)
        cents[j:stop] = xs[picks[j:stop]]
        if stop == k:
            break
        cents[stop] = _unseen_point(x, cents[:stop], rng)
        np.minimum(d2, sq_distances(xt, cents[stop]), out=d2)
        j = stop + 1
    return cents


def _sq_distances(xs: np.ndarray, xn2: np.ndarray, c: np.ndarray, starts: np.ndarray, near_tol: np.float32) -> np.ndarray:
    """[M, n] squared distances of the rows of ``xs`` to ``c`` per subspace, float32.

    ||x||^2 + ||c||^2 - 2 x.c (one pass for all subspaces); values within
    rounding of zero are recomputed as sums of squared differences, so
    duplicates of ``c`` get exactly 0 and are never drawn again.
    """
    cn2 = np.add.reduceat(c * c, starts)[:, None]
    d_new = (xn2 + cn2) - np.float32(2) * np.add.reduceat(xs * c, starts, axis=1).T
    m_idx, i_idx = np.nonzero(d_new <= near_tol * (xn2 + cn2))
    if i_idx.size:
        diff = np.square(xs[i_idx] - c)
        d_new[m_idx, i_idx] = np.add.reduceat(diff, starts, axis=1)[np.arange(i_idx.size), m_idx]
    return np.maximum(d_new, np.float32(0), out=d_new)


_PAIRWISE_LIMIT = 8_000_000  # float64 entries (64 MB) of the per-subspace distance matrices


def _kmeans_pp_pairwise(
    x: np.ndarray, xs: np.ndarray, cols: list[slice], cents: list[np.ndarray], k: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """D^2 seeding from precomputed pairwise distances (small subsamples).

    Same draws as the streaming version (one rng.integers, then one
    rng.random(M) per step), but a step is a row lookup instead of a matrix
    product: the starved 6 x 256 baseline spent a second per matrix here.
    """
    M, n = len(cols), xs.shape[0]
    dist = np.stack([_pairwise_sq(xs[:, sl]) for sl in cols])  # [M, n, n]
    rows = np.arange(M)
    pick = rng.integers(0, n, size=M)
    d2 = dist[rows, pick].copy()
    for m, sl in enumerate(cols):
        cents[m][0] = xs[pick[m], sl]
    for j in range(1, k):
        cum = np.cumsum(d2, axis=1)
        u = rng.random(M) * cum[:, -1]
        pick = np.minimum((cum <= u[:, None]).sum(axis=1), n - 1)  # searchsorted(side="right")
        exhausted = cum[:, -1] <= 0
        for m, sl in enumerate(cols):
            if exhausted[m]:
                cents[m][j] = _unseen_point(x[:, sl], cents[m][:j], rng)
                d_new = ((xs[:, sl].astype(np.float64) - cents[m][j]) ** 2).sum(axis=1)
                np.minimum(d2[m], d_new, out=d2[m])
            else:
                cents[m][j] = xs[pick[m], sl]
        live = ~exhausted
        d2[live] = np.minimum(d2[live], dist[rows[live], pick[live]])
    return cents


def _pairwise_sq(a: np.ndarray) -> np.ndarray:
    """Squared distances between rows, float64; pairs within rounding of zero
    are recomputed exactly so duplicate points really are at distance 0."""
    a = a.astype(np.float64)
    n2 = (a * a).sum(axis=1)
    dist = n2[:, None] + n2[None, :] - 2.0 * (a @ a.T)
    i, j = np.nonzero(dist <= 1e-9 * (n2[:, None] + n2[None, :]))
    dist[i, j] = ((a[i] - a[j]) ** 2).sum(axis=1)
    return np.maximum(dist, 0.0, out=dist)


def _unseen_point(xm: np.ndarray, have: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    order = rng.permutation(xm.shape[0])
    for i in order:
        if not np.any(np.all(have == xm[i], axis=1)):
            return xm[i].astype(np.float64)
    raise AssertionError("kmeans: fewer distinct points than centroids")  # k <= distinct makes this unreachable


# -- Lloyd -------------------------------------------------------------------------


def _lloyd(
    x: np.ndarray,
    cols: list[slice],
    cents: list[np.ndarray],
    k_req: int,
    k: int,
    rng: np.random.Generator,
    max_iter: int,
    tol: float,
    lw: LaneWidth,
) -> KMeansResult:
    M = len(cols)
    active = np.ones(M, dtype=bool)
    converged = np.zeros(M, dtype=bool)
    iters = np.zeros(M, dtype=np.int64)
    prev = np.full(M, np.nan)
    final = np.zeros(M)
    reseeded = 0
    # float64 columns per subspace, [w, n]: contiguous weights for np.bincount
    xt = [np.ascontiguousarray(x[:, c].T, dtype=np.float64) for c in cols]
    xx = [float(np.einsum("ij,ij->", t, t)) for t in xt]
    codes = np.zeros((x.shape[0], M), np.uint8 if k <= 256 else np.uint16)
    for it in range(max_iter + 1):
        live = np.flatnonzero(active)
        # a frozen subspace keeps its codes; the others are assigned in one call
        if live.size == M:
            codes = _assign(x, cents, lw)
        else:
            sub = np.ascontiguousarray(np.concatenate([x[:, cols[m]] for m in live], axis=1))
            codes[:, live] = _assign(sub, [cents[m] for m in live], lw)
        for m in live:
            lab = codes[:, m].astype(np.intp)
            sums, counts = _cluster_sums(lab, xt[m], k), np.bincount(lab, minlength=k).astype(np.float64)
            cur = _inertia(xx[m], cents[m], sums, counts)
            if it > 0 and abs(prev[m] - cur) <= tol * prev[m]:
                converged[m] = True
            if converged[m] or it == max_iter or cur == 0.0:
                converged[m] |= cur == 0.0
                active[m] = False
                final[m] = cur
                continue
            prev[m] = cur
            cents[m], r = _update(xt[m], lab, sums, counts, cents[m], rng)
            reseeded += r
            iters[m] += 1
        if not active.any():
            break
    return KMeansResult(
        centroids=tuple(np.ascontiguousarray(c, dtype=np.float32) for c in cents),
        k_requested=k_req,
        k_eff=k,
        inertia=tuple(float(v) for v in final),
        iterations=tuple(int(v) for v in iters),
        converged=tuple(bool(v) for v in converged),
        reseeded=reseeded,
        codes=codes,
    )


def _assign(x: np.ndarray, cents: list[np.ndarray], lw: LaneWidth) -> np.ndarray:
    """Codes [n, M]: float32 with the float64 tie rule, or the lane width asked for."""
    if lw is LaneWidth.F32x16:
        return helix_jit.pq_assign(x, cents, lw, exact=True)
    return helix_jit.pq_assign(x, cents, lw)


def _inertia(xx: float, cent: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> float:
    """Sum of squared distances of the rows to their assigned centroids,
    sum ||x||^2 - 2 sum_k c_k . S_k + sum_k n_k ||c_k||^2 in float64 from the
    cluster sums S_k and counts n_k (a function of the codes alone, so it does
    not depend on which path computed them). Within 1e-12 of ``xx`` counts
    as 0: every row sits on its centroid."""
    c = cent.astype(np.float64)
    cur = xx - 2.0 * float(np.einsum("kj,kj->", c, sums)) + float(counts @ np.einsum("kj,kj->k", c, c))
    return 0.0 if cur <= 1e-12 * xx else cur


def _cluster_sums(labels: np.ndarray, columns: np.ndarray, k: int) -> np.ndarray:
    """[k, w] float64 sums per label of the rows whose coordinates are
    ``columns`` [w, n] (``np.bincount`` per coordinate: a fixed order)."""
    lab = labels.astype(np.intp, copy=False)
    return np.stack([np.bincount(lab, weights=col, minlength=k) for col in columns], axis=1)


def _update(
    xt: np.ndarray, lab: np.ndarray, sums: np.ndarray, counts: np.ndarray, old: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """New centroids = cluster means from ``sums`` / ``counts``; empty clusters
    re-seeded. ``xt``: float64 [w, n] columns; returns float32 centroids."""
    sums, counts = sums.copy(), counts.copy()
    empty = np.flatnonzero(counts == 0)
    new = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], old.astype(np.float64))
    if empty.size:
        members = {}
        for e in empty:
            # Largest clusters first (ties: lowest index); take a point that is
            # not on its centroid, so the split really separates points.
            for big in np.argsort(-counts, kind="stable"):
                if counts[big] < 2:
                    break
                if big not in members:
                    members[big] = np.flatnonzero(lab == big)
                mem = members[big]
                off = np.flatnonzero(np.any(xt[:, mem].T.astype(np.float32) != new[big].astype(np.float32), axis=1))
                if off.size == 0:
                    continue
                i = mem[off[rng.integers(0, off.size)]]
                p = xt[:, i]
                new[e] = p
                sums[big] -= p
                counts[big] -= 1
                counts[e] = 1
                members[big] = mem[mem != i]
                new[big] = sums[big] / counts[big]
                break
    return new.astype(np.float32), int(empty.size)


# -- per-coordinate weights --------------------------------------------------------

#: Vectors per chunk of the weighted distance tables (bounds memory at K=65536).
_CHUNK = 4096


def weighted_assign(x: np.ndarray, weights: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels, distances): nearest centroid of each row of ``x`` [n, w] under
    ``sum_j weights[i, j] (x[i, j] - c[j])^2`` (float64; ties to the lowest index).
    ``weights`` is [n, w] or [w]."""
    x = np.asarray(x, dtype=np.float64)
    a = np.broadcast_to(np.asarray(weights, dtype=np.float64), x.shape)
    c = np.asarray(centroids, dtype=np.float64)
    labels = np.empty(x.shape[0], dtype=np.int64)
    dist = np.empty(x.shape[0])
    # sum_j a (x - c)^2 = sum_j a x^2 + [a, a x] . [c^2, -2 c]: one product per chunk
    rhs = np.concatenate([c * c, -2.0 * c], axis=1).T
    for i in range(0, x.shape[0], _CHUNK):
        xa, aa = x[i : i + _CHUNK], a[i : i + _CHUNK]
        d = np.concatenate([aa, aa * xa], axis=1) @ rhs
        lab = np.argmin(d, axis=1)
        labels[i : i + _CHUNK] = lab
        dist[i : i + _CHUNK] = np.maximum(d[np.arange(d.shape[0]), lab] + (aa * xa * xa).sum(axis=1), 0.0)
    return labels, dist


def weighted_lloyd(
    x: np.ndarray, weights: np.ndarray, centroids: np.ndarray, *, max_iter: int = 25, tol: float = 1e-4
) -> np.ndarray:
    """Refine ``centroids`` [k, w] by Lloyd steps under per-coordinate weights.

    Each row ``x[i]`` [n, w] has its own weights ``weights[i]`` (for a
    codebook shared by subspaces whose inputs differ in importance): the
    assignment minimises the weighted distance (`weighted_assign`) and each
    centroid coordinate becomes the weighted mean of its members,
    ``sum_i a_ij x_ij / sum_i a_ij``. A coordinate none of whose members has
    weight (or an empty cluster) keeps its value. Stops when the weighted
    inertia changes by at most ``tol`` relatively. Returns float32 centroids.
    """
    x = np.asarray(x, dtype=np.float64)
    a = np.broadcast_to(np.asarray(weights, dtype=np.float64), x.shape)
    c = np.array(centroids, dtype=np.float64, copy=True)
    k = c.shape[0]
    prev = None
    for _ in range(int(max_iter)):
        labels, dist = weighted_assign(x, a, c)
        cur = float(dist.sum())
        if prev is not None and abs(prev - cur) <= tol * prev:
            break
        prev = cur
        num, den = _cluster_sums(labels, (a * x).T, k), _cluster_sums(labels, a.T, k)
        c = np.where(den > 0, num / np.where(den > 0, den, 1.0), c)
    return c.astype(np.float32)
