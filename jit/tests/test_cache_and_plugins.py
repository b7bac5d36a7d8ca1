import json
import logging
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import helix_jit
from helix_jit import LaneWidth, cache_stats, clear_cache, declare_kernel, record_kernels

AXPB_IR = """
define void @axpb(ptr noalias %x, ptr noalias %y, i64 %n, float %a, float %b) {{
entry:
  %total = mul i64 %n, {d}
  br label %head
head:
  %i = phi i64 [0, %entry], [%i1, %body]
  %more = icmp slt i64 %i, %total
  br i1 %more, label %body, label %done
body:
  %px = getelementptr float, ptr %x, i64 %i
  %v = load float, ptr %px
  %m = fmul float %v, %a
  %r = fadd float %m, %b
  %py = getelementptr float, ptr %y, i64 %i
  store float %r, ptr %py
  %i1 = add i64 %i, 1
  br label %head
done:
  ret void
}}
"""


def emit_axpb(lane_width, constants):
    return AXPB_IR.format(d=int(constants["d"]))


def axpb_reference(lane_width, constants, x, y, n, a, b):
    d = constants["d"]
    y.reshape(-1, d)[:n] = np.float32(a) * x.reshape(-1, d)[:n] + np.float32(b)


def declare_axpb(version="1"):
    return declare_kernel("testplugin.axpb", version, [LaneWidth.F32x16], emit_axpb, axpb_reference,
                          argtypes=["f32*", "f32*", "i64", "f32", "f32"], entry="axpb")


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HELIX_JIT_CACHE_DIR", str(tmp_path))
    clear_cache(disk=False)
    return tmp_path


def run_axpb(kernel, d=8, n=5):
    x = np.arange(n * d, dtype=np.float32).reshape(n, d)
    y = np.zeros_like(x)
    kernel.get("F32x16", d=d)(x, y, n, 2.0, -1.0)
    want = np.zeros_like(x)
    axpb_reference(LaneWidth.F32x16, {"d": d}, x, want, n, 2.0, -1.0)
    return y, want


def test_plugin_kernel_matches_reference_and_disable(cache_dir, monkeypatch):
    k = declare_axpb()
    assert helix_jit.supported_lane_widths("testplugin.axpb") == (LaneWidth.F32x16,)
    y, want = run_axpb(k)
    np.testing.assert_array_equal(y, want)
    monkeypatch.setenv("HELIX_JIT_DISABLE", "1")
    before = cache_stats()
    with record_kernels() as rec:
        y2, _ = run_axpb(k)
    np.testing.assert_array_equal(y2, want)
    assert cache_stats().compiles == before.compiles
    assert [u.source for u in rec.kernels] == ["reference"]
    with pytest.raises(ValueError):
        k.get("F64x8", d=8)


def test_second_get_comes_from_memory_and_is_recorded(cache_dir):
    k = declare_axpb()
    with record_kernels() as rec:
        run_axpb(k, d=16)
    s1 = cache_stats()
    with record_kernels() as rec2:
        run_axpb(k, d=16)
    s2 = cache_stats()
    assert s2.compiles == s1.compiles and s2.hits == s1.hits + 1
    (u1,), (u2,) = rec.kernels, rec2.kernels
    assert (u1.name, u1.version, u1.lane_width, u1.source) == ("testplugin.axpb", "1", "F32x16", "compiled")
    assert u2.source == "memory" and u2.signature == u1.signature == k.signature("F32x16", d=16)
    assert len(u1.signature) == 64
    assert s2.entries >= 1 and s2.bytes > 0 and s2.compile_ms > 0


def test_signature_covers_version_and_constants_not_rows():
    k1, k2 = declare_axpb("1"), declare_axpb("2")
    assert k1.signature("F32x16", d=4) != k2.signature("F32x16", d=4)
    assert k1.signature("F32x16", d=4) != k1.signature("F32x16", d=5)
    assert k1.signature("F32x16", d=4) == k1.signature(LaneWidth.F32x16, d=4)


def test_new_process_loads_from_disk_without_codegen(cache_dir):
    rows = np.random.default_rng(0).standard_normal((8, 24)).astype(np.float32)
    cbs = [np.random.default_rng(1).standard_normal((16, 12)).astype(np.float32) for _ in range(2)]
    want = helix_jit.pq_assign(rows, cbs, "F32x16")
    np.save(cache_dir / "rows.npy", rows)
    np.save(cache_dir / "cbs.npy", np.stack(cbs))
    script = textwrap.dedent(f"""
        import json, numpy as np, helix_jit
        rows = np.load({str(cache_dir / 'rows.npy')!r}); cbs = list(np.load({str(cache_dir / 'cbs.npy')!r}))
        with helix_jit.record_kernels() as rec:
            codes = helix_jit.pq_assign(rows, cbs, "F32x16")
        s = helix_jit.cache_stats()
        print(json.dumps({{"codes": codes.tolist(), "compiles": s.compiles, "disk_loads": s.disk_loads,
                          "sources": [u.source for u in rec.kernels]}}))
    """)
    env = dict(os.environ, HELIX_JIT_CACHE_DIR=str(cache_dir))
    env.pop("HELIX_JIT_DISABLE", None)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["compiles"] == 0 and res["disk_loads"] >= 1
    assert res["sources"] == ["disk"]
    np.testing.assert_array_equal(np.array(res["codes"]), want)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_cache_entry_recompiles_with_warning(cache_dir, caplog, damage):
    k = declare_axpb()
    run_axpb(k, d=32)
    (entry,) = [p for p in cache_dir.iterdir() if p.suffix == ".hjo"]
    data = entry.read_bytes()
    if damage == "truncate":
        entry.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        entry.write_bytes(data[:40] + bytes(len(data) - 40))
    else:
        entry.write_bytes(b"")
    clear_cache(disk=False)
    before = cache_stats()
    with caplog.at_level(logging.WARNING, logger="helix_jit"):
        y, want = run_axpb(k, d=32)
    np.testing.assert_array_equal(y, want)
    after = cache_stats()
    assert after.compiles == before.compiles + 1 and after.disk_loads == before.disk_loads
    assert any("corrupt" in r.getMessage() for r in caplog.records)
    assert entry.read_bytes() == data  # rewritten whole


