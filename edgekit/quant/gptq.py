"""GPTQ: quantize one input column at a time and push its rounding error onto the columns not yet
quantized, weighted by the inverse Hessian H = X^T X of the layer's calibration inputs.

Columns are visited in order of decreasing H diagonal (activation order), so the inputs that
matter most are rounded first while every other column can still absorb their error. Group
parameters are therefore fixed before the sweep ("static groups"), each group's range shrunk by
the factor that minimizes its rounding error (a grid search).
"""

from __future__ import annotations

import numpy as np

from .tensor import QuantizedTensor, fp16, grouped, searched_params


def _inverse_cholesky_upper(h: np.ndarray, damp: float) -> np.ndarray:
    """Upper Cholesky factor of (H + damping)^-1, in float32 like GPTQ's own implementation; H is
    damped in place. Each step frees the previous matrix: for a 8192-wide input each is 256 MB."""
    diag = np.arange(h.shape[0])
    h[diag, diag] += damp * np.mean(np.diag(h))
    for _ in range(6):
        try:
            inverse = np.linalg.inv(np.linalg.cholesky(h))  # L^-1
            hinv = inverse.T @ inverse  # H^-1
            del inverse
            return np.linalg.cholesky(hinv).T
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
    act_order: bool = True,
) -> QuantizedTensor:
    n, k = w.shape
    g = group_size
    kp = -(-k // g) * g
    weights = np.zeros((n, kp), np.float32)
    weights[:, :k] = w
    if kp == k:
        h = np.asarray(hessian, dtype=np.float32)
    else:
        h = np.zeros((kp, kp), np.float32)
        h[:k, :k] = hessian
    dead = np.diag(h) == 0
    if dead.any():  # inputs never active: no error to spread through them
        h = h.copy() if h is hessian else h
        h[dead, dead] = 1.0
        weights[:, dead] = 0.0

    # static groups, [n, groups]; norm 2.4 as in GPTQ's own grid search
    scales, zeros = searched_params(grouped(weights, g), bits, symmetric, norm=2.4)
    if zeros is None:
        zeros = np.full(scales.shape, 2 ** (bits - 1), np.float32)
    order = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(kp)
    weights = weights[:, order]
    h = h[np.ix_(order, order)]  # a copy: the caller's Hessian stays as it was
    hinv = _inverse_cholesky_upper(h, damp)
    del h
    col_scale = scales[:, order // g]  # [n, kp] in visiting order
    col_zero = zeros[:, order // g]

    codes = np.zeros((n, kp), np.uint8)
    qmax = 2**bits - 1
    for b0 in range(0, kp, block):
        b1 = min(b0 + block, kp)
        w_blk = weights[:, b0:b1].copy()
        err_blk = np.zeros_like(w_blk)
        h_blk = hinv[b0:b1, b0:b1]
        for i in range(b1 - b0):
            s_col, z_col = col_scale[:, b0 + i], col_zero[:, b0 + i]
            q = np.clip(np.rint(w_blk[:, i] / s_col + z_col), 0, qmax)
            codes[:, b0 + i] = q
            err = (w_blk[:, i] - (q - z_col) * s_col) / h_blk[i, i]
            w_blk[:, i:] -= err[:, None] * h_blk[i, i:][None, :]
            err_blk[:, i] = err
        weights[:, b1:] -= err_blk @ hinv[b0:b1, b1:]
    restored = np.empty_like(codes)
    restored[:, order] = codes
    return QuantizedTensor(restored, fp16(scales), None if symmetric else zeros, bits, g, (n, k), "gptq")
