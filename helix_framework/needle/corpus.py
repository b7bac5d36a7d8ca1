"""The needle corpus: four content types, generated at run time, reproducibly.

Nothing is copied into the repository. Every document comes from material
every Python installation has, or is written here from a seed:

- code: the source of standard-library modules, as installed, with the
  values of its literal assignments (``name = 123``) replaced from the seed,
  so every needle is unique and no reader can recall it from pretraining;
- diff: `difflib.unified_diff` between a standard-library module and a
  version of it whose literal assignments were re-valued from the seed;
- log: the output of really running ``python -m unittest -v`` on a small
  suite generated from the seed (tests that pass, fail, error and skip, and
  log ``key=value`` records through `logging`); two run-dependent details
  are normalised so the text is byte-identical across runs: the temporary
  directory becomes ``<suite>`` and the "Ran N tests in X s" time ``0.000s``;
- prose: the docstrings of standard-library modules (module, classes,
  functions) with a few fact sentences from the seed between paragraphs.

The same seed on the same Python gives the same corpus (`Corpus.sha256`);
another Python version has other standard-library sources, hence another
corpus. Needles come from `harvest` with its rules.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import importlib.util
import json
import os
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import attrs

from helix_framework.bounded_read import read_regular_file
from helix_framework.errors import CorpusError
from helix_framework.needle.grading import count_token, token_positions
from helix_framework.needle.harvest import Candidate, Needle, harvest_diff, harvest_python, harvest_text, select_needles

__all__ = ["CONTENT_TYPES", "Corpus", "Doc", "build_corpus", "load_corpus"]

CONTENT_TYPES: tuple[str, ...] = ("code", "log", "diff", "prose")

# Disjoint module lists so one module's values cannot collide with itself
# across types. Modules missing on a given Python are skipped.
CODE_MODULES = (
    "imaplib", "ftplib", "smtplib", "poplib", "tarfile", "zipfile", "gzip", "lzma", "socketserver",
    "logging.handlers", "http.cookiejar", "ssl", "ipaddress", "uuid", "calendar", "shutil",
)
DIFF_MODULES = (
    "http.client", "urllib.request", "subprocess", "asyncio.base_events", "email.utils", "pickle",
    "pydoc", "argparse", "configparser", "selectors", "platform", "mailbox", "nntplib", "telnetlib",
    "xmlrpc.client", "email.charset",
)
PROSE_MODULES = (
    "json", "textwrap", "fractions", "statistics", "heapq", "bisect", "functools", "itertools",
    "contextlib", "dataclasses", "enum", "string", "collections", "difflib", "shlex", "pathlib",
)

#: Documents per content type by default: about 250 needles on Python 3.11.
DEFAULT_DOCS = {"code": 10, "log": 3, "diff": 12, "prose": 6}

_PROSE_DOC_CHARS = 14_000


@attrs.frozen
class Doc:
    """One document the reader gets (compressed) as its whole context."""

    doc_id: str
    content_type: str
    text: str
    source: str  # where it came from, for the report


@attrs.frozen
class Corpus:
    seed: int
    docs: tuple[Doc, ...]
    needles: tuple[Needle, ...]

    @property
    def sha256(self) -> str:
        h = hashlib.sha256()
        for d in self.docs:
            h.update(f"{d.doc_id}\0{d.content_type}\0{len(d.text)}\0".encode())
            h.update(d.text.encode("utf-8", "surrogatepass"))
        return h.hexdigest()

    def needles_of(self, doc_id: str) -> list[Needle]:
        return [n for n in self.needles if n.doc_id == doc_id]

    def summary(self) -> dict:
        by_type = {t: {"docs": 0, "needles": 0, "chars": 0} for t in CONTENT_TYPES}
        for d in self.docs:
            by_type[d.content_type]["docs"] += 1
            by_type[d.content_type]["chars"] += len(d.text)
        for n in self.needles:
            by_type[n.content_type]["needles"] += 1
        return {
            "seed": self.seed,
            "sha256": self.sha256,
            "python": sys.version.split()[0],
            "docs": len(self.docs),
            "needles": len(self.needles),
            "by_type": by_type,
        }


def _module_source(name: str) -> tuple[str, str] | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    origin = getattr(spec, "origin", None)
    if not origin or not origin.endswith(".py") or not os.path.isfile(origin):
        return None
    return Path(origin).read_text(encoding="utf-8"), name


def _available(names: tuple[str, ...], n: int) -> list[tuple[str, str]]:
    out = []
    for name in names:
        if len(out) == n:
            break
        got = _module_source(name)
        if got is not None:
            out.append(got)
    return out


# -- values and keys written for this project --------------------------------

_WORDS_A = ("archive", "ingest", "replica", "shard", "cache", "queue", "backup", "gateway", "ledger", "index",
            "mirror", "relay", "vault", "beacon", "cluster", "spool", "batch", "export", "quota", "sensor")
_WORDS_B = ("timeout", "port", "limit", "window", "version", "host", "budget", "region", "epoch", "token",
            "offset", "ceiling", "interval", "build", "node", "slot", "revision", "channel", "threshold", "seed")
_REGIONS = ("eu-west-3", "us-east-2", "ap-south-1", "sa-east-1", "ca-central-1")


def _value(rng: random.Random) -> str:
    kind = rng.randrange(7)
    if kind == 0:
        return str(rng.randrange(10_000, 999_999))
    if kind == 1:
        return f"{rng.randrange(1, 99)}.{rng.randrange(1000, 9999)}"
    if kind == 2:
        return f"{rng.randrange(2, 30)}.{rng.randrange(10, 99)}.{rng.randrange(100, 999)}"
    if kind == 3:
        return f"node-{rng.randrange(100, 999)}.{rng.choice(_REGIONS)}"
    if kind == 4:
        return f"0x{rng.randrange(0x10000, 0xFFFFFF):06x}"
    if kind == 5:
        return f"{rng.choice(_WORDS_A)}-{rng.randrange(1000, 9999)}{rng.choice('abcdef')}"
    return f"{rng.randrange(100, 9999)}ms"


def _keys(rng: random.Random, n: int) -> list[str]:
    pairs = [f"{a}_{b}" for a in _WORDS_A for b in _WORDS_B]
    return rng.sample(pairs, n)


# -- code ----------------------------------------------------------------------


def _code_docs(n: int, seed: int) -> list[tuple[Doc, list[Candidate]]]:
    out = []
    for old, name in _available(CODE_MODULES, n):
        text = _revalue(old, random.Random(f"{seed}:code:{name}"), 1.0)
        out.append((Doc(f"code:{name}", "code", text, f"stdlib {name}, literal assignments re-valued"),
                    harvest_python(text)))
    return out


# -- diff ----------------------------------------------------------------------


def _revalue(text: str, rng: random.Random, fraction: float) -> str:
    """A new version of ``text``: about ``fraction`` of its harvestable
    numeric assignments get new values from ``rng`` (same kind of literal);
    the rest is kept. The source still parses."""
    lines = text.splitlines(keepends=True)
    cands = [c for c in harvest_python(text) if re.fullmatch(r"\d+(?:\.\d+)?", c.value)]
    for c in cands:
        if rng.random() >= fraction:
            continue
        line = lines[c.line - 1]
        new = f"{rng.randrange(1, 99)}.{rng.randrange(1000, 9999)}" if "." in c.value else str(rng.randrange(10_000, 9_999_999))
        head, sep, tail = line.partition("=")
        lines[c.line - 1] = head + sep + tail.replace(c.value, new, 1)
    return "".join(lines)


def _diff_docs(n: int, seed: int) -> list[tuple[Doc, list[Candidate]]]:
    out = []
    for old, name in _available(DIFF_MODULES, n):
        rng = random.Random(f"{seed}:diff:{name}")
        new = _revalue(old, rng, 1.0)
        rel = name.replace(".", "/") + ".py"
        diff = "".join(difflib.unified_diff(
            old.splitlines(keepends=True), new.splitlines(keepends=True), f"a/Lib/{rel}", f"b/Lib/{rel}", n=3))
        if diff:
            diff = f"diff --git a/Lib/{rel} b/Lib/{rel}\n" + diff
            out.append((Doc(f"diff:{name}", "diff", diff, f"difflib: stdlib {name} vs a re-valued copy"),
                        harvest_diff(diff, new)))
    return out


# -- log -----------------------------------------------------------------------

_COMPONENTS = ("scheduler", "storage", "auth", "billing", "search", "mailer", "render", "metrics")


def _suite_source(rng: random.Random, n_tests: int) -> str:
    keys = _keys(rng, n_tests * 2)
    lines = [
        "import logging, sys, unittest",
        'logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")',
        "",
        "",
        "def check_total(items, expected):",
        "    assert sum(items) == expected, f'total {sum(items)} != expected {expected}'",
        "",
        "",
        "class ServiceTests(unittest.TestCase):",
    ]
    for i in range(n_tests):
        comp = rng.choice(_COMPONENTS)
        k1, k2 = keys[2 * i], keys[2 * i + 1]
        v1, v2 = _value(rng), _value(rng)
        level = rng.choice(("info", "info", "debug", "warning"))
        outcome = rng.choices(("pass", "fail", "error", "skip", "assert"), (10, 2, 1, 1, 1))[0]
        lines.append(f"    def test_{i:02d}_{comp}_{k1.split('_')[1]}(self):")
        lines.append(f"        log = logging.getLogger('svc.{comp}')")
        lines.append(f"        log.{level}('step {i} ready {k1}={v1} attempt {rng.randrange(1, 5)}')")
        if rng.random() < 0.6:
            lines.append(f"        log.info('configured {k2}={v2} for {comp}')")
        items = [rng.randrange(1, 50) for _ in range(rng.randrange(2, 6))]
        if outcome == "pass":
            lines.append(f"        self.assertEqual(sum({items}), {sum(items)})")
        elif outcome == "fail":
            lines.append(f"        self.assertEqual(sum({items}), {sum(items) + rng.randrange(1, 9)})")
        elif outcome == "error":
            lines.append("        log.error('request failed, retrying')")
            lines.append(f"        raise ConnectionError('connection reset by peer during {comp} sync')")
        elif outcome == "skip":
            lines.append(f"        self.skipTest('{comp} backend not configured')")
        else:
            lines.append(f"        check_total({items}, {sum(items) + 1})")
        lines.append("")
    return "\n".join(lines) + "\n"


def _run_suite(source: str) -> str:
    with tempfile.TemporaryDirectory(prefix="helix-needle-") as tmp:
        Path(tmp, "test_service.py").write_text(source)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        env["PYTHONHASHSEED"] = "0"
        proc = subprocess.run(
            [sys.executable, "-E", "-s", "-m", "unittest", "-v", "test_service"],
            cwd=tmp, capture_output=True, text=True, env=env, timeout=120,
        )
        out = proc.stdout + proc.stderr
        out = out.replace(os.path.realpath(tmp), "<suite>").replace(tmp, "<suite>")
    return re.sub(r"(Ran \d+ tests? in )\d+\.\d+s", r"\g<1>0.000s", out)


def _log_docs(n: int, seed: int) -> list[tuple[Doc, list[Candidate]]]:
    out = []
    for i in range(n):
        rng = random.Random(f"{seed}:log:{i}")
        text = _run_suite(_suite_source(rng, 24))
        out.append((Doc(f"log:unittest-{i}", "log", text, "python -m unittest -v on a generated suite"),
                    harvest_text(text)))
    return out


# -- prose ---------------------------------------------------------------------

_FACTS = (
    "Operations note: for {subject}, the value in force is {key}={value}, as agreed at the last review.",
    "The deployment record for {subject} lists {key}={value} among its settings.",
    "Measured on the reference machine, {subject} ran with {key}={value} throughout.",
    "Until further notice {subject} keeps {key}={value}; change it only with a ticket.",
)
_SUBJECTS = ("the nightly build", "the archive service", "the staging cluster", "the mail relay",
             "the search index", "the billing export", "the metrics pipeline", "the backup job")


def _docstrings(text: str, name: str) -> list[str]:
    tree = ast.parse(text)
    paras = []
    doc = ast.get_docstring(tree)
    if doc:
        paras.append(f"{name}\n\n{doc}")
    for node in ast.walk(tree):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc) > 80:
                paras.append(f"{node.name}\n\n{doc}")
    return paras


def _prose_docs(n: int, seed: int) -> list[tuple[Doc, list[Candidate]]]:
    out = []
    for text, name in _available(PROSE_MODULES, n):
        rng = random.Random(f"{seed}:prose:{name}")
        paras, size = [], 0
        for p in _docstrings(text, name):
            if size + len(p) > _PROSE_DOC_CHARS:
                break
            paras.append(p)
            size += len(p) + 2
        n_facts = 12
        keys = _keys(rng, n_facts)
        for key in keys:
            fact = rng.choice(_FACTS).format(subject=rng.choice(_SUBJECTS), key=key, value=_value(rng))
            paras.insert(rng.randrange(len(paras) + 1), fact)
        doc = "\n\n".join(paras) + "\n"
        out.append((Doc(f"prose:{name}", "prose", doc, f"docstrings of stdlib {name} + seeded facts"),
                    harvest_text(doc, prose=True)))
    return out


def build_corpus(seed: int = 0, docs: dict[str, int] | None = None) -> Corpus:
    """Build the corpus (about 2 s: it runs the log suites). ``docs`` maps a
    content type to its number of documents (default `DEFAULT_DOCS`; 0 or
    absent leaves the type out when a mapping is given)."""
    counts = dict(DEFAULT_DOCS) if docs is None else {t: int(docs.get(t, 0)) for t in CONTENT_TYPES}
    parts: list[tuple[Doc, list[Candidate]]] = []
    parts += _code_docs(counts.get("code", 0), seed)
    parts += _log_docs(counts.get("log", 0), seed)
    parts += _diff_docs(counts.get("diff", 0), seed)
    parts += _prose_docs(counts.get("prose", 0), seed)
    needles = select_needles((d.doc_id, d.content_type, d.text, cands) for d, cands in parts)
    return Corpus(seed=seed, docs=tuple(d for d, _ in parts), needles=tuple(needles))


#: Largest corpus file (manifest or document) read: far more than a reader's window.
MAX_FILE_BYTES = 64 * 1024 * 1024


def _read_document(path: Path) -> str:
    data = read_regular_file(path, MAX_FILE_BYTES)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(f"not UTF-8 (byte {exc.start}: {data[exc.start:exc.start + 1]!r})", file=str(path)) from None
    if not text.strip():
        raise CorpusError("document is empty", file=str(path))
    return text


def load_corpus(manifest: str | os.PathLike[str]) -> Corpus:
    """A corpus of your own documents, from a JSON manifest::

        {"documents": [{"path": "service.log", "content_type": "log",
                        "needles": [{"key": "retry_limit", "value": "17"}]}]}

    ``path`` is relative to the manifest; ``content_type`` one of
    `CONTENT_TYPES`; ``id`` optional (default the path). Every document must
    be non-empty UTF-8, and every needle's value must occur exactly once in
    its document as a whole token (`grading`), or the question has no single
    answer. Any violation raises `CorpusError` naming the file (and key); a
    file that is missing, not a regular file or over `MAX_FILE_BYTES`,
    `InputFileError`.
    """
    where = str(manifest)
    try:
        spec = json.loads(read_regular_file(manifest, MAX_FILE_BYTES).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorpusError(f"not a JSON manifest: {exc}", file=where) from None
    entries = spec.get("documents") if isinstance(spec, dict) else None
    if not isinstance(entries, list) or not entries:
        raise CorpusError('needs a non-empty "documents" list', file=where)
    docs: list[Doc] = []
    needles: list[Needle] = []
    for i, entry in enumerate(entries):
        ok = isinstance(entry, dict) and isinstance(entry.get("path"), str) and isinstance(entry.get("needles"), list)
        if not ok or entry.get("content_type") not in CONTENT_TYPES:
            raise CorpusError(f"documents[{i}] needs path, content_type ({', '.join(CONTENT_TYPES)}) and a "
                              "needles list", file=where)
        path = Path(manifest).parent / entry["path"]
        text = _read_document(path)
        doc = Doc(str(entry.get("id") or entry["path"]), entry["content_type"], text, str(path))
        if any(d.doc_id == doc.doc_id for d in docs):
            raise CorpusError(f"documents[{i}]: id {doc.doc_id!r} used twice", file=where)
        docs.append(doc)
        for needle in entry["needles"]:
            key, value = (needle.get("key"), needle.get("value")) if isinstance(needle, dict) else (None, None)
            if not (isinstance(key, str) and key and isinstance(value, str) and value.strip() == value and value):
                raise CorpusError(f"documents[{i}]: each needle needs a non-empty key and value (strings, value "
                                  "without surrounding spaces)", file=where)
            n = count_token(text, value, limit=2)
            if n != 1:
                problem = "does not occur" if n == 0 else "is not unique: it occurs more than once"
                raise CorpusError(f"value {value!r} {problem} in the document as a whole token", file=str(path),
                                  key=key)
            line = text.count("\n", 0, next(token_positions(text, value))) + 1
            needles.append(Needle(doc.doc_id, doc.content_type, key, value, line))
    return Corpus(seed=0, docs=tuple(docs), needles=tuple(needles))
