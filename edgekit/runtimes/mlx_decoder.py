"""The decoder families in MLX: one model file, top to bottom, in the style of mlx-lm's.

The supported families are Llama with switches (fused projections for phi3, q/k/v biases for
qwen2, q/k norms for qwen3, gemma's scaled embedding and GELU), and ModelSpec and the family table
carry those switches, so one file covers them, as one graph builder does for ONNX. Weights arrive
under HF names, quantized in MLX's affine layout (uint32 `weight`, `scales`, `biases`) or dense;
q/k/v and gate/up are fused into one matmul each at load when they were quantized alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx

from ..families import (
    EMBED,
    FINAL_NORM,
    FINAL_ROTATION,
    LayerWeights,
    embedding_scale,
    head_weight,
    layer_weights,
    module,
    norm_offset,
)
from ..rope import inv_freq
from ..spec import ModelSpec
from .mlx_cache import Codec, KVCache, Parts, StepCache


@dataclass
class Linear:
    """y = x W^T + b, with W quantized (affine, MLX layout) or dense [out, in].

    With `streams`, a quantized W's output rows are split in as many parts, each multiplied on its
    own stream: MLX's CPU kernels run on one core, separate CPU streams run side by side."""

    weight: mx.array
    bias: mx.array | None = None
    scales: mx.array | None = None
    biases: mx.array | None = None
    group_size: int = 0
    bits: int = 0
    streams: tuple = ()

    def _matmul(self, x: mx.array, rows: slice, stream=None) -> mx.array:
        return mx.quantized_matmul(
            x,
            self.weight[rows],
            self.scales[rows],
            self.biases[rows],
            transpose=True,
            group_size=self.group_size,
            bits=self.bits,
            stream=stream,
        )

    def __call__(self, x: mx.array) -> mx.array:
        if self.scales is None:
            y = x @ self.weight.T
        elif len(self.streams) > 1:
            cuts = [round(i * self.weight.shape[0] / len(self.streams)) for i in range(len(self.streams) + 1)]
            parts = [self._matmul(x, slice(a, b), st) for a, b, st in zip(cuts, cuts[1:], self.streams, strict=False)]
            y = mx.concatenate(parts, axis=-1)
        else:
            y = self._matmul(x, slice(None))
        return y if self.bias is None else y + self.bias

    def rows(self, ids: mx.array) -> mx.array:
        """Rows of W (an embedding lookup), dequantized."""
        if self.scales is None:
            return self.weight[ids]
        return mx.dequantize(
            self.weight[ids], self.scales[ids], self.biases[ids], group_size=self.group_size, bits=self.bits
        )

    @staticmethod
    def fuse(parts: list[Linear]) -> list[Linear]:
        """One Linear stacking the outputs of `parts` when they are stored alike, else `parts`."""
        first = parts[0]
        if len(parts) == 1:
            return parts
        alike = all(
            (p.scales is None) == (first.scales is None)
            and (p.bias is None) == (first.bias is None)
            and (p.group_size, p.bits) == (first.group_size, first.bits)
            for p in parts
        )
        if not alike:
            return parts

        def cat(attr: str) -> mx.array | None:
            arrays = [getattr(p, attr) for p in parts]
            return None if arrays[0] is None else mx.concatenate(arrays, axis=0)

        weight, bias, scales, biases = cat("weight"), cat("bias"), cat("scales"), cat("biases")
        return [Linear(weight, bias, scales, biases, first.group_size, first.bits, first.streams)]


def apply_all(linears: list[Linear], x: mx.array) -> mx.array:
    return linears[0](x) if len(linears) == 1 else mx.concatenate([f(x) for f in linears], axis=-1)


class Rotary:
    """HF's half-split rotary over the first rotary_dim channels, with the family's scaling
    (the frequencies and yarn's attention factor come from edgekit.rope, as for every backend)."""

    def __init__(self, spec: ModelSpec):
        freqs, self.attention = inv_freq(spec)
        self.dims = spec.rotary_dim
        self.periods = mx.array(1.0 / freqs)

    def __call__(self, x: mx.array, offset: int | mx.array) -> mx.array:
        if self.attention != 1.0:
            x = mx.concatenate([x[..., : self.dims] * self.attention, x[..., self.dims :]], axis=-1)
        return mx.fast.rope(x, self.dims, traditional=False, base=None, scale=1.0, offset=offset, freqs=self.periods)


