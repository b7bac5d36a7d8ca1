"""Errors users see and measurement honesty at the edges: bad or empty
``--tensors`` selections, ``HELIX_JIT_THREADS``, ``helix jit`` without an
action, partial candidates (never certified), ``helix agree --positions`` on
an encoder. Each refusal is one line on stderr, exit 2, no traceback."""

import json
import re

import numpy as np
import pytest
from safetensors.numpy import save_file

from helix_framework import artifacts
from helix_framework.sweep import run_candidate
from helix_test_support import run_helix

NORM = "model.layers.0.input_layernorm.weight"
CODEC = ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """Two codec matrices, a norm (skipped) and an embedding (passthrough)."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("safety-model") / "model.safetensors"
    save_file({
        "model.embed_tokens.weight": rng.standard_normal((128, 64)).astype(np.float32),
        CODEC[0]: rng.standard_normal((96, 64)).astype(np.float32),
        CODEC[1]: rng.standard_normal((96, 128)).astype(np.float32),
        NORM: np.ones(64, np.float32),
    }, str(path))
    return path


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    path = tmp_path_factory.mktemp("safety-config") / "rtn.yaml"
    path.write_text("name: rtn8\ncodec: rtn\nparams: {bits: 8, group_size: 32}\n"
                    "rows: {calibration: 48, measurement: 24, seed: 1}\nmeasure: [rel_l2]\n")
    return path


def one_line_error(proc, *needles):
    """Exit 2, one line on stderr containing every needle, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# -- --tensors ---------------------------------------------------------------------


def test_an_invalid_tensors_regex_is_one_line(model, config, tmp_path):
    out = tmp_path / "out"
    proc = run_helix(["calibrate", str(model), "--config", str(config), "--out", str(out), "--tensors", "q_proj("])
    one_line_error(proc, "--tensors 'q_proj('", "invalid regular expression")
    assert not out.exists()


@pytest.mark.parametrize("regex, named", [("no_such_tensor", 0), ("layernorm", 1)])
def test_a_tensors_regex_selecting_no_codec_tensor_is_refused(model, config, tmp_path, regex, named):
    """Matching nothing, or only tensors the codec never gets (a norm), would
    be a run that compressed nothing and still exited 0."""
    out = tmp_path / "out"
    proc = run_helix(["calibrate", str(model), "--config", str(config), "--out", str(out), "--tensors", regex])
    one_line_error(proc, f"--tensors '{regex}' selects none of the 2 tensors routed to the codec",
                   f"matches {named} of 4 tensor names")
    assert not out.exists()


# -- HELIX_JIT_THREADS and helix jit -----------------------------------------------------


@pytest.mark.parametrize("value", ["abc", "0", "-1", "1.5"])
def test_helix_jit_threads_must_be_a_positive_integer(value):
    proc = run_helix(["jit", "stats"], env={"HELIX_JIT_THREADS": value})
    one_line_error(proc, "HELIX_JIT_THREADS must be a positive integer", repr(value))


def test_helix_jit_threads_is_checked_before_a_calibration_starts(model, config, tmp_path):
    proc = run_helix(["calibrate", str(model), "--config", str(config), "--out", str(tmp_path / "out")],
                     env={"HELIX_JIT_THREADS": "two"})
    one_line_error(proc, "HELIX_JIT_THREADS", "'two'")
    ok = run_helix(["jit", "stats", "--json"], env={"HELIX_JIT_THREADS": "3"})
    assert ok.returncode == 0, ok.stderr


def test_helix_jit_threads_in_the_library(monkeypatch):
    import helix_jit

    monkeypatch.setenv("HELIX_JIT_THREADS", "3")
    assert helix_jit.threads() == 3
    monkeypatch.setenv("HELIX_JIT_THREADS", "x")
    with pytest.raises(ValueError, match="HELIX_JIT_THREADS must be a positive integer"):
        helix_jit.threads()


def test_helix_jit_without_an_action_prints_its_own_usage():
    proc = run_helix(["jit"])
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("usage: helix jit "), proc.stderr
    assert "frontier" not in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "helix: error: helix jit needs an action: stats or clear"


# -- partial candidates ----------------------------------------------------------------------


def test_a_partial_calibration_says_so_in_the_summary_and_the_manifest(model, config, tmp_path):
    out = tmp_path / "out"
    proc = run_helix(["calibrate", str(model), "--config", str(config), "--out", str(out), "--tensors", "q_proj",
                      "--json"], check=True)
    partial = {"compressed": 1, "codec_tensors": 2, "message": "partial: 1 of 2 codec tensors compressed"}
    assert json.loads(proc.stdout)["partial"] == partial
    assert artifacts.read_manifest(out)["summary"]["partial"] == partial
    text = run_helix(["calibrate", str(model), "--config", str(config), "--out", str(tmp_path / "o2"),
                      "--tensors", "q_proj"], check=True)
    assert text.stdout.splitlines()[-1] == "partial: 1 of 2 codec tensors compressed"
    whole = run_helix(["calibrate", str(model), "--config", str(config), "--out", str(tmp_path / "o3"), "--json"],
                      check=True)
    assert json.loads(whole.stdout)["partial"] is None


