"""Needle benchmark: truncate vs headroom at target ratios 0.5 and 0.25.

Usage (from the repository root):

    .venv/bin/python benchmarks/needle.py            # markdown for docs/BENCHMARKS.md
    .venv/bin/python benchmarks/needle.py --json     # the rows as JSON

The corpus (seed 0) is generated at run time from this Python's standard
library and a generated unittest run; see helix_framework.needle.corpus.
Same as ``helix needle`` with the default compressors and ratios.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import platform
import sys

from helix_framework.host import get_host
from helix_framework.needle import build_corpus, format_table, run_benchmark


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    host = get_host()
    compressors = {"truncate": host.compressor("truncate"), "headroom": host.compressor("headroom")}
    corpus = build_corpus(seed=args.seed)
    rows = run_benchmark(corpus, compressors, [0.5, 0.25])
    summary = corpus.summary()
    env = {
        "machine": platform.machine(), "python": sys.version.split()[0],
        "headroom-ai": _version("headroom-ai"), "helix-compressor-headroom": _version("helix-compressor-headroom"),
    }
    if args.json:
        print(json.dumps({"env": env, "corpus": summary, "rows": [r.as_json() for r in rows]}, indent=2))
        return 0
    print(", ".join(f"{k} {v}" for k, v in env.items()))
    kinds = ", ".join(f"{t}: {v['needles']} needles in {v['docs']} docs ({v['chars']} chars)"
                      for t, v in summary["by_type"].items())
    print(f"corpus: seed {summary['seed']}, sha256 {summary['sha256'][:16]}, {summary['needles']} needles; {kinds}")
    print()
    print(format_table(rows, markdown=True))
    print()
    paths = {}
    for r in rows:
        if r.compressor == "headroom" and r.content_type != "all":
            for p, n in r.paths.items():
                paths[(r.content_type, p)] = paths.get((r.content_type, p), 0) + n
    print("headroom paths (documents, both ratios): "
          + ", ".join(f"{t} {p} {n}" for (t, p), n in sorted(paths.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
