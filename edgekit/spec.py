"""ModelSpec: the normalized description of a decoder that every stage shares.

It is built from an HF `config.json` dict (GGUF sources first translate their metadata into
such a dict), so there is one parser for both source formats.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .errors import SourceError, UnsupportedArchitectureError
from .families import FAMILIES, Family, weight_shapes

__all__ = ["FAMILIES", "Family", "ModelSpec", "RopeSpec", "spec_from_config", "weight_shapes"]


ROPE_SCALINGS = ("none", "linear", "llama3", "yarn")
ACTIVATIONS = ("silu", "gelu", "gelu_pytorch_tanh")


@dataclass(frozen=True)
class RopeSpec:
    theta: float = 10000.0
    scaling: str = "none"  # one of ROPE_SCALINGS
    factor: float = 1.0
    original_max_position: int | None = None
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    beta_fast: float = 32.0  # yarn
    beta_slow: float = 1.0  # yarn
    attention_factor: float | None = None  # yarn; None = derived from factor
    mscale: float | None = None  # yarn (DeepSeek spelling)
    mscale_all_dim: float | None = None  # yarn
    truncate: bool = True  # yarn
    partial_rotary_factor: float = 1.0
    # Per-frequency divisors written by llama.cpp (`rope_freqs`) instead of llama3 parameters.
    freq_factors: tuple[float, ...] | None = None


@dataclass(frozen=True)
class ModelSpec:
    family: str
    architecture: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rope: RopeSpec
    rms_norm_eps: float
    tie_word_embeddings: bool
    max_position_embeddings: int
    hidden_act: str = "silu"
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    fused_qkv: bool = False
    fused_gate_up: bool = False
    sliding_window: int | None = None
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)
    pad_token_id: int | None = None

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rope.partial_rotary_factor)

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        data = dict(data)
        rope = dict(data.pop("rope"))
        if rope.get("freq_factors") is not None:
            rope["freq_factors"] = tuple(rope["freq_factors"])
        data["eos_token_ids"] = tuple(data.get("eos_token_ids") or ())
        known = {f.name for f in fields(cls)}
        return cls(rope=RopeSpec(**rope), **{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_config(cls, config: dict[str, Any], where: str = "config.json") -> ModelSpec:
        return spec_from_config(config, where)


def supported_list() -> str:
    return ", ".join(FAMILIES)  # in table order: the oldest families first


def family_of(config: dict[str, Any], where: str) -> Family:
    model_type = config.get("model_type")
    if not model_type:
        raise SourceError(f"{where}: no 'model_type' key; is this a Hugging Face transformers config?")
    family = FAMILIES.get(model_type)
    if family is None:
        raise UnsupportedArchitectureError(
            f"{where}: architecture '{model_type}' is not supported by the native exporter; "
            f"supported: {supported_list()}"
        )
    return family


def _rope_from_config(config: dict[str, Any], where: str) -> RopeSpec:
    # transformers >= 5 writes `rope_parameters` (theta inside); older configs write
    # `rope_theta` and `rope_scaling`. Either may carry `partial_rotary_factor`.
    params: dict[str, Any] = {}
    for key in ("rope_scaling", "rope_parameters"):
        value = config.get(key)
        if isinstance(value, dict):
            params.update(value)
    kind = params.get("rope_type") or params.get("type") or "default"
    scaling = {"default": "none"}.get(kind, kind)
    if scaling not in ROPE_SCALINGS:
        raise UnsupportedArchitectureError(
            f"{where}: rope scaling '{kind}' is not supported; supported: default, " + ", ".join(ROPE_SCALINGS[1:])
        )
    theta = params.get("rope_theta", config.get("rope_theta", 10000.0))
    original = params.get("original_max_position_embeddings") or config.get("original_max_position_embeddings")
    if scaling == "yarn" and not original:
        original = config.get("max_position_embeddings")
    factor = params.get("factor")
    if factor is None:
        # A yarn config with no factor scales by the ratio of its context to the pretrained one.
        factor = config["max_position_embeddings"] / original if scaling == "yarn" else 1.0
    return RopeSpec(
        theta=float(theta),
        scaling=scaling,
        factor=float(factor),
        original_max_position=int(original) if original else None,
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        beta_fast=float(params.get("beta_fast") or 32.0),
        beta_slow=float(params.get("beta_slow") or 1.0),
        attention_factor=params.get("attention_factor"),
        mscale=params.get("mscale"),
        mscale_all_dim=params.get("mscale_all_dim"),
        truncate=bool(params.get("truncate", True)),
        partial_rotary_factor=float(
            params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)) or 1.0
        ),
    )


def _required(config: dict[str, Any], key: str, where: str) -> Any:
    if config.get(key) is None:
        raise SourceError(f"{where}: required key '{key}' is missing; the config is incomplete or corrupt")
    return config[key]


def id_tuple(value: Any) -> tuple[int, ...]:
    """A config's token id field (one id, a list, or None) as a tuple."""
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    return (int(value),)


def spec_from_config(config: dict[str, Any], where: str = "config.json") -> ModelSpec:
    family = family_of(config, where)
    hidden = int(_required(config, "hidden_size", where))
    heads = int(_required(config, "num_attention_heads", where))
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    act = family.activation(config)
    if act not in ACTIVATIONS:
        raise UnsupportedArchitectureError(
            f"{where}: hidden_act '{act}' is not supported; supported: {', '.join(ACTIVATIONS)}"
        )
    if heads % kv_heads:
        raise SourceError(f"{where}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
    attention_bias = bool(config.get("attention_bias", False))
    sliding = config.get("sliding_window")
    if family.sliding_window_switch and not config.get(family.sliding_window_switch, False):
        sliding = None
    return ModelSpec(
        family=family.model_type,
        architecture=(config.get("architectures") or [family.architecture])[0],
        vocab_size=int(_required(config, "vocab_size", where)),
        hidden_size=hidden,
        num_layers=int(_required(config, "num_hidden_layers", where)),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=int(_required(config, "intermediate_size", where)),
        rope=_rope_from_config(config, where),
        rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", family.tied_embeddings_default)),
        max_position_embeddings=int(config.get("max_position_embeddings", 2048)),
        hidden_act=act,
        qkv_bias=family.qkv_bias or attention_bias,
        # Llama-style `attention_bias` also puts a bias on o_proj; qwen2's fixed biases do not.
        o_bias=attention_bias and family.attention_bias_on_o,
        mlp_bias=bool(config.get("mlp_bias", False)),
        qk_norm=family.qk_norm,
        fused_qkv=family.fused_qkv,
        fused_gate_up=family.fused_gate_up,
        sliding_window=int(sliding) if sliding else None,
        bos_token_id=config.get("bos_token_id"),
        eos_token_ids=id_tuple(config.get("eos_token_id")),
        pad_token_id=config.get("pad_token_id"),
    )
