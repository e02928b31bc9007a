"""Scales of an int8 KV cache: per KV head and channel, from the keys and values the model stores
for calibration text. ONNX Runtime's GroupQueryAttention takes static scales (its PER_CHANNEL
mode, shape [1, kv_heads, 1, head_dim]) and stores round(x / scale) clipped to [-127, 127].

Keys are stored after the rotary embedding, which turns each pair of channels (i, i + rotary/2)
by a position-dependent angle: a key's channel can take any value up to the pair's length, so
both channels of a pair get the largest pair length seen (a scale that holds at every position,
not only at the calibration positions). Values are not rotated: their largest magnitude."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..reference import ReferenceModel
from ..spec import ModelSpec

LEVELS = 127  # int8, symmetric
HEADROOM = 1.0  # the pair lengths already bound every rotation; values past the calibration text clip


def largest_keys(keys: np.ndarray, rotary: int) -> np.ndarray:
    """keys [kv_heads, T, head_dim] -> the largest magnitude each channel can take at any
    position [kv_heads, head_dim]."""
    half = rotary // 2
    out = np.abs(keys).max(axis=1)
    pair = np.sqrt(keys[..., :half] ** 2 + keys[..., half:rotary] ** 2).max(axis=1)
    out[:, :half] = pair
    out[:, half:rotary] = pair
    return out


def kv_cache_scales(
    spec: ModelSpec, weights: Mapping[str, np.ndarray], sequences: Sequence[Sequence[int]]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per layer, (key scale, value scale) [kv_heads, head_dim] float32 for an int8 cache."""
    reference = ReferenceModel(spec, {}, layers=False, head=False)
    keys = np.zeros((spec.num_layers, spec.num_kv_heads, spec.head_dim), np.float32)
    values = np.zeros_like(keys)
    for ids in sequences:
        cache = reference.new_cache()
        reference.forward_streamed(weights, ids, cache=cache)
        for n in range(spec.num_layers):
            stored = cache.keys[n][:, : len(ids)]
            keys[n] = np.maximum(keys[n], largest_keys(stored, spec.rotary_dim))
            values[n] = np.maximum(values[n], np.abs(cache.values[n][:, : len(ids)]).max(axis=1))
    tiny = np.float32(1e-6)
    return [
        (np.maximum(k, tiny) * HEADROOM / LEVELS, np.maximum(v, tiny) * HEADROOM / LEVELS)
        for k, v in zip(keys, values, strict=True)
    ]
