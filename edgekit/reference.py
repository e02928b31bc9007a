"""A numpy fp32 forward of the supported decoder families, with a KV cache.

It is the oracle every exporter and runtime is compared with, and the source of calibration
activations: pass `observe` to see the input of every projection.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .families import EMBED, FINAL_NORM, FINAL_ROTATION, LayerWeights, embedding_scale, head_weight, layer_weights
from .rope import apply_rotary, rope_tables
from .spec import ModelSpec

Observer = Callable[[str, np.ndarray], None]


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    variance = np.mean(x * x, axis=-1, keepdims=True)
    return (x / np.sqrt(variance + np.float32(eps))) * weight


def lm_head_input(h: np.ndarray, norm: np.ndarray, rotation: np.ndarray | None, eps: float) -> np.ndarray:
    """The final norm of h, then a rotated stream's final projection (FINAL_ROTATION, [out, in];
    None: the stream is not rotated)."""
    x = rms_norm(h, norm, eps)
    return x if rotation is None else x @ rotation.T


def silu(x: np.ndarray) -> np.ndarray:
    return x / (np.float32(1.0) + np.exp(-x))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(np.float32(0.7978845608028654) * (x + 0.044715 * x * x * x)))


ACTIVATION_FNS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"silu": silu, "gelu_pytorch_tanh": gelu_tanh}


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


@dataclass
class KVCache:
    """Keys and values per layer, [kv_heads, capacity, head_dim], grown by doubling."""

    spec: ModelSpec
    length: int = 0
    keys: dict[int, np.ndarray] = field(default_factory=dict)
    values: dict[int, np.ndarray] = field(default_factory=dict)

    def append(self, layer: int, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Store k/v [kv_heads, T, head_dim] after the current length; return everything so far."""
        start, t = self.length, k.shape[1]
        if layer not in self.keys:
            shape = (self.spec.num_kv_heads, max(64, start + t), self.spec.head_dim)
            self.keys[layer] = np.zeros(shape, np.float32)
            self.values[layer] = np.zeros(shape, np.float32)
        if start + t > self.keys[layer].shape[1]:
            grow = max(start + t, 2 * self.keys[layer].shape[1]) - self.keys[layer].shape[1]
            pad = ((0, 0), (0, grow), (0, 0))
            self.keys[layer] = np.pad(self.keys[layer], pad)
            self.values[layer] = np.pad(self.values[layer], pad)
        self.keys[layer][:, start : start + t] = k
        self.values[layer][:, start : start + t] = v
        return self.keys[layer][:, : start + t], self.values[layer][:, : start + t]

    def trim(self, length: int) -> None:
        """Forget every position from `length` on."""
        self.length = min(self.length, length)

    def reset(self) -> None:
        self.length = 0


@dataclass
class _Layer:
    input_norm: np.ndarray
    qkv: np.ndarray  # [q + 2 kv, hidden]
    qkv_bias: np.ndarray | None
    o: np.ndarray
    o_bias: np.ndarray | None
    q_norm: np.ndarray | None
    k_norm: np.ndarray | None
    post_norm: np.ndarray
    gate_up: np.ndarray  # [2 * intermediate, hidden], gate rows first
    gate_up_bias: np.ndarray | None
    down: np.ndarray
    down_bias: np.ndarray | None


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def _cat(parts: list[np.ndarray | None]) -> np.ndarray | None:
    return None if parts[0] is None else _f32(np.concatenate(parts, axis=0))  # type: ignore[arg-type]


