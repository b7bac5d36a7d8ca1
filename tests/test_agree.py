"""Token agreement end to end on the real SmolLM2 and MiniLM."""

import json

import pytest

from helix_framework import artifacts
from helix_test_support import ROOT, run_helix


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One reference cache for the module: the second run reuses the first's logits."""
    return {"HELIX_CACHE_DIR": str(tmp_path_factory.mktemp("helix-cache"))}


@pytest.mark.slow
def test_passthrough_agrees_exactly_and_is_certified(cache):
    proc = run_helix(["agree", "smollm2", "--config", "configs/codec/00_passthrough.yaml", "--json"], env=cache)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert (data["positions"], data["top1"], data["top5"]) == (2000, 1.0, 1.0)
    assert data["kl"] == {"mean": 0.0, "stderr": 0.0, "median": 0.0, "p99": 0.0, "max": 0.0}
    assert data["rms_dp"] == 0.0 and data["divergence_positions"] == []
    assert data["perplexity"]["reference"] == data["perplexity"]["candidate"]
    assert len(data["per_layer"]) == 31 and set(data["per_layer"]) == {0.0}
    assert data["certified"] and data["intervals"]["top1"][0] > 0.998
    assert {p["kind"] for p in data["prompts"]} >= {"prose", "code"}


@pytest.mark.slow
def test_token_agreement_inside_calibrate_and_from_artifacts(tmp_path, cache):
    cfg = tmp_path / "rtn.yaml"
    cfg.write_text(
        "name: rtn4_asym_blk0\ncodec: rtn\nparams: {bits: 4, group_size: 32, symmetric: false}\n"
        "rows: {calibration: 256, measurement: 64}\nmeasure: [rel_l2, token_agreement]\n"
    )
    out = tmp_path / "out"
    proc = run_helix(["calibrate", "smollm2", "--config", str(cfg), "--out", str(out), "--tensors", r"blk\.0\.",
                      "--json"], env=cache)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    ta = summary["token_agreement"]
    assert ta["positions"] == 2000 and ta["top1"] >= 0.99 and ta["kl_mean"] < 1e-3
    manifest = artifacts.read_manifest(out)
    assert manifest["token_agreement"]["top1"] == ta["top1"] and artifacts.verify(out) == []
    proc = run_helix(["agree", "smollm2", "--artifacts", str(out), "--json"], env=cache)
    again = json.loads(proc.stdout)
    assert again["top1"] == ta["top1"] and again["kl"]["mean"] == ta["kl_mean"]
    assert proc.returncode == (0 if again["certified"] else 1)


@pytest.mark.slow
def test_encoder_gate_is_on_embedding_cosine(cache):
    proc = run_helix(["agree", "minilm", "--config", "configs/codec/00_passthrough.yaml", "--json"], env=cache)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["kind"] == "encoder" and data["sentences"] >= 100
    assert data["cosine_mean"] == pytest.approx(1.0, abs=1e-6) and data["certified"]


def test_artifacts_of_another_model_are_refused(tmp_path, cache):
    cfg = tmp_path / "rtn.yaml"
    cfg.write_text("name: r\ncodec: rtn\nparams: {bits: 8}\nrows: {calibration: 256, measurement: 64}\n")
    out = tmp_path / "out"
    assert run_helix(["calibrate", "minilm", "--config", str(cfg), "--out", str(out), "--tensors", r"layer\.0\."]).returncode == 0
    proc = run_helix(["agree", "smollm2", "--artifacts", str(out)], env=cache)
    assert proc.returncode == 2 and "calibrated from a different model" in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_too_few_positions_is_insufficient_evidence(cache):
    proc = run_helix(["agree", "minilm", "--config", str(ROOT / "configs/codec/00_passthrough.yaml"),
                      "--prompts", str(ROOT / "data" / "prompts")], env=cache)
    # 1 dialogue file: fewer than 100 sentences, so never certified
    assert proc.returncode == 1 and "insufficient evidence" in proc.stdout


@pytest.mark.slow
def test_adc_engine_multiplies_from_codes(tmp_path, cache):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "name: vq\ncodec: campq\nparams: {subspace_dim: 8, centroids: 256, codebook: shared, row_scale: true, "
        "distance: adc_u8, residual: {depth: 1, centroids: 256}}\nrotation: {kind: hadamard, seed: 7}\n"
        "rows: {calibration: 512, measurement: 64}\n"
    )
    out = tmp_path / "out"
    assert run_helix(["calibrate", "smollm2", "--config", str(cfg), "--out", str(out), "--tensors",
                      r"blk\.0\.(attn_q|ffn_up)"], env=cache).returncode == 0
    runs = {}
    for engine in ("dense", "adc"):
        proc = run_helix(["agree", "smollm2", "--artifacts", str(out), "--positions", "100", "--engine", engine,
                          "--json"], env=cache)
        assert proc.returncode == 1, proc.stderr  # 100 positions: insufficient evidence
        runs[engine] = json.loads(proc.stdout)
    assert runs["adc"]["engine"] == "adc" and runs["dense"]["engine"] == "dense"
    # the uint8 tables change the products slightly: close to the dense path, not identical
    assert runs["adc"]["kl"]["mean"] != runs["dense"]["kl"]["mean"]
    assert abs(runs["adc"]["top1"] - runs["dense"]["top1"]) <= 0.05
    assert abs(runs["adc"]["per_layer"][-1] - runs["dense"]["per_layer"][-1]) < 0.02
    proc = run_helix(["agree", "smollm2", "--config", str(cfg), "--engine", "adc"], env=cache)
    assert proc.returncode == 2 and "give --artifacts" in proc.stderr
