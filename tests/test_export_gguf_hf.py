"""helix export --format gguf from a Hugging Face Llama-family directory.

The directory is written from the embedded SmolLM2 GGUF (config.json from its
hyper-parameters, tokenizer.json rebuilt from its vocabulary, safetensors in
Hugging Face names with llama.cpp's q/k row order undone), so the export can
be checked against the original file, tensor by tensor, and in llama.cpp.
"""

import json
import re
from pathlib import Path

import gguf
import numpy as np
import pytest

from helix_framework import artifacts
from helix_framework.agree import token_windows
from helix_framework.calibrate import weights_from_artifacts
from helix_framework.calibrate import reconstruct
from helix_framework.cli import main
from helix_framework.errors import ExportError
from helix_framework.export_gguf import source_layout
from helix_framework.export_gguf_hf import qk_row_order
from helix_framework.host import Host
from helix_framework.models import resolve_model
from helix_framework.prompts import load_prompts
from helix_framework.reference import load_model, load_tokenizer
from helix_framework.reference.tokenizer import tokenizer_from_gguf
from helix_framework.sources import open_source

HF_LAYER = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
            "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
            "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
HF_GLOBAL = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}


def hf_name(name: str) -> str:
    if name in HF_GLOBAL:
        return HF_GLOBAL[name]
    i, role = re.fullmatch(r"blk\.(\d+)\.(\w+)\.weight", name).groups()
    return f"model.layers.{i}.{HF_LAYER[role]}.weight"


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    return write_hf_copy(tmp_path_factory.mktemp("hf") / "SmolLM2-hf")


def write_hf_copy(d: Path) -> Path:
    """The embedded SmolLM2 as a Hugging Face directory ``d``."""
    from safetensors.numpy import save_file

    src = open_source(resolve_model("smollm2"))
    meta = src.config
    d.mkdir()
    n_head, n_kv = meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
              "hidden_size": meta["llama.embedding_length"], "intermediate_size": meta["llama.feed_forward_length"],
              "num_hidden_layers": meta["llama.block_count"], "num_attention_heads": n_head,
              "num_key_value_heads": n_kv, "rms_norm_eps": float(np.float32(meta["llama.attention.layer_norm_rms_epsilon"])),
              "rope_theta": meta["llama.rope.freq_base"], "max_position_embeddings": meta["llama.context_length"],
              "vocab_size": meta["llama.vocab_size"], "tie_word_embeddings": True,
              "bos_token_id": meta["tokenizer.ggml.bos_token_id"], "eos_token_id": meta["tokenizer.ggml.eos_token_id"]}
    (d / "config.json").write_text(json.dumps(config, indent=1))
    tokens = src.metadata["tokenizer.ggml.tokens"]
    tokenizer_from_gguf(src).backend.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": tokens[meta["tokenizer.ggml.bos_token_id"]], "eos_token": tokens[meta["tokenizer.ggml.eos_token_id"]],
        "unk_token": tokens[meta["tokenizer.ggml.unknown_token_id"]],
        "pad_token": tokens[meta["tokenizer.ggml.padding_token_id"]],
        "chat_template": meta["tokenizer.chat_template"]}))
    weights = {}
    for t in gguf.GGUFReader(resolve_model("smollm2"), "r").tensors:
        x = np.ascontiguousarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        role = t.name.split(".")[-2]
        if role in ("attn_q", "attn_k"):  # undo llama.cpp's row order
            hf = np.empty_like(x)
            hf[qk_row_order(x.shape[0], n_head if role == "attn_q" else n_kv)] = x
            x = hf
        weights[hf_name(t.name)] = x
    save_file(weights, str(d / "model.safetensors"))
    return d


@pytest.mark.slow
def test_hf_copy_is_the_same_model(hf_dir):
    # the copy (Hugging Face names, RoPE halves, q/k order undone) computes what the GGUF computes
    hf, ref = open_source(hf_dir), open_source(resolve_model("smollm2"))
    ids = np.asarray(load_tokenizer(hf).encode("The capital of France is Paris, and the capital of Italy is"))
    assert ids.tolist() == load_tokenizer(ref).encode("The capital of France is Paris, and the capital of Italy is")
    a, b = load_model(hf).forward(ids), load_model(ref).forward(ids)
    assert np.abs(a - b).max() < 1e-3


