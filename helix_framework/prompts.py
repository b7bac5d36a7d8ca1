"""The prompt set for token agreement: prose, code and dialogue.

The default set is built at run time from text every machine has — the
Python standard library's own docstrings (prose) and sources (code) — plus
the dialogue written for this project in ``data/prompts/``. Nothing is copied
into the repository from elsewhere. Every prompt records where it came from
and the SHA-256 of its text, so a result names exactly what it read. The
stdlib text depends on the Python version, which is recorded too.

``--prompts DIR`` replaces the set with the user's own ``*.txt`` files.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import platform
from pathlib import Path

import attrs

from helix_framework.errors import ConfigError

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "prompts"

# Pure-Python stdlib modules whose docstrings read as English prose and whose
# sources are ordinary, well-commented Python.
PROSE_MODULES = ("json", "argparse", "textwrap", "statistics", "heapq", "bisect", "fractions", "difflib",
                 "shutil", "string", "calendar", "random")
CODE_MODULES = ("textwrap", "heapq", "bisect", "fractions", "statistics", "difflib")
CODE_CHARS = 4000


@attrs.frozen
class Prompt:
    name: str
    kind: str  # prose | code | dialogue | user
    source: str
    text: str = attrs.field(repr=False)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "kind": self.kind, "source": self.source, "sha256": self.sha256,
                "chars": len(self.text)}


def default_prompts() -> list[Prompt]:
    """Prose and code from the standard library, dialogue from data/prompts/."""
    version = platform.python_version()
    prompts = []
    for name in PROSE_MODULES:
        module = importlib.import_module(name)
        parts = [inspect.getdoc(module) or ""]
        for attr in sorted(getattr(module, "__all__", []))[:6]:
            doc = inspect.getdoc(getattr(module, attr, None))
            if doc and len(doc) > 80:
                parts.append(doc)
        text = "\n\n".join(p for p in parts if p)
        prompts.append(Prompt(f"prose:{name}", "prose", f"docstrings of the stdlib module {name} (Python {version})", text))
    for name in CODE_MODULES:
        module = importlib.import_module(name)
        source = inspect.getsource(module)
        # skip the module docstring and license header: start at the first import
        start = source.find("\nimport ")
        text = source[start + 1 if start >= 0 else 0:][:CODE_CHARS]
        prompts.append(Prompt(f"code:{name}", "code", f"source of {inspect.getsourcefile(module)} (Python {version})", text))
    dialogue = DATA_DIR / "dialogue.txt"
    if not dialogue.is_file():
        raise ConfigError(f"{dialogue} is missing (run from a source checkout, or pass --prompts DIR)")
    # each blank-line-free block of turns is one prompt
    for i, block in enumerate(_dialogue_blocks(dialogue.read_text(encoding="utf-8"))):
        prompts.append(Prompt(f"dialogue:{i}", "dialogue", f"{dialogue.name}, written for helix-framework", block))
    return _interleave(prompts)


def _interleave(prompts: list[Prompt]) -> list[Prompt]:
    """prose, code, dialogue, prose, code, ...: any prefix of the set (the
    first N positions) mixes all three kinds."""
    by_kind: dict[str, list[Prompt]] = {}
    for p in prompts:
        by_kind.setdefault(p.kind, []).append(p)
    out = []
    while any(by_kind.values()):
        for queue in by_kind.values():
            if queue:
                out.append(queue.pop(0))
    return out


def _dialogue_blocks(text: str, turns: int = 8) -> list[str]:
    lines = [line for line in text.splitlines() if line.strip()]
    return ["\n".join(lines[i : i + turns]) for i in range(0, len(lines), turns)]


def load_prompts(directory: str | Path | None) -> list[Prompt]:
    """The user's ``*.txt`` prompts (sorted by name), or the default set."""
    if directory is None:
        return default_prompts()
    directory = Path(directory)
    files = sorted(directory.glob("*.txt")) if directory.is_dir() else []
    if not files:
        raise ConfigError(f"{directory}: no *.txt prompt files", path="--prompts")
    prompts = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{f}: cannot read as UTF-8 text: {exc}", path="--prompts") from None
        if text.strip():
            prompts.append(Prompt(f"user:{f.stem}", "user", str(f), text))
    return prompts
