"""How an npu graph stores a MatMul's weight: each encoding tried on QNN HTP, as the arrays it
stores and the DequantizeLinear nodes that turn them into the MatMul's weight input.

What QNN HTP does with each (the emulator of onnxruntime-qnn, CPU fallback disabled) is pinned by
tests/test_npu_weight_formats.py, one small graph per encoding; the README's NPU section has the
table. FORMATS maps a format's name to it; DEFAULT_FORMAT is what the npu flavor writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..onnx_graph import Graph

INT4_MAX = 7  # symmetric int4 codes in -8..7, scales set by the largest magnitude / 7
LPBQ_SCALE_MAX = 15  # LPBQ's block scales are 4-bit integers (1..15) under a float scale per channel


@dataclass(frozen=True)
class Encoded:
    """A weight as stored: `arrays` (suffix -> array, named `{key}.{suffix}` in the graph)."""

    arrays: dict[str, np.ndarray]

    @property
    def nbytes(self) -> int:
        """Bytes on disk (4-bit arrays two values a byte)."""
        return sum((a.size + 1) // 2 if a.dtype.name in ("int4", "uint4") else a.nbytes for a in self.arrays.values())


class WeightFormat(Protocol):
    name: str
    describe: str  # for the manifest
    folds_norms: bool  # RMS norm weights folded into the weights (re-rounded), or left to the graph

    def fits(self, w: np.ndarray) -> bool: ...

    def encode(self, w: np.ndarray) -> tuple[Encoded, np.ndarray]:
        """`w` [in, out] float32 -> the stored weight and the float weight the graph computes with."""
        ...

    def product(self, g: Graph, key: str, enc: Encoded, x: str) -> str:
        """Add x @ weight to `g` (named `key`); returns the product's name."""
        ...


class DequantizedMatMul:
    """A format whose `emit` dequantizes the weight for a plain MatMul."""

    def product(self, g: Graph, key: str, enc: Encoded, x: str) -> str:
        (y,) = g.op("MatMul", [x, self.emit(g, key, enc)], key)
        return y


def _int4(codes: np.ndarray) -> np.ndarray:
    import ml_dtypes  # onnx's own dependency: numpy's dtype for ONNX int4

    return codes.astype(ml_dtypes.int4)


