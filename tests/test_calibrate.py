"""The calibration pipeline end to end on generated models: routing entries,
row splits, artifacts, verify, decode, atomicity, determinism, bad input."""

import json
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from helix_test_support import run_helix
from helix_framework import artifacts
from helix_framework.calibrate import calibrate, decode, split_rows
from helix_framework.config import RowsConfig, candidate_from_mapping
from helix_framework.errors import HelixError
from helix_framework.host import Host


def candidate(host, codec="rtn", params=None, rows=None, measure=("rel_l2", "cosine", "icc_3_1"), **extra):
    data = {"name": f"t_{codec}", "codec": codec, "params": params or {}, "measure": list(measure),
            "rows": rows or {"calibration": 48, "measurement": 16, "seed": 42}, **extra}
    return candidate_from_mapping(data, host)


@pytest.fixture(scope="module")
def host():
    return Host(autoload=False)


@pytest.fixture
def model(tmp_path):
    """A small Llama-like safetensors file with one tensor of each routing case."""
    rng = np.random.default_rng(0)
    tensors = {
        "model.embed_tokens.weight": rng.standard_normal((256, 64)).astype(np.float32),
        "model.layers.0.self_attn.q_proj.weight": rng.standard_normal((64, 64)).astype(np.float32),
        "model.layers.0.mlp.down_proj.weight": rng.standard_normal((64, 160)).astype(np.float16),
        "model.layers.0.input_layernorm.weight": np.ones(64, np.float32),
        "model.layers.0.mlp.experts.weight": rng.standard_normal((4, 32, 64)).astype(np.float32),
        "model.layers.0.self_attn.q_proj.bias": rng.standard_normal(64).astype(np.float32),
        "model.position_ids": np.arange(8192, dtype=np.int64).reshape(1, -1),
        "../../escape/attempt": rng.standard_normal((80, 64)).astype(np.float32),
        "lm_head.weight": rng.standard_normal((256, 64)).astype(np.float32),
    }
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    return path, tensors


def test_every_tensor_gets_an_entry_with_its_route(tmp_path, host, model):
    path, tensors = model
    out = tmp_path / "out"
    summary = calibrate(path, candidate(host, params={"bits": 8}), out, host=host)
    manifest = artifacts.read_manifest(out)
    entries = {e["name"]: e for e in manifest["tensors"]}
    assert set(entries) == set(tensors) and summary.tensors == len(tensors)
    routes = {name: e["route"] for name, e in entries.items()}
    assert routes == {
        "model.embed_tokens.weight": "passthrough",
        "model.layers.0.self_attn.q_proj.weight": "codec",
        "model.layers.0.mlp.down_proj.weight": "codec",
        "model.layers.0.input_layernorm.weight": "skip",
        "model.layers.0.mlp.experts.weight": "codec",
        "model.layers.0.self_attn.q_proj.bias": "skip",
        "model.position_ids": "passthrough",
        "../../escape/attempt": "codec",
        "lm_head.weight": "passthrough",
    }
    assert all(e["reason"] for e in entries.values())
    experts = entries["model.layers.0.mlp.experts.weight"]
    assert experts["reshape"] == [128, 64] and (experts["n_rows"], experts["row_dim"]) == (128, 64)
    # a path-like name never escapes the output directory
    for e in entries.values():
        (f,) = e["files"]
        assert f["file"].startswith("tensors/") and "/" not in f["file"][len("tensors/"):]
        assert (out / f["file"]).resolve().parent == (out / "tensors").resolve()
    assert not (tmp_path / "escape").exists()
    assert manifest["source"]["files"] == {"model.safetensors": artifacts.sha256_of(path)}
    assert manifest["codec"]["name"] == "rtn" and len(manifest["kernel_signature"]) == 64


