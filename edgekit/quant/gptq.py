"""GPTQ: quantize one input column at a time and push its rounding error onto the columns not yet
quantized, weighted by the inverse Hessian H = X^T X of the layer's calibration inputs.

Columns are visited in order of decreasing H diagonal (activation order), so the inputs that
matter most are rounded first while every other column can still absorb their error. Group
parameters are therefore fixed before the sweep ("static groups"), each group's range shrunk by
the factor that minimizes its rounding error, each input's error weighted by its activation
energy (the Hessian's diagonal; a grid search).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .tensor import QuantizedTensor, fp16, grouped, searched_params

BLOCK = 512  # rows per step of the blocked factorizations below
SUB = 16  # inputs per slice of a GPTQ block whose errors are pushed one input at a time


def _lower_inverse(d: np.ndarray) -> np.ndarray:
    """The inverse of a lower triangular matrix, by halves: [[A, 0], [C, D]]^-1 = [[A^-1, 0],
    [-D^-1 C A^-1, D^-1]]. A third of the work of a general inverse, most of it in matrix products."""
    n = d.shape[0]
    if n <= 64:
        return np.tril(np.linalg.inv(d))
    h = n // 2
    a_inv, d_inv = _lower_inverse(d[:h, :h]), _lower_inverse(d[h:, h:])
    out = np.zeros_like(d)
    out[:h, :h], out[h:, h:] = a_inv, d_inv
    out[h:, :h] = -d_inv @ (d[h:, :h] @ a_inv)
    return out


def _cholesky_in_place(a: np.ndarray) -> None:
    """a <- its lower Cholesky factor (zeros above the diagonal), in float32 and in place, by
    blocks: numpy.linalg computes in float64 on copies, which for an 8192-wide input holds over
    2 GB; here only one block-wide panel is allocated at a time."""
    n = a.shape[0]
    for j in range(0, n, BLOCK):
        e = min(j + BLOCK, n)
        d = np.linalg.cholesky(a[j:e, j:e])  # reads the lower triangle only
        a[j:e, j:e] = d
        a[j:e, e:] = 0.0
        if e == n:
            break
        a[e:, j:e] = a[e:, j:e] @ _lower_inverse(d).T
        for c in range(e, n, BLOCK):  # the lower part of the trailing matrix -= panel panel^T
            c2 = min(c + BLOCK, n)
            a[c:, c:c2] -= a[c:, j:e] @ a[c:c2, j:e].T


# the damping added to the Hessian's diagonal, as a fraction of its mean: twenty times GPTQ's usual
# 0.01, which let the rounding fit the calibration text's activations too closely; on SmolLM2 and
# its off-grid copy 0.2 lowered the KL to the source on every held-out text, with a calibration
# file (bench/quant_quality.py) and without one (bench/quality_selfcal.py; README, Quantization)
DAMP = 0.2


def _invert_lower_in_place(a: np.ndarray) -> None:
    """a (lower triangular) <- its inverse, in place, one block row at a time from the top."""
    n = a.shape[0]
    for r in range(0, n, BLOCK):
        r2 = min(r + BLOCK, n)
        d_inv = _lower_inverse(a[r:r2, r:r2])
        if r:
            a[r:r2, :r] = -d_inv @ (a[r:r2, :r] @ a[:r, :r])
        a[r:r2, r:r2] = d_inv


def _inverse_cholesky_upper(hessian: np.ndarray, order: np.ndarray, dead: np.ndarray, damp: float) -> np.ndarray:
    """U, upper triangular, with U^T U = (H + damping)^-1, H taken in visiting `order`.

    With J the reversal, (J H J)^-1 = X^T X for X = L^-1, L the lower Cholesky factor of J H J, so
    U = J X J: one float32 copy of H, factored and inverted in place, returned as a reversed view."""
    reverse = order[::-1]
    diag = np.arange(len(order))
    for attempt in range(1, 7):
        h = np.asarray(hessian, dtype=np.float32)[np.ix_(reverse, reverse)]
        h[diag[dead[reverse]], diag[dead[reverse]]] = 1.0  # inputs never active: no error to spread
        h[diag, diag] += attempt * damp * np.mean(np.diag(h))
        try:
            _cholesky_in_place(h)
        except np.linalg.LinAlgError:
            continue
        _invert_lower_in_place(h)
        return h[::-1, ::-1]
    raise np.linalg.LinAlgError("calibration Hessian is not positive definite")


@dataclass(frozen=True)
class GptqFactor:
    """What GPTQ needs of a Hessian, the same for every block of rows quantized against it."""

    order: np.ndarray  # the (group-padded) inputs in visiting order
    dead: np.ndarray  # inputs never active
    hinv: np.ndarray  # U, upper triangular, U^T U = (H + damping)^-1 in visiting order


def gptq_factor(hessian: np.ndarray, group_size: int, damp: float = DAMP, act_order: bool = True) -> GptqFactor:
    k = hessian.shape[0]
    kp = -(-k // group_size) * group_size
    h = hessian
    if kp != k:
        h = np.zeros((kp, kp), np.float32)
        h[:k, :k] = hessian
    dead = np.diag(h) == 0
    order = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(kp)
    return GptqFactor(order, dead, _inverse_cholesky_upper(h, order, dead, damp))  # the caller's H stays


def gptq_sweep(
    weights: np.ndarray, hinv: np.ndarray, round_input: Callable[[int, np.ndarray], np.ndarray], block: int = 128
) -> None:
    """GPTQ's error-compensating pass over `weights` [inputs in visiting order, outputs], updated in
    place: round_input(i, w_i) rounds input i (every output row's weight at once, as compensated so
    far) onto its grid and returns the rounded values; the rounding error, scaled by the inverse
    Hessian's upper factor `hinv`, is pushed onto the inputs not yet visited."""
    kp = weights.shape[0]
    for b0 in range(0, kp, block):
        b1 = min(b0 + block, kp)
        w_blk = weights[b0:b1]  # updated in place: these inputs are not read after this block
        err_blk = np.zeros_like(w_blk)
        h_blk = hinv[b0:b1, b0:b1]
        # GPTQ's lazy updates twice over: an input's error reaches the rest of its SUB-wide slice at
        # once, the rest of the block after the slice, the rest of the weights after the block
        for i0 in range(0, b1 - b0, SUB):
            i1 = min(i0 + SUB, b1 - b0)
            for i in range(i0, i1):
                err = (w_blk[i] - round_input(b0 + i, w_blk[i])) / h_blk[i, i]
                w_blk[i + 1 : i1] -= h_blk[i, i + 1 : i1, None] * err[None, :]
                err_blk[i] = err
            w_blk[i1:] -= h_blk[i0:i1, i1:].T @ err_blk[i0:i1]
        weights[b1:] -= hinv[b0:b1, b1:].T @ err_blk


