"""The needle benchmark: does a context compressor keep the facts?

A corpus in four content types (code, log, diff, prose) is generated at run
time (`corpus`); key=value needles are harvested with rules that keep
phantoms out (`harvest`); each document is compressed to a target ratio and
a needle survives when its value is still in the compressed text as a whole
token (`grading`). `run_benchmark` returns rows with the survival rate and
its Wilson interval, the compression ratio and latency percentiles. Works
with any registered compressor, so ``truncate`` is benchmarked without
headroom-ai installed.
"""

from helix_framework.needle.bench import AnswerUnavailable, Row, format_table, load_reader, run_benchmark
from helix_framework.needle.corpus import CONTENT_TYPES, DEFAULT_DOCS, Corpus, Doc, build_corpus
from helix_framework.needle.grading import contains_token, count_token
from helix_framework.needle.harvest import Candidate, Needle, harvest_diff, harvest_python, harvest_text, select_needles

__all__ = [
    "AnswerUnavailable",
    "CONTENT_TYPES",
    "Candidate",
    "Corpus",
    "DEFAULT_DOCS",
    "Doc",
    "Needle",
    "Row",
    "build_corpus",
    "contains_token",
    "count_token",
    "format_table",
    "harvest_diff",
    "harvest_python",
    "harvest_text",
    "load_reader",
    "run_benchmark",
    "select_needles",
]
