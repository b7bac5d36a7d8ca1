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


# -- llama.cpp's perplexity --kl-divergence summary ------------------------------


def _llamacpp_by_hand(ref, cand, nxt):
    """The summary as llama.cpp's kl_divergence() computes it, in plain Python
    (sums of values and squares; its percentile and median)."""
    def log_softmax(row):
        m = max(row)
        lse = m + math.log(sum(math.exp(v - m) for v in row))
        return [v - lse for v in row]

    def mean_unc(s, s2, n):
        f = s / n
        df = s2 / n - f * f
        return f, (math.sqrt(df / (n - 1)) if df > 0 and n > 10 else 0.0)

    def percentile(values, fraction):
        p = fraction * (len(values) - 1)
        ip = int(p)
        p -= ip
        return (1 - p) * values[ip] + p * values[min(ip + 1, len(values) - 1)]

    nll, nll_b, kld, dp, same = [], [], [], [], 0
    for r, c, t in zip(ref.tolist(), cand.tolist(), nxt.tolist()):
        lr, lc = log_softmax(r), log_softmax(c)
        nll.append(-lc[t])
        nll_b.append(-lr[t])
        kld.append(sum(math.exp(a) * (a - b) for a, b in zip(lr, lc)))
        dp.append(math.exp(lc[t]) - math.exp(lr[t]))
        same += r.index(max(r)) == c.index(max(c))
    n = len(nll)
    lq, lq_u = mean_unc(sum(nll), sum(x * x for x in nll), n)
    lb, lb_u = mean_unc(sum(nll_b), sum(x * x for x in nll_b), n)
    cov = (sum(a * b for a, b in zip(nll, nll_b)) / n - (sum(nll) / n) * (sum(nll_b) / n)) / (n - 1)
    mse, mse_u = mean_unc(sum(x * x for x in dp), sum(x**4 for x in dp), n)
    kld_sorted = sorted(kld)
    p = same / n
    return {
        "ppl_q": (math.exp(lq), math.exp(lq) * lq_u), "ppl_base": (math.exp(lb), math.exp(lb) * lb_u),
        "ln_ppl_ratio": (lq - lb, math.sqrt(lq_u**2 + lb_u**2 - 2 * cov)),
        "kld_mean": mean_unc(sum(kld), sum(x * x for x in kld), n),
        "kld_max": kld_sorted[-1], "kld_p99.9": percentile(kld_sorted, 0.999), "kld_p99": percentile(kld_sorted, 0.99),
        "kld_p95": percentile(kld_sorted, 0.95), "kld_p90": percentile(kld_sorted, 0.90),
        "kld_median": percentile(kld_sorted, 0.5), "kld_p10": percentile(kld_sorted, 0.10),
        "kld_p5": percentile(kld_sorted, 0.05), "kld_p1": percentile(kld_sorted, 0.01), "kld_min": kld_sorted[0],
        "rms_dp": (math.sqrt(mse), 0.5 / math.sqrt(mse) * mse_u),
        "same_top": (p, math.sqrt(p * (1 - p) / (n - 1))),
    }


