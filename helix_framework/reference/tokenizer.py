"""Tokenizers for the reference models, through the `tokenizers` package.

- A Hugging Face directory: its ``tokenizer.json`` (padding switched off,
  BERT's tokenizer.json pads every input to 128 otherwise; truncation to
  sentence-transformers' ``max_seq_length`` when the directory has one).
- A GGUF file: a byte-level BPE rebuilt from ``tokenizer.ggml.tokens`` and
  ``tokenizer.ggml.merges``, with the pre-tokenizer llama.cpp uses for
  ``tokenizer.ggml.pre`` (SmolLM: every digit on its own, then GPT-2's
  regex), control tokens as special tokens, and ``add_bos_token`` honoured.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from helix_framework.reference.base import ReferenceModelError
from helix_framework.sources import GGUFSource, ModelSource, open_source

logger = logging.getLogger(__name__)

#: GPT-2's pre-tokenizer regex (what ByteLevel(use_regex=True) applies).
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
#: llama.cpp's LLAMA3 pre-tokenizer regex.
LLAMA3_PATTERN = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
#: llama.cpp's QWEN2 pre-tokenizer regex (digits one at a time).
QWEN2_PATTERN = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
#: ``tokenizer.ggml.pre`` values -> pre-tokenizer recipe.
GGUF_PRE = {
    "default": "gpt2",
    "gpt2": "gpt2",
    "smollm": "digits+gpt2",
    "starcoder": "digits+gpt2",
    "refact": "digits+gpt2",
    "codeshell": "digits+gpt2",
    "llama3": "llama3",
    "llama-v3": "llama3",
    "llama-bpe": "llama3",
    "smaug-bpe": "llama3",
    "falcon3": "llama3",
    "qwen2": "qwen2",
    "deepseek-r1-qwen": "qwen2",
}
#: GGUF token types (llama.cpp's LLAMA_TOKEN_TYPE_*).
TOKEN_CONTROL, TOKEN_USER_DEFINED = 3, 4


class Tokenizer:
    """Text <-> token ids for one model.

    ``bos_id`` / ``eos_id`` may be None; ``chat_template`` is the model's
    Jinja template (or None). `encode` adds the model's own special tokens
    (BERT's [CLS] ... [SEP], a BOS where the model asks for one) unless told
    not to.
    """

    def __init__(
        self,
        backend: Any,
        *,
        bos_id: int | None = None,
        eos_id: int | None = None,
        chat_template: str | None = None,
        name: str = "",
    ):
        self.backend = backend
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.chat_template = chat_template
        self.name = name

    @property
    def vocab_size(self) -> int:
        """Tokens in the vocabulary, added tokens included."""
        return int(self.backend.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``."""
        return list(self.backend.encode(text, add_special_tokens=add_special_tokens).ids)

    def encode_batch(self, texts: Sequence[str], *, add_special_tokens: bool = True) -> list[list[int]]:
        """Token ids of several texts (no padding)."""
        return [list(e.ids) for e in self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def decode(self, ids: Iterable[int] | np.ndarray, *, skip_special_tokens: bool = False) -> str:
        """Text of ``ids``."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        """Id of a token string, or None."""
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        """Token string of an id, or None."""
        return self.backend.id_to_token(int(token_id))

    def apply_chat_template(self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True) -> str:
        """Render ``messages`` (``{"role", "content"}`` dicts) with the
        model's chat template, in a sandboxed Jinja environment as
        transformers does. Needs jinja2 (ReferenceModelError otherwise)."""
        if not self.chat_template:
            raise ReferenceModelError(f"tokenizer {self.name or ''} has no chat template".replace("  ", " "))
        try:
            from jinja2.exceptions import TemplateError
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError:
            raise ReferenceModelError("rendering a chat template needs jinja2: pip install jinja2") from None

        def raise_exception(message: str) -> None:
            raise TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        try:
            template = env.from_string(self.chat_template)
            return template.render(
                messages=[dict(m) for m in messages],
                add_generation_prompt=add_generation_prompt,
                bos_token=self.id_to_token(self.bos_id) if self.bos_id is not None else "",
                eos_token=self.id_to_token(self.eos_id) if self.eos_id is not None else "",
            )
        except TemplateError as exc:
            raise ReferenceModelError(f"chat template failed: {exc}") from None

    def __repr__(self) -> str:
        return f"<Tokenizer {self.name!r}: {self.vocab_size} tokens, bos={self.bos_id}, eos={self.eos_id}>"


def _tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError:
        raise ReferenceModelError("tokenizers are built with the 'tokenizers' package: pip install tokenizers") from None
    return tokenizers


def _special_id(backend: Any, value: Any) -> int | None:
    if isinstance(value, dict):
        value = value.get("content")
    if isinstance(value, str):
        return backend.token_to_id(value)
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReferenceModelError(f"{path}: cannot read: {exc}") from None
    return data if isinstance(data, dict) else {}


def tokenizer_from_directory(directory: str | os.PathLike[str]) -> Tokenizer:
    """The tokenizer of a Hugging Face directory (its tokenizer.json)."""
    tk = _tokenizers()
    d = Path(directory)
    path = d / "tokenizer.json"
    if not path.is_file():
        raise ReferenceModelError(f"{d}: no tokenizer.json (only the fast-tokenizer format is supported)")
    backend = tk.Tokenizer.from_file(str(path))
    # Reference passes take one unpadded sequence; BERT's file pads to 128.
    backend.no_padding()
    st = d / "sentence_bert_config.json"
    if st.is_file() and isinstance(_read_json(st).get("max_seq_length"), int):
        backend.enable_truncation(max_length=_read_json(st)["max_seq_length"])
    else:
        backend.no_truncation()
    cfg = _read_json(d / "tokenizer_config.json") if (d / "tokenizer_config.json").is_file() else {}
    special = _read_json(d / "special_tokens_map.json") if (d / "special_tokens_map.json").is_file() else {}
    model_cfg = _read_json(d / "config.json") if (d / "config.json").is_file() else {}
    bos = _special_id(backend, special.get("bos_token", cfg.get("bos_token")))
    eos = _special_id(backend, special.get("eos_token", cfg.get("eos_token")))
    if bos is None and isinstance(model_cfg.get("bos_token_id"), int):
        bos = model_cfg["bos_token_id"]
    if eos is None and isinstance(model_cfg.get("eos_token_id"), int):
        eos = model_cfg["eos_token_id"]
    template = cfg.get("chat_template")
    if (d / "chat_template.jinja").is_file():
        template = (d / "chat_template.jinja").read_text(encoding="utf-8")
    if not isinstance(template, str):
        template = None
    tok = Tokenizer(backend, bos_id=bos, eos_id=eos, chat_template=template, name=str(d))
    logger.info("loaded %r", tok)
    return tok


def tokenizer_from_gguf(source: GGUFSource) -> Tokenizer:
    """A byte-level BPE rebuilt from a GGUF file's tokenizer metadata."""
    tk = _tokenizers()
    from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors

    fields = source.metadata
    meta = source.config

    def array(key: str) -> list[Any]:
        if key not in fields:
            raise ReferenceModelError(f"{source.path}: GGUF has no {key}; cannot build its tokenizer")
        return list(fields[key])

    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ReferenceModelError(
            f"{source.path}: GGUF tokenizer model {kind!r} is not supported (only byte-level BPE, 'gpt2')"
        )
    tokens = array("tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in array("tokenizer.ggml.merges")]
    types = array("tokenizer.ggml.token_type") if "tokenizer.ggml.token_type" in fields else [1] * len(tokens)
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        logger.warning("%s: %d duplicate token strings in the GGUF vocabulary", source.path, len(tokens) - len(vocab))
    backend = tk.Tokenizer(models.BPE(vocab, merges, fuse_unk=False, byte_fallback=False))
    pre = str(meta.get("tokenizer.ggml.pre", "default"))
    recipe = GGUF_PRE.get(pre)
    if recipe is None:
        raise ReferenceModelError(
            f"{source.path}: GGUF pre-tokenizer {pre!r} is not supported (supported: {', '.join(sorted(GGUF_PRE))})"
        )
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if recipe == "gpt2":
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    elif recipe == "digits+gpt2":
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
        )
    else:
        pattern = LLAMA3_PATTERN if recipe == "llama3" else QWEN2_PATTERN
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False), byte_level]
        )
        if recipe == "qwen2":
            backend.normalizer = normalizers.NFC()
    backend.decoder = decoders.ByteLevel()
    added = [
        AddedToken(tokens[i], special=(t == TOKEN_CONTROL), normalized=False)
        for i, t in enumerate(types)
        if t in (TOKEN_CONTROL, TOKEN_USER_DEFINED)
    ]
    backend.add_tokens([a for a in added if not a.special])
    backend.add_special_tokens([a for a in added if a.special])
    bos = meta.get("tokenizer.ggml.bos_token_id")
    eos = meta.get("tokenizer.ggml.eos_token_id")
    if meta.get("tokenizer.ggml.add_bos_token") and isinstance(bos, int):
        backend.post_processor = processors.TemplateProcessing(
            single=f"{tokens[bos]} $A", pair=f"{tokens[bos]} $A {tokens[bos]} $B", special_tokens=[(tokens[bos], bos)]
        )
    else:
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
    template = meta.get("tokenizer.chat_template")
    tok = Tokenizer(
        backend,
        bos_id=bos if isinstance(bos, int) else None,
        eos_id=eos if isinstance(eos, int) else None,
        chat_template=template if isinstance(template, str) else None,
        name=str(source.path),
    )
    logger.info("rebuilt %r from GGUF metadata (pre-tokenizer %s)", tok, pre)
    return tok


def load_tokenizer(source: ModelSource | str | os.PathLike[str]) -> Tokenizer:
    """The tokenizer of a model source: a GGUF file's metadata, or the
    tokenizer.json of a Hugging Face directory (a path to either works)."""
    if not isinstance(source, ModelSource):
        source = open_source(source)
    if isinstance(source, GGUFSource):
        return tokenizer_from_gguf(source)
    if source.kind == "hf_directory":
        return tokenizer_from_directory(source.path)
    parent = Path(source.path).parent
    if (parent / "tokenizer.json").is_file():
        return tokenizer_from_directory(parent)
    raise ReferenceModelError(f"{source.path}: no tokenizer found (a GGUF file or a directory with tokenizer.json)")