def quantize_gptq(
    w: np.ndarray,
    hessian: np.ndarray,
    bits: int = 4,
    group_size: int = 32,
    symmetric: bool = False,
    *,
    damp: float = DAMP,
    block: int = 128,
    act_order: bool = True,
    factor: GptqFactor | None = None,
    weighted_grid: bool = True,
) -> QuantizedTensor:
    """factor: gptq_factor(hessian, group_size, damp, act_order), when several blocks of rows share it.
    weighted_grid: each static group's range is searched weighting every input's error by its
    activation energy (the Hessian's diagonal); False weights every input alike, as GPTQ's own grid
    does. Weighted, SmolLM2's default export lost x1.46 / x1.24 of the perplexity on two held-out
    texts instead of x1.59 / x1.24, its off-grid copy x1.67 / x1.32 instead of x1.97 / x1.38
    (bench/quality_selfcal.py), in the same bytes."""
    factor = factor or gptq_factor(hessian, group_size, damp, act_order)
    n, k = w.shape
    g = group_size
    order, dead, hinv = factor.order, factor.dead, factor.hinv
    kp = len(order)
    padded = np.zeros((n, kp), np.float32) if kp != k or dead.any() else None
    if padded is not None:
        padded[:, :k] = w
        padded[:, dead] = 0.0

    # static groups, [n, groups]; norm 2.4 as in GPTQ's own grid search
    importance = None
    if weighted_grid:
        energy = np.zeros(kp, np.float32)
        energy[:k] = np.diag(hessian)
        importance = energy.reshape(1, -1, g)
    scales, zeros = searched_params(
        grouped(padded if padded is not None else w, g), bits, symmetric, importance, norm=2.4
    )
    if zeros is None:
        zeros = np.full(scales.shape, 2 ** (bits - 1), np.float32)
    # visiting order, one input per row: a column of the weights is a contiguous row here
    weights = (padded if padded is not None else np.asarray(w, dtype=np.float32)).T[order]  # one copy, C order
    del padded

    codes = np.zeros((kp, n), np.uint8)
    qmax = 2**bits - 1
    group_of = order // g
    scales_by_group, zeros_by_group = np.ascontiguousarray(scales.T), np.ascontiguousarray(zeros.T)

    def round_input(i: int, w_i: np.ndarray) -> np.ndarray:
        s, z = scales_by_group[group_of[i]], zeros_by_group[group_of[i]]
        q = np.clip(np.rint(w_i / s + z), 0, qmax)
        codes[i] = q
        return (q - z) * s

    gptq_sweep(weights, hinv, round_input, block)
    restored = np.empty((n, kp), np.uint8)
    restored[:, order] = codes.T
    return QuantizedTensor(restored, fp16(scales), None if symmetric else zeros, bits, g, (n, k), "gptq")
