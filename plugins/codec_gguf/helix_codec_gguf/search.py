"""The arithmetic and scale searches behind llama.cpp's GGUF quantizers, in numpy.

Every function works on float32 blocks ``x`` [n_blocks, n] at once; the
only Python loops run over positions inside a block, because llama.cpp
accumulates sums left to right in float32 and a pairwise numpy sum would
round differently and flip a few codes. Operation order follows the C code:
``nearest_int`` is round-half-to-even (the 1.5 * 2^23 trick), ``roundf``
rounds half away from zero, float -> fp16 is round-to-nearest-even.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32
QK_K = 256
GROUP_MAX_EPS = F32(1e-15)

# ---------------------------------------------------------------- helpers


def seqsum(a: np.ndarray) -> np.ndarray:
    """Sum over the last axis left to right in float32 (as a C loop does)."""
    acc = a[..., 0].astype(F32, copy=True)
    for i in range(1, a.shape[-1]):
        acc += a[..., i]
    return acc


def nearest_int(v: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.rint(np.nan_to_num(np.clip(v, -4194303, 4194303))).astype(np.int32)


def roundf(v: np.ndarray) -> np.ndarray:
    """C roundf: half away from zero."""
    return (np.sign(v) * np.floor(np.abs(v) + F32(0.5))).astype(F32)


def fp16(v) -> np.ndarray:
    """Round float32 to fp16 and back (GGML_FP32_TO_FP16 then FP16_TO_FP32)."""
    return np.asarray(v, dtype=F32).astype(np.float16).astype(F32)


def fp16_bytes(v) -> np.ndarray:
    return np.asarray(v, dtype=F32).astype(np.float16).reshape(-1, 1).view(np.uint8)


def div(a, b) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return (np.asarray(a, dtype=F32) / np.asarray(b, dtype=F32)).astype(F32)


def first_absmax(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(amax, the signed value that reaches it first), as C's strict ``>`` scan."""
    i = np.argmax(np.abs(x), axis=-1)[..., None]
    mx = np.take_along_axis(x, i, axis=-1)[..., 0]
    return np.abs(mx), mx


