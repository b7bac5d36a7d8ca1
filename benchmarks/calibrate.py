"""Time `helix calibrate` on every routed matrix of SmolLM2-135M against its floor.

    .venv/bin/python benchmarks/calibrate.py [--config FILE ...] [--repeats N] [--faiss]

For each candidate (default: the 4-stage shared-VQ candidate
configs/codec/22_residual_shared_vq_hadamard.yaml and the data-aware
default configs/codec/40_dataaware_4bit.yaml), prints:

- the whole run (`helix calibrate` in a child process: wall seconds, CPU
  seconds and peak resident memory, the child's ru_maxrss);
- its floor: the time a float32 matrix product with the job's FLOP count
  takes here, measured in this run at 1 and 2 BLAS threads, and the ratio
  wall / floor (the issue's floor is the 1-thread one). The FLOPs: for a
  codebook codec, every ``pq_assign`` call of the run (k-means Lloyd steps
  and encodes, 2 x rows x centroids x width, counted in the child); for a
  data-aware candidate, the products it cannot avoid, counted from the
  matrix shapes (`dataaware_flops`);
- with ``--faiss`` (per-subspace candidates such as 01_pr220_baseline), fit +
  encode + decode alone in this process against faiss-cpu ProductQuantizer
  (same subspaces and centroids; on the 192-row k/v matrices, whose 144
  calibration rows are fewer than 256 centroids, faiss gets 128) and
  reading every matrix (the I/O floor).

Medians of ``--repeats`` runs; ratios are baseline / helix (above 1: helix
faster) in the faiss table, wall / floor in the floor table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from agree_floor import matmul_gflops

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs" / "codec"

# Runs `helix calibrate` with every pq_assign call counted (2 x rows x K x d FLOPs).
_CHILD = """
import json, resource, sys, time
import helix_jit
flops = [0.0]
_orig = helix_jit.pq_assign
def counted(rows, codebooks, *a, **k):
    flops[0] += 2.0 * rows.shape[0] * rows.shape[1] * codebooks[0].shape[0]
    return _orig(rows, codebooks, *a, **k)
