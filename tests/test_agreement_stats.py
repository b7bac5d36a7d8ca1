"""Token-agreement statistics against hand-computed values."""

import math

import numpy as np
import pytest

from helix_framework.errors import MeasurementError
from helix_framework.measure.agreement import AgreementAccumulator, log_softmax
from helix_framework.prompts import default_prompts, load_prompts


def test_identical_logits_agree_exactly():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((50, 40)).astype(np.float32)
    acc = AgreementAccumulator()
    acc.add(logits, logits.copy(), rng.integers(0, 40, 50), np.arange(50))
    r = acc.result(min_positions=10)
    assert (r.top1, r.top5, r.kl["mean"], r.kl["max"], r.rms_dp) == (1.0, 1.0, 0.0, 0.0, 0.0)
    assert r.perplexity["reference"] == r.perplexity["candidate"]
    assert r.divergence_positions == [] and r.certified


def test_hand_computed_example():
    # position 0: same argmax; position 1: candidate's top-1 differs but ref's top-1 is in its top-5
    ref = np.log(np.array([[0.7, 0.1, 0.1, 0.05, 0.03, 0.02], [0.5, 0.3, 0.1, 0.05, 0.03, 0.02]]))
    cand = np.log(np.array([[0.6, 0.2, 0.1, 0.05, 0.03, 0.02], [0.3, 0.5, 0.1, 0.05, 0.03, 0.02]]))
    acc = AgreementAccumulator()
    acc.add(ref, cand, np.array([1, -1]), np.array([10, 11]))
    r = acc.result(min_positions=2)
    assert (r.top1, r.top5, r.positions, r.divergence_positions) == (0.5, 1.0, 2, [11])
    kl0 = 0.7 * math.log(0.7 / 0.6) + 0.1 * math.log(0.1 / 0.2)
    kl1 = 0.5 * math.log(0.5 / 0.3) + 0.3 * math.log(0.3 / 0.5)
    assert r.kl["mean"] == pytest.approx((kl0 + kl1) / 2, abs=1e-12)
    assert r.kl["max"] == pytest.approx(max(kl0, kl1), abs=1e-12)
    # only position 0 has a next token (1): p_ref 0.1, p_cand 0.2
    assert r.rms_dp == pytest.approx(0.1, abs=1e-12)
    assert r.perplexity["reference"] == pytest.approx(10.0) and r.perplexity["candidate"] == pytest.approx(5.0)
    assert not r.certified


def test_gate_and_insufficient_evidence():
    logits = np.zeros((100, 8), np.float32)
    logits[:, 0] = 1.0
    acc = AgreementAccumulator()
    acc.add(logits, logits, np.zeros(100, int), np.arange(100))
    r = acc.result()
    assert not r.certified and r.verdict.startswith("insufficient evidence: 100 positions")
    lo, hi = r.intervals["top1"]
    assert hi == 1.0 and 0.96 < lo < 0.97  # Wilson lower bound for 100/100
    with pytest.raises(MeasurementError):
        AgreementAccumulator().result()


def test_log_softmax_is_normalised_in_float64():
    lp = log_softmax(np.array([[1000.0, 0.0, -1000.0]], np.float32))
    assert lp.dtype == np.float64 and np.exp(lp).sum() == pytest.approx(1.0)


def test_default_prompts_record_their_sources():
    prompts = default_prompts()
    kinds = {p.kind for p in prompts}
    assert kinds == {"prose", "code", "dialogue"}
    assert sum(len(p.text) for p in prompts) > 16000  # comfortably over 4,000 tokens
    for p in prompts:
        assert p.source and len(p.sha256) == 64 and p.text.strip()
    assert [p.sha256 for p in default_prompts()] == [p.sha256 for p in prompts]  # reproducible


def test_user_prompts(tmp_path):
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "a.txt").write_text("first")
    assert [p.text for p in load_prompts(tmp_path)] == ["first", "second"]
    with pytest.raises(Exception, match="no \\*.txt prompt files"):
        load_prompts(tmp_path / "missing")
