"""helix export --format gguf: a calibration of the embedded SmolLM2 GGUF
written back as a GGUF (one block compressed to keep it fast). llama.cpp
loading exports: tests/test_llamacpp_logits.py."""

import json
from pathlib import Path

import gguf
import numpy as np
import pytest

from helix_framework import artifacts
from helix_framework.calibrate import reconstruct, split_arrays
from helix_framework.cli import main
from helix_framework.errors import ExportError
from helix_framework.export_gguf import known_architectures, source_layout
from helix_framework.host import Host
from helix_framework.models import resolve_model

BLOCK0 = r"blk\.0\."


def _calibrate(tmp: Path, name: str, codec_yaml: str) -> Path:
    cfg = tmp / f"{name}.yaml"
    cfg.write_text(f"name: {name}\n{codec_yaml}\nrows: {{calibration: 64, measurement: 64, seed: 42}}\n"
                   "measure: [rel_l2]\n")
    out = tmp / name
    assert main(["calibrate", "smollm2", "--config", str(cfg), "--out", str(out), "--tensors", BLOCK0]) == 0
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    q4k = _calibrate(tmp, "q4k", "codec: gguf\nparams: {type: Q4_K}\nrotation: {kind: identity}")
    rtn = _calibrate(tmp, "rtn", "codec: rtn\nparams: {bits: 4, group_size: 32, symmetric: true}\n"
                                 "rotation: {kind: identity}")
    return tmp, q4k, rtn


def _source() -> gguf.GGUFReader:
    return gguf.GGUFReader(resolve_model("smollm2"), "r")


def _exported(tmp: Path, run: Path, *extra: str) -> gguf.GGUFReader:
    out = tmp / f"{run.name}{''.join(extra)}.gguf"
    assert main(["export", str(run), "--format", "gguf", "--out", str(out), *extra]) == 0
    return gguf.GGUFReader(out, "r")


def _check_copy_of_source(out: gguf.GGUFReader) -> tuple[dict, dict]:
    src = _source()
    for key, field in src.fields.items():
        if key.startswith("GGUF."):
            continue
        assert key in out.fields, key
        assert out.fields[key].types == field.types and out.fields[key].contents() == field.contents(), key
    st, ot = {t.name: t for t in src.tensors}, {t.name: t for t in out.tensors}
    assert set(st) == set(ot)
    for name, t in st.items():
        assert list(ot[name].shape) == list(t.shape), name
    return st, ot


@pytest.mark.slow
def test_gguf_codec_export_writes_native_blocks(runs):
    tmp, run, _ = runs
    out = _exported(tmp, run)
    st, ot = _check_copy_of_source(out)
    manifest = artifacts.read_manifest(run)
    info = json.loads(out.fields["helix.export"].contents())
    assert info["codec"] == "gguf" and info["dtype"] == "f16"
    n_codec = 0
    for entry in manifest["tensors"]:
        name, o = entry["name"], ot[entry["name"]]
        if entry["route"] == "codec":
            n_codec += 1
            codes, _, _ = split_arrays(artifacts.read_safetensors(run / entry["files"][0]["file"]))
            eff = entry["codec_meta"]["state"]["effective_type"]
            # 576-wide rows fall back to Q5_0 as in llama.cpp; ffn_down (1536 wide) keeps Q4_K
            assert eff == ("Q4_K" if name.endswith("ffn_down.weight") else "Q5_0")
            assert info["tensors"][name] == f"native {eff}" and o.tensor_type.name == eff
            assert np.array_equal(np.asarray(o.data).reshape(-1), codes["blocks"].reshape(-1)), name
        else:
            s = st[name]
            assert info["tensors"][name] == f"source {s.tensor_type.name}" and o.tensor_type == s.tensor_type
            assert np.array_equal(np.asarray(o.data), np.asarray(s.data)), name
    assert n_codec == 7


@pytest.mark.slow
def test_other_codec_export_decodes_to_f16_or_f32(runs):
    tmp, _, run = runs
    manifest = artifacts.read_manifest(run)
    host = Host()
    for dtype, np_dtype in (("f16", np.float16), ("f32", np.float32)):
        out = _exported(tmp, run, "--dtype", dtype)
        _, ot = _check_copy_of_source(out)
        info = json.loads(out.fields["helix.export"].contents())
        for entry in (e for e in manifest["tensors"] if e["route"] == "codec"):
            o = ot[entry["name"]]
            assert info["tensors"][entry["name"]] == f"decoded {dtype.upper()}"
            want = reconstruct(entry, run, host, manifest).astype(np_dtype)
            assert np.array_equal(np.asarray(o.data).reshape(want.shape), want), entry["name"]


@pytest.mark.slow
def test_bad_outputs_leave_nothing_behind(runs, capsys):
    tmp, run, _ = runs
    before = sorted(p.name for p in tmp.iterdir())
    assert main(["export", str(run), "--format", "gguf", "--out", str(tmp)]) == 2
    assert "is a directory" in capsys.readouterr().err
    source = resolve_model("smollm2")
    assert main(["export", str(run), "--format", "gguf", "--out", str(source)]) == 2
    assert "is the source model" in capsys.readouterr().err
    # the run's own manifest and artifacts are never overwritten
    manifest = (run / "manifest.json").read_bytes()
    artifact = next((run / "tensors").iterdir())
    for own in (run / "manifest.json", artifact):
        assert main(["export", str(run), "--format", "gguf", "--out", str(own)]) == 2
        assert "it is a file of the calibration output" in capsys.readouterr().err
    assert (run / "manifest.json").read_bytes() == manifest
    assert sorted(p.name for p in tmp.iterdir()) == before


def test_unknown_architecture_is_one_line_naming_the_field(tmp_path):
    path = tmp_path / "odd.gguf"
    w = gguf.GGUFWriter(path, "helixnet")
    w.add_tensor("w", np.zeros((2, 32), dtype=np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    assert "llama" in known_architectures() and "helixnet" not in known_architectures()
    with pytest.raises(ExportError, match=r"field 'general.architecture': architecture 'helixnet' is not one"):
        source_layout({"source": {"kind": "gguf", "path": str(path)}})
    with pytest.raises(ExportError, match=r"field 'source.kind'.*safetensors_file"):
        source_layout({"source": {"kind": "safetensors_file", "path": str(path)}})
