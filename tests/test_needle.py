"""The needle benchmark: grading, the phantom-free harvest, the corpus,
the benchmark rows and the two CLI commands. Runs without headroom-ai."""

import json

import pytest

from helix_framework.cli import main
from helix_framework.compressor import CompressionResult, Compressor, ratio_of
from helix_framework.needle import (
    Corpus,
    Doc,
    Needle,
    build_corpus,
    contains_token,
    count_token,
    harvest_diff,
    harvest_python,
    harvest_text,
    run_benchmark,
    select_needles,
)
from helix_framework.builtins.compressors import TruncateCompressor

# -- grading: whole tokens, also for values with punctuation ----------------------


@pytest.mark.parametrize(
    ("text", "value", "present"),
    [
        ("a rapid reply", "api", False),
        ("the api_key is set", "api", False),
        ("call the api, then", "api", True),
        ("took 11.05 s", "1.0", False),
        ("version 1.0.3", "1.0", False),
        ("pinned at version 1.0.", "1.0", True),
        ("value=1.0;", "1.0", True),
        ("encoding 'utf-8'", "utf-8", True),
        ("encoding utf-8x", "utf-8", False),
        ("host node-17.eu-west-3 up", "node-17.eu-west-3", True),
        ("host xnode-17.eu-west-3", "node-17.eu-west-3", False),
        ("host node-17.eu-west-3b", "node-17.eu-west-3", False),
        ("port=48213", "48213", True),
        ("port=148213", "48213", False),
        ("Api", "api", False),
    ],
)
def test_whole_token_grading(text, value, present):
    assert contains_token(text, value) is present


def test_count_token():
    assert count_token("1.0 and 1.0, not 11.0 or 1.05", "1.0") == 2
    assert count_token("api api api", "api", limit=2) == 2


# -- harvest: the phantom cases (docstrings, calls, prose keys, annotations) ------

PHANTOM_SOURCE = '''"""Module docs.

include_heterochromatin=Include
max_depth = 31337
"""
import os

queries_path = os.path.join("data", "queries")
model: str
annotated: int = 27182
retry_limit = 90210
ratio = (16180)


def f():
    """note=Kept for compatibility, timeout = 4242"""
    window_size = 65537
    return window_size
'''


def test_python_harvest_skips_docstring_call_and_annotation_phantoms():
    got = {(c.key, c.value) for c in harvest_python(PHANTOM_SOURCE)}
    # docstrings (include_heterochromatin, max_depth, note, timeout), the call
    # (queries_path), the annotations (model, annotated) and the parenthesised
    # value (not right after the key) are all absent
    assert got == {("retry_limit", "90210"), ("window_size", "65537")}


PHANTOM_PROSE = """\
Set include_heterochromatin=Include to keep the whole genome.
The path comes from queries_path=os.path.join(base, "q").
A note=Kept marks an entry; model=str is the annotation.
Call it as json.dumps(obj, indent_width=4017) or
>>> configure(cache_size=2048)
The archive service keeps cache_port=48213. Plain port=31999 too.
"""


def test_text_harvest_skips_prose_phantoms():
    assert {(c.key, c.value) for c in harvest_text(PHANTOM_PROSE, prose=True)} == {("cache_port", "48213")}
    # in logs a plain-word key is fine, but still not a word value
    assert {(c.key, c.value) for c in harvest_text(PHANTOM_PROSE)} == {("cache_port", "48213"), ("port", "31999")}


def test_text_harvest_needs_the_value_right_after_the_key():
    got = harvest_text("limit = 12345 and limit= 777 and budget=8080")
    assert [(c.key, c.value) for c in got] == [("budget", "8080")]


def test_values_must_be_unique_in_the_corpus_and_keys_in_their_document():
    docs = [
        ("a", "log", "x_port=1111 y_port=2222 z_port=3333 z_port=4444", harvest_text("x_port=1111 y_port=2222 z_port=3333 z_port=4444")),
        ("b", "log", "w_port=2222 v_port=55555", harvest_text("w_port=2222 v_port=55555")),
    ]
    needles = select_needles(docs)
    assert [(n.doc_id, n.key, n.value) for n in needles] == [("a", "x_port", "1111"), ("b", "v_port", "55555")]


