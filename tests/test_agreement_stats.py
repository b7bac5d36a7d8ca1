"""Token-agreement statistics against hand-computed values."""

import math

import numpy as np
import pytest

from helix_framework.errors import MeasurementError
from helix_framework.measure.agreement import AgreementAccumulator, ReferenceChunk
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
    # float32 logits, float64 sums: within a few float32 roundings of the exact values
    assert r.kl["mean"] == pytest.approx((kl0 + kl1) / 2, abs=1e-7)
    assert r.kl["max"] == pytest.approx(max(kl0, kl1), abs=1e-7)
    # only position 0 has a next token (1): p_ref 0.1, p_cand 0.2
    assert r.rms_dp == pytest.approx(0.1, abs=1e-7)
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


def test_reference_chunk_is_normalised_for_extreme_logits():
    ref = ReferenceChunk.from_logits(np.array([[1000.0, 0.0, -1000.0]], np.float32))
    assert ref.offset[0] == 1000.0 and ref.p.sum() == pytest.approx(1.0) and ref.top1[0] == 0


def _float64_figures(ref, cand, nxt):
    def lsm(x):
        x = x.astype(np.float64) - x.max(axis=-1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))

    lr, lc = lsm(ref), lsm(cand)
    kl = (np.exp(lr) * (lr - lc)).sum(axis=-1)
    rows = np.arange(len(nxt))
    return kl, np.exp(lc[rows, nxt]) - np.exp(lr[rows, nxt])


@pytest.mark.parametrize("noise", [1e-3, 0.3])
def test_float32_accumulator_matches_float64_on_a_real_sized_vocabulary(noise):
    # 49,152 tokens as SmolLM2's; near-identical models (noise 1e-3) are where a
    # float32 log-softmax difference would cancel badly.
    rng = np.random.default_rng(1)
    ref = (rng.standard_normal((64, 49152)) * 3).astype(np.float32)
    cand = ref + (rng.standard_normal(ref.shape) * noise).astype(np.float32)
    nxt = rng.integers(0, ref.shape[1], 64)
    acc = AgreementAccumulator()
    acc.add(ref, cand, nxt, np.arange(64))
    r = acc.result(min_positions=1)
    kl, dp = _float64_figures(ref, cand, nxt)
    assert r.kl["mean"] == pytest.approx(kl.mean(), rel=1e-4, abs=1e-9)
    assert r.kl["max"] == pytest.approx(kl.max(), rel=1e-4, abs=1e-9)
    assert r.rms_dp == pytest.approx(np.sqrt(np.mean(dp**2)), rel=1e-4, abs=1e-12)
    order = np.sort(cand, axis=-1)[:, -5]
    assert r.top5 == np.mean(cand[np.arange(64), ref.argmax(-1)] >= order)


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


def test_npy_slices_read_what_a_memory_map_would(tmp_path):
    from helix_framework.agree import NpySlices

    a = np.random.default_rng(0).standard_normal((3, 50, 7)).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    s = NpySlices(tmp_path / "a.npy")
    assert np.array_equal(s.rows(1, 2), a[1:2])
    assert np.array_equal(s.rows(10, 37, axis=1), a[:, 10:37])
    assert np.array_equal(s.rows(0, 50, axis=1), a)
