"""`helix agree` on SmolLM2-135M against the machine's floor, measured in the same run.

    .venv/bin/python benchmarks/agree_floor.py [--positions 2000] [--threads 2]

The floor of a job is the time a float32 matrix product with the same FLOP
count takes here, now, at the same thread count: one forward pass over N
positions costs 2 x (linear weights + LM head) x N plus attention's
4 x window/2 x hidden x layers x N. Printed: the floor, the agreement run's
phases (load, reference, candidate forward + statistics) and the ratios
(issue targets: candidate within 2x of one forward's floor with the reference
cached; the whole uncached run within 2x of two forwards), plus peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time

import numpy as np


def matmul_gflops(threads: int, repeats: int = 5) -> float:
    """Best float32 GEMM rate (GFLOP/s) over a few 1024-cubed products."""
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)
    b = a.T.copy()
    best = float("inf")
    with threadpool_limits(threads):
        a @ b  # warm
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(4):
                a @ b
            best = min(best, (time.perf_counter() - t) / 4)
    return 2 * 1024**3 / best / 1e9


def forward_flops(model, positions: int, window: int) -> float:
    c = model.config
    per_layer = 0
    for name, w in model.weights.items():
        if w.ndim == 2 and name != model.names.embed:
            per_layer += w.size
    head = c.vocab_size * c.hidden_size
    attention = 4 * (window / 2) * c.n_heads * c.head_dim * c.n_layers
    return positions * (2 * (per_layer + head) + attention)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=2000)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--config", default="configs/codec/03_rtn_int4_g32.yaml")
    args = parser.parse_args()

    import os

    from threadpoolctl import threadpool_limits

    os.environ["HELIX_THREADS"] = str(args.threads)  # windows over as many threads as the floor's GEMM uses

    from helix_framework.agree import agree
    from helix_framework.calibrate import weights_from_config
    from helix_framework.config import load_candidate
    from helix_framework.host import get_host
    from helix_framework.models import resolve_model
    from helix_framework.reference import load_model
    from helix_framework.sources import open_source

    host = get_host()
    source = open_source(resolve_model("smollm2"))
    rate = matmul_gflops(args.threads)
    flops = forward_flops(load_model(source), args.positions, args.window)
    floor = flops / (rate * 1e9)
    candidate = load_candidate(args.config, host)
    with tempfile.TemporaryDirectory() as cache, threadpool_limits(args.threads):
        os.environ["HELIX_CACHE_DIR"] = cache
        weights = weights_from_config(source, candidate, host)
        t = time.perf_counter()
        cold = agree("smollm2", weights=weights, candidate_name=candidate.name, positions=args.positions,
                     window=args.window, source=source)
        cold_s = time.perf_counter() - t
        t = time.perf_counter()
        warm = agree("smollm2", weights=weights, candidate_name=candidate.name, positions=args.positions,
                     window=args.window, source=source)
        warm_s = time.perf_counter() - t
    assert warm.result["top1"] == cold.result["top1"]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"threads {args.threads}; float32 GEMM {rate:.0f} GFLOP/s; one forward over {args.positions} positions "
          f"{flops / 1e12:.3f} TFLOP -> floor {floor:.2f} s")
    print(f"{'run':<28}{'seconds':>9}{'floor':>8}{'ratio':>8}")
    print(f"{'uncached (ref + cand)':<28}{cold_s:>9.2f}{2 * floor:>8.2f}{cold_s / (2 * floor):>8.2f}")
    print(f"{'cached (candidate only)':<28}{warm_s:>9.2f}{floor:>8.2f}{warm_s / floor:>8.2f}")
    print(f"phases cached: {', '.join(f'{k} {v:.2f} s' for k, v in warm.seconds.items())}")
    print(f"peak RSS of this process {rss:.0f} MB (includes the uncached run's reference model)")


if __name__ == "__main__":
    main()