def test_rows_are_disjoint_recorded_and_measured_three_ways(tmp_path, host, model):
    path, _ = model
    out = tmp_path / "out"
    calibrate(path, candidate(host, params={"bits": 4, "group_size": 32}), out, host=host)
    e = next(e for e in artifacts.read_manifest(out)["tensors"] if e["name"].endswith("q_proj.weight"))
    assert e["rows"]["calibration"] == 48 and e["rows"]["held_out"] == 16 and e["rows"]["seed"] == 42
    assert e["rows"]["calibration_sha256"] != e["rows"]["held_out_sha256"]
    assert set(e["metrics"]) == {"held_out", "calibration", "all"}
    for label in e["metrics"]:
        assert {"rel_l2", "cosine_mean", "cosine_min", "icc_3_1"} <= set(e["metrics"][label])
    assert e["bits"]["total_bpw"] == pytest.approx(4 + 16 / 32)
    assert e["bits"]["ratio_vs_f16"] == pytest.approx(16 / 4.5)
    assert e["bits"]["ratio_vs_source"] == pytest.approx(32 / 4.5)


def test_split_rows_is_disjoint_and_clamps_small_tensors():
    s = split_rows(1000, RowsConfig(calibration=600, measurement=300, seed=1), False)
    assert len(set(s.calibration) & set(s.held_out)) == 0 and (s.calibration.size, s.held_out.size) == (600, 300)
    s = split_rows(100, RowsConfig(calibration=2048, measurement=512, seed=1), False)
    assert s.clamped and (s.calibration.size, s.held_out.size) == (75, 25)
    assert len(set(s.calibration) | set(s.held_out)) == 100
    assert np.array_equal(split_rows(100, RowsConfig(seed=3), False).held_out, split_rows(100, RowsConfig(seed=3), False).held_out)
    with pytest.raises(HelixError, match="cannot hold any row out"):
        split_rows(1, RowsConfig(), False, "t")


def test_passthrough_codec_and_decode_are_bit_exact(tmp_path, host, model):
    path, tensors = model
    out = tmp_path / "out"
    summary = calibrate(path, candidate(host, codec="passthrough"), out, host=host)
    assert summary.held_out["mean_rel_l2"] == 0.0 and summary.held_out["mean_icc_3_1"] == 1.0
    decode(out, tmp_path / "dec" / "model.safetensors", host=host)
    rebuilt = load_file(str(tmp_path / "dec" / "model.safetensors"))
    for name, value in tensors.items():
        if value.dtype == np.float16:  # codec tensors come back as float32
            assert rebuilt[name].dtype == np.float32 and np.array_equal(rebuilt[name], value.astype(np.float32))
        else:
            assert rebuilt[name].dtype == value.dtype and np.array_equal(rebuilt[name], value), name


def test_decode_reproduces_passthrough_tensors_and_reconstructs_codec_ones(tmp_path, host, model):
    path, tensors = model
    out = tmp_path / "out"
    calibrate(path, candidate(host, params={"bits": 8}), out, host=host)
    decode(out, tmp_path / "dec.safetensors", host=host)
    rebuilt = load_file(str(tmp_path / "dec.safetensors"))
    entries = {e["name"]: e for e in artifacts.read_manifest(out)["tensors"]}
    for name, value in tensors.items():
        if entries[name]["route"] == "codec":
            err = np.linalg.norm(rebuilt[name] - value.astype(np.float32)) / np.linalg.norm(value.astype(np.float32))
            assert 0 < err < 0.01 and rebuilt[name].shape == value.shape
        else:
            assert np.array_equal(rebuilt[name], value)


def test_verify_catches_a_changed_byte(tmp_path, host, model):
    path, _ = model
    out = tmp_path / "out"
    calibrate(path, candidate(host, params={"bits": 8}), out, host=host)
    proc = run_helix(["verify", str(out)])
    assert proc.returncode == 0 and "9 of 9 artifact files match" in proc.stdout
    victim = sorted((out / "tensors").iterdir())[3]
    data = bytearray(victim.read_bytes())
    data[-1] ^= 1
    victim.write_bytes(bytes(data))
    proc = run_helix(["verify", str(out)])
    assert proc.returncode == 1
    assert f"BAD  tensors/{victim.name}: sha256" in proc.stdout and "8 of 9" in proc.stdout
    with pytest.raises(artifacts.ArtifactError, match="do not match"):
        decode(out, tmp_path / "dec.safetensors", host=host)