def _activation(name: str):
    if name == "silu":
        return lambda x: x * mx.sigmoid(x)
    return lambda x: 0.5 * x * (1.0 + mx.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


class Attention:
    def __init__(self, spec: ModelSpec, norms, lw: LayerWeights, linear):
        self.spec = spec
        self.qkv = Linear.fuse([linear(module(n)) for n in lw.qkv])
        self.o_proj = linear(module(lw.o))
        self.q_norm = norms(lw.q_norm) if lw.q_norm else None
        self.k_norm = norms(lw.k_norm) if lw.k_norm else None
        self.scale = spec.head_dim**-0.5

    def _project(self, x: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        """q, k, v [batch, heads, T, head_dim] of x [batch, T, hidden], head norms applied."""
        s, (b, t) = self.spec, x.shape[:2]
        qkv = apply_all(self.qkv, x)
        q, k, v = mx.split(qkv, [s.q_size, s.q_size + s.kv_size], axis=-1)
        q = q.reshape(b, t, s.num_heads, s.head_dim).transpose(0, 2, 1, 3)
        k = k.reshape(b, t, s.num_kv_heads, s.head_dim).transpose(0, 2, 1, 3)
        v = v.reshape(b, t, s.num_kv_heads, s.head_dim).transpose(0, 2, 1, 3)
        if self.q_norm is not None:
            q = mx.fast.rms_norm(q, self.q_norm, s.rms_norm_eps)
            k = mx.fast.rms_norm(k, self.k_norm, s.rms_norm_eps)
        return q, k, v

    def _attend(self, q: mx.array, k: mx.array, v: mx.array, cache, rotary: Rotary, mask) -> mx.array:
        """One sequence's attention [1, T, q_size] over its cache, with k and v stored in it."""
        q, k = rotary(q, cache.offset), rotary(k, cache.offset)
        keys, values = cache.update(k, v)
        out = cache.attend(q, keys, values, self.scale, mask)
        return out.transpose(0, 2, 1, 3).reshape(1, q.shape[2], self.spec.q_size)

    def __call__(self, x: mx.array, cache: KVCache, rotary: Rotary, mask) -> mx.array:
        return self.o_proj(self._attend(*self._project(x), cache, rotary, mask))

    def batch(self, x: mx.array, caches: list[KVCache], rotary: Rotary, masks: list) -> mx.array:
        """x [sequences, 1, hidden]: one token of each sequence, each after its own cache. The
        projections run once for all; attention runs per sequence, each at its own length."""
        q, k, v = self._project(x)
        outs = [
            self._attend(q[i : i + 1], k[i : i + 1], v[i : i + 1], cache, rotary, mask)
            for i, (cache, mask) in enumerate(zip(caches, masks, strict=True))
        ]
        return self.o_proj(mx.concatenate(outs, axis=0))


class MLP:
    def __init__(self, spec: ModelSpec, lw: LayerWeights, linear):
        self.gate_up = Linear.fuse([linear(module(n)) for n in lw.gate_up])
        self.down = linear(module(lw.down))
        self.act = _activation(spec.hidden_act)
        self.inter = spec.intermediate_size

    def __call__(self, x: mx.array) -> mx.array:
        gate_up = apply_all(self.gate_up, x)
        return self.down(self.act(gate_up[..., : self.inter]) * gate_up[..., self.inter :])


class DecoderLayer:
    def __init__(self, spec: ModelSpec, norms, n: int, linear):
        lw = layer_weights(spec, n)
        self.eps = spec.rms_norm_eps
        self.input_norm = norms(lw.input_norm)
        self.post_norm = norms(lw.post_norm)
        self.attn = Attention(spec, norms, lw, linear)
        self.mlp = MLP(spec, lw, linear)

    def __call__(self, h: mx.array, cache: KVCache, rotary: Rotary, mask) -> mx.array:
        h = h + self.attn(mx.fast.rms_norm(h, self.input_norm, self.eps), cache, rotary, mask)
        return h + self.mlp(mx.fast.rms_norm(h, self.post_norm, self.eps))

    def batch(self, h: mx.array, caches: list[KVCache], rotary: Rotary, masks: list) -> mx.array:
        h = h + self.attn.batch(mx.fast.rms_norm(h, self.input_norm, self.eps), caches, rotary, masks)
        return h + self.mlp(mx.fast.rms_norm(h, self.post_norm, self.eps))


class Model:
    """Embedding, decoder layers, final norm, a rotated stream's final matrix where the folder has
    one (a tied lm_head after a rotation, quant/rotate.py), and (tied or own) lm_head."""

    def __init__(self, spec: ModelSpec, weights: dict[str, mx.array], settings, streams: tuple = ()):
        """weights: the folder's tensors (already in the compute dtype); settings(module) gives the
        (bits, group_size) of a quantized module; streams: CPU streams to split matmuls over."""

        def linear(module: str) -> Linear:
            bias = weights.get(module + ".bias")
            if module + ".scales" not in weights:
                return Linear(weights[module + ".weight"], bias)
            bits, group = settings(module)
            w = weights
            scales, biases = w[module + ".scales"], w[module + ".biases"]
            return Linear(w[module + ".weight"], bias, scales, biases, group, bits, streams)

        offset = norm_offset(spec.family)

        def norms(name: str) -> mx.array:
            # MLX folders keep the source's norm weights (mlx-lm adds gemma's 1 when it runs)
            return weights[name] + offset if offset else weights[name]

        self.spec = spec
        self.embed = linear(module(EMBED))
        self.embed_scale = embedding_scale(spec)
        self.layers = [DecoderLayer(spec, norms, n, linear) for n in range(spec.num_layers)]
        self.norm = norms(FINAL_NORM)
        final = module(FINAL_ROTATION)
        self.final_rotation = linear(final) if final + ".weight" in weights else None
        self.lm_head = self.embed if spec.tie_word_embeddings else linear(module(head_weight(spec)))
        self.rotary = Rotary(spec)

    def mask(self, offset: int, t: int):
        window = self.spec.sliding_window
        if window is None or offset + t <= window:
            return "causal" if t > 1 else None
        positions = mx.arange(offset, offset + t)[:, None]
        keys = mx.arange(offset + t)[None, :]
        return (keys <= positions) & (positions - keys < window)

    def step(self, codec: Codec, token: mx.array, offset: mx.array, keys: list[Parts], values: list[Parts]):
        """One decode step over whole cache buffers stored by `codec` (pure, for mx.compile with the
        codec bound): the logits [1, vocab] of `token` at position `offset`, and the buffers with its
        keys and values written in."""
        positions = mx.arange(keys[0][0].shape[2])
        mask = positions <= offset
        if self.spec.sliding_window:
            mask = mask & (offset - positions < self.spec.sliding_window)
        caches = [StepCache(k, v, offset, codec) for k, v in zip(keys, values, strict=True)]
        logits = self(token, caches, mask=mask)
        return logits, [c.keys for c in caches], [c.values for c in caches]

    def _embed(self, ids: mx.array) -> mx.array:
        h = self.embed.rows(ids)
        return h * mx.array(self.embed_scale, dtype=h.dtype) if self.embed_scale != 1 else h

    def _logits(self, h: mx.array) -> mx.array:
        x = mx.fast.rms_norm(h, self.norm, self.spec.rms_norm_eps)
        return self.lm_head(x if self.final_rotation is None else self.final_rotation(x))

    def __call__(self, ids: mx.array, caches: list, last_only: bool = True, mask=None) -> mx.array:
        """Logits [T or 1, vocab] of ids [T] following what the caches hold."""
        t = ids.shape[0]
        if mask is None:
            mask = self.mask(caches[0].offset, t)
        h = self._embed(ids)[None]
        for layer, cache in zip(self.layers, caches, strict=True):
            h = layer(h, cache, self.rotary, mask)
        if last_only:
            h = h[:, -1:, :]
        return self._logits(h)[0]

    def batch(self, tokens: mx.array, caches: list[list[KVCache]]) -> mx.array:
        """Logits [sequences, vocab]: tokens [sequences], each after its own caches (one per layer)."""
        masks = [self.mask(c[0].offset, 1) for c in caches]
        h = self._embed(tokens)[:, None, :]
        for n, layer in enumerate(self.layers):
            h = layer.batch(h, [c[n] for c in caches], self.rotary, masks)
        return self._logits(h)[:, 0]
