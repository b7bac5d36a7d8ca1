"""Per-tensor candidates: ``routes`` rules that choose a candidate file or a
codec for the tensors they match (the configs `helix allocate` writes)."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import yaml

import helix_framework.reference as reference
from helix_framework import artifacts
from helix_framework.calibrate import calibrate, decode
from helix_framework.config import candidate_from_mapping, kernel_signature, load_candidate
from helix_framework.errors import ConfigError
from helix_framework.host import get_host
from helix_framework.serve.guard import RequestError, Roots

from test_dataaware import WordTokenizer
from test_reference import _tiny_llama

CAL = {"text": "builtin", "sequences": 6, "tokens": 48, "held_out": 0.34}
ROWS = {"calibration": 24, "measurement": 8}


def _mix(tmp_path, **extra):
    """A 4-bit RTN config; block 0 from an 8-bit candidate file, every down_proj 6-bit."""
    eight = tmp_path / "eight.yaml"
    eight.write_text(yaml.safe_dump({"name": "eight", "codec": "rtn", "params": {"bits": 8, "group_size": 16},
                                     "rows": ROWS, **extra}))
    data = {"name": "mix", "codec": "rtn", "params": {"bits": 4, "group_size": 16}, "rows": ROWS,
            "routes": [{"match": "_proj", "route": "codec"},
                       {"match": r"layers\.0\.", "candidate": "eight.yaml"},
                       {"match": "down_proj", "codec": "rtn", "params": {"bits": 6, "group_size": 16}}], **extra}
    path = tmp_path / "mix.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    monkeypatch.setattr(reference, "load_tokenizer", lambda source: WordTokenizer())
    return _tiny_llama(tmp_path / "tiny")


def test_the_first_matching_choice_compresses_a_tensor(tmp_path):
    cand = load_candidate(_mix(tmp_path))
    assert [c.candidate.name for c in cand.choices] == ["eight", "mix[2]"]
    assert cand.for_tensor("model.layers.0.mlp.down_proj.weight").name == "eight"
    assert cand.for_tensor("model.layers.1.mlp.down_proj.weight").params.bits == 6
    assert cand.for_tensor("model.layers.1.self_attn.q_proj.weight") is cand
    assert cand.routes[0].route == "codec" and len(cand.routes) == 1
    again = candidate_from_mapping(json.loads(json.dumps(cand.to_json())), get_host())
    assert again.to_json() == cand.to_json()
    assert kernel_signature(again) == kernel_signature(cand)
    other = candidate_from_mapping({**cand.to_json(), "routes": cand.to_json()["routes"][:2]}, get_host())
    assert kernel_signature(other) != kernel_signature(cand)


def test_blocks_pick_by_depth_counted_from_both_ends():
    """``blocks:`` items index ``range(n_blocks)`` as Python would, so a rule
    written for one depth means the same share of another model."""
    cand = candidate_from_mapping({"name": "m", "codec": "rtn", "routes": [
        {"match": "ffn_down|mlp\\.down_proj", "blocks": ["0:4", "5:-4:3", "-4:"], "codec": "rtn", "params": {"bits": 8}},
        {"match": "attn_v", "blocks": -1, "codec": "rtn", "params": {"bits": 6}}]}, get_host())

    def chosen(n, fmt):
        return [i for i in range(n) if cand.choice_index(fmt.format(i), n) == 0]

    assert chosen(30, "blk.{}.ffn_down.weight") == [0, 1, 2, 3, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]
    assert chosen(30, "model.layers.{}.mlp.down_proj.weight") == chosen(30, "blk.{}.ffn_down.weight")
    assert chosen(22, "blk.{}.ffn_down.weight") == [0, 1, 2, 3, 5, 8, 11, 14, 17, 18, 19, 20, 21]
    assert chosen(3, "blk.{}.ffn_down.weight") == [0, 1, 2]
    assert [cand.choice_index(f"blk.{i}.attn_v.weight", 30) for i in (0, 28, 29)] == [None, None, 1]
    assert cand.choice_index("blk.3.ffn_up.weight", 30) is None and cand.choice_index("output.weight", 30) is None
    with pytest.raises(ValueError, match="block count"):
        cand.choice_index("blk.3.ffn_down.weight")
    assert cand.to_json()["routes"][0]["blocks"] == ["0:4", "5:-4:3", "-4:"]
    again = candidate_from_mapping(json.loads(json.dumps(cand.to_json())), get_host())
    assert again == cand and kernel_signature(again) == kernel_signature(cand)
    anywhere = candidate_from_mapping({**cand.to_json(), "routes": [
        {k: v for k, v in r.items() if k != "blocks"} for r in cand.to_json()["routes"]]}, get_host())
    assert kernel_signature(anywhere) != kernel_signature(cand)


def test_a_blocks_rule_calibrates_the_last_block_only(tmp_path, tiny):
    from helix_framework.calibrate import weights_from_artifacts, weights_from_config
    from helix_framework.sources import open_source

    path = _write(tmp_path, "last.yaml", {"name": "last", "codec": "rtn", "params": {"bits": 4, "group_size": 16},
                                          "rows": ROWS, "routes": [
                                              {"match": "_proj", "route": "codec"},
                                              {"match": "down_proj", "blocks": ["-1"], "codec": "rtn",
                                               "params": {"bits": 8, "group_size": 16}}]})
    cand = load_candidate(path)
    calibrate(tiny, cand, tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / artifacts.MANIFEST).read_text())
    by = {e["name"]: e.get("candidate") for e in manifest["tensors"] if e["route"] == "codec"}
    assert by["model.layers.1.mlp.down_proj.weight"] == "last[1]"
    assert {n for n, c in by.items() if c != "last"} == {"model.layers.1.mlp.down_proj.weight"}
    with open_source(tiny) as source:
        on_disk = weights_from_artifacts(tmp_path / "out", source, get_host())
        in_memory = weights_from_config(source, cand, get_host())
    for name, w in on_disk.items():
        np.testing.assert_array_equal(w, in_memory[name])


def test_a_mix_calibrates_decodes_and_agrees_per_tensor(tmp_path, tiny):
    from helix_framework.calibrate import weights_from_artifacts, weights_from_config
    from helix_framework.sources import open_source

    cand = load_candidate(_mix(tmp_path))
    out = tmp_path / "out"
    calibrate(tiny, cand, out)
    manifest = json.loads((out / artifacts.MANIFEST).read_text())
    by = {e["name"]: e for e in manifest["tensors"]}
    assert by["model.layers.0.input_layernorm.weight"]["route"] == "skip"  # a choice never routes a norm
    assert by["model.layers.0.self_attn.q_proj.weight"]["candidate"] == "eight"
    assert by["model.layers.1.mlp.down_proj.weight"]["candidate"] == "mix[2]"
    assert by["model.layers.1.mlp.up_proj.weight"]["candidate"] == "mix" and "choice" not in by["model.layers.1.mlp.up_proj.weight"]
    code = {n: e["bits"]["code_bpw"] for n, e in by.items() if e["route"] == "codec"}
    assert code["model.layers.0.mlp.down_proj.weight"] == 8 and code["model.layers.1.mlp.down_proj.weight"] == 6
    assert code["model.layers.1.self_attn.k_proj.weight"] == 4
    assert by["model.layers.0.self_attn.q_proj.weight"]["choice"]["config"]["params"]["bits"] == 8
    with open_source(tiny) as source:
        on_disk = weights_from_artifacts(out, source, get_host())
        in_memory = weights_from_config(source, cand, get_host())
    assert sorted(on_disk) == sorted(in_memory) and len(on_disk) == 14
    for name, w in on_disk.items():
        np.testing.assert_array_equal(w, in_memory[name])
    x = in_memory["model.layers.0.mlp.down_proj.weight"]
    y = in_memory["model.layers.1.mlp.down_proj.weight"]
    with open_source(tiny) as source:
        err0 = np.abs(x - source.read("model.layers.0.mlp.down_proj.weight")).max()
        err1 = np.abs(y - source.read("model.layers.1.mlp.down_proj.weight")).max()
    assert err0 < err1 / 2  # 8 bits against 6
    decode(out, tmp_path / "decoded.safetensors")
    from safetensors.numpy import load_file

    np.testing.assert_array_equal(load_file(tmp_path / "decoded.safetensors")["model.layers.0.mlp.down_proj.weight"], x)


def test_a_data_aware_mix_gives_every_choice_the_statistics(tmp_path, tiny):
    ef = {"damp": 0.01, "block": 16, "act_order": True}
    cand = load_candidate(_mix(tmp_path, calibration=CAL, error_feedback=ef))
    assert all(c.candidate.calibration == cand.calibration for c in cand.choices)
    summary = calibrate(tiny, cand, tmp_path / "out")
    assert summary.routed["codec"] == 14
    manifest = json.loads((tmp_path / "out" / artifacts.MANIFEST).read_text())
    assert {e.get("candidate") for e in manifest["tensors"] if e["route"] == "codec"} == {"eight", "mix", "mix[2]"}


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("rule, key, words", [
    ({"match": "x", "route": "skip", "codec": "rtn"}, "$.routes[0]", "exactly one of route, candidate or codec"),
    ({"match": "x"}, "$.routes[0]", "exactly one of"),
    ({"match": "x", "codec": "rtn", "bits": 3}, "$.routes[0]", "unknown key(s) bits"),
    ({"match": "(", "codec": "rtn"}, "$.routes[0].match", "invalid regular expression"),
    ({"match": "x", "candidate": "missing.yaml"}, "$.routes[0].candidate", "not found"),
    ({"match": "x", "candidate": 3}, "$.routes[0].candidate", "expected a candidate file name or mapping"),
    ({"match": "x", "codec": "rtn", "params": {"bits": 1}}, "$.routes[0].params.bits", ""),
    ({"match": "x", "codec": "nope"}, "$.routes[0].codec", "nope"),
    ({"match": "x", "candidate": "routed.yaml"}, "$.routes[0].candidate", "route rules other than this config's"),
    ({"match": "x", "candidate": "mixed.yaml"}, "$.routes[0].candidate", "is a mix itself"),
    ({"match": "x", "candidate": "aware.yaml"}, "$.routes[0].candidate", "is data-aware"),
    ({"match": "x", "codec": "rtn", "blocks": "a:b"}, "$.routes[0].blocks", "expected a block number or a slice"),
    ({"match": "x", "codec": "rtn", "blocks": ["0:4", "1:9:0"]}, "$.routes[0].blocks[1]", "step must be >= 1"),
    ({"match": "x", "codec": "rtn", "blocks": [True]}, "$.routes[0].blocks[0]", "got True"),
    ({"match": "x", "codec": "rtn", "blocks": []}, "$.routes[0].blocks", "1 to 64"),
])
def test_bad_choice_rules_name_the_key(tmp_path, rule, key, words):
    _write(tmp_path, "routed.yaml", {"name": "r", "codec": "rtn", "routes": [{"match": "a", "route": "skip"}]})
    _write(tmp_path, "aware.yaml", {"name": "a", "codec": "rtn", "calibration": CAL})
    _write(tmp_path, "mixed.yaml", {"name": "m", "codec": "rtn", "routes": [{"match": "a", "codec": "rtn"}]})
    path = _write(tmp_path, "top.yaml", {"name": "top", "codec": "rtn", "routes": [rule]})
    with pytest.raises(ConfigError) as info:
        load_candidate(path)
    assert info.value.path == key and words in info.value.message
    assert info.value.file == str(path) and info.value.line is not None


def test_a_choice_calibrated_on_other_text_is_refused(tmp_path):
    _write(tmp_path, "aware.yaml", {"name": "a", "codec": "rtn", "calibration": {**CAL, "seed": 1}})
    path = _write(tmp_path, "top.yaml", {"name": "top", "codec": "rtn", "calibration": CAL,
                                         "routes": [{"match": "x", "candidate": "aware.yaml"}]})
    with pytest.raises(ConfigError, match="calibrated on other text or windows"):
        load_candidate(path)


def test_error_feedback_needs_a_codec_that_quantizes_columns_in_a_codec_rule(tmp_path):
    path = _write(tmp_path, "top.yaml", {"name": "top", "codec": "rtn", "calibration": CAL,
                                         "error_feedback": {"damp": 0.01},
                                         "routes": [{"match": "x", "codec": "passthrough"}]})
    with pytest.raises(ConfigError) as info:
        load_candidate(path)
    assert info.value.path == "$.routes[0].error_feedback"


def test_error_feedback_refit_needs_a_codec_that_refits(tmp_path):
    top = {"name": "top", "codec": "rtn", "params": {"bits": 4, "group_size": 32}, "calibration": CAL,
           "error_feedback": {"refit": True}}
    assert load_candidate(_write(tmp_path, "ok.yaml", top)).error_feedback.refit is True
    path = _write(tmp_path, "top.yaml", {**top, "routes": [{"match": "x", "codec": "campq",
                                                             "params": {"subspace_dim": 8, "centroids": 16}}]})
    with pytest.raises(ConfigError, match="cannot refit") as info:
        load_candidate(path)
    assert info.value.path == "$.routes[0].error_feedback.refit"


def test_serve_resolves_candidate_files_inside_its_roots_only(tmp_path):
    from helix_framework.serve.app import _rooted_route_files

    (tmp_path / "in").mkdir()
    lab = types.SimpleNamespace(roots=Roots([tmp_path / "in"]))
    data = {"name": "m", "routes": [{"match": "x", "candidate": "a.yaml"}]}
    assert _rooted_route_files(lab, data, "$.candidate")["routes"][0]["candidate"] == str(tmp_path / "in" / "a.yaml")
    with pytest.raises(RequestError) as info:
        _rooted_route_files(lab, {"routes": [{"match": "x", "candidate": str(tmp_path / "b.yaml")}]}, "$.candidate")
    assert info.value.status == 403


def test_a_sweep_accepts_route_choices(tmp_path):
    from helix_framework.sweep import expand, load_sweep

    (tmp_path / "eight.yaml").write_text(yaml.safe_dump({"name": "eight", "codec": "rtn",
                                                         "params": {"bits": 8, "group_size": 16}, "rows": ROWS}))
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({
        "name": "s", "codec": "rtn", "grid": {"bits": [2, 3]},
        "fixed": {"group_size": 16, "rows": ROWS,
                  "routes": [{"match": r"layers\.0\.", "candidate": "eight.yaml"},
                             {"match": "down_proj", "codec": "rtn", "params": {"bits": 6, "group_size": 16}}]}}))
    points = expand(load_sweep(path))
    assert [p.error for p in points] == [None, None]
    for p, bits in zip(points, (2, 3)):
        assert p.candidate.params.bits == bits
        assert p.candidate.for_tensor("model.layers.0.mlp.up_proj.weight").name == "eight"  # beside the sweep file
        assert p.candidate.for_tensor("model.layers.1.mlp.down_proj.weight").params.bits == 6
    assert points[0].key != points[1].key
