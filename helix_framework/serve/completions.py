"""OpenAI-compatible ``POST /v1/completions`` on the numpy reference decoder.

Greedy only (``temperature`` and sampling fields are accepted and ignored,
as the figures must be reproducible). ``logprobs: k`` returns the chosen
token's log-probability and the ``k`` most likely tokens at each position
(OpenAI caps ``k`` at 5, so do we); ``echo: true`` prepends the prompt with
its own log-probabilities (the first token has none).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np

from helix_framework.serve.guard import RequestError

MAX_TOKENS_LIMIT = 512
MAX_LOGPROBS = 5


def parse(body: dict[str, Any]) -> dict[str, Any]:
    """The request fields this endpoint uses, checked."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise RequestError(400, "expected a non-empty string (or a list of one)", "$.prompt")
    max_tokens = body.get("max_tokens", 16)
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 0 <= max_tokens <= MAX_TOKENS_LIMIT:
        raise RequestError(400, f"expected an integer from 0 to {MAX_TOKENS_LIMIT}", "$.max_tokens")
    logprobs = body.get("logprobs")
    if logprobs is not None and (not isinstance(logprobs, int) or isinstance(logprobs, bool)
                                 or not 0 <= logprobs <= MAX_LOGPROBS):
        raise RequestError(400, f"expected null or an integer from 0 to {MAX_LOGPROBS}", "$.logprobs")
    echo = body.get("echo", False)
    if not isinstance(echo, bool):
        raise RequestError(400, "expected true or false", "$.echo")
    if body.get("n", 1) != 1 or body.get("stream"):
        raise RequestError(400, "only n=1 without streaming is served", "$.n")
    return {"prompt": prompt, "max_tokens": max_tokens, "logprobs": logprobs, "echo": echo}


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def complete(model: Any, tokenizer: Any, name: str, req: dict[str, Any]) -> dict[str, Any]:
    """Greedy continuation of ``req["prompt"]`` with OpenAI-shaped logprobs."""
    ids = tokenizer.encode(req["prompt"])
    if not ids:
        raise RequestError(400, "the prompt encodes to no tokens", "$.prompt")
    if model.max_positions is not None and len(ids) + req["max_tokens"] > model.max_positions:
        raise RequestError(400, f"prompt plus max_tokens exceeds the model's {model.max_positions} positions",
                           "$.max_tokens")
    cache = model.new_cache()
    logits, _ = model.run(np.asarray(ids), cache)
    prompt_lp = _log_softmax(logits)
    tokens: list[int] = []
    rows: list[np.ndarray] = []  # log-probabilities each generated token was chosen from
    finish = "length"
    last = prompt_lp[-1]
    for _ in range(req["max_tokens"]):
        nxt = int(np.argmax(last))
        tokens.append(nxt)
        rows.append(last)
        if tokenizer.eos_id is not None and nxt == tokenizer.eos_id:
            finish = "stop"
            break
        step, _ = model.run(np.asarray([nxt]), cache)
        last = _log_softmax(step)[-1]
    out_ids = (list(ids) if req["echo"] else []) + tokens
    text = tokenizer.decode(out_ids)
    choice: dict[str, Any] = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
    k = req["logprobs"]
    if k is not None:
        pieces, chosen, tops = [], [], []
        if req["echo"]:
            for i, t in enumerate(ids):
                pieces.append(t)
                chosen.append(None if i == 0 else float(prompt_lp[i - 1][t]))
                tops.append(None if i == 0 else _top(tokenizer, prompt_lp[i - 1], k))
        for t, row in zip(tokens, rows):
            pieces.append(t)
            chosen.append(float(row[t]))
            tops.append(_top(tokenizer, row, k))
        strings = [tokenizer.decode([t]) for t in pieces]
        offsets, pos = [], 0
        for s in strings:
            offsets.append(pos)
            pos += len(s)
        choice["logprobs"] = {"tokens": strings, "token_logprobs": chosen, "top_logprobs": tops,
                              "text_offset": offsets}
    return {
        "id": f"cmpl-{uuid.uuid4().hex[:24]}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": name,
        "choices": [choice],
        "usage": {"prompt_tokens": len(ids), "completion_tokens": len(tokens), "total_tokens": len(ids) + len(tokens)},
    }


def _top(tokenizer: Any, row: np.ndarray, k: int) -> dict[str, float]:
    if k == 0:
        return {}
    best = np.argsort(-row, kind="stable")[:k]
    return {tokenizer.decode([int(t)]): float(row[t]) for t in best}
