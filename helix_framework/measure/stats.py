"""Statistics behind the built-in measurements: pure functions, float64 inside.

- `icc`: the six intraclass correlations of Shrout & Fleiss (1979) with
  their published 95% confidence intervals (`icc_paired`: the same for two
  raters given as vectors, in bounded memory);
- `rel_l2`: pooled relative L2 error;
- `row_cosines`, `pair_cosines`, `draw_pairs`: row geometry;
- `wilson_interval`: Wilson score interval of a rate.

Every function accumulates in float64 whatever the input dtype, and raises
`MeasurementError` on input it cannot measure (too few targets, zero
variance, non-finite values, mismatched shapes); none returns NaN.

scipy is imported lazily (only the ICC confidence intervals need it), so
importing this module stays cheap.
"""

from __future__ import annotations

import math

import attrs
import numpy as np

from helix_framework.errors import MeasurementError

__all__ = [
    "ICC_FORMS",
    "IccResult",
    "icc",
    "icc_paired",
    "rel_l2",
    "row_cosines",
    "pair_cosines",
    "draw_pairs",
    "wilson_interval",
]

#: The forms `icc` accepts, in Shrout & Fleiss notation ("k" = mean of k raters).
ICC_FORMS: tuple[str, ...] = ("1,1", "2,1", "3,1", "1,k", "2,k", "3,k")

_CONFIDENCE = 0.95
_CHUNK = 1 << 20  # elements per float64 block in the streaming reductions


@attrs.frozen
class IccResult:
    """One intraclass correlation with its 95% confidence interval.

    ``F``, ``df1`` and ``df2`` are the F test of ICC = 0 that the interval is
    built on: MSR/MSW with df (n-1, n(k-1)) for the one-way forms (1,*),
    MSR/MSE with df (n-1, (n-1)(k-1)) for the two-way forms (2,*) and (3,*).
    ``F`` is ``inf`` when the error mean square is exactly zero (perfect
    agreement); the interval is then its limit. The interval is computed
    for all six forms, so ``ci_low`` and ``ci_high`` are never None.
    """

    form: str
    value: float
    ci_low: float
    ci_high: float
    n: int
    k: int
    F: float
    df1: int
    df2: int


