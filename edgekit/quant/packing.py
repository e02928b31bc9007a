"""Packers from the neutral QuantizedTensor to the layouts the runtimes consume.

- ONNX Runtime `com.microsoft.MatMulNBits`: B uint8 [N, blocks, block_size * bits / 8] with codes
  packed low bits first along K; scales [N * blocks]; zero points either packed like the codes,
  one row of ceil(blocks * bits / 8) bytes per output row, or (non-integer zeros) float [N * blocks].
- MLX affine: weight uint32 [N, K * bits / 32] (codes packed low bits first along K), scales and
  biases [N, K / group], dequantized as codes * scale + bias.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import EdgekitError
from .tensor import QuantizedTensor


def pack_low_first(codes: np.ndarray, bits: int) -> np.ndarray:
    """uint8 codes [..., L] (L * bits a multiple of 8) -> bytes [..., L * bits / 8]."""
    if bits == 8:
        return codes.astype(np.uint8)
    per_byte = 8 // bits
    c = codes.reshape(*codes.shape[:-1], -1, per_byte).astype(np.uint8)
    out = np.zeros(c.shape[:-1], np.uint8)
    for i in range(per_byte):
        out |= c[..., i] << (bits * i)
    return out


def unpack_low_first(packed: np.ndarray, bits: int, length: int) -> np.ndarray:
    if bits == 8:
        return packed[..., :length].copy()
    per_byte = 8 // bits
    mask = (1 << bits) - 1
    out = np.empty((*packed.shape[:-1], packed.shape[-1] * per_byte), np.uint8)
    for i in range(per_byte):  # one field at a time: a single temporary the size of `packed`
        np.bitwise_and(packed >> (bits * i), mask, out=out[..., i::per_byte])
    return out[..., :length]


@dataclass
class MatMulNBitsWeights:
    B: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    K: int
    N: int
    bits: int
    block_size: int


def to_matmulnbits(qt: QuantizedTensor, scale_dtype=np.float32) -> MatMulNBitsWeights:
    n, k = qt.shape
    blocks = qt.n_groups
    b = pack_low_first(qt.codes.reshape(n, blocks, qt.group_size), qt.bits)
    scales = qt.scales.astype(scale_dtype).reshape(-1)
    zero_points = None
    if qt.zeros is not None:
        if qt.integer_zeros:
            z = qt.zeros.astype(np.uint8)
            per_byte = 8 // qt.bits
            pad = -blocks % per_byte
            if pad:  # each row's zero points start on a byte boundary
                z = np.pad(z, ((0, 0), (0, pad)), constant_values=2 ** (qt.bits - 1))
            zero_points = pack_low_first(z, qt.bits).reshape(-1)
        else:
            zero_points = qt.zeros.astype(scale_dtype).reshape(-1)
    return MatMulNBitsWeights(b, scales, zero_points, k, n, qt.bits, qt.group_size)


@dataclass
class MLXWeights:
    weight: np.ndarray  # uint32
    scales: np.ndarray
    biases: np.ndarray
    group_size: int
    bits: int


def to_mlx(qt: QuantizedTensor, scale_dtype=np.float16) -> MLXWeights:
    n, k = qt.shape
    if k % qt.group_size:
        raise EdgekitError(
            f"MLX needs the input size ({k}) to be a multiple of the group size ({qt.group_size}); "
            "quantize this layer with a group that divides it"
        )
    per_word = 32 // qt.bits
    c = qt.codes[:, :k].reshape(n, -1, per_word).astype(np.uint32)
    weight = np.zeros(c.shape[:-1], np.uint32)
    for i in range(per_word):
        weight |= c[..., i] << np.uint32(qt.bits * i)
    scales = qt.scales.astype(scale_dtype)
    biases = (-qt.zero_points() * qt.scales).astype(scale_dtype)
    return MLXWeights(weight, scales, biases, qt.group_size, qt.bits)
