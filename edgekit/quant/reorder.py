"""Channel orders that group inputs of like magnitude into the same quantization block.

A block of 128 inputs shares one range per output row: one large input column in it coarsens the
grid of the other 127. Two reorderings leave the model's function exactly as it is:
- the residual stream's channels, one order for the whole model: the embedding's (and lm_head's)
  columns, every norm weight on the hidden size, the columns of the projections that read the
  residual stream (q/k/v, gate/up) and the rows of those that write it (o, down; their biases);
- the MLP's intermediate channels, one order per layer: the rows of gate and up, the columns of down.
Channels are sorted by ascending magnitude, so a row whose last block is padded (576 inputs in
blocks of 128) holds its largest inputs in that short block.
"""

from __future__ import annotations

import numpy as np

from ..families import EMBED, FINAL_NORM, LM_HEAD, bias_of, layer_weights
from ..sources.checkpoint import TensorInfo, TensorStore
from ..spec import ModelSpec


def residual_order(spec: ModelSpec, store: TensorStore) -> np.ndarray:
    """Residual channels by ascending root-mean-square of the embedding's columns (and the
    untied lm_head's): the table every token enters by and the logits leave by."""
    energy = np.zeros(spec.hidden_size, np.float64)
    for name in (EMBED, LM_HEAD):
        if name in store:
            rows = store.infos()[name].shape[0]
            for start in range(0, rows, 8192):
                block = store.rows(name, start, min(rows, start + 8192))
                energy += np.square(block, dtype=np.float64).sum(axis=0)
            store.release(name)
    return np.argsort(energy, kind="stable")


class ReorderedResidual(TensorStore):
    """`store` with the residual stream's channels taken in `order`, applied as tensors are read."""

    def __init__(self, spec: ModelSpec, store: TensorStore, order: np.ndarray):
        self.store, self.order = store, np.asarray(order)
        columns, rows = {EMBED, LM_HEAD}, {FINAL_NORM}
        for n in range(spec.num_layers):
            lw = layer_weights(spec, n)
            columns.update(lw.qkv + lw.gate_up)
            rows.update((lw.input_norm, lw.post_norm, lw.o, lw.down, bias_of(lw.o), bias_of(lw.down)))
        self.columns, self.rows_first = frozenset(columns), frozenset(rows)

    def infos(self) -> dict[str, TensorInfo]:
        return self.store.infos()

    def get(self, name: str) -> np.ndarray:
        values = self.store.get(name)
        if name in self.columns:
            return values[:, self.order]
        return values[self.order] if name in self.rows_first else values

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        if name in self.columns:
            return self.store.rows(name, start, stop)[:, self.order]
        return self.get(name)[start:stop] if name in self.rows_first else self.store.rows(name, start, stop)

    def take(self, name: str, rows: np.ndarray) -> np.ndarray:
        if name in self.columns:
            return self.store.take(name, rows)[:, self.order]
        return self.get(name)[rows] if name in self.rows_first else self.store.take(name, rows)

    def release(self, name: str) -> None:
        self.store.release(name)


def intermediate_order(down: np.ndarray) -> np.ndarray:
    """The MLP's intermediate channels by ascending root-mean-square of the down projection's
    columns (as quantized: after any scaling folded into them)."""
    return np.argsort(np.square(down, dtype=np.float64).sum(axis=0), kind="stable")


def reorder_intermediate(spec: ModelSpec, n: int, w: dict[str, np.ndarray], order: np.ndarray) -> None:
    """Take layer n's MLP intermediate channels in `order`: gate/up rows (both halves of a fused
    gate_up) and their biases, down's columns."""
    lw = layer_weights(spec, n)
    size = spec.intermediate_size
    for name in lw.gate_up:
        parts = w[name].shape[0] // size
        rows = np.concatenate([order + p * size for p in range(parts)])
        w[name] = w[name][rows]
        if bias_of(name) in w:
            w[bias_of(name)] = w[bias_of(name)][rows]
    w[lw.down] = w[lw.down][:, order]
