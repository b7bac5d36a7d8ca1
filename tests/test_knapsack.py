"""The multiple-choice knapsack of `helix allocate` against brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from helix_framework.allocate.knapsack import choose, lower_bound
from helix_framework.errors import BudgetError


def _brute(cost, bits, budget):
    best = None
    for picks in itertools.product(range(cost.shape[1]), repeat=cost.shape[0]):
        rows = np.arange(cost.shape[0])
        b = bits[rows, picks].sum()
        c = cost[rows, picks].sum()
        if b <= budget and (best is None or c < best):
            best = c
    return best


@pytest.mark.parametrize("seed", range(12))
def test_choose_is_optimal_on_small_problems_and_never_over_budget(seed):
    rng = np.random.default_rng(seed)
    n, k = 7, 3
    bits = np.sort(rng.integers(1_000, 100_000, size=(n, k)), axis=1)
    cost = np.sort(rng.random((n, k)), axis=1)[:, ::-1].copy()  # more bits, less cost
    lo, hi = bits.min(axis=1).sum(), bits.max(axis=1).sum()
    budget = int(lo + (hi - lo) * rng.uniform(0.1, 0.9))
    exact = _brute(cost, bits, budget)
    got = choose(cost, bits, budget, resolution=200_000)
    assert got.bits <= budget
    assert got.cost == pytest.approx(exact, rel=1e-9)  # fine units: the optimum itself
    assert got.lower_bound <= exact + 1e-9 and got.gap >= 0
    coarse = choose(cost, bits, budget, resolution=50)
    assert coarse.bits <= budget and coarse.cost >= exact - 1e-9  # coarse units: feasible, maybe worse
    assert coarse.lower_bound <= exact + 1e-9


def test_lower_bound_is_the_relaxation_and_tight_when_one_option_each():
    cost = np.array([[3.0], [2.0]])
    bits = np.array([[10], [20]])
    assert lower_bound(cost, bits, 30) == pytest.approx(5.0)
    # at budget 10 the relaxation takes half of group 0's 10-bit option; a choice cannot
    cost = np.array([[2.0, 0.0], [1.0, 1.0]])
    bits = np.array([[0, 10], [5, 5]])
    assert lower_bound(cost, bits, 10) == pytest.approx(2.0, rel=1e-6)
    got = choose(cost, bits, 10)
    assert got.cost == pytest.approx(3.0) and got.gap == pytest.approx(1.0, rel=1e-6)
    assert choose(cost, bits, 15).cost == pytest.approx(1.0)


def test_a_budget_outside_the_feasible_range():
    cost = np.array([[2.0, 1.0], [2.0, 1.0]])
    bits = np.array([[10, 20], [10, 20]])
    with pytest.raises(BudgetError) as info:
        choose(cost, bits, 19)
    assert (info.value.low, info.value.high) == (20, 40)
    top = choose(cost, bits, 1000)
    assert top.picks == (1, 1) and top.gap == 0
