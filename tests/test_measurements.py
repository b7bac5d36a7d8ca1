"""The built-in measurements on small arrays with exact expectations."""

from __future__ import annotations

import math
import subprocess
import sys

import attrs
import numpy as np
import pytest

from helix_framework import testing
from helix_framework.errors import MeasurementError
from helix_framework.layer_stats import LayerStats
from helix_framework.measure import BUILTIN_MEASUREMENTS
from helix_framework.measure.builtin import MAX_PAIRS
from helix_framework.measurement import MeasureContext, Measurement

BY_NAME = {m.name: m for m in BUILTIN_MEASUREMENTS}


def ctx(x, y, seed=0, tensor="blk.0.w"):
    return MeasureContext(
        original=np.asarray(x, dtype=np.float32),
        reconstruction=np.asarray(y, dtype=np.float32),
        split="held_out",
        seed=seed,
        tensor=tensor,
    )


def two_rater_icc(a, b):
    """ICC(3,1) and ICC(1,1) for k = 2 in closed form, independent of stats.icc.

    With s = a + b and d = a - b: MSR = var(s)/2, MSE = var(d)/2 (sample
    variances), MSW = sum(d^2) / (2n).
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    s, d = a + b, a - b
    msr, mse, msw = s.var(ddof=1) / 2, d.var(ddof=1) / 2, np.sum(d * d) / (2 * len(a))
    return (msr - mse) / (msr + mse), (msr - msw) / (msr + msw)


def test_the_builtin_set():
    assert sorted(BY_NAME) == sorted(
        ["rel_l2", "cosine", "icc_3_1", "icc_1_1", "icc_3_1_pairs", "icc_1_1_pairs", "output_rel_l2", "token_agreement"]
    )
    for m in BUILTIN_MEASUREMENTS:
        assert isinstance(m, Measurement) and m.version == "1.0.0"


def test_rel_l2_exact():
    figures = BY_NAME["rel_l2"].measure(ctx([[3, 4], [0, 0]], [[3, 3], [0, 1]]))
    assert figures == {"rel_l2": pytest.approx(math.sqrt(2 / 25), rel=1e-15)}


def test_cosine_exact():
    figures = BY_NAME["cosine"].measure(ctx([[1, 0], [3, 4]], [[1, 0], [4, 3]]))
    assert figures["cosine_mean"] == pytest.approx((1 + 24 / 25) / 2, rel=1e-15)
    assert figures["cosine_min"] == pytest.approx(24 / 25, rel=1e-15)


def test_element_icc_exact_for_a_constant_offset():
    x = np.array([[1, 2], [3, 4]])
    y = x + 1
    three = BY_NAME["icc_3_1"].measure(ctx(x, y))
    one = BY_NAME["icc_1_1"].measure(ctx(x, y))
    # The offset is invisible to ICC(3,1); ICC(1,1) = (10/3 - 1/2) / (10/3 + 1/2) = 17/23.
    assert three["icc_3_1"] == pytest.approx(1.0, abs=1e-12)
    assert one["icc_1_1"] == pytest.approx(17 / 23, rel=1e-12)
    assert one["icc_1_1_n"] == 4.0 and three["icc_3_1_n"] == 4.0
    assert one["icc_1_1_ci_low"] < 17 / 23 < one["icc_1_1_ci_high"]


def test_element_icc_matches_closed_form_on_noise():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((20, 12)).astype(np.float32)
    y = (x + 0.4 * rng.standard_normal(x.shape)).astype(np.float32)
    want3, want1 = two_rater_icc(x.ravel(), y.ravel())
    assert BY_NAME["icc_3_1"].measure(ctx(x, y))["icc_3_1"] == pytest.approx(want3, rel=1e-10)
    assert BY_NAME["icc_1_1"].measure(ctx(x, y))["icc_1_1"] == pytest.approx(want1, rel=1e-10)


def test_pairs_icc_exact_on_three_rows():
    x = [[1, 0], [0, 1], [1, 1]]
    y = [[1, 0], [0, 1], [1, 0]]
    h = 1 / math.sqrt(2)
    # Pairs (0,1), (0,2), (1,2): original cosines 0, h, h; reconstructed 0, 1, 0.
    want3, want1 = two_rater_icc([0, h, h], [0, 1, 0])
    three = BY_NAME["icc_3_1_pairs"].measure(ctx(x, y))
    one = BY_NAME["icc_1_1_pairs"].measure(ctx(x, y))
    assert three["icc_3_1_pairs"] == pytest.approx(want3, rel=1e-6)
    assert one["icc_1_1_pairs"] == pytest.approx(want1, rel=1e-6)
    assert three["icc_3_1_pairs_n"] == 3.0


def test_identical_reconstruction_is_perfect():
    x = np.random.default_rng(0).standard_normal((30, 8)).astype(np.float32)
    c = ctx(x, x.copy())
    assert BY_NAME["rel_l2"].measure(c) == {"rel_l2": 0.0}
    cos = BY_NAME["cosine"].measure(c)
    assert cos["cosine_mean"] == pytest.approx(1.0, abs=1e-12)
    assert cos["cosine_min"] == pytest.approx(1.0, abs=1e-12)
    for name in ("icc_3_1", "icc_1_1", "icc_3_1_pairs", "icc_1_1_pairs"):
        figures = BY_NAME[name].measure(c)
        assert figures[name] == pytest.approx(1.0, abs=1e-12), name
        assert figures[f"{name}_ci_low"] == pytest.approx(1.0, abs=1e-9), name
        assert figures[f"{name}_ci_high"] == pytest.approx(1.0, abs=1e-9), name


def test_pairs_are_seeded_and_capped():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((100, 16)).astype(np.float32)  # 4950 pairs > MAX_PAIRS
    y = (x + 0.5 * rng.standard_normal(x.shape)).astype(np.float32)
    m = BY_NAME["icc_3_1_pairs"]
    first = m.measure(ctx(x, y, seed=1))
    assert m.measure(ctx(x, y, seed=1)) == first
    assert m.measure(ctx(x, y, seed=2))["icc_3_1_pairs"] != first["icc_3_1_pairs"]
    assert first["icc_3_1_pairs_n"] == MAX_PAIRS == 4096
    assert BY_NAME["icc_1_1_pairs"].measure(ctx(x[:10], y[:10]))["icc_1_1_pairs_n"] == 45


def test_every_builtin_passes_the_measurement_conformance_helper():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((12, 10)).astype(np.float32)
    y = (x + 0.1 * rng.standard_normal(x.shape)).astype(np.float32)
    inputs = rng.standard_normal((40, 10))
    for m in BUILTIN_MEASUREMENTS:
        if getattr(m, "scope", "tensor") == "tensor":
            context = ctx(x, y)
            if m.needs_stats:
                context = attrs.evolve(context, stats=LayerStats(inputs.T @ inputs, 40))
            testing.check_measurement(m, context)


def test_token_agreement_has_no_per_tensor_figure():
    with pytest.raises(MeasurementError, match="compares whole models"):
        BY_NAME["token_agreement"].measure(ctx([[1.0, 2.0]], [[1.0, 2.0]]))


@pytest.mark.parametrize("name", ["icc_3_1_pairs", "icc_1_1_pairs"])
def test_pairs_need_three_rows(name):
    with pytest.raises(MeasurementError, match=r"blk\.0\.w.*held_out.*at least 3 rows"):
        BY_NAME[name].measure(ctx([[1, 2], [3, 4]], [[1, 2], [3, 4]]))


def test_failures_are_errors_not_placeholders():
    with pytest.raises(MeasurementError, match="rel_l2.*all zeros"):
        BY_NAME["rel_l2"].measure(ctx(np.zeros((2, 2)), np.ones((2, 2))))
    with pytest.raises(MeasurementError, match="shape mismatch"):
        BY_NAME["cosine"].measure(ctx(np.ones((2, 2)), np.ones((2, 3))))
    with pytest.raises(MeasurementError, match="zero variance"):
        BY_NAME["icc_3_1"].measure(ctx(np.ones((3, 3)), np.ones((3, 3))))
    with pytest.raises(MeasurementError, match="2-D"):
        BY_NAME["icc_1_1"].measure(ctx(np.ones(4), np.ones(4)))
    with pytest.raises(MeasurementError, match="non-finite"):
        BY_NAME["icc_3_1"].measure(ctx(np.ones((3, 3)), np.full((3, 3), np.nan)))


def test_importing_the_builtins_does_not_import_scipy():
    code = (
        "import sys, helix_framework.measure, helix_framework.builtins, helix_framework.testing; "
        "assert 'scipy' not in sys.modules, 'scipy imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