def test_same_seed_gives_byte_identical_artifacts(tmp_path, host, model):
    path, _ = model
    cand = candidate(host, params={"bits": 4, "group_size": 32})
    calibrate(path, cand, tmp_path / "a", host=host)
    calibrate(path, cand, tmp_path / "b", host=host)
    files_a = {p.name: p.read_bytes() for p in (tmp_path / "a" / "tensors").iterdir()}
    files_b = {p.name: p.read_bytes() for p in (tmp_path / "b" / "tensors").iterdir()}
    assert files_a == files_b and len(files_a) == 9


def test_interrupted_run_keeps_the_old_result(tmp_path, host, model, monkeypatch):
    path, _ = model
    out = tmp_path / "out"
    calibrate(path, candidate(host, params={"bits": 8}), out, host=host)
    before = (out / "manifest.json").read_bytes()
    files_before = sorted(p.name for p in (out / "tensors").iterdir())

    import helix_framework.calibrate as cal

    real = cal.calibrate_matrix
    calls = {"n": 0}

    def exploding(x, name, comp, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(x, name, comp, **kwargs)

    monkeypatch.setattr(cal, "calibrate_matrix", exploding)
    with pytest.raises(KeyboardInterrupt):
        calibrate(path, candidate(host, params={"bits": 4, "group_size": 32}), out, host=host)
    assert (out / "manifest.json").read_bytes() == before
    assert artifacts.verify(out) == []
    assert set(files_before) <= {p.name for p in (out / "tensors").iterdir()}
    monkeypatch.setattr(cal, "calibrate_matrix", real)
    calibrate(path, candidate(host, params={"bits": 4, "group_size": 32}), out, host=host)
    assert artifacts.verify(out) == [] and len(list((out / "tensors").iterdir())) == 9  # stale files removed


def test_nan_zero_rows_and_single_row_are_recorded_skips(tmp_path, host):
    rng = np.random.default_rng(1)
    bad = rng.standard_normal((64, 128)).astype(np.float32)
    bad[5, 7] = np.nan
    tensors = {
        "a.q_proj.weight": bad,
        "a.k_proj.weight": np.zeros((0, 8192), np.float32),
        "a.v_proj.weight": rng.standard_normal((1, 8192)).astype(np.float32),
        "a.o_proj.weight": rng.standard_normal((64, 128)).astype(np.float32),
    }
    save_file(tensors, str(tmp_path / "m.safetensors"))
    out = tmp_path / "out"
    calibrate(tmp_path / "m.safetensors", candidate(host, params={"bits": 8}), out, host=host)
    entries = {e["name"]: e for e in artifacts.read_manifest(out)["tensors"]}
    assert entries["a.q_proj.weight"]["route"] == "skip" and "1 NaN" in entries["a.q_proj.weight"]["reason"]
    assert entries["a.k_proj.weight"]["route"] == "skip"
    assert entries["a.v_proj.weight"]["route"] == "skip" and "no row can be held out" in entries["a.v_proj.weight"]["reason"]
    assert entries["a.o_proj.weight"]["route"] == "codec"
    decode(out, tmp_path / "dec.safetensors", host=host)
    rebuilt = load_file(str(tmp_path / "dec.safetensors"))
    assert np.array_equal(rebuilt["a.q_proj.weight"], bad, equal_nan=True)


def test_user_routes_come_first(tmp_path, host, model):
    path, _ = model
    out = tmp_path / "out"
    cand = candidate(host, params={"bits": 8}, routes=[{"match": r"q_proj\.weight$", "route": "passthrough"}])
    calibrate(path, cand, out, host=host)
    e = next(e for e in artifacts.read_manifest(out)["tensors"] if e["name"].endswith("q_proj.weight"))
    assert e["route"] == "passthrough" and "user" in e["reason"].lower()


def test_tensors_filter_keeps_others_as_passthrough(tmp_path, host, model):
    path, _ = model
    out = tmp_path / "out"
    calibrate(path, candidate(host, params={"bits": 8}), out, host=host, tensors="down_proj")
    routes = {e["name"]: (e["route"], e["reason"]) for e in artifacts.read_manifest(out)["tensors"]}
    assert routes["model.layers.0.mlp.down_proj.weight"][0] == "codec"
    assert routes["model.layers.0.self_attn.q_proj.weight"] == ("passthrough", "not selected by --tensors; kept as is")


def test_cli_errors_are_one_line(tmp_path, model):
    path, _ = model
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: t\ncodec: rtn\nparams: {bits: 8}\nrows: {calibration: 48, measurement: 16}\n")
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(path.read_bytes()[:1000])
    pickle = tmp_path / "pytorch_model.bin"
    pickle.write_bytes(b"\x80\x04junk")
    for model_path, fragment in [(truncated, "trunc.safetensors"), (pickle, "pickle"), (tmp_path / "nope.safetensors", "nope")]:
        proc = run_helix(["calibrate", str(model_path), "--config", str(cfg), "--out", str(tmp_path / "o")])
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("helix: error: ") and proc.stderr.count("\n") == 1 and fragment in proc.stderr
    proc = run_helix(["verify", str(tmp_path / "nothing")])
    assert proc.returncode == 2 and "no manifest" in proc.stderr


def test_cli_calibrate_json_summary(tmp_path, model):
    path, _ = model
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: t\ncodec: rtn\nparams: {bits: 8}\nrows: {calibration: 48, measurement: 16}\n")
    proc = run_helix(["calibrate", str(path), "--config", str(cfg), "--out", str(tmp_path / "o"), "--json"])
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["routed"] == {"passthrough": 3, "codec": 4, "skip": 2}
    assert 0 < summary["held_out"]["mean_rel_l2"] < 0.01


def test_campq_jit_and_numpy_references_agree_and_runs_repeat(tmp_path, monkeypatch):
    from helix_framework.calibrate import split_arrays

    host = Host()  # with the campq and hadamard plugins
    rng = np.random.default_rng(3)
    tensors = {f"layers.{i}.mlp.up_proj.weight": rng.standard_normal((400, 96)).astype(np.float32) for i in range(2)}
    save_file(tensors, str(tmp_path / "m.safetensors"))
    cand = candidate(host, codec="campq", params={"subspace_dim": 8, "centroids": 64, "codebook": "shared",
                                                  "residual": {"depth": 1, "centroids": 64}},
                     rows={"calibration": 300, "measurement": 100, "seed": 1},
                     rotation={"kind": "hadamard", "seed": 3})
    runs = {}
    for label, disabled in (("jit", None), ("jit again", None), ("numpy", "1")):
        if disabled:
            monkeypatch.setenv("HELIX_JIT_DISABLE", disabled)
        calibrate(tmp_path / "m.safetensors", cand, tmp_path / label, host=host)
        runs[label] = artifacts.read_manifest(tmp_path / label)
    assert runs["numpy"]["kernels"]["n_reference"] > 0 and runs["jit"]["kernels"]["n_reference"] == 0
    for a, b in zip(runs["jit"]["tensors"], runs["numpy"]["tensors"]):
        for key, value in a["metrics"]["held_out"].items():
            assert b["metrics"]["held_out"][key] == pytest.approx(value, rel=1e-4), key
        codes_a, _, _ = split_arrays(artifacts.read_safetensors(tmp_path / "jit" / a["files"][0]["file"]))
        codes_b, _, _ = split_arrays(artifacts.read_safetensors(tmp_path / "numpy" / b["files"][0]["file"]))
        for stage in codes_a:
            assert np.mean(codes_a[stage] == codes_b[stage]) > 0.999  # only float32 near-ties may differ
    # the same seed writes byte-identical artifacts
    same = [(a["files"][0]["sha256"] == b["files"][0]["sha256"]) for a, b in zip(runs["jit"]["tensors"], runs["jit again"]["tensors"])]
    assert all(same)
