"""Token agreement statistics of a candidate model against its reference.

Both models read the same token stream (teacher forcing). At every position:

- top-1 agreement: the candidate's most likely next token is the
  reference's;
- top-5 agreement: the reference's most likely token is among the
  candidate's five most likely;
- KL(P_ref || P_cand) of the next-token distributions, reported as llama.cpp's
  ``perplexity --kl-divergence`` does: mean with its standard error, median,
  99th percentile, maximum;
- Δp: the candidate's probability of the stream's actual next token minus
  the reference's, reported as its RMS; and the perplexity of both models.

Each rate carries a Wilson 95% interval and the number of positions. A
certification needs top-1 >= 0.99 and top-5 >= 0.999 over at least 2,000
positions; fewer positions is reported as insufficient evidence, never as a
pass. Every top-1 miss is recorded as a divergence position.
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from helix_framework.errors import MeasurementError
from helix_framework.measure.stats import wilson_interval

GATE_TOP1 = 0.99
GATE_TOP5 = 0.999
MIN_POSITIONS = 2000
#: positions handled at once by `AgreementAccumulator.add` (memory, not numerics)
CHUNK = 128


@attrs.frozen
class AgreementResult:
    """Everything ``helix agree --json`` reports (per_layer is filled by the caller)."""

    positions: int
    top1: float
    top5: float
    intervals: dict[str, tuple[float, float]]
    kl: dict[str, float | None]
    rms_dp: float
    perplexity: dict[str, float | None]
    divergence_positions: list[int]
    certified: bool
    verdict: str
    per_layer: list[float] = attrs.field(factory=list)
    #: the figures of llama.cpp's ``perplexity --kl-divergence`` block (`llamacpp_stats`)
    llamacpp: dict[str, float] = attrs.field(factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = attrs.asdict(self)
        out["intervals"] = {k: list(v) for k, v in self.intervals.items()}
        return out


@attrs.frozen
class ReferenceChunk:
    """What the accumulator needs of the reference's logits for some positions,
    computed once (a sweep compares many candidates against one reference).

    ``log_p = logits - offset`` row by row; ``p`` is its exponent (float32).
    """

    logits: np.ndarray = attrs.field(repr=False, eq=False)
    offset: np.ndarray = attrs.field(repr=False, eq=False)
    p: np.ndarray = attrs.field(repr=False, eq=False)
    top1: np.ndarray = attrs.field(repr=False, eq=False)

    @classmethod
    def from_logits(cls, logits: np.ndarray) -> ReferenceChunk:
        x = np.asarray(logits, dtype=np.float32)
        offset = log_normalizer(x)
        p = x - offset[:, None].astype(np.float32)
        np.exp(p, out=p)
        return cls(logits=x, offset=offset, p=p, top1=x.argmax(axis=-1))


def log_normalizer(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-sum-exp of float32 logits, as float64 [T]."""
    m = logits.max(axis=-1, keepdims=True)
    e = np.exp(logits - m)
    return m[:, 0].astype(np.float64) + np.log(e.sum(axis=-1, dtype=np.float64))


