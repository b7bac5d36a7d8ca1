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


def collect(model, ids, fit, held, replace=None, propagate="quantized", reference=None, layers=None, target="layer"):
    """Statistics by block (merged over the block's fit calls) and the matrices in memory at each call."""
    seen, loaded = {}, []

    def fit_block(layer, names, stats):
        assert set(stats) <= set(names)
        seen.setdefault(layer, {}).update(stats)
        loaded.append(sorted(n for n in dict.keys(model.weights) if ".layers." in n))
        if not replace or (layers is not None and layer not in layers):
            return {}
        return {n: replace(model.weights[n]) for n in names if n.endswith("proj.weight")}

    fit_names = None if layers is None else {n for i in layers for n in model.block_tensors(i) if n.endswith("proj.weight")}
    run_blocks(model, ids, fit, held, fit_block, propagate=propagate, reference=reference, fit_names=fit_names,
               target=target)
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
    assert all(len({n.split(".layers.")[1].split(".")[0] for n in names}) == 1 for names in loaded)


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
    # block 0's first layers see the same embeddings either way
    q0 = P.format(0) + "self_attn.q_proj.weight"
    np.testing.assert_allclose(quant[0][q0].fit.hessian, ref[0][q0].fit.hessian)


def _inputs(model, ids, layer):
    """Every linear layer's inputs in block ``layer`` (all windows, rows in window order)."""
    got = {}
    h = model.embed_windows(ids)
    for i in range(layer):
        h = model.block_windows(i, h)
    model.linear_observer = lambda name, x: got.setdefault(name, []).append(np.array(x, dtype=np.float64))
    try:
        model.block_windows(layer, h)
    finally:
        model.linear_observer = None
    return {name: np.concatenate(xs) for name, xs in got.items()}


def test_target_reference_sums_the_inputs_against_the_uncompressed_models(path):
    """``target: reference``: each layer's statistics carry ``X^T (X_ref -
    X)``, X its inputs in the partly compressed model (blocks before it and
    the block's earlier layers replaced), X_ref the same tokens' inputs in
    the uncompressed model (kept in float16); with ``target: layer`` there
    is none."""
    ids, fit, held = windows(), np.arange(4), np.array([4])
    coarse = lambda w: np.rint(w * 2) / 2  # noqa: E731
    stats, _ = collect(load_model(path, lazy=True), ids, fit, held, replace=coarse, target="reference")
    plain, _ = collect(load_model(path, lazy=True), ids, fit, held, replace=coarse)
    ref = _inputs(load_model(path), ids[fit], 1)
    block = [n for n in load_model(path).block_tensors(1) if n.endswith("proj.weight")]
    for name in block:
        probe = load_model(path)
        for n in load_model(path).block_tensors(0) + block[:block.index(name)]:
            if n.endswith("proj.weight"):
                probe.weights[n] = coarse(probe.weights[n])
        x = _inputs(probe, ids[fit], 1)[name]
        want = x.T @ (ref[name] - x)
        got = stats[1][name].fit.drift
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-3 * np.abs(x.T @ ref[name]).max())
        assert np.abs(want).max() > 0.05 * np.abs(x.T @ x).max()  # a real drift, measured to a few parts in 1e3
        np.testing.assert_allclose(stats[1][name].fit.hessian, x.T @ x, rtol=1e-4, atol=1e-3)
        np.testing.assert_array_equal(stats[1][name].fit.hessian, plain[1][name].fit.hessian)
        assert plain[1][name].fit.drift is None and stats[1][name].held_out.drift is None
    # nothing is compressed before block 0's q/k/v: their inputs are the reference's (to float16 rounding)
    q0 = stats[0][P.format(0) + "self_attn.q_proj.weight"].fit
    assert np.abs(q0.drift).max() <= 1e-3 * np.abs(q0.hessian).max()


def test_reference_inputs_beyond_float16_stay_float32():
    from helix_framework.engine import _KeepInputs

    keep = _KeepInputs(2)
    small, large = np.ones((3, 4), np.float32), np.full((3, 4), 1e5, np.float32)
    keep("a", small)
    keep("a", large)
    assert [a.dtype for a in keep.inputs["a"]] == [np.float16, np.float32]
    np.testing.assert_array_equal(keep.inputs["a"][1], large)


