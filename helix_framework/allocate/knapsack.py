"""The multiple-choice knapsack: one option per tensor, least total cost within a bits budget.

`choose` solves it by dynamic programming over the budget in ``resolution``
units, each option's bits rounded *up* to whole units, so the choice it
returns always fits the true budget. Rounding can only cost optimality, and
by at most what ``resolution`` allows; `choose` bounds that loss with the
Lagrangian (linear-relaxation) lower bound of the exact problem, which no
choice can beat, and returns both: ``gap`` is how far from optimal the
choice can be, at most.
"""

from __future__ import annotations

import attrs
import numpy as np

from helix_framework.errors import BudgetError

__all__ = ["Choice", "choose", "lower_bound"]


@attrs.frozen
class Choice:
    """The option picked per group, its total cost and bits, and the bound."""

    picks: tuple[int, ...]
    cost: float
    bits: int
    lower_bound: float

    @property
    def gap(self) -> float:
        """Cost above the best any choice could reach (>= 0; 0 means proven optimal)."""
        return max(0.0, self.cost - self.lower_bound)


def _check(cost: np.ndarray, bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cost, bits = np.asarray(cost, dtype=np.float64), np.asarray(bits, dtype=np.int64)
    if cost.ndim != 2 or cost.shape != bits.shape or cost.size == 0:
        raise ValueError(f"cost and bits must be equal non-empty [groups, options] arrays, got {cost.shape} and {bits.shape}")
    if not np.isfinite(cost).all() or (bits < 0).any():
        raise ValueError("costs must be finite and bits non-negative")
    return cost, bits


def lower_bound(cost: np.ndarray, bits: np.ndarray, budget: int) -> float:
    """max over lambda >= 0 of sum_i min_j (cost_ij + lambda bits_ij) - lambda budget:
    the linear relaxation's optimum, below every feasible choice's cost."""
    cost, bits = _check(cost, bits)

    def dual(lam: float) -> float:
        return float((cost + lam * bits).min(axis=1).sum() - lam * budget)

    # concave in lambda: search on a log grid, then refine around the best point
    spread = max(float(np.ptp(cost)), 1e-30) / max(float(np.ptp(bits)), 1.0)
    grid = np.concatenate([[0.0], spread * np.logspace(-8, 8, 161)])
    values = [dual(lam) for lam in grid]
    i = int(np.argmax(values))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    best = values[i]
    for _ in range(100):
        m1, m2 = lo + (hi - lo) / 3, hi - (hi - lo) / 3
        f1, f2 = dual(m1), dual(m2)
        best = max(best, f1, f2)
        if f1 < f2:
            lo = m1
        else:
            hi = m2
    return best


def choose(cost: np.ndarray, bits: np.ndarray, budget: int, *, resolution: int = 50_000) -> Choice:
    """One option per row of ``cost``/``bits`` ([groups, options]) minimising
    the total cost with total bits <= ``budget``; `BudgetError` (giving the
    feasible range) if even the cheapest options do not fit."""
    cost, bits = _check(cost, bits)
    lightest, heaviest = int(bits.min(axis=1).sum()), int(bits.max(axis=1).sum())
    if budget < lightest:
        raise BudgetError(f"the budget is below the smallest mix ({lightest} bits)", low=lightest, high=heaviest,
                          budget=budget)
    if budget >= heaviest:  # everything fits: each group's cheapest option
        picks = cost.argmin(axis=1)
        return _choice(cost, bits, picks, budget)
    unit = max(1, -(-budget // resolution))
    capacity = budget // unit
    w = -(-bits // unit)  # rounded up: a choice within capacity fits the true budget
    n, k = cost.shape
    inf = np.inf
    dp = np.full(capacity + 1, inf)
    dp[0] = 0.0
    back = np.empty((n, capacity + 1), dtype=np.int16)
    for i in range(n):
        best = np.full(capacity + 1, inf)
        arg = np.zeros(capacity + 1, dtype=np.int16)
        for j in range(k):
            wj = int(w[i, j])
            if wj > capacity:
                continue
            shifted = np.full(capacity + 1, inf)
            shifted[wj:] = dp[: capacity + 1 - wj] + cost[i, j]
            better = shifted < best
            best[better], arg[better] = shifted[better], j
        dp, back[i] = best, arg
    if not np.isfinite(dp).any():  # the rounding lost the last units: the lightest mix still fits exactly
        return _choice(cost, bits, bits.argmin(axis=1), budget)
    c = int(np.argmin(dp))
    picks = np.empty(n, dtype=np.int64)
    for i in range(n - 1, -1, -1):
        picks[i] = back[i, c]
        c -= int(w[i, picks[i]])
    return _choice(cost, bits, picks, budget)


def _choice(cost: np.ndarray, bits: np.ndarray, picks: np.ndarray, budget: int) -> Choice:
    rows = np.arange(cost.shape[0])
    return Choice(tuple(int(p) for p in picks), float(cost[rows, picks].sum()), int(bits[rows, picks].sum()),
                  lower_bound(cost, bits, budget))
