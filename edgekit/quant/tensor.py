"""The backend-neutral quantized weight: block-wise along the input dimension K.

    w[n, k] ~= (codes[n, k] - zeros[n, k // g]) * scales[n, k // g]

Scales are float16 values (kept in float32 arrays), zero points are integers for every algorithm
except HQQ, whose optimized zero points are float16 values too. With integer zero points every
consumer's dequantization (ONNX Runtime's (q - z) * s, MLX's q * s + b) is exact in float32, so
packed artifacts reproduce `dequantize()` bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import EdgekitError

# what the quantizers make; a writer takes the widths its runtime reads (exporters.pipeline.Writer):
# ONNX Runtime's MatMulNBits 4 and 8, MLX also 5 and 6
SUPPORTED_BITS = (4, 5, 6, 8)
SUPPORTED_GROUPS = (32, 64, 128)


def fp16(x: np.ndarray) -> np.ndarray:
    """Round to the nearest float16 value, kept as float32."""
    return np.asarray(x, dtype=np.float32).astype(np.float16).astype(np.float32)


def check_bits_and_group(bits: int, group_size: int, field: str = "bits") -> None:
    """field: the recipe field `bits` came from, named in the error."""
    if bits not in SUPPORTED_BITS:
        raise EdgekitError(f"{field}={bits} is not supported; use one of {', '.join(map(str, SUPPORTED_BITS))}")
    if group_size not in SUPPORTED_GROUPS:
        raise EdgekitError(
            f"group size {group_size} is not supported; use one of {', '.join(map(str, SUPPORTED_GROUPS))}"
        )


def layer_group(k: int, group_size: int, whole: bool = False) -> int:
    """The group used for an input size k: the requested one, its last block zero-padded where it
    does not divide k (ONNX Runtime's MatMulNBits reads such blocks). whole=True (MLX, whose groups
    must tile k): the largest smaller supported group that divides k, else the requested one padded."""
    if k % group_size == 0 or not whole:
        return group_size
    for g in (64, 32, 16):
        if g < group_size and k % g == 0:
            return g
    return group_size


@dataclass
class QuantizedTensor:
    codes: np.ndarray  # uint8 [N, K padded to a multiple of group_size], 0 .. 2**bits - 1
    scales: np.ndarray  # float32 [N, groups], float16-representable
    zeros: np.ndarray | None  # float32 [N, groups]; None = symmetric (2**(bits-1))
    bits: int
    group_size: int
    shape: tuple[int, int]  # (N, K) of the original weight
    algorithm: str = "rtn"

    @property
    def n_groups(self) -> int:
        return self.scales.shape[1]

    @property
    def symmetric(self) -> bool:
        return self.zeros is None

    @property
    def integer_zeros(self) -> bool:
        return self.zeros is None or bool(np.all(self.zeros == np.round(self.zeros)))

    def zero_points(self) -> np.ndarray:
        if self.zeros is None:
            return np.full(self.scales.shape, 2 ** (self.bits - 1), dtype=np.float32)
        return self.zeros

    def dequantize(self) -> np.ndarray:
        n, k = self.shape
        g = self.group_size
        q = self.codes.reshape(n, self.n_groups, g).astype(np.float32)
        w = (q - self.zero_points()[:, :, None]) * self.scales[:, :, None]
        return w.reshape(n, -1)[:, :k]

    @property
    def nbytes(self) -> int:
        """Storage bytes: packed codes, float16 scales, zero points (packed integers or float16)."""
        n = self.shape[0]
        codes = n * self.codes.shape[1] * self.bits // 8
        scales = self.scales.size * 2
        if self.zeros is None:
            zeros = 0
        elif self.integer_zeros:
            zeros = n * -(-self.n_groups * self.bits // 8)
        else:
            zeros = self.zeros.size * 2
        return codes + scales + zeros

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.nbytes / (self.shape[0] * self.shape[1])

    def take_rows(self, rows: np.ndarray) -> QuantizedTensor:
        """The output rows `rows` (an embedding lookup, a block of the lm_head) as their own tensor."""
        zeros = None if self.zeros is None else self.zeros[rows]
        shape = (len(self.codes[rows]), self.shape[1])
        return QuantizedTensor(
            self.codes[rows], self.scales[rows], zeros, self.bits, self.group_size, shape, self.algorithm
        )


def quantized_alike(a: QuantizedTensor, b: QuantizedTensor) -> bool:
    """Whether the rows of a and b can stack into one tensor (one kernel call)."""
    return (
        a.bits == b.bits
        and a.group_size == b.group_size
        and a.symmetric == b.symmetric
        and a.shape[1] == b.shape[1]
        and a.integer_zeros == b.integer_zeros
    )


def alike_groups(parts: list[QuantizedTensor]) -> list[list[int]]:
    """The indices of `parts` gathered by quantized_alike, each group in order, the groups in the
    order of their first member: [[0, 2], [1]] for q/k/v with only k at other bits."""
    groups: list[list[int]] = []
    for i, part in enumerate(parts):
        group = next((g for g in groups if quantized_alike(parts[g[0]], part)), None)
        if group is None:
            groups.append([i])
        else:
            group.append(i)
    return groups


def concat_rows(parts: list[QuantizedTensor]) -> QuantizedTensor | None:
    """One quantized tensor stacking the output rows of several, when they were quantized alike."""
    first = parts[0]
    if not all(quantized_alike(first, p) for p in parts):
        return None
    zeros = None if first.zeros is None else np.concatenate([p.zeros for p in parts])
    return QuantizedTensor(
        np.concatenate([p.codes for p in parts]),
        np.concatenate([p.scales for p in parts]),
        zeros,
        first.bits,
        first.group_size,
        (sum(p.shape[0] for p in parts), first.shape[1]),
        first.algorithm,
    )


def grouped(w: np.ndarray, group_size: int) -> np.ndarray:
    """w [N, K] -> [N, groups, group_size], zero-padding K up to a multiple of the group."""
    n, k = w.shape
    pad = -k % group_size
    if pad:
        w = np.pad(w, ((0, 0), (0, pad)))
    return np.ascontiguousarray(w, dtype=np.float32).reshape(n, -1, group_size)


def encode(wg: np.ndarray, scales: np.ndarray, zeros: np.ndarray, bits: int) -> np.ndarray:
    """Codes for grouped weights [N, G, g] with per-group scales and zero points [N, G]."""
    qmax = 2**bits - 1
    safe = np.where(scales == 0, 1.0, scales)[:, :, None]
    q = np.rint(wg / safe + zeros[:, :, None])
    return np.clip(q, 0, qmax).astype(np.uint8)


def minmax_params(wg: np.ndarray, bits: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Round-to-nearest scales and zero points of grouped weights [N, G, g]."""
    qmax = 2**bits - 1
    if symmetric:
        # the signed extreme maps to -2**(bits-1) exactly, so the full code range is used
        idx = np.argmax(np.abs(wg), axis=-1)[..., None]
        extreme = np.take_along_axis(wg, idx, axis=-1)[..., 0]
        scales = fp16(extreme / -(2 ** (bits - 1)))  # may be negative: llama.cpp's Q4_0 does the same
        return np.where(scales == 0, fp16(np.float32(1e-4)), scales), None
    return _range_params(np.minimum(wg.min(axis=-1), 0), np.maximum(wg.max(axis=-1), 0), qmax)


