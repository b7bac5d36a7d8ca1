"""Sweeps: grid files, cardinality and refusal, invalid points, LanceDB rows,
resume after a real SIGKILL, and the Ray executor."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import save_file

from helix_test_support import ROOT, TESTS
from helix_framework.errors import ConfigError
from helix_framework.host import Host
from helix_framework.results import CANDIDATES, TENSORS, ResultsDB
from helix_framework.sweep import (
    MAX_POINTS,
    SweepError,
    SweepTooLarge,
    expand,
    iter_points,
    load_sweep,
    run_sweep,
    sweep_from_mapping,
)


@pytest.fixture(scope="module")
def host():
    return Host(autoload=False)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """Two codec matrices, a norm (skipped) and an embedding (passthrough)."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("sweep-model") / "model.safetensors"
    save_file({
        "model.embed_tokens.weight": rng.standard_normal((128, 64)).astype(np.float32),
        "model.layers.0.self_attn.q_proj.weight": rng.standard_normal((96, 64)).astype(np.float32),
        "model.layers.1.mlp.down_proj.weight": rng.standard_normal((96, 128)).astype(np.float32),
        "model.layers.0.input_layernorm.weight": np.ones(64, np.float32),
    }, str(path))
    return path


def rtn_sweep(**over):
    data = {
        "name": "t",
        "codec": "rtn",
        "grid": {"bits": [2, 4, 8], "group_size": [16, 32]},
        "fixed": {"rows": {"calibration": 48, "measurement": 24, "seed": 1}},
        "measure": ["rel_l2", "icc_3_1"],
    }
    data.update(over)
    return data


# -- the grid --------------------------------------------------------------------


def test_grid_enumeration_order_cardinality_and_paths(host):
    spec = sweep_from_mapping(rtn_sweep(grid={"bits": [2, 4, 8], "group_size": [16, 32],
                                              "rows.seed": [1, 2], "rotation": [{"kind": "identity"}]}), host)
    assert spec.cardinality == 12
    points = list(iter_points(spec))
    assert len(points) == 12 and len({json.dumps(p, sort_keys=True) for p in points}) == 12
    assert points[0] == {"bits": 2, "group_size": 16, "rows.seed": 1, "rotation": {"kind": "identity"}}
    assert points[1]["rows.seed"] == 2 and points[2]["group_size"] == 32  # last axis varies fastest
    expanded = expand(spec, host)
    assert all(p.error is None for p in expanded)
    cand = expanded[1].candidate
    assert (cand.params.bits, cand.params.group_size) == (2, 16)
    # a dotted axis replaces only its key: calibration/measurement come from fixed
    assert (cand.rows.calibration, cand.rows.measurement, cand.rows.seed) == (48, 24, 2)
    assert len({p.key for p in expanded}) == 12  # every point its own candidate key


def test_grid_over_the_limit_is_refused_before_enumeration(host, monkeypatch):
    import helix_framework.sweep.spec as sweep_mod  # where the grid is enumerated

    def boom(*a, **k):
        raise AssertionError("enumerated")

    monkeypatch.setattr(sweep_mod, "iter_points", boom)
    monkeypatch.setattr(sweep_mod.itertools, "product", boom)
    grid = {f"a{i}": list(range(10)) for i in range(6)}  # 10^6 points
    t0 = time.perf_counter()
    with pytest.raises(SweepTooLarge, match="1,000,000 points"):
        sweep_from_mapping({"name": "big", "codec": "rtn", "grid": grid}, host)
    assert time.perf_counter() - t0 < 0.5
    # exactly the limit is accepted (axis names are then checked: bits is a field)
    spec = sweep_from_mapping({"name": "edge", "codec": "rtn",
                               "grid": {"bits": [2] * 100, "group_size": [16] * 100}}, host)
    assert spec.cardinality == MAX_POINTS


