"""Shared product-quantization helpers: splits, runs, lane-width storage."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from helix_jit.lanes import LaneWidth


def split_widths(d: int, M: int) -> tuple[int, ...]:
    """Subspace widths for splitting ``d`` columns into ``M`` subspaces.

    The first ``d % M`` subspaces get one extra column; no column is dropped:
    ``split_widths(10, 4) == (3, 3, 2, 2)``.
    """
    if M < 1 or d < M:
        raise ValueError(f"cannot split {d} columns into {M} subspaces")
    base, extra = divmod(d, M)
    return tuple(base + 1 if m < extra else base for m in range(M))


def runs_of(widths: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """Consecutive equal widths as (count, width): the IR emits one loop per run."""
    out: list[list[int]] = []
    for w in widths:
        if out and out[-1][1] == w:
            out[-1][0] += 1
        else:
            out.append([1, w])
    return tuple((c, w) for c, w in out)


def to_bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), round to nearest even (NaN-free input)."""
    b = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    rounded = b + (np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1)))
    return (rounded >> np.uint32(16)).astype(np.uint16)


def from_bf16_bits(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def round_bf16(a: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (as float32)."""
    return from_bf16_bits(to_bf16_bits(a))


def u8_params(codebook: np.ndarray) -> tuple[np.float32, np.float32]:
    """Affine uint8 grid of one subspace from its codebook's min/max only: (lo, scale)."""
    lo = np.float32(codebook.min()) if codebook.size else np.float32(0)
    hi = np.float32(codebook.max()) if codebook.size else np.float32(0)
    scale = np.float32((hi - lo) / np.float32(255))
    if not scale > 0:
        scale = np.float32(1)
    return lo, scale


def u8_quantize(v: np.ndarray, lo: np.float32, inv: np.float32) -> np.ndarray:
    """rint(clip((v - lo) * inv, 0, 255)) in float32: the kernels do the same ops."""
    t = (v.astype(np.float32, copy=False) - np.float32(lo)) * np.float32(inv)
    return np.rint(np.clip(t, np.float32(0), np.float32(255)))


def check_codebooks(codebooks: Sequence[np.ndarray], d: int | None = None) -> tuple[int, tuple[int, ...]]:
    if len(codebooks) == 0:
        raise ValueError("at least one codebook is needed")
    ks = {int(c.shape[0]) for c in codebooks}
    if len(ks) != 1:
        raise ValueError(f"all codebooks must have the same number of centroids, got {sorted(ks)}")
    K = ks.pop()
    if not 1 <= K <= 65536:
        raise ValueError(f"centroid count {K} outside 1..65536")
    widths = tuple(int(c.shape[1]) for c in codebooks)
    if min(widths) < 1:
        raise ValueError("subspace widths must be >= 1")
    if d is not None and sum(widths) != d:
        raise ValueError(f"codebook widths sum to {sum(widths)}, rows have {d} columns")
    return K, widths


def code_dtype(K: int) -> type:
    return np.uint8 if K <= 256 else np.uint16


def lw_of(lane_width: LaneWidth | str) -> LaneWidth:
    return LaneWidth.parse(lane_width)
