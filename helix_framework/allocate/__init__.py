"""Mixed precision: `helix allocate` picks one candidate per tensor under a bits budget.

`estimate` measures what each candidate costs per block, `knapsack` makes the
choice, `run` drives the whole command (see its docstring).
"""

from helix_framework.allocate.run import AllocateSummary, allocate

__all__ = ["AllocateSummary", "allocate"]
