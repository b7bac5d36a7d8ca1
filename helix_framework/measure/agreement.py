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


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64 (KL of near-identical models needs it)."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


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

    def to_json(self) -> dict[str, Any]:
        out = attrs.asdict(self)
        out["intervals"] = {k: list(v) for k, v in self.intervals.items()}
        return out


class AgreementAccumulator:
    """Collects per-position figures chunk by chunk (logits never all in memory)."""

    def __init__(self) -> None:
        self._top1: list[np.ndarray] = []
        self._top5: list[np.ndarray] = []
        self._kl: list[np.ndarray] = []
        self._nll_ref: list[np.ndarray] = []
        self._nll_cand: list[np.ndarray] = []
        self._dp: list[np.ndarray] = []
        self._positions: list[np.ndarray] = []

    def add(self, ref_logits: np.ndarray, cand_logits: np.ndarray, next_tokens: np.ndarray, positions: np.ndarray) -> None:
        """Add positions: logits [T, V] of both models, the stream's next token
        at each position ([T], -1 where the stream ends) and global positions."""
        if ref_logits.shape != cand_logits.shape:
            raise MeasurementError(f"logit shapes differ: {ref_logits.shape} vs {cand_logits.shape}")
        ref_top1 = ref_logits.argmax(axis=-1)
        self._top1.append(cand_logits.argmax(axis=-1) == ref_top1)
        k = min(5, cand_logits.shape[-1])
        cand_top5 = np.argpartition(cand_logits, -k, axis=-1)[:, -k:]
        self._top5.append((cand_top5 == ref_top1[:, None]).any(axis=-1))
        lp_ref, lp_cand = log_softmax(ref_logits), log_softmax(cand_logits)
        self._kl.append(np.maximum((np.exp(lp_ref) * (lp_ref - lp_cand)).sum(axis=-1), 0.0))
        has_next = next_tokens >= 0
        rows = np.flatnonzero(has_next)
        tok = next_tokens[has_next]
        self._nll_ref.append(-lp_ref[rows, tok])
        self._nll_cand.append(-lp_cand[rows, tok])
        self._dp.append(np.exp(lp_cand[rows, tok]) - np.exp(lp_ref[rows, tok]))
        self._positions.append(np.asarray(positions))

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
        )
