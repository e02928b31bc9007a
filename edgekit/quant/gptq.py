"""GPTQ: quantize one input column at a time and push its rounding error onto the columns not yet
quantized, weighted by the inverse Hessian H = X^T X of the layer's calibration inputs.

Group parameters are taken from the already-updated weights when a group starts, as in the
reference implementation (static groups, no activation reordering).
"""

from __future__ import annotations

import numpy as np

from .tensor import QuantizedTensor, encode, fp16, grouped, minmax_params


def _inverse_cholesky_upper(h: np.ndarray, damp: float) -> np.ndarray:
    h = h.astype(np.float64, copy=True)
    diag = np.arange(h.shape[0])
    h[diag, diag] += damp * np.mean(np.diag(h))
    for _ in range(6):
        try:
            inv = np.linalg.inv(np.linalg.cholesky(h))  # L^-1
            return np.linalg.cholesky(inv.T @ inv).T  # upper Cholesky factor of H^-1
        except np.linalg.LinAlgError:
            h[diag, diag] += damp * np.mean(np.diag(h))
    raise np.linalg.LinAlgError("calibration Hessian is not positive definite")


def quantize_gptq(
    w: np.ndarray,
    hessian: np.ndarray,
    bits: int = 4,
    group_size: int = 32,
    symmetric: bool = False,
    *,
    damp: float = 0.01,
    block: int = 128,
) -> QuantizedTensor:
    n, k = w.shape
    g = group_size
    kp = -(-k // g) * g
    weights = np.zeros((n, kp), np.float32)
    weights[:, :k] = w
    h = np.zeros((kp, kp), np.float64)
    h[:k, :k] = hessian
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    weights[:, dead] = 0.0
    hinv = _inverse_cholesky_upper(h, damp).astype(np.float32)

    groups = kp // g
    scales = np.zeros((n, groups), np.float32)
    zeros = np.zeros((n, groups), np.float32)
    mid = np.float32(2 ** (bits - 1))
    codes = np.zeros((n, kp), np.uint8)
    block = max(block // g, 1) * g  # groups never straddle blocks
    for b0 in range(0, kp, block):
        b1 = min(b0 + block, kp)
        w_blk = weights[:, b0:b1].copy()
        err_blk = np.zeros_like(w_blk)
        h_blk = hinv[b0:b1, b0:b1]
        for i in range(b1 - b0):
            col = b0 + i
            if col % g == 0:
                s, z = minmax_params(grouped(w_blk[:, i : i + g], g), bits, symmetric)
                scales[:, col // g] = s[:, 0]
                zeros[:, col // g] = z[:, 0] if z is not None else mid
            s_col, z_col = scales[:, col // g], zeros[:, col // g]
            q = encode(w_blk[:, i, None, None], s_col[:, None], z_col[:, None], bits)[:, 0, 0]
            codes[:, col] = q
            deq = (q.astype(np.float32) - z_col) * s_col
            err = (w_blk[:, i] - deq) / h_blk[i, i]
            w_blk[:, i:] -= err[:, None] * h_blk[i, i:][None, :]
            err_blk[:, i] = err
        weights[:, b1:] -= err_blk @ hinv[b0:b1, b1:]
    return QuantizedTensor(codes, fp16(scales), None if symmetric else zeros, bits, g, (n, k), "gptq")
