"""What a GGUF export of a Hugging Face Llama-family directory needs that the
directory does not say in GGUF terms, done as llama.cpp's
``convert_hf_to_gguf.py`` does it:

- metadata: the ``llama.*`` hyper-parameters from config.json, and the
  tokenizer (``tokenizer.ggml.*``: BPE tokens, types, merges, special ids,
  add-BOS, chat template) from tokenizer.json and tokenizer_config.json;
- tensor names: gguf-py's map of Hugging Face names (``model.layers.N.
  self_attn.q_proj.weight`` -> ``blk.N.attn_q.weight``);
- q/k rows: llama.cpp rotates adjacent pairs, Hugging Face pairs ``i`` with
  ``i + d/2`` in each head, so the converter reorders the rows of q and k
  (``LlamaModel.permute``); `qk_row_order` gives that order as indices.

The pre-tokenizer name is found as the converter finds it: the SHA-256 of
the token ids of its check text, looked up among the pre-tokenizers helix's
own GGUF tokenizer rebuilds.
"""

from __future__ import annotations

import json
from hashlib import sha256
from pathlib import Path
from typing import Any

import numpy as np

from helix_framework.errors import ExportError

__all__ = ["HFLayout", "hf_layout", "qk_row_order"]

#: config.json ``architectures`` llama.cpp's converter writes as GGUF ``llama``
ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")

#: llama.cpp's pre-tokenizer check text (convert_hf_to_gguf.py, get_vocab_base_pre)
CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 333 "
    "3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
    "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
#: SHA-256 of the check text's token ids -> llama.cpp's pre-tokenizer name (from the converter's table)
PRE_TOKENIZERS = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d": "smaug-bpe",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    "35d91631860c815f952d711435f48d356ebac988362536bed955d43bfa436e34": "starcoder",
    "6221ad2852e85ce96f791f476e0b390cf9b474c9e3d1362f53a24a06dc8220ff": "refact",
    "7b3e7548e4308f52a76e8229e4e6cc831195d0d1df43aed21ac6c93da05fec5f": "codeshell",
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
}

# gguf token types (llama.cpp's LLAMA_TOKEN_TYPE_*)
_NORMAL, _CONTROL, _USER_DEFINED, _UNUSED = 1, 3, 4, 5