def test_quantized_propagation_is_sequential_within_a_block(path):
    """Each layer's statistics come from the block with the layers before it
    already replaced (q/k/v, then o, then gate/up, then down)."""
    ids, fit, held = windows(), np.arange(4), np.array([4])
    coarse = lambda w: np.rint(w * 2) / 2  # noqa: E731
    quant, _ = collect(load_model(path, lazy=True), ids, fit, held, replace=coarse)
    ref, _ = collect(load_model(path, lazy=True), ids, fit, held)
    model = load_model(path)
    block = [n for n in model.block_tensors(0) if n.endswith("proj.weight")]
    groups = [["q", "k", "v"], ["o"], ["gate", "up"], ["down"]]
    for group in groups:
        names = [n for n in block if n.split(".")[-2].split("_")[0] in group]
        first = block.index(names[0])
        probe = load_model(path)
        for n in block[:first]:
            probe.weights[n] = coarse(probe.weights[n])
        collector = StatsCollector()
        probe.linear_observer = collector
        probe.block_windows(0, probe.embed_windows(ids[fit]))
        for n in names:
            np.testing.assert_allclose(quant[0][n].fit.hessian, collector.result()[n].fit.hessian, rtol=1e-5, atol=1e-4)
            assert quant[0][n].fit.n_tokens == fit.size * ids.shape[1]
            assert quant[0][n].held_out.n_tokens == held.size * ids.shape[1]
        if first:
            assert not np.allclose(quant[0][names[0]].fit.hessian, ref[0][names[0]].fit.hessian, rtol=1e-3)


def test_reference_blocks_are_reused_until_the_first_compressed_block(path):
    from helix_framework.engine import ReferenceBlocks

    ids, fit, held = windows(), np.arange(4), np.array([4])
    coarse = lambda w: np.rint(w * 2) / 2  # noqa: E731
    store = ReferenceBlocks()
    plain, _ = collect(load_model(path, lazy=True), ids, fit, held, reference=store)  # nothing compressed: all kept
    assert sorted(store._blocks) == [0, 1] and store.nbytes > 0

    def counted():
        model = load_model(path, lazy=True)
        calls, run = [], model.block_each
        # passes over whole windows (not the one-token probe of `read_groups`)
        model.block_each = lambda layer, hs, **kw: (len(hs[0]) > 1 and calls.append(layer)) or run(layer, hs, **kw)
        return model, calls

    # compress block 1 only: both reference passes (fit + held-out windows) come from the store;
    # compress both: block 0's does, block 1's sees compressed inputs and runs
    for layers, saved in (({1}, [2, 2]), ({0, 1}, [2, 0])):
        cold_model, cold_calls = counted()
        cold, _ = collect(cold_model, ids, fit, held, replace=coarse, layers=layers)
        warm_model, warm_calls = counted()
        warm, _ = collect(warm_model, ids, fit, held, replace=coarse, layers=layers, reference=store)
        for layer in cold:  # the very same statistics, to the bit
            for name in cold[layer]:
                assert np.array_equal(warm[layer][name].fit.hessian, cold[layer][name].fit.hessian)
                assert np.array_equal(warm[layer][name].held_out.hessian, cold[layer][name].held_out.hessian)
        assert [cold_calls.count(i) - warm_calls.count(i) for i in (0, 1)] == saved
    assert all(np.array_equal(plain[0][n].fit.hessian, warm[0][n].fit.hessian) for n in plain[0] if ".q_proj" in n)

    kept = store.get(0)[0].result()[P.format(0) + "self_attn.q_proj.weight"].fit.hessian
    with pytest.raises(ValueError, match="read-only"):  # a codec cannot change the next candidate's statistics
        kept += 1.0