def test_unknown_axis_names_the_key(host, tmp_path):
    with pytest.raises(ConfigError) as exc:
        sweep_from_mapping(rtn_sweep(grid={"bitz": [2]}), host)
    assert exc.value.path == "$.grid.bitz" and "bits" in exc.value.message
    with pytest.raises(ConfigError) as exc:
        sweep_from_mapping(rtn_sweep(grid={"bits": 4}), host)
    assert exc.value.path == "$.grid.bits" and "list" in exc.value.message
    path = tmp_path / "s.yaml"
    path.write_text("name: s\ncodec: rtn\ngrid:\n  bits: [4]\n  rows.calibrate: [3]\n")
    with pytest.raises(ConfigError) as exc:
        load_sweep(path, host)
    assert exc.value.path == "$.grid.rows.calibrate" and exc.value.line == 5


def test_invalid_points_are_reported_and_skipped_or_refused_with_strict(host, model, tmp_path):
    spec = sweep_from_mapping(rtn_sweep(grid={"bits": [4, 9], "group_size": [32]}), host)
    points = expand(spec, host)
    bad = [p for p in points if p.error]
    assert len(bad) == 1 and bad[0].values == {"bits": 9, "group_size": 32}
    assert "$.params.bits" in bad[0].error and "must be one of" in bad[0].error
    with pytest.raises(SweepError, match="1 of 2 points are invalid"):
        run_sweep(spec, tmp_path / "db", model=model, strict=True, host=host)
    assert not (tmp_path / "db").exists()  # refused before anything ran
    summary = run_sweep(spec, tmp_path / "db", model=model, jobs=1, host=host)
    assert summary.points == 2 and summary.valid == 1 and summary.ok == 1
    assert summary.invalid[0]["point"] == {"bits": 9, "group_size": 32}
    db = ResultsDB(tmp_path / "db")
    (row,) = db.rows(CANDIDATES)
    assert row["status"] == "ok" and json.loads(row["params"])["bits"] == 4
    assert row["codec"] == "rtn" and row["tensors"] == 2 and len(row["kernel_signature"]) == 64
    assert 0 < row["rel_l2"] < 0.2 and row["icc_3_1"] > 0.9 and row["bits_per_weight"] == pytest.approx(4.5)
    assert row["calibration_rel_l2"] is not None and row["top1"] is None  # no agreement measured
    tensors = db.rows(TENSORS)
    assert sorted(t["tensor"] for t in tensors) == ["model.layers.0.self_attn.q_proj.weight",
                                                    "model.layers.1.mlp.down_proj.weight"]
    assert all(t["candidate_key"] == row["candidate_key"] and t["n_held_out"] == 24 for t in tensors)


def test_orphan_tensor_rows_are_removed_on_resume(host, model, tmp_path):
    spec = sweep_from_mapping(rtn_sweep(grid={"bits": [8]}), host)
    first = run_sweep(spec, tmp_path / "db", model=model, jobs=1, host=host)
    db = ResultsDB(tmp_path / "db")
    good = db.rows(TENSORS)
    # a sweep killed between its two adds: tensor rows without a summary row
    orphan = [{**r, "candidate_key": "f" * 64} for r in good]
    import pyarrow as pa
    from helix_framework.results import _schema

    db.table(TENSORS).add(pa.Table.from_pylist(orphan, schema=_schema(TENSORS)))
    again = run_sweep(spec, tmp_path / "db", model=model, jobs=1, host=host)
    assert again.orphan_rows_removed == len(orphan) and again.ran == 0 and again.already_done == 1
    assert db.rows(TENSORS) == good and first.ok == 1


# -- resume after a real kill ------------------------------------------------------


