"""pq_assign: nearest centroid per row and subspace (squared L2, ties -> lowest index).

Kernel layout (why): codebooks are transposed to [w][K'] (K' = K padded to
the vector width) so one vector load holds the same coordinate of CB
consecutive centroids; a block of R rows shares each load (register
blocking). Distances use the expansion ||c||^2 - 2 x.c (||x||^2 does not
change the argmin, and is added back only for returned distances), the
trick a GEMM-based numpy encode uses too. Padded centroids get an infinite
norm so they never win. Per lane, a strict < keeps the lowest index; the
final horizontal step takes the minimum value, then the lowest index among
the lanes holding it.

F32x16 with wide subspaces and many centroids (``pq_argmin.use_gemm``, a
rule on shapes only) takes another path: BLAS's sgemm computes x.c per tile
of rows and a fused llvmlite pass finds the minimum (module pq_argmin);
same outputs, same tie rule, codes independent of the thread count.

Numerics per lane width (the reference reproduces them):
- F32x16: float32 throughout.
- F64x8: rows and centroids widened to float64, distances in float64.
- BF16x32: centroids rounded to bfloat16 (stored as i16), float32 math.
- U8x64: per subspace, an affine uint8 grid from the codebook's min/max;
  centroids and (clamped) rows quantized to it; int32 distances, exact.
  Returned distances are the integer distance times scale^2.

The float32 tie rule (``exact=True``, F32x16): float32 distances from the
kernel and from its numpy reference (a BLAS product) round differently, so
on a near tie they may pick different centroids. With ``exact=True`` the
search also reports, per row and subspace, the gap between the best and the
second-best float32 distance, over ||x||^2 + 2 max ||c||^2. Either computation of ||c||^2 - 2 x.c in
float32 is within E = (w + 1) u (||x||^2 + 2 max ||c||^2) of the exact value
(u = 2^-24, any summation order, with or without FMA), so when the gap
exceeds 2E the float32 winner is the exact winner; every (row, subspace)
whose gap is under a threshold of 4 (w + 4) u (||x||^2 + 2 max ||c||^2)
(twice that bound, with room) is re-decided by one float64 numpy search,
sum_j (x_j - c_j)^2 with ties to the lowest index. The codes are therefore
those of that float64 search, whichever path ran: the jit and
``HELIX_JIT_DISABLE=1`` give the same codes, at float32 speed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from helix_jit.irgen import Fn, fconst
from helix_jit.kernel import declare_kernel
from helix_jit.kernels import pq_argmin
from helix_jit.kernels._pq import (
    check_codebooks,
    code_dtype,
    runs_of,
    split_widths,
    to_bf16_bits,
    from_bf16_bits,
    u8_params,
    u8_quantize,
)
from helix_jit.lanes import LaneWidth

VERSION = "4"

#: The ``dist`` constant: what the kernel writes to its float32 [n, M] output.
#: GAP: (second best - best distance) / (||x||^2 + 2 max ||c||^2), for the tie rule.
NONE, DIST, GAP = 0, 1, 2
LANE_WIDTHS = (LaneWidth.F32x16, LaneWidth.F64x8, LaneWidth.BF16x32, LaneWidth.U8x64)

# Rows per register block, per lane width (tuned for 16 ymm registers; still fine on AVX-512).
ROWS_PER_BLOCK = {LaneWidth.F32x16: 6, LaneWidth.F64x8: 6, LaneWidth.BF16x32: 2, LaneWidth.U8x64: 1}
_INT_PAD = 1 << 30  # "infinite" norm for padded centroids in int32 mode


def _storage(lw: LaneWidth) -> tuple[str, str, int]:
    """(storage IR type, compute IR type, bytes per stored element)."""
    return {
        LaneWidth.F32x16: ("float", "float", 4),
        LaneWidth.F64x8: ("double", "double", 8),
        LaneWidth.BF16x32: ("i16", "float", 2),
        LaneWidth.U8x64: ("i8", "i32", 1),
    }[lw]


def padded_k(K: int, lw: LaneWidth) -> int:
    L = lw.lanes
    return -(-K // L) * L


def emit(lw: LaneWidth, c: Mapping) -> str:
    d, K = int(c["d"]), int(c["K"])
    want_dist, want_gap = int(c["dist"]) == DIST, int(c["dist"]) == GAP
    runs = [tuple(r) for r in c["runs"]]
    L = lw.lanes
    Kp = padded_k(K, lw)
    st, ct, _ = _storage(lw)
    isint = ct == "i32"
    if want_gap and isint:
        raise ValueError("pq_assign: the gap output needs a float lane width")
    VS, VC = f"<{L} x {st}>", f"<{L} x {ct}>"
    codet = "i8" if K <= 256 else "i16"
    f = Fn("pq_assign", [("ptr", "x"), ("i64", "n"), ("ptr", "cbt"), ("ptr", "cn"), ("ptr", "codes"), ("ptr", "dist"), ("ptr", "qp")])
    suffix = {"float": "f32", "double": "f64", "i32": "i32"}[ct]
    f.declare(f"declare {VC} @llvm.fmuladd.v{L}{suffix}({VC}, {VC}, {VC})") if not isint else None
    if isint:
        f.declare(f"declare i32 @llvm.vector.reduce.smin.v{L}i32({VC})")
        f.declare("declare float @llvm.roundeven.f32(float)")
        f.declare("declare float @llvm.minnum.f32(float, float)")
        f.declare("declare float @llvm.maxnum.f32(float, float)")
    else:
        f.declare(f"declare {ct} @llvm.vector.reduce.fmin.v{L}{suffix}({VC})")
    f.declare(f"declare i32 @llvm.vector.reduce.umin.v{L}i32(<{L} x i32>)")
    iota = f.const_vec("i32", [str(i) for i in range(L)])
    inf = str(_INT_PAD) if isint else ("0x7FF0000000000000")
    zero = "0" if isint else "0.0"
    M = sum(cnt for cnt, _ in runs)

    def load_x(r_ptr: str, j: int | str) -> str:
        """Scalar row value j as the compute type."""
        p = f.gep("float", r_ptr, str(j))
        v = f.load("float", p, 4)
        if ct == "double":
            v = f.v(f"fpext float {v} to double")
        return v

    def convert(v: str) -> str:
        if st == ct:
            return v
        if st == "i16":
            z = f.v(f"zext {VS} {v} to <{L} x i32>")
            s = f.v(f"shl <{L} x i32> {z}, {f.splat('i32', L, '16')}")
            return f.v(f"bitcast <{L} x i32> {s} to {VC}")
        return f.v(f"zext {VS} {v} to {VC}")  # u8 -> i32

    def block(R: int, run_m0: int, count: int, w: int, col0: int, cb0: int, rstart: str, rend: str) -> None:
        with f.loop(rstart, rend, R) as rb:
            with f.loop("0", str(count), 1) as mi:
                m = f.v(f"add nsw i64 {mi}, {run_m0}")
                col = f.v(f"add nsw i64 {f.v(f'mul nsw i64 {mi}, {w}')}, {col0}")
                cbbase = f.v(f"add nsw i64 {f.v(f'mul nsw i64 {mi}, {w * Kp}')}, {cb0}")
                cnbase = f.v(f"mul nsw i64 {m}, {Kp}")
                xs = []
                for r in range(R):
                    row = f.v(f"add nsw i64 {rb}, {r}")
                    xs.append(f.gep("float", "%x", f.v(f"add nsw i64 {f.v(f'mul nsw i64 {row}, {d}')}, {col}")))
                if isint:
                    # quantize this block of rows once per subspace into a stack buffer
                    qpp = f.gep("float", "%qp", f.v(f"mul nsw i64 {m}, 3"))
                    lo = f.load("float", qpp, 4)
                    inv = f.load("float", f.gep("float", qpp, "1"), 4)
                    qbuf = qbufs[(R, w)]
                    for r in range(R):
                        with f.loop("0", str(w), 1) as j:
                            v = f.load("float", f.gep("float", xs[r], j), 4)
                            t = f.v(f"fmul float {f.v(f'fsub float {v}, {lo}')}, {inv}")
                            t = f.v(f"call float @llvm.maxnum.f32(float {t}, float 0.0)")
                            t = f.v(f"call float @llvm.minnum.f32(float {t}, float {fconst(255.0)})")
                            t = f.v(f"call float @llvm.roundeven.f32(float {t})")
                            q = f.v(f"fptosi float {t} to i32")
                            f.store("i32", q, f.gep("i32", qbuf, f.v(f"add nsw i64 {j}, {r * w}")), 4)
                    xs = [f.gep("i32", qbuf, str(r * w)) for r in range(R)]
                bv = [f.var(VC, f.splat(ct, L, inf)) for _ in range(R)]
                bi = [f.var(f"<{L} x i32>", "zeroinitializer") for _ in range(R)]
                sv = [f.var(VC, f.splat(ct, L, inf)) for _ in range(R)] if want_gap else []
                with f.loop("0", str(Kp), L) as kb:
                    acc = [f.var(VC, "zeroinitializer") for _ in range(R)]
                    # block-major layout [K'/L][w][L]: one centroid block is contiguous
                    cbblk = f.v(f"add nsw i64 {cbbase}, {f.v(f'mul nsw i64 {kb}, {w}')}")

                    def step(j: int | str) -> None:
                        jj = f.v(f"mul nsw i64 {j}, {L}") if isinstance(j, str) else str(j * L)
                        p = f.gep(st, "%cbt", f.v(f"add nsw i64 {f.v(f'add nsw i64 {cbblk}, {jj}')}, 0"))
                        cv = convert(f.load(VS, p, 4))
                        for r in range(R):
                            if isint:
                                xv = f.load("i32", f.gep("i32", xs[r], str(j)), 4)
                            else:
                                xv = load_x(xs[r], j)
                            xb = f.splat(ct, L, xv)
                            a = f.load(VC, acc[r], 64)
                            if isint:
                                a2 = f.v(f"add nsw {VC} {a}, {f.v(f'mul nsw {VC} {xb}, {cv}')}")
                            else:
                                a2 = f.v(f"call {VC} @llvm.fmuladd.v{L}{suffix}({VC} {xb}, {VC} {cv}, {VC} {a})")
                            f.store(VC, a2, acc[r], 64)

                    unroll = 8
                    if w <= 2 * unroll:
                        for j in range(w):
                            step(j)
                    else:
                        with f.loop("0", str(w - w % unroll), unroll) as j0:
                            for u in range(unroll):
                                step(f.v(f"add nsw i64 {j0}, {u}"))
                        for j in range(w - w % unroll, w):
                            step(j)
                    cnv = f.load(VC, f.gep(ct, "%cn", f.v(f"add nsw i64 {cnbase}, {kb}")), 4)
                    idx = f.v(f"add <{L} x i32> {f.splat('i32', L, f.v(f'trunc i64 {kb} to i32'))}, {iota}")
                    for r in range(R):
                        a = f.load(VC, acc[r], 64)
                        if isint:
                            dd = f.v(f"sub nsw {VC} {cnv}, {f.v(f'shl {VC} {a}, {f.splat(ct, L, chr(49))}')}")
                            lt = f.v(f"icmp slt {VC} {dd}, {f.load(VC, bv[r], 64)}")
                        else:
                            m2 = f.splat(ct, L, fconst(-2.0, ct))
                            dd = f.v(f"call {VC} @llvm.fmuladd.v{L}{suffix}({VC} {a}, {VC} {m2}, {VC} {cnv})")
                            lt = f.v(f"fcmp olt {VC} {dd}, {f.load(VC, bv[r], 64)}")
                        if want_gap:
                            # per lane second best: the old best if dd wins, else min(second, dd)
                            s0 = f.load(VC, sv[r], 64)
                            smin = f.v(f"select <{L} x i1> {f.v(f'fcmp olt {VC} {dd}, {s0}')}, {VC} {dd}, {VC} {s0}")
                            f.store(VC, f.v(f"select <{L} x i1> {lt}, {VC} {f.load(VC, bv[r], 64)}, {VC} {smin}"), sv[r], 64)
                        f.store(VC, f.v(f"select <{L} x i1> {lt}, {VC} {dd}, {VC} {f.load(VC, bv[r], 64)}"), bv[r], 64)
                        bsel = f.v(f"select <{L} x i1> {lt}, <{L} x i32> {idx}, <{L} x i32> {f.load(f'<{L} x i32>', bi[r], 64)}")
                        f.store(f"<{L} x i32>", bsel, bi[r], 64)
                for r in range(R):
                    bvv = f.load(VC, bv[r], 64)
                    if isint:
                        mn = f.v(f"call i32 @llvm.vector.reduce.smin.v{L}i32({VC} {bvv})")
                        eq = f.v(f"icmp eq {VC} {bvv}, {f.splat(ct, L, mn)}")
                    else:
                        mn = f.v(f"call {ct} @llvm.vector.reduce.fmin.v{L}{suffix}({VC} {bvv})")
                        eq = f.v(f"fcmp oeq {VC} {bvv}, {f.splat(ct, L, mn)}")
                    cand = f.v(f"select <{L} x i1> {eq}, <{L} x i32> {f.load(f'<{L} x i32>', bi[r], 64)}, <{L} x i32> {f.splat('i32', L, '-1')}")
                    code = f.v(f"call i32 @llvm.vector.reduce.umin.v{L}i32(<{L} x i32> {cand})")
                    row = f.v(f"add nsw i64 {rb}, {r}")
                    o = f.v(f"add nsw i64 {f.v(f'mul nsw i64 {row}, {M}')}, {m}")
                    f.store(codet, f.v(f"trunc i32 {code} to {codet}"), f.gep(codet, "%codes", o), 1)
                    if want_gap:
                        # second best over all centroids: every lane's second, and the
                        # other lanes' best (the winner's lane holds index `code`)
                        own = f.v(f"icmp eq <{L} x i32> {f.load(f'<{L} x i32>', bi[r], 64)}, {f.splat('i32', L, code)}")
                        others = f.v(f"select <{L} x i1> {own}, {VC} {f.splat(ct, L, inf)}, {VC} {bvv}")
                        s1 = f.v(f"call {ct} @llvm.vector.reduce.fmin.v{L}{suffix}({VC} {f.load(VC, sv[r], 64)})")
                        s2 = f.v(f"call {ct} @llvm.vector.reduce.fmin.v{L}{suffix}({VC} {others})")
                        s12 = f.v(f"select i1 {f.v(f'fcmp olt {ct} {s1}, {s2}')}, {ct} {s1}, {ct} {s2}")
                        gap = f.v(f"fsub {ct} {s12}, {mn}")
                        # relative to ||x||^2 + 2 max ||c||^2 (qp[m, 0]): the scale of the rounding bound
                        ns = f.var(ct, zero)
                        with f.loop("0", str(w), 1) as j:
                            xv = load_x(xs[r], j)
                            f.store(ct, f.v(f"fadd {ct} {f.load(ct, ns, 8)}, {f.v(f'fmul {ct} {xv}, {xv}')}"), ns, 8)
                        c2 = f.load("float", f.gep("float", "%qp", f.v(f"mul nsw i64 {m}, 3")), 4)
                        if ct == "double":
                            c2 = f.v(f"fpext float {c2} to double")
                        den = f.v(f"fadd {ct} {f.load(ct, ns, 8)}, {f.v(f'fmul {ct} {c2}, {fconst(2.0, ct)}')}")
                        rel = f.v(f"fdiv {ct} {gap}, {den}")
                        if ct == "double":
                            rel = f.v(f"fptrunc double {rel} to float")
                        f.store("float", rel, f.gep("float", "%dist", o), 4)
                    if want_dist:
                        # ||x||^2 + min(||c||^2 - 2 x.c), clamped at 0, as float32
                        ns = f.var(ct, zero)
                        for j in range(w) if w <= 64 else []:
                            xv = f.load("i32", f.gep("i32", xs[r], str(j)), 4) if isint else load_x(xs[r], j)
                            cur = f.load(ct, ns, 8)
                            f.store(ct, f.v(f"add nsw i32 {cur}, {f.v(f'mul nsw i32 {xv}, {xv}')}") if isint else f.v(f"fadd {ct} {cur}, {f.v(f'fmul {ct} {xv}, {xv}')}"), ns, 8)
                        if w > 64:
                            with f.loop("0", str(w), 1) as j:
                                xv = f.load("i32", f.gep("i32", xs[r], j), 4) if isint else load_x(xs[r], j)
                                cur = f.load(ct, ns, 8)
                                f.store(ct, f.v(f"add nsw i32 {cur}, {f.v(f'mul nsw i32 {xv}, {xv}')}") if isint else f.v(f"fadd {ct} {cur}, {f.v(f'fmul {ct} {xv}, {xv}')}"), ns, 8)
                        tot = f.v(f"add nsw i32 {f.load(ct, ns, 8)}, {mn}") if isint else f.v(f"fadd {ct} {f.load(ct, ns, 8)}, {mn}")
                        if isint:
                            s2 = f.load("float", f.gep("float", "%qp", f.v(f"add nsw i64 {f.v(f'mul nsw i64 {m}, 3')}, 2")), 4)
                            out = f.v(f"fmul float {f.v(f'sitofp i32 {tot} to float')}, {s2}")
                        else:
                            pos = f.v(f"fcmp ogt {ct} {tot}, 0.0")
                            out = f.v(f"select i1 {pos}, {ct} {tot}, {ct} 0.0")
                            if ct == "double":
                                out = f.v(f"fptrunc double {out} to float")
                        f.store("float", out, f.gep("float", "%dist", o), 4)

    qbufs: dict[tuple[int, int], str] = {}
    R = ROWS_PER_BLOCK[lw]
    m0 = col0 = cb0 = 0
    nmain = f.v(f"sub nsw i64 %n, {f.v(f'srem i64 %n, {R}')}") if R > 1 else "%n"
    for count, w in runs:
        for rr in ([R, 1] if R > 1 else [1]):
            if isint and (rr, w) not in qbufs:
                qbufs[(rr, w)] = f.var(f"[{rr * w} x i32]")
            block(rr, m0, count, w, col0, cb0, "0" if rr == R else nmain, nmain if rr == R else "%n")
        m0 += count
        col0 += count * w
        cb0 += count * w * Kp
    return f.render()


def prepare(codebooks: Sequence[np.ndarray], lw: LaneWidth) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(transposed padded codebooks, centroid norms, uint8 grid params) for the kernel."""
    K = codebooks[0].shape[0]
    Kp = padded_k(K, lw)
    st, ct, _ = _storage(lw)
    M = len(codebooks)
    parts, norms = [], np.empty((M, Kp), np.int32 if ct == "i32" else (np.float64 if ct == "double" else np.float32))
    qp = np.zeros((M, 3), np.float32)
    for m, cb in enumerate(codebooks):
        cb = np.asarray(cb, dtype=np.float32)
        w = cb.shape[1]
        if lw is LaneWidth.F32x16:
            store = np.zeros((w, Kp), np.float32)
            store[:, :K] = cb.T
            vals = cb
            nrm = np.einsum("kj,kj->k", vals, vals)
        elif lw is LaneWidth.F64x8:
            store = np.zeros((w, Kp), np.float64)
            store[:, :K] = cb.T
            v64 = cb.astype(np.float64)
            nrm = np.einsum("kj,kj->k", v64, v64)
        elif lw is LaneWidth.BF16x32:
            store = np.zeros((w, Kp), np.uint16)
            bits = to_bf16_bits(cb)
            store[:, :K] = bits.T
            vals = from_bf16_bits(bits)
            nrm = np.einsum("kj,kj->k", vals, vals)
        else:
            lo, scale = u8_params(cb)
            inv = np.float32(np.float32(1) / scale)
            q = u8_quantize(cb, lo, inv).astype(np.int64)
            store = np.zeros((w, Kp), np.uint8)
            store[:, :K] = q.T.astype(np.uint8)
            nrm = (q * q).sum(1)
            qp[m] = (lo, inv, np.float32(scale * scale))
        norms[m, :K] = nrm
        if ct != "i32":
            qp[m, 0] = np.float32(nrm.max())  # max ||c||^2, for the gap output's scale
        norms[m, K:] = _INT_PAD if ct == "i32" else np.inf
        # block-major [K'/L][w][L] (see the module docstring)
        L = lw.lanes
        parts.append(np.ascontiguousarray(store.reshape(w, Kp // L, L).transpose(1, 0, 2)).reshape(-1))
    return np.ascontiguousarray(np.concatenate(parts)), norms, qp


def _reference(lw: LaneWidth, c: Mapping, x, n, cbt, cn, codes, dist, qp) -> None:
    """Numpy reference on the kernel's own buffers (same arguments)."""
    d, K = int(c["d"]), int(c["K"])
    Kp = padded_k(K, lw)
    x = x.reshape(-1, d)[:n]
    codes = codes.reshape(n, -1)
    m = col = off = 0
    for count, w in c["runs"]:
        for _ in range(count):
            L = lw.lanes
            ct = cbt[off : off + w * Kp].reshape(Kp // L, w, L).transpose(1, 0, 2).reshape(w, Kp)
            xm = x[:, col : col + w]
            if lw is LaneWidth.U8x64:
                lo, inv, s2 = qp[m]
                qx = u8_quantize(xm, lo, inv).astype(np.int64)
                dots = qx @ ct.astype(np.int64)
                dd = cn[m].astype(np.int64) - 2 * dots
                xn = (qx * qx).sum(1)
            elif lw is LaneWidth.F64x8:
                x64 = xm.astype(np.float64)
                dd = cn[m] - 2.0 * (x64 @ ct)
                xn = (x64 * x64).sum(1)
            else:
                cf = from_bf16_bits(ct) if lw is LaneWidth.BF16x32 else ct
                dd = cn[m] - np.float32(2) * (xm @ cf)
                xn = (xm * xm).sum(1, dtype=np.float32)
            k = np.argmin(dd, axis=1)
            codes[:, m] = k
            if c["dist"] == GAP:
                if K == 1:
                    gap = np.full(n, np.inf, dd.dtype)
                else:
                    two = np.partition(dd, 1, axis=1)
                    gap = two[:, 1] - two[:, 0]  # in the distances' own precision, as the kernel
                with np.errstate(divide="ignore", invalid="ignore"):
                    rel = gap / (xn + dd.dtype.type(2) * dd.dtype.type(qp[m][0]))
                dist.reshape(n, -1)[:, m] = rel.astype(np.float32)
            elif c["dist"]:
                best = dd[np.arange(n), k]
                if lw is LaneWidth.U8x64:
                    dist.reshape(n, -1)[:, m] = (xn + best).astype(np.float32) * np.float32(qp[m][2])
                else:
                    dist.reshape(n, -1)[:, m] = np.maximum(xn + best, 0).astype(np.float32)
            m += 1
            col += w
            off += w * Kp


KERNEL = declare_kernel(
    "pq_assign",
    VERSION,
    LANE_WIDTHS,
    emit,
    _reference,
    argtypes=["f32*", "i64", "ptr", "ptr", "ptr", "ptr", "f32*"],
    entry="pq_assign",
)


#: Elements of the [rows, K, w] float64 block a near-tie re-check builds at once.
_SETTLE_BLOCK = 1 << 22


def _settle_near_ties(rows: np.ndarray, codebooks: Sequence[np.ndarray], codes: np.ndarray, rel_gap: np.ndarray) -> None:
    """Re-decide in float64 every (row, subspace) whose relative float32 gap
    is within the tie threshold (see the module docstring); updates ``codes``."""
    col = 0
    for m, cb in enumerate(codebooks):
        c64 = np.asarray(cb, dtype=np.float64)
        w = c64.shape[1]
        xm = rows[:, col : col + w]
        col += w
        near = np.flatnonzero(~(rel_gap[:, m] > (w + 4) * 2.0**-22))  # NaN (0 / 0) counts as near
        step = max(1, _SETTLE_BLOCK // (c64.size or 1))
        for i in range(0, near.size, step):
            idx = near[i : i + step]
            d = np.square(xm[idx].astype(np.float64)[:, None, :] - c64[None]).sum(axis=2)
            codes[idx, m] = np.argmin(d, axis=1)  # first minimum: ties to the lowest index


def _check_exact(lw: LaneWidth, return_distances: bool) -> None:
    if lw is not LaneWidth.F32x16:
        raise ValueError(f"pq_assign: exact=True needs lane width F32x16, got {lw.value}")
    if return_distances:
        raise ValueError("pq_assign: exact=True returns codes only (return_distances=False)")


def pq_assign(
    rows: np.ndarray,
    codebooks: Sequence[np.ndarray],
    lane_width: LaneWidth | str = LaneWidth.F32x16,
    return_distances: bool = False,
    exact: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of every row in every subspace (the PQ encode / k-means assign).

    rows: float32 [n, d], C-contiguous; codebooks: M arrays float32 [K, w_m]
    with sum(w_m) == d (uneven widths allowed, see :func:`split_widths`),
    1 <= K <= 65536. Returns codes [n, M] (uint8 if K <= 256 else uint16),
    nearest by squared L2, ties to the lowest index; with
    ``return_distances=True`` also float32 [n, M] minimum squared distances.
    ``exact=True`` (F32x16, codes only): the codes of a float64 search, from a
    float32 search whose near ties are re-decided in float64 (the tie rule of
    the module docstring), identical with and without the jit.

    >>> codes = pq_assign(rows, [cb0, cb1], "F32x16")   # doctest: +SKIP
    """
    from helix_jit._rows import run_rows

    lw = LaneWidth.parse(lane_width)
    if exact:
        _check_exact(lw, return_distances)
    rows = np.asarray(rows)
    if rows.dtype != np.float32 or rows.ndim != 2:
        raise TypeError("pq_assign: rows must be a float32 [n, d] array")
    rows = np.ascontiguousarray(rows)
    n, d = rows.shape
    K, widths = check_codebooks(codebooks, d)
    M = len(widths)
    mode = GAP if exact else (DIST if return_distances else NONE)
    codes = np.empty((n, M), code_dtype(K))
    dist = np.empty((n, M) if mode else (0, M), np.float32)
    if lw is LaneWidth.F32x16 and pq_argmin.use_gemm(K, widths):
        pq_argmin.gemm_assign(rows, codebooks, mode, codes, dist)
    else:
        fn = KERNEL.get(lw, d=d, K=K, runs=[list(r) for r in runs_of(widths)], dist=mode)
        cbt, cn, qp = prepare(codebooks, lw)

        def call(a: int, b: int, worker: int) -> None:
            fn(rows[a:b], b - a, cbt, cn, codes[a:b], dist[a:b] if mode else 0, qp)

        if n:
            run_rows(n, 2.0 * d * padded_k(K, lw), call)
    if exact:
        _settle_near_ties(rows, codebooks, codes, dist)
    return (codes, dist) if return_distances else codes


def pq_assign_reference(
    rows: np.ndarray,
    codebooks: Sequence[np.ndarray],
    lane_width: LaneWidth | str = LaneWidth.F32x16,
    return_distances: bool = False,
    exact: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """The numpy reference of :func:`pq_assign` (same numerics per lane width)."""
    lw = LaneWidth.parse(lane_width)
    if exact:
        _check_exact(lw, return_distances)
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    n, d = rows.shape
    K, widths = check_codebooks(codebooks, d)
    cbt, cn, qp = prepare(codebooks, lw)
    codes = np.empty((n, len(widths)), code_dtype(K))
    dist = np.empty((n, len(widths)), np.float32)
    mode = GAP if exact else (DIST if return_distances else NONE)
    c = {"d": d, "K": K, "runs": [list(r) for r in runs_of(widths)], "dist": mode}
    _reference(lw, c, rows, n, cbt, cn, codes, dist, qp)
    if exact:
        _settle_near_ties(rows, codebooks, codes, dist)
    return (codes, dist) if return_distances else codes


__all__ = ["pq_assign", "pq_assign_reference", "split_widths"]
