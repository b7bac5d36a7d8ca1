"""pq_decode: rows = sum over residual stages of the coded centroids (float32 out).

Numerics per lane width (the reference reproduces them bit for bit):
- F32x16: float32 centroids, float32 sum in stage order.
- F64x8: float64 sum in stage order, rounded to float32 once.
- BF16x32: centroids rounded to bfloat16 (stored as i16), float32 sum.
- U8x64: centroids on each subspace's uint8 grid (lo + q * scale, in float32), float32 sum.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from helix_jit.irgen import Fn, vec
from helix_jit.kernel import declare_kernel
from helix_jit.kernels._pq import check_codebooks, from_bf16_bits, runs_of, to_bf16_bits, u8_params, u8_quantize
from helix_jit.lanes import LaneWidth

VERSION = "1"
LANE_WIDTHS = (LaneWidth.F32x16, LaneWidth.F64x8, LaneWidth.BF16x32, LaneWidth.U8x64)
_STORE = {LaneWidth.F32x16: "float", LaneWidth.F64x8: "float", LaneWidth.BF16x32: "i16", LaneWidth.U8x64: "i8"}


def emit(lw: LaneWidth, c: Mapping) -> str:
    d = int(c["d"])
    stages = c["stages"]  # [[K, [[count, w], ...]], ...]
    st = _STORE[lw]
    acc_t = "double" if lw is LaneWidth.F64x8 else "float"
    VL = lw.lanes
    f = Fn("pq_decode", [("ptr", "out"), ("i64", "n"), ("ptr", "codes"), ("ptr", "cbs"), ("ptr", "qps"), ("ptr", "scratch")])
    with f.loop("0", "%n") as r:
        orow = f.gep("float", "%out", f.v(f"mul nsw i64 {r}, {d}"))
        buf = "%scratch" if acc_t == "double" else orow
        for s, (K, runs) in enumerate(stages):
            K = int(K)
            M = sum(cnt for cnt, _ in runs)
            codet = "i8" if K <= 256 else "i16"
            cp = f.load("ptr", f.gep("ptr", "%codes", str(s)), 8)
            cb = f.load("ptr", f.gep("ptr", "%cbs", str(s)), 8)
            qp = f.load("ptr", f.gep("ptr", "%qps", str(s)), 8)
            crow = f.gep(codet, cp, f.v(f"mul nsw i64 {r}, {M}"))
            m0 = col0 = cb0 = 0
            for count, w in runs:
                with f.loop("0", str(count)) as mi:
                    m = f.v(f"add nsw i64 {mi}, {m0}")
                    code = f.v(f"zext {codet} {f.load(codet, f.gep(codet, crow, m), 1)} to i64")
                    # codebooks row-major [K][w] per subspace, concatenated
                    base = f.v(f"add nsw i64 {f.v(f'mul nsw i64 {mi}, {K * w}')}, {cb0}")
                    cen = f.gep(st, cb, f.v(f"add nsw i64 {base}, {f.v(f'mul nsw i64 {code}, {w}')}"))
                    col = f.v(f"add nsw i64 {f.v(f'mul nsw i64 {mi}, {w}')}, {col0}")
                    if lw is LaneWidth.U8x64:
                        qpm = f.gep("float", qp, f.v(f"mul nsw i64 {m}, 2"))
                        lo, sc = f.load("float", qpm, 4), f.load("float", f.gep("float", qpm, "1"), 4)

                    def chunk(j: str | int, k: int) -> None:
                        vt, vs, vi = vec(acc_t, k), vec(st, k), vec("i32", k)
                        v = f.load(vs, f.gep(st, cen, str(j)), 1)
                        if st == "i16":
                            z = f.v(f"zext {vs} {v} to {vi}")
                            z = f.v(f"shl {vi} {z}, {f.splat('i32', k, '16')}")
                            v = f.v(f"bitcast {vi} {z} to {vt}")
                        elif st == "i8":
                            v = f.v(f"uitofp {vs} {v} to {vt}")
                            v = f.v(f"fmul {vt} {v}, {f.splat('float', k, sc)}")
                            v = f.v(f"fadd {vt} {v}, {f.splat('float', k, lo)}")
                        elif acc_t == "double":
                            v = f.v(f"fpext {vec('float', k)} {v} to {vt}")
                        p = f.gep(acc_t, buf, f.v(f"add nsw i64 {col}, {j}"))
                        if s > 0:
                            v = f.v(f"fadd {vt} {f.load(vt, p, 4)}, {v}")
                        f.store(vt, v, p, 4)

                    full = w - w % VL
                    if full:
                        if full <= 4 * VL:
                            for j in range(0, full, VL):
                                chunk(j, VL)
                        else:
                            with f.loop("0", str(full), VL) as j:
                                chunk(j, VL)
                    if w % VL:
                        chunk(full, w % VL)
                m0 += count
                col0 += count * w
                cb0 += count * w * K
        if acc_t == "double":
            full = d - d % VL
            for j0, k in ([("loop", VL)] if full else []) + ([(full, d % VL)] if d % VL else []):
                def fin(j: str | int, k: int = k) -> None:
                    v = f.load(vec("double", k), f.gep("double", "%scratch", str(j)), 8)
                    f.store(vec("float", k), f.v(f"fptrunc {vec('double', k)} {v} to {vec('float', k)}"), f.gep("float", orow, str(j)), 4)

                if j0 == "loop":
                    with f.loop("0", str(full), VL) as j:
                        fin(j)
                else:
                    fin(j0)
    return f.render()


def prepare_stage(codebooks: Sequence[np.ndarray], lw: LaneWidth) -> tuple[np.ndarray, np.ndarray]:
    """(concatenated stored codebooks, uint8 grid params [M, 2]) of one stage."""
    qp = np.zeros((len(codebooks), 2), np.float32)
    parts = []
    for m, cb in enumerate(codebooks):
        cb = np.ascontiguousarray(cb, dtype=np.float32)
        if lw is LaneWidth.BF16x32:
            parts.append(to_bf16_bits(cb).reshape(-1))
        elif lw is LaneWidth.U8x64:
            lo, scale = u8_params(cb)
            inv = np.float32(np.float32(1) / scale)
            parts.append(u8_quantize(cb, lo, inv).astype(np.uint8).reshape(-1))
            qp[m] = (lo, scale)
        else:
            parts.append(cb.reshape(-1))
    return np.ascontiguousarray(np.concatenate(parts)), qp


def stored_centroids(codebooks: Sequence[np.ndarray], lw: LaneWidth) -> list[np.ndarray]:
    """The centroid values a lane width actually uses (float32, or float64 for F64x8)."""
    cbs = [np.ascontiguousarray(cb, dtype=np.float32) for cb in codebooks]
    if lw is LaneWidth.F32x16:
        return cbs
    if lw is LaneWidth.F64x8:
        return [cb.astype(np.float64) for cb in cbs]
    if lw is LaneWidth.BF16x32:
        return [from_bf16_bits(to_bf16_bits(cb)) for cb in cbs]
    out = []
    for cb in cbs:
        lo, scale = u8_params(cb)
        q = u8_quantize(cb, lo, np.float32(np.float32(1) / scale))
        out.append(q * scale + lo)  # float32 ops, as the kernel
    return out


def _reference(lw: LaneWidth, c: Mapping, out, n, codes, cbs, qps, scratch) -> None:
    """Numpy reference; ``codes``/``cbs``/``qps`` are lists of arrays here (not addresses)."""
    d = int(c["d"])
    acc = np.zeros((n, d), np.float64 if lw is LaneWidth.F64x8 else np.float32)
    for s, (K, runs) in enumerate(c["stages"]):
        cents = codes_s = None
        codes_s = codes[s][:n]
        cents = cbs[s]
        col = 0
        m = 0
        for count, w in runs:
            for _ in range(count):
                v = cents[m][codes_s[:, m].astype(np.int64)]
                if s == 0:
                    acc[:, col : col + w] = v
                else:
                    acc[:, col : col + w] += v
                col += w
                m += 1
    out.reshape(-1, d)[:n] = acc.astype(np.float32)


KERNEL = declare_kernel(
    "pq_decode", VERSION, LANE_WIDTHS, emit, _reference, argtypes=["f32*", "i64", "ptr", "ptr", "ptr", "ptr"], entry="pq_decode"
)


def _stages(codes_per_stage, codebooks_per_stage):
    if len(codes_per_stage) != len(codebooks_per_stage) or not codes_per_stage:
        raise ValueError("need one codes array per stage and at least one stage")
    d = None
    info = []
    n = None
    for codes, cbs in zip(codes_per_stage, codebooks_per_stage, strict=True):
        K, widths = check_codebooks(cbs)
        if d is None:
            d = sum(widths)
        elif sum(widths) != d:
            raise ValueError("all stages must decode to the same row length")
        codes = np.asarray(codes)
        want = np.uint8 if K <= 256 else np.uint16
        if codes.ndim != 2 or codes.shape[1] != len(widths):
            raise ValueError(f"codes must be [n, {len(widths)}]")
        if codes.dtype != want:
            if np.any(codes >= K):
                raise ValueError("codes out of range")
            codes = codes.astype(want)
        if n is None:
            n = codes.shape[0]
        elif codes.shape[0] != n:
            raise ValueError("all stages must have the same row count")
        info.append((np.ascontiguousarray(codes), K, widths))
    return n, d, info


def pq_decode(
    codes_per_stage: Sequence[np.ndarray],
    codebooks_per_stage: Sequence[Sequence[np.ndarray]],
    lane_width: LaneWidth | str = LaneWidth.F32x16,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Rows rebuilt from their codes: the sum over stages of the coded centroids.

    codes_per_stage: per stage, uint8/uint16 [n, M_s]; codebooks_per_stage:
    per stage, M_s arrays float32 [K_s, w_m]. Returns float32 [n, d] (written
    into ``out`` when given: a C-contiguous float32 [n, d] array).
    """
    from helix_jit._rows import run_rows
    from helix_jit.kernel import ReferenceKernel

    lw = LaneWidth.parse(lane_width)
    n, d, info = _stages(codes_per_stage, codebooks_per_stage)
    stages = [[K, [list(r) for r in runs_of(w)]] for _, K, w in info]
    fn = KERNEL.get(lw, d=d, stages=stages)
    if out is None:
        out = np.empty((n, d), np.float32)
    elif out.shape != (n, d) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 [{n}, {d}] array")
    if n == 0:
        return out
    if isinstance(fn, ReferenceKernel):
        cents = [stored_centroids(cbs, lw) for cbs in codebooks_per_stage]
        fn(out, n, [c for c, _, _ in info], cents, None, None)
        return out
    prepped = [prepare_stage(cbs, lw) for cbs in codebooks_per_stage]
    cb_addr = np.array([p[0].ctypes.data for p in prepped], np.uint64)
    qp_addr = np.array([p[1].ctypes.data for p in prepped], np.uint64)
    codes = [c for c, _, _ in info]

    def call(a: int, b: int, worker: int) -> None:
        addrs = np.array([c[a:b].ctypes.data for c in codes], np.uint64)
        scratch = np.empty(d, np.float64) if lw is LaneWidth.F64x8 else 0
        fn(out[a:b], b - a, addrs, cb_addr, qp_addr, scratch)

    run_rows(n, 2.0 * d * len(info), call, min_work=4e5)
    return out


def pq_decode_reference(codes_per_stage, codebooks_per_stage, lane_width=LaneWidth.F32x16) -> np.ndarray:
    """The numpy reference of :func:`pq_decode`."""
    lw = LaneWidth.parse(lane_width)
    n, d, info = _stages(codes_per_stage, codebooks_per_stage)
    stages = [[K, [list(r) for r in runs_of(w)]] for _, K, w in info]
    out = np.empty((n, d), np.float32)
    cents = [stored_centroids(cbs, lw) for cbs in codebooks_per_stage]
    _reference(lw, {"d": d, "stages": stages}, out, n, [c for c, _, _ in info], cents, None, None)
    return out
