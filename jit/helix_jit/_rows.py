"""Splitting rows over threads (the compiled kernels release the GIL)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

_pool: ThreadPoolExecutor | None = None
_CPUS = os.cpu_count() or 1  # read once: each call of os.cpu_count() costs tens of microseconds


def threads() -> int:
    """Worker threads: ``$HELIX_JIT_THREADS`` or min(2, cpu count).

    Raises ValueError, naming the variable, when it is set to anything but a
    positive integer (an empty value counts as unset)."""
    env = os.environ.get("HELIX_JIT_THREADS", "").strip()
    if not env:
        return max(1, min(2, _CPUS))
    if not env.isdecimal() or int(env) < 1:
        raise ValueError(f"HELIX_JIT_THREADS must be a positive integer (threads per kernel call); got {env!r}")
    return int(env)


#: Chunks per thread: a thread that gets descheduled (a loaded machine)
#: holds back at most one small chunk instead of half the rows.
_CHUNKS_PER_THREAD = 4


def run_rows(n: int, work_per_row: float, call: Callable[[int, int, int], None], min_work: float = 4e6) -> None:
    """Run ``call(start, stop, worker)`` over row chunks, in parallel when it pays.

    work_per_row: a rough cost (e.g. flops) so calls under ``min_work`` (a
    few tens of microseconds of work) run directly, skipping the thread
    hand-off. Larger calls split into ``_CHUNKS_PER_THREAD`` chunks per
    thread that the caller's thread and the workers take in turn.
    """
    t = threads()
    if t == 1 or n < 2 or n * work_per_row < min_work:
        call(0, n, 0)
        return
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=t, thread_name_prefix="helix-jit")
    chunks = min(n, _CHUNKS_PER_THREAD * t)
    bounds = [n * i // chunks for i in range(chunks + 1)]
    taken = itertools.count()  # next() on a count is atomic under the GIL

    def drain(worker: int) -> None:
        for i in taken:
            if i >= chunks:
                return
            call(bounds[i], bounds[i + 1], worker)

    futs = [_pool.submit(drain, w) for w in range(1, t)]
    drain(0)  # the caller's thread takes chunks too
    for f in futs:
        f.result()