def test_only_wanted_layers_are_observed_and_no_block_runs_after_the_last(path):
    ids, fit, held = windows(), np.arange(4), np.array([4])
    coarse = lambda w: np.rint(w * 2) / 2  # noqa: E731
    full, _ = collect(load_model(path, lazy=True), ids, fit, held, replace=coarse)
    model = load_model(path, lazy=True)
    passes, run = [], model.block_each
    model.block_each = lambda layer, hs, **kw: (len(hs[0]) > 1 and passes.append(layer)) or run(layer, hs, **kw)
    down = P.format(0) + "mlp.down_proj.weight"
    visited = {}

    def fit_block(layer, names, stats):
        visited.setdefault(layer, []).extend(names)
        assert set(stats) <= {down}
        return {n: coarse(model.weights[n]) for n in stats}

    run_blocks(model, ids, fit, held, fit_block, fit_names={down})
    assert sorted(visited) == [0, 1] and set(visited[1]) == set(model.block_tensors(1))  # every tensor visited once
    assert sorted(visited[0]) == sorted(model.block_tensors(0))
    assert set(passes) == {0}  # nothing after block 0 runs: no later tensor wants statistics
    # down's inputs are those of block 0 with nothing before it replaced: the full run's q/k/v..up are replaced
    ref, _ = collect(load_model(path, lazy=True), ids, fit, held)
    np.testing.assert_array_equal(ref[0][down].fit.hessian, _stats_of(path, ids, fit, held, down).fit.hessian)
    assert not np.array_equal(full[0][down].fit.hessian, ref[0][down].fit.hessian)


@pytest.mark.parametrize("store", [False, True])
def test_blocks_after_the_last_wanted_one_never_run(path, store):
    from helix_framework.engine import ReferenceBlocks

    ids, fit, held = windows(), np.arange(4), np.array([4])
    down = P.format(0) + "mlp.down_proj.weight"
    for fit_names in (set(), {down}):
        model = load_model(path, lazy=True)
        passes, run = [], model.block_each
        model.block_each = lambda layer, hs, **kw: (len(hs[0]) > 1 and passes.append(layer)) or run(layer, hs, **kw)
        visited = []
        # nothing is replaced: the windows stay the reference's, as with a store's pristine blocks
        run_blocks(model, ids, fit, held, lambda layer, names, stats: visited.extend(names) or {},
                   fit_names=fit_names, reference=ReferenceBlocks() if store else None)
        assert sorted(visited) == sorted(n for i in range(model.n_layers) for n in model.block_tensors(i))
        assert set(passes) <= ({0} if fit_names else set())


def _stats_of(path, ids, fit, held, name):
    got = {}
    run_blocks(load_model(path, lazy=True), ids, fit, held, lambda layer, names, stats: got.update(stats) or {},
               fit_names={name})
    return got[name]


@pytest.mark.parametrize("threads", ["2", "3"])
def test_statistics_from_windows_on_threads_are_the_same_bits(path, monkeypatch, threads):
    ids, fit, held = windows(n=7), np.arange(6), np.array([6])
    coarse = lambda w: np.rint(w * 2) / 2  # noqa: E731
    monkeypatch.setenv("HELIX_THREADS", "1")
    one, _ = collect(load_model(path, lazy=True), ids, fit, held, replace=coarse)
    monkeypatch.setenv("HELIX_THREADS", threads)
    many, _ = collect(load_model(path, lazy=True), ids, fit, held, replace=coarse)
    assert [list(b) for b in one.values()] == [list(b) for b in many.values()]  # same layers, same order
    for layer in one:
        for name, st in one[layer].items():
            assert st.fit.hessian.tobytes() == many[layer][name].fit.hessian.tobytes()
            assert st.held_out.hessian.tobytes() == many[layer][name].held_out.hessian.tobytes()
            assert st.shared_with == many[layer][name].shared_with


def test_a_bad_window_on_a_thread_stops_the_run_naming_the_layer(path, monkeypatch):
    monkeypatch.setenv("HELIX_THREADS", "2")
    model = load_model(path, lazy=True)
    h = model.embed_windows(windows(n=6))
    h[3, 2, 0] = np.nan  # a later window: earlier ones finish, later ones must not wait for ever
    collector = StatsCollector()
    model.linear_observer = collector
    with pytest.raises(LayerInputError) as err:
        model.block_windows(0, h)
    assert "q_proj" in str(err.value) and "NaN" in str(err.value)


def test_nan_inputs_stop_the_run_naming_the_layer():
    collector = StatsCollector()
    collector("blk.0.attn_q.weight", np.ones((4, 3), np.float32))
    bad = np.ones((4, 3), np.float32)
    bad[1, 2] = np.inf
    with pytest.raises(LayerInputError, match=r"layer 'blk.0.attn_output.weight': .* 1 NaN or infinite"):
        collector("blk.0.attn_output.weight", bad)


# -- block-at-a-time forward (token agreement) ------------------------------------


