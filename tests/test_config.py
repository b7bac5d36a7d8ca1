"""Candidate configs: conversion, every validation error, kernel signature."""

import textwrap

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helix_test_support import ROOT, run_helix
from helix_framework.config import RowsConfig, candidate_from_mapping, kernel_signature, load_candidate, load_yaml
from helix_framework.errors import CalibrationEqualsMeasurement, ConfigError
from helix_framework.host import Host
from helix_jit.lanes import LaneWidth

ISSUE_EXAMPLE = """\
name: 01_pr220_baseline
codec: campq                  # plugin name
params:                       # validated against the codec's own schema
  subspaces: 6
  centroids: 256
  residual: {depth: 0, centroids: 256}
  lane_width: F32x16          # F32x16 | F64x8 | U8x64 | BF16x32
  distance: adc_u8            # adc_u8 | adc_i8
rotation: {kind: identity}    # {kind: hadamard, seed: 7} | {kind: opq, iterations: 20}
rows: {calibration: 2048, measurement: 512, seed: 42}
measure: [rel_l2, cosine, icc_3_1, icc_3_1_pairs]
notes: free text
"""


@pytest.fixture(scope="module")
def toy_host():
    from helix_test_plugins import toy_codec

    host = Host()
    host.register(toy_codec)
    return host


