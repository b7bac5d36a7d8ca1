"""llama.cpp as the external check of helix's decoder and of its exports.

Both read the same 512 token positions (helix's tokenizer, the built-in
prompts, windows of 128) and are compared with helix's agreement statistics
(top-1, mean KL(P_helix || P_llama.cpp)).

llama.cpp quantizes the activations to 8 bits inside every product with
quantized weights, so on a quantized GGUF it is not exact. Each file is
therefore also run as its "F32 twin" (every tensor dequantized to float32,
where llama.cpp multiplies in float32): there helix must match llama.cpp
almost exactly, and on the file itself helix must agree with llama.cpp at
least as well as llama.cpp's F32 twin does, so the remaining difference is
llama.cpp's own activation rounding. Skipped without llama_cpp.
"""

from pathlib import Path

import numpy as np
import pytest

from helix_framework.agree import token_windows
from helix_framework.calibrate import weights_from_artifacts
from helix_framework.cli import main
from helix_framework.export_gguf import write_f32_copy
from helix_framework.host import Host
from helix_framework.measure.agreement import AgreementAccumulator
from helix_framework.models import resolve_model
from helix_framework.prompts import load_prompts
from helix_framework.reference import load_model, load_tokenizer
from helix_framework.sources import open_source

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip builds it from source)")

POSITIONS, WINDOW = 512, 128
TOP1, KL = 0.99, 0.01  # the bounds
TWIN_KL = 1e-4  # float32 against float32: only summation order differs


@pytest.fixture(autouse=True)
def _no_extra_buffers(monkeypatch):
    without_extra_buffers(monkeypatch)


def without_extra_buffers(monkeypatch) -> None:
    """Models load with ``use_extra_bufts=False``."""
    # A native build enables ggml's AMX kernels, which crash (SIGSEGV in ggml_backend_amx_mul_mat)
    # where the kernel does not grant AMX state; the extra buffer types are a speed-up only.
    default = llama_cpp.llama_cpp.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    monkeypatch.setattr(llama_cpp.llama_cpp, "llama_model_default_params", params)


@pytest.fixture(scope="module")
def source():
    return open_source(resolve_model("smollm2"))


@pytest.fixture(scope="module")
def windows(source):
    return token_windows(load_tokenizer(source), load_prompts(None), POSITIONS, WINDOW)


def _llama(path: Path, n_ctx: int = WINDOW):
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, n_threads=2,
                           verbose=False)


def llama_logits(path: Path, windows) -> list[np.ndarray]:
    llm = _llama(path)
    out = []
    for w in windows:
        llm.reset()
        llm.eval(w.ids.tolist())
        out.append(np.array(llm.scores[:w.ids.size], dtype=np.float32))
    llm.close()
    return out


def helix_logits(model, windows) -> list[np.ndarray]:
    return [model.forward(w.ids) for w in windows]


def agreement(ref: list[np.ndarray], cand: list[np.ndarray], windows) -> tuple[float, float]:
    """(top-1 agreement, mean KL(ref || cand)) over every position of the windows."""
    acc, offset = AgreementAccumulator(), 0
    for r, c, w in zip(ref, cand, windows):
        acc.add(r, c, w.next_ids, np.arange(offset, offset + w.ids.size))
        offset += w.ids.size
    result = acc.result()
    assert result.positions == POSITIONS
    return result.top1, result.kl["mean"]


def check_against_llama_cpp(path: Path, model, windows, tmp: Path) -> dict[str, tuple[float, float]]:
    ours = helix_logits(model, windows)
    theirs = llama_logits(path, windows)
    twin = llama_logits(write_f32_copy(path, tmp / f"{path.stem}-f32.gguf"), windows)
    figures = {"helix~llama": agreement(ours, theirs, windows), "helix~llama_f32": agreement(ours, twin, windows),
               "llama_f32~llama": agreement(twin, theirs, windows)}
    print(path.name, figures)  # pytest -s shows the measured figures
    top1, kl = figures["helix~llama_f32"]
    assert top1 >= TOP1 and kl <= TWIN_KL, figures
    top1, kl = figures["helix~llama"]
    assert kl <= KL, figures
    # llama.cpp's own activation rounding is all that separates it from helix (one position of slack)
    assert top1 >= figures["llama_f32~llama"][0] - 1 / POSITIONS, figures
    return figures


@pytest.mark.slow
def test_reference_agrees_with_llama_cpp_on_smollm2(source, windows, tmp_path):
    check_against_llama_cpp(resolve_model("smollm2"), load_model(source), windows, tmp_path)


@pytest.mark.slow
def test_exported_candidate_agrees_with_llama_cpp_and_answers_paris(source, windows, tmp_path):
    cfg = tmp_path / "q4k.yaml"
    cfg.write_text("name: q4k\ncodec: gguf\nparams: {type: Q4_K}\nrotation: {kind: identity}\n"
                   "rows: {calibration: 64, measurement: 64, seed: 42}\nmeasure: [rel_l2]\n")
    run, out = tmp_path / "q4k", tmp_path / "q4k.gguf"
    assert main(["calibrate", "smollm2", "--config", str(cfg), "--out", str(run), "--tensors", r"blk\.[0-3]\."]) == 0
    assert main(["export", str(run), "--format", "gguf", "--out", str(out)]) == 0

    llm = _llama(out, 64)
    text = llm("The capital of France is", max_tokens=2, temperature=0.0, top_k=1)["choices"][0]["text"]
    llm.close()
    assert text.startswith(" Paris"), text

    weights = weights_from_artifacts(run, source, Host())
    assert len(weights) == 28
    candidate = load_model(source, weights=weights)
    figures = check_against_llama_cpp(out, candidate, windows, tmp_path)
    # the candidate is not the model: helix and llama.cpp see the same change
    reference = helix_logits(load_model(source), windows)
    top1_changed, _ = agreement(reference, helix_logits(candidate, windows), windows)
    assert top1_changed < 1.0 and figures["helix~llama_f32"][0] > top1_changed
