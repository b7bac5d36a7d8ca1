"""helix agree MODEL --candidate FILE.gguf: a quantized GGUF measured against
its model, and refused (one line naming the first mismatch) when it is not
of the model's architecture and tensor shapes."""

import ctypes
import json

import gguf
import numpy as np
import pytest

from helix_framework.cli import main
from helix_framework.models import resolve_model

POSITIONS, WINDOW = "300", "128"  # few positions: these compare figures, not verdicts (2,000 needed)


def _agree_json(capsys, *args: str) -> dict:
    assert main(["agree", "smollm2", *args, "--positions", POSITIONS, "--window", WINDOW, "--json"]) == 1
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A Q4_0 gguf-codec calibration of block 0, and its export."""
    tmp = tmp_path_factory.mktemp("agree_gguf")
    cfg = tmp / "q4.yaml"
    cfg.write_text("name: q4\ncodec: gguf\nparams: {type: Q4_0}\nrotation: {kind: identity}\n"
                   "rows: {calibration: 64, measurement: 64, seed: 42}\nmeasure: [rel_l2]\n")
    run, out = tmp / "q4", tmp / "q4.gguf"
    assert main(["calibrate", "smollm2", "--config", str(cfg), "--out", str(run), "--tensors", r"blk\.0\."]) == 0
    assert main(["export", str(run), "--format", "gguf", "--out", str(out)]) == 0
    return run, out


@pytest.mark.slow
def test_exported_gguf_agrees_as_its_artifacts(exported, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HELIX_CACHE_DIR", str(tmp_path))
    run, out = exported
    via_gguf = _agree_json(capsys, "--candidate", str(out))
    via_artifacts = _agree_json(capsys, "--artifacts", str(run))
    assert via_gguf["candidate"] == str(out)
    assert via_gguf["positions"] == via_artifacts["positions"] == int(POSITIONS)
    assert via_gguf["top1"] == via_artifacts["top1"] < 1.0  # the candidate differs from the model
    assert via_gguf["divergence_positions"] == via_artifacts["divergence_positions"]
    for key, value in via_artifacts["kl"].items():
        assert via_gguf["kl"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    assert "insufficient evidence" in via_gguf["verdict"]


@pytest.mark.slow
def test_llama_cpp_quantized_gguf(capsys, monkeypatch, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip builds it from source)")
    from helix_framework.agree import tensors_read_by_model, weights_from_gguf
    from helix_framework.sources import open_source

    monkeypatch.setenv("HELIX_CACHE_DIR", str(tmp_path))
    q8 = tmp_path / "q8.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    params.allow_requantize = True  # the embedded SmolLM2 is itself quantized (Q4_1)
    params.nthread = 1
    assert llama_cpp.llama_model_quantize(str(resolve_model("smollm2")).encode(), str(q8).encode(),
                                          ctypes.byref(params)) == 0
    source = open_source(resolve_model("smollm2"))
    weights = weights_from_gguf(q8, source, tensors_read_by_model(source))
    by_name = {t.name: t for t in gguf.GGUFReader(q8, "r").tensors}
    assert any(by_name[n].tensor_type.name == "Q8_0" for n in weights)
    for name in list(weights)[:3]:  # what agree receives is the file's own dequantization
        t = by_name[name]
        assert np.array_equal(weights[name].reshape(-1), gguf.quants.dequantize(t.data, t.tensor_type).reshape(-1))
    data = _agree_json(capsys, "--candidate", str(q8))
    # Q8_0 of the model's own weights: close, not identical
    assert 0.95 <= data["top1"] < 1.0 and 0 < data["kl"]["mean"] < 0.01


def _write_gguf(path, arch, tensors):
    w = gguf.GGUFWriter(path, arch)
    for name, array in tensors.items():
        w.add_tensor(name, array)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()


def _refused(capsys, path) -> str:
    assert main(["agree", "smollm2", "--candidate", str(path), "--positions", POSITIONS]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_other_architecture_is_refused_naming_the_field(tmp_path, capsys):
    path = tmp_path / "bert.gguf"
    _write_gguf(path, "bert", {"token_embd.weight": np.zeros((4, 8), np.float32)})
    err = _refused(capsys, path)
    assert "general.architecture is 'bert'" in err and "'llama'" in err


def test_other_shape_is_refused_naming_the_first_tensor(tmp_path, capsys):
    source = gguf.GGUFReader(resolve_model("smollm2"), "r")
    first = source.tensors[0]
    rows, cols = (int(d) for d in reversed(first.shape.tolist()))
    path = tmp_path / "narrow.gguf"
    _write_gguf(path, "llama", {first.name: np.zeros((rows, cols // 2), np.float32)})
    err = _refused(capsys, path)
    assert f"tensor {first.name} has shape [{rows}, {cols // 2}]" in err and f"[{rows}, {cols}]" in err

    path = tmp_path / "partial.gguf"
    _write_gguf(path, "llama", {first.name: np.zeros((rows, cols), np.float32)})
    assert f"tensor {source.tensors[1].name} is missing" in _refused(capsys, path)


def test_candidate_must_be_a_gguf(capsys):
    err = _refused(capsys, resolve_model("minilm"))
    assert "--candidate takes a .gguf file" in err
