"""A copy of a checkpoint that computes the same function with weights moved off any quantization
grid they came from, and with the outlier activation channels real checkpoints have.

The demo model was dequantized from Q4_1, so its projection weights sit on a 4-bit grid that a
quantizer may simply re-find. Folding random per-channel factors between operators that commute
with them breaks that grid without changing the outputs:
- RMS norm weight x d, columns of the projections it feeds / d (a few d are large: outliers);
- v_proj rows x e, o_proj columns / e (e shared by the query heads of one kv head);
- up_proj rows x f, down_proj columns / f.
"""

from __future__ import annotations

import numpy as np

from ..families import bias_of, layer_weights
from ..sources.checkpoint import Checkpoint, TensorInfo, TensorStore
from ..spec import ModelSpec


class DictStore(TensorStore):
    """Tensors held in memory."""

    def __init__(self, tensors: dict[str, np.ndarray]):
        self.tensors = tensors
        self._infos = {k: TensorInfo(k, tuple(v.shape), "F32", v.nbytes) for k, v in tensors.items()}

    def infos(self) -> dict[str, TensorInfo]:
        return self._infos

    def get(self, name: str) -> np.ndarray:
        return self.tensors[name]


def _factors(
    rng: np.random.Generator, size: int, sigma: float, outlier_fraction: float, outlier_scale: float
) -> np.ndarray:
    d = np.exp(sigma * rng.standard_normal(size))
    outliers = rng.choice(size, max(1, int(size * outlier_fraction)), replace=False)
    d[outliers] *= outlier_scale
    return d.astype(np.float32)


def off_grid_tensors(
    spec: ModelSpec,
    store: TensorStore,
    seed: int = 0,
    sigma: float = 0.5,
    outlier_fraction: float = 0.01,
    outlier_scale: float = 8.0,
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {name: np.array(store.get(name), dtype=np.float32) for name in store}
    group = spec.num_heads // spec.num_kv_heads
    for n in range(spec.num_layers):
        lw = layer_weights(spec, n)
        for norm, readers in ((lw.input_norm, lw.qkv), (lw.post_norm, lw.gate_up)):
            d = _factors(rng, spec.hidden_size, sigma, outlier_fraction, outlier_scale)
            out[norm] *= d
            for r in readers:
                out[r] /= d[None, :]
        e = _factors(rng, spec.kv_size, sigma, 0, 1)
        v_rows = slice(spec.q_size + spec.kv_size, None) if spec.fused_qkv else slice(None)
        out[lw.v][v_rows] *= e[:, None]
        if bias_of(lw.v) in out:
            out[bias_of(lw.v)][v_rows] *= e
        e_o = np.repeat(e.reshape(spec.num_kv_heads, 1, spec.head_dim), group, axis=1).reshape(-1)
        out[lw.o] /= e_o[None, :]
        f = _factors(rng, spec.intermediate_size, sigma, 0, 1)
        up_rows = slice(spec.intermediate_size, None) if spec.fused_gate_up else slice(None)
        out[lw.up][up_rows] *= f[:, None]
        if bias_of(lw.up) in out:
            out[bias_of(lw.up)][up_rows] *= f
        out[lw.down] /= f[None, :]
    return out


def off_grid_copy(checkpoint: Checkpoint, seed: int = 0) -> Checkpoint:
    tensors = off_grid_tensors(checkpoint.spec, checkpoint.tensors, seed)
    return Checkpoint(
        checkpoint.spec,
        DictStore(tensors),
        checkpoint.tokenizer,
        checkpoint.config,
        checkpoint.source + " (off-grid copy)",
        checkpoint.format,
        checkpoint.name + " off-grid",
    )
