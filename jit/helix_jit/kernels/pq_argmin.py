"""pq_argmin: the GEMM path of pq_assign (F32x16) for wide subspaces and many centroids.

There the products x.c are a plain matrix product, and BLAS's sgemm does it
faster than pq_assign's own kernel (whose register blocking suits narrow
subspaces). Per tile of rows and per subspace, ``cb @ x_tile.T`` (numpy,
into a preallocated float32 [K, T] buffer of about 1 MB, near the cache) is
followed by this kernel, one fused pass over the buffer: per row,
d_k = ||c_k||^2 - 2 x.c_k, the best k (a strict < over k ascending, so ties
go to the lowest index) and, per ``dist`` mode, nothing, the minimum
squared distance ||x||^2 + d_best clamped at 0 (DIST) or the relative gap
(second best - best) / (||x||^2 + 2 max ||c||^2) (GAP), exactly as
pq_assign's kernel defines them. d_k is one fused multiply-add,
fl(||c||^2 - 2 x.c), the rounding of pq_assign's kernel and reference, so
its float32 tie rule (module docstring of pq_assign) holds unchanged: the
bound is for any summation order of x.c.

Layout (why): the buffer is centroid-major, rows contiguous, so one vector
load holds 16 rows' products with the same centroid; the kernel keeps
per-row best / index / second-best vectors and never reduces across lanes.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from helix_jit.irgen import Fn, fconst
from helix_jit.kernel import CompiledKernel, declare_kernel
from helix_jit.lanes import LaneWidth

VERSION = "1"

NONE, DIST, GAP = 0, 1, 2  # the ``dist`` modes, as pq_assign's
_L = 16  # lanes (rows) per vector
ROW_VECTORS = 4  # row vectors per block: they share each centroid norm load
BLOCK_ROWS = _L * ROW_VECTORS  # the buffer's row stride must be a multiple of this

#: Bytes of one [K, T] product buffer (per thread), and the rows per tile
#: that bounds: the GEMM needs a few hundred rows to run at full speed, the
#: argmin pass wants the buffer near the cache.
BUFFER_BYTES = 1 << 20
MAX_TILE_ROWS = 256


#: The GEMM path runs where a subspace's codebook (w x K float32) outgrows
#: L2, which pq_assign's kernel streams once per block of rows, and the
#: subspaces are wide enough for sgemm to run near its peak. Measured at
#: 1 thread (3072 rows, M = 8): kernel / GEMM time 1.12 at K = 1024, w = 64
#: (0.93 at w = 48), 1.11 at K = 512, w = 128 (0.98 at w = 96), 1.42 at
#: K = 2048, w = 48 (0.91 at w = 32); at K = 256 the kernel wins to w = 128.
MIN_CODEBOOK = 1 << 16  # w * K
MIN_WIDTH = 48


def use_gemm(K: int, widths: Sequence[int]) -> bool:
    """Whether pq_assign (F32x16) takes the GEMM path: shapes only, never timing or threads."""
    w = min(widths)
    return w >= MIN_WIDTH and w * K >= MIN_CODEBOOK


def tile_rows(K: int) -> int:
    """Rows per tile (a multiple of BLOCK_ROWS): MAX_TILE_ROWS, fewer for K > 1024."""
    return max(BLOCK_ROWS, min(MAX_TILE_ROWS, BUFFER_BYTES // (4 * K) // BLOCK_ROWS * BLOCK_ROWS))


def emit(lw: LaneWidth, c: Mapping) -> str:
    mode = int(c["dist"])
    codet = "i16" if int(c["wide"]) else "i8"
    L, R = _L, ROW_VECTORS
    VF, VI = f"<{L} x float>", f"<{L} x i32>"
    f = Fn(
        "pq_argmin",
        [("ptr", "dots"), ("i64", "nt"), ("i64", "ld"), ("i64", "K"), ("ptr", "cn"), ("ptr", "x"), ("i64", "d"),
         ("i64", "col"), ("i64", "w"), ("ptr", "codes"), ("ptr", "dist"), ("i64", "M"), ("i64", "m"),
         ("i64", "row0"), ("float", "c2")],
    )
    f.declare(f"declare {VF} @llvm.fmuladd.v{L}f32({VF}, {VF}, {VF})")
    f.declare("declare float @llvm.fmuladd.f32(float, float, float)")
    f.declare(f"declare float @llvm.vector.reduce.fadd.v{L}f32(float, {VF})")
    inf = "0x7FF0000000000000"
    m2 = f.splat("float", L, fconst(-2.0))
    cnm = f.gep("float", "%cn", f.v("mul nsw i64 %m, %K"))
    wmain = f.v(f"sub nsw i64 %w, {f.v(f'srem i64 %w, {L}')}")
    # per-row results of a block, for the scalar stores (kept apart from the hot slots)
    out_code = f.var(f"[{L * R} x i32]")
    out_best = f.var(f"[{L * R} x float]")
    out_second = f.var(f"[{L * R} x float]")

    with f.loop("0", "%nt", L * R) as rb:
        bv = [f.var(VF, f.splat("float", L, inf)) for _ in range(R)]
        bi = [f.var(VI, "zeroinitializer") for _ in range(R)]
        sv = [f.var(VF, f.splat("float", L, inf)) for _ in range(R)] if mode == GAP else []
        with f.loop("0", "%K") as k:
            cnk = f.splat("float", L, f.load("float", f.gep("float", cnm, k), 4))
            kv = f.splat("i32", L, f.v(f"trunc i64 {k} to i32"))
            base = f.v(f"add nsw i64 {f.v(f'mul nsw i64 {k}, %ld')}, {rb}")
            for r in range(R):
                a = f.load(VF, f.gep("float", "%dots", f.v(f"add nsw i64 {base}, {r * L}")), 4)
                dd = f.v(f"call {VF} @llvm.fmuladd.v{L}f32({VF} {a}, {VF} {m2}, {VF} {cnk})")
                b = f.load(VF, bv[r], 64)
                lt = f.v(f"fcmp olt {VF} {dd}, {b}")
                if mode == GAP:  # second best: the old best if dd wins, else min(second, dd)
                    s0 = f.load(VF, sv[r], 64)
                    smin = f.v(f"select <{L} x i1> {f.v(f'fcmp olt {VF} {dd}, {s0}')}, {VF} {dd}, {VF} {s0}")
                    f.store(VF, f.v(f"select <{L} x i1> {lt}, {VF} {b}, {VF} {smin}"), sv[r], 64)
                f.store(VF, f.v(f"select <{L} x i1> {lt}, {VF} {dd}, {VF} {b}"), bv[r], 64)
                f.store(VI, f.v(f"select <{L} x i1> {lt}, {VI} {kv}, {VI} {f.load(VI, bi[r], 64)}"), bi[r], 64)
        for r in range(R):
            f.store(VI, f.load(VI, bi[r], 64), f.gep("i32", out_code, str(r * L)), 4)
            f.store(VF, f.load(VF, bv[r], 64), f.gep("float", out_best, str(r * L)), 4)
            if mode == GAP:
                f.store(VF, f.load(VF, sv[r], 64), f.gep("float", out_second, str(r * L)), 4)
        rows_here = f.v(f"sub nsw i64 %nt, {rb}")
        lanes = f.v(f"select i1 {f.v(f'icmp slt i64 {rows_here}, {L * R}')}, i64 {rows_here}, i64 {L * R}")
        with f.loop("0", lanes) as i:
            row = f.v(f"add nsw i64 %row0, {f.v(f'add nsw i64 {rb}, {i}')}")
            o = f.v(f"add nsw i64 {f.v(f'mul nsw i64 {row}, %M')}, %m")
            code = f.load("i32", f.gep("i32", out_code, i), 4)
            f.store(codet, f.v(f"trunc i32 {code} to {codet}"), f.gep(codet, "%codes", o), 1)
            if mode != NONE:
                # ||x||^2 of this row's subspace (any summation order: it only scales the outputs)
                xr = f.gep("float", "%x", f.v(f"add nsw i64 {f.v(f'mul nsw i64 {row}, %d')}, %col"))
                acc = f.var(VF, "zeroinitializer")
                with f.loop("0", wmain, L) as j:
                    xv = f.load(VF, f.gep("float", xr, j), 4)
                    f.store(VF, f.v(f"call {VF} @llvm.fmuladd.v{L}f32({VF} {xv}, {VF} {xv}, {VF} {f.load(VF, acc, 64)})"), acc, 64)
                ns = f.var("float", f.v(f"call reassoc float @llvm.vector.reduce.fadd.v{L}f32(float 0.0, {VF} {f.load(VF, acc, 64)})"))
                with f.loop(wmain, "%w") as j:
                    xs = f.load("float", f.gep("float", xr, j), 4)
                    f.store("float", f.v(f"call float @llvm.fmuladd.f32(float {xs}, float {xs}, float {f.load('float', ns, 4)})"), ns, 4)
                xn = f.load("float", ns, 4)
                best = f.load("float", f.gep("float", out_best, i), 4)
                if mode == DIST:
                    tot = f.v(f"fadd float {xn}, {best}")
                    out = f.v(f"select i1 {f.v(f'fcmp ogt float {tot}, 0.0')}, float {tot}, float 0.0")
                else:
                    gap = f.v(f"fsub float {f.load('float', f.gep('float', out_second, i), 4)}, {best}")
                    den = f.v(f"fadd float {xn}, {f.v(f'fmul float %c2, {fconst(2.0)}')}")
                    out = f.v(f"fdiv float {gap}, {den}")
                f.store("float", out, f.gep("float", "%dist", o), 4)
    return f.render()


def _reference(lw: LaneWidth, c: Mapping, dots, nt, ld, K, cn, x, d, col, w, codes, dist, M, m, row0, c2) -> None:
    """Numpy reference on the kernel's own buffers (same arguments)."""
    dd = cn.reshape(-1, K)[m][:, None] - np.float32(2) * dots.reshape(K, ld)[:, :nt]
    k = np.argmin(dd, axis=0)  # the first minimum: ties to the lowest index
    rows = slice(row0, row0 + nt)
    codes.reshape(-1, M)[rows, m] = k
    mode = int(c["dist"])
    if mode == NONE:
        return
    xm = x.reshape(-1, d)[rows, col : col + w]
    xn = (xm * xm).sum(1, dtype=np.float32)
    best = dd[k, np.arange(nt)]
    if mode == DIST:
        dist.reshape(-1, M)[rows, m] = np.maximum(xn + best, np.float32(0))
        return
    second = np.partition(dd, 1, axis=0)[1] if K > 1 else np.full(nt, np.inf, np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        dist.reshape(-1, M)[rows, m] = (second - best) / (xn + np.float32(2) * np.float32(c2))


KERNEL = declare_kernel(
    "pq_argmin",
    VERSION,
    (LaneWidth.F32x16,),
    emit,
    _reference,
    argtypes=["f32*", "i64", "i64", "i64", "f32*", "f32*", "i64", "i64", "i64", "ptr", "f32*", "i64", "i64", "i64", "f32"],
    entry="pq_argmin",
)


@functools.cache
def _controller() -> Any:
    """threadpoolctl's view of the loaded BLAS: finding them costs 0.2 ms, so once (numpy's is loaded by now)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


_blas_lock = threading.Lock()


@contextlib.contextmanager
def _blas_one_thread() -> Iterator[None]:
    """BLAS at one thread inside (the threads come from run_rows).

    The limit is process-wide, so concurrent GEMM-path calls take turns: two
    overlapping limits would each restore what the other set. threadpoolctl
    lets one Python thread at a time set it; while another thread holds a
    limit of its own, BLAS stays as that thread set it.
    """
    with _blas_lock, _controller().limit(limits=1, user_api="blas"):
        yield


def gemm_assign(rows: np.ndarray, codebooks: Sequence[np.ndarray], mode: int, codes: np.ndarray, dist: np.ndarray) -> None:
    """pq_assign's F32x16 search by sgemm + :data:`KERNEL`, into ``codes`` (and ``dist`` per mode).

    rows: float32 [n, d] C-contiguous; codes [n, M]; dist float32 [n, M]
    (any float32 array when ``mode`` is NONE). Tiles of rows split over
    threads by run_rows; BLAS runs at one thread inside, so
    HELIX_JIT_THREADS=1 is one thread.
    """
    from helix_jit._rows import run_rows

    n, d = rows.shape
    M, K = len(codebooks), codebooks[0].shape[0]
    cbs = [np.ascontiguousarray(cb, dtype=np.float32) for cb in codebooks]
    cn = np.stack([np.einsum("kj,kj->k", cb, cb) for cb in cbs])  # as pq_assign's prepare
    c2 = [float(v) for v in cn.max(axis=1)]
    fn = KERNEL.get(LaneWidth.F32x16, dist=mode, wide=int(K > 256))
    T = tile_rows(K)
    # Tiles depend on the shape only, so thread counts split work, never the
    # GEMMs: every row's products (and codes) are the same at any count.
    tiles = -(-n // T)

    def call(a: int, b: int, worker: int) -> None:
        buf = np.empty((K, T), np.float32)
        # the compiled kernel takes addresses: converting five arrays per call costs more than its work
        ptrs = [buf, cn, rows, codes, dist]
        if isinstance(fn, CompiledKernel):
            ptrs = [p.ctypes.data for p in ptrs]
        pbuf, pcn, prows, pcodes, pdist = ptrs
        for i in range(a, b):
            s, e = n * i // tiles, n * (i + 1) // tiles  # equal tiles, at most T rows
            out = buf[:, : e - s]
            col = 0
            for m, cb in enumerate(cbs):
                w = cb.shape[1]
                np.matmul(cb, rows[s:e, col : col + w].T, out=out)
                fn(pbuf, e - s, T, K, pcn, prows, d, col, w, pcodes, pdist, M, m, s, c2[m])
                col += w

    with _blas_one_thread():
        run_rows(tiles, 2.0 * d * K * T, call)
