"""Benchmarks of the helix-jit kernels against numpy, faiss and memcpy baselines.

Run from the repository root:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/kernels.py

Name sections to run only those (default: all), e.g. ``benchmarks/kernels.py
pq_assign``; the names: compile, grid_errors, pq_assign, pq_decode, adc, fwht.

Prints markdown tables (median of several repeats, milliseconds). Uses a
temporary HELIX_JIT_CACHE_DIR so the compile / disk-load figures are cold.
Every comparison runs at equal thread counts, once with 1 and once with 2:
the jit kernels (HELIX_JIT_THREADS), numpy's BLAS (threadpoolctl) and faiss
(OpenMP) get the same number, so a ratio never compares 2 threads with 1.
grid_errors is one loop on one thread, and so is its numpy reference (no
BLAS): it runs once, at 1 thread.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import contextlib
import time

os.environ.setdefault("HELIX_JIT_CACHE_DIR", tempfile.mkdtemp(prefix="helix-jit-bench-"))

import numpy as np  # noqa: E402

import helix_jit  # noqa: E402
from helix_jit import split_widths  # noqa: E402

try:
    import faiss
except ImportError:  # faiss columns become "n/a"
    faiss = None


def median_ms(fn, repeats=7, budget_s=3.0):
    fn()  # warm-up (compiles, page faults)
    times = []
    t_end = time.perf_counter() + budget_s
    for i in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
        if i >= 2 and time.perf_counter() > t_end:
            break
    return statistics.median(times)


def numpy_encode(x, cbs):
    """The best plain-numpy PQ encode: one GEMM per subspace with the norm expansion, then argmin."""
    n = x.shape[0]
    out = np.empty((n, len(cbs)), np.uint8 if cbs[0].shape[0] <= 256 else np.uint16)
    col = 0
    for m, cb in enumerate(cbs):
        w = cb.shape[1]
        cn = np.einsum("kj,kj->k", cb, cb)
        out[:, m] = np.argmin(cn - 2 * (x[:, col : col + w] @ cb.T), axis=1)
        col += w
    return out


def faiss_pq(cbs, d, M, K):
    if faiss is None or d % M or K not in (256, 1024):
        return None
    pq = faiss.ProductQuantizer(d, M, 8 if K == 256 else 10)
    faiss.copy_array_to_vector(np.ascontiguousarray(np.stack(cbs)).ravel(), pq.centroids)
    return pq


@contextlib.contextmanager
def equal_threads(n):
    """The jit kernels, BLAS and faiss all on ``n`` threads inside the block."""
    from threadpoolctl import threadpool_limits

    old = os.environ.get("HELIX_JIT_THREADS")
    os.environ["HELIX_JIT_THREADS"] = str(n)
    if faiss is not None:
        faiss.omp_set_num_threads(n)
    try:
        with threadpool_limits(n):
            yield
    finally:
        if old is None:
            os.environ.pop("HELIX_JIT_THREADS")
        else:
            os.environ["HELIX_JIT_THREADS"] = old


def row(cells):
    print("| " + " | ".join(str(c) for c in cells) + " |")


def header(cells):
    row(cells)
    row(["---"] * len(cells))


def f(x, nd=2):
    return "n/a" if x is None else f"{x:.{nd}f}"


def bench_pq_assign(rng):
    print("\n### pq_assign (F32x16), ms; ratio = baseline / jit (higher is better)\n")
    header(["rows x dim", "M", "K", "jit", "numpy encode", "x numpy", "faiss compute_codes", "x faiss", "codes = numpy"])
    for n, d in [(3072, 1024), (1536, 576)]:
        x = rng.standard_normal((n, d)).astype(np.float32)
        for M in (6, 8, 64, 128):
            for K in (256, 1024):
                cbs = [rng.standard_normal((K, w)).astype(np.float32) for w in split_widths(d, M)]
                tj = median_ms(lambda: helix_jit.pq_assign(x, cbs, "F32x16"))
                tn = median_ms(lambda: numpy_encode(x, cbs), repeats=5)
                same = "yes" if np.array_equal(helix_jit.pq_assign(x, cbs), numpy_encode(x, cbs)) else "near-ties"
                pq = faiss_pq(cbs, d, M, K)
                tf = median_ms(lambda: pq.compute_codes(x), repeats=5) if pq is not None else None
                row([f"{n} x {d}", M, K, f(tj), f(tn), f(tn / tj), f(tf), f(tf / tj if tf else None), same])


def bench_pq_decode(rng):
    print("\n### pq_decode (F32x16, one stage), ms; vs np.copyto of the output size\n")
    header(["rows x dim", "M", "K", "jit (new array)", "jit (out=)", "np.copyto", "copy / jit(out=)"])
    for n, d, M, K in [(3072, 1024, 8, 256), (3072, 1024, 128, 256), (1536, 576, 64, 1024)]:
        cbs = [rng.standard_normal((K, w)).astype(np.float32) for w in split_widths(d, M)]
        codes = rng.integers(0, K, (n, M)).astype(np.uint8 if K <= 256 else np.uint16)
        out = np.empty((n, d), np.float32)
        src = np.ones((n, d), np.float32)
        tj = median_ms(lambda: helix_jit.pq_decode([codes], [cbs]))
        to = median_ms(lambda: helix_jit.pq_decode([codes], [cbs], out=out))
        tc = median_ms(lambda: np.copyto(out, src))
        row([f"{n} x {d}", M, K, f(tj), f(to), f(tc), f(tc / to)])


def bench_adc(rng):
    print("\n### adc_matvec (F32x16, 8 weights per subspace, 256 centroids, one stage), ms; vs dense float32 W @ x\n")
    header(["W", "mode", "jit", "dense matvec", "x dense"])
    for n, d in [(4096, 4096), (16384, 8192)]:
        M, K = d // 8, 256
        cbs = rng.standard_normal((M, K, 8)).astype(np.float32)  # one stacked [M, K, w] array
        codes = rng.integers(0, K, (n, M)).astype(np.uint8)
        x = rng.standard_normal(d).astype(np.float32)
        W = rng.standard_normal((n, d)).astype(np.float32)
        td = median_ms(lambda: W @ x)
        for mode in ("adc_u8", "adc_i8", "f32"):
            tj = median_ms(lambda: helix_jit.adc_matvec([codes], [cbs], x, mode, "F32x16"))
            row([f"{n} x {d}", mode, f(tj), f(td), f(td / tj)])
        del W


def bench_fwht(rng):
    print("\n### fwht, length 4096, 1024 rows, ms; vs dense Hadamard product (rows @ H)\n")
    header(["lane width", "jit", "dense product", "x dense"])
    from scipy.linalg import hadamard

    n, d = 1024, 4096
    x = rng.standard_normal((n, d)).astype(np.float32)
    H = (hadamard(d) / np.sqrt(d)).astype(np.float32)
    td = median_ms(lambda: x @ H, repeats=3)
    for lw in ("F32x16", "F64x8"):
        y = x.copy()
        tj = median_ms(lambda: helix_jit.fwht(y, None, lw))
        row([lw, f(tj), f(td), f(td / tj)])


def bench_grid_errors(rng):
    print("\n### grid_errors (rtn's clip search: 21 ranges, 4-bit Lloyd-Max levels, groups of 288), ms; "
          "vs its numpy reference (same numerics); one thread each\n")
    header(["matrix (rows x width)", "zeros", "jit", "numpy reference", "x reference"])
    from helix_framework.builtins.codecs import CLIP_SHRINK, _level_table
    from helix_jit.kernels import grid_errors as ge

    for (n, d), asym in (((576, 1536), True), ((576, 1536), False), ((2048, 5632), True)):
        g, S = 288, len(CLIP_SHRINK)
        G = -(-d // g)
        groups = (0.02 * rng.standard_normal((G, g, n))).astype(np.float32)
        scales = rng.uniform(0.001, 0.003, (S, G, n)).astype(np.float32)
        zeros = (-0.02 * rng.random((S, G, n))).astype(np.float32) if asym else None
        weights = rng.random((G, g))
        table = _level_table({"bits": 4, "symmetric": not asym, "levels": "gaussian"})
        codes = (0, 15) if asym else (-7, 7)
        tj = median_ms(lambda: ge.grid_errors(groups, scales, zeros, weights, table, codes))
        consts = {"levels": tuple(float(v) for v in table), "zeros": int(asym), "code_lo": codes[0], "code_hi": codes[1]}
        err = np.zeros((S, G, n))
        z = zeros if asym else np.zeros(1, np.float32)
        tr = median_ms(lambda: ge._reference(None, consts, groups.ravel(), n, G, g, scales.ravel(), z.ravel(),
                                             weights.ravel(), S, err), repeats=3)
        row([f"{n} x {d}", "yes" if asym else "no", f(tj), f(tr), f(tr / tj)])


def bench_compile(init_ms):
    print("\n### compile and cache, ms\n")
    header(["what", "ms"])
    row(["llvmlite import + native target init (once per process)", f(init_ms)])
    k = helix_jit.get_kernel("fwht")
    cold, load = [], []
    for d in (2048, 1 << 13, 1 << 14, 1 << 15, 1 << 16):
        s0 = helix_jit.cache_stats()
        t = time.perf_counter()
        k.get("F32x16", d=d, signed=1)
        cold.append((time.perf_counter() - t) * 1e3)
        assert helix_jit.cache_stats().compiles == s0.compiles + 1
    helix_jit.clear_cache(disk=False)
    for d in (2048, 1 << 13, 1 << 14, 1 << 15, 1 << 16):
        t = time.perf_counter()
        k.get("F32x16", d=d, signed=1)
        load.append((time.perf_counter() - t) * 1e3)
    row(["cold compile, fwht (emit IR + O3 + codegen), median of 5 signatures", f(statistics.median(cold))])
    pk = helix_jit.get_kernel("pq_assign")
    cold2 = []
    for K in (256, 512, 1024):
        t = time.perf_counter()
        pk.get("F32x16", d=1024, K=K, runs=[[8, 128]], dist=0)
        cold2.append((time.perf_counter() - t) * 1e3)
    row(["cold compile, pq_assign 1024/M=8, median of 3 signatures", f(statistics.median(cold2))])
    row(["load from disk (object file, no codegen), median of 5", f(statistics.median(load))])
    t = time.perf_counter()
    for _ in range(1000):
        k.get("F32x16", d=2048, signed=1)
    row(["lookup in memory (per call)", f((time.perf_counter() - t), 4)])


def main():
    sections = {"compile", "grid_errors", "pq_assign", "pq_decode", "adc", "fwht"}
    which = set(sys.argv[1:]) or sections
    if which - sections:
        print(f"unknown section(s) {', '.join(sorted(which - sections))}; choose from {', '.join(sorted(sections))}",
              file=sys.stderr)
        sys.exit(2)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {sys.version.split()[0]}, numpy {np.__version__}, "
          f"faiss {getattr(faiss, '__version__', 'n/a')}, OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
    t = time.perf_counter()
    from helix_jit import codegen

    codegen.host()
    init_ms = (time.perf_counter() - t) * 1e3
    print(f"LLVM target: {codegen.host()['cpu']} ({codegen.host()['triple']})")
    rng = np.random.default_rng(0)
    if "compile" in which:
        bench_compile(init_ms)
    if "grid_errors" in which:
        with equal_threads(1):
            bench_grid_errors(rng)
    for n in (1, 2):
        print(f"\n## {n} thread{'s' if n > 1 else ''} for every kernel and baseline")
        with equal_threads(n):
            if "pq_assign" in which:
                bench_pq_assign(rng)
            if "pq_decode" in which:
                bench_pq_decode(rng)
            if "adc" in which:
                bench_adc(rng)
            if "fwht" in which:
                bench_fwht(rng)


if __name__ == "__main__":
    main()
