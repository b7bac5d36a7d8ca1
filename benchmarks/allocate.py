"""Time and results of `helix allocate` on SmolLM2-135M at several budgets.

    .venv/bin/python benchmarks/allocate.py [--budgets 3.0 4.0] [--candidates A.yaml ...] [--positions 2000]

Runs ``helix allocate --json`` in a child process per budget, all on one
temporary LanceDB directory (so the second budget reuses the first one's
estimates, as a user's rerun would). Prints, per budget: the uniform
candidates and the mix (bits per weight, top-1 with its 95% interval, KL
mean), the mix per block and tensor type, the wall time and peak RSS, and
the ratio of the whole run to its fitting alone (the candidates' and the
mix's fits, which calibrating them would cost anyway).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ["configs/codec/48_gptq_int4_g128.yaml", "configs/codec/49_gptq_int3_g128.yaml",
           "configs/codec/50_gptq_int2_g128.yaml"]


def child(args: list[str]) -> tuple[dict, float, float]:
    code = ("import json, resource, sys, time\n"
            "from helix_framework.cli import main\n"
            "t = time.perf_counter()\n"
            "rc = main(sys.argv[1:])\n"
            "print(json.dumps({'rc': rc, 'wall': time.perf_counter() - t, "
            "'rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT)
    last = json.loads(proc.stderr.strip().splitlines()[-1])
    if last["rc"] != 0:
        raise SystemExit(proc.stderr)
    return json.loads(proc.stdout), last["wall"], last["rss_mb"]


def grid(tensors: dict[str, str], labels: dict[str, str]) -> str:
    """Blocks as rows, tensor types as columns, each cell the chosen candidate's label."""
    cells: dict[int, dict[str, str]] = {}
    kinds: list[str] = []
    for name, cand in tensors.items():
        m = re.match(r"blk\.(\d+)\.(\w+)\.weight$", name) or re.match(r".*layers\.(\d+)\.(\w+\.\w+)\.weight$", name)
        if not m:
            continue
        block, kind = int(m.group(1)), m.group(2)
        kinds += [kind] if kind not in kinds else []
        cells.setdefault(block, {})[kind] = labels[cand]
    lines = ["block  " + "  ".join(f"{k:>11}" for k in kinds)]
    for b in sorted(cells):
        lines.append(f"{b:>5}  " + "  ".join(f"{cells[b].get(k, '-'):>11}" for k in kinds))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budgets", type=float, nargs="+", default=[3.0, 4.0])
    ap.add_argument("--candidates", nargs="+", default=DEFAULT)
    ap.add_argument("--positions", type=int, default=2000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for budget in args.budgets:
            out = Path(tmp) / f"mix_{budget:g}.yaml"
            data, wall, rss = child(["allocate", "smollm2", "--candidates", *args.candidates, "--target-bpw",
                                     str(budget), "--out", str(out), "--db", str(Path(tmp) / "db"),
                                     "--positions", str(args.positions), "--json"])
            print(f"\n== target {budget} bits per weight: wall {wall:.0f} s, peak RSS {rss:.0f} MB, "
                  f"fitting alone {data['seconds']['fit']:.0f} s (ratio {wall / data['seconds']['fit']:.2f})")
            print(f"{'candidate':<20} {'bits/weight':>11}  {'top-1 [95% interval]':<26} {'KL mean':>8}")
            for r in [*data["candidates"], data["mix"]]:
                print(f"{r['candidate']:<20} {r['bits_per_weight']:>11.4f}  {r['top1']:.4f} [{r['top1_ci_low']:.4f}, "
                      f"{r['top1_ci_high']:.4f}]  {r['kl_mean']:>8.4f}")
            c = data["choice"]
            print(f"estimated cost {c['estimated_cost']:.5f}, lower bound {c['cost_lower_bound']:.5f}")
            labels = {r["candidate"]: f"{r['bits_per_weight']:.2f}" for r in data["candidates"]}
            print("bits per weight of the candidate chosen, per block and tensor:")
            print(grid(c["tensors"], labels))


if __name__ == "__main__":
    main()