helix_jit.pq_assign = counted
from helix_framework.cli import main
t = time.perf_counter(); c = time.process_time()
rc = main(['calibrate', 'smollm2', '--config', CONFIG, '--out', OUT, '--json'])
print('BENCH', json.dumps({'wall': time.perf_counter() - t, 'cpu': time.process_time() - c,
      'rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 'assign_flops': flops[0]}))
sys.exit(rc)
"""


def child_run(config: Path) -> dict:
    """Wall and CPU seconds, peak RSS (MB) and counted pq_assign FLOPs of one
    `helix calibrate` child process."""
    with tempfile.TemporaryDirectory() as out:
        code = _CHILD.replace("CONFIG", repr(str(config))).replace("OUT", repr(out))
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    line = next(line for line in proc.stdout.splitlines() if line.startswith("BENCH"))
    return json.loads(line.split(" ", 1)[1])


def dataaware_flops(candidate, shapes: list[tuple[int, int]], n_params: int) -> float:
    """FLOPs a data-aware calibration cannot avoid: one forward pass over the
    calibration tokens (2 x weights x tokens, every routed matrix and the
    rest), X^T X per matrix (2 x tokens x d_in^2), and error feedback's
    column updates (2 x rows x d_in^2) plus a d_in^3 factorisation per
    matrix. Clip searches and attention are left out (a lower bound)."""
    cal = candidate.calibration
    tokens = cal.sequences * cal.tokens
    flops = 2.0 * n_params * tokens
    for rows, d_in in shapes:
        flops += 2.0 * tokens * d_in**2 + 2.0 * rows * d_in**2 + float(d_in) ** 3
    return flops


def matrices(candidate):
    from helix_framework.calibrate import route_and_read
    from helix_framework.models import resolve_model
    from helix_framework.sources import open_source

    with open_source(resolve_model("smollm2")) as source:
        for info in source.tensors():
            routed = route_and_read(source, info, candidate)
            if routed.route == "codec":
                yield info.name, routed.rows


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, nargs="+",
                        default=[CONFIGS / "22_residual_shared_vq_hadamard.yaml", CONFIGS / "40_dataaware_4bit.yaml"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--faiss", action="store_true", help="also compare fit + encode + decode with faiss")
    args = parser.parse_args()

    from helix_framework.config import load_candidate
    from helix_framework.models import resolve_model
    from helix_framework.reference import load_model
    from helix_framework.sources import open_source

    with open_source(resolve_model("smollm2")) as source:
        n_params = sum(int(w.size) for name, w in load_model(source).weights.items() if w.ndim == 2)
    print("| candidate | wall s | CPU s | peak MB | TFLOP | floor s (1 thread) | wall / floor | floor s (2 threads) | wall / floor |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for config in args.config:
        cand = load_candidate(config)
        runs = [child_run(config) for _ in range(args.repeats)]
        wall = statistics.median(r["wall"] for r in runs)
        cpu = statistics.median(r["cpu"] for r in runs)
        rss = max(r["rss_mb"] for r in runs)
        if cand.calibration is not None:
            shapes = [x.shape for _, x in matrices(cand)]
            flops = dataaware_flops(cand, shapes, n_params)
        else:
            flops = runs[0]["assign_flops"]
        rates = {t: matmul_gflops(t) for t in (1, 2)}
        floors = {t: flops / (rates[t] * 1e9) for t in rates}
        print(f"| {cand.name} | {wall:.1f} | {cpu:.1f} | {rss:.0f} | {flops / 1e12:.3f} | {floors[1]:.1f} | "
              f"{wall / floors[1]:.2f} | {floors[2]:.1f} | {wall / floors[2]:.2f} |")
        print(f"<!-- GEMM {rates[1]:.0f} GFLOP/s at 1 thread, {rates[2]:.0f} at 2 -->")
        if args.faiss:
            faiss_table(cand, args.repeats)


def faiss_table(cand, repeats: int) -> None:
    import faiss
    from threadpoolctl import threadpool_limits

    from helix_framework.calibrate import fit_reconstruct, resolve, split_rows, tensor_rng

    comp = resolve(cand)
    mats = list(matrices(cand))
    n_weights = sum(x.size for _, x in mats)

    def helix_fit():
        with threadpool_limits(1, "blas"):
            for name, x in mats:
                split = split_rows(x.shape[0], cand.rows, cand.in_sample, name)
                fit_reconstruct(x, split.calibration, comp, cand.params, name, tensor_rng(cand.rows.seed, name))

    m = cand.params.subspaces or 6
    k_bits = int(np.log2(cand.params.centroids))

    def faiss_pq():
        for name, x in mats:
            split = split_rows(x.shape[0], cand.rows, cand.in_sample, name)
            # faiss needs at least K training points (helix caps K at the distinct rows instead)
            pq = faiss.ProductQuantizer(x.shape[1], m, min(k_bits, int(np.log2(split.calibration.size))))
            pq.verbose = False
            pq.cp.min_points_per_centroid = 1  # the same starved condition, without faiss's warning
            pq.train(np.ascontiguousarray(x[split.calibration]))
            pq.decode(pq.compute_codes(x))

    def read_all():
        for _ in matrices(cand):
            pass

    fit = median_time(helix_fit, repeats)
    faiss_t = median_time(faiss_pq, repeats)
    io = median_time(read_all, repeats)
    print()
    print(f"candidate {cand.name}: {len(mats)} matrices, {n_weights / 1e6:.1f} M weights, "
          f"median of {repeats}, faiss {faiss.__version__}, {faiss.omp_get_max_threads()} faiss threads")
    print()
    print("| what | seconds | baseline | baseline seconds | baseline / helix |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| helix fit + encode + decode | {fit:.1f} | faiss ProductQuantizer train + encode + decode | {faiss_t:.1f} | {faiss_t / fit:.2f} |")
    print(f"| reading every matrix (I/O floor) | {io:.1f} | | | |")


if __name__ == "__main__":
    main()
