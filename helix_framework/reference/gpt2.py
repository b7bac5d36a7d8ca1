"""GPT-2 in numpy float32: learned positions, pre-LN blocks, GELU (tanh),
fused q/k/v projection, tied output head.

Hugging Face stores GPT-2's linear layers as Conv1D, ``[in, out]``; they are
transposed once at load so `linear` sees ``[out, in]`` like every other
model (their `LinearSpec` says ``transposed=True``). Replacement weights are
given in the source orientation, as ``source.read`` returns them.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping

import attrs
import numpy as np

from helix_framework.reference.base import (
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
    layer_norm,
)

logger = logging.getLogger(__name__)


@attrs.frozen
class GPT2Config:
    """Shape and options of a GPT-2 model (config.json names in comments)."""

    vocab_size: int  # vocab_size
    hidden_size: int  # n_embd
    n_layers: int  # n_layer
    n_heads: int  # n_head
    intermediate_size: int  # n_inner or 4 * n_embd
    max_positions: int  # n_positions
    layer_norm_eps: float = 1e-5  # layer_norm_epsilon
    activation: str = "gelu_new"  # activation_function
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    tie_word_embeddings: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.n_heads




class GPT2Model(DecoderModel):
    """GPT-2 with float32 weights keyed by source (Hugging Face) name."""

    def __init__(self, config: GPT2Config, prefix: str, weights: dict[str, np.ndarray]):
        super().__init__()
        self.config = config
        self.prefix = prefix
        self.weights = weights
        self._act = activation(config.activation)
        c = config
        for i in range(c.n_layers):
            for role, (out_f, in_f) in self._linear_shapes().items():
                name = self._name(i, role)
                self._add_linear(LinearSpec(name + ".weight", out_f, in_f, transposed=True, bias=name + ".bias"))
        head = "lm_head.weight" if not c.tie_word_embeddings else prefix + "wte.weight"
        self._add_linear(LinearSpec(head, c.vocab_size, c.hidden_size, tied_embedding=c.tie_word_embeddings))
        self._head = head
        logger.info(
            "built gpt2: %d layers, hidden %d, %d heads, vocab %d, %d positions, %.1fM parameters",
            c.n_layers, c.hidden_size, c.n_heads, c.vocab_size, c.max_positions, self.n_parameters / 1e6,
        )

    def _linear_shapes(self) -> dict[str, tuple[int, int]]:
        h, f = self.config.hidden_size, self.config.intermediate_size
        return {"attn.c_attn": (3 * h, h), "attn.c_proj": (h, h), "mlp.c_fc": (f, h), "mlp.c_proj": (h, f)}

    def _name(self, i: int, role: str) -> str:
        return f"{self.prefix}h.{i}.{role}"

    @classmethod
    def config_from_hf(cls, cfg: Mapping[str, Any], tensor_names: set[str]) -> GPT2Config:
        """`GPT2Config` from a config.json dict."""
        try:
            hidden = int(cfg["n_embd"])
            config = GPT2Config(
                vocab_size=int(cfg["vocab_size"]),
                hidden_size=hidden,
                n_layers=int(cfg["n_layer"]),
                n_heads=int(cfg["n_head"]),
                intermediate_size=int(cfg.get("n_inner") or 4 * hidden),
                max_positions=int(cfg.get("n_positions") or cfg.get("n_ctx") or 1024),
                layer_norm_eps=float(cfg.get("layer_norm_epsilon", 1e-5)),
                activation=str(cfg.get("activation_function", "gelu_new")),
                scale_attn_weights=bool(cfg.get("scale_attn_weights", True)),
                scale_attn_by_inverse_layer_idx=bool(cfg.get("scale_attn_by_inverse_layer_idx", False)),
                tie_word_embeddings="lm_head.weight" not in tensor_names,
            )
        except KeyError as exc:
            raise ReferenceModelError(f"config.json has no {exc.args[0]!r}; cannot build GPT-2") from None
        if hidden % config.n_heads:
            raise ReferenceModelError(f"n_embd {hidden} is not a multiple of n_head {config.n_heads}")
        return config

    @classmethod
    def from_hf(
        cls,
        cfg: Mapping[str, Any],
        provider: WeightProvider,
        available: set[str],
        overrides: Mapping[str, np.ndarray] | None = None,
        lazy: bool = False,
    ) -> GPT2Model:
        """Build from config.json and safetensors tensors (with or without
        the ``transformer.`` prefix); ``lazy``: read each tensor on first
        use (see `LazyWeights`), transposed as it is read."""
        config = cls.config_from_hf(cfg, available)
        prefix = "transformer." if "transformer.wte.weight" in available else ""
        if prefix + "wte.weight" not in available:
            raise ReferenceModelError("no wte.weight among the tensors: not a GPT-2 checkpoint")
        c = config
        h, f = c.hidden_size, c.intermediate_size
        shapes: dict[str, tuple[int, ...]] = {
            prefix + "wte.weight": (c.vocab_size, h),
            prefix + "wpe.weight": (c.max_positions, h),
            prefix + "ln_f.weight": (h,),
            prefix + "ln_f.bias": (h,),
        }
        if not c.tie_word_embeddings:
            shapes["lm_head.weight"] = (c.vocab_size, h)
        stored = {"attn.c_attn": (h, 3 * h), "attn.c_proj": (h, h), "mlp.c_fc": (h, f), "mlp.c_proj": (f, h)}
        for i in range(c.n_layers):
            p = f"{prefix}h.{i}."
            for ln in ("ln_1", "ln_2"):
                shapes[p + ln + ".weight"] = (h,)
                shapes[p + ln + ".bias"] = (h,)
            for role, shape in stored.items():
                shapes[p + role + ".weight"] = shape
                shapes[p + role + ".bias"] = (shape[1],)
        missing = sorted(n for n in shapes if n not in available and not (overrides and n in overrides))
        if missing:
            raise ReferenceModelError(f"{len(missing)} tensor(s) GPT-2 needs are missing, e.g. {missing[:3]}")
        conv1d = {f"{prefix}h.{i}.{role}.weight" for i in range(c.n_layers) for role in stored}
        if lazy:
            def read(name: str) -> np.ndarray:
                arr = overrides[name] if overrides is not None and name in overrides else provider(name)
                return np.asarray(arr, np.float32).T if name in conv1d else arr

            return cls(config, prefix, LazyWeights({n: s[::-1] if n in conv1d else s for n, s in shapes.items()}, read))
        weights = gather_weights(shapes, provider, overrides, shapes)
        for name in conv1d:
            weights[name] = np.ascontiguousarray(weights[name].T)  # Conv1D [in, out] -> [out, in]
        return cls(config, prefix, weights)

    def block_tensors(self, layer: int) -> list[str]:
        """Names of the tensors of block ``layer`` (norms, matrices, biases)."""
        p = f"{self.prefix}h.{layer}."
        names = self.weights.shapes if isinstance(self.weights, LazyWeights) else self.weights
        return [n for n in names if n.startswith(p)]

    # -- DecoderModel ---------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def n_layers(self) -> int:
        return self.config.n_layers

    @property
    def max_positions(self) -> int | None:
        return self.config.max_positions

    def new_cache(self) -> KVCache:
        return KVCache(self.config.n_layers, self.config.n_heads, self.config.head_dim)

    def _embed(self, ids: np.ndarray, start: int) -> np.ndarray:
        p = self.prefix
        return self.weights[p + "wte.weight"][ids] + self.weights[p + "wpe.weight"][start : start + ids.size]

    def _proj(self, i: int, role: str, x: np.ndarray) -> np.ndarray:
        name = self._name(i, role)
        return self.linear(name + ".weight", x) + self.weights[name + ".bias"]

    def _block(self, layer: int, h: np.ndarray, start: int, cache: KVCache) -> np.ndarray:
        c, w = self.config, self.weights
        p = f"{self.prefix}h.{layer}."
        t = h.shape[0]
        x = layer_norm(h, w[p + "ln_1.weight"], w[p + "ln_1.bias"], c.layer_norm_eps)
        qkv = self._proj(layer, "attn.c_attn", x).reshape(t, 3, c.n_heads, c.head_dim)
        q, k, v = (qkv[:, j].transpose(1, 0, 2) for j in range(3))
        kf, vf = cache.store(layer, start, k, v)
        scale = 1.0 / math.sqrt(c.head_dim) if c.scale_attn_weights else 1.0
        if c.scale_attn_by_inverse_layer_idx:
            scale /= layer + 1
        a = attention(q, kf, vf, causal_mask(start, t, start + t), scale)
        h = h + self._proj(layer, "attn.c_proj", a)
        x = layer_norm(h, w[p + "ln_2.weight"], w[p + "ln_2.bias"], c.layer_norm_eps)
        return h + self._proj(layer, "mlp.c_proj", self._act(self._proj(layer, "mlp.c_fc", x)))

    def _final(self, h: np.ndarray) -> np.ndarray:
        p = self.prefix
        x = layer_norm(h, self.weights[p + "ln_f.weight"], self.weights[p + "ln_f.bias"], self.config.layer_norm_eps)
        return self.linear(self._head, x)
