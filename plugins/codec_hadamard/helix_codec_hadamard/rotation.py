"""The hadamard rotation: seeded sign flips, then an orthonormal Hadamard transform.

For a row of length d the transform is chosen, and recorded in the state
meta (and so in the manifest), as:

- ``walsh``: d a power of two: the Walsh-Hadamard transform (Sylvester
  order), run by ``helix_jit.fwht``.
- ``kronecker``: d = K x 2^m with K the order of a known Hadamard matrix
  (Paley construction I: K = q + 1 for a prime q = 3 mod 4, e.g. 12, 20, 24,
  32, 44, 48, 60, ...; Paley construction II: K = 2(q + 1) for a prime
  q = 1 mod 4, e.g. 28, 36, 60, 76, ...; Sylvester doublings of those):
  H = kron(H_K, H_2^m) / sqrt(d), applied as ``fwht`` along the 2^m axis and
  a small K x K matmul along the K axis (QuaRot's construction: 576 = 36 x 16,
  1536 = 12 x 128). The smallest K (largest power of two) is used, and K is
  capped at `MAX_KRONECKER_ORDER` to keep the matmul small.
- ``block_diagonal``: otherwise, greedy blocks of the largest size that has
  one of the transforms above (100 = 96 + 4), each transformed on its own;
  the sign flips still cover every column.

State: the sign vector as int8 [d] (``signs``), counted at 8 bits per sign
by the default `Rotation.overhead_bits` (a few thousand bits per tensor,
about 0.005 bits per weight on a 1536 x 384 matrix). The signs are stored
rather than regenerated from the seed because numpy does not promise its
random streams stay the same across versions, and an artifact must decode
the same forever. The K x K matrix is not stored: it is an integer
construction from K alone (no randomness), rebuilt on load, so it costs
nothing.

The signs come from ``params.seed`` and the row length only (not from the
pipeline's per-tensor generator), so every tensor of a width shares them, as
in QuaRot; ``fit`` ignores the rows' values.
"""

from __future__ import annotations

import functools
import math
from typing import Any, ClassVar

import attrs
import numpy as np

import helix_jit
from helix_codec_hadamard import __version__
from helix_framework.params import codegen_false
from helix_framework.rotation import Rotation, RotationState

__all__ = [
    "HadamardParams",
    "HadamardRotation",
    "MAX_KRONECKER_ORDER",
    "construction",
    "hadamard_matrix",
    "is_hadamard_order",
]

#: Largest K of a kron(H_K, H_2^m) construction (the K-axis matmul costs K
#: multiply-adds per weight).
MAX_KRONECKER_ORDER = 256


@attrs.frozen
class HadamardParams:
    """``seed`` draws the sign flips; it never changes generated code."""

    seed: int = attrs.field(default=0, metadata=codegen_false())


# -- known Hadamard matrices ------------------------------------------------------


def _is_prime(q: int) -> bool:
    if q < 2:
        return False
    if q % 2 == 0:
        return q == 2
    return all(q % p for p in range(3, math.isqrt(q) + 1, 2))


def _jacobsthal(q: int) -> np.ndarray:
    """Q[i, j] = chi(j - i), chi the quadratic character modulo the prime q."""
    squares = np.zeros(q, dtype=np.int64)
    squares[(np.arange(1, q) ** 2) % q] = 1
    chi = np.where(squares == 1, 1, -1)
    chi[0] = 0
    idx = (np.arange(q)[None, :] - np.arange(q)[:, None]) % q
    return chi[idx]


def _sylvester(h: np.ndarray) -> np.ndarray:
    return np.block([[h, h], [h, -h]])


