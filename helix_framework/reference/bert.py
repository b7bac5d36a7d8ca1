"""BERT encoders in numpy float32 (all-MiniLM-L6-v2 and kin): post-LN
blocks, exact (erf) GELU, learned positions and token types.

The sentence embedding follows the sentence-transformers modules shipped
beside the weights (``modules.json``, ``1_Pooling/config.json``): mean
pooling over the tokens (or CLS / max when configured), then L2
normalization when a Normalize module is listed. Without those files it is
mean pooling + L2 normalization, what all-MiniLM-L6-v2 does.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Iterable, Mapping

import attrs
import numpy as np

from helix_framework.reference.base import (
    F32,
    EncoderModel,
    LinearSpec,
    ReferenceModelError,
    WeightProvider,
    activation,
    as_token_array,
    attention,
    blas_threads,
    gather_weights,
    layer_norm,
)

logger = logging.getLogger(__name__)


@attrs.frozen
class BertConfig:
    """Shape and options of a BERT encoder, and its sentence pooling."""

    vocab_size: int
    hidden_size: int
    n_layers: int
    n_heads: int
    intermediate_size: int
    max_positions: int
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pooling: str = "mean"  # mean | cls | max
    normalize: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.n_heads


def _sentence_transformers_pooling(directory: Path | None) -> tuple[str, bool]:
    if directory is None or not (directory / "modules.json").is_file():
        return "mean", True
    try:
        modules = json.loads((directory / "modules.json").read_text(encoding="utf-8"))
        types = [str(m.get("type", "")) for m in modules]
        pooling = "mean"
        for m in modules:
            if str(m.get("type", "")).endswith("Pooling"):
                cfg = json.loads((directory / m.get("path", "") / "config.json").read_text(encoding="utf-8"))
                if cfg.get("pooling_mode_cls_token"):
                    pooling = "cls"
                elif cfg.get("pooling_mode_max_tokens"):
                    pooling = "max"
                elif not cfg.get("pooling_mode_mean_tokens", True):
                    raise ReferenceModelError(f"{directory}: unsupported pooling configuration {cfg}")
        return pooling, any(t.endswith("Normalize") for t in types)
    except (OSError, ValueError, AttributeError) as exc:
        raise ReferenceModelError(f"{directory}: cannot read the sentence-transformers modules: {exc}") from None


class BertModel(EncoderModel):
    """A BERT encoder with float32 weights keyed by source (HF) name."""

    def __init__(self, config: BertConfig, prefix: str, weights: dict[str, np.ndarray]):
        super().__init__()
        self.config = config
        self.prefix = prefix
        self.weights = weights
        self._act = activation(config.hidden_act)
        for i in range(config.n_layers):
            for role, (out_f, in_f) in self._linear_shapes().items():
                name = self._name(i, role)
                self._add_linear(LinearSpec(name + ".weight", out_f, in_f, bias=name + ".bias"))
        c = config
        logger.info(
            "built bert: %d layers, hidden %d, %d heads, vocab %d, pooling %s%s, %.1fM parameters",
            c.n_layers, c.hidden_size, c.n_heads, c.vocab_size, c.pooling,
            " + L2 normalize" if c.normalize else "", self.n_parameters / 1e6,
        )

    def _linear_shapes(self) -> dict[str, tuple[int, int]]:
        h, f = self.config.hidden_size, self.config.intermediate_size
        return {
            "attention.self.query": (h, h),
            "attention.self.key": (h, h),
            "attention.self.value": (h, h),
            "attention.output.dense": (h, h),
            "intermediate.dense": (f, h),
            "output.dense": (h, f),
        }

    def _name(self, i: int, role: str) -> str:
        return f"{self.prefix}encoder.layer.{i}.{role}"

    @classmethod
    def from_hf(
        cls,
        cfg: Mapping[str, Any],
        provider: WeightProvider,
        available: set[str],
        overrides: Mapping[str, np.ndarray] | None = None,
        *,
        directory: str | Path | None = None,
    ) -> BertModel:
        """Build from config.json + safetensors (with or without ``bert.``)."""
        pooling, normalize = _sentence_transformers_pooling(Path(directory) if directory else None)
        try:
            hidden = int(cfg["hidden_size"])
            config = BertConfig(
                vocab_size=int(cfg["vocab_size"]),
                hidden_size=hidden,
                n_layers=int(cfg["num_hidden_layers"]),
                n_heads=int(cfg["num_attention_heads"]),
                intermediate_size=int(cfg["intermediate_size"]),
                max_positions=int(cfg.get("max_position_embeddings", 512)),
                type_vocab_size=int(cfg.get("type_vocab_size", 2)),
                layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-12)),
                hidden_act=str(cfg.get("hidden_act", "gelu")),
                pooling=pooling,
                normalize=normalize,
            )
        except KeyError as exc:
            raise ReferenceModelError(f"config.json has no {exc.args[0]!r}; cannot build BERT") from None
        if cfg.get("position_embedding_type", "absolute") != "absolute":
            raise ReferenceModelError(f"position_embedding_type {cfg['position_embedding_type']!r} is not supported")
        prefix = "bert." if "bert.embeddings.word_embeddings.weight" in available else ""
        c = config
        h = c.hidden_size
        e = prefix + "embeddings."
        shapes: dict[str, tuple[int, ...]] = {
            e + "word_embeddings.weight": (c.vocab_size, h),
            e + "position_embeddings.weight": (c.max_positions, h),
            e + "token_type_embeddings.weight": (c.type_vocab_size, h),
            e + "LayerNorm.weight": (h,),
            e + "LayerNorm.bias": (h,),
        }
        model = cls.__new__(cls)
        model.config, model.prefix = config, prefix
        for i in range(c.n_layers):
            for role, (out_f, in_f) in cls._linear_shapes(model).items():
                name = f"{prefix}encoder.layer.{i}.{role}"
                shapes[name + ".weight"] = (out_f, in_f)
                shapes[name + ".bias"] = (out_f,)
            for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
                shapes[f"{prefix}encoder.layer.{i}.{ln}.weight"] = (h,)
                shapes[f"{prefix}encoder.layer.{i}.{ln}.bias"] = (h,)
        missing = sorted(n for n in shapes if n not in available and not (overrides and n in overrides))
        if missing:
            raise ReferenceModelError(f"{len(missing)} tensor(s) BERT needs are missing, e.g. {missing[:3]}")
        return cls(config, prefix, gather_weights(shapes, provider, overrides, shapes))

    @property
    def n_layers(self) -> int:
        """Number of encoder layers."""
        return self.config.n_layers

    def _proj(self, i: int, role: str, x: np.ndarray) -> np.ndarray:
        name = self._name(i, role)
        return self.linear(name + ".weight", x) + self.weights[name + ".bias"]

    def _ln(self, name: str, x: np.ndarray) -> np.ndarray:
        return layer_norm(x, self.weights[name + ".weight"], self.weights[name + ".bias"], self.config.layer_norm_eps)

    # -- the steps (block at a time) ------------------------------------------
    def block_tensors(self, layer: int) -> list[str]:
        """Names of the tensors of encoder layer ``layer``."""
        p = f"{self.prefix}encoder.layer.{layer}."
        return [n for n in self.weights if n.startswith(p)]

    def embed_sequence(self, ids: np.ndarray, types: np.ndarray) -> np.ndarray:
        """Word + position + token-type embeddings, layer-normed: ``[T, hidden]``."""
        w, e = self.weights, self.prefix + "embeddings."
        h = w[e + "word_embeddings.weight"][ids] + w[e + "position_embeddings.weight"][: ids.size]
        return self._ln(e + "LayerNorm", h + w[e + "token_type_embeddings.weight"][types])

    def encoder_block(self, i: int, h: np.ndarray) -> np.ndarray:
        """Encoder layer ``i`` on one sequence ``h [T, hidden]`` (post-LN, every token sees every token)."""
        c, t = self.config, h.shape[0]
        heads = [
            self._proj(i, f"attention.self.{r}", h).reshape(t, c.n_heads, c.head_dim).transpose(1, 0, 2)
            for r in ("query", "key", "value")
        ]
        a = attention(*heads, None, 1.0 / math.sqrt(c.head_dim))
        h = self._ln(self._name(i, "attention.output.LayerNorm"), h + self._proj(i, "attention.output.dense", a))
        f = self._act(self._proj(i, "intermediate.dense", h))
        return self._ln(self._name(i, "output.LayerNorm"), h + self._proj(i, "output.dense", f))

    def forward(
        self,
        token_ids: Iterable[int] | np.ndarray,
        *,
        token_type_ids: Iterable[int] | np.ndarray | None = None,
        return_hidden: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, list[np.ndarray]]:
        """Last hidden states ``[T, hidden]`` of one unpadded sequence
        (every token attends to every token); with ``return_hidden`` also
        the embedding output and each layer's output (``n_layers + 1``)."""
        c = self.config
        ids = as_token_array(token_ids, c.vocab_size)
        t = ids.size
        if t == 0:
            raise ReferenceModelError("token_ids is empty")
        if t > c.max_positions:
            raise ReferenceModelError(f"sequence of {t} tokens is longer than the model's {c.max_positions} positions")
        types = np.zeros(t, np.int64) if token_type_ids is None else as_token_array(token_type_ids, c.type_vocab_size)
        if types.size != t:
            raise ReferenceModelError(f"token_type_ids has {types.size} entries for {t} tokens")
        with blas_threads(self.blas_threads):
            h = self.embed_sequence(ids, types)
            hidden = [h] if return_hidden else None
            for i in range(c.n_layers):
                h = self.encoder_block(i, h)
                if hidden is not None:
                    hidden.append(h)
        return (h, hidden) if hidden is not None else h

    def sentence_embedding(self, token_ids: Iterable[int] | np.ndarray) -> np.ndarray:
        """Pooled (mean over tokens by default) and, if configured, L2
        normalized ``[hidden]`` float32 vector, as sentence-transformers
        computes it for an unpadded sequence."""
        return self.pool(self.forward(token_ids))

    def pool(self, h: np.ndarray) -> np.ndarray:
        """The head step: last hidden states ``[T, hidden]`` -> the sentence vector."""
        if self.config.pooling == "cls":
            v = h[0]
        elif self.config.pooling == "max":
            v = h.max(axis=0)
        else:
            v = h.mean(axis=0, dtype=F32)
        if self.config.normalize:
            v = v / np.maximum(np.linalg.norm(v), F32(1e-12))
        return v.astype(F32, copy=False)
