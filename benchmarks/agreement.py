"""Token agreement on SmolLM2-135M for the scalar baselines and codebook candidates.

    .venv/bin/python benchmarks/agreement.py [--positions 2000]

Every candidate is calibrated in memory (each matrix fitted on its
calibration rows) and compared with the uncompressed model over the same
teacher-forced positions. The named baseline is round-to-nearest (rtn) at
the closest bits per weight, run in the same process: the last column is the
candidate's top-1 minus that baseline's. Bits per weight are the mean over
the compressed matrices of codes + codebooks/scales + rotation state.
"""

from __future__ import annotations

import argparse
import time

SHARED = {"subspace_dim": 8, "centroids": 256, "codebook": "shared", "row_scale": True, "max_iter": 12}
ROWS = {"calibration": 512, "measurement": 256, "seed": 42}

CANDIDATES = [
    ("passthrough", {"codec": "passthrough"}),
    ("rtn int8 per row", {"codec": "rtn", "params": {"bits": 8}}),
    ("rtn int4 g32 asym", {"codec": "rtn", "params": {"bits": 4, "group_size": 32, "symmetric": False}}),
    ("rtn int4 g32", {"codec": "rtn", "params": {"bits": 4, "group_size": 32}}),
    ("rtn int4 g128", {"codec": "rtn", "params": {"bits": 4, "group_size": 128}}),
    ("rtn int3 g32", {"codec": "rtn", "params": {"bits": 3, "group_size": 32}}),
    ("rtn int2 g32", {"codec": "rtn", "params": {"bits": 2, "group_size": 32}}),
    ("campq 6x256 (01_pr220_baseline)", {"codec": "campq", "params": {"subspaces": 6, "centroids": 256, "allow_starved": True}}),
    ("campq shared 2x256 + hadamard (~2 bpw)", {"codec": "campq", "params": {**SHARED, "residual": {"depth": 1, "centroids": 256}},
                                                "rotation": {"kind": "hadamard", "seed": 7}}),
    ("campq shared 3x256 + hadamard (~3 bpw)", {"codec": "campq", "params": {**SHARED, "residual": {"depth": 2, "centroids": 256}},
                                                "rotation": {"kind": "hadamard", "seed": 7}}),
    ("campq shared 4x256 + hadamard (default, ~4 bpw)", {"codec": "campq", "params": {**SHARED, "residual": {"depth": 3, "centroids": 256}},
                                                          "rotation": {"kind": "hadamard", "seed": 7}}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=2000)
    parser.add_argument("--only", help="run only candidates whose label contains this text")
    args = parser.parse_args()

    from helix_framework.agree import agree
    from helix_framework.calibrate import weights_from_config
    from helix_framework.config import candidate_from_mapping
    from helix_framework.host import get_host
    from helix_framework.models import resolve_model
    from helix_framework.sources import open_source

    host = get_host()
    source = open_source(resolve_model("smollm2"))
    rows = []
    for label, spec in CANDIDATES:
        if args.only and args.only not in label:
            continue
        cand = candidate_from_mapping({"name": label, "rows": ROWS, **spec}, host)
        t = time.perf_counter()
        weights = weights_from_config(source, cand, host)
        fit_s = time.perf_counter() - t
        bits = _bits(source, cand, host)
        report = agree("smollm2", weights=weights, candidate_name=label, positions=args.positions, source=source)
        r = report.result
        rows.append((label, bits, r, fit_s, report.seconds.get("candidate", 0.0)))
        print(f"done: {label}: {r['top1']:.4f} ({time.perf_counter() - t:.0f} s)", flush=True)

    rtn = [(b, r["top1"]) for label, b, r, _, _ in rows if label.startswith("rtn")]
    print()
    print(f"SmolLM2-135M, {rows[0][2]['positions']} teacher-forced positions, reference perplexity "
          f"{rows[0][2]['perplexity']['reference']:.2f}")
    print()
    print("| candidate | bits/weight | top-1 [95% CI] | top-5 | KL mean | perplexity | certified | fit s | forward s | top-1 - rtn at closest bits |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, b, r, fit_s, fwd_s in rows:
        lo, hi = r["intervals"]["top1"]
        closest = min(rtn, key=lambda t: abs(t[0] - b)) if rtn and not label.startswith(("rtn", "passthrough")) else None
        delta = f"{r['top1'] - closest[1]:+.3f} (rtn {closest[0]:.2f} bpw)" if closest else "-"
        print(f"| {label} | {b:.2f} | {r['top1']:.4f} [{lo:.3f}, {hi:.3f}] | {r['top5']:.4f} | {r['kl']['mean']:.4f} | "
              f"{r['perplexity']['candidate']:.2f} | {'yes' if r['certified'] else 'no'} | {fit_s:.0f} | {fwd_s:.0f} | {delta} |")


def _bits(source, cand, host) -> float:
    """Mean total bits per weight over the codec-routed matrices (from one
    fit per route choice and shape: bits depend on those, not the values)."""
    import numpy as np

    from helix_framework.calibrate import fit_reconstruct, resolve, route_and_read, split_rows, tensor_rng
    from helix_framework.layer_stats import LayerStats

    comp = resolve(cand, host)
    total_bits = total_weights = 0
    per_shape: dict[tuple[int, tuple[int, int]], float] = {}
    for info in source.tensors():
        routed = route_and_read(source, info, cand)
        if routed.route != "codec":
            continue
        x = routed.rows
        chosen = comp.for_tensor(info.name)  # a route choice's components, or the candidate's
        key = (cand.choice_index(info.name), x.shape)
        if key not in per_shape:
            split = split_rows(x.shape[0], chosen.candidate.rows, chosen.candidate.in_sample, info.name)
            # a data-aware candidate's components need statistics; any Hessian gives the same bits
            stats = LayerStats(np.eye(x.shape[1]), 1) if cand.calibration is not None else None
            per_shape[key] = fit_reconstruct(
                x, split.calibration, chosen, chosen.candidate.params, info.name,
                tensor_rng(chosen.candidate.rows.seed, info.name), stats=stats).bits["total_bits"]
        total_bits += per_shape[key]
        total_weights += x.size
    return float(total_bits / total_weights) if total_weights else float(np.nan)


if __name__ == "__main__":
    main()
