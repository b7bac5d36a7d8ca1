"""GGUF block quantizers in numpy, bit for bit as llama.cpp's.

Each quantizer takes float32 blocks ``x`` [n_blocks, block_size] (and, for
the importance-weighted path, ``qw`` of the same shape: one weight per input
column, as llama.cpp's ``quant_weights``; ``n_per_row`` for the types that
use a whole row's statistics) and returns the GGUF block bytes
[n_blocks, type_size]: the reference quantizer without ``qw``, the
``*_impl`` one with it. The shared arithmetic is in `search`.
"""

from __future__ import annotations

import numpy as np

from helix_codec_gguf.search import (
    F32, GROUP_MAX_EPS, QK_K, div, first_absmax, fp16, fp16_bytes, make_q3_quants, make_qp_quants,
    make_qkx, make_qx_quants, nearest_int, pack_nibbles, qh_bits, roundf, seqsum,
)

__all__ = ["QUANTIZERS", "BLOCK", "TYPE_SIZE", "quantize_blocks"]

KVALUES_IQ4NL = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=F32)
BLOCK = {"Q8_0": 32, "Q5_0": 32, "Q5_1": 32, "Q4_0": 32, "Q4_1": 32, "IQ4_NL": 32,
         "Q6_K": QK_K, "Q5_K": QK_K, "Q4_K": QK_K, "Q3_K": QK_K, "Q2_K": QK_K}
TYPE_SIZE = {"Q8_0": 34, "Q5_0": 22, "Q5_1": 24, "Q4_0": 18, "Q4_1": 20, "IQ4_NL": 18,
             "Q6_K": 210, "Q5_K": 176, "Q4_K": 144, "Q3_K": 110, "Q2_K": 84}


# ------------------------------------------------------ 32-weight types


def _row_sigma2(x: np.ndarray, n_per_row: int) -> np.ndarray:
    """sum(x^2) / n over each row's blocks, broadcast back to its blocks."""
    nb = n_per_row // x.shape[1]
    s = seqsum(x.reshape(-1, n_per_row) * x.reshape(-1, n_per_row))
    return np.repeat((s / F32(n_per_row)).astype(F32), nb)


def _imatrix_weights(x, qw, sigma2):
    return (qw * np.sqrt(sigma2[:, None] + x * x)).astype(F32)


def q8_0(x, qw=None, n_per_row=None):
    amax = np.abs(x).max(axis=1)
    d = (amax / F32(127)).astype(F32)
    idv = np.where(d != 0, div(F32(1), d), F32(0)).astype(F32)
    qs = roundf(x * idv[:, None]).astype(np.int8).view(np.uint8)
    return np.concatenate([fp16_bytes(d), qs], axis=1)


def _sym_ref(x, nmax):
    _, mx = first_absmax(x)
    d = (mx / F32(-nmax)).astype(F32)
    idv = np.where(d != 0, div(F32(1), d), F32(0)).astype(F32)
    v = (x * idv[:, None] + F32(nmax + 0.5)).astype(F32)
    L = np.minimum(np.trunc(v).astype(np.int8).astype(np.int32), 2 * nmax - 1)
    return d, L


def _asym_ref(x, nmax):
    mn = x.min(axis=1).astype(F32)
    mx = x.max(axis=1).astype(F32)
    d = ((mx - mn) / F32(nmax)).astype(F32)
    idv = np.where(d != 0, div(F32(1), d), F32(0)).astype(F32)
    v = ((x - mn[:, None]) * idv[:, None] + F32(0.5)).astype(F32)
    L = np.trunc(v).astype(np.int32)
    return d, mn, L


def _sym32(x, qw, n_per_row, nmax):
    """Scale and codes [0, 2 nmax) of Q4_0/Q5_0 (reference, or imatrix search)."""
    if qw is None:
        return _sym_ref(x, nmax)
    return make_qx_quants(x, nmax, _imatrix_weights(x, qw, _row_sigma2(x, n_per_row)))


