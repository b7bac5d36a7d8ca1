"""fwht: in-place orthonormal fast Walsh-Hadamard transform of every row.

Per row: optional elementwise sign flip, then the butterflies a+b / a-b at
strides h = 1, 2, 4, ... (strides below the vector width are done in
registers with shuffles), then a multiply by 1/sqrt(d). The numpy reference
runs the same operations in the same order, so results are bit-identical.

F32x16 computes in float32 in place; F64x8 computes in float64 in a scratch
row and rounds back to float32 once at the end.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from helix_jit.irgen import Fn, fconst
from helix_jit.kernel import declare_kernel
from helix_jit.lanes import LaneWidth

VERSION = "1"
LANE_WIDTHS = (LaneWidth.F32x16, LaneWidth.F64x8)


def _compute_dtype(lw: LaneWidth) -> type:
    return np.float64 if lw is LaneWidth.F64x8 else np.float32


def emit(lw: LaneWidth, c: Mapping[str, int]) -> str:
    d, signed = int(c["d"]), bool(c["signed"])
    t = "double" if lw is LaneWidth.F64x8 else "float"
    vl = min(lw.lanes, d)
    vt = f"<{vl} x {t}>" if vl > 1 else t
    vf = f"<{vl} x float>" if vl > 1 else "float"
    f = Fn("fwht", [("ptr", "rows"), ("i64", "n"), ("ptr", "signs"), ("ptr", "scratch")])
    scale = fconst(1.0 / math.sqrt(d), t)
    inplace = t == "float"
    with f.loop("0", "%n") as r:
        off = f.v(f"mul nsw i64 {r}, {d}")
        row = f.gep("float", "%rows", off)
        buf = row if inplace else "%scratch"
        # pass 1: load (+signs), in-register stages h < vl, store to the work buffer
        with f.loop("0", str(d), vl) as j:
            p = f.gep("float", row, j)
            x = f.load(vf, p, 4)
            if signed:
                ps = f.gep("float", "%signs", j)
                s = f.load(vf, ps, 4)
                if t == "double":
                    x = f.v(f"fpext {vf} {x} to {vt}")
                    s = f.v(f"fpext {vf} {s} to {vt}")
                x = f.v(f"fmul {vt} {x}, {s}")
            elif t == "double":
                x = f.v(f"fpext {vf} {x} to {vt}")
            h = 1
            while h < vl:
                perm = ", ".join(f"i32 {i ^ h}" for i in range(vl))
                u = f.v(f"shufflevector {vt} {x}, {vt} poison, <{vl} x i32> <{perm}>")
                sm = f.v(f"fadd {vt} {x}, {u}")
                df = f.v(f"fsub {vt} {u}, {x}")
                mask = ", ".join(f"i1 {1 if (i & h) == 0 else 0}" for i in range(vl))
                x = f.v(f"select <{vl} x i1> <{mask}>, {vt} {sm}, {vt} {df}")
                h *= 2
            q = f.gep(t, buf, j)
            f.store(vt, x, q, 4)
        # memory stages h >= vl
        while h < d:
            with f.loop("0", str(d), 2 * h) as blk:
                with f.loop("0", str(h), vl) as j:
                    ia = f.v(f"add nsw i64 {blk}, {j}")
                    ib = f.v(f"add nsw i64 {ia}, {h}")
                    pa, pb = f.gep(t, buf, ia), f.gep(t, buf, ib)
                    a, b = f.load(vt, pa, 4), f.load(vt, pb, 4)
                    f.store(vt, f.v(f"fadd {vt} {a}, {b}"), pa, 4)
                    f.store(vt, f.v(f"fsub {vt} {a}, {b}"), pb, 4)
            h *= 2
        # scale (and round back to float32)
        sv = f.splat(t, vl, scale)
        with f.loop("0", str(d), vl) as j:
            q = f.gep(t, buf, j)
            y = f.v(f"fmul {vt} {f.load(vt, q, 4)}, {sv}")
            if t == "double":
                y = f.v(f"fptrunc {vt} {y} to {vf}")
            f.store(vf, y, f.gep("float", row, j), 4)
    return f.render()


def reference_rows(lw: LaneWidth, rows: np.ndarray, signs: np.ndarray | None) -> None:
    """The numpy reference, in place on float32 ``rows`` [n, d]."""
    n, d = rows.shape
    ct = _compute_dtype(lw)
    x = rows.astype(ct, copy=True)
    if signs is not None:
        x *= signs.astype(ct)
    h = 1
    while h < d:
        v = x.reshape(n, d // (2 * h), 2, h)
        a, b = v[:, :, 0, :].copy(), v[:, :, 1, :].copy()
        v[:, :, 0, :] = a + b
        v[:, :, 1, :] = a - b
        h *= 2
    x *= ct(1.0 / math.sqrt(d))
    rows[...] = x.astype(np.float32)


def _reference(lw: LaneWidth, c: Mapping[str, int], rows, n, signs, scratch) -> None:
    d = int(c["d"])
    view = rows[: n * d].reshape(n, d) if rows.ndim == 1 else rows[:n]
    reference_rows(lw, view, signs if c["signed"] else None)


KERNEL = declare_kernel(
    "fwht", VERSION, LANE_WIDTHS, emit, _reference, argtypes=["f32*", "i64", "ptr", "ptr"], entry="fwht"
)


def fwht(rows: np.ndarray, signs: np.ndarray | None = None, lane_width: LaneWidth | str = LaneWidth.F32x16) -> np.ndarray:
    """Orthonormal fast Walsh-Hadamard transform of every row, in place.

    rows: float32 [n, d] (or [d]), C-contiguous, d a power of two; signs:
    optional float32 [d] multiplied elementwise first (randomized Hadamard).
    Returns ``rows``. Applying it twice (without signs) gives the input back.
    """
    from helix_jit._rows import run_rows

    lw = LaneWidth.parse(lane_width)
    if rows.dtype != np.float32 or not rows.flags.c_contiguous:
        raise TypeError("fwht: rows must be a C-contiguous float32 array")
    r2 = rows.reshape(1, -1) if rows.ndim == 1 else rows
    n, d = r2.shape
    if d < 1 or d & (d - 1):
        raise ValueError(f"fwht: length {d} is not a power of two")
    if signs is not None:
        signs = np.ascontiguousarray(signs, dtype=np.float32)
        if signs.shape != (d,):
            raise ValueError(f"fwht: signs must have shape ({d},)")
    fn = KERNEL.get(lw, d=d, signed=int(signs is not None))
    if n == 0:
        return rows
    sg = signs if signs is not None else 0
    need_scratch = lw is LaneWidth.F64x8

    def call(start: int, stop: int, worker: int) -> None:
        scratch = np.empty(d, np.float64) if need_scratch else 0
        fn(r2[start:stop], stop - start, sg, scratch)

    run_rows(n, 5.0 * d * max(1, d.bit_length()), call)
    return rows


def fwht_reference(rows: np.ndarray, signs: np.ndarray | None = None, lane_width: LaneWidth | str = LaneWidth.F32x16) -> np.ndarray:
    """The numpy reference of :func:`fwht` (in place, bit-identical)."""
    r2 = rows.reshape(1, -1) if rows.ndim == 1 else rows
    reference_rows(LaneWidth.parse(lane_width), r2, None if signs is None else np.asarray(signs, np.float32))
    return rows
