"""AWQ: activation-aware per-input-channel scaling.

Input channels that carry large activations matter more; multiplying their weight columns by
s > 1 before quantizing (and dividing the activations by s, folded into the previous operator)
shrinks their relative rounding error. s = rms(x)^alpha, with alpha searched on the calibration
Hessian so that the layer's output error tr(dW H dW^T) is smallest. A clipping search per
output row follows (AWQ's second step).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .tensor import QuantizedTensor, from_params, grouped, minmax_params

Quantizer = Callable[[np.ndarray], QuantizedTensor]


def output_error(w: np.ndarray, w_hat: np.ndarray, hessian: np.ndarray) -> float:
    d = (w - w_hat).astype(np.float32)
    return float(np.einsum("nk,nk->", d @ hessian.astype(np.float32), d))


def search_scales(
    weights: Sequence[np.ndarray],
    hessian: np.ndarray,
    quantize: Quantizer,
    grid: int = 20,
    max_rows: int = 1024,
    rms: np.ndarray | None = None,
) -> np.ndarray:
    """Per-input-channel scales for the matrices that share one input, searched over alpha.
    `rms` overrides the mean square activation per channel taken from the Hessian's diagonal."""
    energy = np.diag(hessian) if rms is None else rms
    rms = np.sqrt(np.maximum(energy / max(float(np.max(energy)), 1e-30), 1e-12))
    rng = np.random.default_rng(0)
    # a row sample keeps the search cheap on wide matrices; the error estimate stays unbiased
    sample = [w[rng.choice(w.shape[0], max_rows, replace=False)] if w.shape[0] > max_rows else w for w in weights]
    best, best_err = np.ones(hessian.shape[0], np.float32), None
    for alpha in np.linspace(0, 1, grid + 1):
        s = rms**alpha
        s = (s / np.sqrt(s.max() * s.min())).astype(np.float32)
        err = sum(output_error(w, quantize(w * s).dequantize() / s, hessian) for w in sample)
        if best_err is None or err < best_err:
            best, best_err = s, err
    return best


def quantize_clipped(
    w: np.ndarray,
    hessian: np.ndarray,
    bits: int,
    group_size: int,
    symmetric: bool,
    grid: int = 10,
    max_shrink: float = 0.5,
) -> QuantizedTensor:
    """Round to nearest with each group's range shrunk by the factor that minimizes its weighted
    error, using the diagonal of the Hessian as per-input weights."""
    wg = grouped(w, group_size)
    importance = grouped(np.diag(hessian)[None, :].astype(np.float32), group_size)[0]  # [G, g]
    base_s, base_z = minmax_params(wg, bits, symmetric)
    best_err = np.full(base_s.shape, np.inf, np.float32)
    best_s, best_z = base_s.copy(), None if base_z is None else base_z.copy()
    for shrink in np.linspace(1.0, 1.0 - max_shrink, grid):
        s, z = minmax_params(wg * np.float32(shrink), bits, symmetric)
        qt = from_params(w, s, z, bits, group_size, "awq")
        diff = grouped(qt.dequantize() - w, group_size)
        err = np.sum(diff * diff * importance[None], axis=-1)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_s = np.where(better, s, best_s)
        if z is not None:
            best_z = np.where(better, z, best_z)
    return from_params(w, best_s, best_z, bits, group_size, "awq")