def _helix_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELIX_") or k == "HELIX_JIT_CACHE_DIR"}
    env["PYTHONPATH"] = str(TESTS)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def test_resume_after_sigkill_leaves_no_partial_or_duplicate_rows(tmp_path):
    rng = np.random.default_rng(1)
    model = tmp_path / "m.safetensors"
    # big enough that one candidate takes a noticeable moment (ICC over every element)
    save_file({f"model.layers.{i}.mlp.up_proj.weight": rng.standard_normal((1024, 256)).astype(np.float32)
               for i in range(3)}, str(model))
    sweep = tmp_path / "s.yaml"
    sweep.write_text(
        "name: killed\ncodec: rtn\n"
        "grid:\n  bits: [2, 3, 4, 8]\n  group_size: [16, 32, 64]\n"
        "fixed:\n  rows: {calibration: 512, measurement: 256, seed: 3}\n"
        "measure: [rel_l2, icc_3_1, cosine]\n"
    )
    db_dir = tmp_path / "db"
    args = [sys.executable, "-m", "helix_framework.cli", "sweep", str(sweep), "--model", str(model),
            "--db", str(db_dir), "--jobs", "1"]
    proc = subprocess.Popen(args, cwd=ROOT, env=_helix_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 120
    n_done = 0
    try:
        while time.time() < deadline and proc.poll() is None:
            if (db_dir / f"{CANDIDATES}.lance").exists():
                n_done = ResultsDB(db_dir).table(CANDIDATES).count_rows()
                if n_done >= 1:
                    break
            time.sleep(0.05)
        assert n_done >= 1, proc.stderr.read().decode() if proc.poll() is not None else "no row in 120 s"
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its pool worker, mid-sweep
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    db = ResultsDB(db_dir)
    killed_at = db.table(CANDIDATES).count_rows()
    assert 1 <= killed_at < 12, "the kill must land mid-sweep"
    # every stored summary row is whole: its tensor rows are all there
    for row in db.rows(CANDIDATES):
        assert row["status"] == "ok" and row["tensors"] == 3
    rerun = subprocess.run(args + ["--json"], cwd=ROOT, env=_helix_env(tmp_path), capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["already_done"] == killed_at and summary["ran"] == 12 - killed_at
    candidates = db.rows(CANDIDATES)
    keys = [r["candidate_key"] for r in candidates]
    assert len(keys) == 12 and len(set(keys)) == 12
    tensors = db.rows(TENSORS)
    pairs = [(t["candidate_key"], t["tensor"]) for t in tensors]
    assert len(pairs) == 36 and len(set(pairs)) == 36 and {t["candidate_key"] for t in tensors} == set(keys)
    assert {json.loads(r["point"])["bits"] for r in candidates} == {2, 3, 4, 8}


# -- the Ray executor --------------------------------------------------------------


def test_ray_executor_runs_a_small_sweep_on_a_local_instance(host, model, tmp_path):
    pytest.importorskip("ray")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    spec = sweep_from_mapping(rtn_sweep(grid={"bits": [4, 8]}), host)
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024**2, log_to_driver=False,
             runtime_env={"env_vars": {"HELIX_JIT_CACHE_DIR": os.environ["HELIX_JIT_CACHE_DIR"],
                                       "RAY_USAGE_STATS_ENABLED": "0"}})
    try:
        assert ray.is_initialized()
        events = []
        summary = run_sweep(spec, tmp_path / "db", model=model, executor="ray", host=host,
                            on_event=lambda kind, data: events.append(data) if kind == "candidate" else None)
    finally:
        ray.shutdown()
    assert summary.executor == "ray" and summary.ok == 2 and not summary.failed
    db = ResultsDB(tmp_path / "db")
    rows = db.rows(CANDIDATES)
    assert sorted(json.loads(r["params"])["bits"] for r in rows) == [4, 8]
    assert len(db.rows(TENSORS)) == 4
    pids = {e["worker_pid"] for e in events}
    assert len(events) == 2 and os.getpid() not in pids  # ran in Ray worker processes, written by the driver


def test_a_failing_candidate_is_recorded_and_tried_again(host, model, tmp_path):
    spec = sweep_from_mapping(rtn_sweep(grid={"bits": [8]}, tensors="no_such_tensor"), host)
    first = run_sweep(spec, tmp_path / "db", model=model, jobs=1, host=host)
    assert first.ok == 0 and len(first.failed) == 1 and "no tensor was routed" in first.failed[0]["error"]
    again = run_sweep(spec, tmp_path / "db", model=model, jobs=1, host=host)
    assert again.ran == 1 and again.already_done == 0
    rows = ResultsDB(tmp_path / "db").rows(CANDIDATES)
    assert [r["status"] for r in rows] == ["failed", "failed"] and not ResultsDB(tmp_path / "db").rows(TENSORS)
