"""The reader of ``helix needle --answer``: a chat decoder answering from a document.

The prompt is the model's own chat template (ChatML for SmolLM2, read from
the GGUF metadata; plain ChatML when a model has none) with one user message,
``DOCUMENT + "\\n\\n" + QUESTION``, after the template's default system
message. It is tokenized in three parts so the document's KV cache can be
computed once and reused for every question of it: the template head and the
document (cut to ``window`` tokens) form the prefix; the question and the
template tail (``<|im_end|>``, ``<|im_start|>assistant``) are appended per
question, then greedy decoding of at most ``max_new_tokens`` tokens stops
at the end-of-turn token. After each question the cache is rewound to the
prefix, so the next question sees exactly the same prefix.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from helix_framework.reference.base import DecoderModel, KVCache, ReferenceModelError

__all__ = ["ChatReader", "Prefix", "load_chat_reader"]

#: Used when a model's tokenizer carries no chat template (SmolLM2's is this
#: with a default system message).
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_DOC, _QUESTION = "\x00DOCUMENT\x00", "\x00QUESTION\x00"
_SEPARATOR = "\n\n"


@attrs.frozen
class Prefix:
    """A document as the reader got it: ``ids`` (the document's tokens after
    the window cut), ``text`` (those tokens decoded: the context survival is
    graded on), ``tokens`` (the document's tokens before the cut)."""

    ids: tuple[int, ...]
    text: str
    tokens: int

    @property
    def cut(self) -> bool:
        return self.tokens > len(self.ids)


@attrs.define
class _Open:
    cache: KVCache
    length: int


class ChatReader:
    """Answers questions about one document at a time with a KV cache.

    ``tokens_read`` counts every position run through the model (prefix,
    question and generated tokens); ``seconds`` the time spent doing it.
    """

    def __init__(self, model: DecoderModel, tokenizer: Any, *, name: str, window: int = 1024,
                 max_new_tokens: int = 16):
        if window < 1 or max_new_tokens < 1:
            raise ReferenceModelError(f"window and max_new_tokens must be >= 1; got {window}, {max_new_tokens}")
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.window, self.max_new_tokens = window, max_new_tokens
        #: "model" when the tokenizer's own chat template is used, else "chatml".
        self.template = "model" if tokenizer.chat_template else "chatml"
        if tokenizer.chat_template is None:
            tokenizer.chat_template = CHATML
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": _DOC + _SEPARATOR + _QUESTION}], add_generation_prompt=True)
        self._head, rest = rendered.split(_DOC)
        self._tail = rest.split(_QUESTION)[1]
        self._head_ids = tokenizer.encode(self._head, add_special_tokens=False)
        stops = {tokenizer.token_to_id("<|im_end|>"), tokenizer.eos_id}
        self.stop_ids = sorted(i for i in stops if i is not None)
        self.tokens_read = 0
        self.seconds = 0.0
        self._open: _Open | None = None

    def prompt(self, document: str, question: str) -> str:
        """The whole prompt text for one question (documentation, tests)."""
        return self._head + document + _SEPARATOR + question + self._tail

    def cut(self, document: str) -> Prefix:
        """The document cut to the window, in tokens."""
        ids = self.tokenizer.encode(document, add_special_tokens=False)
        kept = tuple(ids[: self.window])
        return Prefix(kept, self.tokenizer.decode(kept), len(ids))

    def open(self, prefix: Prefix) -> None:
        """Run the template head and the document once; questions reuse it."""
        cache = self.model.new_cache()
        ids = [*self._head_ids, *prefix.ids]
        t0 = time.perf_counter()
        self.model.run(np.asarray(ids, dtype=np.int64), cache)
        self.seconds += time.perf_counter() - t0
        self.tokens_read += len(ids)
        self._open = _Open(cache, cache.length)

    def ask(self, question: str) -> tuple[str, bool]:
        """Greedy answer to ``question`` about the open document (special
        tokens left out, otherwise verbatim), and whether it was cut at
        ``max_new_tokens`` before the end-of-turn token."""
        if self._open is None:
            raise ReferenceModelError("ChatReader.ask before open()")
        cache = self._open.cache
        cache.length = self._open.length  # rewind: forget the previous question
        ids = self.tokenizer.encode(_SEPARATOR + question + self._tail, add_special_tokens=False)
        out: list[int] = []
        t0 = time.perf_counter()
        logits, _ = self.model.run(np.asarray(ids, dtype=np.int64), cache)
        self.tokens_read += len(ids)
        capped = True
        while len(out) < self.max_new_tokens:
            nxt = int(np.argmax(logits[-1]))
            if nxt in self.stop_ids:
                capped = False
                break
            out.append(nxt)
            if len(out) < self.max_new_tokens:  # the last token needs no forward pass
                logits, _ = self.model.run(np.asarray([nxt], dtype=np.int64), cache)
                self.tokens_read += 1
        self.seconds += time.perf_counter() - t0
        return self.tokenizer.decode(out, skip_special_tokens=True), capped


def load_chat_reader(model: str | Path = "smollm2", *, window: int = 1024, max_new_tokens: int = 16) -> ChatReader:
    """A `ChatReader` over a model name (``smollm2``) or path. A model whose
    reference is not a decoder (an encoder such as ``minilm``) is refused
    with `ReferenceModelError`; a missing embedded model names its package
    (`SourceError`)."""
    from helix_framework.models import resolve_model
    from helix_framework.reference import load_model, load_tokenizer

    path = resolve_model(model)
    built = load_model(path)
    if not isinstance(built, DecoderModel):
        raise ReferenceModelError(
            f"reader {model}: {type(built).__name__} is an encoder, not a decoder; --answer needs a causal "
            "language model (e.g. smollm2)")
    return ChatReader(built, load_tokenizer(path), name=str(model), window=window, max_new_tokens=max_new_tokens)
