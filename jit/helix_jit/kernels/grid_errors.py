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

from helix_jit.irgen import fconst
from helix_jit.kernel import declare_kernel
from helix_jit.lanes import LaneWidth

VERSION = "1"


def emit(lw: LaneWidth, c: Mapping) -> str:
    levels = [float(v) for v in c["levels"]]
    asym = bool(c["zeros"])
    code_lo, code_hi = float(c["code_lo"]), float(c["code_hi"])
    lines = []
    x = "%x"
    if levels:
        mids = np.float32((np.asarray(levels[1:], np.float32) + np.asarray(levels[:-1], np.float32)) / 2)
        v = fconst(levels[0])
        for m, mid in enumerate(mids):
            lines.append(f"  %c{m} = fcmp ogt float {x}, {fconst(float(mid))}")
            lines.append(f"  %v{m} = select i1 %c{m}, float {fconst(levels[m + 1])}, float {v}")
            v = f"%v{m}"
    else:
        lines.append(f"  %r = call float @llvm.rint.f32(float {x})")
        lines.append(f"  %rl = call float @llvm.maxnum.f32(float %r, float {fconst(code_lo)})")
        lines.append(f"  %rh = call float @llvm.minnum.f32(float %rl, float {fconst(code_hi)})")
        v = "%rh"
    value = "\n".join(lines)
    if asym:
        load_z = ("  %zp = getelementptr inbounds float, ptr %zeros, i64 %si\n"
                  "  %z = load float, ptr %zp, align 4\n"
                  "  %wz = fsub float %w, %z")
        shifted, add_z, rec = "%wz", "  %rec = fadd float %vs, %z", "%rec"
    else:
        load_z, shifted, add_z, rec = "", "%w", "", "%vs"
    return f"""
declare float @llvm.rint.f32(float)
declare float @llvm.maxnum.f32(float, float)
declare float @llvm.minnum.f32(float, float)

define void @grid_errors(ptr noalias %wt, i64 %n, i64 %G, i64 %g, ptr noalias %scales, ptr noalias %zeros,
                         ptr noalias %pw, i64 %S, ptr noalias %err) nounwind {{
entry:
  %Gn = mul nsw i64 %G, %n
  %gn = mul nsw i64 %g, %n
  br label %kloop
kloop:
  %k = phi i64 [0, %entry], [%k1, %knext]
  %kmore = icmp slt i64 %k, %S
  br i1 %kmore, label %gstart, label %done
gstart:
  br label %gloop
gloop:
  %gi = phi i64 [0, %gstart], [%gi1, %gnext]
  %gmore = icmp slt i64 %gi, %G
  br i1 %gmore, label %jstart, label %knext
jstart:
  %kG = mul nsw i64 %k, %G
  %kGg = add nsw i64 %kG, %gi
  %sbase = mul nsw i64 %kGg, %n
  %wbase0 = mul nsw i64 %gi, %gn
  %pbase = mul nsw i64 %gi, %g
  br label %jloop
jloop:
  %j = phi i64 [0, %jstart], [%j1, %jnext]
  %jmore = icmp slt i64 %j, %g
  br i1 %jmore, label %istart, label %gnext
istart:
  %pj = add nsw i64 %pbase, %j
  %pwp = getelementptr inbounds double, ptr %pw, i64 %pj
  %wj = load double, ptr %pwp, align 8
  %jn = mul nsw i64 %j, %n
  %wbase = add nsw i64 %wbase0, %jn
  br label %iloop
iloop:
  %i = phi i64 [0, %istart], [%i1, %iloop]
  %wi = add nsw i64 %wbase, %i
  %wp = getelementptr inbounds float, ptr %wt, i64 %wi
  %w = load float, ptr %wp, align 4
  %si = add nsw i64 %sbase, %i
  %sp = getelementptr inbounds float, ptr %scales, i64 %si
  %s = load float, ptr %sp, align 4
{load_z}
  %x = fdiv float {shifted}, %s
{value}
  %pos = fcmp ogt float %s, 0.0
  %v = select i1 %pos, float {v}, float 0.0
  %vs = fmul float %v, %s
{add_z}
  %diff = fsub float {rec}, %w
  %dd = fpext float %diff to double
  %sq = fmul double %dd, %dd
  %e = fmul double %sq, %wj
  %ep = getelementptr inbounds double, ptr %err, i64 %si
  %acc = load double, ptr %ep, align 8
  %acc1 = fadd double %acc, %e
  store double %acc1, ptr %ep, align 8
  %i1 = add nsw i64 %i, 1
  %imore = icmp slt i64 %i1, %n
  br i1 %imore, label %iloop, label %jnext
jnext:
  %j1 = add nsw i64 %j, 1
  br label %jloop
gnext:
  %gi1 = add nsw i64 %gi, 1
  br label %gloop
knext:
  %k1 = add nsw i64 %k, 1
  br label %kloop
done:
  ret void
}}
"""


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
