"""Data-aware calibration: calibration text, config keys, the stats contract,
output_rel_l2 and the manifest, on a tiny generated Llama (fast) and on
SmolLM2's tokenizer (slow)."""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path

import attrs
import numpy as np
import pytest

import helix_framework.reference as reference
from helix_framework import artifacts, hookimpl
from helix_framework.builtins.rotations import IdentityRotation
from helix_framework.calibrate import calibrate
from helix_framework.calibration_text import BUILTIN_MODULES, SPAN, builtin_documents, load_documents, make_windows, span_hashes
from helix_framework.codec import BitsAccount, Codec, CodecState, Codes
from helix_framework.config import candidate_from_mapping
from helix_framework.errors import CalibrationTextError, ConfigError
from helix_framework.host import Host
from helix_framework.layer_stats import LayerStats
from helix_framework.prompts import CODE_MODULES, PROSE_MODULES, Prompt, default_prompts
from helix_framework.rotation import Rotation, RotationState

from test_reference import _smollm2_path, _tiny_llama


class WordTokenizer:
    """Words and punctuation hashed into the tiny model's 61 ids."""

    bos_id = None

    def encode(self, text, add_special_tokens=True):
        return [zlib.crc32(w.encode()) % 61 for w in re.findall(r"\w+|[^\w\s]", text)]

    def decode(self, ids):
        return " ".join(map(str, ids))


class OrthogonalIdentity(IdentityRotation):
    """The identity declared orthogonal, so the base class transforms statistics."""

    name = "identity_stats"
    orthogonal = True


class RandomOrthogonal(Rotation):
    """rows @ Q with a seeded random orthogonal Q: the base transform_stats applies."""

    name = "random_orthogonal"
    orthogonal = True

    def fit(self, rows, params, rng, codec_params=None):
        q, _ = np.linalg.qr(np.random.default_rng(3).standard_normal((rows.shape[1], rows.shape[1])))
        return RotationState(arrays={"q": q.astype(np.float32)})

    def apply(self, state, rows):
        return np.asarray(rows) @ state.arrays["q"].astype(np.asarray(rows).dtype)

    def invert(self, state, rows):
        return np.asarray(rows) @ state.arrays["q"].T.astype(np.asarray(rows).dtype)


class TodayCodec(Codec):
    """A plugin codec written against the contract before statistics existed:
    fit(rows, params, rng) and encode(state, rows), nothing else. Rounds to 1/8."""

    name = "today"

    def fit(self, rows, params, rng):
        return CodecState()

    def encode(self, state, rows):
        return Codes({"q": np.rint(np.asarray(rows) * 8).astype(np.int16)})

    def decode(self, state, codes):
        return codes.arrays["q"].astype(np.float32) / 8

    def bits(self, state, n_rows, row_dim):
        return BitsAccount(n_rows * row_dim, 16 * n_rows * row_dim)


class StatsCodec(TodayCodec):
    """Takes statistics and records what it was given."""

    name = "stats_seen"
    takes_stats = True
    seen: dict = {}

    def fit(self, rows, params, rng, stats=None):
        self.seen.setdefault("fit", []).append(stats)
        return CodecState()

    def encode(self, state, rows, stats=None):
        self.seen.setdefault("encode", []).append(stats)
        return super().encode(state, rows)


@pytest.fixture
def host():
    h = Host(autoload=False)

    class Plugin:
        @hookimpl
        def helix_register_codecs(register):
            register(TodayCodec())
            register(StatsCodec())

        @hookimpl
        def helix_register_rotations(register):
            register(OrthogonalIdentity())
            register(RandomOrthogonal())

    h.register(Plugin)
    return h


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    monkeypatch.setattr(reference, "load_tokenizer", lambda source: WordTokenizer())
    return _tiny_llama(tmp_path / "tiny")


def candidate(host, **extra):
    data = {"name": "da", "codec": "today", "rows": {"calibration": 8, "measurement": 8},
            "rotation": {"kind": "identity_stats"}, "measure": ["rel_l2", "output_rel_l2"],
            "routes": [{"match": "_proj", "route": "codec"}],
            "calibration": {"sequences": 6, "tokens": 48, "held_out": 0.34}, **extra}
    return candidate_from_mapping(data, host)


