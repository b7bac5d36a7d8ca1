"""`helix allocate` on a tiny generated Llama: estimates, the choice, the mix, resume and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

import helix_framework.calibrate as calibrate_module
import helix_framework.reference as reference
from helix_framework.allocate import allocate
from helix_framework.allocate import estimate as est
from helix_framework.config import load_candidate
from helix_framework.errors import AllocateError, BudgetError, OutputError
from helix_framework.frontier import load_candidates
from helix_framework.results import ALLOCATIONS, ResultsDB

from test_dataaware import WordTokenizer
from test_reference import _tiny_llama


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    monkeypatch.setattr(reference, "load_tokenizer", lambda source: WordTokenizer())
    return _tiny_llama(tmp_path / "tiny")


def _candidates(tmp_path, bits=(2, 4, 8), **extra):
    files = []
    for b in bits:
        f = tmp_path / f"rtn{b}.yaml"
        f.write_text(yaml.safe_dump({"name": f"rtn{b}", "codec": "rtn", "params": {"bits": b, "group_size": 16},
                                     "rows": {"calibration": 24, "measurement": 8},
                                     "routes": [{"match": "_proj", "route": "codec"}], **extra}))
        files.append(str(f))
    return files


def test_allocate_writes_a_mix_within_budget_and_measures_it(tmp_path, tiny):
    files = _candidates(tmp_path)
    out, db = tmp_path / "mix.yaml", tmp_path / "db"
    s = allocate(tiny, files, 4.5, out, db=db, positions=64, window=32)
    mix = load_candidate(out)
    assert mix.name == "mix" and len(mix.choices) == 14
    assert s.mix["bits_per_weight"] <= 4.5 and s.choice["bits_per_weight"] == pytest.approx(s.mix["bits_per_weight"])
    assert s.choice["estimated_cost"] >= s.choice["cost_lower_bound"] - 1e-12
    chosen = {mix.for_tensor(n).name for n in s.choice["tensors"]}
    assert chosen == set(s.choice["tensors"].values()) and len(chosen) >= 2  # a real mix at 4.5
    uniform = {r["candidate"]: r for r in s.candidates}
    assert uniform["rtn2"]["bits_per_weight"] < 4.5 < uniform["rtn8"]["bits_per_weight"]
    assert uniform["rtn8"]["kl_mean"] < uniform["rtn2"]["kl_mean"]
    rows = ResultsDB(db).rows(ALLOCATIONS)
    assert len(rows) == 3 * 14 and {r["candidate"] for r in rows} == {"rtn2", "rtn4", "rtn8"}
    shown = {r["candidate"] for r in load_candidates(db)}
    assert shown == {"rtn2", "rtn4", "rtn8", "mix"}  # the frontier shows the mix beside the uniform ones


def test_a_rerun_reuses_the_stored_estimates(tmp_path, tiny, monkeypatch):
    files = _candidates(tmp_path)
    out, db = tmp_path / "mix.yaml", tmp_path / "db"
    first = allocate(tiny, files, 5.0, out, db=db, positions=64, window=32)
    fits = []
    real = calibrate_module.weights_from_config
    monkeypatch.setattr(calibrate_module, "weights_from_config", lambda *a, **k: fits.append(a[1].name) or real(*a, **k))
    again = allocate(tiny, files, 5.0, out, db=db, positions=64, window=32)
    assert fits == ["mix"]  # only the verdict of the mix is fitted again
    assert again.choice["tensors"] == first.choice["tensors"]
    assert again.candidates == first.candidates


def test_a_budget_outside_the_range_gives_the_range(tmp_path, tiny):
    files = _candidates(tmp_path, bits=(4, 8))
    with pytest.raises(BudgetError) as info:
        allocate(tiny, files, 2.0, tmp_path / "mix.yaml", positions=64, window=32)
    assert "outside what these candidates reach" in str(info.value)
    assert (info.value.low, info.value.high) == (pytest.approx(5.0), pytest.approx(9.0))  # 16-weight groups: +1 bit
    assert not (tmp_path / "mix.yaml").exists()


def test_candidates_that_cannot_mix_are_named_before_any_work(tmp_path, tiny, monkeypatch):
    a = _candidates(tmp_path, bits=(4,))[0]
    b = tmp_path / "b.yaml"
    b.write_text(yaml.safe_dump({"name": "b", "codec": "rtn", "params": {"bits": 2, "group_size": 16},
                                 "rows": {"calibration": 24, "measurement": 8},
                                 "routes": [{"match": "_proj", "route": "codec"}],
                                 "calibration": {"sequences": 6, "tokens": 48}}))
    monkeypatch.setattr(calibrate_module, "weights_from_config", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(AllocateError, match="calibration: section differs") as info:
        allocate(tiny, [a, str(b)], 3.0, tmp_path / "mix.yaml", db=tmp_path / "db")
    assert info.value.candidate == str(b.resolve())
    with pytest.raises(AllocateError, match="at least two"):
        allocate(tiny, [a], 3.0, tmp_path / "mix.yaml")
    c = tmp_path / "c.yaml"
    c.write_text(yaml.safe_dump({"name": "c", "codec": "rtn", "params": {"bits": 2, "group_size": 16},
                                 "rows": {"calibration": 24, "measurement": 8},
                                 "routes": [{"match": "_proj", "route": "codec"}, {"match": "q_proj", "route": "skip"}]}))
    with pytest.raises(AllocateError, match="route rules differ"):
        allocate(tiny, [a, str(c)], 3.0, tmp_path / "mix.yaml")
    mine = tmp_path / "notes.yaml"
    mine.write_text("name: mine\n")
    with pytest.raises(OutputError, match="not written by helix allocate"):
        allocate(tiny, _candidates(tmp_path), 3.0, mine)
    assert mine.read_text() == "name: mine\n"
    assert not (tmp_path / "db").exists()


def test_block_kl_is_zero_for_the_reference_and_output_error_matches_activations(tiny):
    from helix_framework.sources import open_source

    with open_source(tiny) as source:
        model = reference.load_model(source)
    ids = np.random.default_rng(0).integers(0, 61, size=(2, 24))
    ref = est.reference_pass(model, ids)
    q = "model.layers.1.self_attn.q_proj.weight"
    same = est.estimate_groups(model, ref, [(1, [q])], {q: model.weights[q].copy()})
    assert same[q] == (pytest.approx(0.0, abs=1e-9), 0.0)
    rng = np.random.default_rng(1)
    noisy = model.weights[q] + 0.05 * rng.standard_normal(model.weights[q].shape).astype(np.float32)
    kl, err = est.estimate_groups(model, ref, [(1, [q])], {q: noisy})[q]
    assert kl > 0
    seen = {}
    model.linear_observer = lambda name, x: seen.setdefault(name, []).append(x)
    model.block_windows(1, ref.inputs[1])
    model.linear_observer = None
    x = np.concatenate(seen[q]).astype(np.float64)
    direct = float((((noisy - model.weights[q]).astype(np.float64) @ x.T) ** 2).sum() / x.shape[0])
    assert err == pytest.approx(direct, rel=1e-4)


def test_costs_share_a_block_by_output_error():
    kl = np.array([0.3, 0.3, 0.3, 0.1])
    err = np.array([1.0, 2.0, 0.0, 5.0])
    groups = np.array([0, 0, 0, 1])
    np.testing.assert_allclose(est.share_costs(kl, err, groups), [0.1, 0.2, 0.0, 0.1])
    np.testing.assert_allclose(est.share_costs(np.array([0.2, 0.2]), np.zeros(2), np.zeros(2)), [0.1, 0.1])


def test_cli_names_the_candidate_in_one_line_exit_2(tmp_path):
    from helix_test_support import run_helix

    a, b = _candidates(tmp_path, bits=(4, 8))
    text = open(b).read().replace("rtn8", "other") + "calibration: {sequences: 4, tokens: 64}\n"
    open(b, "w").write(text)
    r = run_helix(["allocate", "smollm2", "--candidates", a, b, "--target-bpw", "5", "--out", str(tmp_path / "m.yaml")])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [f"helix: error: {b}: its calibration: section differs from {a}'s "
                                             "(a mix is calibrated in one pass: give every candidate the same one)"]
    assert not (tmp_path / "m.yaml").exists()
