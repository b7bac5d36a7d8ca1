"""helix-jit: llvmlite kernels for helix-framework codecs.

Importing this package is cheap: the kernels (and numpy) load on first
attribute access, and llvmlite only when a kernel is first compiled.

Kernels (numpy arrays in, numpy out):

- :func:`pq_assign` (encode / k-means assign), :func:`pq_decode`,
  :func:`adc_matvec` (+ :func:`adc_error_bound`), :func:`fwht`,
  :func:`kmeanspp_draws` (k-means++ seeding), :func:`grid_errors` (a
  scalar quantizer's range search);
- their numpy references ``*_reference``;
- :func:`split_widths`, :func:`supported_lane_widths`.

Plugins declare their own kernels with :func:`declare_kernel`. The cache:
:func:`cache_stats`, :func:`clear_cache`, :func:`record_kernels`.
``HELIX_JIT_DISABLE=1`` runs the numpy references instead;
``HELIX_JIT_CACHE_DIR`` moves the on-disk cache; ``HELIX_JIT_DUMP=ir|asm``
logs the IR or assembly of each compiled kernel; ``HELIX_JIT_THREADS`` caps
the worker threads (default 2).
"""

from __future__ import annotations

import importlib
from typing import Any

from helix_jit.lanes import ALL_LANE_WIDTHS, LaneWidth

__all__ = [
    "ALL_LANE_WIDTHS",
    "CacheStats",
    "Kernel",
    "KernelUse",
    "LaneWidth",
    "adc_error_bound",
    "adc_matvec",
    "adc_matvec_reference",
    "cache_stats",
    "clear_cache",
    "declare_kernel",
    "fwht",
    "fwht_reference",
    "get_kernel",
    "grid_errors",
    "jit_disabled",
    "kmeanspp_draws",
    "pq_assign",
    "pq_assign_reference",
    "pq_decode",
    "pq_decode_reference",
    "record_kernels",
    "split_widths",
    "supported_lane_widths",
    "threads",
]

_LAZY = {
    "pq_assign": ("helix_jit.kernels.pq_assign", "pq_assign"),
    "pq_assign_reference": ("helix_jit.kernels.pq_assign", "pq_assign_reference"),
    "split_widths": ("helix_jit.kernels._pq", "split_widths"),
    "pq_decode": ("helix_jit.kernels.pq_decode", "pq_decode"),
    "pq_decode_reference": ("helix_jit.kernels.pq_decode", "pq_decode_reference"),
    "adc_matvec": ("helix_jit.kernels.adc_matvec", "adc_matvec"),
    "adc_matvec_reference": ("helix_jit.kernels.adc_matvec", "adc_matvec_reference"),
    "adc_error_bound": ("helix_jit.kernels.adc_matvec", "adc_error_bound"),
    "fwht": ("helix_jit.kernels.fwht", "fwht"),
    "fwht_reference": ("helix_jit.kernels.fwht", "fwht_reference"),
    "kmeanspp_draws": ("helix_jit.kernels.kmeanspp", "kmeanspp_draws"),
    "grid_errors": ("helix_jit.kernels.grid_errors", "grid_errors"),
    "declare_kernel": ("helix_jit.kernel", "declare_kernel"),
    "Kernel": ("helix_jit.kernel", "Kernel"),
    "jit_disabled": ("helix_jit.kernel", "jit_disabled"),
    "cache_stats": ("helix_jit.cache", "cache_stats"),
    "clear_cache": ("helix_jit.cache", "clear_cache"),
    "record_kernels": ("helix_jit.cache", "record_kernels"),
    "CacheStats": ("helix_jit.cache", "CacheStats"),
    "KernelUse": ("helix_jit.cache", "KernelUse"),
    "threads": ("helix_jit._rows", "threads"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        mod, attr = _LAZY[name]
        value = getattr(importlib.import_module(mod), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'helix_jit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def get_kernel(name: str) -> Any:
    """The declared :class:`Kernel` called ``name`` (built-in or from a plugin)."""
    from helix_jit import kernel
    from helix_jit.kernels import BUILTIN

    if name in BUILTIN:
        importlib.import_module(BUILTIN[name])
    try:
        return kernel._registry[name]
    except KeyError:
        raise KeyError(f"no kernel named {name!r} is declared") from None


def supported_lane_widths(kernel_name: str) -> tuple[LaneWidth, ...]:
    """The lane widths a kernel supports, e.g. ``supported_lane_widths("fwht")``."""
    return get_kernel(kernel_name).lane_widths