@functools.lru_cache(maxsize=None)
def _construct(K: int) -> np.ndarray | None:
    if K == 1:
        return np.ones((1, 1), dtype=np.int64)
    if K == 2:
        return np.array([[1, 1], [1, -1]], dtype=np.int64)
    if K % 4:
        return None
    q = K - 1
    if _is_prime(q) and q % 4 == 3:  # Paley I
        Q = _jacobsthal(q)
        S = np.zeros((K, K), dtype=np.int64)
        S[0, 1:] = 1
        S[1:, 0] = -1
        S[1:, 1:] = Q
        return S + np.eye(K, dtype=np.int64)
    q = K // 2 - 1
    if _is_prime(q) and q % 4 == 1:  # Paley II
        Q = _jacobsthal(q)
        C = np.zeros((q + 1, q + 1), dtype=np.int64)
        C[0, 1:] = 1
        C[1:, 0] = 1
        C[1:, 1:] = Q
        A = np.array([[1, -1], [-1, -1]], dtype=np.int64)
        B = np.array([[1, 1], [1, -1]], dtype=np.int64)
        return np.kron(C, A) + np.kron(np.eye(q + 1, dtype=np.int64), B)
    half = _construct(K // 2)
    return None if half is None else _sylvester(half)


def is_hadamard_order(K: int) -> bool:
    """True when this module can build a Hadamard matrix of order K."""
    return _construct(int(K)) is not None


def hadamard_matrix(K: int) -> np.ndarray:
    """A Hadamard matrix of order K (entries +-1, H H^T = K I) as int8.

    Raises ValueError when no construction here covers K.
    """
    H = _construct(int(K))
    if H is None:
        raise ValueError(f"no Hadamard matrix of order {K} is known to this module (Paley I/II, Sylvester)")
    return H.astype(np.int8)


def _factor(d: int) -> tuple[int, int] | None:
    """(K, 2^m) with d = K * 2^m, K a known order (smallest K wins), or None."""
    p = d & -d  # largest power of two dividing d
    while p >= 1:
        K = d // p
        if K <= MAX_KRONECKER_ORDER and is_hadamard_order(K):
            return K, p
        p //= 2
    return None


def construction(d: int) -> dict[str, Any]:
    """The transform used for rows of length ``d`` (the state meta's description)."""
    d = int(d)
    if d < 1:
        raise ValueError(f"row length must be >= 1, got {d}")
    if d & (d - 1) == 0:
        return {"construction": "walsh", "pow2": d}
    f = _factor(d)
    if f is not None:
        return {"construction": "kronecker", "K": f[0], "pow2": f[1]}
    blocks, rest = [], d
    while rest:
        size = next(s for s in range(rest, 0, -1) if s & (s - 1) == 0 or _factor(s) is not None)
        blocks.append(size)
        rest -= size
    return {"construction": "block_diagonal", "blocks": blocks}


# -- the transform ----------------------------------------------------------------


def _block(x: np.ndarray, K: int, p: int, transpose: bool) -> np.ndarray:
    """Orthonormal kron(H_K, H_p) (or its transpose) on rows [n, K * p], in place if possible."""
    n = x.shape[0]
    if K == 1:
        helix_jit.fwht(x, lane_width="F32x16")
        return x
    z = np.ascontiguousarray(x).reshape(n * K, p)
    if p > 1:
        helix_jit.fwht(z, lane_width="F32x16")
    H = hadamard_matrix(K).astype(np.float32) / np.float32(math.sqrt(K))
    if transpose:
        H = np.ascontiguousarray(H.T)
    return np.matmul(H, z.reshape(n, K, p)).reshape(n, K * p)


def _transform(x: np.ndarray, meta: dict[str, Any], transpose: bool) -> np.ndarray:
    kind = meta["construction"]
    if kind == "walsh":
        return _block(x, 1, x.shape[1], transpose)
    if kind == "kronecker":
        return _block(x, int(meta["K"]), int(meta["pow2"]), transpose)
    out = np.empty_like(x)
    col = 0
    for size in meta["blocks"]:
        sub = construction(size)
        part = np.ascontiguousarray(x[:, col : col + size])
        out[:, col : col + size] = _transform(part, sub, transpose)
        col += size
    return out


class HadamardRotation(Rotation):
    """``hadamard``: x -> H (s * x), H orthonormal Hadamard, s seeded signs.

    Inverse: x = s * (H^T y). See the module docstring for the constructions
    and what the state stores.
    """

    name: ClassVar[str] = "hadamard"
    version: ClassVar[str] = __version__
    Params: ClassVar[type] = HadamardParams
    orthogonal: ClassVar[bool] = True  # layer statistics transform as A^T H A

    def fit(
        self, rows: np.ndarray, params: HadamardParams, rng: np.random.Generator, codec_params: Any = None
    ) -> RotationState:
        d = int(np.shape(rows)[-1])
        meta = construction(d)
        signs = np.random.default_rng([int(params.seed), d]).integers(0, 2, size=d, dtype=np.int8) * 2 - 1
        return RotationState(arrays={"signs": signs.astype(np.int8)}, meta={**meta, "row_dim": d, "seed": int(params.seed)})

    @staticmethod
    def _rows(state: RotationState, rows: np.ndarray) -> np.ndarray:
        x = np.asarray(rows)
        if x.ndim != 2 or x.shape[1] != state.meta["row_dim"]:
            raise ValueError(f"hadamard state is for rows of width {state.meta['row_dim']}; got shape {x.shape}")
        return x

    def apply(self, state: RotationState, rows: np.ndarray) -> np.ndarray:
        x = self._rows(state, rows)
        s = np.asarray(state.arrays["signs"]).astype(np.float32)
        y = np.ascontiguousarray(x * s, dtype=np.float32)  # a fresh copy: fwht works in place
        return _transform(y, dict(state.meta), transpose=False)

    def invert(self, state: RotationState, rows: np.ndarray) -> np.ndarray:
        y = np.array(self._rows(state, rows), dtype=np.float32, copy=True, order="C")
        s = np.asarray(state.arrays["signs"]).astype(np.float32)
        x = _transform(y, dict(state.meta), transpose=True)
        x *= s
        return x