def icc(matrix: np.ndarray, form: str) -> IccResult:
    """Intraclass correlation of ``matrix[n_targets, k_raters]``.

    Implements Shrout & Fleiss (1979), Psychological Bulletin 86(2):
    with row means r_i, column means c_j and grand mean M,
    SS_R = k sum (r_i - M)^2, SS_C = n sum (c_j - M)^2, SS_W = sum (x_ij - r_i)^2,
    SS_E = sum (x_ij - r_i - c_j + M)^2 (computed from residuals, so never
    negative through cancellation), and

    - ICC(1,1) = (MSR - MSW) / (MSR + (k-1) MSW)            one-way random
    - ICC(2,1) = (MSR - MSE) / (MSR + (k-1) MSE + k (MSC - MSE)/n)
                                                            two-way random, absolute
    - ICC(3,1) = (MSR - MSE) / (MSR + (k-1) MSE)            two-way mixed, consistency
    - ICC(1,k) = (MSR - MSW) / MSR
    - ICC(2,k) = (MSR - MSE) / (MSR + (MSC - MSE)/n)
    - ICC(3,k) = (MSR - MSE) / MSR

    ``form`` is one of `ICC_FORMS`; ``"1,4"`` etc. is accepted when 4 == k.

    95% confidence intervals for all six forms, those of Shrout & Fleiss
    (the k-rater intervals are the single-rater endpoints stepped up with
    Spearman-Brown, which for F-based forms is 1 - 1/F):

    - (1,1) and (3,1): F = MSR/MSW resp. MSR/MSE, F_L = F / F_.975(df1, df2),
      F_U = F * F_.975(df2, df1), CI = [(F_L-1)/(F_L+k-1), (F_U-1)/(F_U+k-1)];
    - (1,k) and (3,k): the same F_L, F_U, CI = [1 - 1/F_L, 1 - 1/F_U];
    - (2,1): Satterthwaite's approximate df v for the F of MSR against a
      mix of MSC and MSE (Shrout & Fleiss eq. for case 2);
    - (2,k): the (2,1) bounds stepped up with Spearman-Brown, L k/(1+(k-1)L).

    They reproduce the published example (R psych::ICC on the same data):
    ICC(3,1) [0.342, 0.95], ICC(1,1) [-0.133, 0.72], ICC(2,1) [0.019, 0.76].

    Raises `MeasurementError` for n < 2 targets, k < 2 raters, non-finite
    ratings, or ratings without variance (every ICC is 0/0 there).
    """
    x = _as_float64(matrix, "ratings")
    if x.ndim != 2:
        raise MeasurementError(f"ICC needs a 2-D matrix [targets, raters]; got shape {x.shape}")
    n, k = x.shape
    mode = _parse_form(form, k)
    if n < 2:
        raise MeasurementError(f"ICC needs at least 2 targets; got {n}")
    if k < 2:
        raise MeasurementError(f"ICC needs at least 2 raters; got {k}")

    row_means = x.mean(axis=1)
    col_means = x.mean(axis=0)
    grand = col_means.mean()
    within = x - row_means[:, None]
    sums = _Sums(
        ss_r=k * float(np.sum((row_means - grand) ** 2)),
        ss_c=n * float(np.sum((col_means - grand) ** 2)),
        ss_w=float(np.sum(within**2)),
        ss_e=float(np.sum((within - col_means[None, :] + grand) ** 2)),
    )
    return _icc_from_sums(sums, n, k, mode, form)


def icc_paired(a: np.ndarray, b: np.ndarray, form: str, *, chunk: int = _CHUNK) -> IccResult:
    """ICC of two raters given as equal-size arrays (flattened): the same
    result as ``icc(np.stack([a.ravel(), b.ravel()], axis=1), form)``, but
    accumulated in float64 over chunks of ``chunk`` targets, so memory stays
    O(chunk) however large the tensor.
    """
    a = np.asarray(a).reshape(-1)
    b = np.asarray(b).reshape(-1)
    if a.shape != b.shape:
        raise MeasurementError(f"raters differ in size: {a.size} vs {b.size}")
    n, k = a.size, 2
    mode = _parse_form(form, k)
    if n < 2:
        raise MeasurementError(f"ICC needs at least 2 targets; got {n}")
    spans = [(i, min(i + chunk, n)) for i in range(0, n, chunk)]
    sum_a = sum_b = 0.0
    for lo, hi in spans:
        ca = _as_float64(a[lo:hi], "ratings")
        cb = _as_float64(b[lo:hi], "ratings")
        sum_a += float(ca.sum())
        sum_b += float(cb.sum())
    ca_mean, cb_mean = sum_a / n, sum_b / n
    grand = (ca_mean + cb_mean) / 2
    ss_r = ss_w = ss_e = 0.0
    for lo, hi in spans:
        ca = a[lo:hi].astype(np.float64)
        cb = b[lo:hi].astype(np.float64)
        r = (ca + cb) / 2
        wa, wb = ca - r, cb - r
        ss_r += 2.0 * float(np.sum((r - grand) ** 2))
        ss_w += float(np.sum(wa * wa) + np.sum(wb * wb))
        ss_e += float(np.sum((wa - ca_mean + grand) ** 2) + np.sum((wb - cb_mean + grand) ** 2))
    ss_c = n * ((ca_mean - grand) ** 2 + (cb_mean - grand) ** 2)
    return _icc_from_sums(_Sums(ss_r=ss_r, ss_c=ss_c, ss_w=ss_w, ss_e=ss_e), n, k, mode, form)