def test_diff_harvest_takes_added_assignments_only():
    new = 'LIMIT = 12345\n"""DOC = 999"""\nNAME = "x"\n'
    diff = (
        "diff --git a/m.py b/m.py\n--- a/m.py\n+++ b/m.py\n@@ -1,3 +1,3 @@\n"
        "-LIMIT = 10\n+LIMIT = 12345\n-\"\"\"DOC = 1\"\"\"\n+\"\"\"DOC = 999\"\"\"\n NAME = \"x\"\n"
    )
    assert [(c.key, c.value, c.line) for c in harvest_diff(diff, new)] == [("LIMIT", "12345", 6)]
    needles = select_needles([("d", "diff", diff, harvest_diff(diff, new))])
    assert [(n.key, n.value) for n in needles] == [("LIMIT", "12345")]  # the "-" line does not count


# -- grading the exact text the reader gets ---------------------------------------


class Scripted(Compressor):
    name = "scripted"

    def __init__(self, out):
        self.out = out

    def compress(self, text, target, content_type=None, question=None):
        return CompressionResult(text=self.out, ratio=ratio_of(text, self.out), path="scripted")


def _tiny_corpus():
    text = "alpha_rate=1.0 beta_host=api gamma_id=77777 " + "filler " * 20
    needles = (
        Needle("d", "log", "alpha_rate", "1.0", 1),
        Needle("d", "log", "beta_host", "api", 1),
        Needle("d", "log", "gamma_id", "77777", 1),
    )
    return Corpus(seed=0, docs=(Doc("d", "log", text, "test"),), needles=needles)


def test_benchmark_grades_the_returned_text_with_word_boundaries():
    corpus = _tiny_corpus()
    # "1.0" only inside "11.05", "api" only inside "rapid": neither survives
    rows = run_benchmark(corpus, {"s": Scripted("rate 11.05, rapid, id 77777")}, [0.5])
    row = next(r for r in rows if r.content_type == "log")
    assert (row.needles, row.survived) == (3, 1)
    assert row.ci_low < 1 / 3 < row.ci_high
    rows = run_benchmark(corpus, {"s": Scripted("1.0 api 77777")}, [0.5])
    assert next(r for r in rows if r.content_type == "all").survived == 3


def test_truncate_benchmark_on_the_default_corpus():
    corpus = build_corpus(seed=0)
    assert len(corpus.needles) >= 200
    assert {n.content_type for n in corpus.needles} == {"code", "log", "diff", "prose"}
    for n in corpus.needles:  # every needle is really in its document once, as a whole token
        doc = next(d for d in corpus.docs if d.doc_id == n.doc_id)
        assert count_token(doc.text, n.value) == 1
    rows = run_benchmark(corpus, {"truncate": TruncateCompressor()}, [0.5, 0.25])
    total = [r for r in rows if r.content_type == "all"]
    assert [r.needles for r in total] == [len(corpus.needles)] * 2
    assert total[0].survived >= total[1].survived
    assert all(abs(r.ratio - r.ratio_target) < 0.01 and r.fell_back == 0 for r in total)


def test_corpus_is_reproducible():
    small = {"code": 1, "log": 1, "diff": 2, "prose": 1}
    a, b = build_corpus(seed=3, docs=small), build_corpus(seed=3, docs=small)
    assert a.sha256 == b.sha256 and a.needles == b.needles
    assert build_corpus(seed=4, docs=small).sha256 != a.sha256
    log = next(d for d in a.docs if d.content_type == "log")
    assert "<suite>" in log.text or "Traceback" not in log.text
    assert "Ran 24 tests in 0.000s" in log.text


# -- the CLI ---------------------------------------------------------------------


def test_cli_needle_json_with_truncate(capsys):
    assert main(["needle", "--compressor", "truncate", "--ratio", "0.5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["corpus"]["needles"] >= 200
    row = next(r for r in out["rows"] if r["content_type"] == "all")
    assert row["compressor"] == "truncate" and 0 <= row["ci_low"] <= row["rate"] <= row["ci_high"] <= 1


def test_cli_compress(tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("one two three four five six seven eight nine ten\n")
    assert main(["compress", str(path), "--compressor", "truncate", "--target-chars", "13", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["text"] == "one two three" and out["path"] == "truncate" and out["fallback"] is False
    assert set(out) >= {"ratio", "path", "fallback", "milliseconds"}
    assert main(["compress", str(path), "--compressor", "truncate", "--target-chars", "3"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "one\n" and "truncate" in captured.err
    assert main(["compress", str(tmp_path / "missing.txt")]) == 2
    assert "cannot read" in capsys.readouterr().err