# -- calibration text ------------------------------------------------------------


def test_builtin_text_reads_no_evaluation_module():
    assert not set(BUILTIN_MODULES) & set(PROSE_MODULES + CODE_MODULES)
    names = {d.name for d in builtin_documents()}
    assert {f"module:{m}" for m in BUILTIN_MODULES} < names and "dialogue" in names


@pytest.mark.slow
def test_builtin_text_shares_no_32_token_span_with_the_evaluation_prompts():
    tok = reference.load_tokenizer(_smollm2_path())
    seen = np.concatenate([span_hashes(tok.encode(p.text, add_special_tokens=False)) for p in default_prompts()])
    assert seen.size > 5000
    for doc in builtin_documents():
        hashes = span_hashes(tok.encode(doc.text, add_special_tokens=False))
        assert hashes.size > 0 and not np.isin(hashes, seen).any(), doc.name
    # and the check itself fires on a copied prompt
    prompt = default_prompts()[0]
    copied = [attrs.evolve(builtin_documents()[0], text="intro words here. " + prompt.text)]
    with pytest.raises(CalibrationTextError, match=f"shares a {SPAN}-token span"):
        make_windows(tok, copied, sequences=2, tokens=64, seed=0, held_out=0.5, evaluation=[prompt])


def test_windows_are_seeded_disjoint_and_start_at_their_first_token():
    tok = WordTokenizer()
    docs = builtin_documents()
    a = make_windows(tok, docs, sequences=12, tokens=100, seed=5, held_out=0.25)
    b = make_windows(tok, docs, sequences=12, tokens=100, seed=5, held_out=0.25)
    c = make_windows(tok, docs, sequences=12, tokens=100, seed=6, held_out=0.25)
    assert np.array_equal(a.ids, b.ids) and not np.array_equal(a.ids, c.ids)
    stream = np.concatenate([tok.encode(d.text) for d in docs])
    for row, start in zip(a.ids, a.starts):
        assert np.array_equal(row, stream[start : start + 100])  # whole, first token kept
    assert np.all(np.diff(a.starts) >= 100)  # disjoint
    assert len(a.held_out) == 3 and sorted([*a.fit, *a.held_out]) == list(range(12))
    record = a.to_json({"text": "builtin"})
    assert record["windows"]["starts"] == [int(s) for s in a.starts] and len(record["sha256"]) == 64


def test_bad_calibration_text_names_the_file(tmp_path):
    tok = WordTokenizer()
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    binary = tmp_path / "latin.txt"
    binary.write_bytes(b"caf\xe9 au lait")
    short = tmp_path / "short.txt"
    short.write_text("only a few words here")
    for path, message in ((empty, "is empty"), (binary, "not UTF-8"), (tmp_path / "nope.txt", "no such file")):
        with pytest.raises(CalibrationTextError, match=message) as info:
            load_documents(str(path))
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(CalibrationTextError, match=f"{short}: has 5 tokens, shorter than one window of 48"):
        make_windows(tok, load_documents(str(short)), sequences=2, tokens=48, seed=0, held_out=0)
    (tmp_path / "dir").mkdir()
    with pytest.raises(CalibrationTextError, match="no \\*.txt files"):
        load_documents(str(tmp_path / "dir"))
    prompt = Prompt("p", "prose", "test", " ".join(f"word{i}" for i in range(80)))
    copied = tmp_path / "copied.txt"
    copied.write_text("Some text first. " + prompt.text)
    with pytest.raises(CalibrationTextError, match=f"{copied}: shares a 32-token span"):
        make_windows(tok, load_documents(str(copied)), sequences=1, tokens=20, seed=0, held_out=0, evaluation=[prompt])


