"""A probe past ONNX Runtime's 4-bit format: GPTQ rounding onto non-uniform grids of 16 levels,
measured through the numpy reference (`python bench/quality_selfcal.py default --grid MODE`).

    row     a grid of 16 float16 levels per output row (SqueezeLLM's per-channel lookup table),
            fitted by k-means weighted by each input's activation energy; no scales, no zero points
    tensor  one grid of 16 levels per tensor times a float16 scale per block (NF4's shape with the
            grid learned): the recipe's blocks, no zero points

MatMulNBits dequantizes (q - z) * s, so neither runs in a runtime edgekit targets: the probe says
what a kernel of our own would buy. Bits/weight count what such a file would store. Only 4-bit
GPTQ-rounded tensors change; 8-bit ones stay on the uniform grid.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edgekit.quant import pipeline
from edgekit.quant.gptq import GptqFactor, gptq_factor, gptq_sweep
from edgekit.quant.tensor import QuantizedTensor, fp16, grouped

LEVELS = 16
MODES = ("row", "tensor")
ROWS = 1024  # output rows fitted at a time: bounds the [rows, inputs, LEVELS - 1] comparisons


def nearest_level(values: np.ndarray, grids: np.ndarray) -> np.ndarray:
    """Codes of the nearest level: values [n, m] against sorted grids [n or 1, LEVELS]."""
    mids = (grids[:, 1:] + grids[:, :-1]) / 2
    if len(mids) == 1:
        return np.searchsorted(mids[0], values).astype(np.uint8)
    return (values[:, :, None] > mids[:, None, :]).sum(axis=-1).astype(np.uint8)


def weighted_kmeans(values: np.ndarray, weights: np.ndarray, grids: np.ndarray, steps: int = 12) -> np.ndarray:
    """Lloyd's steps on each row of values [n, m] (weights broadcast to it) from grids [n, LEVELS]."""
    n = values.shape[0]
    weights = np.broadcast_to(weights, values.shape)
    offsets = LEVELS * np.arange(n)[:, None]
    for _ in range(steps):
        index = (nearest_level(values, grids) + offsets).ravel()
        total = np.bincount(index, weights=(values * weights).ravel(), minlength=n * LEVELS)
        mass = np.bincount(index, weights=weights.ravel(), minlength=n * LEVELS)
        grids = np.sort(np.where(mass > 0, total / np.maximum(mass, 1e-30), grids.ravel()).reshape(n, LEVELS), axis=1)
    return grids


def row_grids(w: np.ndarray, energy: np.ndarray) -> np.ndarray:
    """[n, LEVELS] float16 levels per output row of w [n, kp], inputs weighted by their energy."""
    out = np.empty((w.shape[0], LEVELS), np.float32)
    start = np.quantile(w, (np.arange(LEVELS) + 0.5) / LEVELS, axis=1).T
    for r0 in range(0, w.shape[0], ROWS):
        out[r0 : r0 + ROWS] = weighted_kmeans(w[r0 : r0 + ROWS], energy[None, :], start[r0 : r0 + ROWS])
    return fp16(out)


