from __future__ import annotations

import numpy as np
import pytest

from edgekit.errors import SourceError, UnsupportedArchitectureError
from edgekit.families import EMBED, FAMILIES, FINAL_NORM, LM_HEAD, layer_weights
from edgekit.rope import inv_freq
from edgekit.spec import ModelSpec, spec_from_config, weight_shapes
from edgekit.testing import tiny_config


def test_both_rope_spellings_give_the_same_spec():
    old = tiny_config(
        "llama",
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    )
    new = tiny_config("llama")
    del new["rope_theta"]
    new["rope_parameters"] = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    assert spec_from_config(old) == spec_from_config(new)
    assert spec_from_config(new).rope.scaling == "llama3"
    assert spec_from_config(new).rope.theta == 500000.0


@pytest.mark.parametrize(
    "scaling,params",
    [
        ("linear", {"factor": 2.0}),
        ("yarn", {"factor": 4.0, "original_max_position_embeddings": 128}),
        ("llama3", {"factor": 8.0, "original_max_position_embeddings": 64}),
    ],
)
def test_rope_scalings_change_frequencies(scaling, params):
    plain = spec_from_config(tiny_config("llama"))
    scaled = spec_from_config(tiny_config("llama", rope_scaling={"type": scaling, **params}))
    assert scaled.rope.scaling == scaling
    assert not np.allclose(inv_freq(plain)[0], inv_freq(scaled)[0])


def test_legacy_type_key_and_default_mean_no_scaling():
    spec = spec_from_config(tiny_config("llama", rope_scaling={"type": "default"}))
    assert spec.rope.scaling == "none"


def test_family_features():
    assert spec_from_config(tiny_config("qwen2")).qkv_bias
    assert spec_from_config(tiny_config("qwen3")).qk_norm
    assert spec_from_config(tiny_config("qwen3")).head_dim == 32
    phi3 = spec_from_config(tiny_config("phi3"))
    assert phi3.fused_qkv and phi3.fused_gate_up
    assert "model.layers.0.self_attn.qkv_proj.weight" in weight_shapes(phi3)
    gemma = spec_from_config(tiny_config("gemma"))
    assert gemma.hidden_act == "gelu_pytorch_tanh" and gemma.head_dim == 32 and gemma.tie_word_embeddings
    assert "lm_head.weight" not in weight_shapes(gemma)


@pytest.mark.parametrize(
    "keys,expected",
    [
        ({}, "gelu_pytorch_tanh"),  # GemmaConfig's default
        ({"hidden_act": "gelu"}, "gelu_pytorch_tanh"),  # the legacy spelling of the tanh approximation
        ({"hidden_act": "gelu", "hidden_activation": "gelu_pytorch_tanh"}, "gelu_pytorch_tanh"),
    ],
)
def test_gemma_activation_is_read_as_transformers_reads_it(keys, expected):
    config = {k: v for k, v in tiny_config("gemma").items() if k not in ("hidden_act", "hidden_activation")}
    assert spec_from_config({**config, **keys}).hidden_act == expected


def test_layer_weights_name_every_tensor_once():
    for family in FAMILIES:
        spec = spec_from_config(tiny_config(family, attention_bias=True, mlp_bias=True))
        named = [EMBED, FINAL_NORM] + ([] if spec.tie_word_embeddings else [LM_HEAD])
        for n in range(spec.num_layers):
            lw = layer_weights(spec, n)
            named += [lw.input_norm, *lw.qkv, *lw.qkv_bias, lw.o, lw.post_norm, *lw.gate_up, *lw.gate_up_bias, lw.down]
            named += [x for x in (lw.o_bias, lw.q_norm, lw.k_norm, lw.down_bias) if x]
        assert sorted(named) == sorted(weight_shapes(spec)), family


def test_round_trip_through_dict():
    spec = spec_from_config(
        tiny_config("llama", rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128})
    )
    assert ModelSpec.from_dict(spec.to_dict()) == spec


def test_unknown_architecture_names_it_and_lists_supported():
    with pytest.raises(UnsupportedArchitectureError) as err:
        spec_from_config(tiny_config("llama", model_type="gpt_neox"), "x/config.json")
    message = str(err.value)
    assert "gpt_neox" in message and "x/config.json" in message
    for family in ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma"):
        assert family in message


def test_unsupported_rope_scaling():
    with pytest.raises(UnsupportedArchitectureError, match="longrope"):
        spec_from_config(tiny_config("phi3", rope_scaling={"type": "longrope", "factor": 4.0}))


def test_missing_required_key():
    config = tiny_config("llama")
    del config["num_hidden_layers"]
    with pytest.raises(SourceError, match="num_hidden_layers"):
        spec_from_config(config)