def pack_nibbles(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return (lo.astype(np.uint8) & 0xF) | ((hi.astype(np.uint8) & 0xF) << 4)


def qh_bits(L: np.ndarray) -> np.ndarray:
    """Bit 4 of 32 5-bit codes packed little-endian into 4 bytes (Q5_0/Q5_1)."""
    return np.packbits((L >> 4).astype(np.uint8) & 1, axis=-1, bitorder="little")


# ------------------------------------------------------ scale searches


def make_qx_quants(x: np.ndarray, nmax: int, qw: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric codes in [0, 2 nmax) and the scale, searched over 18 trial
    scales minimising the weighted error (rmse_type 1: weights x^2 unless
    ``qw``)."""
    amax, mx = first_absmax(x)
    zero = amax < GROUP_MAX_EPS
    mx = np.where(zero, F32(1), mx).astype(F32)
    w = (x * x).astype(F32) if qw is None else qw.astype(F32)
    nm = F32(nmax)

    def trial(iscale):
        lv = np.clip(nearest_int(iscale[:, None] * x), -nmax, nmax - 1)
        lf = lv.astype(F32)
        return lv, seqsum((w * x) * lf), seqsum((w * lf) * lf)

    lv, sumlx, suml2 = trial(div(-nm, mx))
    L = lv + nmax
    scale = np.where(suml2 != 0, div(sumlx, suml2), F32(0)).astype(F32)
    best = (scale * sumlx).astype(F32)
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = div(-(nm + F32(0.1) * F32(step)), mx)
        lv, slx, sl2 = trial(iscale)
        upd = (sl2 > 0) & (slx * slx > best * sl2)
        L = np.where(upd[:, None], lv + nmax, L)
        scale = np.where(upd, div(slx, sl2), scale)
        best = np.where(upd, scale * slx, best).astype(F32)
    return np.where(zero, F32(0), scale).astype(F32), np.where(zero[:, None], 0, L)


def _refine(x, w, L, sumlx, suml2, lo, hi, *, sl2_first):
    """Up to 5 passes of single-code moves, in order, that raise
    sumlx^2 / suml2 (the weighted fit of a scale); make_q3_quants and
    make_qp_quants differ only in the bounds and where they test suml2 > 0."""
    wx = (w * x).astype(F32)
    for _ in range(5):
        for i in range(x.shape[1]):
            li = L[:, i].astype(F32)
            slx = (sumlx - wx[:, i] * li).astype(F32)
            sl2 = (suml2 - (w[:, i] * li) * li).astype(F32)
            new_l = np.clip(nearest_int(div(x[:, i] * sl2, slx)), lo, hi)
            nf = new_l.astype(F32)
            slx2 = (slx + wx[:, i] * nf).astype(F32)
            sl22 = (sl2 + (w[:, i] * nf) * nf).astype(F32)
            upd = (slx > 0) & (new_l != L[:, i]) & ((slx2 * slx2) * suml2 > (sumlx * sumlx) * sl22)
            upd &= (sl2 > 0) if sl2_first else (sl22 > 0)
            L[:, i] = np.where(upd, new_l, L[:, i])
            sumlx = np.where(upd, slx2, sumlx)
            suml2 = np.where(upd, sl22, suml2)
    return L, sumlx, suml2


def make_q3_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Q3_K's sub-block search: rounding at -nmax/max, then up to 5 passes of
    per-weight moves that improve the x^2-weighted fit."""
    amax, mx = first_absmax(x)
    zero = amax < GROUP_MAX_EPS
    mx = np.where(zero, F32(1), mx).astype(F32)
    iscale = div(F32(-nmax), mx)
    L = np.clip(nearest_int(iscale[:, None] * x), -nmax, nmax - 1)
    w = (x * x).astype(F32)
    lf = L.astype(F32)
    sumlx = seqsum((w * x) * lf)
    suml2 = seqsum((w * lf) * lf)
    L, sumlx, suml2 = _refine(x, w, L, sumlx, suml2, -nmax, nmax - 1, sl2_first=False)
    scale = np.where(suml2 > 0, div(sumlx, suml2), F32(0))
    return np.where(zero, F32(0), scale).astype(F32), np.where(zero[:, None], 0, L + nmax)


def make_qkx(x, w, nmax, rmin, rdelta, nstep, use_mad, v3):
    """make_qkx2_quants (``v3`` False) / make_qkx3_quants (True): asymmetric
    codes [0, nmax] with a scale and a min fitted by weighted least squares
    over nstep + 1 trial scales. Returns (scale, the_min = -min, L)."""
    mn = np.minimum(x.min(axis=1), F32(0)).astype(F32)
    mxv = x.max(axis=1).astype(F32)
    sum_w = seqsum(w)
    sum_x = seqsum(w * x)
    flat = (mxv <= mn) if v3 else (mxv == mn)
    rng_ = np.where(flat, F32(1), mxv - mn).astype(F32)
    iscale = div(F32(nmax), rng_)
    scale = div(F32(1), iscale)
    L = np.clip(nearest_int(iscale[:, None] * (x - mn[:, None])), 0, nmax)

    def err(sc, mnv, lv):
        d = (sc[:, None] * lv.astype(F32) + mnv[:, None]) - x
        d = np.abs(d) if use_mad else d * d
        return seqsum(w * d)

    best = err(scale, mn, L)
    for step in range(nstep + 1):
        iscale = div(F32(rmin) + F32(rdelta) * F32(step) + F32(nmax), mxv - mn)
        with np.errstate(invalid="ignore", over="ignore"):
            v = (iscale[:, None] * (x - mn[:, None])).astype(F32)
        lv = np.clip(nearest_int(v), 0, nmax)
        lf = lv.astype(F32)
        sum_l = seqsum(w * lf)
        sum_l2 = seqsum((w * lf) * lf)
        sum_xl = seqsum((w * lf) * x)
        D = (sum_w * sum_l2 - sum_l * sum_l).astype(F32)
        this_scale = div(sum_w * sum_xl - sum_x * sum_l, D)
        this_min = div(sum_l2 * sum_x - sum_l * sum_xl, D)
        pos = this_min > 0
        this_min = np.where(pos, F32(0), this_min).astype(F32)
        this_scale = np.where(pos, div(sum_xl, sum_l2), this_scale).astype(F32)
        cur = err(this_scale, this_min, lv)
        upd = (D > 0) & (cur < best) & ~flat
        L = np.where(upd[:, None], lv, L)
        best = np.where(upd, cur, best)
        scale = np.where(upd, this_scale, scale)
        mn = np.where(upd, this_min, mn).astype(F32)
    scale = np.where(flat, F32(0), scale).astype(F32)
    return scale, (-mn).astype(F32), np.where(flat[:, None], 0, L)


def make_qp_quants(x: np.ndarray, nmax: int, qw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative codes [0, nmax] for the super-block scales of the
    importance-weighted K-quants (weights ``qw``)."""
    mx = np.maximum(x.max(axis=1), F32(0)).astype(F32)
    zero = mx < GROUP_MAX_EPS
    mx = np.where(zero, F32(1), mx).astype(F32)
    iscale = div(F32(nmax), mx)
    L = nearest_int(iscale[:, None] * x)
    scale = div(F32(1), iscale)
    d = x - scale[:, None] * L.astype(F32)
    best = seqsum((qw * d) * d)
    for step in range(-4, 5):
        if step == 0:
            continue
        isc = div(F32(0.1) * F32(step) + F32(nmax), mx)
        sc = div(F32(1), isc)
        lv = np.minimum(nearest_int(isc[:, None] * x), nmax)
        d = x - sc[:, None] * lv.astype(F32)
        mse = seqsum((qw * d) * d)
        upd = mse < best
        best = np.where(upd, mse, best)
        iscale = np.where(upd, isc, iscale).astype(F32)
    L = np.minimum(nearest_int(iscale[:, None] * x), nmax)
    lf = L.astype(F32)
    sumlx = seqsum((qw * x) * lf)
    suml2 = seqsum((qw * lf) * lf)
    L, sumlx, suml2 = _refine(x, qw, L, sumlx, suml2, None, nmax, sl2_first=True)
    scale = np.where(suml2 > 0, div(sumlx, suml2), F32(0))
    return np.where(zero, F32(0), scale).astype(F32), np.where(zero[:, None], 0, L)