def tensor_grid(w: np.ndarray, energy: np.ndarray, g: int, rounds: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """One grid [LEVELS] for w [n, kp] and a scale per block of g [n, kp // g], alternating: the
    grid by k-means of w / s (each weight's error counted in w's units: energy * s^2), then each
    block's scale by a search over multiples of its absolute maximum over the grid's widest level."""
    wg = grouped(w, g)  # [n, G, g]
    imp = energy.reshape(1, -1, g)
    absmax = np.abs(wg).max(axis=-1)
    absmax = np.where(absmax == 0, 1.0, absmax)
    scales = absmax.copy()
    unit = (wg / scales[..., None]).reshape(1, -1)
    grid = np.quantile(unit, (np.arange(LEVELS) + 0.5) / LEVELS, axis=1).T  # [1, LEVELS]
    for _ in range(rounds):
        unit = (wg / scales[..., None]).reshape(1, -1)
        weight = (imp * scales[..., None] ** 2).reshape(1, -1)
        grid = weighted_kmeans(unit, weight, grid, steps=5)
        widest = np.abs(grid).max()
        best, best_err = scales, np.full(scales.shape, np.inf, np.float32)
        for m in np.linspace(1.0, 0.7, 10):
            s = fp16(absmax * m / widest)
            s = np.where(s == 0, fp16(np.float32(1e-4)), s)
            u = (wg / s[..., None]).reshape(-1, g)
            deq = grid[0][nearest_level(u, grid)].reshape(wg.shape) * s[..., None]
            err = (imp * (wg - deq) ** 2).sum(axis=-1)
            better = err < best_err
            best, best_err = np.where(better, s, best), np.where(better, err, best_err)
        scales = best
    return fp16(grid[0]), scales


def quantize_gptq_lut(
    w: np.ndarray, hessian: np.ndarray, group_size: int, mode: str, factor: GptqFactor | None
) -> QuantizedTensor:
    """GPTQ in activation order onto the mode's grid, fitted before the sweep (static, as the
    uniform path's groups). Stored with group_size -g, the grids in `zeros` (a row each)."""
    factor = factor or gptq_factor(hessian, group_size)
    n, k = w.shape
    order, hinv = factor.order, factor.hinv
    kp = len(order)
    padded = np.zeros((n, kp), np.float32)
    padded[:, :k] = w
    padded[:, factor.dead] = 0.0
    energy = np.zeros(kp, np.float32)
    energy[:k] = np.diag(hessian)
    if mode == "row":
        g = kp
        grids, scales = row_grids(padded, energy), np.ones((n, 1), np.float32)
    else:
        g = group_size
        grid, scales = tensor_grid(padded, energy, g)
        grids = np.broadcast_to(grid, (n, LEVELS)).copy()
    weights = padded.T[order]
    del padded
    codes = np.zeros((kp, n), np.uint8)
    group_of = order // g
    scales_by_group = np.ascontiguousarray(scales.T)
    shared = grids[:1] if mode == "tensor" else grids
    rows = np.arange(n)

    def round_input(i: int, w_i: np.ndarray) -> np.ndarray:
        s = scales_by_group[group_of[i]]
        q = nearest_level((w_i / s)[:, None], shared)[:, 0] if mode == "row" else nearest_level(w_i / s, shared)
        codes[i] = q
        return grids[rows, q] * s

    gptq_sweep(weights, hinv, round_input)
    restored = np.empty((n, kp), np.uint8)
    restored[:, order] = codes.T
    return QuantizedTensor(restored, scales, grids, 4, -g, (n, k), f"gptq-lut-{mode}")


def _dequantize_lut(qt: QuantizedTensor) -> np.ndarray:
    n, k = qt.shape
    g = -qt.group_size
    levels = np.take_along_axis(qt.zeros, qt.codes.astype(np.intp), axis=1)
    return (levels * np.repeat(qt.scales, g, axis=1)[:, : levels.shape[1]])[:, :k]


def _lut_nbytes(qt: QuantizedTensor) -> int:
    n, kp = qt.codes.shape
    grids = len(np.unique(qt.zeros, axis=0))  # one per row, or one per fitted block of rows
    scales = 0 if -qt.group_size == kp else qt.scales.size  # a grid per row: no scales
    return n * kp // 2 + 2 * LEVELS * grids + 2 * scales


def install(mode: str) -> None:
    """Every 4-bit GPTQ rounding of quantize_checkpoint goes onto `mode`'s grid from here on."""
    if mode not in MODES:
        raise SystemExit(f"grid '{mode}': use one of {', '.join(MODES)}")
    uniform: Callable[..., QuantizedTensor] = pipeline.quantize_gptq

    def quantize_gptq(w, hessian, bits=4, group_size=32, symmetric=False, *, factor=None, **kwargs):
        if bits != 4:
            return uniform(w, hessian, bits, group_size, symmetric, factor=factor, **kwargs)
        return quantize_gptq_lut(w, hessian, group_size, mode, factor)

    pipeline.quantize_gptq = quantize_gptq
    plain_dequantize, plain_nbytes = QuantizedTensor.dequantize, QuantizedTensor.nbytes.fget
    QuantizedTensor.dequantize = lambda qt: _dequantize_lut(qt) if qt.group_size < 0 else plain_dequantize(qt)
    QuantizedTensor.nbytes = property(lambda qt: _lut_nbytes(qt) if qt.group_size < 0 else plain_nbytes(qt))
