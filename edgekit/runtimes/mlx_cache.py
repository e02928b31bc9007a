"""The MLX decoder's KV caches: what one layer keeps of each position's keys and values, in the
compute dtype or in int8, and attention over it.

A cache stores keys and values each as a tuple of arrays [1, kv_heads, capacity, width] (its
"parts"): one array in the compute dtype for a float cache; for an int8 cache the design of
mlx-lm's QuantizedKVCache: mx.quantize's affine codes along head_dim (four per uint32 word) and
one scale and one bias per group of channels per position, attended through mx.quantized_matmul
over the codes so that the cache is never dequantized whole. Every position is quantized on its
own, so forgetting positions (a trim, speculation's rollback) leaves the others exactly as they
were, and prefill, verify and decode all attend to the same stored values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx

from ..errors import EdgekitError

KV_BITS = (0, 8)  # 0: the compute dtype
INT8_GROUPS = (64, 32)  # mx.quantize's group sizes (channels per scale) that can tile a head, preferred first

Parts = tuple[mx.array, ...]


@dataclass(frozen=True)
class FloatCodec:
    """Keys and values as they are, in the compute dtype."""

    dtype: mx.Dtype

    def widths(self, head_dim: int) -> tuple[tuple[int, mx.Dtype], ...]:
        return ((head_dim, self.dtype),)

    def encode(self, x: mx.array) -> Parts:
        return (x,)

    def attend(self, q: mx.array, keys: Parts, values: Parts, scale: float, mask) -> mx.array:
        return mx.fast.scaled_dot_product_attention(q, keys[0], values[0], scale=scale, mask=mask)


@dataclass(frozen=True)
class Int8Codec:
    """Keys and values as 8-bit affine codes (code * scale + bias), `group` channels per scale."""

    dtype: mx.Dtype  # of the scales and biases: the compute dtype
    group: int
    bits: int = 8

    def widths(self, head_dim: int) -> tuple[tuple[int, mx.Dtype], ...]:
        groups = head_dim // self.group
        return ((head_dim * self.bits // 32, mx.uint32), (groups, self.dtype), (groups, self.dtype))

    def encode(self, x: mx.array) -> Parts:
        return tuple(mx.quantize(x, group_size=self.group, bits=self.bits))

    def attend(self, q: mx.array, keys: Parts, values: Parts, scale: float, mask) -> mx.array:
        """Softmax(q k^T * scale) v with k and v read as codes; q [1, heads, T, head_dim], the cache's
        heads shared by heads / kv_heads query heads each."""
        b, heads, t, d = q.shape
        kv_heads = keys[0].shape[1]
        q = (q * scale).reshape(b, kv_heads, heads // kv_heads, t, d)
        keys = tuple(mx.expand_dims(p, 2) for p in keys)
        values = tuple(mx.expand_dims(p, 2) for p in values)
        scores = mx.quantized_matmul(q, *keys, transpose=True, group_size=self.group, bits=self.bits)
        if isinstance(mask, str):  # "causal": the T queries are the last T of the keys
            length = scores.shape[-1]
            mask = mx.arange(length - t, length)[:, None] >= mx.arange(length)[None]
        if mask is not None:
            scores = mx.where(mask, scores, mx.finfo(scores.dtype).min)
        weights = mx.softmax(scores, axis=-1, precise=True)
        out = mx.quantized_matmul(weights, *values, transpose=False, group_size=self.group, bits=self.bits)
        return out.reshape(b, heads, t, d)


Codec = FloatCodec | Int8Codec


def int8_codec(dtype: mx.Dtype, head_dim: int) -> Int8Codec:
    group = next((g for g in INT8_GROUPS if head_dim % g == 0), None)
    if group is None:
        raise EdgekitError(
            f"kv_bits=8: MLX quantizes the KV cache in groups of {' or '.join(map(str, INT8_GROUPS))} channels "
            f"of a head, and this model's head_dim is {head_dim}; use kv_bits=0 (a float cache) for it"
        )
    return Int8Codec(dtype, group)


CODECS: dict[int, Callable[[mx.Dtype, int], Codec]] = {
    0: lambda dtype, head_dim: FloatCodec(dtype),
    8: int8_codec,
}


def kv_codec(kv_bits: int, dtype: mx.Dtype, head_dim: int) -> Codec:
    """The codec of a cache of kv_bits (0: the compute dtype), or one line on why there is none."""
    make = CODECS.get(kv_bits)
    if make is None:
        raise EdgekitError(
            f"kv_bits={kv_bits}: an MLX KV cache is kept in {' or '.join(map(str, KV_BITS))} bits "
            "(0: the compute dtype, 8: int8 with per-group scales); export with --kv-bits 0 or 8"
        )
    return make(dtype, head_dim)


def bytes_per_element(codec: Codec, head_dim: int) -> float:
    """Bytes one cached key or value channel takes, scales included."""
    return sum(width * dtype.size for width, dtype in codec.widths(head_dim)) / head_dim


class KVCache:
    """One layer's keys and values, grown `step` positions at a time."""

    step = 256

    def __init__(self, capacity_limit: int, kv_heads: int, head_dim: int, codec: Codec):
        self.limit = capacity_limit
        self.kv_heads, self.head_dim, self.codec = kv_heads, head_dim, codec
        self.keys: Parts = ()
        self.values: Parts = ()
        self.offset = 0

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in (*self.keys, *self.values))

    def reserve(self, length: int) -> None:
        """Buffers that hold at least `length` positions, keeping what is there."""
        if length <= self.capacity:
            return
        capacity = min(self.limit, -(-length // self.step) * self.step)

        def grown(parts: Parts) -> Parts:
            widths = self.codec.widths(self.head_dim)
            fresh = tuple(mx.zeros((1, self.kv_heads, capacity, width), dtype) for width, dtype in widths)
            for new, old in zip(fresh, parts, strict=False):
                new[..., : self.offset, :] = old[..., : self.offset, :]
            return fresh

        self.keys, self.values = grown(self.keys), grown(self.values)

    def update(self, k: mx.array, v: mx.array) -> tuple[Parts, Parts]:
        """Store k and v [1, kv_heads, T, head_dim] after what the cache holds; everything it holds then."""
        start, t = self.offset, k.shape[2]
        self.reserve(start + t)
        for parts, x in ((self.keys, k), (self.values, v)):
            for part, new in zip(parts, self.codec.encode(x), strict=True):
                part[..., start : start + t, :] = new
        self.offset = start + t
        return self.held(self.keys), self.held(self.values)

    def held(self, parts: Parts) -> Parts:
        return tuple(p[..., : self.offset, :] for p in parts)

    def attend(self, q: mx.array, keys: Parts, values: Parts, scale: float, mask) -> mx.array:
        return self.codec.attend(q, keys, values, scale, mask)

    def read(self, start: int, end: int) -> mx.array:
        """Positions [start, end) as stored, exactly: [2, kv_heads, end - start, bytes], the bytes of
        every part side by side (the batch runtime's prefix cache keeps them)."""
        return mx.stack(
            [
                mx.concatenate([mx.view(p[0, :, start:end], mx.uint8) for p in parts], axis=-1)
                for parts in (self.keys, self.values)
            ]
        )

    def write(self, start: int, kv: mx.array) -> None:
        """Put kv (as read() gives) at positions [start, start + its length); the cache then holds that many."""
        t = kv.shape[2]
        self.offset = min(self.offset, start)
        self.reserve(start + t)
        for parts, rows in ((self.keys, kv[0]), (self.values, kv[1])):
            at = 0
            for part in parts:
                size = part.shape[-1] * part.dtype.size
                part[..., start : start + t, :] = mx.view(rows[None, :, :, at : at + size], part.dtype)
                at += size
        self.offset = start + t


class StepCache:
    """A layer's whole cache buffers inside the compiled decode step: the new position is written
    with slice_update at an offset that is an array, so one compiled graph serves every position
    until the buffers grow."""

    def __init__(self, keys: Parts, values: Parts, offset: mx.array, codec: Codec):
        self.keys, self.values, self.offset, self.codec = keys, values, offset, codec

    def update(self, k: mx.array, v: mx.array) -> tuple[Parts, Parts]:
        start = self.offset.reshape(1)

        def written(parts: Parts, x: mx.array) -> Parts:
            return tuple(
                mx.slice_update(p, new, start, axes=(2,)) for p, new in zip(parts, self.codec.encode(x), strict=True)
            )

        self.keys, self.values = written(self.keys, k), written(self.values, v)
        return self.keys, self.values

    def attend(self, q: mx.array, keys: Parts, values: Parts, scale: float, mask) -> mx.array:
        return self.codec.attend(q, keys, values, scale, mask)