def test_forward_steps_are_the_hidden_states_with_one_block_loaded(path):
    from helix_framework.engine import forward_steps, head_logits

    eager, lazy = load_model(path), load_model(path, lazy=True)
    rng = np.random.default_rng(3)
    ids = [rng.integers(0, 61, t) for t in (9, 17, 4)]  # windows of different lengths
    loaded = []
    steps = list(forward_steps(lazy, ids, on_step=lambda *a: loaded.append(sorted(dict.keys(lazy.weights)))))
    assert len(steps) == lazy.n_layers + 1 and loaded == [[]] * lazy.n_layers  # released after every step
    for b, row in enumerate(ids):
        logits, hidden = eager.forward(row, return_hidden=True)
        for step, h in enumerate(steps):
            np.testing.assert_allclose(h[b], hidden[step], rtol=1e-5, atol=1e-5)
    for b, logits in enumerate(head_logits(lazy, steps[-1])):
        np.testing.assert_allclose(logits, eager.forward(ids[b]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("threads", ["2", "3"])
def test_windows_on_threads_give_the_same_bytes_as_on_one(path, monkeypatch, threads):
    from helix_framework.engine import forward_steps, head_logits

    rng = np.random.default_rng(4)
    ids = [rng.integers(0, 61, t) for t in (9, 17, 4, 13, 1)]

    def run():
        model = load_model(path, lazy=True)
        steps = list(forward_steps(model, ids))
        return steps, list(head_logits(model, steps[-1]))

    monkeypatch.setenv("HELIX_THREADS", "1")
    one_steps, one_logits = run()
    monkeypatch.setenv("HELIX_THREADS", threads)
    many_steps, many_logits = run()
    for a, b in zip(one_steps + [one_logits], many_steps + [many_logits], strict=True):
        for x, y in zip(a, b, strict=True):  # window order kept, numbers identical to the bit
            assert x.shape == y.shape and x.tobytes() == y.tobytes()


def test_windows_run_in_order_with_at_most_threads_results_held():
    import threading
    import time

    from helix_framework.reference.base import map_in_order

    lock, running, peak, made = threading.Lock(), [0], [0], []

    def work(i):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02 * (i % 3))  # later items may finish first
        with lock:
            running[0] -= 1
            made.append(i)
        return i * i

    got = []
    for r in map_in_order(work, list(range(9)), threads=3):
        assert len(made) - len(got) <= 3  # computed but not yet taken: bounded
        got.append(r)
    assert got == [i * i for i in range(9)] and 2 <= peak[0] <= 3


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_a_bad_thread_count_is_refused_naming_the_variable(monkeypatch, value):
    from helix_framework.errors import ReferenceModelError
    from helix_framework.reference.base import window_threads

    monkeypatch.setenv("HELIX_THREADS", value)
    with pytest.raises(ReferenceModelError, match="HELIX_THREADS"):
        window_threads()


def _agreement_by_whole_forwards(path, weights, windows):
    """What `agree` computed before the engine: each window through the whole
    reference and the whole candidate model."""
    from helix_framework.measure.agreement import AgreementAccumulator

    ref, cand = load_model(path), load_model(path, weights=weights)
    acc, offset = AgreementAccumulator(), 0
    err = norm = 0.0
    for w in windows:
        (rl, rh), (cl, ch) = ref.forward(w.ids, return_hidden=True), cand.forward(w.ids, return_hidden=True)
        acc.add(rl, cl, w.next_ids, np.arange(offset, offset + w.ids.size))
        err = err + ((np.stack(ch).astype(np.float64) - np.stack(rh)) ** 2).sum(axis=(1, 2))
        norm = norm + (np.stack(rh).astype(np.float64) ** 2).sum(axis=(1, 2))
        offset += w.ids.size
    return acc.result().to_json(), [float(np.sqrt(e / n)) if n else 0.0 for e, n in zip(err, norm)]


def _assert_same_agreement(got, want, per_layer):
    assert (got["positions"], got["top1"], got["top5"]) == (want["positions"], want["top1"], want["top5"])
    for key in ("mean", "median", "p99", "max"):
        assert got["kl"][key] == pytest.approx(want["kl"][key], rel=1e-4, abs=1e-7)
    np.testing.assert_allclose(got["per_layer"], per_layer, rtol=1e-5, atol=1e-9)


@pytest.fixture
def word_tokens(monkeypatch):
    import helix_framework.reference as reference

    from test_dataaware import WordTokenizer

    monkeypatch.setattr(reference, "load_tokenizer", lambda source: WordTokenizer())
    return WordTokenizer()


def test_agree_block_by_block_equals_whole_forwards_and_stops_between_blocks(path, word_tokens, tmp_path,
                                                                             monkeypatch):
    from helix_framework.agree import agree, token_windows
    from helix_framework.prompts import load_prompts

    monkeypatch.setenv("HELIX_CACHE_DIR", str(tmp_path / "cache"))
    eager = load_model(path)
    weights = {n: np.rint(w * 4) / 4 for n, w in eager.weights.items() if n.endswith("proj.weight")}
    steps = []
    report = agree(path, weights=weights, candidate_name="coarse", positions=50, window=20,
                   on_step=lambda phase, i, n: steps.append((phase, i, n)))
    want, per_layer = _agreement_by_whole_forwards(path, weights, token_windows(word_tokens, load_prompts(None), 50, 20))
    _assert_same_agreement(report.result, want, per_layer)
    assert want["top1"] < 1.0 and per_layer[-1] > 0.01  # the candidate does differ
    assert steps == [(p, i, 2) for p in ("reference", "candidate") for i in range(2)]

    class Stop(Exception):
        pass

    def stop_at_second_candidate_block(phase, i, n):
        steps.append((phase, i))
        if (phase, i) == ("candidate", 1):
            raise Stop

    steps.clear()
    with pytest.raises(Stop):  # the reference is cached now: only the candidate runs
        agree(path, weights=weights, candidate_name="coarse", positions=50, window=20,
              on_step=stop_at_second_candidate_block)
    assert steps == [("candidate", 0), ("candidate", 1)]


def test_agree_with_warm_reference_outputs_gives_the_same_figures_without_the_disk(path, word_tokens, tmp_path,
                                                                                   monkeypatch):
    import shutil

    from helix_framework.agree import WarmReference, agree

    monkeypatch.setenv("HELIX_CACHE_DIR", str(tmp_path / "cache"))
    eager = load_model(path)
    weights = {n: np.rint(w * 4) / 4 for n, w in eager.weights.items() if n.endswith("proj.weight")}
    run = dict(weights=weights, candidate_name="coarse", positions=300, window=200)  # 200 > CHUNK: chunked
    cold = agree(path, **run).result
    held, computed = {}, []

    def store(key, compute):
        if key not in held:
            computed.append(key)
            held[key] = WarmReference(*compute())
        return held[key]

    first = agree(path, **run, reference_store=store).result
    shutil.rmtree(tmp_path / "cache")  # the warm copy is all the second call reads
    second = agree(path, **run, reference_store=store).result
    assert cold == first == second and cold["top1"] < 1.0
    assert len(computed) == 1 and not (tmp_path / "cache").exists()
    assert len(held[computed[0]]._chunks) >= 3  # each scored chunk's statistics kept


@pytest.mark.slow
def test_smollm2_agreement_is_what_whole_forwards_give(tmp_path, monkeypatch):
    from helix_framework.agree import agree, token_windows
    from helix_framework.calibrate import weights_from_config
    from helix_framework.config import load_candidate
    from helix_framework.host import get_host
    from helix_framework.models import resolve_model
    from helix_framework.prompts import load_prompts
    from helix_framework.reference import load_tokenizer
    from helix_framework.sources import open_source

    from helix_test_support import ROOT

    monkeypatch.setenv("HELIX_CACHE_DIR", str(tmp_path / "cache"))
    host = get_host()
    with open_source(resolve_model("smollm2")) as source:
        cand = load_candidate(ROOT / "configs/codec/03_rtn_int4_g32.yaml", host)
        weights = weights_from_config(source, cand, host, tensors=r"blk\.(0|7|20)\.")
        report = agree("smollm2", weights=weights, candidate_name=cand.name, positions=700, source=source)
        windows = token_windows(load_tokenizer(source), load_prompts(None), 700, 512)
        want, per_layer = _agreement_by_whole_forwards(source, weights, windows)
    assert report.result["positions"] == 700 and len(report.result["per_layer"]) == 31
    _assert_same_agreement(report.result, want, per_layer)


# -- one loop, no import cycle ---------------------------------------------------


def _import_graph():
    """helix_framework module -> the helix_framework modules it imports, at
    module level or inside functions (a lazy import is still a dependency)."""
    import ast

    from helix_test_support import ROOT

    files = {}
    for p in (ROOT / "helix_framework").rglob("*.py"):
        parts = p.relative_to(ROOT).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    graph = {}
    for name, p in files.items():
        deps = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("helix_framework"):
                deps |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module
                         for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("helix_framework")}
        graph[name] = (deps & set(files)) - {name}
    return graph


