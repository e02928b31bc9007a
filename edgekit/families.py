"""The decoder families, each described once, and the canonical (Hugging Face) weight names.

A family is one `Family` entry: what sets it apart from plain Llama. Every backend (the numpy
reference, the ONNX and MLX decoders, the torch model) and every source reads tensor names from
`layer_weights` / the global names here instead of spelling them out.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .spec import ModelSpec


@dataclass(frozen=True)
class Family:
    """What sets one decoder family apart from plain Llama."""

    model_type: str
    architecture: str
    gguf_arch: str  # llama.cpp's general.architecture for this family
    fused_qkv: bool = False  # one qkv_proj instead of q/k/v_proj (phi3)
    fused_gate_up: bool = False  # one gate_up_proj, gate rows first (phi3)
    qkv_bias: bool = False  # always-on q/k/v biases (qwen2)
    qk_norm: bool = False  # RMS norm over head_dim on q and k before rotary (qwen3)
    attention_bias_on_o: bool = False  # the config's `attention_bias` biases o_proj too
    sliding_window_switch: str | None = None  # config key that must be true for `sliding_window` to apply
    activation_keys: tuple[str, ...] = ("hidden_act",)  # config keys naming the MLP activation, first set wins
    default_activation: str = "silu"
    activation_aliases: tuple[tuple[str, str], ...] = ()  # (config spelling, what it means)
    scaled_embedding: bool = False  # embedding rows times sqrt(hidden_size) after the lookup (lm_head unscaled)
    norm_offset: float = 0.0  # HF stores RMS norm weights w that multiply by w + norm_offset
    # transformers' config class default, for a config.json that leaves `tie_word_embeddings` out
    # (transformers 4 omits it when it equals the base class's True)
    tied_embeddings_default: bool = False
    gguf_permuted_qk: bool = False  # llama.cpp interleaves the rotary halves of q/k rows

    def activation(self, config: dict) -> str:
        name = next((config[k] for k in self.activation_keys if config.get(k)), self.default_activation)
        return dict(self.activation_aliases).get(name, name)


FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (
        Family("llama", "LlamaForCausalLM", "llama", attention_bias_on_o=True, gguf_permuted_qk=True),
        # llama.cpp writes Mistral models as "llama"
        Family("mistral", "MistralForCausalLM", "llama", attention_bias_on_o=True, gguf_permuted_qk=True),
        Family("qwen2", "Qwen2ForCausalLM", "qwen2", qkv_bias=True, sliding_window_switch="use_sliding_window"),
        Family("qwen3", "Qwen3ForCausalLM", "qwen3", qk_norm=True),
        Family("phi3", "Phi3ForCausalLM", "phi3", fused_qkv=True, fused_gate_up=True),
        Family(
            "gemma",
            "GemmaForCausalLM",
            "gemma",
            attention_bias_on_o=True,
            # released configs carry both keys (hidden_act "gelu" meaning the tanh approximation)
            activation_keys=("hidden_activation", "hidden_act"),
            default_activation="gelu_pytorch_tanh",
            activation_aliases=(("gelu", "gelu_pytorch_tanh"),),
            scaled_embedding=True,
            norm_offset=1.0,
            tied_embeddings_default=True,
        ),
    )
}

# GGUF general.architecture -> family; "llama" files are read as llama (Mistral included).
GGUF_ARCHITECTURES: dict[str, Family] = {}
for _family in FAMILIES.values():
    GGUF_ARCHITECTURES.setdefault(_family.gguf_arch, _family)


EMBED = "model.embed_tokens.weight"
FINAL_NORM = "model.norm.weight"
LM_HEAD = "lm_head.weight"
# a [hidden, hidden] projection after the final norm, in artifacts with a rotated residual stream and
# a tied lm_head (quant/rotate.py)
FINAL_ROTATION = "model.final_rotation.weight"

LAYER_NAME = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def layer_prefix(n: int) -> str:
    return f"model.layers.{n}."


def renumbered(name: str, layer: int) -> str:
    """A layer tensor's name moved to layer `layer`."""
    match = LAYER_NAME.match(name)
    assert match, name
    return layer_prefix(layer) + match.group(2)


def module(name: str) -> str:
    """The module a weight or bias belongs to: 'model.layers.0.self_attn.q_proj'."""
    return name.rpartition(".")[0]


def bias_of(weight: str) -> str:
    return module(weight) + ".bias"


def head_weight(spec: ModelSpec) -> str:
    """The matrix the lm_head multiplies with: the embedding when tied."""
    return EMBED if spec.tie_word_embeddings else LM_HEAD


def embedding_scale(spec: ModelSpec) -> float:
    """What embedding rows are multiplied by after the lookup (gemma: sqrt(hidden_size))."""
    family = FAMILIES.get(spec.family)
    return math.sqrt(spec.hidden_size) if family is not None and family.scaled_embedding else 1.0


def norm_offset(family: str) -> float:
    found = FAMILIES.get(family)
    return found.norm_offset if found is not None else 0.0


