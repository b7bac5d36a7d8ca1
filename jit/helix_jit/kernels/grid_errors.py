"""grid_errors: weighted squared error of rounding groups of weights to many candidate grids.

A scalar quantizer's range search (rtn's ``clip``) rounds every group of g
weights onto S candidate grids (one float32 scale, and zero unless
symmetric, per group and candidate) and keeps, per group, the candidate with
the least error. In numpy that is about twenty passes over the matrix per
candidate; here it is one loop, in registers.

Per weight w of a group with scale s and zero z (z = 0 symmetric):
x = (w - z) / s; the code value v is either ``rint(x)`` clamped to
[lo_code, hi_code] (``levels`` None: evenly spaced codes) or the level
nearest x among the sorted ``levels`` (the level after every midpoint
strictly below x, so a tie goes to the lower level); v = 0 where s is not
positive; the reconstruction is v * s + z, and the error adds
float64(w_hat - w)^2 * weight[j] over the group's positions j in order.

Numerics (the reference repeats them exactly): float32 division, product
and sum, no fused multiply-add; float64 squares and a sequential float64
sum per group in position order.

Layout: weights group-major and row-innermost, float32 [G, g, n] (so the
row loop vectorises); scales and zeros float32 [S, G, n]; position weights
float64 [G, g]; errors float64 [S, G, n].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from helix_jit.irgen import Fn, fconst
from helix_jit.kernel import declare_kernel
from helix_jit.lanes import LaneWidth

VERSION = "2"


def emit(lw: LaneWidth, c: Mapping) -> str:
    levels = [float(v) for v in c["levels"]]
    asym = bool(c["zeros"])
    f = Fn("grid_errors", [("ptr", "wt"), ("i64", "n"), ("i64", "G"), ("i64", "g"), ("ptr", "scales"),
                           ("ptr", "zeros"), ("ptr", "pw"), ("i64", "S"), ("ptr", "err")])
    f.declare("declare float @llvm.rint.f32(float)")
    f.declare("declare float @llvm.maxnum.f32(float, float)")
    f.declare("declare float @llvm.minnum.f32(float, float)")
    with f.loop("0", "%S") as k, f.loop("0", "%G") as gi:
        kg = f.v(f"add nsw i64 {f.v(f'mul nsw i64 {k}, %G')}, {gi}")
        sbase = f.v(f"mul nsw i64 {kg}, %n")  # scales, zeros and errors of (k, gi)
        with f.loop("0", "%g") as j:
            gj = f.v(f"add nsw i64 {f.v(f'mul nsw i64 {gi}, %g')}, {j}")
            wj = f.load("double", f.gep("double", "%pw", gj), 8)
            wbase = f.v(f"mul nsw i64 {gj}, %n")
            with f.loop("0", "%n") as i:  # rows innermost: the loop LLVM vectorises
                w = f.load("float", f.gep("float", "%wt", f.v(f"add nsw i64 {wbase}, {i}")), 4)
                si = f.v(f"add nsw i64 {sbase}, {i}")
                s = f.load("float", f.gep("float", "%scales", si), 4)
                z = f.load("float", f.gep("float", "%zeros", si), 4) if asym else None
                shifted = f.v(f"fsub float {w}, {z}") if asym else w
                x = f.v(f"fdiv float {shifted}, {s}")
                if levels:  # the level after every midpoint strictly below x
                    mids = (np.asarray(levels[1:], np.float32) + np.asarray(levels[:-1], np.float32)) / np.float32(2)
                    v = fconst(levels[0])
                    for m, mid in enumerate(mids):
                        above = f.v(f"fcmp ogt float {x}, {fconst(float(mid))}")
                        v = f.v(f"select i1 {above}, float {fconst(levels[m + 1])}, float {v}")
                else:
                    v = f.v(f"call float @llvm.rint.f32(float {x})")
                    v = f.v(f"call float @llvm.maxnum.f32(float {v}, float {fconst(float(c['code_lo']))})")
                    v = f.v(f"call float @llvm.minnum.f32(float {v}, float {fconst(float(c['code_hi']))})")
                positive = f.v(f"fcmp ogt float {s}, 0.0")
                v = f.v(f"select i1 {positive}, float {v}, float 0.0")
                rec = f.v(f"fmul float {v}, {s}")
                if asym:
                    rec = f.v(f"fadd float {rec}, {z}")
                dd = f.v(f"fpext float {f.v(f'fsub float {rec}, {w}')} to double")
                e = f.v(f"fmul double {f.v(f'fmul double {dd}, {dd}')}, {wj}")
                ep = f.gep("double", "%err", si)
                acc = f.load("double", ep, 8)
                f.store("double", f.v(f"fadd double {acc}, {e}"), ep, 8)
    return f.render()


def _values(x: np.ndarray, s: np.ndarray, c: Mapping) -> np.ndarray:
    """The code value of every x (0 where s is not positive), as the kernel picks it."""
    levels = np.asarray(c["levels"], np.float32)
    with np.errstate(invalid="ignore"):
        if len(levels):
            mids = (levels[1:] + levels[:-1]) / np.float32(2)
            count = np.zeros(x.shape, np.intp)
            for m in mids:
                count += x > m
            v = levels[count]
        else:
            v = np.clip(np.rint(x), np.float32(c["code_lo"]), np.float32(c["code_hi"]))
        return np.where(s > 0, v, np.float32(0))


def _reference(lw: LaneWidth, c: Mapping, wt, n, G, g, scales, zeros, pw, S, err) -> None:
    wt = wt.reshape(G, g, n)
    scales = scales.reshape(S, G, n)
    zeros = zeros.reshape(S, G, n) if c["zeros"] else None
    pw = pw.reshape(G, g)
    err = err.reshape(S, G, n)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for j in range(g):
            w = wt[:, j, :][None]  # [1, G, n]
            x = (w - zeros) / scales if zeros is not None else w / scales
            rec = _values(x, scales, c) * scales
            if zeros is not None:
                rec = rec + zeros
            err += np.square(rec - w, dtype=np.float64) * pw[:, j][None, :, None]


KERNEL = declare_kernel(
    "grid_errors",
    VERSION,
    (LaneWidth.F32x16,),
    emit,
    _reference,
    argtypes=["f32*", "i64", "i64", "i64", "f32*", "f32*", "f64*", "i64", "f64*"],
    entry="grid_errors",
)


def grid_errors(
    groups: np.ndarray,
    scales: np.ndarray,
    zeros: np.ndarray | None,
    weights: np.ndarray,
    levels: Sequence[float] | None = None,
    codes: tuple[int, int] = (0, 255),
) -> np.ndarray:
    """Errors float64 [S, G, n] of rounding ``groups`` float32 [G, g, n] (group-major,
    rows innermost) onto S grids: ``scales`` and ``zeros`` (None: symmetric)
    float32 [S, G, n], position weights float64 [G, g]; ``levels`` (sorted
    float32 code values) or, when None, ``rint`` codes clamped to ``codes``.
    See the module docstring for the exact numerics."""
    G, g, n = groups.shape
    S = scales.shape[0]
    if scales.shape != (S, G, n) or (zeros is not None and zeros.shape != (S, G, n)) or weights.shape != (G, g):
        raise ValueError(f"grid_errors: scales/zeros must be [S, {G}, {n}] and weights [{G}, {g}]")
    levels_t = tuple(float(v) for v in np.asarray(levels, np.float32)) if levels is not None else ()
    fn = KERNEL.get(LaneWidth.F32x16, levels=levels_t, zeros=int(zeros is not None),
                    code_lo=int(codes[0]), code_hi=int(codes[1]))
    err = np.zeros((S, G, n), np.float64)
    z = np.ascontiguousarray(zeros, np.float32) if zeros is not None else np.zeros(1, np.float32)
    fn(np.ascontiguousarray(groups, np.float32), int(n), int(G), int(g), np.ascontiguousarray(scales, np.float32),
       z, np.ascontiguousarray(weights, np.float64), int(S), err)
    return err


__all__ = ["grid_errors"]
