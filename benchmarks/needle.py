"""Needle benchmark: truncate vs headroom at target ratios 0.5 and 0.25.

Usage (from the repository root):

    .venv/bin/python benchmarks/needle.py            # markdown for docs/BENCHMARKS.md
    .venv/bin/python benchmarks/needle.py --json     # the rows as JSON
    .venv/bin/python benchmarks/needle.py --answer   # SmolLM2 answers (helix needle --answer defaults)
    HELIX_DISABLE_HEADROOM=1 .venv/bin/python benchmarks/needle.py --answer   # the A/B toggle

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

from helix_framework.cli import build_parser
from helix_framework.host import get_host
from helix_framework.needle import answer_table, ask_plan, build_corpus, format_table, run_answers, run_benchmark


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--answer", action="store_true", help="the reader benchmark (helix needle --answer)")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="--answer: longest answer in tokens")
    args = parser.parse_args()
    host = get_host()
    compressors = {"truncate": host.compressor("truncate"), "headroom": host.compressor("headroom")}
    corpus = build_corpus(seed=args.seed)
    if args.answer:
        return _answers(args, corpus, compressors)
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


def _answers(args: argparse.Namespace, corpus, compressors) -> int:
    import os
    import time

    from helix_framework.needle.reader import load_chat_reader

    defaults = build_parser().parse_args(["needle"])  # the same plan as helix needle --answer
    reader = load_chat_reader(defaults.reader, window=defaults.window, max_new_tokens=args.max_new_tokens)
    plan = ask_plan(corpus, defaults.documents, defaults.needles_per_doc, seed=args.seed)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    run = run_answers(plan, compressors, [0.5, 0.25], reader)
    wall = time.perf_counter() - t0
    env = {"HELIX_DISABLE_HEADROOM": os.environ.get("HELIX_DISABLE_HEADROOM", ""), "headroom-ai": _version("headroom-ai"),
           "load average before/after": f"{load0[0]:.2f}/{os.getloadavg()[0]:.2f}", "cpus": os.cpu_count()}
    if args.json:
        print(json.dumps({"env": env, "window": reader.window, "max_new_tokens": reader.max_new_tokens,
                          "wall_seconds": wall, **run.as_json()}, indent=2))
        return 0
    print(", ".join(f"{k} {v}" for k, v in env.items()))
    print(f"asked {run.needles} needles in {run.documents} documents; window {reader.window} tokens; "
          f"{run.tokens_read} tokens read in {run.seconds:.0f} s ({run.tokens_read / run.seconds:.0f} tokens/s), "
          f"{run.contexts_read} contexts computed, {run.contexts_reused} reused; wall {wall:.0f} s; "
          f"{sum(a.capped for a in run.answers)} of {len(run.answers)} answers stopped at {reader.max_new_tokens} tokens")
    print()
    print(answer_table(run.rows, markdown=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