# -- config ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "path"),
    [
        ({"calibration": {"sequences": 0}}, "$.calibration.sequences"),
        ({"calibration": {"tokens": 1}}, "$.calibration.tokens"),
        ({"calibration": {"propagate": "sideways"}}, "$.calibration.propagate"),
        ({"calibration": {"target": "output"}}, "$.calibration.target"),
        ({"calibration": {"target": "reference", "target_damp": -0.1}}, "$.calibration.target_damp"),
        ({"calibration": {"target_damp": float("nan")}}, "$.calibration.target_damp"),
        ({"calibration": {"target": "reference", "propagate": "reference"}}, "$.calibration.target"),
        ({"calibration": {"held_out": 1.0}}, "$.calibration.held_out"),
        ({"calibration": {"windows": 3}}, "$.calibration.windows"),
        ({"calibration": {"held_out": 0.0}}, "$.calibration.held_out"),  # output_rel_l2 needs held-out windows
        ({"calibration": None, "error_feedback": {}, "measure": ["rel_l2"]}, "$.error_feedback"),
        ({"error_feedback": {"damp": 0.01}}, "$.error_feedback"),  # `today` cannot quantize columns
        ({"calibration": None}, "$.measure[1]"),  # output_rel_l2 without calibration text
    ],
)
def test_bad_data_aware_keys_name_the_key(host, extra, path):
    data = {"name": "da", "codec": "today", "measure": ["rel_l2", "output_rel_l2"],
            "calibration": {"sequences": 4, "tokens": 32}, **extra}
    if data["calibration"] is None:
        del data["calibration"]
    with pytest.raises(ConfigError) as info:
        candidate_from_mapping(data, host)
    assert info.value.path == path


def test_calibration_defaults_and_json(host):
    cand = candidate_from_mapping({"name": "x", "codec": "today", "calibration": {}}, host)
    assert cand.to_json()["calibration"] == {"text": "builtin", "sequences": 128, "tokens": 512, "seed": 0,
                                             "held_out": 0.125, "propagate": "quantized"}
    assert "calibration" not in candidate_from_mapping({"name": "x", "codec": "today"}, host).to_json()
    asym = candidate_from_mapping({"name": "x", "codec": "today", "calibration": {"target": "reference"}}, host)
    assert (asym.to_json()["calibration"]["target"], asym.to_json()["calibration"]["target_damp"]) == ("reference", 0.1)
    # error_feedback's cd_passes is left out at 0, so existing configs keep their JSON
    feedback = {"name": "x", "codec": "rtn", "calibration": {}, "error_feedback": {}}
    assert candidate_from_mapping(feedback, host).to_json()["error_feedback"] == {
        "damp": 0.01, "block": 128, "act_order": True, "refit": False}
    feedback["error_feedback"] = {"cd_passes": 3}
    assert candidate_from_mapping(feedback, host).to_json()["error_feedback"]["cd_passes"] == 3