def _range_params(lo: np.ndarray, hi: np.ndarray, qmax) -> tuple[np.ndarray, np.ndarray]:
    """Scales and zero points mapping [lo, hi] (lo <= 0 <= hi) onto the codes 0..qmax."""
    scales = fp16((hi - lo) / qmax)
    scales = np.where(scales == 0, fp16(np.float32(1e-4)), scales)
    zeros = np.clip(np.rint(-lo / scales), 0, qmax).astype(np.float32)
    return scales, zeros


def from_params(
    w: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None, bits: int, group_size: int, algorithm: str
) -> QuantizedTensor:
    wg = grouped(w, group_size)
    z = zeros if zeros is not None else np.full(scales.shape, 2 ** (bits - 1), np.float32)
    codes = encode(wg, scales, z, bits).reshape(w.shape[0], -1)
    return QuantizedTensor(codes, scales.astype(np.float32), zeros, bits, group_size, tuple(w.shape), algorithm)


def searched_params(
    wg: np.ndarray,
    bits: int,
    symmetric: bool,
    importance: np.ndarray | None = None,
    norm: float = 2.0,
    grid: int = 12,
    max_shrink: float = 0.3,
    rows: int = 1024,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-group scale and zero point of the range shrunk by the factor (1 down to 1 - max_shrink)
    that minimizes sum importance * |w - q(w)|^norm over each group of grouped weights [N, G, g].
    `rows` output rows at a time, which bounds the temporaries of the search."""
    mid = np.float32(2 ** (bits - 1))
    qmax = np.float32(2**bits - 1)
    best_s = np.zeros(wg.shape[:2], np.float32)
    best_z = np.full(wg.shape[:2], mid, np.float32)
    for r0 in range(0, wg.shape[0], rows):
        part = wg[r0 : r0 + rows]
        weight = importance if importance is None or importance.shape[0] == 1 else importance[r0 : r0 + rows]
        best_err = np.full(part.shape[:2], np.inf, np.float32)
        # Rounding is monotonic, so the extremes of the shrunk weights are the shrunk extremes:
        # taken once here instead of once per shrink factor.
        if not symmetric:
            lo = np.minimum(part.min(axis=-1), 0)
            hi = np.maximum(part.max(axis=-1), 0)
        diff = np.empty_like(part)  # one buffer for every step's error terms
        for shrink in np.linspace(1.0, 1.0 - max_shrink, grid):
            if symmetric:
                s, z = minmax_params(part * np.float32(shrink), bits, symmetric)
            else:
                s, z = _range_params(lo * np.float32(shrink), hi * np.float32(shrink), qmax)
            z_full = np.full(s.shape, mid, np.float32) if z is None else z
            np.divide(part, np.where(s == 0, 1.0, s)[..., None], out=diff)  # encode(), unrolled in place
            diff += z_full[..., None]
            np.rint(diff, out=diff)
            np.clip(diff, 0, qmax, out=diff)
            diff -= z_full[..., None]
            diff *= s[..., None]
            diff -= part
            np.abs(diff, out=diff)
            np.power(diff, norm, out=diff)
            if weight is not None:
                diff *= weight
            err = diff.sum(axis=-1)
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best_s[r0 : r0 + rows] = np.where(better, s, best_s[r0 : r0 + rows])
            best_z[r0 : r0 + rows] = np.where(better, z_full, best_z[r0 : r0 + rows])
    return best_s, None if symmetric else best_z