def test_the_tensor_loops_import_no_cycle():
    graph = _import_graph()

    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for dep in graph[todo.pop()] - seen:
                seen.add(dep)
                todo.append(dep)
        return seen

    hf = "helix_framework."
    for module in ("calibrate", "agree", "engine", "probe", "sweep.worker", "sweep.run", "serve.work"):
        assert hf + module not in reach(hf + module), f"{module} imports itself through a cycle"
    assert hf + "calibrate" not in reach(hf + "agree")  # agree measures; calibrate fits (and may agree)
    assert not {hf + "calibrate", hf + "agree"} & reach(hf + "engine")
    # the loop over tensors is the engine's: no other module walks source.tensors() itself to fit
    for module in ("calibrate", "agree", "probe", "sweep.worker"):
        assert hf + "engine" in graph[hf + module]


def test_agree_imports_without_calibrate():
    import subprocess
    import sys

    code = "import sys, helix_framework.agree; print('helix_framework.calibrate' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def _tiny_gpt2(path):
    import json

    from safetensors.numpy import save_file

    rng = np.random.default_rng(5)
    v, h, layers = 53, 16, 2
    r = lambda *shape: (0.3 * rng.standard_normal(shape)).astype(np.float32)  # noqa: E731
    t = {"wte.weight": r(v, h), "wpe.weight": r(32, h), "ln_f.weight": 1 + r(h), "ln_f.bias": r(h)}
    for i in range(layers):
        for ln in ("ln_1", "ln_2"):
            t[f"h.{i}.{ln}.weight"], t[f"h.{i}.{ln}.bias"] = 1 + r(h), r(h)
        for role, (n_in, n_out) in {"attn.c_attn": (h, 3 * h), "attn.c_proj": (h, h), "mlp.c_fc": (h, 4 * h),
                                    "mlp.c_proj": (4 * h, h)}.items():
            t[f"h.{i}.{role}.weight"], t[f"h.{i}.{role}.bias"] = r(n_in, n_out), r(n_out)  # Conv1D: [in, out]
    path.mkdir()
    save_file(t, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": v, "n_embd": h, "n_layer": layers,
                                                  "n_head": 2, "n_positions": 32}))
    return path


