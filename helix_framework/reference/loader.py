"""`load_model`: a reference model from a model source (path or open
`ModelSource`), with optional replacement weights for compressed candidates.
"""

from __future__ import annotations

import logging
import os
from typing import Mapping

import numpy as np

from helix_framework.reference.base import DecoderModel, EncoderModel, ReferenceModelError, WeightProvider
from helix_framework.sources import GGUFSource, ModelSource, open_source

logger = logging.getLogger(__name__)

SUPPORTED = (
    "Hugging Face directories (config.json + safetensors) of model_type llama, mistral, qwen2, qwen3, "
    "gpt2, bert; GGUF files of architecture llama, qwen2, qwen3"
)


def _model_type(source: ModelSource) -> str:
    cfg = source.config or {}
    mt = cfg.get("model_type")
    if isinstance(mt, str) and mt:
        return mt.lower()
    arch = (source.architecture or "").lower()
    for key in ("llama", "mistral", "qwen3", "qwen2", "gpt2", "bert"):
        if key in arch:
            return key
    return arch


LLAMA_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "smollm", "smollm2")


def supports_lazy(source: ModelSource) -> bool:
    """Whether `load_model` can load ``source`` lazily (``lazy=True``): the
    decoders (Llama family, GPT-2), not BERT."""
    return isinstance(source, GGUFSource) or (
        source.kind == "hf_directory" and _model_type(source) in (*LLAMA_MODEL_TYPES, "gpt2"))


def load_model(
    source_or_path: ModelSource | str | os.PathLike[str],
    weights: Mapping[str, np.ndarray] | None = None,
    *,
    weight_provider: WeightProvider | None = None,
    lazy: bool = False,
) -> DecoderModel | EncoderModel:
    """Build the numpy reference model of a source.

    ``source_or_path``: an open `ModelSource` or a path `open_source`
    accepts. Tensors are read by their source names: ``weights`` maps a name
    to a replacement float32 array and wins over ``weight_provider(name)``,
    which defaults to ``source.read``; both give arrays in the source's
    orientation and shape (what ``source.read`` returns). This is how a
    compressed candidate is built: the same architecture with reconstructed
    matrices. Replace single matrix products afterwards with
    `ReferenceModel.set_linear`.

    ``lazy``: read each tensor on first use and let the caller release it
    (block-at-a-time calibration and agreement; decoders only).

    Returns a `DecoderModel` (Llama family, GPT-2) or an `EncoderModel`
    (BERT); raises `ReferenceModelError` for anything else.
    """
    source = source_or_path if isinstance(source_or_path, ModelSource) else open_source(source_or_path)
    provider = weight_provider or source.read
    available = {t.name for t in source.tensors()}
    if weights:
        unknown = sorted(set(weights) - available)
        if unknown:
            logger.warning("%d replacement weight(s) name no tensor of the source, e.g. %s", len(unknown), unknown[:3])
    if isinstance(source, GGUFSource):
        from helix_framework.reference import llama

        arch = source.architecture or ""
        if arch not in llama.GGUF_ARCHITECTURES:
            raise ReferenceModelError(f"GGUF architecture {arch!r} has no reference model (supported: {SUPPORTED})")
        if "token_embd.weight" not in available:
            raise ReferenceModelError("GGUF file has no token_embd.weight")
        config, names = llama.config_from_gguf(source.config, available, source.tensor("token_embd.weight").shape)
        return llama.LlamaModel.build(config, names, provider, available, weights, lazy=lazy)
    if source.kind != "hf_directory":
        raise ReferenceModelError(
            f"a {source.kind} source has no config; open the model's directory instead (supported: {SUPPORTED})"
        )
    mt = _model_type(source)
    if mt in LLAMA_MODEL_TYPES:
        from helix_framework.reference import llama

        config, names = llama.config_from_hf(source.config, available)
        return llama.LlamaModel.build(config, names, provider, available, weights, lazy=lazy)
    if mt == "gpt2":
        from helix_framework.reference import gpt2

        return gpt2.GPT2Model.from_hf(source.config, provider, available, weights, lazy=lazy)
    if lazy:
        raise ReferenceModelError(f"model_type {mt!r} has no block-at-a-time (lazy) loading; the decoders have")
    if mt == "bert":
        from helix_framework.reference import bert

        return bert.BertModel.from_hf(source.config, provider, available, weights, directory=source.path)
    raise ReferenceModelError(f"model_type {mt!r} has no reference model (supported: {SUPPORTED})")