@pytest.fixture(scope="module")
def hf_export(hf_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hf_export")
    cfg = tmp / "q4k.yaml"
    cfg.write_text("name: q4k\ncodec: gguf\nparams: {type: Q4_K}\nrotation: {kind: identity}\n"
                   "rows: {calibration: 64, measurement: 64, seed: 42}\nmeasure: [rel_l2]\n")
    run, out = tmp / "q4k", tmp / "q4k.gguf"
    assert main(["calibrate", str(hf_dir), "--config", str(cfg), "--out", str(run),
                 "--tensors", r"model\.layers\.[0-3]\."]) == 0
    assert main(["export", str(run), "--format", "gguf", "--out", str(out)]) == 0
    return tmp, run, out


@pytest.mark.slow
def test_hf_export_has_llama_cpp_names_metadata_and_row_order(hf_export):
    _, run, out = hf_export
    src, exp = gguf.GGUFReader(resolve_model("smollm2"), "r"), gguf.GGUFReader(out, "r")
    # llama.cpp's hyper-parameter and tokenizer keys, with the values its converter wrote for SmolLM2
    for key, field in src.fields.items():
        if key.startswith(("llama.", "tokenizer.")) and key != "tokenizer.ggml.add_space_prefix":
            assert key in exp.fields, key
            assert exp.fields[key].contents() == field.contents(), key
    assert exp.fields["general.architecture"].contents() == "llama"
    st, et = {t.name: t for t in src.tensors}, {t.name: t for t in exp.tensors}
    assert set(st) == set(et)
    manifest = artifacts.read_manifest(run)
    host, n_codec = Host(), 0
    by_hf = {hf_name(n): n for n in st}
    for entry in manifest["tensors"]:
        name = by_hf[entry["name"]]
        e = et[name]
        got = gguf.quants.dequantize(e.data, e.tensor_type).reshape(entry["shape"])
        if entry["route"] == "codec":
            n_codec += 1
            want = reconstruct(entry, run, host, manifest)
            role = name.split(".")[-2]
            if role in ("attn_q", "attn_k"):
                want = want[qk_row_order(want.shape[0], 9 if role == "attn_q" else 3)]
            assert e.tensor_type.name in ("Q4_K", "Q5_0"), name
        else:  # untouched: exactly the original GGUF's values, in its row order
            assert e.tensor_type.name == "F32", name
            s = st[name]
            want = gguf.quants.dequantize(s.data, s.tensor_type).reshape(entry["shape"])
        assert np.array_equal(got, want), name
    assert n_codec == 28


@pytest.mark.slow
def test_hf_export_agrees_with_llama_cpp_and_answers_paris(hf_dir, hf_export, monkeypatch):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip builds it from source)")
    from test_llamacpp_logits import POSITIONS, WINDOW, _llama, check_against_llama_cpp, without_extra_buffers

    without_extra_buffers(monkeypatch)
    tmp, run, out = hf_export
    llm = _llama(out, 64)
    text = llm("The capital of France is", max_tokens=2, temperature=0.0, top_k=1)["choices"][0]["text"]
    llm.close()
    assert text.startswith(" Paris"), text
    source = open_source(hf_dir)
    windows = token_windows(load_tokenizer(source), load_prompts(None), POSITIONS, WINDOW)
    candidate = load_model(source, weights=weights_from_artifacts(run, source, Host()))
    check_against_llama_cpp(out, candidate, windows, tmp)


def _layout(tmp_path: Path, config: dict):
    (tmp_path / "config.json").write_text(json.dumps(config))
    return source_layout({"source": {"kind": "hf_directory", "path": str(tmp_path)}})


def test_hf_architecture_llama_cpp_does_not_take_is_one_line_naming_the_field(tmp_path):
    with pytest.raises(ExportError, match=r"field 'architectures': architecture 'Qwen2ForCausalLM' is not exported"):
        _layout(tmp_path, {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"})
    with pytest.raises(ExportError, match=r"field 'architectures': architecture None"):
        _layout(tmp_path, {"hidden_size": 8})
    layout = _layout(tmp_path, {"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2,
                                "num_attention_heads": 4, "num_key_value_heads": 2})
    assert layout.name("model.layers.1.mlp.down_proj.weight") == "blk.1.ffn_down.weight"
    assert layout.name("model.layers.0.self_attn.rotary_emb.inv_freq") is None  # llama.cpp computes it
    with pytest.raises(ExportError, match=r"tensor 'model.layers.0.mlp.gain.weight': llama.cpp's llama"):
        layout.name("model.layers.0.mlp.gain.weight")


def test_qk_row_order_is_llama_cpp_permute():
    # convert_hf_to_gguf.py's LlamaModel.permute, written out for 2 heads of 4 rows:
    # each head's first half (rows 0, 1) and second half (rows 2, 3) interleave
    assert qk_row_order(8, 2).tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    w = np.arange(24.0).reshape(12, 2)
    permuted = w.reshape(3, 2, 2, 2).swapaxes(1, 2).reshape(w.shape)
    assert np.array_equal(w[qk_row_order(12, 3)], permuted)
    with pytest.raises(ExportError, match="do not split into 5 heads"):
        qk_row_order(12, 5)