def q4_0(x, qw=None, n_per_row=None):
    d, L = _sym32(x, qw, n_per_row, 8)
    return np.concatenate([fp16_bytes(d), pack_nibbles(L[:, :16], L[:, 16:])], axis=1)


def q5_0(x, qw=None, n_per_row=None):
    d, L = _sym32(x, qw, n_per_row, 16)
    return np.concatenate([fp16_bytes(d), qh_bits(L), pack_nibbles(L[:, :16], L[:, 16:])], axis=1)


def _asym32(x, qw, n_per_row, nmax):
    if qw is None:
        d, m, L = _asym_ref(x, nmax)
        return d, m, np.minimum(L, nmax) if nmax == 15 else L & 0x1F
    w = _imatrix_weights(x, qw, _row_sigma2(x, n_per_row))
    d, the_min, L = make_qkx(x, w, nmax, -0.9, 0.05, 36, False, True)
    return d, -the_min, L


def q4_1(x, qw=None, n_per_row=None):
    d, m, L = _asym32(x, qw, n_per_row, 15)
    return np.concatenate([fp16_bytes(d), fp16_bytes(m), pack_nibbles(L[:, :16], L[:, 16:])], axis=1)


def q5_1(x, qw=None, n_per_row=None):
    d, m, L = _asym32(x, qw, n_per_row, 31)
    return np.concatenate([fp16_bytes(d), fp16_bytes(m), qh_bits(L), pack_nibbles(L[:, :16], L[:, 16:])], axis=1)


def _iq4nl_index(v: np.ndarray) -> np.ndarray:
    """llama.cpp's best_index_int8: the nearest level, ties to the upper one,
    the distances compared in float32 as (x - lo) < (hi - x)."""
    mu = np.clip(np.searchsorted(KVALUES_IQ4NL, v, side="right"), 1, 15)
    lo, hi = KVALUES_IQ4NL[mu - 1], KVALUES_IQ4NL[mu]
    idx = np.where((v - lo).astype(F32) < (hi - v).astype(F32), mu - 1, mu)
    return np.where(v <= KVALUES_IQ4NL[0], 0, np.where(v >= KVALUES_IQ4NL[15], 15, idx))


def iq4_nl(x, qw=None, n_per_row=None):
    sigma2 = (seqsum(x * x) * F32(2.0 / 32)).astype(F32)
    w = (x * x).astype(F32) if qw is None else _imatrix_weights(x, qw, sigma2)
    amax, mx = first_absmax(x)
    zero = amax < GROUP_MAX_EPS
    mx = np.where(zero, F32(1), mx).astype(F32)

    def fit(idv):
        q = KVALUES_IQ4NL[_iq4nl_index(idv[:, None] * x)]
        return seqsum((w * q) * x), seqsum((w * q) * q)

    d = div(mx, F32(127))  # -max / values[0]
    sumqx, sumq2 = fit(div(F32(1), d))
    d = div(sumqx, sumq2)
    best = (d * sumqx).astype(F32)
    for itry in range(-7, 8):
        sqx, sq2 = fit(div(F32(itry - 127), mx))
        upd = (sq2 > 0) & (sqx * sqx > best * sq2)
        d = np.where(upd, div(sqx, sq2), d).astype(F32)
        best = np.where(upd, d * sqx, best).astype(F32)
    d = np.where(zero, F32(0), d).astype(F32)
    idv = np.where(d != 0, div(F32(1), d), F32(0)).astype(F32)
    L = _iq4nl_index(idv[:, None] * x)
    return np.concatenate([fp16_bytes(d), pack_nibbles(L[:, :16], L[:, 16:])], axis=1)


# ------------------------------------------------------ K-quants (256)


def _pack2(L: np.ndarray) -> np.ndarray:
    """2-bit codes of a 256 block: byte j/4 + l of half j holds l, +32, +64, +96."""
    L = L.astype(np.uint8).reshape(-1, 2, 4, 32)
    return (L[:, :, 0] | (L[:, :, 1] << 2) | (L[:, :, 2] << 4) | (L[:, :, 3] << 6)).reshape(-1, 64)