def test_reference_target_minimises_the_error_against_the_uncompressed_output():
    """``W' = reference_target(W)``: for every ``W_hat``, ``||X W_hat^T -
    X_ref W^T||^2 = ||X (W_hat - W')^T||^2 + const`` (so fitting W' with H
    minimises the asymmetric error), and ``X_ref = X`` gives W back."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 16))
    x_ref = x + 0.1 * rng.standard_normal((400, 16))
    w = rng.standard_normal((8, 16)).astype(np.float32)
    stats = LayerStats(x.T @ x, 400, drift=x.T @ (x_ref - x))
    target = stats.reference_target(w, 0.0).astype(np.float64)
    np.testing.assert_allclose(target, np.linalg.lstsq(x, x_ref @ w.T.astype(np.float64), rcond=None)[0].T,
                               rtol=1e-4, atol=1e-4)

    def asymmetric(w_hat):
        return np.sum((x @ w_hat.T - x_ref @ w.T) ** 2)

    offsets = [asymmetric(w_hat) - stats.output_error(w_hat - target)
               for w_hat in (w, np.rint(w * 2) / 2, rng.standard_normal(w.shape))]
    np.testing.assert_allclose(offsets, offsets[0], rtol=1e-4)
    assert asymmetric(target) < asymmetric(w)
    np.testing.assert_array_equal(LayerStats(x.T @ x, 400, drift=np.zeros((16, 16))).reference_target(w, 0.01), w)
    assert LayerStats(x.T @ x, 400).reference_target(w, 0.01) is w  # no drift: nothing to do
    # a singular Hessian (a dead input, two equal ones) is damped, never a crash
    x[:, 3] = 0.0
    x[:, 5] = x[:, 4]
    damped = LayerStats(x.T @ x, 400, drift=x.T @ (x_ref - x)).reference_target(w, 0.0)
    assert np.all(np.isfinite(damped))


# -- the stats contract ----------------------------------------------------------


def test_transformed_hessian_gives_the_output_error_on_rotated_activations():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 16))
    w = rng.standard_normal((8, 16)).astype(np.float32)
    rot = RandomOrthogonal()
    state = rot.fit(w, None, rng)
    wr = rot.apply(state, w).astype(np.float64)
    wr_hat = np.rint(wr * 4) / 4  # a codec's error, made in the rotated basis
    stats = rot.transform_stats(state, LayerStats(x.T @ x, 200))
    q = state.arrays["q"].astype(np.float64)
    xr = x @ q  # the rotated layer reads X A^-T = X Q
    direct = np.sum((xr @ (wr - wr_hat).T) ** 2)
    assert stats.output_error(wr - wr_hat) == pytest.approx(direct, rel=1e-5)
    # and it is the error of the un-rotated layer: (W A)(X A^-T)^T = W X^T
    assert np.allclose(xr @ wr.T, x @ w.T, atol=1e-4)


def test_shared_statistics_are_rotated_once_per_rotation_state(monkeypatch):
    from helix_framework import calibrate as cal

    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 16))
    rot = RandomOrthogonal()
    state = rot.fit(np.eye(16, dtype=np.float32), None, rng)
    other = RotationState(arrays={"q": state.arrays["q"][:, ::-1].copy()})  # another orthogonal matrix
    comp = type("Comp", (), {"rotation": rot, "candidate": None})()
    calls = []
    monkeypatch.setattr(rot, "transform_stats", lambda st, stats: calls.append(st) or RandomOrthogonal.transform_stats(rot, st, stats))
    h = x.T @ x
    q, k = LayerStats(h, 200), LayerStats(h, 200)  # two layers reading one input: one Hessian array
    first = cal._rotated_stats(comp, state, q)
    assert cal._rotated_stats(comp, state, k) is first and len(calls) == 1
    assert cal._rotated_stats(comp, other, k) is not first and len(calls) == 2  # another rotation: computed
    assert cal._rotated_stats(comp, state, LayerStats(h.copy(), 200)) is not first and len(calls) == 3
    np.testing.assert_array_equal(first.hessian, rot.transform_stats(state, LayerStats(h.copy(), 200)).hessian)


def test_a_plugin_written_against_todays_contract_runs_data_aware(tmp_path, host, tiny):
    out = tmp_path / "out"
    calls = []
    summary = calibrate(tiny, candidate(host), out, host=host, on_tensor=lambda i, n, name: calls.append((i, n, name)))
    assert summary.routed["codec"] == 14
    assert [c[0] for c in calls] == list(range(21)) and {c[1] for c in calls} == {21}
    assert calls[-1][2].startswith("model.layers.1.")  # blocks come after the tensors outside them
    manifest = json.loads((out / artifacts.MANIFEST).read_text())
    record = manifest["calibration_text"]
    assert record["windows"]["count"] == 6 and len(record["windows"]["held_out"]) == 2
    assert record["propagate"] == "quantized" and record["sources"][0]["name"] == "module:configparser"
    assert artifacts.verify(out) == []
    figures = summary.held_out
    assert 0 < figures["mean_output_rel_l2"] < 0.2 and 0 < figures["mean_rel_l2"] < 0.2


def test_codecs_that_take_stats_get_them_in_the_rotated_basis(tmp_path, host, tiny):
    StatsCodec.seen.clear()
    cand = candidate(host, codec="stats_seen", rotation={"kind": "random_orthogonal"}, measure=["rel_l2"])
    calibrate(tiny, cand, tmp_path / "out", host=host)
    fits, encodes = StatsCodec.seen["fit"], StatsCodec.seen["encode"]
    assert len(fits) == 14 and all(s is e for s, e in zip(fits, encodes))
    assert {s.hessian.shape for s in fits} == {(32, 32), (48, 48)}
    assert all(s.n_tokens == 4 * 48 for s in fits)  # the fit windows only
    StatsCodec.seen.clear()
    calibrate(tiny, attrs.evolve(cand, rotation=candidate(host).rotation), tmp_path / "out2", host=host)
    q_rot, q_id = fits[0], StatsCodec.seen["fit"][0]  # block 0's q_proj, rotated and not
    assert not np.allclose(q_rot.hessian, q_id.hessian)
    assert np.trace(q_rot.hessian) == pytest.approx(np.trace(q_id.hessian), rel=1e-6)  # orthogonal: trace kept
    q = np.linalg.qr(np.random.default_rng(3).standard_normal((32, 32)))[0].astype(np.float32).astype(np.float64)
    assert np.allclose(q_rot.hessian, q.T @ q_id.hessian @ q, rtol=1e-5, atol=1e-3)


def test_output_rel_l2_equals_the_error_on_held_out_activations(tmp_path, host, tiny):
    out = tmp_path / "out"
    cand = candidate(host)
    calibrate(tiny, cand, out, host=host)
    manifest = json.loads((out / artifacts.MANIFEST).read_text())
    held = manifest["calibration_text"]["windows"]["held_out"]
    ids = np.array([manifest["calibration_text"]["windows"]["starts"]])  # recorded
    model = reference.load_model(tiny)
    tok_windows = make_windows(WordTokenizer(), load_documents("builtin"), sequences=6, tokens=48, seed=0,
                               held_out=0.34)
    assert ids.tolist() == [[int(s) for s in tok_windows.starts]]
    from helix_framework.reference.base import rms_norm

    c = model.config
    x = np.concatenate([rms_norm(model.weights["model.embed_tokens.weight"][tok_windows.ids[i]],
                                 model.weights["model.layers.0.input_layernorm.weight"], c.rms_norm_eps)
                        for i in held]).astype(np.float64)
    name = "model.layers.0.self_attn.q_proj.weight"
    w = model.weights[name].astype(np.float64)
    w_hat = np.rint(w * 8) / 8  # what `today` reconstructs
    direct = np.linalg.norm(x @ (w - w_hat).T) / np.linalg.norm(x @ w.T)
    entry = next(e for e in manifest["tensors"] if e["name"] == name)
    assert entry["metrics"]["all"]["output_rel_l2"] == pytest.approx(direct, rel=1e-4)


def test_interrupted_data_aware_run_keeps_the_old_result(tmp_path, host, tiny, monkeypatch):
    out = tmp_path / "out"
    calibrate(tiny, candidate(host), out, host=host)
    before = (out / artifacts.MANIFEST).read_bytes()
    import helix_framework.calibrate as cal

    real, calls = cal.calibrate_matrix, {"n": 0}

    def exploding(x, name, comp, **kwargs):
        calls["n"] += 1
        if calls["n"] == 9:  # inside the second block
            raise KeyboardInterrupt
        return real(x, name, comp, **kwargs)

    monkeypatch.setattr(cal, "calibrate_matrix", exploding)
    with pytest.raises(KeyboardInterrupt):
        calibrate(tiny, candidate(host, calibration={"sequences": 5, "tokens": 40, "held_out": 0.2}), out, host=host)
    assert (out / artifacts.MANIFEST).read_bytes() == before and artifacts.verify(out) == []


@pytest.mark.slow
def test_cli_bad_calibration_text_is_one_line_exit_2(tmp_path):
    from helix_test_support import run_helix

    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"caf\xe9 " * 100)
    config = tmp_path / "c.yaml"
    config.write_text(f"name: c\ncodec: rtn\nparams: {{bits: 4, group_size: 128}}\n"
                      f"calibration: {{text: {latin}, sequences: 2, tokens: 64}}\n")
    proc = run_helix(["calibrate", "smollm2", "--config", str(config), "--out", str(tmp_path / "out")])
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert f"{latin}: not UTF-8 text" in proc.stderr and not (tmp_path / "out" / "manifest.json").exists()


def test_agree_config_fits_data_aware_in_memory_as_calibrate_does(tmp_path, host, tiny):
    from helix_framework.calibrate import weights_from_artifacts, weights_from_config
    from helix_framework.sources import open_source

    cand = candidate(host, codec="stats_seen", rotation={"kind": "random_orthogonal"}, measure=["rel_l2"])
    calibrate(tiny, cand, tmp_path / "out", host=host)
    StatsCodec.seen.clear()
    with open_source(tiny) as source:
        on_disk = weights_from_artifacts(tmp_path / "out", source, host)
        in_memory = weights_from_config(source, cand, host)
    assert len(StatsCodec.seen["fit"]) == 14 and all(isinstance(s, LayerStats) for s in StatsCodec.seen["fit"])
    assert sorted(on_disk) == sorted(in_memory) and len(on_disk) == 14
    for name, w in on_disk.items():
        np.testing.assert_array_equal(w, in_memory[name])
    StatsCodec.seen.clear()  # the same candidate without calibration text fits data-free
    with open_source(tiny) as source:
        weights_from_config(source, attrs.evolve(cand, calibration=None), host)
    assert len(StatsCodec.seen["fit"]) == 14 and all(s is None for s in StatsCodec.seen["fit"])


def test_probe_fits_a_data_aware_candidate_with_its_layer_statistics(host, tiny):
    from helix_framework.probe import probe

    name = "model.layers.1.mlp.down_proj.weight"
    StatsCodec.seen.clear()
    rows = probe(tiny, name, candidate(host, codec="stats_seen"), [16], host=host)
    (stats,) = StatsCodec.seen["fit"]
    assert isinstance(stats, LayerStats) and stats.hessian.shape == (48, 48) and stats.n_tokens == 4 * 48
    assert np.isfinite(rows[0].held_out["output_rel_l2"])  # measured on the held-out windows' inputs
    StatsCodec.seen.clear()
    probe(tiny, name, candidate(host, codec="stats_seen", calibration=None, measure=["rel_l2"]), [16], host=host)
    assert StatsCodec.seen["fit"] == [None]


def test_gaussian_levels_refit_and_a_5_bit_route_round_trip_through_artifacts(tmp_path, host, tiny):
    """40's shape of candidate (rtn on Lloyd-Max levels under error feedback,
    a route rule at 5 bits) plus refit and coordinate descent: the artifacts
    decode to exactly the weights fitted in memory, and each tensor records
    its rule's bits and levels."""
    import json

    from helix_framework.calibrate import weights_from_artifacts, weights_from_config
    from helix_framework.sources import open_source

    params = {"bits": 4, "group_size": 16, "symmetric": False, "clip": True, "levels": "gaussian"}
    cand = candidate(host, codec="rtn", params=params, error_feedback={"refit": True, "cd_passes": 2},
                     measure=["rel_l2"],
                     routes=[{"match": "_proj", "route": "codec"},
                             {"match": "v_proj", "codec": "rtn", "params": {**params, "bits": 5}}])
    calibrate(tiny, cand, tmp_path / "out", host=host)
    with open_source(tiny) as source:
        on_disk = weights_from_artifacts(tmp_path / "out", source, host)
        in_memory = weights_from_config(source, cand, host)
    assert sorted(on_disk) == sorted(in_memory) and len(on_disk) == 14
    for name, w in on_disk.items():
        np.testing.assert_array_equal(w, in_memory[name])
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    entries = {e["name"]: e for e in manifest["tensors"] if e.get("route") == "codec"}
    v_names = [n for n in entries if "v_proj" in n]
    assert v_names and all(entries[n]["choice"]["candidate"] == "da[1]" for n in v_names)
    assert all("choice" not in entries[n] for n in entries if "v_proj" not in n)
    for name, entry in entries.items():
        bits = 5 if "v_proj" in name else 4
        assert entry["bits"]["code_bpw"] == bits and entry["codec_meta"]["state"]["levels"] == "gaussian"
        objective = entry["codec_meta"]["codes"]["error_feedback"]["cd_objective"]
        assert len(objective) == 3 and objective[2] <= objective[1] <= objective[0]
