"""Numpy float32 reference forward passes: the Llama family, GPT-2 and BERT.

`load_model` builds one from a model source (config.json + safetensors, or
GGUF), optionally with replacement weights; `load_tokenizer` gives the
matching tokenizer. Decoders compute ``forward(ids) -> logits [T, vocab]``
for all positions at once and greedy `generate` with a KV cache; every
matrix product goes through `ReferenceModel.linear`, replaceable per layer.
"""

from helix_framework.reference.base import (
    DecoderModel,
    EncoderModel,
    KVCache,
    LinearFn,
    LinearSpec,
    ReferenceModel,
    ReferenceModelError,
    WeightProvider,
    blas_threads,
    log_softmax,
    softmax,
)
from helix_framework.reference.bert import BertConfig, BertModel
from helix_framework.reference.gpt2 import GPT2Config, GPT2Model
from helix_framework.reference.llama import LlamaConfig, LlamaModel, RopeScaling
from helix_framework.reference.loader import load_model
from helix_framework.reference.tokenizer import Tokenizer, load_tokenizer

__all__ = [
    "BertConfig",
    "BertModel",
    "DecoderModel",
    "EncoderModel",
    "GPT2Config",
    "GPT2Model",
    "KVCache",
    "LinearFn",
    "LinearSpec",
    "LlamaConfig",
    "LlamaModel",
    "ReferenceModel",
    "ReferenceModelError",
    "RopeScaling",
    "Tokenizer",
    "WeightProvider",
    "blas_threads",
    "load_model",
    "load_tokenizer",
    "log_softmax",
    "softmax",
]