def qk_row_order(rows: int, n_head: int) -> np.ndarray:
    """Row indices that put a Hugging Face q (``n_head`` heads) or k
    (``n_head`` = KV heads) projection in llama.cpp's order:
    ``gguf_rows = hf_rows[order]``. The converter's ``permute`` applied to
    ``arange``."""
    if rows % (2 * n_head):
        raise ExportError(f"{rows} rows do not split into {n_head} heads of pairs", field="num_attention_heads")
    return np.arange(rows).reshape(n_head, 2, rows // n_head // 2).swapaxes(1, 2).reshape(rows)


class HFLayout:
    """GGUF names, row orders and metadata for one Hugging Face directory."""

    arch = "llama"

    def __init__(self, directory: Path, config: dict[str, Any]):
        import gguf

        self.directory, self.config = directory, config
        self.n_layers = int(self._key("num_hidden_layers"))
        self.n_head = int(self._key("num_attention_heads"))
        self.n_kv = int(config.get("num_key_value_heads") or self.n_head)
        self._names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, self.n_layers)

    def _key(self, key: str) -> Any:
        if self.config.get(key) is None:
            raise ExportError(f"config.json has no {key!r}", field=key)
        return self.config[key]

    def name(self, hf_name: str) -> str | None:
        """llama.cpp's name of a tensor (None: not written, as the converter
        drops RoPE's inverse frequencies); a name it has none for is refused."""
        if hf_name.endswith("rotary_emb.inv_freq"):
            return None
        out = self._names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if out is None:
            raise ExportError("llama.cpp's llama architecture has no tensor of this name", tensor=hf_name)
        return out

    def row_order(self, hf_name: str, rows: int) -> np.ndarray | None:
        if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            return qk_row_order(rows, self.n_head)
        if hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            return qk_row_order(rows, self.n_kv)
        return None

    def write_metadata(self, writer: Any) -> None:
        """Hyper-parameters and tokenizer, with llama.cpp's key names."""
        cfg = self.config
        hidden = int(self._key("hidden_size"))
        writer.add_name(self.directory.name)
        writer.add_block_count(self.n_layers)
        writer.add_context_length(int(self._key("max_position_embeddings")))
        writer.add_embedding_length(hidden)
        writer.add_feed_forward_length(int(self._key("intermediate_size")))
        writer.add_head_count(self.n_head)
        writer.add_head_count_kv(self.n_kv)
        writer.add_rope_freq_base(float(cfg.get("rope_theta", 10000.0)))
        writer.add_layer_norm_rms_eps(float(self._key("rms_norm_eps")))
        writer.add_vocab_size(int(self._key("vocab_size")))
        head_dim = int(cfg.get("head_dim") or hidden // self.n_head)
        writer.add_rope_dimension_count(head_dim)
        if head_dim != hidden // self.n_head:
            writer.add_key_length(head_dim)
            writer.add_value_length(head_dim)
        self._rope_scaling(writer)
        self._tokenizer(writer)

    def _rope_scaling(self, writer: Any) -> None:
        import gguf

        scaling = self.config.get("rope_scaling") or {}
        kind = scaling.get("rope_type") or scaling.get("type") or "default"
        if kind == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(float(scaling["factor"]))
        elif kind != "default":
            raise ExportError(f"RoPE scaling {kind!r} is not exported (supported: none, linear)", field="rope_scaling")

    def _tokenizer(self, writer: Any) -> None:
        import gguf
        import tokenizers

        path = self.directory / "tokenizer.json"
        if not path.is_file():
            raise ExportError(f"{self.directory}: no tokenizer.json (a byte-level BPE tokenizer is needed)",
                              field="tokenizer.json")
        spec = json.loads(path.read_text(encoding="utf-8"))
        if (spec.get("model") or {}).get("type") != "BPE":
            raise ExportError("only byte-level BPE tokenizers are exported", field="tokenizer.json model.type")
        backend = tokenizers.Tokenizer.from_file(str(path))
        digest = sha256(str(backend.encode(CHECK_TEXT).ids).encode()).hexdigest()
        pre = PRE_TOKENIZERS.get(digest)
        if pre is None:
            raise ExportError(f"pre-tokenizer not recognised (check-text hash {digest[:16]}...; known: "
                              f"{', '.join(sorted(set(PRE_TOKENIZERS.values())))})", field="tokenizer.json pre_tokenizer")
        n_vocab = int(self._key("vocab_size"))
        vocab = backend.get_vocab(with_added_tokens=True)
        added = backend.get_added_tokens_decoder()
        tokens, types = [f"[PAD{i}]" for i in range(n_vocab)], [_UNUSED] * n_vocab
        for token, i in vocab.items():
            if i >= n_vocab:
                raise ExportError(f"token {token!r} has id {i}, beyond vocab_size {n_vocab}", field="vocab_size")
            tokens[i] = token
            if i in added:
                types[i] = _CONTROL if added[i].special or _looks_special(token) else _USER_DEFINED
            else:
                types[i] = _NORMAL
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        # merges, bos/eos/unk/pad ids, add_bos/add_eos and the chat template, read as the converter reads them
        special = gguf.SpecialVocab(self.directory, load_merges=True, n_vocab=n_vocab)
        bos = special.special_token_ids.get("bos")
        if "bos" not in special.add_special_token and bos is not None:
            # not stated anywhere: llama.cpp should add BOS exactly when the tokenizer itself does
            special.add_special_token["bos"] = backend.encode("").ids[:1] == [bos]
        special.add_to_gguf(writer)


def _looks_special(token: str) -> bool:
    # the converter's does_token_look_special, for the cases a byte-level BPE has
    return token.startswith("<|") and token.endswith("|>") or token in ("<pad>", "<mask>")


def hf_layout(directory: Path) -> HFLayout:
    """The layout of a Hugging Face directory whose config.json names a
    Llama-family architecture llama.cpp's converter writes as ``llama``;
    anything else is refused naming the field."""
    from helix_framework.errors import SourceError
    from helix_framework.sources.base import parse_json

    path = directory / "config.json"
    try:
        config = parse_json(path.read_bytes(), path=str(path), what="config.json")
    except (OSError, SourceError) as exc:
        raise ExportError(f"cannot read {path}: {exc}", field="config.json") from None
    if not isinstance(config, dict):
        raise ExportError(f"{directory}/config.json is not a JSON object", field="config.json")
    archs = config.get("architectures") or []
    arch = archs[0] if isinstance(archs, list) and archs else config.get("model_type")
    if arch not in ARCHITECTURES:
        raise ExportError(f"architecture {arch!r} is not exported to GGUF (supported: {', '.join(ARCHITECTURES)})",
                          field="architectures")
    return HFLayout(directory, config)
