"""The Llama family in numpy float32: Llama, Mistral, Qwen2 (q/k/v biases),
Qwen3 (q/k RMS norms), SmolLM.

Grouped-query attention, RMSNorm, SwiGLU, rotary position embeddings with
the config's theta and linear or llama3 scaling. Two RoPE layouts:

- ``half`` (Hugging Face): within a head, dimension ``i`` pairs with
  ``i + d/2`` (rotate_half).
- ``interleaved`` (GGUF ``llama``): llama.cpp's converter permutes the q/k
  rows of every head so that HF pair ``(i, i + d/2)`` lands on rows
  ``(2i, 2i + 1)``; rotating adjacent pairs on the permuted weights gives
  exactly the HF result, so GGUF weights are used as stored.

Built from config.json + safetensors (HF names) or GGUF metadata + tensors
(``blk.N`` names) by `config_from_hf` / `config_from_gguf` and `LlamaModel.build`.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping

import attrs
import numpy as np

from helix_framework.reference.base import (
    F32,
    DecoderModel,
    KVCache,
    LazyWeights,
    LinearSpec,
    ReferenceModelError,
    WeightProvider,
    activation,
    attention,
    causal_mask,
    gather_weights,
    rms_norm,
)

logger = logging.getLogger(__name__)

#: Hugging Face ``model_type`` values this module builds.
HF_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "smollm", "smollm2")
#: GGUF ``general.architecture`` values this module builds, with their RoPE layout.
GGUF_ARCHITECTURES = {"llama": "interleaved", "qwen2": "half", "qwen3": "half"}


@attrs.frozen
class RopeScaling:
    """RoPE frequency scaling: ``linear`` (positions / factor) or ``llama3``
    (wavelength-dependent, with ``low_freq_factor``, ``high_freq_factor`` and
    ``original_max_position_embeddings``)."""

    kind: str
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@attrs.frozen
class LlamaConfig:
    """Shape and options of a Llama-family decoder.

    ``rope_layout`` is ``"half"`` (HF) or ``"interleaved"`` (GGUF llama);
    ``sliding_windows`` gives each layer's attention window (None = full);
    ``rope_freq_factors`` is GGUF's ``rope_freqs.weight`` (llama3 scaling as
    stored by llama.cpp: each inverse frequency is divided by its factor).
    """

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_layout: str = "half"
    rope_scaling: RopeScaling | None = None
    rope_freq_factors: tuple[float, ...] | None = None
    tie_word_embeddings: bool = False
    qk_norm: bool = False
    hidden_act: str = "silu"
    max_position_embeddings: int | None = None
    sliding_windows: tuple[int | None, ...] | None = None

    def __attrs_post_init__(self) -> None:
        if self.rope_layout not in ("half", "interleaved"):
            raise ReferenceModelError(f"rope_layout must be 'half' or 'interleaved', got {self.rope_layout!r}")
        if self.n_heads % self.n_kv_heads:
            raise ReferenceModelError(f"{self.n_heads} query heads are not a multiple of {self.n_kv_heads} KV heads")
        if self.head_dim % 2:
            raise ReferenceModelError(f"head_dim must be even for RoPE, got {self.head_dim}")


@attrs.frozen
class LlamaNames:
    """Source tensor names of one model (HF or GGUF naming)."""

    embed: str
    final_norm: str
    head: str | None  # None when tied to the embedding
    layer: Mapping[str, str]  # role -> format string with {i}
    rope_freqs: str | None = None

    def of(self, role: str, i: int) -> str:
        return self.layer[role].format(i=i)


def _hf_names(prefix: str, tied: bool) -> LlamaNames:
    p = f"{prefix}layers.{{i}}."
    return LlamaNames(
        embed=f"{prefix}embed_tokens.weight",
        final_norm=f"{prefix}norm.weight",
        head=None if tied else "lm_head.weight",
        layer={
            "attn_norm": p + "input_layernorm.weight",
            "q": p + "self_attn.q_proj",
            "k": p + "self_attn.k_proj",
            "v": p + "self_attn.v_proj",
            "o": p + "self_attn.o_proj",
            "q_norm": p + "self_attn.q_norm.weight",
            "k_norm": p + "self_attn.k_norm.weight",
            "ffn_norm": p + "post_attention_layernorm.weight",
            "gate": p + "mlp.gate_proj",
            "up": p + "mlp.up_proj",
            "down": p + "mlp.down_proj",
        },
    )


def _gguf_names(tied: bool, has_rope_freqs: bool) -> LlamaNames:
    p = "blk.{i}."
    return LlamaNames(
        embed="token_embd.weight",
        final_norm="output_norm.weight",
        head=None if tied else "output.weight",
        layer={
            "attn_norm": p + "attn_norm.weight",
            "q": p + "attn_q",
            "k": p + "attn_k",
            "v": p + "attn_v",
            "o": p + "attn_output",
            "q_norm": p + "attn_q_norm.weight",
            "k_norm": p + "attn_k_norm.weight",
            "ffn_norm": p + "ffn_norm.weight",
            "gate": p + "ffn_gate",
            "up": p + "ffn_up",
            "down": p + "ffn_down",
        },
        rope_freqs="rope_freqs.weight" if has_rope_freqs else None,
    )


# -- configs ----------------------------------------------------------------


def _require(cfg: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in cfg or cfg[key] is None:
        raise ReferenceModelError(f"{where} has no {key!r}; cannot build the model")
    return cfg[key]


def _hf_rope(cfg: Mapping[str, Any]) -> tuple[float, RopeScaling | None]:
    # transformers 5 writes rope_parameters; 4.x wrote rope_theta + rope_scaling.
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    if isinstance(params, dict) and "rope_type" in params and not scaling:
        scaling = params
    theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)) if isinstance(params, dict) else cfg.get("rope_theta", 10000.0))
    kind = (scaling.get("rope_type") or scaling.get("type") or "default") if isinstance(scaling, dict) else "default"
    if kind == "default":
        return theta, None
    if kind == "linear":
        return theta, RopeScaling("linear", float(scaling["factor"]))
    if kind == "llama3":
        return theta, RopeScaling(
            "llama3",
            float(scaling["factor"]),
            float(scaling.get("low_freq_factor", 1.0)),
            float(scaling.get("high_freq_factor", 4.0)),
            int(scaling.get("original_max_position_embeddings", 8192)),
        )
    raise ReferenceModelError(f"unsupported RoPE scaling {kind!r} (supported: default, linear, llama3)")


def config_from_hf(cfg: Mapping[str, Any], tensor_names: set[str]) -> tuple[LlamaConfig, LlamaNames]:
    """`LlamaConfig` and tensor names from a config.json dict and the names
    the safetensors hold (tied embeddings when there is no ``lm_head``)."""
    where = "config.json"
    mt = str(cfg.get("model_type", "llama"))
    hidden = int(_require(cfg, "hidden_size", where))
    n_heads = int(_require(cfg, "num_attention_heads", where))
    n_layers = int(_require(cfg, "num_hidden_layers", where))
    head_dim = cfg.get("head_dim") or hidden // n_heads
    theta, scaling = _hf_rope(cfg)
    prefix = "model." if "model.embed_tokens.weight" in tensor_names else ""
    if f"{prefix}embed_tokens.weight" not in tensor_names:
        raise ReferenceModelError("no embed_tokens.weight among the tensors: not a Llama-family checkpoint")
    has_head = "lm_head.weight" in tensor_names
    tied = not has_head
    if not has_head and cfg.get("tie_word_embeddings") is False:
        logger.warning("config says tie_word_embeddings=false but there is no lm_head.weight; tying to the embedding")
    elif has_head and cfg.get("tie_word_embeddings"):
        logger.info("tie_word_embeddings=true but lm_head.weight is stored; using the stored head")
    window = cfg.get("sliding_window")
    layer_types = cfg.get("layer_types")
    windows: tuple[int | None, ...] | None = None
    if window:
        if isinstance(layer_types, list) and len(layer_types) == n_layers:
            windows = tuple(int(window) if t == "sliding_attention" else None for t in layer_types)
        elif mt == "mistral" or cfg.get("use_sliding_window"):
            windows = (int(window),) * n_layers
        if windows is not None and not any(windows):
            windows = None
    config = LlamaConfig(
        architecture=mt,
        vocab_size=int(_require(cfg, "vocab_size", where)),
        hidden_size=hidden,
        intermediate_size=int(_require(cfg, "intermediate_size", where)),
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=int(cfg.get("num_key_value_heads") or n_heads),
        head_dim=int(head_dim),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_layout="half",
        rope_scaling=scaling,
        tie_word_embeddings=tied,
        qk_norm=f"{prefix}layers.0.self_attn.q_norm.weight" in tensor_names,
        hidden_act=str(cfg.get("hidden_act", "silu")),
        max_position_embeddings=cfg.get("max_position_embeddings"),
        sliding_windows=windows,
    )
    return config, _hf_names(prefix, tied)


def config_from_gguf(meta: Mapping[str, Any], tensor_names: set[str], embed_shape: tuple[int, ...]) -> tuple[LlamaConfig, LlamaNames]:
    """`LlamaConfig` and tensor names from GGUF metadata (``{arch}.*`` keys)."""
    arch = str(meta.get("general.architecture"))
    if arch not in GGUF_ARCHITECTURES:
        raise ReferenceModelError(f"GGUF architecture {arch!r} is not a supported Llama-family model")
    where = "GGUF metadata"

    def key(k: str) -> Any:
        return _require(meta, f"{arch}.{k}", where)

    hidden = int(key("embedding_length"))
    n_heads = int(key("attention.head_count"))
    n_kv = meta.get(f"{arch}.attention.head_count_kv", n_heads)
    if isinstance(n_kv, list):
        if len(set(n_kv)) != 1:
            raise ReferenceModelError("per-layer KV head counts are not supported")
        n_kv = n_kv[0]
    head_dim = int(meta.get(f"{arch}.attention.key_length") or hidden // n_heads)
    rope_dim = int(meta.get(f"{arch}.rope.dimension_count") or head_dim)
    if rope_dim != head_dim:
        raise ReferenceModelError(f"partial RoPE ({rope_dim} of {head_dim} dims) is not supported")
    scaling = None
    stype = meta.get(f"{arch}.rope.scaling.type")
    if stype == "linear":
        scaling = RopeScaling("linear", float(meta[f"{arch}.rope.scaling.factor"]))
    elif stype not in (None, "none"):
        raise ReferenceModelError(f"unsupported GGUF RoPE scaling {stype!r} (supported: none, linear, rope_freqs)")
    tied = "output.weight" not in tensor_names
    has_freqs = "rope_freqs.weight" in tensor_names
    window = meta.get(f"{arch}.attention.sliding_window")
    config = LlamaConfig(
        architecture=arch,
        vocab_size=int(meta.get(f"{arch}.vocab_size") or embed_shape[0]),
        hidden_size=hidden,
        intermediate_size=int(key("feed_forward_length")),
        n_layers=int(key("block_count")),
        n_heads=n_heads,
        n_kv_heads=int(n_kv),
        head_dim=head_dim,
        rms_norm_eps=float(key("attention.layer_norm_rms_epsilon")),
        rope_theta=float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        rope_layout=GGUF_ARCHITECTURES[arch],
        rope_scaling=scaling,
        tie_word_embeddings=tied,
        qk_norm="blk.0.attn_q_norm.weight" in tensor_names,
        max_position_embeddings=meta.get(f"{arch}.context_length"),
        sliding_windows=(int(window),) * int(key("block_count")) if window else None,
    )
    return config, _gguf_names(tied, has_freqs)


# -- RoPE -------------------------------------------------------------------


def inverse_frequencies(config: LlamaConfig) -> np.ndarray:
    """Per-pair inverse frequencies ``theta^(-2i/d)`` with the config's
    scaling applied (float64)."""
    d = config.head_dim
    inv = 1.0 / (config.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
    sc = config.rope_scaling
    if sc is not None and sc.kind == "linear":
        inv = inv / sc.factor
    elif sc is not None and sc.kind == "llama3":
        # transformers' _compute_llama3_parameters.
        low_wavelen = sc.original_max_position_embeddings / sc.low_freq_factor
        high_wavelen = sc.original_max_position_embeddings / sc.high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / sc.factor, inv)
        smooth = (sc.original_max_position_embeddings / wavelen - sc.low_freq_factor) / (
            sc.high_freq_factor - sc.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / sc.factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        inv = np.where(medium, smoothed, scaled)
    if config.rope_freq_factors is not None:
        inv = inv / np.asarray(config.rope_freq_factors, dtype=np.float64)
    return inv


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, layout: str) -> np.ndarray:
    """Rotate ``x [H, T, d]`` by the angles whose ``cos, sin`` are ``[T, d/2]``."""
    out = np.empty_like(x)
    if layout == "interleaved":
        x1, x2 = x[..., 0::2], x[..., 1::2]
        out[..., 0::2] = x1 * cos - x2 * sin
        out[..., 1::2] = x2 * cos + x1 * sin
    else:
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        out[..., :half] = x1 * cos - x2 * sin
        out[..., half:] = x2 * cos + x1 * sin
    return out


# -- the model --------------------------------------------------------------


class LlamaModel(DecoderModel):
    """A Llama-family decoder with float32 weights keyed by source name."""

    def __init__(self, config: LlamaConfig, names: LlamaNames, weights: dict[str, np.ndarray]):
        super().__init__()
        self.config = config
        self.names = names
        self.weights = weights
        self._act = activation(config.hidden_act)
        self._inv_freq = inverse_frequencies(config)
        # (cos, sin), replaced as one value: windows on other threads may be reading it.
        self._rope = (np.empty((0, config.head_dim // 2), F32), np.empty((0, config.head_dim // 2), F32))
        self._scale = F32(1.0 / math.sqrt(config.head_dim))
        c = config
        q_out, kv_out = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
        for i in range(c.n_layers):
            for role, out_f, in_f in (
                ("q", q_out, c.hidden_size),
                ("k", kv_out, c.hidden_size),
                ("v", kv_out, c.hidden_size),
                ("o", c.hidden_size, q_out),
                ("gate", c.intermediate_size, c.hidden_size),
                ("up", c.intermediate_size, c.hidden_size),
                ("down", c.hidden_size, c.intermediate_size),
            ):
                base = names.of(role, i)
                bias = base + ".bias"
                self._add_linear(LinearSpec(base + ".weight", out_f, in_f, bias=bias if bias in weights else None))
        head = names.head or names.embed
        self._add_linear(LinearSpec(head, c.vocab_size, c.hidden_size, tied_embedding=names.head is None))
        logger.info(
            "built %s: %d layers, hidden %d, %d/%d heads x %d, vocab %d, rope %s theta %g, %.1fM parameters",
            c.architecture, c.n_layers, c.hidden_size, c.n_heads, c.n_kv_heads, c.head_dim,
            c.vocab_size, c.rope_layout, c.rope_theta, self.n_parameters / 1e6,
        )

    @classmethod
    def tensor_shapes(cls, config: LlamaConfig, names: LlamaNames, available: set[str]) -> dict[str, tuple[int, ...]]:
        """Every tensor the model reads, with its expected shape (optional
        biases only when ``available`` has them)."""
        c = config
        q_out, kv_out = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
        shapes: dict[str, tuple[int, ...]] = {names.embed: (c.vocab_size, c.hidden_size), names.final_norm: (c.hidden_size,)}
        if names.head:
            shapes[names.head] = (c.vocab_size, c.hidden_size)
        if names.rope_freqs:
            shapes[names.rope_freqs] = (c.head_dim // 2,)
        for i in range(c.n_layers):
            shapes[names.of("attn_norm", i)] = (c.hidden_size,)
            shapes[names.of("ffn_norm", i)] = (c.hidden_size,)
            if c.qk_norm:
                shapes[names.of("q_norm", i)] = (c.head_dim,)
                shapes[names.of("k_norm", i)] = (c.head_dim,)
            for role, out_f, in_f in (
                ("q", q_out, c.hidden_size), ("k", kv_out, c.hidden_size), ("v", kv_out, c.hidden_size),
                ("o", c.hidden_size, q_out), ("gate", c.intermediate_size, c.hidden_size),
                ("up", c.intermediate_size, c.hidden_size), ("down", c.hidden_size, c.intermediate_size),
            ):
                base = names.of(role, i)
                shapes[base + ".weight"] = (out_f, in_f)
                if base + ".bias" in available:
                    shapes[base + ".bias"] = (out_f,)
        return shapes

    @classmethod
    def build(
        cls,
        config: LlamaConfig,
        names: LlamaNames,
        provider: WeightProvider,
        available: set[str],
        overrides: Mapping[str, np.ndarray] | None = None,
        lazy: bool = False,
    ) -> LlamaModel:
        """Read every tensor (replacements from ``overrides`` or ``provider``);
        ``lazy``: read each on first use instead (see `LazyWeights`)."""
        shapes = cls.tensor_shapes(config, names, available)
        missing = sorted(n for n in shapes if n not in available and not (overrides and n in overrides))
        if missing:
            raise ReferenceModelError(f"{len(missing)} tensor(s) the model needs are missing, e.g. {missing[:3]}")
        if lazy:
            weights: dict[str, np.ndarray] = LazyWeights(shapes, provider, overrides)
            freqs = weights[names.rope_freqs] if names.rope_freqs else None
            if names.rope_freqs:
                del weights.shapes[names.rope_freqs]
                weights.release([names.rope_freqs])
        else:
            weights = gather_weights(shapes, provider, overrides, shapes)
            freqs = weights.pop(names.rope_freqs) if names.rope_freqs else None
        if freqs is not None:
            config = attrs.evolve(config, rope_freq_factors=tuple(float(v) for v in freqs))
        return cls(config, names, weights)

    def block_tensors(self, layer: int) -> list[str]:
        """Names of the tensors of block ``layer`` (norms, matrices, biases)."""
        out = []
        for role, fmt in self.names.layer.items():
            base = fmt.format(i=layer)
            for name in (base, base + ".weight", base + ".bias"):
                if name in self.weights:
                    out.append(name)
        return out

    # -- DecoderModel ---------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def n_layers(self) -> int:
        return self.config.n_layers

    @property
    def max_positions(self) -> int | None:
        return None  # RoPE has no hard limit; quality past the trained context is the caller's concern

    def new_cache(self) -> KVCache:
        return KVCache(self.config.n_layers, self.config.n_kv_heads, self.config.head_dim)

    def _rope_table(self, end: int) -> tuple[np.ndarray, np.ndarray]:
        rope = self._rope
        if end > rope[0].shape[0]:
            n = max(end, 2 * rope[0].shape[0], 256)
            # Angles in float64, then float32: position x frequency loses
            # digits in float32 at long contexts.
            ang = np.arange(n, dtype=np.float64)[:, None] * self._inv_freq[None, :]
            self._rope = rope = (np.cos(ang).astype(F32), np.sin(ang).astype(F32))
        return rope

    def _embed(self, ids: np.ndarray, start: int) -> np.ndarray:
        return self.weights[self.names.embed][ids]

    def _proj(self, role: str, i: int, x: np.ndarray) -> np.ndarray:
        base = self.names.of(role, i)
        y = self.linear(base + ".weight", x)
        b = self.weights.get(base + ".bias")
        if b is not None:
            y = y + b
        return y

    def _block(self, layer: int, h: np.ndarray, start: int, cache: KVCache) -> np.ndarray:
        c, w, n = self.config, self.weights, self.names
        t = h.shape[0]
        x = rms_norm(h, w[n.of("attn_norm", layer)], c.rms_norm_eps)
        q = self._proj("q", layer, x).reshape(t, c.n_heads, c.head_dim).transpose(1, 0, 2)
        k = self._proj("k", layer, x).reshape(t, c.n_kv_heads, c.head_dim).transpose(1, 0, 2)
        v = self._proj("v", layer, x).reshape(t, c.n_kv_heads, c.head_dim).transpose(1, 0, 2)
        if c.qk_norm:
            q = rms_norm(q, w[n.of("q_norm", layer)], c.rms_norm_eps)
            k = rms_norm(k, w[n.of("k_norm", layer)], c.rms_norm_eps)
        cos, sin = self._rope_table(start + t)
        cos, sin = cos[start : start + t], sin[start : start + t]
        q = apply_rope(q, cos, sin, c.rope_layout)
        k = apply_rope(k, cos, sin, c.rope_layout)
        kf, vf = cache.store(layer, start, k, v)
        window = c.sliding_windows[layer] if c.sliding_windows else None
        a = attention(q, kf, vf, causal_mask(start, t, start + t, window), self._scale)
        h = h + self._proj("o", layer, a)
        x = rms_norm(h, w[n.of("ffn_norm", layer)], c.rms_norm_eps)
        g = self._proj("gate", layer, x)
        u = self._proj("up", layer, x)
        return h + self._proj("down", layer, self._act(g) * u)

    def _final(self, h: np.ndarray) -> np.ndarray:
        x = rms_norm(h, self.weights[self.names.final_norm], self.config.rms_norm_eps)
        return self.linear(self.names.head or self.names.embed, x)