@dataclass(frozen=True)
class LayerWeights:
    """Canonical names of decoder layer n's tensors for one spec. Tuples list the parts of a
    projection in output order (one fused name, or q/k/v, gate/up); an absent tensor is None or ()."""

    prefix: str
    input_norm: str
    qkv: tuple[str, ...]
    qkv_bias: tuple[str, ...]
    o: str
    o_bias: str | None
    q_norm: str | None
    k_norm: str | None
    post_norm: str
    gate_up: tuple[str, ...]
    gate_up_bias: tuple[str, ...]
    down: str
    down_bias: str | None

    # Names of the projection inputs (what the reference's `observe` hook reports).
    @property
    def qkv_input(self) -> str:
        return self.prefix + "self_attn.qkv"

    @property
    def o_input(self) -> str:
        return module(self.o)

    @property
    def gate_up_input(self) -> str:
        return self.prefix + "mlp.gate_up"

    @property
    def down_input(self) -> str:
        return module(self.down)

    def projection_inputs(self) -> dict[str, list[str]]:
        """Projection input -> the weights that read it."""
        return {
            self.qkv_input: list(self.qkv),
            self.o_input: [self.o],
            self.gate_up_input: list(self.gate_up),
            self.down_input: [self.down],
        }

    @property
    def norms(self) -> tuple[str, ...]:
        return tuple(n for n in (self.input_norm, self.post_norm, self.q_norm, self.k_norm) if n)

    @property
    def v(self) -> str:
        """The weight whose rows are v (the fused qkv_proj's last kv_size rows when fused)."""
        return self.qkv[-1]

    @property
    def up(self) -> str:
        """The weight whose rows are up (the fused gate_up_proj's second half when fused)."""
        return self.gate_up[-1]


def layer_weights(spec: ModelSpec, n: int) -> LayerWeights:
    p = layer_prefix(n)
    attn, mlp = p + "self_attn.", p + "mlp."
    qkv = ("qkv_proj",) if spec.fused_qkv else ("q_proj", "k_proj", "v_proj")
    gate_up = ("gate_up_proj",) if spec.fused_gate_up else ("gate_proj", "up_proj")
    return LayerWeights(
        prefix=p,
        input_norm=p + "input_layernorm.weight",
        qkv=tuple(f"{attn}{x}.weight" for x in qkv),
        qkv_bias=tuple(f"{attn}{x}.bias" for x in qkv) if spec.qkv_bias else (),
        o=attn + "o_proj.weight",
        o_bias=attn + "o_proj.bias" if spec.o_bias else None,
        q_norm=attn + "q_norm.weight" if spec.qk_norm else None,
        k_norm=attn + "k_norm.weight" if spec.qk_norm else None,
        post_norm=p + "post_attention_layernorm.weight",
        gate_up=tuple(f"{mlp}{x}.weight" for x in gate_up),
        gate_up_bias=tuple(f"{mlp}{x}.bias" for x in gate_up) if spec.mlp_bias else (),
        down=mlp + "down_proj.weight",
        down_bias=mlp + "down_proj.bias" if spec.mlp_bias else None,
    )


def norm_names(spec: ModelSpec) -> list[str]:
    """Every RMS norm weight of the model."""
    return [name for n in range(spec.num_layers) for name in layer_weights(spec, n).norms] + [FINAL_NORM]


def weight_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Every tensor the family needs, by canonical HF name, with its shape."""
    h, i, hd = spec.hidden_size, spec.intermediate_size, spec.head_dim
    shapes: dict[str, tuple[int, ...]] = {EMBED: (spec.vocab_size, h)}
    qkv_rows = (spec.q_size + 2 * spec.kv_size,) if spec.fused_qkv else (spec.q_size, spec.kv_size, spec.kv_size)
    gate_up_rows = (2 * i,) if spec.fused_gate_up else (i, i)
    for n in range(spec.num_layers):
        lw = layer_weights(spec, n)
        shapes[lw.input_norm] = (h,)
        shapes[lw.post_norm] = (h,)
        for k, (weight, rows) in enumerate(zip(lw.qkv, qkv_rows, strict=True)):
            shapes[weight] = (rows, h)
            if lw.qkv_bias:
                shapes[lw.qkv_bias[k]] = (rows,)
        shapes[lw.o] = (h, spec.q_size)
        if lw.o_bias:
            shapes[lw.o_bias] = (h,)
        if lw.q_norm and lw.k_norm:
            shapes[lw.q_norm] = (hd,)
            shapes[lw.k_norm] = (hd,)
        for k, (weight, rows) in enumerate(zip(lw.gate_up, gate_up_rows, strict=True)):
            shapes[weight] = (rows, h)
            if lw.gate_up_bias:
                shapes[lw.gate_up_bias[k]] = (rows,)
        shapes[lw.down] = (h, i)
        if lw.down_bias:
            shapes[lw.down_bias] = (h,)
    shapes[FINAL_NORM] = (h,)
    if not spec.tie_word_embeddings:
        shapes[LM_HEAD] = (spec.vocab_size, h)
    return shapes