def test_compare_never_reports_a_partial_candidate_as_certified(model, config, tmp_path):
    """Also for a manifest written before partial runs were marked: its stored
    verdict says "certified", the entries say partial."""
    out = tmp_path / "out"
    run_helix(["calibrate", str(model), "--config", str(config), "--out", str(out), "--tensors", "down_proj"],
              check=True)
    manifest = artifacts.read_manifest(out)
    summary = {k: v for k, v in manifest["summary"].items() if k != "partial"}
    summary["token_agreement"] = {"positions": 2000, "top1": 0.995, "top5": 1.0, "certified": True,
                                  "verdict": "certified: top-1 0.9950 >= 0.99, top-5 1.0000 >= 0.999",
                                  "kl_mean": 0.001}
    artifacts.write_json_atomic(out / artifacts.MANIFEST, {**manifest, "summary": summary})
    proc = run_helix(["compare", str(out)], check=True)
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith(f"rtn8 on {model.name} ({out}): partial: 1 of 2 codec tensors compressed; "
                           "not a verdict on the model (")
    assert not re.search(r"(^|: )certified", last)


def test_mark_partial_keeps_the_figures_and_withdraws_the_certificate():
    from helix_framework.calibrate import mark_partial

    data = {"top1": 0.999, "certified": True, "verdict": "certified: top-1 0.9990 >= 0.99, top-5 1.0000 >= 0.999"}
    partial = {"compressed": 6, "codec_tensors": 37, "message": "partial: 6 of 37 codec tensors compressed"}
    marked = mark_partial(data, partial)
    assert marked["certified"] is False and marked["top1"] == 0.999 and marked["partial"] == partial
    assert marked["verdict"] == ("partial: 6 of 37 codec tensors compressed; not a verdict on the model (the gate "
                                 "is met with only these tensors compressed: top-1 0.9990 >= 0.99, top-5 1.0000 "
                                 ">= 0.999)")
    assert mark_partial(marked, partial) == marked and mark_partial(data, None) is data


@pytest.mark.slow
def test_token_agreement_of_a_partial_candidate_never_certifies(tmp_path):
    """MiniLM, one matrix of 37 compressed: calibrate, agree --artifacts and
    compare all say partial; agree exits 1 (not certified)."""
    cfg = tmp_path / "rtn.yaml"
    cfg.write_text("name: rtn8_one\ncodec: rtn\nparams: {bits: 8, group_size: 32}\n"
                   "rows: {calibration: 256, measurement: 64}\nmeasure: [rel_l2, token_agreement]\n")
    out = tmp_path / "out"
    env = {"HELIX_CACHE_DIR": str(tmp_path / "cache")}
    proc = run_helix(["calibrate", "minilm", "--config", str(cfg), "--out", str(out), "--tensors",
                      r"layer\.0\.attention\.self\.query\.weight", "--json"], env=env, check=True)
    ta = json.loads(proc.stdout)["token_agreement"]
    message = "partial: 1 of 37 codec tensors compressed; not a verdict on the model ("
    assert ta["certified"] is False and ta["verdict"].startswith(message) and ta["cosine_mean"] > 0.99
    assert artifacts.read_manifest(out)["token_agreement"]["verdict"] == ta["verdict"]
    agree = run_helix(["agree", "minilm", "--artifacts", str(out), "--json"], env=env)
    data = json.loads(agree.stdout)
    assert agree.returncode == 1 and data["certified"] is False and data["verdict"] == ta["verdict"]
    assert data["partial"] == {"compressed": 1, "codec_tensors": 37,
                               "message": "partial: 1 of 37 codec tensors compressed"}
    compare = run_helix(["compare", str(out)], check=True)
    assert compare.stdout.strip().splitlines()[-1].endswith(f"({out}): {ta['verdict']}")


@pytest.mark.slow
def test_a_sweep_candidate_restricted_by_tensors_is_partial(tmp_path, monkeypatch):
    """SmolLM2 (sweeps score decoders), one attention matrix, 64 positions:
    the stored agreement says partial and the candidate is not certified."""
    from helix_framework.models import resolve_model
    from helix_framework.routing import route_tensor
    from helix_framework.sources import open_source

    monkeypatch.setenv("HELIX_CACHE_DIR", str(tmp_path / "cache"))
    model = resolve_model("smollm2")
    with open_source(model) as source:
        codec = sum(route_tensor(t.name, t.shape).route == "codec" for t in source.tensors())
    mapping = {"name": "p", "codec": "rtn", "params": {"bits": 8, "group_size": 32},
               "rows": {"calibration": 256, "measurement": 64}, "measure": ["rel_l2", "token_agreement"]}
    result = run_candidate({"mapping": mapping, "model": str(model), "positions": 64, "window": 64,
                            "tensors": r"^blk\.0\.attn_q\.weight$"})
    summary = result["summary"]
    assert summary["status"] == "ok", summary
    assert summary["tensors"] == 1 and summary["certified"] is False
    verdict = json.loads(summary["agreement"])["verdict"]
    assert verdict.startswith(f"partial: 1 of {codec} codec tensors compressed; not a verdict on the model (")


# -- helix agree --positions on an encoder ----------------------------------------------------


@pytest.mark.parametrize("flags", [["--positions", "200"], ["--window", "64"]])
def test_agree_refuses_decoder_options_for_an_encoder(flags, tmp_path):
    proc = run_helix(["agree", "minilm", "--config", "configs/codec/00_passthrough.yaml", *flags],
                     env={"HELIX_CACHE_DIR": str(tmp_path)})
    one_line_error(proc, f"{flags[0]} applies to decoders only", "minilm is an encoder", "every sentence")
