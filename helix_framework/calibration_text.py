"""Calibration text for data-aware candidates, cut into token windows.

``builtin`` is built at run time, like the evaluation prompts, from text every
machine has: the sources (code, comments, docstrings) of standard-library
modules that the prompt set (`helix_framework.prompts`) does not read, plus
the dialogue written for this purpose in ``data/calibration/``. A user may
give a ``.txt`` file or a directory of them instead.

Windows are contiguous spans of ``tokens`` tokens of the concatenated text,
drawn with a seed (disjoint while the text is long enough). Each window is
used whole from its first token: the first position of a sequence carries a
massive activation that dominates some layers' input statistics, and a
calibration that drops it fits those layers to the wrong inputs.

Text that overlaps the evaluation prompts in any span of `SPAN` tokens is
refused: a candidate fitted on what it is scored on would be scored in-sample.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import platform
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from helix_framework.errors import CalibrationTextError
from helix_framework.prompts import Prompt

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "calibration"

#: Pure-Python stdlib modules with plenty of comments and docstrings, none of
#: which the evaluation prompts read.
BUILTIN_MODULES = (
    "configparser", "logging", "dataclasses", "enum", "pathlib", "csv", "ipaddress", "optparse", "gettext",
    "pprint", "contextlib", "functools", "shlex", "tempfile", "queue", "sched", "uuid", "smtplib",
    "email.message", "urllib.parse", "tokenize", "copy", "numbers", "glob", "fnmatch", "threading",
    "collections", "weakref", "base64", "plistlib", "cmd", "timeit",
)

#: Span length (tokens) of the overlap check against the evaluation prompts.
SPAN = 32


def builtin_documents() -> list[Prompt]:
    """The ``builtin`` calibration text (prompts of kind ``calibration``):
    stdlib sources and the dialogue file."""
    version = platform.python_version()
    docs = []
    for name in BUILTIN_MODULES:
        module = importlib.import_module(name)
        docs.append(Prompt(f"module:{name}", "calibration", f"source of {inspect.getsourcefile(module)} (Python {version})",
                             inspect.getsource(module)))
    dialogue = DATA_DIR / "dialogue.txt"
    if not dialogue.is_file():
        raise CalibrationTextError("is missing (run from a source checkout, or give calibration.text a file)",
                                   file=str(dialogue))
    docs.append(Prompt("dialogue", "calibration", f"{dialogue.name}, written for helix-framework calibration",
                         dialogue.read_text(encoding="utf-8")))
    return docs


def load_documents(text: str) -> list[Prompt]:
    """``builtin``, a ``.txt`` file or a directory of ``*.txt`` files."""
    if text == "builtin":
        return builtin_documents()
    path = Path(text)
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise CalibrationTextError("no *.txt files in the directory", file=str(path))
    elif path.is_file():
        files = [path]
    else:
        raise CalibrationTextError("no such file or directory", file=str(path))
    docs = []
    for f in files:
        try:
            body = f.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CalibrationTextError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", file=str(f)) from None
        except OSError as exc:
            raise CalibrationTextError(f"cannot read: {exc.strerror or exc}", file=str(f)) from None
        if not body.strip():
            raise CalibrationTextError("is empty", file=str(f))
        docs.append(Prompt(f"file:{f.name}", "calibration", str(f), body))
    return docs


def span_hashes(ids: np.ndarray, span: int = SPAN) -> np.ndarray:
    """A 64-bit hash of every run of ``span`` consecutive token ids (empty if
    shorter). Runs of fewer than ``span // 4`` distinct tokens (a line of
    ``=`` signs, indentation) are left out: sharing them is no sign of copying."""
    ids = np.asarray(ids, dtype=np.uint64)
    if ids.size < span:
        return np.empty(0, np.uint64)
    powers = np.array([pow(1_000_003, k, 2**64) for k in range(span)], dtype=np.uint64)
    windows = np.lib.stride_tricks.sliding_window_view(ids, span)
    distinct = (np.diff(np.sort(windows, axis=1), axis=1) != 0).sum(axis=1) + 1
    with np.errstate(over="ignore"):
        hashes = (windows * powers).sum(axis=1, dtype=np.uint64)
    return hashes[distinct >= span // 4]


@attrs.frozen
class CalibrationWindows:
    """Token windows ``ids [sequences, tokens]``, split into fit and held-out windows."""

    ids: np.ndarray = attrs.field(repr=False, eq=False)
    starts: np.ndarray = attrs.field(repr=False, eq=False)
    fit: np.ndarray = attrs.field(repr=False, eq=False)
    held_out: np.ndarray = attrs.field(repr=False, eq=False)
    documents: tuple[Prompt, ...]
    total_tokens: int

    def to_json(self, settings: dict[str, Any]) -> dict[str, Any]:
        """What the manifest records: sources, hashes, windows and the split."""
        text_sha = hashlib.sha256("".join(d.sha256 for d in self.documents).encode()).hexdigest()
        return {
            **settings,
            "sources": [d.to_json() for d in self.documents],
            "sha256": text_sha,
            "total_tokens": self.total_tokens,
            "windows": {
                "count": int(self.ids.shape[0]),
                "tokens": int(self.ids.shape[1]),
                "starts": [int(s) for s in self.starts],
                "ids_sha256": hashlib.sha256(self.ids.astype("<i8").tobytes()).hexdigest(),
                "fit": [int(i) for i in self.fit],
                "held_out": [int(i) for i in self.held_out],
            },
        }


def make_windows(
    tokenizer: Any, documents: list[Prompt], *, sequences: int, tokens: int, seed: int, held_out: float,
    evaluation: list[Prompt] | None = None,
) -> CalibrationWindows:
    """Tokenize the documents, refuse overlap with ``evaluation``, draw the windows."""
    streams = [np.asarray(tokenizer.encode(d.text, add_special_tokens=False), dtype=np.int64) for d in documents]
    where = documents[0].source if len(documents) == 1 else "calibration text"
    if evaluation:
        seen = np.concatenate([span_hashes(np.asarray(tokenizer.encode(p.text, add_special_tokens=False))) for p in evaluation])
        for doc, ids in zip(documents, streams):
            hit = np.isin(span_hashes(ids), seen)
            if hit.any():
                at = int(np.argmax(hit))
                snippet = tokenizer.decode(ids[at : at + SPAN])[:60].replace("\n", " ")
                raise CalibrationTextError(
                    f"shares a {SPAN}-token span with the evaluation prompts (at token {at}: {snippet!r}); "
                    "calibrating on evaluation text would score the candidate in-sample", file=doc.source)
    stream = np.concatenate(streams) if streams else np.empty(0, np.int64)
    if stream.size < tokens:
        raise CalibrationTextError(f"has {stream.size} tokens, shorter than one window of {tokens}", file=where)
    rng = np.random.default_rng(seed)
    slots = stream.size // tokens
    offset = int(rng.integers(0, stream.size - slots * tokens + 1))
    if sequences <= slots:  # disjoint windows
        starts = offset + np.sort(rng.choice(slots, size=sequences, replace=False)) * tokens
    else:
        starts = np.sort(rng.integers(0, stream.size - tokens + 1, size=sequences))
    ids = np.stack([stream[s : s + tokens] for s in starts])
    n_held = int(round(held_out * sequences))
    if held_out > 0 and sequences >= 2:
        n_held = min(max(n_held, 1), sequences - 1)
    perm = rng.permutation(sequences)
    return CalibrationWindows(ids, starts, np.sort(perm[n_held:]), np.sort(perm[:n_held]), tuple(documents),
                              int(stream.size))