def _symmetric(w: np.ndarray, top: int, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """codes in -top-1..top and scales (the largest magnitude over `axis` / top), keepdims."""
    scales = np.maximum(np.abs(w).max(axis=axis, keepdims=True), 1e-12).astype(np.float32) / top
    return np.clip(np.round(w / scales), -top - 1, top), scales


class PerChannel(DequantizedMatMul):
    """Codes per output channel (symmetric) through DequantizeLinear(axis=1)."""

    def __init__(self, bits: int):
        self.bits, self.top = bits, 2 ** (bits - 1) - 1
        self.folds_norms = bits == 8
        self.name = f"int{bits}_channel"
        self.describe = f"int{bits} per output channel (symmetric) through DequantizeLinear"

    def fits(self, w: np.ndarray) -> bool:
        return True

    def encode(self, w: np.ndarray) -> tuple[Encoded, np.ndarray]:
        codes, scales = _symmetric(w, self.top, axis=0)
        stored = codes.astype(np.int8) if self.bits == 8 else _int4(codes)
        zeros = np.zeros(w.shape[1], np.int8) if self.bits == 8 else _int4(np.zeros(w.shape[1]))
        arrays = {f"int{self.bits}": stored, "scales": scales[0], "zeros": zeros}
        return Encoded(arrays), (codes * scales).astype(np.float32)

    def emit(self, g: Graph, key: str, enc: Encoded) -> str:
        ins = [g.const(f"{key}.{suffix}", enc.arrays[suffix]) for suffix in (f"int{self.bits}", "scales", "zeros")]
        (w,) = g.op("DequantizeLinear", ins, key + "/weight", axis=1)
        return w


class Blocked(DequantizedMatMul):
    """int4 in blocks of `block` inputs, a float scale per block: DequantizeLinear(block_size)."""

    def __init__(self, block: int):
        self.block, self.folds_norms = block, False
        self.name = f"int4_block{block}"
        self.describe = f"int4 in blocks of {block} inputs (symmetric) through DequantizeLinear(block_size)"

    def fits(self, w: np.ndarray) -> bool:
        return w.shape[0] % self.block == 0

    def encode(self, w: np.ndarray) -> tuple[Encoded, np.ndarray]:
        k, n = w.shape
        codes, scales = _symmetric(w.reshape(k // self.block, self.block, n), INT4_MAX, axis=1)
        arrays = {
            "int4": _int4(codes.reshape(k, n)),
            "scales": scales[:, 0],
            "zeros": _int4(np.zeros(scales[:, 0].shape)),
        }
        return Encoded(arrays), (codes * scales).reshape(k, n).astype(np.float32)

    def emit(self, g: Graph, key: str, enc: Encoded) -> str:
        ins = [g.const(f"{key}.{suffix}", enc.arrays[suffix]) for suffix in ("int4", "scales", "zeros")]
        (w,) = g.op("DequantizeLinear", ins, key + "/weight", axis=0, block_size=self.block)
        return w


class Lpbq(DequantizedMatMul):
    """QNN's low-power block quantization: int4 codes in blocks of `block` inputs whose scales are
    integers 1..`scale_max` times one float scale per output channel. In ONNX: a DequantizeLinear
    of the uint8 block scales (per channel, axis=1) gives the float block scales that a blocked
    DequantizeLinear of the codes takes (QNN EP fuses the pair and the MatMul)."""

    def __init__(self, block: int, scale_max: int = LPBQ_SCALE_MAX, folds_norms: bool = False):
        self.block, self.scale_max, self.folds_norms = block, scale_max, folds_norms
        self.name = f"lpbq{block}" + ("" if scale_max == LPBQ_SCALE_MAX else f"_scales{scale_max}")
        self.name += "_folded" if folds_norms else ""
        self.describe = (
            f"int4 in blocks of {block} inputs, block scales integers 1..{scale_max} times a float scale "
            "per output channel (QNN's LPBQ), int8 per channel where no block divides the inputs"
        )

    def fits(self, w: np.ndarray) -> bool:
        return w.shape[0] % self.block == 0

    def encode(self, w: np.ndarray) -> tuple[Encoded, np.ndarray]:
        k, n = w.shape
        blocks = w.reshape(k // self.block, self.block, n)
        wanted = np.maximum(np.abs(blocks).max(axis=1), 1e-12) / INT4_MAX  # [blocks, out]
        channel = (wanted.max(axis=0) / self.scale_max).astype(np.float32)  # [out]
        # each block's scale rounded up to a multiple of the channel's: no code is clipped
        steps = np.clip(np.ceil(wanted / channel - 1e-4), 1, self.scale_max).astype(np.uint8)
        scales = steps * channel
        codes = np.clip(np.round(blocks / scales[:, None]), -INT4_MAX - 1, INT4_MAX)
        arrays = {
            "int4": _int4(codes.reshape(k, n)),
            "block_scales": steps,
            "scales": channel,
            "scale_zeros": np.zeros(n, np.uint8),
            "zeros": _int4(np.zeros(steps.shape)),
        }
        return Encoded(arrays), (codes * scales[:, None]).reshape(k, n).astype(np.float32)

    def emit(self, g: Graph, key: str, enc: Encoded) -> str:
        scale_ins = [
            g.const(f"{key}.{suffix}", enc.arrays[suffix]) for suffix in ("block_scales", "scales", "scale_zeros")
        ]
        (scales,) = g.op("DequantizeLinear", scale_ins, key + "/block_scales", axis=1)
        ins = [g.const(f"{key}.int4", enc.arrays["int4"]), scales, g.const(f"{key}.zeros", enc.arrays["zeros"])]
        (w,) = g.op("DequantizeLinear", ins, key + "/weight", axis=0, block_size=self.block)
        return w


class NBits:
    """ONNX Runtime's MatMulNBits (com.microsoft): uint8 bytes holding two 4-bit codes (asymmetric
    around 8), blocks of `block` inputs with a float scale each; it replaces the MatMul and takes
    the float activations."""

    def __init__(self, block: int):
        self.block, self.folds_norms = block, False
        self.name = f"matmulnbits{block}"
        self.describe = f"MatMulNBits: two 4-bit codes a byte, blocks of {block} inputs with a float scale each"

    def fits(self, w: np.ndarray) -> bool:
        return w.shape[0] % self.block == 0

    def encode(self, w: np.ndarray) -> tuple[Encoded, np.ndarray]:
        k, n = w.shape
        codes, scales = _symmetric(w.T.reshape(n, k // self.block, self.block), INT4_MAX, axis=2)  # [n, blocks, block]
        stored = (codes + 8).astype(np.uint8)
        packed = stored[..., 0::2] | (stored[..., 1::2] << 4)
        arrays = {"nbits": packed, "scales": scales.reshape(-1)}
        return Encoded(arrays), (codes * scales).reshape(n, k).T.astype(np.float32)

    def product(self, g: Graph, key: str, enc: Encoded, x: str) -> str:
        ins = [x, g.const(f"{key}.nbits", enc.arrays["nbits"]), g.const(f"{key}.scales", enc.arrays["scales"])]
        n, k = enc.arrays["nbits"].shape[0], enc.arrays["nbits"].shape[1] * self.block
        (y,) = g.op("MatMulNBits", ins, key, domain="com.microsoft", K=k, N=n, bits=4, block_size=self.block)
        return y


FORMATS: dict[str, WeightFormat] = {
    f.name: f
    for f in (
        PerChannel(8),
        PerChannel(4),
        Blocked(32),
        Lpbq(32),
        Lpbq(64),
        Lpbq(32, folds_norms=True),
        Lpbq(32, scale_max=255),
        NBits(32),
    )
}
DEFAULT_FORMAT = "int8_channel"
FALLBACK_FORMAT = "int8_channel"  # for a weight the chosen format does not fit (an input size no block divides)
