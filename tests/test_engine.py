"""The block-at-a-time engine on a tiny generated Llama: Hessians of each
linear layer's inputs, sharing, one block in memory, propagation, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from helix_framework.engine import StatsCollector, run_blocks
from helix_framework.errors import LayerInputError
from helix_framework.reference import load_model
from helix_framework.reference.base import LazyWeights, rms_norm

from test_reference import _tiny_llama

P = "model.layers.{}."


@pytest.fixture
def path(tmp_path):
    return _tiny_llama(tmp_path / "tiny")


def windows(n=5, t=12, seed=0):
    return np.random.default_rng(seed).integers(0, 61, size=(n, t))


def collect(model, ids, fit, held, replace=None, propagate="quantized"):
    seen, loaded = [], []

    def fit_block(layer, names, stats):
        seen.append(stats)
        loaded.append(sorted(n for n in dict.keys(model.weights) if ".layers." in n))
        return {n: replace(model.weights[n]) for n in names if n.endswith("proj.weight")} if replace else {}

    run_blocks(model, ids, fit, held, fit_block, propagate=propagate)
    return seen, loaded


def test_lazy_block_steps_equal_the_full_forward(path):
    eager, lazy = load_model(path), load_model(path, lazy=True)
    assert isinstance(lazy.weights, LazyWeights)
    ids = windows()
    h = lazy.embed_windows(ids)
    for layer in range(lazy.n_layers):
        h = lazy.block_windows(layer, h)
    for b in range(ids.shape[0]):
        np.testing.assert_allclose(lazy.head_window(h[b]), eager.forward(ids[b]), rtol=1e-5, atol=1e-5)


def test_hessians_are_shared_exact_and_split_by_windows(path):
    model = load_model(path, lazy=True)
    ids = windows()
    fit, held = np.array([0, 2, 3, 4]), np.array([1])
    stats, loaded = collect(model, ids, fit, held)
    block0 = stats[0]
    q, k, v = (block0[P.format(0) + f"self_attn.{r}_proj.weight"] for r in "qkv")
    assert q.fit.hessian is k.fit.hessian is v.fit.hessian  # one Hessian for one input
    assert q.shared_with == (P.format(0) + "self_attn.k_proj.weight", P.format(0) + "self_attn.v_proj.weight")
    gate, up = (block0[P.format(0) + f"mlp.{r}_proj.weight"] for r in ("gate", "up"))
    assert gate.fit.hessian is up.fit.hessian and gate.fit.hessian is not q.fit.hessian
    eager = load_model(path)
    norm = eager.weights[P.format(0) + "input_layernorm.weight"]
    emb = eager.weights["model.embed_tokens.weight"]
    for idx, got in ((fit, q.fit), (held, q.held_out)):
        x = np.concatenate([rms_norm(emb[ids[i]], norm, eager.config.rms_norm_eps) for i in idx]).astype(np.float64)
        np.testing.assert_allclose(got.hessian, x.T @ x, rtol=1e-5, atol=1e-4)
        assert got.n_tokens == idx.size * ids.shape[1] and got.hessian.dtype == np.float64
    # while a block is fitted only its own matrices are in memory
    assert all({n.split(".layers.")[1].split(".")[0] for n in names} == {str(i)} for i, names in enumerate(loaded))


def test_propagation_through_quantized_or_reference_blocks(path):
    ids, fit, held = windows(), np.arange(4), np.array([4])
    ref, _ = collect(load_model(path, lazy=True), ids, fit, held)
    same, _ = collect(load_model(path, lazy=True), ids, fit, held, replace=lambda w: w)
    coarse = lambda w: np.rint(w * 2) / 2  # noqa: E731
    quant, _ = collect(load_model(path, lazy=True), ids, fit, held, replace=coarse)
    through_ref, _ = collect(load_model(path, lazy=True), ids, fit, held, replace=coarse, propagate="reference")
    name = P.format(1) + "mlp.down_proj.weight"
    np.testing.assert_allclose(same[1][name].fit.hessian, ref[1][name].fit.hessian, rtol=1e-6)
    np.testing.assert_allclose(through_ref[1][name].fit.hessian, ref[1][name].fit.hessian, rtol=1e-6)
    assert not np.allclose(quant[1][name].fit.hessian, ref[1][name].fit.hessian, rtol=1e-3)
    # block 0 sees the same embeddings either way
    np.testing.assert_allclose(quant[0][name.replace("1", "0", 1)].fit.hessian, ref[0][name.replace("1", "0", 1)].fit.hessian)


def test_nan_inputs_stop_the_run_naming_the_layer():
    collector = StatsCollector()
    collector("blk.0.attn_q.weight", np.ones((4, 3), np.float32))
    bad = np.ones((4, 3), np.float32)
    bad[1, 2] = np.inf
    with pytest.raises(LayerInputError, match=r"layer 'blk.0.attn_output.weight': .* 1 NaN or infinite"):
        collector("blk.0.attn_output.weight", bad)
