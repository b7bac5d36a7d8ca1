"""Running the needle benchmark and reporting it.

For each target ratio, compressor and document, the document is compressed
once to ``int(len(text) * ratio)`` characters (no question is passed: one
compression serves every needle of the document, as a context compressor
would see it). The compressed text is the exact context the reader gets; a
needle survives when its value is in that text as a whole token
(`grading`). `answers` runs a reader on the same texts (``--answer``).

Each row: needles, survived, survival rate with its 95% Wilson interval,
pooled compression ratio (output / input characters over the documents),
latency p50 and p95 per document in milliseconds, and how many documents
fell back. A warm-up compression per content type runs first, untimed, so
one-off start-up (imports, parsers) does not count as latency.
"""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import attrs
import numpy as np

from helix_framework.compressor import Compressor
from helix_framework.measure.stats import wilson_interval
from helix_framework.needle.corpus import CONTENT_TYPES, Corpus
from helix_framework.needle.grading import contains_token

__all__ = ["Row", "format_table", "run_benchmark"]

@attrs.frozen
class Row:
    ratio_target: float
    compressor: str
    content_type: str  # or "all"
    docs: int
    needles: int
    survived: int
    rate: float
    ci_low: float
    ci_high: float
    ratio: float
    p50_ms: float
    p95_ms: float
    fell_back: int
    paths: dict[str, int]

    def as_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.define
class _Acc:
    docs: int = 0
    needles: int = 0
    survived: int = 0
    chars_in: int = 0
    chars_out: int = 0
    ms: list[float] = attrs.Factory(list)
    fell_back: int = 0
    paths: dict[str, int] = attrs.Factory(dict)


def _row(ratio: float, name: str, ctype: str, acc: _Acc) -> Row:
    lo, hi = wilson_interval(acc.survived, acc.needles) if acc.needles else (float("nan"), float("nan"))
    ms = np.asarray(acc.ms, dtype=np.float64)
    return Row(
        ratio_target=ratio, compressor=name, content_type=ctype, docs=acc.docs, needles=acc.needles,
        survived=acc.survived, rate=acc.survived / acc.needles if acc.needles else float("nan"),
        ci_low=lo, ci_high=hi, ratio=acc.chars_out / acc.chars_in if acc.chars_in else float("nan"),
        p50_ms=float(np.percentile(ms, 50)) if ms.size else float("nan"),
        p95_ms=float(np.percentile(ms, 95)) if ms.size else float("nan"),
        fell_back=acc.fell_back, paths=dict(sorted(acc.paths.items())),
    )


def run_benchmark(
    corpus: Corpus,
    compressors: Mapping[str, Compressor],
    ratios: Sequence[float] = (0.5, 0.25),
) -> list[Row]:
    """Rows per (ratio, compressor, content type), plus an "all" row per
    (ratio, compressor). Only documents with at least one needle are run."""
    docs = [(d, corpus.needles_of(d.doc_id)) for d in corpus.docs]
    docs = [(d, ns) for d, ns in docs if ns]
    for comp in compressors.values():  # warm-up, untimed
        for ctype in CONTENT_TYPES:
            first = next((d for d, _ in docs if d.content_type == ctype), None)
            if first is not None:
                comp.compress(first.text, max(1, len(first.text) // 2), content_type=ctype)
    rows: list[Row] = []
    for ratio in ratios:
        if not 0 < ratio <= 1:
            raise ValueError(f"target ratios lie in (0, 1]; got {ratio}")
        for name, comp in compressors.items():
            accs = {t: _Acc() for t in (*CONTENT_TYPES, "all")}
            for doc, needles in docs:
                target = max(1, int(len(doc.text) * ratio))
                t0 = time.perf_counter()
                result = comp.compress(doc.text, target, content_type=doc.content_type)
                ms = (time.perf_counter() - t0) * 1e3
                context = result.text  # exactly what the reader gets; graded as is
                for acc in (accs[doc.content_type], accs["all"]):
                    acc.docs += 1
                    acc.chars_in += len(doc.text)
                    acc.chars_out += len(context)
                    acc.ms.append(ms)
                    acc.fell_back += int(result.fell_back)
                    acc.paths[result.path] = acc.paths.get(result.path, 0) + 1
                for needle in needles:
                    survived = contains_token(context, needle.value)
                    for acc in (accs[doc.content_type], accs["all"]):
                        acc.needles += 1
                        acc.survived += int(survived)
            for ctype in (*CONTENT_TYPES, "all"):
                if accs[ctype].docs:
                    rows.append(_row(ratio, name, ctype, accs[ctype]))
    return rows


def table_rows(rows: Sequence[Row]) -> tuple[list[list[str]], list[str]]:
    """Cells and header of the report table (shared by the CLI and the
    markdown of benchmarks/needle.py)."""
    header = ["target", "compressor", "type", "docs", "needles", "survived", "rate", "95% CI", "ratio",
              "p50 ms", "p95 ms", "fell back"]
    cells = []
    for r in rows:
        row = [f"{r.ratio_target:g}", r.compressor, r.content_type, str(r.docs), str(r.needles), str(r.survived),
               f"{r.rate:.3f}", f"[{r.ci_low:.3f}, {r.ci_high:.3f}]", f"{r.ratio:.3f}", f"{r.p50_ms:.2f}",
               f"{r.p95_ms:.2f}", str(r.fell_back)]
        cells.append(row)
    return cells, header


def format_table(rows: Sequence[Row], markdown: bool = False) -> str:
    cells, header = table_rows(rows)
    return render_table(header, cells, markdown)


def render_table(header: Sequence[str], cells: Sequence[Sequence[str]], markdown: bool = False) -> str:
    """Aligned text columns, or a markdown table."""
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        return "\n".join(lines)
    widths = [max(len(x) for x in col) for col in zip(header, *cells)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(),
           "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(out)