@attrs.frozen
class _Sums:
    ss_r: float
    ss_c: float
    ss_w: float
    ss_e: float


def _icc_from_sums(sums: _Sums, n: int, k: int, mode: tuple[int, bool], form: str) -> IccResult:
    ss_r, ss_c, ss_w, ss_e = sums.ss_r, sums.ss_c, sums.ss_w, sums.ss_e
    if ss_r + ss_w == 0.0:
        raise MeasurementError(
            f"ICC undefined: all {n * k} ratings are identical (zero variance)"
        )

    msr = ss_r / (n - 1)
    msw = ss_w / (n * (k - 1))
    msc = ss_c / (k - 1)
    mse = ss_e / ((n - 1) * (k - 1))

    model, average = mode
    if model == 1:
        num, err = msr - msw, msw
        df1, df2 = n - 1, n * (k - 1)
    else:
        num, err = msr - mse, mse
        df1, df2 = n - 1, (n - 1) * (k - 1)

    if model == 1 or model == 3:
        den = msr if average else msr + (k - 1) * err
    else:
        den = msr + (msc - mse) / n if average else msr + (k - 1) * mse + k * (msc - mse) / n
    if not den > 0.0:
        # Only when the targets do not differ at all (MSR = 0 and no error):
        # e.g. every row constant while raters differ by a constant offset.
        raise MeasurementError(
            f"ICC({form}) undefined: targets show no variance "
            f"(MSR={msr:.3g}, MSW={msw:.3g}, MSE={mse:.3g}, MSC={msc:.3g})"
        )
    value = num / den
    f_stat = msr / err if err > 0.0 else math.inf

    if model == 2:
        low, high = _ci_case2(n, k, msr, msc, mse, value if not average else _icc21(n, k, msr, msc, mse))
        if average:
            low, high = _spearman_brown(low, k), _spearman_brown(high, k)
    else:
        low, high = _ci_f(f_stat, df1, df2, k, average)
    return IccResult(
        form=_canonical(mode), value=float(value), ci_low=low, ci_high=high,
        n=n, k=k, F=float(f_stat), df1=df1, df2=df2,
    )


def _parse_form(form: str, k: int) -> tuple[int, bool]:
    """(model, average) from "3,1", "3,k" or "3,<k>"."""
    try:
        model_s, raters_s = (p.strip() for p in str(form).split(","))
        model = int(model_s)
    except ValueError:
        model, raters_s = 0, ""
    if model not in (1, 2, 3) or raters_s not in ("1", "k", str(k)):
        raise MeasurementError(
            f"unknown ICC form {form!r}; expected one of {', '.join(ICC_FORMS)} (or 'm,{k}' for k={k})"
        )
    return model, raters_s != "1"


def _canonical(mode: tuple[int, bool]) -> str:
    return f"{mode[0]},{'k' if mode[1] else '1'}"


def _f_quantile(q: float, d1: float, d2: float) -> float:
    # scipy.special, not scipy.stats: the same inverse incomplete beta, without
    # the second it takes to import scipy.stats
    from scipy.special import fdtri

    return float(fdtri(d1, d2, q))


def _ci_f(f_stat: float, df1: int, df2: int, k: int, average: bool) -> tuple[float, float]:
    """Published CI of ICC(1,*) and ICC(3,*) from the F statistic."""
    if math.isinf(f_stat):
        return 1.0, 1.0  # limit of both bounds as F -> infinity
    f_l = f_stat / _f_quantile(_CONFIDENCE + (1 - _CONFIDENCE) / 2, df1, df2)
    f_u = f_stat * _f_quantile(_CONFIDENCE + (1 - _CONFIDENCE) / 2, df2, df1)
    if average:
        return 1.0 - 1.0 / f_l, 1.0 - 1.0 / f_u
    return (f_l - 1.0) / (f_l + k - 1.0), (f_u - 1.0) / (f_u + k - 1.0)