def test_llamacpp_stats_match_a_hand_computation():
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((37, 11)).astype(np.float32)
    cand = (ref + 0.6 * rng.standard_normal((37, 11))).astype(np.float32)
    nxt = rng.integers(0, 11, 37)
    acc = AgreementAccumulator()
    acc.add(ref, cand, nxt, np.arange(37))
    s = acc.result(min_positions=10).llamacpp
    want = _llamacpp_by_hand(ref, cand, nxt)
    assert 0 < want["same_top"][0] < 1 and want["ln_ppl_ratio"][1] > 0  # every ± is exercised
    for key, value in want.items():
        if isinstance(value, tuple):
            assert s[key] == pytest.approx(value[0], rel=1e-6, abs=1e-9), key
            assert s[f"{key}_unc"] == pytest.approx(value[1], rel=1e-5, abs=1e-9), key
        else:
            assert s[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def test_llamacpp_uncertainties_are_zero_for_ten_positions_or_fewer():
    rng = np.random.default_rng(4)
    ref = rng.standard_normal((10, 7)).astype(np.float32)
    acc = AgreementAccumulator()
    acc.add(ref, ref + 0.5, rng.integers(0, 7, 10), np.arange(10))
    s = acc.result(min_positions=1).llamacpp
    assert s["ppl_q_unc"] == s["kld_mean_unc"] == s["rms_dp_unc"] == 0.0
    assert s["ln_ppl_ratio"] == pytest.approx(0.0, abs=1e-6)  # a constant shift leaves softmax unchanged


def test_llamacpp_report_layout():
    from helix_framework.cli import llamacpp_report

    rng = np.random.default_rng(5)
    ref = rng.standard_normal((120, 9)).astype(np.float32)
    acc = AgreementAccumulator()
    acc.add(ref, ref + rng.standard_normal((120, 9)).astype(np.float32), rng.integers(0, 9, 120), np.arange(120))
    s = acc.result(min_positions=1).llamacpp
    lines = llamacpp_report(s).splitlines()
    assert lines[1] == f"Mean PPL(Q)                   : {s['ppl_q']:10.6f} ± {s['ppl_q_unc']:10.6f}"
    assert f"Mean    KLD: {s['kld_mean']:10.6f} ± {s['kld_mean_unc']:10.6f}" in lines
    assert f"99.9%   KLD: {s['kld_p99.9']:10.6f}" in lines and f" 5.0%   KLD: {s['kld_p5']:10.6f}" in lines
    assert lines[-1] == f"Same top p: {100 * s['same_top']:6.3f} ± {100 * s['same_top_unc']:5.3f} %"
    assert lines[-2] == f"RMS Δp    : {100 * s['rms_dp']:6.3f} ± {100 * s['rms_dp_unc']:5.3f} %"
    assert [l for l in lines if l.startswith("======")] == [
        "====== Perplexity statistics ======", "====== KL divergence statistics ======",
        "====== Token probability statistics ======"]


class _Tokens:
    """A tokenizer of space-separated integers that adds BOS 99."""

    bos_id = 99

    def encode(self, text):
        return [99] + [int(t) for t in text.split()]


def test_text_windows_score_the_second_half_as_llamacpp():
    from helix_framework.agree import text_windows
    from helix_framework.prompts import Prompt

    text = Prompt("text:t", "user", "t.txt", " ".join(str(i) for i in range(1, 20)))  # 20 tokens with BOS
    windows = text_windows(_Tokens(), text, positions=1000, window=8)
    assert len(windows) == 2  # the last 4 tokens make no full window
    assert windows[0].ids.tolist() == [99, 1, 2, 3, 4, 5, 6, 7]
    assert windows[1].ids.tolist() == [99, 9, 10, 11, 12, 13, 14, 15]  # token 8 replaced by BOS
    assert windows[1].next_ids.tolist() == [9, 10, 11, 12, 13, 14, 15, -1]
    assert [w.scored for w in windows] == [slice(4, 7)] * 2  # 3 = 8 - 1 - 8//2 predictions each
    assert len(text_windows(_Tokens(), text, positions=3, window=8)) == 1


def test_second_half_perplexity_on_a_tiny_example():
    from helix_framework.agree import text_windows
    from helix_framework.prompts import Prompt

    # a "model" whose log-probability of the next token at window position j is -j/10:
    # only positions 3 and 4 of a 6-token window count (not 5: its next token is in the
    # next window), so PPL = exp((0.3 + 0.4) / 2)
    (w,) = text_windows(_Tokens(), Prompt("text:t", "user", "t", "1 2 3 4 5"), positions=10, window=6)
    vocab = 100
    logits = np.full((6, vocab), -1e4, np.float32)
    for j in range(6):
        t = int(w.next_ids[j]) if w.next_ids[j] >= 0 else 0
        logits[j, t] = 0.0
        logits[j, (t + 1) % vocab] = math.log(math.exp(j / 10) - 1) if j else -1e4
    acc = AgreementAccumulator()
    sc = w.scored
    acc.add(logits[sc], logits[sc], w.next_ids[sc], np.arange(sc.start, sc.stop))
    r = acc.result(min_positions=1)
    assert r.positions == 2
    assert r.perplexity["reference"] == pytest.approx(math.exp(0.35), rel=1e-5)
    assert r.llamacpp["ppl_base"] == pytest.approx(math.exp(0.35), rel=1e-5)
