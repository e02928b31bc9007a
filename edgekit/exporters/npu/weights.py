"""The weights the npu graphs compute with: each RMS norm's weight folded into the next MatMul,
every MatMul's weight int8 per output channel, the embedding int8 per row; and the same values as
float weights for the numpy reference that verification compares with."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ...spec import ModelSpec


@dataclass
class NpuWeights:
    """Per output channel int8 weights, transposed for MatMul ([in, out] codes, [out] scales), the
    small float tensors, and the exact float weights the graph computes with (for the reference)."""

    spec: ModelSpec
    mats: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    dense: dict[str, np.ndarray] = field(default_factory=dict)
    reference: dict[str, np.ndarray] = field(default_factory=dict)
    embedding: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def reference_spec(self) -> ModelSpec:
        return replace(self.spec, fused_qkv=False, fused_gate_up=False, tie_word_embeddings=False)


def per_channel_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """codes int8 [out, in] and scales [out] of w [out, in], symmetric."""
    scales = np.maximum(np.abs(w).max(axis=1), 1e-12).astype(np.float32) / 127
    return np.clip(np.round(w / scales[:, None]), -127, 127).astype(np.int8), scales


def npu_weights(spec: ModelSpec, weights) -> NpuWeights:
    """`weights`: the quantized model's dequantized weights. Each RMS norm's weight (and, without
    qk norm, attention's 1/sqrt(head_dim)) is folded into the following MatMul's weights, which are
    then stored int8 per output channel; fused q/k/v and gate/up are split into their parts (exact,
    the scales being per row). The reference weights are the values the graph computes with, the
    folded factors divided out again and the norms' weights set to 1."""
    s, out = spec, NpuWeights(spec)
    q_factor = np.float32(1.0) if s.qk_norm else np.float32(1 / np.sqrt(s.head_dim))
    ref = out.reference

    def get(name: str) -> np.ndarray | None:
        return np.asarray(weights[name], np.float32) if name in weights else None

    def linear(key: str, name: str, w: np.ndarray, norm: np.ndarray | None, bias: np.ndarray | None, factor=1.0):
        fold = (norm if norm is not None else np.ones(w.shape[1], np.float32)) * np.float32(factor)
        codes, scales = per_channel_int8(w * fold[None, :])
        out.mats[key] = (np.ascontiguousarray(codes.T), scales)
        divide = np.float32(factor)
        ref[name + ".weight"] = codes.astype(np.float32) * (scales / divide)[:, None]
        if bias is not None:
            out.dense[key + ".bias"] = (bias * np.float32(factor)).astype(np.float32)
            ref[name + ".bias"] = bias

    ones = np.ones(s.hidden_size, np.float32)
    for n in range(s.num_layers):
        p, key = f"model.layers.{n}.", f"/model/layers.{n}"
        g_in, g_post = get(p + "input_layernorm.weight"), get(p + "post_attention_layernorm.weight")
        if s.fused_qkv:
            parts = np.split(get(p + "self_attn.qkv_proj.weight"), [s.q_size, s.q_size + s.kv_size])
        else:
            parts = [get(p + f"self_attn.{x}_proj.weight") for x in "qkv"]
        for x, w in zip("qkv", parts, strict=True):
            factor = q_factor if x == "q" else 1.0
            bias = None if s.fused_qkv else get(p + f"self_attn.{x}_proj.bias")
            linear(f"{key}/attn/{x}_proj", p + f"self_attn.{x}_proj", w, g_in, bias, factor)
        linear(
            f"{key}/attn/o_proj",
            p + "self_attn.o_proj",
            get(p + "self_attn.o_proj.weight"),
            None,
            get(p + "self_attn.o_proj.bias"),
        )
        if s.qk_norm:
            for x, factor in (("q", 1 / np.sqrt(s.head_dim)), ("k", 1.0)):
                g = get(p + f"self_attn.{x}_norm.weight")
                out.dense[f"{key}/attn/{x}_norm.weight"] = (g * factor).astype(np.float32)
                ref[p + f"self_attn.{x}_norm.weight"] = g
        if s.fused_gate_up:
            gate, up = np.split(get(p + "mlp.gate_up_proj.weight"), 2)
        else:
            gate, up = get(p + "mlp.gate_proj.weight"), get(p + "mlp.up_proj.weight")
        for x, w in (("gate", gate), ("up", up)):
            linear(f"{key}/mlp/{x}_proj", p + f"mlp.{x}_proj", w, g_post, get(p + f"mlp.{x}_proj.bias"))
        linear(
            f"{key}/mlp/down_proj",
            p + "mlp.down_proj",
            get(p + "mlp.down_proj.weight"),
            None,
            get(p + "mlp.down_proj.bias"),
        )
        ref[p + "input_layernorm.weight"] = ref[p + "post_attention_layernorm.weight"] = ones
    head = get("model.embed_tokens.weight" if s.tie_word_embeddings else "lm_head.weight")
    linear("/lm_head", "lm_head", head, get("model.norm.weight"), None)
    ref["model.norm.weight"] = ones
    codes, scales = per_channel_int8(get("model.embed_tokens.weight"))
    out.embedding = (codes, scales)
    ref["model.embed_tokens.weight"] = codes.astype(np.float32) * scales[:, None]
    return out