def write(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load_error(tmp_path, text, host):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_candidate(path, host)
    return info.value


def test_issue_example_converts_to_frozen_classes(tmp_path, toy_host):
    c = load_candidate(write(tmp_path, ISSUE_EXAMPLE), toy_host)
    assert c.name == "01_pr220_baseline" and c.codec == "campq"
    assert c.params.subspaces == 6 and c.params.residual.depth == 0
    assert c.params.lane_width is LaneWidth.F32x16 and c.params.distance == "adc_u8"
    assert c.rotation.kind == "identity"
    assert c.rows == RowsConfig(calibration=2048, measurement=512, seed=42)
    assert c.measure == ("rel_l2", "cosine", "icc_3_1", "icc_3_1_pairs")
    with pytest.raises(AttributeError):
        c.name = "x"  # frozen
    assert c.to_json()["params"]["lane_width"] == "F32x16"


def test_rotation_params_are_validated_against_the_rotation_schema(tmp_path, toy_host):
    c = load_candidate(write(tmp_path, ISSUE_EXAMPLE.replace("{kind: identity}", "{kind: hadamard, seed: 7}")), toy_host)
    assert (c.rotation.kind, c.rotation.params.seed) == ("hadamard", 7)
    err = load_error(tmp_path, ISSUE_EXAMPLE.replace("{kind: identity}", "{kind: opq, iteration: 20}"), toy_host)
    assert (err.path, err.line) == ("$.rotation.iteration", 9)
    assert "unknown key 'iteration'" in str(err) and "iterations" in str(err)


@pytest.mark.parametrize(
    "old,new,path,line,fragment",
    [
        ("notes: free text", "note: free text", "$.note", 12, "unknown key 'note'"),
        ("  centroids: 256\n", "  centroids: many\n", "$.params.centroids", 5, "expected int"),
        ("  centroids: 256\n", "  centroids: 2.5\n", "$.params.centroids", 5, "expected int"),
        ("  centroids: 256\n", "  centroids: true\n", "$.params.centroids", 5, "boolean"),
        ("  subspaces: 6", "  subspaces: 0", "$.params.subspaces", 4, ">= 1, got 0"),
        ("  centroids: 256\n", "  centroids: 0\n", "$.params.centroids", 5, "between 2 and 65536, got 0"),
        ("depth: 0,", "depth: 0, extra: 1,", "$.params.residual.extra", 6, "unknown key 'extra'"),
        ("lane_width: F32x16", "lane_width: F32x8", "$.params.lane_width", 7, "unknown lane width 'F32x8'"),
        ("distance: adc_u8", "distance: l2", "$.params.distance", 8, "one of 'adc_u8', 'adc_i8'"),
        ("codec: campq", "codec: campqq", "$.codec", 2, "did you mean 'campq'"),
        ("{kind: identity}", "{kind: hadamart}", "$.rotation.kind", 9, "did you mean 'hadamard'"),
        ("icc_3_1_pairs]", "icc_31_pairs]", "$.measure[3]", 11, "did you mean 'icc_3_1_pairs'"),
        ("measure: [rel_l2, cosine, icc_3_1, icc_3_1_pairs]", "measure: rel_l2", "$.measure", 11, "expected a list"),
        ("name: 01_pr220_baseline", "name: [1, 2]", "$.name", 1, "expected str"),
        ("seed: 42}", "seed: 42, calibration: 10}", "$.rows.calibration", 10, "duplicate key"),
        ("rows: {calibration: 2048,", "rows: {calibration: -1,", "$.rows.calibration", 10, ">= 1"),
    ],
)
def test_errors_name_file_key_path_and_line(tmp_path, toy_host, old, new, path, line, fragment):
    assert old in ISSUE_EXAMPLE
    err = load_error(tmp_path, ISSUE_EXAMPLE.replace(old, new), toy_host)
    assert (err.path, err.line) == (path, line), str(err)
    assert fragment in str(err)
    assert str(err).startswith(f"{tmp_path / 'c.yaml'}:{line}: {path}: ")


def test_subspaces_and_subspace_dim_are_exclusive(tmp_path, toy_host):
    err = load_error(tmp_path, ISSUE_EXAMPLE.replace("  subspaces: 6\n", "  subspaces: 6\n  subspace_dim: 8\n"), toy_host)
    assert "one of subspaces (number of subspaces) or subspace_dim (weights per code), not both" in str(err) and err.path == "$.params.subspaces"


def test_lane_width_the_codec_does_not_support(tmp_path, toy_host):
    text = "name: t\ncodec: toy\nparams:\n  lane_width: BF16x32\n"
    err = load_error(tmp_path, text, toy_host)
    assert (err.path, err.line) == ("$.params.lane_width", 4)
    assert "does not support lane width BF16x32; supported: F32x16" in str(err)


def test_overlapping_rows_refused_unless_in_sample(tmp_path, toy_host):
    text = "name: t\ncodec: toy\nrows: {calibration: 128, measurement: calibration}\n"
    err = load_error(tmp_path, text, toy_host)
    assert isinstance(err, CalibrationEqualsMeasurement) and (err.path, err.line) == ("$.rows", 3)
    c = load_candidate(write(tmp_path, text + "in_sample: true\n"), toy_host)
    assert c.in_sample and c.rows.measurement == "calibration"
    err = load_error(tmp_path, "name: t\ncodec: toy\nrows: {calibration: all}\n", toy_host)
    assert isinstance(err, CalibrationEqualsMeasurement)


def test_yaml_syntax_errors_and_unsafe_tags(tmp_path, toy_host):
    err = load_error(tmp_path, "name: t\ncodec: toy\nparams: {centroids: [1, 2}\n", toy_host)
    assert err.line == 3 and "invalid YAML" in str(err)
    err = load_error(tmp_path, "name: !!python/object:os.system {}\ncodec: toy\n", toy_host)
    assert "invalid YAML" in str(err) and err.line == 1
    err = load_error(tmp_path, "", toy_host)
    assert "empty" in str(err)
    err = load_error(tmp_path, "- a\n- b\n", toy_host)
    assert "expected a mapping at the top level" in str(err)
    with pytest.raises(ConfigError, match="no such file"):
        load_candidate(tmp_path / "missing.yaml", toy_host)


def test_shipped_configs_validate_and_the_overfit_reproducer_is_refused(toy_host):
    # sweep files (a top-level grid) are validated by the sweep tests
    paths = [p for p in sorted((ROOT / "configs" / "codec").glob("*.yaml")) if "grid" not in yaml.safe_load(p.read_text())]
    names = {p.stem for p in paths}
    assert {"00_passthrough", "01_pr220_baseline", "02_pr219_overfit_reproducer", "10_wider_codebook",
            "11_residual_pq", "12_hadamard_rotation", "13_opq_rotation", "20_composite", "21_shared_vq"} <= names
    for path in paths:
        if path.stem == "02_pr219_overfit_reproducer":
            with pytest.raises(CalibrationEqualsMeasurement):
                load_candidate(path, toy_host)
        else:
            c = load_candidate(path, toy_host)
            assert c.notes.strip() and c.name == path.stem


def test_helix_check_exit_codes(tmp_path):
    good = ROOT / "configs" / "codec" / "01_pr220_baseline.yaml"
    bad = write(tmp_path, ISSUE_EXAMPLE.replace("subspaces: 6", "subspaces: 0"), "bad.yaml")
    proc = run_helix(["check", str(good)])
    assert proc.returncode == 0 and "ok" in proc.stdout
    proc = run_helix(["check", str(good), str(bad), str(good)])
    assert proc.returncode == 2
    assert proc.stdout.count("ok  ") == 2  # every file is reported, the bad one on stderr
    assert proc.stderr == f"helix: error: {bad}:4: $.params.subspaces: must be >= 1, got 0\nhelix: 1 of 3 files failed\n"


# -- kernel signature --------------------------------------------------------


def signature_of(toy_host, **changes):
    data = yaml.safe_load(ISSUE_EXAMPLE)
    for key, value in changes.items():
        target = data
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return kernel_signature(candidate_from_mapping(data, toy_host), toy_host)


def test_kernel_signature_ignores_seeds_rows_and_notes(toy_host):
    base = signature_of(toy_host)
    assert len(base) == 64 and int(base, 16) >= 0
    assert signature_of(toy_host, **{"rows.seed": 7}) == base
    assert signature_of(toy_host, **{"rows.calibration": 100, "rows.measurement": 10}) == base
    assert signature_of(toy_host, notes="other", name="renamed", measure=["rel_l2"]) == base
    assert signature_of(toy_host, **{"params.allow_starved": True, "params.max_iter": 3}) == base
    assert signature_of(toy_host, rotation={"kind": "hadamard", "seed": 1}) == signature_of(
        toy_host, rotation={"kind": "hadamard", "seed": 2}
    )


def test_kernel_signature_moves_with_codegen_fields(toy_host):
    base = signature_of(toy_host)
    moved = {
        signature_of(toy_host, **{"params.centroids": 1024}),
        signature_of(toy_host, **{"params.subspaces": 8}),
        signature_of(toy_host, **{"params.lane_width": "BF16x32"}),
        signature_of(toy_host, **{"params.residual": {"depth": 1, "centroids": 256}}),
        signature_of(toy_host, rotation={"kind": "hadamard"}),
        signature_of(toy_host, rotation={"kind": "opq"}),
    }
    assert base not in moved and len(moved) == 6


# -- property tests: the loader raises nothing but ConfigError ----------------

yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=True), st.text(max_size=12),
    st.sampled_from(["F32x16", "BF16x32", "adc_u8", "campq", "rtn", "identity", "hadamard", "all", "calibration"]),
)
keys = st.sampled_from(
    ["name", "codec", "params", "rotation", "rows", "measure", "notes", "in_sample", "routes", "kind",
     "subspaces", "centroids", "residual", "depth", "lane_width", "distance", "calibration", "measurement",
     "seed", "bits", "group_size", "match", "route", "x"]
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=6),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys, yaml_values, max_size=8))
def test_random_structures_raise_only_config_errors(toy_host, data):
    text = yaml.safe_dump(data)
    try:
        doc = load_yaml(text, "random.yaml")
        candidate_from_mapping(doc.data, toy_host)
    except ConfigError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("abc:{}[]-,'\"!&*#|>%@`\n\t 0123456789.")), max_size=80))
def test_random_text_raises_only_config_errors(toy_host, text):
    try:
        doc = load_yaml(text, "random.yaml")
        candidate_from_mapping(doc.data, toy_host)
    except ConfigError:
        pass


def test_missing_required_key_names_it_once(tmp_path, toy_host):
    err = load_error(tmp_path, "codec: toy\n", toy_host)
    assert err.path == "$.name" and "required key is missing" in str(err)