def test_clear_cache_removes_entries(cache_dir):
    k = declare_axpb()
    f = k.get("F32x16", d=3)
    assert cache_stats().entries == 1
    assert clear_cache() == 1
    assert cache_stats().entries == 0
    y = np.zeros(3, np.float32)
    f(np.ones(3, np.float32), y, 1, 1.0, 1.0)  # handed-out callables keep working
    assert y.tolist() == [2.0, 2.0, 2.0]


HELPER_IR = """
@bias = global float {b}
define float @helper(float %v) {{
  %c = load float, ptr @bias
  %r = fadd float %v, %c
  ret float %r
}}
define void @add_bias(ptr noalias %x, ptr noalias %y) {{
  %v = load float, ptr %x
  %r = call float @helper(float %v)
  store float %r, ptr %y
  ret void
}}
"""


def test_kernels_with_the_same_helper_names_share_the_engine(cache_dir):
    """Every kernel of a process lives in one engine: helpers and globals of the
    same name in different signatures must not clash, before or after a reload."""

    def reference(lane_width, constants, x, y):
        y[0] = x[0] + np.float32(constants["b"])

    k = declare_kernel("testplugin.add_bias", "1", [LaneWidth.F32x16],
                       lambda lw, c: HELPER_IR.format(b=float(c["b"])), reference,
                       argtypes=["f32*", "f32*"], entry="add_bias")

    def run(b):
        y = np.zeros(1, np.float32)
        k.get("F32x16", b=b)(np.ones(1, np.float32), y)
        return float(y[0])

    assert [run(b) for b in (1, 2, 3)] == [2.0, 3.0, 4.0]
    clear_cache(disk=False)  # a fresh engine, loading the same objects from disk
    before = cache_stats()
    assert [run(b) for b in (3, 1, 2)] == [4.0, 2.0, 3.0]
    after = cache_stats()
    assert after.disk_loads == before.disk_loads + 3 and after.compiles == before.compiles


def test_disable_gives_same_results_for_builtins(monkeypatch):
    rng = np.random.default_rng(4)
    rows = rng.standard_normal((9, 20)).astype(np.float32)
    cbs = [rng.standard_normal((300, w)).astype(np.float32) for w in helix_jit.split_widths(20, 3)]
    x = rng.standard_normal(20).astype(np.float32)
    h = rng.standard_normal((4, 64)).astype(np.float32)
    for lw in ["F64x8", "U8x64", "BF16x32", "F32x16"]:
        codes = helix_jit.pq_assign(rows, cbs, lw)
        dec = helix_jit.pq_decode([codes], [cbs], lw)
        adc = helix_jit.adc_matvec([codes], [cbs], x, "adc_u8", lw)
        monkeypatch.setenv("HELIX_JIT_DISABLE", "1")
        with record_kernels() as rec:
            codes2 = helix_jit.pq_assign(rows, cbs, lw)
            np.testing.assert_array_equal(helix_jit.pq_decode([codes], [cbs], lw), dec)
            np.testing.assert_array_equal(helix_jit.adc_matvec([codes], [cbs], x, "adc_u8", lw), adc)
        monkeypatch.delenv("HELIX_JIT_DISABLE")
        assert {u.source for u in rec.kernels} == {"reference"} and len(rec.kernels) == 3
        from test_pq_assign import assert_codes_match

        assert_codes_match(rows, cbs, LaneWidth(lw), codes2, codes)
    a = helix_jit.fwht(h.copy())
    monkeypatch.setenv("HELIX_JIT_DISABLE", "1")
    np.testing.assert_array_equal(helix_jit.fwht(h.copy()), a)


def test_import_is_light():
    code = "import sys, helix_jit, helix_jit.lanes; print(sorted(m for m in ('llvmlite', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_dump_ir_logs(cache_dir, monkeypatch, caplog):
    monkeypatch.setenv("HELIX_JIT_DUMP", "ir,asm")
    k = declare_axpb("dump")
    with caplog.at_level(logging.WARNING, logger="helix_jit.codegen"):
        k.get("F32x16", d=7)
    text = "\n".join(r.getMessage() for r in caplog.records)
    # entry symbols carry the signature's first 16 hex digits (one engine holds every kernel)
    sig = k.signature("F32x16", d=7)[:16]
    assert f"define void @axpb__hx{sig}" in text and f"axpb__hx{sig}:" in text


def test_two_processes_missing_the_same_kernel_compile_it_once(tmp_path):
    """The per-signature file lock: the second process loads the first's object."""

    code = (
        "import numpy as np, helix_jit; x = np.ones((3, 64), np.float32); helix_jit.fwht(x); "
        "s = helix_jit.cache_stats(); print(s.compiles, s.disk_loads)"
    )
    env = {**os.environ, "HELIX_JIT_CACHE_DIR": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    counts = [tuple(map(int, p.communicate(timeout=120)[0].split())) for p in procs]
    assert sorted(counts) == [(0, 1), (1, 0)]
