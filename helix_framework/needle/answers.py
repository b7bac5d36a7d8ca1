"""``helix needle --answer``: does the reader still answer from compressed context?

For each asked document the conditions are: the uncompressed document (the
reader's ceiling) and every compressor at every target ratio (compressed to
``int(len(text) * ratio)`` characters, as the survival benchmark does). Each
context is cut to the reader's window in tokens; the cut text is the context
the reader saw, and a needle survives when its value is a whole token of it
(`grading`), so a needle the window cut away did not survive. The reader
answers every asked needle of the document from one prefix computation;
two conditions that leave the same tokens (truncation at 0.5 and no
compression, both cut to the window; a compressor that fell back to
truncation) share their answers instead of computing them twice.

An answer is correct when the value is a whole token of it (`grade_answer`).
A correct answer whose needle did not survive is a guess: counted apart,
never as a success. Per condition and content type: answer rate (correct
and survived / asked), answer rate given survival (correct and survived /
survived), guesses (of the needles that did not survive), each rate with
its 95% Wilson interval, and the ceiling (the answer rate on the
uncompressed document).
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import attrs

from helix_framework.compressor import Compressor
from helix_framework.measure.stats import wilson_interval
from helix_framework.needle.bench import render_table
from helix_framework.needle.corpus import CONTENT_TYPES, Corpus, Doc
from helix_framework.needle.grading import contains_token, grade_answer
from helix_framework.needle.harvest import Needle

if TYPE_CHECKING:  # the reader pulls in the reference decoder; the survival benchmark does not need it
    from helix_framework.needle.reader import ChatReader

__all__ = ["AnswerRecord", "AnswerRow", "AnswerRun", "UNCOMPRESSED", "answer_table", "ask_plan", "run_answers",
           "sample_answers"]

#: The compressor name of the uncompressed condition (ratio 1).
UNCOMPRESSED = "none"


@attrs.frozen
class AnswerRecord:
    """One question asked in one condition, graded; ``answer`` verbatim."""

    compressor: str
    ratio_target: float
    doc_id: str
    content_type: str
    key: str
    value: str
    question: str
    answer: str
    capped: bool  # stopped at the token limit, not at the end of its turn
    in_compressed: bool  # value in the compressor's output, before the window cut
    survived: bool  # value in the context the reader saw
    correct: bool  # value a whole token of the answer

    @property
    def success(self) -> bool:
        return self.correct and self.survived

    @property
    def guess(self) -> bool:
        return self.correct and not self.survived


@attrs.frozen
class AnswerRow:
    compressor: str
    ratio_target: float
    content_type: str  # or "all"
    docs: int
    docs_cut: int  # documents the window cut
    needles: int
    survived: int
    cut_away: int  # in the compressed text but cut by the window
    answered: int  # correct and survived
    answer_rate: float
    answer_ci: tuple[float, float]
    given_survival: float
    given_survival_ci: tuple[float, float]
    guesses: int  # correct although not survived
    guess_rate: float  # of the needles that did not survive
    guess_ci: tuple[float, float]
    ceiling: float  # answer rate of the uncompressed condition, same type
    ratio: float  # output / input characters, pooled
    doc_tokens: int  # document tokens the reader read (after the cut), summed

    def as_json(self) -> dict[str, Any]:
        """The row with null for a rate that has nothing to rate (JSON has no NaN)."""
        return {k: _no_nan(v) for k, v in attrs.asdict(self, recurse=False).items()}


def _no_nan(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_no_nan(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value


@attrs.frozen
class AnswerRun:
    rows: tuple[AnswerRow, ...]
    answers: tuple[AnswerRecord, ...]
    documents: int
    needles: int  # asked per condition
    contexts_read: int  # prefixes computed
    contexts_reused: int  # conditions answered from an identical earlier context
    tokens_read: int
    seconds: float

    def as_json(self) -> dict[str, Any]:
        out = {k: v for k, v in attrs.asdict(self, recurse=False).items() if k not in ("rows", "answers")}
        out["tokens_per_second"] = self.tokens_read / self.seconds if self.seconds else None
        out["rows"] = [r.as_json() for r in self.rows]
        out["answers"] = [{**attrs.asdict(a), "guess": a.guess} for a in self.answers]
        return out


def ask_plan(corpus: Corpus, documents: int, needles_per_doc: int, seed: int = 0) -> list[tuple[Doc, list[Needle]]]:
    """The documents and needles to ask: the shortest documents of each
    content type in turn (short ones lose least to the reader's window, so
    the ceiling measures reading more than cutting), and of each at most
    ``needles_per_doc`` of its needles drawn with ``seed``, in line order."""
    by_type: dict[str, list[Doc]] = {t: [] for t in CONTENT_TYPES}
    for d in corpus.docs:
        if corpus.needles_of(d.doc_id):
            by_type.setdefault(d.content_type, []).append(d)
    queues = [sorted(ds, key=lambda d: (len(d.text), d.doc_id)) for ds in by_type.values() if ds]
    picked: list[Doc] = []
    while len(picked) < documents and any(queues):
        for q in queues:
            if q and len(picked) < documents:
                picked.append(q.pop(0))
    plan = []
    for d in picked:
        needles = corpus.needles_of(d.doc_id)
        chosen = random.Random(f"{seed}:ask:{d.doc_id}").sample(needles, min(needles_per_doc, len(needles)))
        plan.append((d, sorted(chosen, key=lambda n: (n.line, n.key))))
    return plan


def run_answers(
    plan: Sequence[tuple[Doc, Sequence[Needle]]],
    compressors: Mapping[str, Compressor],
    ratios: Sequence[float],
    reader: ChatReader,
    *,
    progress: Callable[[str], None] | None = None,
) -> AnswerRun:
    """Ask every planned needle in every condition (see the module docstring)."""
    conditions = [(UNCOMPRESSED, 1.0)] + [(name, r) for r in ratios for name in compressors]
    records: list[AnswerRecord] = []
    doc_stats: list[tuple[str, float, str, int, int, bool, int]] = []
    read = reused = 0
    tokens0, seconds0 = reader.tokens_read, reader.seconds
    for doc, needles in plan:
        answered: dict[tuple[int, ...], list[tuple[str, bool]]] = {}
        for name, ratio in conditions:
            if name == UNCOMPRESSED:
                text = doc.text
            else:
                target = max(1, int(len(doc.text) * ratio))
                text = compressors[name].compress(doc.text, target, content_type=doc.content_type).text
            prefix = reader.cut(text)
            if prefix.ids in answered:
                reused += 1
            else:
                reader.open(prefix)
                answered[prefix.ids] = [reader.ask(n.question) for n in needles]
                read += 1
            for n, (answer, capped) in zip(needles, answered[prefix.ids]):
                records.append(AnswerRecord(
                    compressor=name, ratio_target=ratio, doc_id=doc.doc_id, content_type=doc.content_type,
                    key=n.key, value=n.value, question=n.question, answer=answer, capped=capped,
                    in_compressed=contains_token(text, n.value), survived=contains_token(prefix.text, n.value),
                    correct=grade_answer(answer, n.value)))
            doc_stats.append((name, ratio, doc.content_type, len(doc.text), len(text), prefix.cut, len(prefix.ids)))
            if progress is not None:
                progress(f"{doc.doc_id} {name}@{ratio:g}")
    rows = _rows(conditions, records, doc_stats)
    return AnswerRun(rows=tuple(rows), answers=tuple(records), documents=len(plan),
                     needles=sum(len(ns) for _, ns in plan), contexts_read=read, contexts_reused=reused,
                     tokens_read=reader.tokens_read - tokens0, seconds=reader.seconds - seconds0)


def _rate(k: int, n: int) -> tuple[float, tuple[float, float]]:
    if n == 0:
        return float("nan"), (float("nan"), float("nan"))
    return k / n, wilson_interval(k, n)


def _rows(conditions, records, doc_stats) -> list[AnswerRow]:
    ceilings: dict[str, float] = {}
    rows = []
    for name, ratio in conditions:
        for ctype in (*CONTENT_TYPES, "all"):
            recs = [a for a in records if a.compressor == name and a.ratio_target == ratio
                    and ctype in ("all", a.content_type)]
            docs = [s for s in doc_stats if s[0] == name and s[1] == ratio and ctype in ("all", s[2])]
            if not recs:
                continue
            n, surv = len(recs), sum(a.survived for a in recs)
            ok, guesses = sum(a.success for a in recs), sum(a.guess for a in recs)
            rate, ci = _rate(ok, n)
            given, given_ci = _rate(ok, surv)
            grate, gci = _rate(guesses, n - surv)
            if name == UNCOMPRESSED:
                ceilings[ctype] = rate
            rows.append(AnswerRow(
                compressor=name, ratio_target=ratio, content_type=ctype, docs=len(docs),
                docs_cut=sum(s[5] for s in docs), needles=n, survived=surv,
                cut_away=sum(a.in_compressed and not a.survived for a in recs), answered=ok, answer_rate=rate,
                answer_ci=ci, given_survival=given, given_survival_ci=given_ci, guesses=guesses, guess_rate=grate,
                guess_ci=gci, ceiling=ceilings[ctype], ratio=sum(s[4] for s in docs) / sum(s[3] for s in docs),
                doc_tokens=sum(s[6] for s in docs)))
    return rows


def _ci(rate: float, ci: tuple[float, float]) -> str:
    if rate != rate:  # NaN: nothing to rate
        return "-"
    return f"{rate:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def answer_table(rows: Sequence[AnswerRow], markdown: bool = False) -> str:
    """The report table (the CLI's text output and the benchmark's markdown)."""
    header = ["condition", "type", "docs", "cut", "needles", "survived", "cut away", "answered",
              "answer rate [95% CI]", "given survival [95% CI]", "guesses", "ceiling", "ratio", "doc tokens"]
    cells = []
    for r in rows:
        cond = "uncompressed" if r.compressor == UNCOMPRESSED else f"{r.compressor} {r.ratio_target:g}"
        cells.append([cond, r.content_type, str(r.docs), str(r.docs_cut), str(r.needles), str(r.survived),
                      str(r.cut_away), str(r.answered), _ci(r.answer_rate, r.answer_ci),
                      _ci(r.given_survival, r.given_survival_ci), f"{r.guesses}/{r.needles - r.survived}",
                      f"{r.ceiling:.2f}", f"{r.ratio:.3f}", str(r.doc_tokens)])
    return render_table(header, cells, markdown)


def sample_answers(answers: Sequence[AnswerRecord], k: int = 20, seed: int = 0) -> list[AnswerRecord]:
    """Up to ``k`` graded answers for a person to audit the grader: half
    correct, half incorrect where there are enough of each, drawn with
    ``seed``, in run order."""
    rng = random.Random(f"{seed}:sample")
    idx = list(range(len(answers)))
    right = [i for i in idx if answers[i].correct]
    wrong = [i for i in idx if not answers[i].correct]
    n_right = min(len(right), max(k // 2, k - len(wrong)))
    chosen = rng.sample(right, n_right) + rng.sample(wrong, min(len(wrong), k - n_right))
    return [answers[i] for i in sorted(chosen)]