def _icc21(n: int, k: int, msr: float, msc: float, mse: float) -> float:
    return (msr - mse) / (msr + (k - 1) * mse + k * (msc - mse) / n)


def _ci_case2(n: int, k: int, msr: float, msc: float, mse: float, rho: float) -> tuple[float, float]:
    """Shrout & Fleiss CI of ICC(2,1): Satterthwaite df for the denominator."""
    q = _CONFIDENCE + (1 - _CONFIDENCE) / 2
    a = n * (1 + (k - 1) * rho) - k * rho
    if mse > 0.0:
        fj = msc / mse
        vn = (k - 1) * (n - 1) * (k * rho * fj + a) ** 2
        vd = (n - 1) * k**2 * rho**2 * fj**2 + a**2
        v = vn / vd
    else:
        # MSE = 0: Fj -> infinity and v -> k - 1 (divide vn and vd by Fj^2).
        v = float(k - 1)
    f_star = _f_quantile(q, n - 1, v)
    f_star_inv = _f_quantile(q, v, n - 1)
    base = k * msc + (k * n - k - n) * mse
    low = n * (msr - f_star * mse) / (f_star * base + n * msr)
    high = n * (f_star_inv * msr - mse) / (base + n * f_star_inv * msr)
    return float(low), float(high)


def _spearman_brown(r: float, k: int) -> float:
    return k * r / (1.0 + (k - 1) * r)


def rel_l2(x: np.ndarray, x_hat: np.ndarray) -> float:
    """Pooled relative L2 error: sqrt(sum (x - x_hat)^2 / sum x^2), in float64.

    Pooled over every element (not a mean of per-row errors), as in the
    origin lab. Raises `MeasurementError` when shapes differ, a value is not
    finite, or x is all zero (the ratio is undefined).
    """
    a, b = _pair_shapes(x, x_hat)
    a, b = a.reshape(-1), b.reshape(-1)
    err = signal = 0.0
    # Blocks of float64: a full float64 copy of a large tensor would double
    # (or, with the difference, triple) peak memory.
    for lo in range(0, a.size, _CHUNK):
        ca = _as_float64(a[lo : lo + _CHUNK], "original values")
        cb = _as_float64(b[lo : lo + _CHUNK], "reconstructed values")
        signal += float(np.sum(ca * ca))
        err += float(np.sum((ca - cb) ** 2))
    if signal == 0.0:
        raise MeasurementError("relative L2 undefined: the original is all zeros")
    return math.sqrt(err / signal)


