"""kmeanspp_draws: the sequential D^2 draws of k-means++ seeding (one subspace).

Each step is three passes over the n sampled points, all in one call: the
float64 total of the squared distances D^2 (a sequential sum), the draw (the
first point whose float64 running sum exceeds ``u[j] * total``; a draw
rounded past the end takes the last point of positive weight), and the
update D^2 = min(D^2, ||x - c||^2) with the new centroid. Doing the k steps
in numpy cost a dozen calls per step; here a step is a few microseconds.

Numerics (the reference repeats them exactly, so the picks are identical):
running sums in float64, in index order; ||x - c||^2 in float32 as
sum_t (x_t - c_t)^2 in coordinate order, no fused multiply-add, so a
duplicate of a chosen point gets exactly 0 and is never drawn again.

Points are stored transposed, float32 [w, n], so the update vectorises.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from helix_jit.kernel import declare_kernel
from helix_jit.lanes import LaneWidth

VERSION = "1"


def emit(lw: LaneWidth, c: Mapping) -> str:
    w = int(c["w"])
    cents = "\n".join(
        f"  %co{t} = add nsw i64 %pick, %nofs{t}\n"
        f"  %cp{t} = getelementptr inbounds float, ptr %xt, i64 %co{t}\n"
        f"  %c{t} = load float, ptr %cp{t}, align 4"
        for t in range(w)
    )
    ofs = "\n".join(f"  %nofs{t} = mul nsw i64 %n, {t}" for t in range(w))
    terms = []
    acc = "0.0"
    for t in range(w):
        terms.append(
            f"  %xo{t} = add nsw i64 %ui, %nofs{t}\n"
            f"  %xp{t} = getelementptr inbounds float, ptr %xt, i64 %xo{t}\n"
            f"  %x{t} = load float, ptr %xp{t}, align 4\n"
            f"  %df{t} = fsub float %x{t}, %c{t}\n"
            f"  %sq{t} = fmul float %df{t}, %df{t}\n"
            f"  %acc{t} = fadd float {acc}, %sq{t}"
        )
        acc = f"%acc{t}"
    update = "\n".join(terms)
    return f"""
define void @kmeanspp_draws(ptr noalias %xt, i64 %n, ptr noalias %d2, ptr noalias %u, ptr noalias %picks, i64 %j0, i64 %k, ptr noalias %stop) nounwind {{
entry:
{ofs}
  br label %step
step:
  %j = phi i64 [%j0, %entry], [%j1, %next]
  %more = icmp slt i64 %j, %k
  br i1 %more, label %tot, label %finish
tot:
  %ti = phi i64 [0, %step], [%ti1, %tot]
  %ts = phi double [0.0, %step], [%ts1, %tot]
  %tp = getelementptr inbounds float, ptr %d2, i64 %ti
  %tv = load float, ptr %tp, align 4
  %tvd = fpext float %tv to double
  %ts1 = fadd double %ts, %tvd
  %ti1 = add nsw i64 %ti, 1
  %tc = icmp slt i64 %ti1, %n
  br i1 %tc, label %tot, label %totdone
totdone:
  %pos = fcmp ogt double %ts1, 0.0
  br i1 %pos, label %draw, label %exhausted
exhausted:
  store i64 %j, ptr %stop, align 8
  ret void
draw:
  %up = getelementptr inbounds double, ptr %u, i64 %j
  %uj = load double, ptr %up, align 8
  %target = fmul double %uj, %ts1
  br label %scan
scan:
  %si = phi i64 [0, %draw], [%si1, %scannext]
  %cum = phi double [0.0, %draw], [%cum1, %scannext]
  %last = phi i64 [0, %draw], [%last1, %scannext]
  %sp = getelementptr inbounds float, ptr %d2, i64 %si
  %sv = load float, ptr %sp, align 4
  %svd = fpext float %sv to double
  %cum1 = fadd double %cum, %svd
  %posw = fcmp ogt float %sv, 0.0
  %last1 = select i1 %posw, i64 %si, i64 %last
  %hit = fcmp ogt double %cum1, %target
  br i1 %hit, label %picked, label %scannext
scannext:
  %si1 = add nsw i64 %si, 1
  %sc = icmp slt i64 %si1, %n
  br i1 %sc, label %scan, label %picked
picked:
  %pick = phi i64 [%si, %scan], [%last1, %scannext]
  %pp = getelementptr inbounds i64, ptr %picks, i64 %j
  store i64 %pick, ptr %pp, align 8
  %j1 = add nsw i64 %j, 1
  %upd = icmp slt i64 %j1, %k
  br i1 %upd, label %cents, label %next
cents:
{cents}
  br label %update
update:
  %ui = phi i64 [0, %cents], [%ui1, %update]
{update}
  %dp = getelementptr inbounds float, ptr %d2, i64 %ui
  %dv = load float, ptr %dp, align 4
  %lt = fcmp olt float {acc}, %dv
  %nv = select i1 %lt, float {acc}, float %dv
  store float %nv, ptr %dp, align 4
  %ui1 = add nsw i64 %ui, 1
  %uc = icmp slt i64 %ui1, %n
  br i1 %uc, label %update, label %next
next:
  br label %step
finish:
  store i64 %k, ptr %stop, align 8
  ret void
}}
"""


def sq_distances(xt: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 [n]: sum_t (x_t - c_t)^2 in coordinate order (the kernel's update)."""
    acc = np.zeros(xt.shape[1], np.float32)
    for t in range(xt.shape[0]):
        diff = xt[t] - np.float32(c[t])
        acc += diff * diff
    return acc


def _reference(lw: LaneWidth, c: Mapping, xt, n, d2, u, picks, j0, k, stop) -> None:
    xt = xt.reshape(int(c["w"]), n)
    for j in range(j0, k):
        cum = np.cumsum(d2, dtype=np.float64)
        if not cum[-1] > 0:
            stop[0] = j
            return
        pick = int(np.searchsorted(cum, u[j] * cum[-1], side="right"))
        if pick >= n:
            pick = int(np.flatnonzero(d2 > 0)[-1])
        picks[j] = pick
        if j + 1 < k:
            np.minimum(d2, sq_distances(xt, xt[:, pick]), out=d2)
    stop[0] = k


KERNEL = declare_kernel(
    "kmeanspp_draws",
    VERSION,
    (LaneWidth.F32x16,),
    emit,
    _reference,
    argtypes=["f32*", "i64", "f32*", "f64*", "i64*", "i64", "i64", "i64*"],
    entry="kmeanspp_draws",
)


def kmeanspp_draws(xt: np.ndarray, d2: np.ndarray, u: np.ndarray, picks: np.ndarray, j0: int, k: int) -> int:
    """Draws ``picks[j0:k]`` (indices into the n points of ``xt`` float32
    [w, n]) from the weights ``d2`` (float32 [n], updated in place) with
    the uniforms ``u`` (float64 [k]). Returns the step it stopped at: ``k``,
    or the first j whose weights were all 0 (the caller picks that centroid
    itself, updates ``d2`` with `sq_distances` and resumes at j + 1)."""
    w, n = xt.shape
    fn = KERNEL.get(LaneWidth.F32x16, w=int(w))
    stop = np.zeros(1, np.int64)
    fn(np.ascontiguousarray(xt, dtype=np.float32), int(n), d2, u, picks, int(j0), int(k), stop)
    return int(stop[0])


__all__ = ["kmeanspp_draws", "sq_distances"]