class AgreementAccumulator:
    """Collects per-position figures chunk by chunk (logits never all in memory).

    Work is in float32 over the vocabulary with float64 sums: KL is
    ``sum p_ref (z_ref - z_cand) - (lse_ref - lse_cand)`` with logits ``z``, so
    identical logits give exactly 0 and near-identical ones lose nothing to
    the cancellation of two log-softmaxes."""

    def __init__(self) -> None:
        self._top1: list[np.ndarray] = []
        self._top5: list[np.ndarray] = []
        self._kl: list[np.ndarray] = []
        self._nll_ref: list[np.ndarray] = []
        self._nll_cand: list[np.ndarray] = []
        self._dp: list[np.ndarray] = []
        self._positions: list[np.ndarray] = []

    def add(
        self, ref: np.ndarray | ReferenceChunk, cand_logits: np.ndarray, next_tokens: np.ndarray, positions: np.ndarray
    ) -> None:
        """Add positions: the reference's logits [T, V] (or their `ReferenceChunk`),
        the candidate's logits, the stream's next token at each position ([T],
        -1 where the stream ends) and global positions.

        Top-5: the reference's top-1 token is in the candidate's top five when
        fewer than five tokens have a strictly higher candidate logit."""
        if not isinstance(ref, ReferenceChunk) and len(ref) > CHUNK:
            # bounded temporaries: a few [CHUNK, V] float32 arrays at a time
            for i in range(0, len(ref), CHUNK):
                s = slice(i, i + CHUNK)
                self.add(ref[s], cand_logits[s], next_tokens[s], positions[s])
            return
        ref = ref if isinstance(ref, ReferenceChunk) else ReferenceChunk.from_logits(ref)
        cand = np.asarray(cand_logits, dtype=np.float32)
        if ref.logits.shape != cand.shape:
            raise MeasurementError(f"logit shapes differ: {ref.logits.shape} vs {cand.shape}")
        self._top1.append(cand.argmax(axis=-1) == ref.top1)
        at_ref = cand[np.arange(cand.shape[0]), ref.top1]
        self._top5.append((cand > at_ref[:, None]).sum(axis=-1) < 5)
        offset = log_normalizer(cand)
        diff = ref.logits - cand
        diff *= ref.p
        kl = diff.sum(axis=-1, dtype=np.float64) - (ref.offset - offset) * ref.p.sum(axis=-1, dtype=np.float64)
        del diff
        self._kl.append(np.maximum(kl, 0.0))
        has_next = next_tokens >= 0
        rows = np.flatnonzero(has_next)
        tok = next_tokens[has_next]
        lr = ref.logits[rows, tok].astype(np.float64) - ref.offset[rows]
        lc = cand[rows, tok].astype(np.float64) - offset[rows]
        self._nll_ref.append(-lr)
        self._nll_cand.append(-lc)
        self._dp.append(np.exp(lc) - np.exp(lr))
        self._positions.append(np.asarray(positions))

    def extend(self, other: AgreementAccumulator) -> None:
        """Append ``other``'s positions after this one's (windows scored apart, merged in order)."""
        for mine, theirs in zip(self._lists(), other._lists(), strict=True):
            mine.extend(theirs)

    def _lists(self) -> tuple[list[np.ndarray], ...]:
        return self._top1, self._top5, self._kl, self._nll_ref, self._nll_cand, self._dp, self._positions

    @property
    def positions(self) -> int:
        return int(sum(a.size for a in self._top1))

    def result(self, min_positions: int = MIN_POSITIONS) -> AgreementResult:
        n = self.positions
        if n == 0:
            raise MeasurementError("token agreement over 0 positions: the prompt set produced no tokens")
        top1 = np.concatenate(self._top1)
        top5 = np.concatenate(self._top5)
        kl = np.concatenate(self._kl)
        positions = np.concatenate(self._positions)
        nll_ref, nll_cand, dp = (np.concatenate(a) for a in (self._nll_ref, self._nll_cand, self._dp))
        r1, r5 = float(top1.mean()), float(top5.mean())
        passed = r1 >= GATE_TOP1 and r5 >= GATE_TOP5
        if n < min_positions:
            certified, verdict = False, f"insufficient evidence: {n} positions, the gate needs at least {min_positions}"
        elif passed:
            certified, verdict = True, f"certified: top-1 {r1:.4f} >= {GATE_TOP1}, top-5 {r5:.4f} >= {GATE_TOP5}"
        else:
            certified, verdict = False, (
                f"not certified: top-1 {r1:.4f} (gate {GATE_TOP1}), top-5 {r5:.4f} (gate {GATE_TOP5})"
            )
        return AgreementResult(
            positions=n,
            top1=r1,
            top5=r5,
            intervals={"top1": wilson_interval(int(top1.sum()), n), "top5": wilson_interval(int(top5.sum()), n)},
            kl={
                "mean": float(kl.mean()),
                "stderr": float(kl.std(ddof=1) / np.sqrt(n)) if n > 1 else None,
                "median": float(np.median(kl)),
                "p99": float(np.percentile(kl, 99)),
                "max": float(kl.max()),
            },
            rms_dp=float(np.sqrt(np.mean(dp**2))) if dp.size else 0.0,
            perplexity={
                "reference": float(np.exp(nll_ref.mean())) if nll_ref.size else None,
                "candidate": float(np.exp(nll_cand.mean())) if nll_cand.size else None,
            },
            divergence_positions=[int(p) for p in positions[~top1]],
            certified=certified,
            verdict=verdict,
            llamacpp=llamacpp_stats(kl, nll_ref, nll_cand, dp, top1),
        )


