"""The row-count probe on a real MiniLM matrix reproduces the published collapse."""

import pytest

from helix_framework.config import load_candidate
from helix_framework.errors import ConfigError
from helix_framework.probe import parse_rows, probe
from helix_test_support import ROOT, run_helix

TENSOR = "encoder.layer.0.intermediate.dense.weight"  # [1536, 384]


@pytest.mark.slow
def test_in_sample_rises_to_one_while_held_out_does_not():
    cand = load_candidate(ROOT / "configs" / "codec" / "01_pr220_baseline.yaml")
    rows = probe("minilm", TENSOR, cand, [128, 256, 512, 1024, "all"])
    train = [r.training["icc_3_1"] for r in rows]
    held = [r.held_out["icc_3_1"] for r in rows[:-1]]
    assert [r.rows for r in rows] == [128, 256, 512, 1024, 1536]
    assert [r.centroids_capped_at for r in rows] == [128, None, None, None, None]
    # fewer calibration rows than (capped) centroids: every row is its own centroid
    assert train[0] > 0.999 and train[1] > 0.999 and rows[0].training["rel_l2"] < 1e-3
    # the in-sample figure falls as the calibration set grows ...
    assert all(a >= b - 1e-9 for a, b in zip(train, train[1:])) and train[-1] < 0.75
    # ... while the held-out figure stays poor, and never near the in-sample one
    assert max(held) < 0.5 and min(t - h for t, h in zip(train, held)) > 0.25
    assert all(r.held_out["rel_l2"] > 0.85 for r in rows[:-1])
    assert rows[-1].held_out is None  # 'all' leaves nothing held out


def test_parse_rows_and_cli_errors():
    assert parse_rows("128, 256,all") == [128, 256, "all"]
    with pytest.raises(ConfigError, match="neither a positive row count"):
        parse_rows("128,zero")
    proc = run_helix(["probe", "minilm", "--tensor", "no.such.tensor", "--config",
                      str(ROOT / "configs" / "codec" / "01_pr220_baseline.yaml")])
    assert proc.returncode == 2 and "no.such.tensor" in proc.stderr and proc.stderr.count("\n") == 1