def _requant(x, d, m, lo, hi, keep):
    """Codes nearest_int((x + m) / d) clipped, keeping ``keep`` where d == 0."""
    ok = d != 0
    v = div(x + m, np.where(ok, d, F32(1)))
    return np.where(ok, np.clip(nearest_int(v), lo, hi), keep)


def q2_k(x, qw=None, n_per_row=None):
    nb = x.shape[0]
    xs = x.reshape(nb * 16, 16)
    if qw is None:
        sc, mins, L = make_qkx(xs, np.abs(xs).astype(F32), 3, -0.5, 0.1, 15, True, False)
        sc, mins = sc.reshape(nb, 16), mins.reshape(nb, 16)
        max_scale = np.maximum(sc.max(axis=1), F32(0))
        max_min = np.maximum(mins.max(axis=1), F32(0))
        ls = np.where(max_scale[:, None] > 0, nearest_int(div(F32(15), max_scale)[:, None] * sc), 0)
        lm = np.where(max_min[:, None] > 0, nearest_int(div(F32(15), max_min)[:, None] * mins), 0)
        scales = (ls & 0xFF).astype(np.uint8) | ((lm << 4) & 0xFF).astype(np.uint8)
        d = np.where(max_scale > 0, (max_scale / F32(15)).astype(F32), F32(0))
        dmin = np.where(max_min > 0, (max_min / F32(15)).astype(F32), F32(0))
    else:
        sumx2 = seqsum(x * x)
        sigma2 = (sumx2 / F32(QK_K)).astype(F32)
        w = _imatrix_weights(xs, qw.reshape(-1, 16), np.repeat(sigma2, 16))
        sw = seqsum(w).reshape(nb, 16)
        sc, mins, L = make_qkx(xs, w, 3, -0.9, 0.05, 36, False, True)
        d, Ls = make_qp_quants(sc.reshape(nb, 16), 15, sw)
        dmin, Lm = make_qp_quants(mins.reshape(nb, 16), 15, sw)
        scales = (Ls | (Lm << 4)).astype(np.uint8)
    d16, dm16 = fp16(d), fp16(dmin)
    dd = (d16[:, None] * (scales & 0xF).astype(F32)).reshape(-1)
    mm = (dm16[:, None] * (scales >> 4).astype(F32)).reshape(-1)
    L = _requant(xs, dd[:, None], mm[:, None], 0, 3, L).reshape(nb, QK_K)
    return np.concatenate([scales, _pack2(L), fp16_bytes(d), fp16_bytes(dmin)], axis=1)


