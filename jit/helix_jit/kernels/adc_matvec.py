"""adc_matvec: y = W x from the codes of W, through per-subspace lookup tables.

table[s][m][k] = centroid_k(stage s, subspace m) . x_m (one column per batch
vector). Each row sums its M_s looked-up entries over all stages. The tables
are small (M*K*b entries) and built with numpy; the kernel does the gathers,
R rows at a time so the additions of different rows overlap.

Modes:
- ``f32``: tables in the lane width's float format, summed in stage/subspace
  order (float32; float64 for F64x8; BF16x32 tables rounded to bfloat16).
- ``adc_u8``: per stage and batch column, one shared scale s and one offset
  per table: q = rint((t - lo_m) / s) in 0..255; rows sum q in int32 (exact),
  then y = s * sum_q + sum_m lo_m. Error <= sum over stages of M_s * s / 2.
- ``adc_i8``: per stage and batch column, symmetric int8 with one shared
  scale s = max|t| / 127; error <= sum over stages of M_s * s / 2.

Lane widths fix the centroid values the tables are built from: F32x16 as
given, F64x8 in float64, BF16x32 rounded to bfloat16, U8x64 on each
subspace's uint8 grid (as pq_decode).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from helix_jit.irgen import Fn
from helix_jit.kernel import ReferenceKernel, declare_kernel
from helix_jit.kernels._pq import to_bf16_bits, from_bf16_bits
from helix_jit.kernels.pq_decode import _stages, stored_centroids
from helix_jit.lanes import LaneWidth

VERSION = "1"
LANE_WIDTHS = (LaneWidth.F32x16, LaneWidth.F64x8, LaneWidth.BF16x32, LaneWidth.U8x64)
MODES = ("f32", "adc_u8", "adc_i8")
ROWS_PER_BLOCK = 4


def _table_type(lw: LaneWidth, mode: str) -> tuple[str, str]:
    """(stored table IR type, accumulator IR type)."""
    if mode == "adc_u8":
        return "i8", "i32"
    if mode == "adc_i8":
        return "i8", "i32"
    if lw is LaneWidth.F64x8:
        return "double", "double"
    if lw is LaneWidth.BF16x32:
        return "i16", "float"
    return "float", "float"


def emit(lw: LaneWidth, c: Mapping) -> str:
    b, mode, scaled = int(c["b"]), c["mode"], bool(c["row_scale"])
    stages = c["stages"]  # [[M, K], ...]
    tt, at = _table_type(lw, mode)
    vt, va = f"<{b} x {tt}>" if b > 1 else tt, f"<{b} x {at}>" if b > 1 else at
    vf = f"<{b} x float>" if b > 1 else "float"
    f = Fn("adc_matvec", [("ptr", "y"), ("i64", "n"), ("ptr", "codes"), ("ptr", "tables"), ("ptr", "post"), ("ptr", "rs")])
    zero = "zeroinitializer" if b > 1 else ("0" if at == "i32" else "0.0")

    def block(R: int, start: str, end: str) -> None:
        with f.loop(start, end, R) as rb:
            acc = [f.var(va, zero) for _ in range(R)]
            tbase = 0
            for s, (M, K) in enumerate(stages):
                M, K = int(M), int(K)
                codet = "i8" if K <= 256 else "i16"
                cp = f.load("ptr", f.gep("ptr", "%codes", str(s)), 8)
                crows = [f.gep(codet, cp, f.v(f"mul nsw i64 {f.v(f'add nsw i64 {rb}, {r}')}, {M}")) for r in range(R)]
                with f.loop("0", str(M)) as m:
                    tm = f.v(f"add nsw i64 {f.v(f'mul nsw i64 {m}, {K * b}')}, {tbase}")
                    for r in range(R):
                        code = f.v(f"zext {codet} {f.load(codet, f.gep(codet, crows[r], m), 1)} to i64")
                        idx = f.v(f"add nsw i64 {tm}, {f.v(f'mul nsw i64 {code}, {b}')}")
                        t = f.load(vt, f.gep(tt, "%tables", idx), 1)
                        if tt == "i16":
                            ity = f"<{b} x i32>" if b > 1 else "i32"
                            z = f.v(f"zext {vt} {t} to {ity}")
                            z = f.v(f"shl {ity} {z}, {f.splat('i32', b, '16')}")
                            t = f.v(f"bitcast {ity} {z} to {va}")
                        elif tt == "i8":
                            t = f.v(f"{'zext' if mode == 'adc_u8' else 'sext'} {vt} {t} to {va}")
                        a = f.load(va, acc[r], 8)
                        f.store(va, f.v(f"{'add' if at == 'i32' else 'fadd'} {va} {a}, {t}"), acc[r], 8)
                tbase += M * K * b
            for r in range(R):
                a = f.load(va, acc[r], 8)
                if at == "i32":
                    # y = scale * sum_q + bias, per batch column (post = [scale[b], bias[b]])
                    fa = f.v(f"sitofp {va} {a} to {vf}")
                    sc = f.load(vf, "%post", 4)
                    bi = f.load(vf, f.gep("float", "%post", str(b)), 4)
                    a = f.v(f"fadd {vf} {f.v(f'fmul {vf} {fa}, {sc}')}, {bi}")
                elif at == "double":
                    a = f.v(f"fptrunc {va} {a} to {vf}")
                row = f.v(f"add nsw i64 {rb}, {r}")
                if scaled:
                    rsv = f.load("float", f.gep("float", "%rs", row), 4)
                    a = f.v(f"fmul {vf} {a}, {f.splat('float', b, rsv)}")
                f.store(vf, a, f.gep("float", "%y", f.v(f"mul nsw i64 {row}, {b}")), 4)

    R = ROWS_PER_BLOCK
    nmain = f.v(f"sub nsw i64 %n, {f.v(f'srem i64 %n, {R}')}")
    block(R, "0", nmain)
    block(1, nmain, "%n")
    return f.render()


def float_tables(codebooks_per_stage, x: np.ndarray, lw: LaneWidth) -> list[np.ndarray]:
    """Per stage, float tables [M, K, b] (float64 for F64x8, else float32).

    Subspaces of equal width are stacked into one batched matmul (thousands of
    tiny per-subspace products would cost more in Python than the kernel).
    """
    from helix_jit.kernels._pq import runs_of

    out = []
    for cbs in codebooks_per_stage:
        if isinstance(cbs, np.ndarray) and cbs.ndim == 3 and lw is LaneWidth.F32x16:
            # already stacked [M, K, w]: no per-subspace Python work at all
            C = np.ascontiguousarray(cbs, dtype=np.float32)
            out.append(np.matmul(C, x.reshape(C.shape[0], C.shape[2], -1).astype(np.float32)))
            continue
        cents = stored_centroids(cbs, lw)
        widths = [c.shape[1] for c in cents]
        parts = []
        m = col = 0
        for count, w in runs_of(widths):
            C = np.stack(cents[m : m + count])  # [count, K, w]
            X = x[col : col + count * w].reshape(count, w, -1).astype(C.dtype)  # [count, w, b]
            parts.append(np.matmul(C, X))
            m += count
            col += count * w
        t = np.concatenate(parts) if len(parts) > 1 else parts[0]
        if lw is LaneWidth.BF16x32:
            t = from_bf16_bits(to_bf16_bits(t))
        out.append(t)
    return out


def quantize_tables(tables: list[np.ndarray], mode: str) -> tuple[list[np.ndarray], np.ndarray]:
    """Integer tables per stage on one grid per batch column; returns (tables, post).

    One scale s per batch column shared by every table of every stage (so the
    kernel sums integers exactly); adc_u8 adds one offset per table (summed
    into a bias), adc_i8 is symmetric. post = float32 [scale[b], bias[b]].
    """
    t64 = [t.astype(np.float64) for t in tables]
    b = t64[0].shape[-1]
    bias = np.zeros(b, np.float64)
    if mode == "adc_u8":
        span = np.max([(t.max(axis=1) - t.min(axis=1)).max(axis=0) for t in t64], axis=0)  # [b]
        s = np.where(span > 0, span / 255.0, 1.0)
        qs = []
        for t in t64:
            lo = t.min(axis=1, keepdims=True)  # [M, 1, b]
            qs.append(np.clip(np.rint((t - lo) / s), 0, 255).astype(np.uint8))
            bias += lo.sum(axis=0)[0]
    else:
        mx = np.max([np.abs(t).max(axis=(0, 1)) for t in t64], axis=0)
        s = np.where(mx > 0, mx / 127.0, 1.0)
        qs = [np.clip(np.rint(t / s), -127, 127).astype(np.int8) for t in t64]
    return qs, np.concatenate([s, bias]).astype(np.float32)


def _prepare(codes_per_stage, codebooks_per_stage, x, mode, lw):
    if mode not in MODES:
        raise ValueError(f"adc_matvec: mode must be one of {MODES}, got {mode!r}")
    n, d, info = _stages(codes_per_stage, codebooks_per_stage)
    x = np.asarray(x, dtype=np.float32)
    vec = x.ndim == 1
    x2 = x.reshape(-1, 1) if vec else x
    if x2.ndim != 2 or x2.shape[0] != d:
        raise ValueError(f"x must be [{d}] or [{d}, b]")
    tables = float_tables(codebooks_per_stage, x2, lw)
    post = np.zeros(0, np.float32)
    if mode != "f32":
        tables, post = quantize_tables(tables, mode)
    return n, d, info, tables, post, vec, x2.shape[1]


def _table_storage(tables, lw, mode) -> np.ndarray:
    if mode == "f32" and lw is LaneWidth.BF16x32:
        return np.concatenate([to_bf16_bits(t).reshape(-1) for t in tables])
    if mode == "f32":
        dt = np.float64 if lw is LaneWidth.F64x8 else np.float32
        return np.concatenate([t.astype(dt).reshape(-1) for t in tables])
    return np.concatenate([t.reshape(-1) for t in tables])


def _reference(lw: LaneWidth, c: Mapping, y, n, codes, tables, post, rs) -> None:
    """Numpy reference; ``codes``/``tables`` are per-stage lists of arrays here."""
    b, mode = int(c["b"]), c["mode"]
    _, at = _table_type(lw, mode)
    acc = np.zeros((n, b), {"i32": np.int64, "double": np.float64, "float": np.float32}[at])
    for codes_s, t in zip(codes, tables, strict=True):
        for m in range(t.shape[0]):
            acc += t[m][codes_s[:n, m].astype(np.int64)].astype(acc.dtype)
    if at == "i32":
        out = acc.astype(np.float32) * post[:b] + post[b:]
    else:
        out = acc.astype(np.float32)
    if c["row_scale"]:
        out = out * rs[:n, None]
    y.reshape(n, b)[...] = out


KERNEL = declare_kernel(
    "adc_matvec", VERSION, LANE_WIDTHS, emit, _reference, argtypes=["f32*", "i64", "ptr", "ptr", "ptr", "ptr"], entry="adc_matvec"
)


def adc_matvec(
    codes_per_stage: Sequence[np.ndarray],
    codebooks_per_stage: Sequence[Sequence[np.ndarray]],
    x: np.ndarray,
    mode: str = "f32",
    lane_width: LaneWidth | str = LaneWidth.F32x16,
    row_scale: np.ndarray | None = None,
) -> np.ndarray:
    """y = W x computed from the codes of W (asymmetric distance computation).

    codes_per_stage / codebooks_per_stage as in :func:`pq_decode` (a stage's
    codebooks may be one stacked float32 [M, K, w] array: faster when M is
    large, since no per-subspace Python work is needed); x: float32
    [d] or [d, b]; mode: "f32" (exact float tables), "adc_u8" or "adc_i8"
    (quantized tables, see :func:`adc_error_bound`); row_scale: optional
    float32 [n] multiplying each output row. Returns float32 [n] or [n, b].
    """
    from helix_jit._rows import run_rows

    lw = LaneWidth.parse(lane_width)
    n, d, info, tables, post, vec, b = _prepare(codes_per_stage, codebooks_per_stage, x, mode, lw)
    rs = None
    if row_scale is not None:
        rs = np.ascontiguousarray(row_scale, dtype=np.float32)
        if rs.shape != (n,):
            raise ValueError(f"row_scale must have shape ({n},)")
    fn = KERNEL.get(lw, b=b, mode=mode, row_scale=int(rs is not None), stages=[[t.shape[0], t.shape[1]] for t in tables])
    y = np.empty((n, b), np.float32)
    codes = [c for c, _, _ in info]
    if n:
        if isinstance(fn, ReferenceKernel):
            fn(y, n, codes, tables, post, rs)
        else:
            store = _table_storage(tables, lw, mode)

            def call(a: int, e: int, worker: int) -> None:
                addrs = np.array([c[a:e].ctypes.data for c in codes], np.uint64)
                fn(y[a:e], e - a, addrs, store, post if post.size else 0, rs[a:e] if rs is not None else 0)

            run_rows(n, 4.0 * sum(t.shape[0] for t in tables) * b, call)
    return y[:, 0] if vec else y


def adc_matvec_reference(codes_per_stage, codebooks_per_stage, x, mode="f32", lane_width=LaneWidth.F32x16, row_scale=None):
    """The numpy reference of :func:`adc_matvec` (same numerics per lane width and mode)."""
    lw = LaneWidth.parse(lane_width)
    n, d, info, tables, post, vec, b = _prepare(codes_per_stage, codebooks_per_stage, x, mode, lw)
    rs = None if row_scale is None else np.asarray(row_scale, np.float32)
    y = np.empty((n, b), np.float32)
    c = {"b": b, "mode": mode, "row_scale": int(rs is not None)}
    _reference(lw, c, y, n, [c_ for c_, _, _ in info], tables, post, rs)
    return y[:, 0] if vec else y


def adc_error_bound(
    codes_per_stage: Sequence[np.ndarray],
    codebooks_per_stage: Sequence[Sequence[np.ndarray]],
    x: np.ndarray,
    mode: str = "f32",
    lane_width: LaneWidth | str = LaneWidth.F32x16,
    row_scale: np.ndarray | None = None,
) -> np.ndarray:
    """Per-row bound on |adc_matvec(...) - W_hat x|, W_hat the exact float64 decode.

    bound = |row_scale| * (table step + storage + rounding), where
    table step = sum over stages of M_s * scale_s / 2 (adc_u8, adc_i8; 0 for f32);
    storage = the lane width's centroid error: BF16x32 2^-8 * sum_m max_k |c_k|.|x_m|
    (centroids and tables each rounded to bf16), U8x64 sum_m (grid scale_m / 2) * ||x_m||_1;
    rounding = (w_max + M_total + 3) * u * sum_m max_k |c_k|.|x_m|, u the unit
    roundoff of the accumulation (2^-24, or 2^-53 + the final float32 rounding for F64x8).
    Same shape as the result.
    """
    from helix_jit.kernels._pq import u8_params

    lw = LaneWidth.parse(lane_width)
    n, d, info, tables, post, vec, b = _prepare(codes_per_stage, codebooks_per_stage, x, mode, lw)
    x2 = np.asarray(x, np.float64).reshape(d, -1)
    ax = np.abs(x2)
    mag = np.zeros(b)
    storage = np.zeros(b)
    wmax = 0
    mtot = 0
    for cbs in codebooks_per_stage:
        col = 0
        for cb in cbs:
            cb = np.asarray(cb, np.float64)
            w = cb.shape[1]
            wmax = max(wmax, w)
            mtot += 1
            per = np.abs(cb) @ ax[col : col + w]  # [K, b]
            mag += per.max(axis=0)
            if lw is LaneWidth.U8x64:
                _, sc = u8_params(cb.astype(np.float32))
                storage += float(sc) / 2 * ax[col : col + w].sum(axis=0) * 1.0001
            col += w
    if lw is LaneWidth.BF16x32:
        storage += 2.0**-8 * mag * 1.01
    if lw is LaneWidth.U8x64:
        storage += 2.0**-8 * mag  # dequantized centroids feed float32 tables: slack for their size
    u = 2.0**-53 if (lw is LaneWidth.F64x8 and mode == "f32") else 2.0**-24
    rounding = (wmax + mtot + 3) * u * (mag + storage) + (2.0**-24 * (mag + storage) if u < 2.0**-24 else 0)
    step = np.zeros(b)
    if mode != "f32":
        ms = np.array([t.shape[0] for t in tables], np.float64)
        sc = post[:b].astype(np.float64)
        step = ms.sum() * sc / 2 * 1.0001
        rounding = rounding + 2.0**-23 * (mag + storage + step)  # y = s * sum + bias in float32
    per_row = np.broadcast_to(step + storage + rounding, (n, b)).copy()
    if row_scale is not None:
        rs = np.abs(np.asarray(row_scale, np.float64))[:, None]
        # the scaled product is rounded to float32 once more: another unit roundoff of |y|
        per_row = per_row * rs * (1 + 2.0**-23) + 2.0**-24 * rs * (mag + storage + step)
    return per_row[:, 0] if vec else per_row
