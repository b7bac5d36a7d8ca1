"""Which tensors a codec may touch: `route_tensor(name, shape, rules)`.

Every tensor gets a `RouteDecision`: ``passthrough`` (kept bit-identical on
purpose), ``skip`` (not worth or not fit for compression; also kept as is)
or ``codec`` (compressed as a 2-D rows-first matrix, ``reshape`` giving the
2-D shape when the tensor is not already 2-D). Rules, first match wins:

1. user rules, in order: ``(regex, route)`` pairs (or objects with ``match``
   and ``route``), ``re.search`` on the full name;
2. index regime -> passthrough: embedding tables and the LM head
   (embed_tokens, token_embd, embedding(s), *_embeddings, lm_head, wte,
   wpe, embed_positions, embed_in/out; top-level ``output`` = GGUF's lm
   head, top-level ``shared`` = T5's table), never compressed whatever their size;
3. norms -> skip (norm, ln_*, layer_norm, LayerNorm, *_norm, *layernorm,
   norm1, rmsnorm, ...);
4. zero-size -> skip;  5. 4-D (convolution kernels) -> skip;
6. under 4096 elements -> skip;  7. 1-D (biases, vectors) -> skip;
8. 5-D and more -> passthrough (no documented 2-D view);
9. 3-D -> codec, ``[E, out, in]`` reshaped to ``[E*out, in]`` (expert stacks);
10. 2-D -> codec: attention (q/k/v/o_proj, attn_q/k/v/output, query, key,
    value, attention.output.dense), MLP (gate/up/down_proj, ffn_*, fc1, fc2,
    w1..w3, intermediate.dense, output.dense) or any other large matrix.

Names are matched by whole segments (split on ``.``), never by substring:
``w1`` does not match ``row10``, ``wte`` does not match ``wtest``. The
index-regime and norm rules look at the tensor's module: the name without a
trailing parameter segment (``weight``, ``bias``, ...); a container segment
such as BERT's ``embeddings`` makes its tensors index-regime except its
norm (``embeddings.LayerNorm.weight`` is a norm).
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any, Iterable, Sequence

import attrs

from helix_framework.errors import ConfigError, TensorFilterError

ROUTES = ("passthrough", "skip", "codec")
#: Tensors with fewer elements than this are skipped.
MIN_ELEMENTS = 4096

#: Trailing segments that name a parameter of a module, not the module.
PARAM_SEGMENTS = frozenset({"weight", "bias", "scale", "scales", "gamma", "beta", "g", "b", "qweight"})

_INDEX_EXACT = frozenset(
    {
        "embed_tokens", "token_embd", "tok_embeddings", "embedding", "embeddings", "word_embeddings",
        "lm_head", "wte", "wpe", "embed_positions", "embed_in", "embed_out",
    }
)
_INDEX_SUFFIXES = ("_embeddings", "_embedding", "_embd")
#: Index-regime names recognised only as the whole top-level module
#: (GGUF's lm head ``output.weight``; T5's ``shared.weight``).
_INDEX_TOP_LEVEL = frozenset({"output", "shared"})
_NORM_RE = re.compile(r"(?:^|_)(?:layer|rms|group|batch)?_?norm\d*(?:$|_)|^ln(?:$|_|\d)", re.IGNORECASE)

_ATTENTION = (
    ("q_proj",), ("k_proj",), ("v_proj",), ("o_proj",), ("qkv_proj",),
    ("attn_q",), ("attn_k",), ("attn_v",), ("attn_qkv",), ("attn_output",),
    ("query",), ("key",), ("value",), ("attention", "output", "dense"),
    ("c_attn",), ("out_proj",), ("query_key_value",),
)
_MLP = (
    ("gate_proj",), ("up_proj",), ("down_proj",), ("gate_up_proj",),
    ("ffn_gate",), ("ffn_up",), ("ffn_down",), ("ffn_gate_exps",), ("ffn_up_exps",), ("ffn_down_exps",),
    ("fc1",), ("fc2",), ("w1",), ("w2",), ("w3",), ("c_fc",), ("c_proj",),
    ("intermediate", "dense"), ("output", "dense"), ("dense_h_to_4h",), ("dense_4h_to_h",),
)


@attrs.frozen
class RouteDecision:
    """Where a tensor goes and why.

    ``route``: "passthrough" | "skip" | "codec". ``reason``: a sentence naming
    the rule. ``rule``: a short id of the rule ("user[0]", "index_regime",
    "norm", "zero_size", "4d", "small", "1d", "high_rank", "attention",
    "mlp", "matrix", "expert_stack"). ``reshape``: the rows-first 2-D shape a
    codec sees when the tensor is not 2-D, else None.
    """

    route: str = attrs.field(validator=attrs.validators.in_(ROUTES))
    reason: str
    rule: str = ""
    reshape: tuple[int, int] | None = None


def split_segments(name: str) -> tuple[str, ...]:
    """Name segments: split on '.', and on '/' (TF-style names); empties dropped."""
    return tuple(s for s in re.split(r"[./]", name) if s)


def block_index(name: str) -> int | None:
    """The decoder or encoder block a tensor belongs to: its first all-digit
    segment (``blk.3.attn_q.weight``, ``model.layers.3.mlp.down_proj.weight``,
    ``transformer.h.3...``, ``encoder.layer.3...``), or None (embeddings, head)."""
    for seg in split_segments(name):
        if seg.isdigit():
            return int(seg)
    return None


def block_count(names: Iterable[str]) -> int:
    """How many blocks a model has, from its tensor names (0 if none is in a block)."""
    return 1 + max((i for i in map(block_index, names) if i is not None), default=-1)


def module_segments(segments: Sequence[str]) -> tuple[str, ...]:
    """Segments naming the module: a trailing parameter segment removed."""
    if len(segments) > 1 and segments[-1].lower() in PARAM_SEGMENTS:
        return tuple(segments[:-1])
    return tuple(segments)


def _is_index_segment(seg: str) -> bool:
    s = seg.lower()
    return s in _INDEX_EXACT or s.endswith(_INDEX_SUFFIXES)


def _is_norm_segment(seg: str) -> bool:
    return bool(_NORM_RE.search(seg))


def _find(segments: Sequence[str], patterns: Iterable[tuple[str, ...]]) -> str | None:
    lower = [s.lower() for s in segments]
    for pat in patterns:
        n = len(pat)
        for i in range(len(lower) - n + 1):
            if tuple(lower[i : i + n]) == pat:
                return ".".join(pat)
    return None


@functools.lru_cache(maxsize=256)
def _compile(pattern: str, index: int) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"invalid regular expression {pattern!r}: {exc}", path=f"$.routes[{index}].match") from None


def _normalise_rules(rules: Any) -> list[tuple[str, str]]:
    out = []
    for i, rule in enumerate(rules or ()):
        if isinstance(rule, dict):
            pattern, route = rule.get("match"), rule.get("route")
        elif hasattr(rule, "match") and hasattr(rule, "route"):
            pattern, route = rule.match, rule.route
        else:
            try:
                pattern, route = rule
            except (TypeError, ValueError):
                raise ConfigError(f"a route rule is a (regex, route) pair, got {rule!r}", path=f"$.routes[{i}]") from None
        if not isinstance(pattern, str):
            raise ConfigError(f"match must be a regular expression string, got {pattern!r}", path=f"$.routes[{i}].match")
        if route not in ROUTES:
            raise ConfigError(f"route must be one of {', '.join(ROUTES)}, got {route!r}", path=f"$.routes[{i}].route")
        out.append((pattern, route))
    return out


def _user_codec(name: str, shape: tuple[int, ...], rule_id: str, reason: str) -> RouteDecision:
    """A user rule asked for the codec: honour it only where a 2-D view exists."""
    if math.prod(shape) == 0:
        return RouteDecision("skip", f"{reason}, but the tensor has zero elements: nothing to compress", rule_id)
    if len(shape) == 2:
        return RouteDecision("codec", reason, rule_id)
    if len(shape) == 3:
        e, o, i = shape
        return RouteDecision(
            "codec", f"{reason}; 3-D [E, out, in] {list(shape)} reshaped to {e * o} rows of {i}", rule_id, (e * o, i)
        )
    return RouteDecision(
        "passthrough",
        f"{reason}, but the tensor is {len(shape)}-D {list(shape)} and has no documented 2-D view: passed through",
        rule_id,
    )


def route_tensor(name: str, shape: Sequence[int], rules: Any = ()) -> RouteDecision:
    """Decide the route of one tensor from its name and rows-first shape.

    ``rules``: user rules tried first, in order, each a ``(regex, route)``
    pair, a mapping ``{"match": regex, "route": route}`` or an object with
    ``match`` and ``route`` attributes (e.g. `config.RouteRule`); the regex is
    searched (``re.search``) in the full name. A user ``codec`` route is
    still rank-checked (3-D reshaped, other non-2-D passed through). Raises
    `ConfigError` for an invalid rule. See the module docstring for the
    built-in rules.
    """
    shape = tuple(int(d) for d in shape)
    ndim = len(shape)
    numel = math.prod(shape)

    for i, (pattern, route) in enumerate(_normalise_rules(rules)):
        if _compile(pattern, i).search(name):
            rule_id = f"user[{i}]"
            reason = f"user rule {i} (match {pattern!r} -> {route})"
            if route == "codec":
                return _user_codec(name, shape, rule_id, reason)
            return RouteDecision(route, reason, rule_id)

    segments = split_segments(name)
    module = module_segments(segments)
    leaf = module[-1] if module else ""
    leaf_is_norm = _is_norm_segment(leaf)

    # 2. index regime: embeddings and the LM head, never compressed.
    if module and (_is_index_segment(leaf) or (len(module) == 1 and leaf.lower() in _INDEX_TOP_LEVEL)):
        what = "LM head" if leaf.lower() in ("lm_head", "output", "embed_out") else "embedding table"
        return RouteDecision(
            "passthrough", f"index regime: {what} ({leaf!r}) is never compressed, whatever its size", "index_regime"
        )
    container = next((s for s in module[:-1] if _is_index_segment(s)), None)
    if container is not None and not leaf_is_norm:
        return RouteDecision(
            "passthrough", f"index regime: inside embedding module {container!r}, never compressed", "index_regime"
        )

    # 3. norms.
    if leaf_is_norm:
        return RouteDecision("skip", f"norm: {leaf!r} is a normalisation parameter, kept exact", "norm")

    # 4-8. shape rules.
    if numel == 0:
        return RouteDecision("skip", f"zero-size tensor {list(shape)}: nothing to compress", "zero_size")
    if ndim == 4:
        return RouteDecision("skip", f"4-D tensor {list(shape)} (convolution kernel): not a weight matrix", "4d")
    if numel < MIN_ELEMENTS:
        return RouteDecision(
            "skip", f"small tensor: {numel} elements < {MIN_ELEMENTS}, compression would not pay", "small"
        )
    if ndim <= 1:
        return RouteDecision("skip", f"{ndim}-D tensor (bias or vector) of {numel} elements: not a matrix", "1d")
    if ndim >= 5:
        return RouteDecision(
            "passthrough", f"{ndim}-D tensor {list(shape)}: no documented 2-D view, passed through", "high_rank"
        )

    # 9-10. codec.
    attn = _find(module, _ATTENTION)
    mlp = None if attn else _find(module, _MLP)
    if attn:
        kind, rule_id = f"attention projection ({attn!r})", "attention"
    elif mlp:
        kind, rule_id = f"MLP projection ({mlp!r})", "mlp"
    else:
        kind, rule_id = f"large matrix ({numel} elements)", "matrix"
    if ndim == 3:
        e, o, i = shape
        return RouteDecision(
            "codec",
            f"3-D stack [E, out, in] {list(shape)}: {kind}, reshaped to {e * o} rows of {i}",
            "expert_stack",
            (e * o, i),
        )
    return RouteDecision("codec", f"{kind}: 2-D {list(shape)}", rule_id)


# -- --tensors: a user's subset of the codec tensors ----------------------------

#: the reason recorded for a codec tensor that ``--tensors`` left out
NOT_SELECTED = "not selected by --tensors; kept as is"


def tensor_selector(pattern: str | None) -> re.Pattern[str] | None:
    """The compiled ``--tensors`` regex (searched in each full tensor name), or
    None when every tensor is selected."""
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise TensorFilterError(f"--tensors {pattern!r}: invalid regular expression: {exc}", pattern=pattern) from None


def require_selection(selector: re.Pattern[str] | None, tensors: Iterable[Any], rules: Any = ()) -> None:
    """Refuse a selector that leaves the codec nothing: a run that compresses
    no tensor would look like a result. ``tensors``: objects with ``name`` and
    ``shape`` (a source's tensor infos)."""
    if selector is None:
        return
    infos = list(tensors)
    codec = [t.name for t in infos if route_tensor(t.name, t.shape, rules).route == "codec"]
    if any(selector.search(name) for name in codec):
        return
    named = sum(bool(selector.search(t.name)) for t in infos)
    raise TensorFilterError(
        f"--tensors {selector.pattern!r} selects none of the {len(codec)} tensors routed to the codec "
        f"(it matches {named} of {len(infos)} tensor names)", pattern=selector.pattern)


__all__ = ["MIN_ELEMENTS", "NOT_SELECTED", "ROUTES", "RouteDecision", "module_segments", "require_selection",
           "route_tensor", "split_segments", "tensor_selector"]
