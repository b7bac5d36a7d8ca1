"""Measurements that do not apply to a tensor, and how figures combine over tensors."""

from typing import ClassVar

import numpy as np
import pytest
from safetensors.numpy import save_file

from helix_framework import hookimpl
from helix_framework.calibrate import calibrate
from helix_framework.config import candidate_from_mapping
from helix_framework.errors import NotApplicable, PluginError
from helix_framework.host import Host
from helix_framework.measurement import Measurement


class Sqnr(Measurement):
    """SQNR in dB; an exact reconstruction has none (infinite)."""

    name: ClassVar[str] = "sqnr_test"
    aggregate: ClassVar[str] = "min"

    def measure(self, context):
        err = float(((context.original.astype(np.float64) - context.reconstruction) ** 2).sum())
        if err == 0.0:
            raise NotApplicable("exact reconstruction: SQNR is infinite")
        return {"sqnr_db": 10 * np.log10(float((context.original.astype(np.float64) ** 2).sum()) / err)}


class RowsSeen(Measurement):
    name: ClassVar[str] = "rows_seen_test"
    aggregate: ClassVar[str] = "weighted_mean"

    def measure(self, context):
        return {"row_dim": float(context.original.shape[1])}


class BadAggregate(Measurement):
    name: ClassVar[str] = "bad_aggregate_test"
    aggregate: ClassVar[str] = "geometric"


class _Plugin:
    def __init__(self, *measurements):
        self.measurements = measurements

    @hookimpl
    def helix_register_measurements(self, register):
        for m in self.measurements:
            register(m)


@pytest.fixture
def host():
    host = Host(autoload=False)
    host.register(_Plugin(Sqnr(), RowsSeen()), name="outcome_tests")
    return host


def test_not_applicable_is_recorded_and_the_run_goes_on(tmp_path, host):
    rng = np.random.default_rng(0)
    # one matrix that int8 per row reproduces exactly (integers, max |w| 127 so the scale is 1), two it does not
    exact = rng.integers(-127, 128, (64, 64)).astype(np.float32)
    exact[:, 0] = 127
    tensors = {
        "model.layers.0.self_attn.q_proj.weight": exact,
        "model.layers.0.self_attn.k_proj.weight": rng.standard_normal((64, 64)).astype(np.float32),
        "model.layers.0.mlp.up_proj.weight": rng.standard_normal((64, 128)).astype(np.float32),
    }
    save_file(tensors, str(tmp_path / "m.safetensors"))
    cand = candidate_from_mapping({
        "name": "t", "codec": "rtn", "params": {"bits": 8}, "measure": ["rel_l2", "sqnr_test", "rows_seen_test"],
        "rows": {"calibration": 48, "measurement": 16, "seed": 1}}, host)
    summary = calibrate(tmp_path / "m.safetensors", cand, tmp_path / "out", host=host)
    manifest = __import__("json").loads((tmp_path / "out" / "manifest.json").read_text())
    entries = {e["name"]: e for e in manifest["tensors"]}
    exact = entries["model.layers.0.self_attn.q_proj.weight"]["metrics"]
    assert exact["not_applicable"] == {"sqnr_test": "exact reconstruction: SQNR is infinite"}
    assert "sqnr_db" not in exact["held_out"] and exact["held_out"]["rel_l2"] == 0.0
    assert summary.not_applicable == {"sqnr_test": 1}
    sqnr = [e["metrics"]["held_out"]["sqnr_db"] for n, e in entries.items() if "sqnr_db" in e["metrics"]["held_out"]]
    assert len(sqnr) == 2 and summary.held_out["min_sqnr_db"] == pytest.approx(min(sqnr))
    # weighted by each tensor's number of weights
    w = np.array([64 * 64, 64 * 64, 64 * 128], float)
    assert summary.held_out["weighted_mean_row_dim"] == pytest.approx(float((w * [64, 64, 128]).sum() / w.sum()))
    assert summary.held_out["mean_rel_l2"] > 0


def test_an_unknown_aggregate_fails_the_plugin_at_registration():
    host = Host(autoload=False)
    with pytest.raises(PluginError, match="aggregate must be one of mean, weighted_mean, min, max, median"):
        host.register(_Plugin(BadAggregate()), name="bad_aggregate")


def test_a_config_error_raised_for_one_tensor_keeps_its_key_path(tmp_path):
    from helix_framework.calibrate import _named
    from helix_framework.errors import ConfigError

    err = _named(ConfigError("subspace widths are uneven", path="$.params.subspaces", file="c.yaml", line=4), "blk.0.w")
    assert isinstance(err, ConfigError) and (err.path, err.file, err.line) == ("$.params.subspaces", "c.yaml", 4)
    assert str(err) == "c.yaml:4: $.params.subspaces: tensor 'blk.0.w': subspace widths are uneven"
