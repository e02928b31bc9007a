"""Rotary position embedding tables, with the scalings of the supported families.

Every backend builds its cos/sin caches from `rope_tables`, so the numpy reference and the
exported graphs rotate by the same angles.
"""

from __future__ import annotations

import math

import numpy as np

from .spec import ModelSpec, RopeSpec


def _yarn(rope: RopeSpec, dim: int, inv_freq: np.ndarray) -> tuple[np.ndarray, float]:
    factor = rope.factor
    original = rope.original_max_position

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if rope.attention_factor is not None:
        attention = float(rope.attention_factor)
    elif rope.mscale and rope.mscale_all_dim:
        attention = mscale(factor, rope.mscale) / mscale(factor, rope.mscale_all_dim)
    else:
        attention = mscale(factor)

    def correction_dim(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(rope.theta))

    low, high = correction_dim(rope.beta_fast), correction_dim(rope.beta_slow)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
    extrapolation = 1 - ramp
    scaled = inv_freq / factor * (1 - extrapolation) + inv_freq * extrapolation
    return scaled.astype(np.float32), attention


def _llama3(rope: RopeSpec, inv_freq: np.ndarray) -> np.ndarray:
    old_context = rope.original_max_position or 8192
    low_wavelen = old_context / rope.low_freq_factor
    high_wavelen = old_context / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    out = np.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
    smooth = (old_context / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
    smoothed = (1 - smooth) * out / rope.factor + smooth * out
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, out).astype(np.float32)


def inv_freq(spec: ModelSpec) -> tuple[np.ndarray, float]:
    """Inverse frequencies for the rotated dims, and the scale applied to cos/sin (yarn)."""
    rope, dim = spec.rope, spec.rotary_dim
    base = (1.0 / rope.theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim)).astype(np.float32)
    attention = 1.0
    if rope.scaling == "linear":
        base = base / np.float32(rope.factor)
    elif rope.scaling == "llama3":
        base = _llama3(rope, base)
    elif rope.scaling == "yarn":
        base, attention = _yarn(rope, dim, base)
    if rope.freq_factors is not None:
        base = base / np.asarray(rope.freq_factors, dtype=np.float32)
    return base.astype(np.float32), attention


def rope_tables(spec: ModelSpec, length: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin, each [length, rotary_dim // 2], for positions 0..length-1."""
    freqs, attention = inv_freq(spec)
    angles = np.arange(length, dtype=np.float32)[:, None] * freqs[None, :]
    return (np.cos(angles) * attention).astype(np.float32), (np.sin(angles) * attention).astype(np.float32)


def apply_rotary(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, rotary_dim: int) -> np.ndarray:
    """Rotate the first rotary_dim channels of x [..., T, head_dim] in the half-split layout of HF.

    cos/sin are [T, rotary_dim // 2].
    """
    half = rotary_dim // 2
    x1, x2, rest = x[..., :half], x[..., half:rotary_dim], x[..., rotary_dim:]
    rotated = np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return np.concatenate([rotated, rest], axis=-1) if rest.shape[-1] else rotated
