from __future__ import annotations

import numpy as np
import pytest

from edgekit.errors import SourceError, UnsupportedArchitectureError
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
    for family in ("llama", "mistral", "qwen2", "qwen3", "phi3"):
        assert family in message


def test_unsupported_rope_scaling():
    with pytest.raises(UnsupportedArchitectureError, match="longrope"):
        spec_from_config(tiny_config("phi3", rope_scaling={"type": "longrope", "factor": 4.0}))


def test_missing_required_key():
    config = tiny_config("llama")
    del config["num_hidden_layers"]
    with pytest.raises(SourceError, match="num_hidden_layers"):
        spec_from_config(config)