def _q3_scales_pack(l63: np.ndarray) -> np.ndarray:
    """16 6-bit scales -> 12 bytes: low nibbles in 0..7, 2 high bits in 8..11."""
    l63 = l63.astype(np.uint8)
    out = np.zeros((l63.shape[0], 12), dtype=np.uint8)
    out[:, :8] = (l63[:, :8] & 0xF) | ((l63[:, 8:] & 0xF) << 4)
    hi = l63 >> 4
    for j in range(16):
        out[:, 8 + j % 4] |= hi[:, j] << (2 * (j // 4))
    return out


def q3_k(x, qw=None, n_per_row=None):
    nb = x.shape[0]
    xs = x.reshape(nb * 16, 16)
    if qw is None:
        sc, L = make_q3_quants(xs, 4)
        sc = sc.reshape(nb, 16)
        i = np.argmax(np.abs(sc), axis=1)[:, None]
        max_scale = np.take_along_axis(sc, i, axis=1)[:, 0]
        nz = max_scale != 0
        iscale = div(F32(-32), np.where(nz, max_scale, F32(1)))
        l = np.clip(nearest_int(iscale[:, None] * sc), -32, 31) + 32
        l = np.where(nz[:, None], l, 32)
        d = np.where(nz, div(F32(1), iscale), F32(0))
        packed = np.where(nz[:, None], _q3_scales_pack(l), 0).astype(np.uint8)
    else:
        sumx2 = seqsum(x * x)
        sigma2 = (F32(2) * sumx2 / F32(QK_K)).astype(F32)
        w = _imatrix_weights(xs, qw.reshape(-1, 16), np.repeat(sigma2, 16))
        sw = seqsum(w).reshape(nb, 16)
        sc, L = make_qx_quants(xs, 4, w)
        d, l = make_qx_quants(sc.reshape(nb, 16), 32, sw)
        packed = _q3_scales_pack(l)
    d16 = fp16(d)
    lo = np.concatenate([packed[:, :8] & 0xF, packed[:, :8] >> 4], axis=1).astype(np.int32)
    hi = np.stack([(packed[:, 8 + j % 4] >> (2 * (j // 4))) & 3 for j in range(16)], axis=1).astype(np.int32)
    scv = (lo | (hi << 4)) - 32
    dd = (d16[:, None] * scv.astype(F32)).reshape(-1)
    L = _requant(xs, dd[:, None], F32(0), -4, 3, L - 4).reshape(nb, QK_K) + 4
    high = (L > 3).reshape(nb, 8, 32)  # weight j: byte j % 32, bit j // 32
    hmask = np.zeros((nb, 32), dtype=np.uint8)
    for b in range(8):
        hmask |= high[:, b].astype(np.uint8) << b
    L = np.where(L > 3, L - 4, L)
    return np.concatenate([hmask, _pack2(L), packed, fp16_bytes(d)], axis=1)


def _k4_scales_pack(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    ls, lm = ls.astype(np.uint8), lm.astype(np.uint8)
    out = np.zeros((ls.shape[0], 12), dtype=np.uint8)
    out[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    out[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    out[:, 8:12] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    return out


def _k45(x, qw, nmax, rmin, rdelta, nstep):
    """Shared part of Q4_K and Q5_K: 8 sub-blocks of 32 with scale and min."""
    nb = x.shape[0]
    xs = x.reshape(nb * 8, 32)
    if qw is None:
        av_x = np.sqrt(seqsum(xs * xs) / F32(32)).astype(F32)
        w = (av_x[:, None] + np.abs(xs)).astype(F32)
        sc, mins, L = make_qkx(xs, w, nmax, rmin, rdelta, nstep, False, False)
        sc, mins = sc.reshape(nb, 8), mins.reshape(nb, 8)
        max_scale = np.maximum(sc.max(axis=1), F32(0))
        max_min = np.maximum(mins.max(axis=1), F32(0))
        inv_s = np.where(max_scale > 0, div(F32(63), max_scale), F32(0))
        inv_m = np.where(max_min > 0, div(F32(63), max_min), F32(0))
        ls = np.minimum(nearest_int(inv_s[:, None] * sc) & 0xFF, 63)
        lm = np.minimum(nearest_int(inv_m[:, None] * mins) & 0xFF, 63)
        d = (max_scale / F32(63)).astype(F32)
        dmin = (max_min / F32(63)).astype(F32)
    else:
        sigma2 = (F32(2) * seqsum(x * x) / F32(QK_K)).astype(F32)
        w = _imatrix_weights(xs, qw.reshape(-1, 32), np.repeat(sigma2, 8))
        sw = seqsum(w).reshape(nb, 8)
        sc, mins, L = make_qkx(xs, w, nmax, -0.9, 0.05, 36, False, True)
        d, ls = make_qp_quants(sc.reshape(nb, 8), 63, sw)
        dmin, lm = make_qp_quants(mins.reshape(nb, 8), 63, sw)
        ls, lm = np.minimum(ls, 63), np.minimum(lm, 63)
    d16, dm16 = fp16(d), fp16(dmin)
    dd = (d16[:, None] * ls.astype(F32)).reshape(-1)
    mm = (dm16[:, None] * lm.astype(F32)).reshape(-1)
    L = _requant(xs, dd[:, None], mm[:, None], 0, nmax, L).reshape(nb, QK_K)
    head = np.concatenate([fp16_bytes(d), fp16_bytes(dmin), _k4_scales_pack(ls, lm)], axis=1)
    return head, L


def q4_k(x, qw=None, n_per_row=None):
    head, L = _k45(x, qw, 15, -1.0, 0.1, 20)
    L = L.reshape(-1, 4, 2, 32)
    qs = pack_nibbles(L[:, :, 0], L[:, :, 1]).reshape(-1, 128)
    return np.concatenate([head, qs], axis=1)


def q5_k(x, qw=None, n_per_row=None):
    head, L = _k45(x, qw, 31, -0.5, 0.1, 15)
    L = L.reshape(-1, 4, 2, 32)
    qh = np.zeros((L.shape[0], 32), dtype=np.uint8)
    for k in range(4):
        qh |= ((L[:, k, 0] >> 4) & 1).astype(np.uint8) << (2 * k)
        qh |= ((L[:, k, 1] >> 4) & 1).astype(np.uint8) << (2 * k + 1)
    qs = pack_nibbles(L[:, :, 0] & 0xF, L[:, :, 1] & 0xF).reshape(-1, 128)
    return np.concatenate([head, qh, qs], axis=1)


def q6_k(x, qw=None, n_per_row=None):
    nb = x.shape[0]
    xs = x.reshape(nb * 16, 16)
    sc, L = make_qx_quants(xs, 32, None if qw is None else qw.reshape(-1, 16).astype(F32))
    sc = sc.reshape(nb, 16)
    i = np.argmax(np.abs(sc), axis=1)[:, None]
    max_scale = np.take_along_axis(sc, i, axis=1)[:, 0]
    zero = np.abs(max_scale) < GROUP_MAX_EPS
    iscale = div(F32(-128), np.where(zero, F32(1), max_scale))
    scales = np.minimum(nearest_int(iscale[:, None] * sc), 127)
    scales = np.where(zero[:, None], 0, scales)
    d = np.where(zero, F32(0), div(F32(1), iscale))
    d16 = fp16(d)
    dd = (d16[:, None] * scales.astype(F32)).reshape(-1)
    L = _requant(xs, dd[:, None], F32(0), -32, 31, L - 32).reshape(nb, QK_K) + 32
    L = np.where(zero[:, None], 0, L).astype(np.uint8).reshape(nb, 2, 4, 32)
    ql = np.concatenate([L[:, :, 0] & 0xF | ((L[:, :, 2] & 0xF) << 4),
                         L[:, :, 1] & 0xF | ((L[:, :, 3] & 0xF) << 4)], axis=2).reshape(nb, 128)
    qh = ((L[:, :, 0] >> 4) | ((L[:, :, 1] >> 4) << 2) | ((L[:, :, 2] >> 4) << 4) | ((L[:, :, 3] >> 4) << 6))
    return np.concatenate([ql, qh.reshape(nb, 64), scales.astype(np.int8).view(np.uint8), fp16_bytes(d)], axis=1)


QUANTIZERS = {"Q8_0": q8_0, "Q5_0": q5_0, "Q5_1": q5_1, "Q4_0": q4_0, "Q4_1": q4_1, "IQ4_NL": iq4_nl,
              "Q6_K": q6_k, "Q5_K": q5_k, "Q4_K": q4_k, "Q3_K": q3_k, "Q2_K": q2_k}


def quantize_blocks(rows: np.ndarray, qtype: str, weights: np.ndarray | None = None) -> np.ndarray:
    """GGUF bytes of float32 ``rows`` [n, d] (d a multiple of the block) as
    uint8 [n, d / block * type_size]; ``weights`` [d] are per-column
    importances (llama.cpp's imatrix), or None for the reference quantizer."""
    x = np.ascontiguousarray(rows, dtype=F32)
    n, d = x.shape
    bs = BLOCK[qtype]
    blocks = x.reshape(-1, bs)
    qw = None
    if weights is not None:
        qw = np.broadcast_to(np.asarray(weights, dtype=F32).reshape(1, d), (n, d)).reshape(-1, bs)
    out = QUANTIZERS[qtype](blocks, qw, d)
    return np.ascontiguousarray(out, dtype=np.uint8).reshape(n, d // bs * TYPE_SIZE[qtype])