#: percentiles of llama.cpp's KLD and Δp tables (it also prints the maximum, median and minimum)
KLD_PERCENTILES = (99.9, 99.0, 95.0, 90.0, 10.0, 5.0, 1.0, 0.1)
DP_PERCENTILES = (99.9, 99.0, 95.0, 90.0, 75.0, 25.0, 10.0, 5.0, 1.0, 0.1)


def _mean_and_uncertainty(x: np.ndarray) -> tuple[float, float]:
    """Mean and its standard error as llama.cpp computes them: from the sums of
    x and x², and 0 for 10 values or fewer."""
    n = x.size
    if n < 1:
        return 0.0, 0.0
    f = float(x.sum() / n)
    df = float((x * x).sum() / n - f * f)
    return f, (float(np.sqrt(df / (n - 1))) if df > 0 and n > 10 else 0.0)


def llamacpp_stats(kl: np.ndarray, nll_ref: np.ndarray, nll_cand: np.ndarray, dp: np.ndarray,
                   top1: np.ndarray) -> dict[str, float]:
    """The statistics of llama.cpp's ``perplexity --kl-divergence`` summary,
    with its definitions: ``*_unc`` are its ± (standard errors from sums of
    squares, propagated through exp and the ln-ratio with the covariance of
    the two log-perplexities); percentiles interpolate linearly between sorted
    values; ``same_top`` is the top-1 agreement with sqrt(p(1-p)/(n-1)).
    Perplexity and Δp are over positions with a next token, KL and top-1 over
    all. Differences from llama.cpp: the reference's log-probabilities are
    exact here (llama.cpp stores them as 16-bit codes and drops terms below
    e^-16 from the KL sum)."""
    out: dict[str, float] = {}
    n = nll_ref.size
    if n:
        lq, lq_unc = _mean_and_uncertainty(nll_cand)
        lb, lb_unc = _mean_and_uncertainty(nll_ref)
        cov = float((nll_cand * nll_ref).sum() / n - (nll_cand.sum() / n) * (nll_ref.sum() / n)) / (n - 1) if n >= 10 else 0.0
        ppl_q, ppl_b = float(np.exp(lq)), float(np.exp(lb))
        ln_ratio_unc = float(np.sqrt(max(lq_unc**2 + lb_unc**2 - 2 * cov, 0.0)))
        ratio = float(np.exp(lq - lb))
        out.update(
            ppl_q=ppl_q, ppl_q_unc=ppl_q * lq_unc, ppl_base=ppl_b, ppl_base_unc=ppl_b * lb_unc,
            ln_ppl_ratio=lq - lb, ln_ppl_ratio_unc=ln_ratio_unc,
            ppl_ratio=ratio, ppl_ratio_unc=ratio * ln_ratio_unc,
            ppl_diff=ppl_q - ppl_b,
            ppl_diff_unc=float(np.sqrt(max((ppl_q * lq_unc) ** 2 + (ppl_b * lb_unc) ** 2 - 2 * ppl_q * ppl_b * cov, 0.0))),
        )
        if lq_unc > 0 and lb_unc > 0:
            out["ln_ppl_correlation"] = cov / (lq_unc * lb_unc)
        dp_mean, dp_unc = _mean_and_uncertainty(dp)
        mse, mse_unc = _mean_and_uncertainty(dp * dp)
        rms = float(np.sqrt(mse))
        out.update(dp_mean=dp_mean, dp_mean_unc=dp_unc, rms_dp=rms, rms_dp_unc=0.5 / rms * mse_unc if rms > 0 else 0.0,
                   dp_max=float(dp.max()), dp_median=float(np.median(dp)), dp_min=float(dp.min()))
        out.update({f"dp_p{q:g}": float(v) for q, v in zip(DP_PERCENTILES, np.percentile(dp, DP_PERCENTILES))})
    kld, kld_unc = _mean_and_uncertainty(kl)
    out.update(kld_mean=kld, kld_mean_unc=kld_unc, kld_max=float(kl.max()), kld_median=float(np.median(kl)),
               kld_min=float(kl.min()))
    out.update({f"kld_p{q:g}": float(v) for q, v in zip(KLD_PERCENTILES, np.percentile(kl, KLD_PERCENTILES))})
    m = kl.size
    same = float(top1.mean())
    out.update(same_top=same, same_top_unc=float(np.sqrt(same * (1 - same) / (m - 1))) if m > 1 else 0.0)
    return out
