"""Splitting rows over threads (the compiled kernels release the GIL)."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

_pool: ThreadPoolExecutor | None = None


def threads() -> int:
    """Worker threads: ``$HELIX_JIT_THREADS`` or min(2, cpu count).

    Raises ValueError, naming the variable, when it is set to anything but a
    positive integer (an empty value counts as unset)."""
    env = os.environ.get("HELIX_JIT_THREADS", "").strip()
    if not env:
        return max(1, min(2, os.cpu_count() or 1))
    if not env.isdecimal() or int(env) < 1:
        raise ValueError(f"HELIX_JIT_THREADS must be a positive integer (threads per kernel call); got {env!r}")
    return int(env)


def run_rows(n: int, work_per_row: float, call: Callable[[int, int, int], None], min_work: float = 2e5) -> None:
    """Run ``call(start, stop, worker)`` over row chunks, in parallel when it pays.

    work_per_row: a rough cost (e.g. flops) so tiny calls skip the thread
    hand-off (tens of microseconds).
    """
    t = threads()
    if t == 1 or n < 2 or n * work_per_row < min_work:
        call(0, n, 0)
        return
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=t, thread_name_prefix="helix-jit")
    bounds = [n * i // t for i in range(t + 1)]
    futs = [_pool.submit(call, bounds[i], bounds[i + 1], i) for i in range(1, t)]
    call(bounds[0], bounds[1], 0)  # the caller's thread does the first chunk
    for f in futs:
        f.result()
