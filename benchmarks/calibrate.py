"""Time `helix calibrate` on every routed matrix of SmolLM2-135M.

    .venv/bin/python benchmarks/calibrate.py [--config FILE] [--repeats N]

Prints, for the candidate (default 01_pr220_baseline, 210 matrices):

- the whole run (`helix calibrate` in a child process: wall seconds and peak
  resident memory, the child's ru_maxrss);
- fit + encode + decode alone, in this process (the codec's share);
- the named baseline, measured in the same process on the same matrices:
  faiss-cpu ProductQuantizer (same subspaces and centroids; on the 192-row
  k/v matrices, whose 144 calibration rows are fewer than 256 centroids,
  faiss gets 128) train + compute_codes + decode, and reading every matrix
  (the I/O floor).

Medians of ``--repeats`` runs; ratios are baseline / helix (above 1: helix
faster).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def child_run(config: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one `helix calibrate` child process."""
    with tempfile.TemporaryDirectory() as out:
        code = (
            "import resource, sys, time\n"
            "from helix_framework.cli import main\n"
            "t = time.perf_counter()\n"
            f"rc = main(['calibrate', 'smollm2', '--config', {str(config)!r}, '--out', {out!r}, '--json'])\n"
            "print('BENCH', time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
            "sys.exit(rc)\n"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    line = next(line for line in proc.stdout.splitlines() if line.startswith("BENCH"))
    _, seconds, rss = line.split()
    return float(seconds), float(rss)


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
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "codec" / "01_pr220_baseline.yaml")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import faiss
    from threadpoolctl import threadpool_limits

    from helix_framework.calibrate import fit_reconstruct, resolve, split_rows, tensor_rng
    from helix_framework.config import load_candidate

    cand = load_candidate(args.config)
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

    runs = [child_run(args.config) for _ in range(args.repeats)]
    wall = statistics.median(r[0] for r in runs)
    rss = max(r[1] for r in runs)
    fit = median_time(helix_fit, args.repeats)
    faiss_t = median_time(faiss_pq, args.repeats)
    io = median_time(read_all, args.repeats)

    print(f"candidate {cand.name}: {len(mats)} matrices, {n_weights / 1e6:.1f} M weights, "
          f"median of {args.repeats}, faiss {faiss.__version__}, {faiss.omp_get_max_threads()} faiss threads")
    print()
    print("| what | seconds | baseline | baseline seconds | baseline / helix |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| helix calibrate, whole run (child process) | {wall:.1f} | read every matrix (I/O floor) | {io:.1f} | {io / wall:.2f} |")
    print(f"| helix fit + encode + decode | {fit:.1f} | faiss ProductQuantizer train + encode + decode | {faiss_t:.1f} | {faiss_t / fit:.2f} |")
    print()
    print(f"peak resident memory of the whole run: {rss:.0f} MB (target < 1,500 MB); wall target < 60 s")


if __name__ == "__main__":
    main()
