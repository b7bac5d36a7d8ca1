"""A Hugging Face style model directory.

``config.json`` plus either ``model.safetensors`` or the shards listed in
``model.safetensors.index.json`` (``weight_map: tensor -> shard file``).
Every shard the index names must exist inside the directory and hold the
tensors the index assigns to it. Tensors are listed shard by shard (shards
in name order), each shard in data order.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from helix_framework.errors import SourceError
from helix_framework.sources.base import PICKLE_REFUSAL, ModelSource, RawTensor, parse_json
from helix_framework.sources.safetensors_file import SafetensorsFile

logger = logging.getLogger(__name__)

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.bin")

#: Files `tokenizer_files` reports (and decode copies) when present.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "chat_template.jinja",
    "chat_template.json",
)


def _load_json(path: Path, what: str) -> Any:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SourceError(f"cannot read {what}: {exc}", path=str(path)) from None
    return parse_json(raw, path=str(path), what=what)


def architecture_of(config: dict[str, Any]) -> str | None:
    """First of ``architectures``, else ``model_type``, else None."""
    archs = config.get("architectures")
    if isinstance(archs, list) and archs and isinstance(archs[0], str):
        return archs[0]
    mt = config.get("model_type")
    return mt if isinstance(mt, str) and mt else None


class HFDirectorySource(ModelSource):
    """A Hugging Face directory: config.json and safetensors weights (sharded or not)."""

    kind = "hf_directory"

    def __init__(self, path: Path):
        super().__init__(Path(path))
        d = self.path
        cfg_path = d / "config.json"
        if not cfg_path.is_file():
            raise SourceError(
                "not a Hugging Face model directory: no config.json "
                "(to read a bare weights file, open the .safetensors file itself)",
                path=str(d),
            )
        config = _load_json(cfg_path, "config.json")
        if not isinstance(config, dict):
            raise SourceError("config.json is not a JSON object", path=str(cfg_path))
        self.config = config
        self.architecture = architecture_of(config)
        self._extra_files: dict[str, Path] = {"config.json": cfg_path}

        shard_names = self._find_weights()
        self._files: dict[str, SafetensorsFile] = {}
        self._owner: dict[str, SafetensorsFile] = {}
        for shard in shard_names:
            sf = SafetensorsFile(d / shard)
            self._files[shard] = sf
            for name, info in sf.entries.items():
                if name in self._owner:
                    raise SourceError(
                        f"tensor stored twice: in {self._owner[name].path.name} and {shard}",
                        path=str(d),
                        tensor=name,
                    )
                self._owner[name] = sf
                self._infos[name] = info
        if self._weight_map is not None:
            for name, shard in self._weight_map.items():
                if name not in self._owner or self._owner[name].path.name != Path(shard).name:
                    raise SourceError(
                        f"{INDEX} places this tensor in {shard}, but that shard does not hold it",
                        path=str(d),
                        tensor=name,
                    )
            extra = [n for n in self._infos if n not in self._weight_map]
            if extra:
                logger.warning("%s: %d tensors in the shards are not in %s (kept): %s", d, len(extra), INDEX, extra[:5])
        logger.info(
            "opened HF directory %s: %s, %d tensors in %d file(s)",
            d, self.architecture, len(self._infos), len(self._files),
        )

    def _find_weights(self) -> list[str]:
        d = self.path
        self._weight_map: dict[str, str] | None = None
        if (d / SINGLE).is_file():
            return [SINGLE]
        if (d / INDEX).is_file():
            index_path = d / INDEX
            index = _load_json(index_path, INDEX)
            wm = index.get("weight_map") if isinstance(index, dict) else None
            if not isinstance(wm, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in wm.items()):
                raise SourceError("index has no valid weight_map (tensor name -> shard file)", path=str(index_path))
            self._weight_map = wm
            self._extra_files[INDEX] = index_path
            root = d.resolve()
            shards = sorted(set(wm.values()))
            for shard in shards:
                p = (d / shard).resolve()
                if p.parent != root:
                    raise SourceError(f"index names a shard outside the model directory: {shard!r}", path=str(index_path))
                if not p.is_file():
                    n = sum(1 for v in wm.values() if v == shard)
                    raise SourceError(
                        f"shard {shard!r} listed in {INDEX} ({n} tensors) is missing from the directory",
                        path=str(d),
                    )
            return shards
        for name in PICKLE_WEIGHTS:
            if (d / name).exists():
                raise SourceError(PICKLE_REFUSAL, path=str(d / name))
        found = sorted(p.name for p in d.glob("*.safetensors"))
        hint = f" (found {', '.join(found)}; open one directly)" if found else ""
        raise SourceError(f"no {SINGLE} and no {INDEX} in the directory{hint}", path=str(d))

    def read(self, name: str) -> np.ndarray:
        """See `ModelSource.read`."""
        self.tensor(name)
        return self._owner[name].read(name)

    def read_raw(self, name: str) -> RawTensor:
        """See `ModelSource.read_raw`."""
        info = self.tensor(name)
        return RawTensor(info.dtype, info.shape, self._owner[name].raw(name))

    def tokenizer_files(self) -> list[Path]:
        """Tokenizer files present in the directory, in a fixed order."""
        return [self.path / n for n in TOKENIZER_FILES if (self.path / n).is_file()]

    def _hashed_files(self) -> dict[str, Path]:
        files = dict(self._extra_files)
        for shard, sf in self._files.items():
            files[shard] = sf.path
        for p in self.tokenizer_files():
            files[p.name] = p
        return files

    def close(self) -> None:
        """See `ModelSource.close`."""
        for sf in self._files.values():
            sf.close()