def row_cosines(x: np.ndarray, x_hat: np.ndarray) -> np.ndarray:
    """Cosine between each row of ``x`` and the same row of ``x_hat`` (float64).

    Zero rows: a zero row reconstructed as zero scores 1.0 (perfect); a zero
    row against a non-zero one scores 0.0 (no direction in common). Values
    are clipped to [-1, 1] against rounding.
    """
    a, b = _pair_shapes(x, x_hat)
    if a.ndim != 2:
        raise MeasurementError(f"row cosines need 2-D rows; got shape {a.shape}")
    step = max(1, _CHUNK // max(1, a.shape[1]))
    out = np.empty(a.shape[0], dtype=np.float64)
    for lo in range(0, a.shape[0], step):
        out[lo : lo + step] = _cosines(
            _as_float64(a[lo : lo + step], "original values"),
            _as_float64(b[lo : lo + step], "reconstructed values"),
        )
    return out


def pair_cosines(x: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Cosine between rows ``x[i]`` and ``x[j]`` for each ``(i, j)`` in ``pairs`` (float64).

    Zero rows follow `row_cosines`: two zero rows 1.0, one zero row 0.0.
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise MeasurementError(f"pair cosines need 2-D rows; got shape {x.shape}")
    p = np.asarray(pairs)
    if p.ndim != 2 or p.shape[1] != 2 or not np.issubdtype(p.dtype, np.integer):
        raise MeasurementError(f"pairs must be an integer array [n_pairs, 2]; got {p.dtype} {p.shape}")
    if p.size and (p.min() < 0 or p.max() >= x.shape[0]):
        raise MeasurementError(f"pair index out of range for {x.shape[0]} rows")
    # convert only the rows the pairs touch, not the whole matrix
    used, inverse = np.unique(p, return_inverse=True)
    a = _as_float64(x[used], "rows")
    inverse = inverse.reshape(p.shape)
    return _cosines(a[inverse[:, 0]], a[inverse[:, 1]])


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na = np.sqrt(np.einsum("ij,ij->i", a, a))
    nb = np.sqrt(np.einsum("ij,ij->i", b, b))
    dots = np.einsum("ij,ij->i", a, b)
    out = np.zeros(a.shape[0], dtype=np.float64)
    both = (na > 0) & (nb > 0)
    out[both] = dots[both] / (na[both] * nb[both])
    out[(na == 0) & (nb == 0)] = 1.0
    return np.clip(out, -1.0, 1.0)


def draw_pairs(n_rows: int, n_pairs: int, seed: int) -> np.ndarray:
    """Seeded random row pairs ``int64[n_pairs, 2]`` with i != j (stored i < j).

    Pairs are drawn uniformly without replacement from the n(n-1)/2 distinct
    unordered pairs. If more pairs are asked for than exist, every pair
    appears once per full round (each round in a fresh seeded order) and
    only then repeats. Same arguments, same pairs, on every platform numpy's
    PCG64 runs on.
    """
    n_rows, n_pairs = int(n_rows), int(n_pairs)
    if n_rows < 2:
        raise MeasurementError(f"row pairs need at least 2 rows; got {n_rows}")
    if n_pairs < 0:
        raise MeasurementError(f"n_pairs must be >= 0; got {n_pairs}")
    total = n_rows * (n_rows - 1) // 2
    rng = np.random.default_rng(seed)
    chunks = []
    remaining = n_pairs
    while remaining > 0:
        take = min(remaining, total)
        chunks.append(rng.choice(total, size=take, replace=False))
        remaining -= take
    linear = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
    return _unrank_pairs(linear.astype(np.int64))


def _unrank_pairs(m: np.ndarray) -> np.ndarray:
    """Linear index m = j(j-1)/2 + i (0 <= i < j) back to (i, j)."""
    j = np.floor((1.0 + np.sqrt(1.0 + 8.0 * m.astype(np.float64))) / 2.0).astype(np.int64)
    # Correct float rounding of the square root by at most one step.
    j -= (j * (j - 1) // 2 > m).astype(np.int64)
    j += ((j + 1) * j // 2 <= m).astype(np.int64)
    i = m - j * (j - 1) // 2
    return np.stack([i, j], axis=1)


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of the rate successes/n (default 95%, z = 1.959964).

    E.g. 8 of 10 -> (0.4902, 0.9433). Raises `MeasurementError` for n < 1 or
    successes outside [0, n].
    """
    if n < 1:
        raise MeasurementError(f"a rate needs at least one position; got n={n}")
    if not 0 <= successes <= n:
        raise MeasurementError(f"successes must lie in [0, {n}]; got {successes}")
    p = successes / n
    z2 = z * z
    scale = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / scale
    half = z / scale * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # The bounds are exactly 0 at 0 successes and 1 at n: avoid rounding dust.
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == n else min(1.0, center + half)
    return low, high


def _as_float64(a: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise MeasurementError(f"{what} contain non-finite values (NaN or inf)")
    return arr


def _pair_shapes(x: np.ndarray, x_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(x), np.asarray(x_hat)
    if a.shape != b.shape:
        raise MeasurementError(f"shape mismatch: original {a.shape} vs reconstruction {b.shape}")
    if a.size == 0:
        raise MeasurementError("nothing to measure: empty arrays")
    return a, b
