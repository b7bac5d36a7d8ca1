"""Hostile inputs to the parsers: each is one line naming the file and the
field, exit 2, no traceback, in bounded time and memory.

Inputs that hang or exhaust memory without the bounds (alias bombs, FIFOs,
/dev/zero) run in a subprocess with a timeout and an address-space limit.
"""

from __future__ import annotations

import json
import os
import resource
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from helix_framework import cli

DEEP = 100_000


def one_line_error(code: int, err: str, *needles: str) -> None:
    """Exit 2 and a single ``helix: error:`` line containing every needle."""
    lines = err.strip().splitlines()
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("helix: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def helix(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


def _limit_memory() -> None:
    cap = 4 << 30
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def helix_process(*argv: str, timeout: float = 120) -> tuple[int, str]:
    """Run helix in a child with 4 GiB of address space; a hang fails the test."""
    proc = subprocess.run(
        [sys.executable, "-m", "helix_framework.cli", *argv],
        capture_output=True, text=True, timeout=timeout, preexec_fn=_limit_memory, stdin=subprocess.DEVNULL,
    )
    return proc.returncode, proc.stderr


def open_model(capsys, model: Path) -> tuple[int, str]:
    return helix(capsys, "tensors", str(model))


# ---------------------------------------------------------------- YAML


def billion_laughs() -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_config_is_refused(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(billion_laughs())
    assert path.stat().st_size < 700
    code, err = helix_process("check", str(path), timeout=60)
    one_line_error(code, err, str(path), "aliases expand to more than")


def test_alias_bomb_is_refused_in_small_memory(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(billion_laughs())
    script = (
        "import sys, tracemalloc\n"
        "from helix_framework.config import load_yaml\n"
        "from helix_framework.errors import ConfigError\n"
        "tracemalloc.start()\n"
        "try:\n"
        "    load_yaml(open(sys.argv[1]).read(), sys.argv[1])\n"
        "except ConfigError:\n"
        "    print(tracemalloc.get_traced_memory()[1])\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=60,
                          preexec_fn=_limit_memory)
    assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr
    assert int(proc.stdout) < 2_000_000  # bytes: the refusal is made before anything expands


def test_alias_bomb_sweep_file_is_refused(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("model: x\n" + billion_laughs().replace("a:", "fixed:", 1))
    code, err = helix_process("sweep", str(path), "--db", str(tmp_path / "db"), timeout=60)
    one_line_error(code, err, str(path), "aliases expand to more than")
    assert not (tmp_path / "db").exists()


@pytest.mark.parametrize(
    "text, needle",
    [
        ("name: x\ncodec: passthrough\nnotes: &n [*n]\n", "recursive alias"),
        ("name: x\ncodec: passthrough\nnotes: " + "1" * 5000 + "\n", "invalid YAML value"),
    ],
    ids=["recursive_alias", "huge_integer"],
)
def test_hostile_yaml_is_one_line(capsys, tmp_path, text, needle):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    one_line_error(*helix(capsys, "check", str(path)), str(path), needle)


@pytest.mark.parametrize("kind", ["dev_zero", "fifo"])
def test_config_that_is_not_a_regular_file(tmp_path, kind):
    target = "/dev/zero" if kind == "dev_zero" else str(tmp_path / "c.yaml")
    if kind == "fifo":
        os.mkfifo(target)
    code, err = helix_process("check", target, timeout=60)
    one_line_error(code, err, target, "not a regular file")


def test_small_anchors_still_work(capsys, tmp_path):
    path = tmp_path / "anchored.yaml"
    path.write_text(
        "name: anchored\ncodec: passthrough\n"
        "rows: &rows {calibration: 64, measurement: 32, seed: 1}\n"
        "measure: &m [rel_l2, cosine]\n"
        "notes: shared anchors\n"
    )
    code, _ = helix(capsys, "check", str(path))
    assert code == 0
    from helix_framework.config import load_yaml

    doc = load_yaml("base: &b {x: 1, y: [1, 2]}\nleft: *b\nright: {<<: *b, z: 3}\n")
    base = {"x": 1, "y": [1, 2]}
    assert doc.data == {"base": base, "left": base, "right": {**base, "z": 3}}
    assert doc.lines["$.left.y[1]"] == 1  # aliased nodes keep the anchor's lines


# ---------------------------------------------------------------- JSON headers


def safetensors_with_header(path: Path, header: bytes, data: bytes = b"") -> Path:
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_deeply_nested_safetensors_header(capsys, tmp_path):
    path = safetensors_with_header(tmp_path / "deep.safetensors", f'{{"__metadata__": {nested(DEEP)}}}'.encode())
    one_line_error(*open_model(capsys, path), str(path), "safetensors header", "nested too deeply")


def test_huge_integer_in_safetensors_header(capsys, tmp_path):
    header = '{"w": {"dtype": "F32", "shape": [' + "9" * 5000 + '], "data_offsets": [0, 4]}}'
    path = safetensors_with_header(tmp_path / "big.safetensors", header.encode(), bytes(4))
    one_line_error(*open_model(capsys, path), str(path), "safetensors header")


def test_repeated_tensor_name_in_safetensors_header(capsys, tmp_path):
    entry = '"w": {{"dtype": "F32", "shape": [4], "data_offsets": [{}, {}]}}'
    header = "{" + entry.format(0, 16) + ", " + entry.format(16, 32) + "}"
    path = safetensors_with_header(tmp_path / "dup.safetensors", header.encode(), bytes(32))
    one_line_error(*open_model(capsys, path), str(path), "'w' appears twice")


def hf_dir(d: Path, *, config: str = '{"model_type": "llama"}', index: str | None = None) -> Path:
    d.mkdir()
    (d / "config.json").write_text(config)
    entry = lambda name: f'"{name}": {{"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}'  # noqa: E731
    safetensors_with_header(d / "model-1.safetensors", ("{" + entry("a") + "}").encode(), bytes(16))
    safetensors_with_header(d / "model-2.safetensors", ("{" + entry("b") + "}").encode(), bytes(16))
    (d / "model.safetensors.index.json").write_text(
        index if index is not None else json.dumps({"weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors"}})
    )
    return d


@pytest.mark.parametrize(
    "part, make, needles",
    [
        ("config.json", lambda d: hf_dir(d, config=f'{{"x": {nested(DEEP)}}}'), ("config.json", "nested too deeply")),
        ("model.safetensors.index.json",
         lambda d: hf_dir(d, index=f'{{"weight_map": {nested(DEEP)}}}'), ("nested too deeply",)),
        ("model.safetensors.index.json",
         lambda d: hf_dir(d, index='{"weight_map": {"a": "model-1.safetensors", "a": "model-2.safetensors", '
                                   '"b": "model-2.safetensors"}}'),
         ("'a' appears twice",)),
    ],
    ids=["nested_config", "nested_index", "repeated_index_key"],
)
def test_hostile_hf_directory(capsys, tmp_path, part, make, needles):
    d = make(tmp_path / "model")
    one_line_error(*open_model(capsys, d), str(d / part), *needles)


def test_tensor_in_two_shards_is_refused(capsys, tmp_path):
    """Already refused before the hostile-input work; kept here with its siblings."""
    d = hf_dir(tmp_path / "model")
    header = ('{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, '
              '"b": {"dtype": "F32", "shape": [4], "data_offsets": [16, 32]}}')
    safetensors_with_header(d / "model-2.safetensors", header.encode(), bytes(32))
    one_line_error(*open_model(capsys, d), str(d), "tensor 'a'", "stored twice")


def test_hf_directory_still_opens(tmp_path):
    from helix_framework.sources import open_source

    with open_source(hf_dir(tmp_path / "model")) as src:
        assert [t.name for t in src.tensors()] == ["a", "b"]


# ---------------------------------------------------------------- GGUF built byte by byte

U32, I32, STRING, ARRAY = 4, 5, 8, 9
F32, Q4_0 = 0, 2


def gstr(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def kv(key: str, vtype: int, value: bytes) -> bytes:
    return gstr(key) + struct.pack("<I", vtype) + value


def tensor_info(name: str, dims: tuple[int, ...], ggml_type: int, offset: int) -> bytes:
    return gstr(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, ggml_type, offset)


def gguf(kvs: list[bytes], tensors: list[bytes], data: bytes, *, align: int = 32,
         n_tensors: int | None = None) -> bytes:
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors) if n_tensors is None else n_tensors, len(kvs))
    head += b"".join(kvs) + b"".join(tensors)
    return head + bytes(-len(head) % align) + data


ARCH = kv("general.architecture", STRING, gstr("llama"))
VECTOR = tensor_info("v", (8,), F32, 0)


def nested_arrays(depth: int) -> bytes:
    value = struct.pack("<IQ", U32, 0)
    for _ in range(depth):
        value = struct.pack("<IQ", ARRAY, 1) + value
    return value


GGUF_CASES = {
    "nested_arrays": (gguf([ARCH, kv("deep", ARRAY, nested_arrays(5000))], [VECTOR], bytes(32)),
                      ("'deep'", "nested more than")),
    "alignment_array": (gguf([ARCH, kv("general.alignment", ARRAY, struct.pack("<IQI", U32, 1, 32))], [VECTOR], bytes(32)),
                        ("general.alignment", "an array")),
    "alignment_negative": (gguf([ARCH, kv("general.alignment", I32, struct.pack("<i", -32))], [VECTOR], bytes(32)),
                           ("general.alignment", "int32 -32")),
    "alignment_zero": (gguf([ARCH, kv("general.alignment", U32, struct.pack("<I", 0))], [VECTOR], bytes(32)),
                       ("general.alignment", "uint32 0")),
    "alignment_not_power_of_two": (
        gguf([ARCH, kv("general.alignment", U32, struct.pack("<I", 48))], [VECTOR], bytes(48), align=48),
        ("general.alignment", "uint32 48")),
    "ragged_q4_0": (gguf([ARCH], [tensor_info("q", (33, 2), Q4_0, 0)], bytes(64)),
                    ("tensor 'q'", "ragged Q4_0", "row length 33")),
    "repeated_tensor": (gguf([ARCH], [VECTOR, tensor_info("v", (8,), F32, 32)], bytes(64)),
                        ("tensor 'v' appears twice",)),
    "repeated_key": (gguf([ARCH, ARCH], [VECTOR], bytes(32)), ("'general.architecture' appears twice",)),
    "tensor_count": (gguf([ARCH], [VECTOR], bytes(32), n_tensors=1 << 60), ("tensor count",)),
    "string_array_count": (gguf([ARCH, kv("toks", ARRAY, struct.pack("<IQ", STRING, 1 << 61))], [VECTOR], bytes(32)),
                           ("'toks'", "array of 2305843009213693952")),
}


@pytest.mark.parametrize("case", list(GGUF_CASES))
def test_hostile_gguf(capsys, tmp_path, case):
    data, needles = GGUF_CASES[case]
    path = tmp_path / "m.gguf"
    path.write_bytes(data)
    one_line_error(*open_model(capsys, path), str(path), *needles)


def test_handmade_gguf_is_read(tmp_path):
    """The builder makes valid files: the refusals above are about the one bad field."""
    import numpy as np

    from helix_framework.sources import open_source

    path = tmp_path / "ok.gguf"
    values = np.arange(8, dtype="<f4")
    path.write_bytes(gguf([ARCH, kv("general.alignment", U32, struct.pack("<I", 64))], [VECTOR], values.tobytes(), align=64))
    with open_source(path) as src:
        assert src.architecture == "llama"
        assert src.read("v").tolist() == values.tolist()


def test_fifo_as_model_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "m.safetensors"
    os.mkfifo(fifo)
    code, err = helix_process("tensors", str(fifo), timeout=60)
    one_line_error(code, err, str(fifo), "not a regular file")


# ---------------------------------------------------------------- helix compress


@pytest.mark.parametrize("kind", ["dev_zero", "fifo", "directory"])
def test_compress_reads_regular_files_only(tmp_path, kind):
    if kind == "dev_zero":
        target, what = "/dev/zero", "character device"
    elif kind == "fifo":
        target, what = str(tmp_path / "pipe"), "FIFO"
        os.mkfifo(target)
    else:
        target, what = str(tmp_path), "directory"
    code, err = helix_process("compress", target, "--compressor", "truncate", timeout=60)
    one_line_error(code, err, target, "not a regular file", what)


def test_compress_refuses_a_file_over_max_bytes(capsys, tmp_path):
    path = tmp_path / "big.txt"
    path.write_text("x" * 1001)
    code, err = helix(capsys, "compress", str(path), "--compressor", "truncate", "--max-bytes", "1000")
    one_line_error(code, err, str(path), "1001 bytes", "--max-bytes limit of 1000")
    code, err = helix(capsys, "compress", str(path), "--compressor", "truncate", "--max-bytes", "0")
    one_line_error(code, err, "--max-bytes must be >= 1")
    code = cli.main(["compress", str(path), "--compressor", "truncate", "--max-bytes", "1001", "--target-chars", "10"])
    assert code == 0 and capsys.readouterr().out == "x" * 10 + "\n"
