"""A rotation of the residual stream (QuaRot's R1) that leaves the model's function as it is.

An orthogonal R spreads each outlier channel of the residual stream over all of them, so a block of
inputs no longer shares its range with one large column. With every RMS norm's weight folded into
the projections that read it (the norms then multiply by ones), RMSNorm(x R) = RMSNorm(x) R, and
the model computes the same function on the rotated stream x R:
- the embedding's rows: E R (so the stream starts rotated);
- the projections that read the stream (q/k/v, gate/up): W diag(norm) R;
- the projections that write it (o, down) and their biases: R^T W, b R;
- an untied lm_head: W diag(final norm) R. A tied one is the rotated embedding, so the final norm's
  weight cannot fold into it: the rotated stream's final norm is followed by the projection
  R^T diag(final norm) R (FINAL_ROTATION, stored at 8 bits), which the backends apply before the
  lm_head.
"""

from __future__ import annotations

import numpy as np

from ..families import EMBED, FINAL_NORM, LM_HEAD, bias_of, layer_weights
from ..sources.checkpoint import TensorInfo, TensorStore
from ..spec import ModelSpec


def random_rotation(size: int, seed: int = 0) -> np.ndarray:
    """A random orthogonal matrix (Haar-distributed: the QR factor of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((size, size)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


class RotatedResidual(TensorStore):
    """`store` with the residual stream rotated by `rotation`, applied as tensors are read."""

    def __init__(self, spec: ModelSpec, store: TensorStore, rotation: np.ndarray):
        self.spec, self.store, self.r = spec, store, rotation
        self.readers: dict[str, str] = {}  # a projection reading the stream -> the norm before it
        self.writers: set[str] = set()  # o, down and their biases
        for n in range(spec.num_layers):
            lw = layer_weights(spec, n)
            self.readers.update({w: lw.input_norm for w in lw.qkv})
            self.readers.update({w: lw.post_norm for w in lw.gate_up})
            self.writers.update((lw.o, lw.down, bias_of(lw.o), bias_of(lw.down)))
        if not spec.tie_word_embeddings:
            self.readers[LM_HEAD] = FINAL_NORM
        self.norms = frozenset(self.readers.values()) | {FINAL_NORM}

    def infos(self) -> dict[str, TensorInfo]:
        return self.store.infos()

    def get(self, name: str) -> np.ndarray:
        if name in self.norms:
            return np.ones(self.spec.hidden_size, np.float32)
        values = np.asarray(self.store.get(name), dtype=np.float32)
        return self._rotated(name, values)

    def _rotated(self, name: str, values: np.ndarray) -> np.ndarray:
        if name in self.readers:
            norm = np.asarray(self.store.get(self.readers[name]), dtype=np.float32)
            return (values * norm[None, :]) @ self.r
        if name in self.writers:
            return values @ self.r if values.ndim == 1 else self.r.T @ values
        return values @ self.r if name == EMBED else values

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        if name in self.norms or name in self.writers:
            return self.get(name)[start:stop]
        return self._rotated(name, self.store.rows(name, start, stop))

    def take(self, name: str, rows: np.ndarray) -> np.ndarray:
        if name in self.norms or name in self.writers:
            return self.get(name)[rows]
        return self._rotated(name, self.store.take(name, rows))

    def release(self, name: str) -> None:
        self.store.release(name)

    def final_rotation(self) -> np.ndarray | None:
        """R^T diag(final norm) R, for a tied lm_head (None when untied: folded into it)."""
        if not self.spec.tie_word_embeddings:
            return None
        norm = np.asarray(self.store.get(FINAL_NORM), dtype=np.float32)
        return ((self.r.T * norm[None, :]) @ self.r).astype(np.float32)
