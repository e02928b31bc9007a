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

from .tensor import QuantizedTensor, from_params, grouped, searched_params

Quantizer = Callable[[np.ndarray], QuantizedTensor]


def output_error(w: np.ndarray, w_hat: np.ndarray, hessian: np.ndarray) -> float:
    d = (w - w_hat).astype(np.float32)
    return float(np.einsum("nk,nk->", d @ np.asarray(hessian, dtype=np.float32), d))


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
    """Round to nearest with each group's range shrunk by the factor that minimizes its squared
    error weighted by the Hessian's diagonal (the energy of each input channel)."""
    importance = grouped(np.diag(hessian)[None, :].astype(np.float32), group_size)[0]  # [G, g]
    scales, zeros = searched_params(grouped(w, group_size), bits, symmetric, importance[None], 2.0, grid, max_shrink)
    return from_params(w, scales, zeros, bits, group_size, "awq")
