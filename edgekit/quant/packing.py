"""Packers from the neutral QuantizedTensor to the layouts the runtimes consume.

- ONNX Runtime `com.microsoft.MatMulNBits`: B uint8 [N, blocks, block_size * bits / 8] with codes
  packed low bits first along K; scales [N * blocks]; zero points either packed like the codes,
  one row of ceil(blocks * bits / 8) bytes per output row, or (non-integer zeros) float [N * blocks].
  ONNX Runtime runs float zero points on slow unpacked paths only, so exporters split such a weight
  exactly instead: a MatMulNBits without zero points plus the group sums of x times
  `zero_point_table` (see there).
- MLX affine: weight uint32 [N, K * bits / 32] (codes packed low bits first along K, as one
  little-endian bit stream: a 3-, 5- or 6-bit code may straddle two words), scales and biases
  [N, K / group], dequantized as codes * scale + bias.
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


def zero_point_table(qt: QuantizedTensor) -> np.ndarray:
    """C [groups, N] float32 of a weight with float zero points z: with m = 2**(bits - 1),

        W = (q - z) * s = (q - m) * s + (m - z) * s,

    the first term a MatMulNBits without zero points (m is its default, so ONNX Runtime's int8 and
    fused kernels run it), the second constant over each group, so x @ its transpose is x's sums over
    each group @ C, C = ((m - z) * s)^T. With z and s float16 values C is exact in float32 where
    |z| >= 1 (m - z then has at most 13 significant bits, s 11), else rounded once, as float32's own
    (q - z) * s may be."""
    mid = np.float32(2 ** (qt.bits - 1))
    return np.ascontiguousarray(((mid - qt.zero_points()) * qt.scales).T, dtype=np.float32)


def group_indicator(k: int, groups: int, group_size: int) -> np.ndarray:
    """E [k, groups] float32, 1 where input row i is in group j: x @ E sums x over each group (exactly:
    adding products by 1 and 0) for inputs of any rank, K not divisible by the group included."""
    e = np.zeros((k, groups), np.float32)
    e[np.arange(k), np.arange(k) // group_size] = 1
    return e


@dataclass
class MLXWeights:
    weight: np.ndarray  # uint32
    scales: np.ndarray
    biases: np.ndarray
    group_size: int
    bits: int


STREAM_ROWS = 4096  # rows packed at a time as a bit stream: bounds its [rows, K, bits] bit planes


def pack_words(codes: np.ndarray, bits: int) -> np.ndarray:
    """uint8 codes [N, K] (K * bits a multiple of 32) -> uint32 words [N, K * bits / 32], the codes'
    bits one after another from each word's low bit, running on into the next word."""
    n, k = codes.shape
    if 8 % bits == 0:  # whole codes per byte: the bytes, read as little-endian words
        return pack_low_first(np.ascontiguousarray(codes), bits).view("<u4").astype(np.uint32, copy=False)
    words = np.empty((n, k * bits // 32), np.uint32)
    shifts = np.arange(bits, dtype=np.uint8)
    for r in range(0, n, STREAM_ROWS):
        planes = (codes[r : r + STREAM_ROWS, :, None] >> shifts) & 1
        stream = np.packbits(planes.reshape(len(planes), -1), axis=-1, bitorder="little")
        words[r : r + STREAM_ROWS] = stream.view("<u4")
    return words


def unpack_words(words: np.ndarray, bits: int) -> np.ndarray:
    """pack_words' inverse: uint32 words [N, K * bits / 32] -> uint8 codes [N, K]."""
    n = words.shape[0]
    k = words.shape[1] * 32 // bits
    if 8 % bits == 0:
        return unpack_low_first(np.ascontiguousarray(words).astype("<u4", copy=False).view(np.uint8), bits, k)
    codes = np.empty((n, k), np.uint8)
    weights = (1 << np.arange(bits, dtype=np.uint8))[None, None, :]
    for r in range(0, n, STREAM_ROWS):
        stream = np.ascontiguousarray(words[r : r + STREAM_ROWS]).astype("<u4").view(np.uint8)
        planes = np.unpackbits(stream, axis=-1, bitorder="little").reshape(len(stream), k, bits)
        codes[r : r + STREAM_ROWS] = (planes * weights).sum(axis=-1, dtype=np.uint8)
    return codes


def to_mlx(qt: QuantizedTensor, scale_dtype=np.float16) -> MLXWeights:
    n, k = qt.shape
    if k % qt.group_size:
        raise EdgekitError(
            f"MLX needs the input size ({k}) to be a multiple of the group size ({qt.group_size}); "
            "quantize this layer with a group that divides it"
        )
    weight = pack_words(qt.codes[:, :k], qt.bits)
    scales = qt.scales.astype(scale_dtype)
    biases = (-qt.zero_points() * qt.scales).astype(scale_dtype)
    return MLXWeights(weight, scales, biases, qt.group_size, qt.bits)
