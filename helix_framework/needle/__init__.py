"""The needle benchmark: does a context compressor keep the facts?

A corpus in four content types (code, log, diff, prose) is generated at run
time (`corpus`); key=value needles are harvested with rules that keep
phantoms out (`harvest`); each document is compressed to a target ratio and
a needle survives when its value is still in the compressed text as a whole
token (`grading`). `run_benchmark` returns rows with the survival rate and
its Wilson interval, the compression ratio and latency percentiles. Works
with any registered compressor, so ``truncate`` is benchmarked without
headroom-ai installed. `answers` (``helix needle --answer``) lets a chat
decoder (`reader`) answer from the compressed text, graded the same way.
"""

from helix_framework.needle.answers import AnswerRecord, AnswerRow, AnswerRun, answer_table, ask_plan, run_answers
from helix_framework.needle.bench import Row, format_table, run_benchmark
from helix_framework.needle.corpus import CONTENT_TYPES, DEFAULT_DOCS, Corpus, Doc, build_corpus, load_corpus
from helix_framework.needle.grading import contains_token, count_token, grade_answer
from helix_framework.needle.harvest import Candidate, Needle, harvest_diff, harvest_python, harvest_text, select_needles

__all__ = [
    "AnswerRecord",
    "AnswerRow",
    "AnswerRun",
    "CONTENT_TYPES",
    "Candidate",
    "Corpus",
    "DEFAULT_DOCS",
    "Doc",
    "Needle",
    "Row",
    "answer_table",
    "ask_plan",
    "build_corpus",
    "contains_token",
    "count_token",
    "format_table",
    "grade_answer",
    "harvest_diff",
    "harvest_python",
    "harvest_text",
    "load_corpus",
    "run_answers",
    "run_benchmark",
    "select_needles",
]
