"""HQQ: half-quadratic quantization (calibration-free).

Starting from round-to-nearest, alternate between (1) the sparse error that an lp-norm (p < 1)
tolerates, found by generalized soft-thresholding, and (2) the closed-form zero point (or scale,
when symmetric) that fits the weights minus that error. Outlier weights end up in the tolerated
error instead of stretching the whole group.
"""

from __future__ import annotations

import numpy as np

from .tensor import QuantizedTensor, encode, fp16, from_params, grouped, minmax_params


def _shrink(x: np.ndarray, beta: float, p: float) -> np.ndarray:
    magnitude = np.abs(x)
    return np.sign(x) * np.maximum(magnitude - (1.0 / beta) * np.power(magnitude + 1e-12, p - 1), 0)


def quantize_hqq(
    w: np.ndarray,
    bits: int = 4,
    group_size: int = 32,
    symmetric: bool = False,
    *,
    iterations: int = 20,
    p: float = 0.7,
    beta: float = 10.0,
    kappa: float = 1.01,
) -> QuantizedTensor:
    wg = grouped(w, group_size)
    scales, zeros = minmax_params(wg, bits, symmetric)
    mid = np.float32(2 ** (bits - 1))
    z = zeros if zeros is not None else np.full(scales.shape, mid, np.float32)
    s = scales.copy()

    def error(s_: np.ndarray, z_: np.ndarray) -> np.ndarray:
        q = encode(wg, s_, z_, bits).astype(np.float32)
        return np.abs(wg - (q - z_[..., None]) * s_[..., None]).sum(axis=-1)

    best_s, best_z, best_err = s.copy(), z.copy(), error(s, z)
    for _ in range(iterations):
        q = encode(wg, s, z, bits).astype(np.float32)
        residual = _shrink(wg - (q - z[..., None]) * s[..., None], beta, p)
        target = wg - residual
        if symmetric:
            centered = q - z[..., None]
            denom = np.sum(centered * centered, axis=-1)
            s = np.where(denom > 0, np.sum(target * centered, axis=-1) / np.maximum(denom, 1e-12), s)
            s = np.where(s == 0, best_s, s).astype(np.float32)
        else:
            safe = np.where(s == 0, 1, s)
            z = np.mean(q - target / safe[..., None], axis=-1).astype(np.float32)
        beta *= kappa
        s_r, z_r = fp16(s), (z if symmetric else fp16(z))
        err = error(s_r, z_r)
        better = err < best_err
        best_s = np.where(better, s_r, best_s)
        best_z = np.where(better, z_r, best_z)
        best_err = np.minimum(err, best_err)
    qt = from_params(w, best_s, None if symmetric else best_z, bits, group_size, "hqq")
    return qt