class ReferenceModel:
    """fp32 decoder forward. `weights` maps canonical HF names to arrays (a Checkpoint's tensors,
    or dequantized weights from a quantizer)."""

    def __init__(self, spec: ModelSpec, weights: Mapping[str, np.ndarray], *, layers: bool = True, head: bool = True):
        """layers/head=False leave the decoder layers / embedding and lm_head unloaded, for
        callers that run single layers with `layer_forward(..., layer=build_layer(...))`."""
        self.spec = spec
        self.act = ACTIVATION_FNS[spec.hidden_act]
        self.embed_scale = np.float32(embedding_scale(spec))
        if head:
            self.embed = _f32(weights[EMBED])
            self.norm = _f32(weights[FINAL_NORM])
            self.final_rotation = _f32(weights[FINAL_ROTATION]) if FINAL_ROTATION in weights else None
            self.lm_head = self.embed if spec.tie_word_embeddings else _f32(weights[head_weight(spec)])
        self.layers = [self.build_layer(weights, i) for i in range(spec.num_layers)] if layers else []
        self._cos, self._sin = rope_tables(spec, 256)
        self._last_positions: tuple = ((-1, -1), None)

    def build_layer(self, w: Mapping[str, np.ndarray], n: int) -> _Layer:
        """Layer n's weights from a name -> array mapping, converted and fused for the forward."""
        lw = layer_weights(self.spec, n)

        def get(name: str | None) -> np.ndarray | None:
            return _f32(w[name]) if name is not None and name in w else None

        def cat(names: tuple[str, ...]) -> np.ndarray | None:
            return _cat([w[name] for name in names]) if names else None

        return _Layer(
            input_norm=get(lw.input_norm),  # type: ignore[arg-type]
            qkv=cat(lw.qkv),  # type: ignore[arg-type]
            qkv_bias=cat(lw.qkv_bias),
            o=get(lw.o),  # type: ignore[arg-type]
            o_bias=get(lw.o_bias),
            q_norm=get(lw.q_norm),
            k_norm=get(lw.k_norm),
            post_norm=get(lw.post_norm),  # type: ignore[arg-type]
            gate_up=cat(lw.gate_up),  # type: ignore[arg-type]
            gate_up_bias=cat(lw.gate_up_bias),
            down=get(lw.down),  # type: ignore[arg-type]
            down_bias=get(lw.down_bias),
        )

    def embedding(self, rows: np.ndarray) -> np.ndarray:
        """Hidden states of looked-up embedding rows (scaled where the family scales them)."""
        return rows * self.embed_scale if self.embed_scale != 1 else rows

    @classmethod
    def from_checkpoint(cls, checkpoint) -> ReferenceModel:
        return cls(checkpoint.spec, checkpoint.tensors)

    def new_cache(self) -> KVCache:
        return KVCache(self.spec)

    def _positions(self, past: int, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """cos, sin [t, rotary_dim / 2] and the additive causal mask [t, past + t] of t new
        positions after `past`; the same for every layer of one forward, so the last is kept."""
        if self._last_positions[0] == (past, t):
            return self._last_positions[1]
        positions = np.arange(past, past + t)
        if positions[-1] >= len(self._cos):
            self._cos, self._sin = rope_tables(self.spec, max(2 * len(self._cos), int(positions[-1]) + 1))
        keys = np.arange(past + t)[None, :]
        mask = positions[:, None] >= keys
        if self.spec.sliding_window:
            mask &= positions[:, None] - keys < self.spec.sliding_window
        bias = np.where(mask, np.float32(0), np.float32(-np.inf)).astype(np.float32)
        result = (self._cos[positions], self._sin[positions], bias)
        self._last_positions = ((past, t), result)
        return result

    def forward(
        self,
        ids: Sequence[int] | np.ndarray,
        cache: KVCache | None = None,
        *,
        all_logits: bool = True,
        observe: Observer | None = None,
    ) -> np.ndarray:
        """Logits [T, vocab] for `ids` following what `cache` holds (or [1, vocab] for the last
        position when all_logits is False). The cache is extended by len(ids)."""
        cache = cache if cache is not None else self.new_cache()
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        h = self.embedding(self.embed[ids])
        for n in range(len(self.layers)):
            h = self.layer_forward(n, h, cache, observe=observe)
        cache.length += len(ids)
        return self.logits(h if all_logits else h[-1:], observe)

    def logits(self, h: np.ndarray, observe: Observer | None = None) -> np.ndarray:
        x = lm_head_input(h, self.norm, self.final_rotation, self.spec.rms_norm_eps)
        if observe is not None:
            observe("lm_head", x)
        return x @ self.lm_head.T

    def layer_forward(
        self,
        n: int,
        h: np.ndarray,
        cache: KVCache | Sequence[KVCache],
        *,
        observe: Observer | None = None,
        layer: _Layer | None = None,
    ) -> np.ndarray:
        """Decoder layer n (or `layer` in its place) on hidden states h [T, hidden] that follow
        cache.length positions. Stores this layer's keys/values in the cache but leaves
        cache.length to the caller. With a list of caches, row b of h is the next token of the
        sequence whose cache is caches[b]."""
        lw = layer_weights(self.spec, n)
        layer = layer if layer is not None else self.layers[n]

        def linear(point: str, x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
            if observe is not None:
                observe(point, x)
            y = x @ w.T
            return y + b if b is not None else y

        x = rms_norm(h, layer.input_norm, self.spec.rms_norm_eps)
        qkv = linear(lw.qkv_input, x, layer.qkv, layer.qkv_bias)
        if isinstance(cache, KVCache):
            attn = self._attention(n, layer, qkv, cache)
        else:
            attn = np.concatenate([self._attention(n, layer, qkv[b : b + 1], c) for b, c in enumerate(cache)])
        h = h + linear(lw.o_input, attn, layer.o, layer.o_bias)
        return h + self._mlp(lw, layer, h, linear)

    def _attention(self, n: int, layer: _Layer, qkv: np.ndarray, cache: KVCache) -> np.ndarray:
        """Attention output [T, q_size] of T new positions (their fused q/k/v rows) after what
        `cache` holds; stores their keys and values in layer n of the cache."""
        s, t = self.spec, qkv.shape[0]
        cos, sin, bias = self._positions(cache.length, t)
        group = s.num_heads // s.num_kv_heads
        q = qkv[:, : s.q_size].reshape(t, s.num_heads, s.head_dim).transpose(1, 0, 2)
        k = qkv[:, s.q_size : s.q_size + s.kv_size].reshape(t, s.num_kv_heads, s.head_dim).transpose(1, 0, 2)
        v = qkv[:, s.q_size + s.kv_size :].reshape(t, s.num_kv_heads, s.head_dim).transpose(1, 0, 2)
        if layer.q_norm is not None:
            q = rms_norm(q, layer.q_norm, s.rms_norm_eps)
            k = rms_norm(k, layer.k_norm, s.rms_norm_eps)
        q = apply_rotary(q, cos, sin, s.rotary_dim)
        k = apply_rotary(k, cos, sin, s.rotary_dim)
        keys, values = cache.append(n, k, v)
        qg = q.reshape(s.num_kv_heads, group, t, s.head_dim)
        scores = (qg @ keys[:, None].transpose(0, 1, 3, 2)) * np.float32(1.0 / np.sqrt(s.head_dim)) + bias
        attn = (softmax(scores) @ values[:, None]).reshape(s.num_heads, t, s.head_dim)
        return attn.transpose(1, 0, 2).reshape(t, s.q_size)

    def _mlp(self, lw: LayerWeights, layer: _Layer, h: np.ndarray, linear) -> np.ndarray:
        x = rms_norm(h, layer.post_norm, self.spec.rms_norm_eps)
        gate_up = linear(lw.gate_up_input, x, layer.gate_up, layer.gate_up_bias)
        inter = self.spec.intermediate_size
        return linear(lw.down_input, self.act(gate_up[:, :inter]) * gate_up[:, inter:], layer.down, layer.down_bias)

    def decode_batch(self, tokens: Sequence[int], caches: Sequence[KVCache]) -> np.ndarray:
        """One new token for each of several independent sequences (each with its own cache, of
        any length): logits [B, vocab]. The projections run once for the whole batch, so B
        sequences cost about as much weight reading as one."""
        h = self.embedding(self.embed[np.asarray(tokens, dtype=np.int64)])
        for n in range(len(self.layers)):
            h = self.layer_forward(n, h, caches)
        for cache in caches:
            cache.length += 1
        return self.logits(h)

    def forward_streamed(
        self,
        weights: Mapping[str, np.ndarray],
        ids: Sequence[int],
        block: int = 8192,
        cache: KVCache | Sequence[KVCache] | None = None,
    ) -> np.ndarray:
        """Logits [T, vocab] for ids, holding one layer's weights at a time and the embedding /
        lm_head a block of rows at a time (for models too big to hold in float32). `weights` needs
        a take(name, rows) method when it can give rows without the whole tensor. cache: what the
        ids follow (default empty), extended by them; or one cache per id, a batched decode step."""
        s = self.spec

        def rows(name: str, index: np.ndarray) -> np.ndarray:
            take = getattr(weights, "take", None)
            return _f32(take(name, index) if take else np.asarray(weights[name])[index])

        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        cache = cache if cache is not None else self.new_cache()
        h = self.embedding(rows(EMBED, ids))
        for n in range(s.num_layers):
            h = self.layer_forward(n, h, cache, layer=self.build_layer(weights, n))
        if isinstance(cache, KVCache):
            cache.length += len(ids)
        else:
            for c in cache:
                c.length += 1
        rotation = _f32(weights[FINAL_ROTATION]) if FINAL_ROTATION in weights else None
        x = lm_head_input(h, _f32(weights[FINAL_NORM]), rotation, s.rms_norm_eps)
        head = head_weight(s)
        out = np.empty((len(ids), s.vocab_size), np.float32)
        for start in range(0, s.vocab_size, block):
            index = np.arange(start, min(s.vocab_size, start + block))
            out[:, index] = x @ rows(head, index).T
        return out

    def greedy(self, ids: Sequence[int], max_new_tokens: int, stop_ids: Sequence[int] = ()) -> list[int]:
        """Greedy continuation of `ids` (without them), stopping after a stop id."""
        cache = self.new_cache()
        logits = self.forward(ids, cache, all_logits=False)
        out: list[int] = []
        for _ in range(max_new_tokens):
            token = int(np.argmax(logits[-1]))
            out.append(token)
            if token in stop_ids:
                break
            logits = self.forward([token], cache, all_logits=False)
        return out
