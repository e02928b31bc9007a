"""The weights the npu graphs compute with: each RMS norm's weight folded into the next MatMul,
every MatMul's weight int8 per output channel, the embedding int8 per row; and the same values as
float weights for the numpy reference that verification compares with."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from ...families import EMBED, FINAL_NORM, LM_HEAD, embedding_scale, head_weight, layer_weights, module
from ...spec import ModelSpec
from .weight_formats import DEFAULT_FORMAT, FALLBACK_FORMAT, FORMATS, Encoded, WeightFormat


@dataclass
class NpuWeights:
    """Per output channel int8 weights, transposed for MatMul ([in, out] codes, [out] scales), the
    small float tensors, and the exact float weights the graph computes with (for the reference)."""

    spec: ModelSpec
    mats: dict[str, tuple[str, Encoded]] = field(default_factory=dict)  # key -> (format name, weight)
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


def npu_weights(
    spec: ModelSpec, weights, weight_format: str = DEFAULT_FORMAT, bits: Mapping[str, int] | None = None
) -> NpuWeights:
    """`weights`: the quantized model's dequantized weights; `bits`: the bits the recipe gave each
    (a weight above 4 bits, like the profiles' 8-bit lm_head, is stored int8 per channel).
    Attention's 1/sqrt(head_dim) (without qk norm) is folded into q_proj's weights, exactly (one
    factor for the whole weight); each RMS norm's weight too where the format re-rounds at 8 bits
    (int8 per channel); a 4-bit format keeps the recipe's 4-bit grid, so the norm stays the
    RMSNormalization's scale. Fused q/k/v and gate/up are split into their parts (exact, the
    scales being per row). The reference weights are the values the graph computes with, the
    folded factors divided out again and folded norms' weights set to 1."""
    s, out = spec, NpuWeights(spec)
    chosen = FORMATS[weight_format]
    q_factor = np.float32(1.0) if s.qk_norm else np.float32(1 / np.sqrt(s.head_dim))
    ref = out.reference

    def get(name: str) -> np.ndarray | None:
        return np.asarray(weights[name], np.float32) if name in weights else None

    def fmt_for(source: str, w: np.ndarray) -> WeightFormat:
        wide = bits is not None and bits.get(source, 4) > 4
        return chosen if chosen.fits(w) and not wide else FORMATS[FALLBACK_FORMAT]

    def norm_to_fold(scope: str, name: str) -> np.ndarray | None:
        """The norm `name` to fold into the next MatMuls, or None: then it is the graph's (`scope`)."""
        g = get(name)
        if chosen.folds_norms:
            ref[name] = np.ones_like(g)
            return g
        out.dense[scope + ".weight"] = ref[name] = g
        return None

    def linear(key, name, w, norm, bias, factor=1.0, source: str | None = None):
        """`source`: the recipe's name of the weight (the fused or tied one), by default `name`'s."""
        fold = (norm if norm is not None else np.ones(w.shape[1], np.float32)) * np.float32(factor)
        folded = np.ascontiguousarray((w * fold[None, :]).T)  # [in, out], as MatMul takes it
        fmt = fmt_for(source or name + ".weight", folded)
        encoded, dequantized = fmt.encode(folded)
        out.mats[key] = (fmt.name, encoded)
        ref[name + ".weight"] = np.ascontiguousarray(dequantized.T) / np.float32(factor)
        if bias is not None:
            out.dense[key + ".bias"] = (bias * np.float32(factor)).astype(np.float32)
            ref[name + ".bias"] = bias

    for n in range(s.num_layers):
        lw, key = layer_weights(s, n), f"/model/layers.{n}"
        unfused = layer_weights(out.reference_spec, n)  # the reference's names: q/k/v and gate/up apart
        g_in = norm_to_fold(f"{key}/input_layernorm", lw.input_norm)
        g_post = norm_to_fold(f"{key}/post_attention_layernorm", lw.post_norm)
        parts = np.split(get(lw.qkv[0]), [s.q_size, s.q_size + s.kv_size]) if s.fused_qkv else map(get, lw.qkv)
        biases = lw.qkv_bias if lw.qkv_bias and not s.fused_qkv else (None, None, None)
        for x, name, w, bias in zip("qkv", unfused.qkv, parts, biases, strict=True):
            factor = q_factor if x == "q" else 1.0
            source = lw.qkv[0] if s.fused_qkv else None
            linear(f"{key}/attn/{x}_proj", module(name), w, g_in, bias and get(bias), factor, source)
        linear(f"{key}/attn/o_proj", module(lw.o), get(lw.o), None, lw.o_bias and get(lw.o_bias))
        if s.qk_norm:
            for x, norm, factor in (("q", lw.q_norm, 1 / np.sqrt(s.head_dim)), ("k", lw.k_norm, 1.0)):
                g = get(norm)
                out.dense[f"{key}/attn/{x}_norm.weight"] = (g * factor).astype(np.float32)
                ref[norm] = g
        gate, up = np.split(get(lw.gate_up[0]), 2) if s.fused_gate_up else map(get, lw.gate_up)
        biases = lw.gate_up_bias if lw.gate_up_bias and not s.fused_gate_up else (None, None)
        for x, name, w, bias in zip(("gate", "up"), unfused.gate_up, (gate, up), biases, strict=True):
            source = lw.gate_up[0] if s.fused_gate_up else None
            linear(f"{key}/mlp/{x}_proj", module(name), w, g_post, bias and get(bias), source=source)
        linear(f"{key}/mlp/down_proj", module(lw.down), get(lw.down), None, lw.down_bias and get(lw.down_bias))
    linear(
        "/lm_head",
        module(LM_HEAD),
        get(head_weight(s)),
        norm_to_fold("/model/norm", FINAL_NORM),
        None,
        source=head_weight(s),
    )
    codes, scales = per_channel_int8(get(EMBED))
    out.embedding = (codes, scales * np.float32(embedding_scale(s)))  # gemma's scaling, folded into the table
    ref[EMBED] = codes.astype(np.float32) * scales[:, None]
    return out