def test_gpt2_runs_block_by_block_lazily_with_source_oriented_replacements(tmp_path):
    from helix_framework.engine import forward_steps, head_logits

    path = _tiny_gpt2(tmp_path / "gpt2")
    replaced = {"h.1.mlp.c_fc.weight": np.zeros((16, 64), np.float32)}  # source orientation, [in, out]
    eager, lazy = load_model(path, weights=replaced), load_model(path, weights=replaced, lazy=True)
    assert isinstance(lazy.weights, LazyWeights)
    assert lazy.block_tensors(1) == eager.block_tensors(1) and len(eager.block_tensors(1)) == 12
    ids = [np.arange(7) * 5 % 53, np.arange(11) % 53]
    steps = list(forward_steps(lazy, ids))
    assert not dict.keys(lazy.weights)  # nothing stays loaded
    for b, row in enumerate(ids):
        logits, hidden = eager.forward(row, return_hidden=True)
        for step, h in enumerate(steps):
            np.testing.assert_allclose(h[b], hidden[step], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(list(head_logits(lazy, steps[-1]))[b], logits, rtol=1e-5, atol=1e-6)
    assert not np.allclose(eager.forward(ids[0]), load_model(path).forward(ids[0]))  # the replacement is used


@pytest.mark.slow
def test_bert_exposes_embedding_block_and_head_steps():
    from helix_framework.models import resolve_model

    model = load_model(resolve_model("minilm"))
    assert len(model.block_tensors(0)) == 16 and all(".layer.0." in n for n in model.block_tensors(0))
    ids = np.array([101, 7592, 2088, 2003, 1037, 3231, 102])
    h = model.embed_sequence(ids, np.zeros_like(ids))
    for i in range(model.n_layers):
        h = model.encoder_block(i, h)
    np.testing.assert_allclose(model.pool(h), model.sentence_embedding(ids), rtol=1e-6, atol=1e-7)
