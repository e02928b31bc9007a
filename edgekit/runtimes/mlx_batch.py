"""MLX over several sequences at once: a decode step runs the projections and the MLP of every
running sequence as one batch (one read of the weights) and each sequence's attention over its
own cache, at its own length. Each slot keeps one grown-as-needed KV cache per layer."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgekitError
from ..spec import ModelSpec
from .base import EMPTY_PROMPT, check_room
from .mlx import DEFAULT_PREFILL_CHUNK, MlxRuntime, _mx


def kv_itemsize(spec: ModelSpec, kv_bits: int) -> float:
    """Bytes of one cached key or value element, scales included: the compute dtype's (float16 on
    the GPU, float32 on the CPU) or int8's."""
    mx = _mx()
    from .mlx_cache import bytes_per_element, kv_codec

    dtype = mx.float16 if mx.default_device() == mx.gpu else mx.float32
    return bytes_per_element(kv_codec(kv_bits, dtype, spec.head_dim), spec.head_dim)


class MlxBatchRuntime:
    """`slots` sequences over one MLX model. Not thread-safe: the generation layer's batcher calls
    it, from one thread, and prepare() builds the model in that thread (MLX's streams belong to
    the thread that made them)."""

    def __init__(
        self,
        folder: str | Path,
        max_context: int,
        slots: int,
        *,
        prefill_chunk: int | None = None,
        threads: int | None = None,
        kv_bits: int = 0,
    ):
        self.folder = Path(folder)
        self.spec = ModelSpec.from_config(json.loads((self.folder / "config.json").read_text()), str(self.folder))
        self.max_context = min(max_context, self.spec.max_position_embeddings)
        self.prefill_chunk = prefill_chunk or DEFAULT_PREFILL_CHUNK
        self.slots = slots
        self.threads = threads
        self.kv_bits = kv_bits
        self.why_no_verify: str | None = None
        self.why_no_prefix_cache: str | None = None
        self.caches: list[list[Any]] = [[] for _ in range(slots)]
        self.model: Any = None

    def prepare(self) -> None:
        """Load the weights and build the model, in the thread that will run it."""
        from .mlx_cache import KVCache

        single = MlxRuntime(
            self.folder, self.max_context, prefill_chunk=self.prefill_chunk, threads=self.threads, kv_bits=self.kv_bits
        )
        self.model, s = single.model, self.spec
        self.caches = [
            [KVCache(self.max_context, s.num_kv_heads, s.head_dim, single.codec) for _ in range(s.num_layers)]
            for _ in range(self.slots)
        ]

    @property
    def lengths(self) -> list[int]:
        return [layers[0].offset if layers else 0 for layers in self.caches]

    def run(self, slot: int, ids: Sequence[int], keep: int = 1) -> np.ndarray:
        if not len(ids):
            raise EdgekitError(EMPTY_PROMPT)
        mx = _mx()
        check_room(self.lengths[slot], len(ids), self.max_context)
        logits = self.model(mx.array(np.asarray(ids, dtype=np.int32)), self.caches[slot], last_only=keep == 1)
        mx.eval(logits)
        return np.array(logits[-keep:].astype(mx.float32))

    def decode(self, tokens: dict[int, int]) -> dict[int, np.ndarray]:
        mx = _mx()
        for slot in tokens:
            check_room(self.lengths[slot], 1, self.max_context)
        slots = list(tokens)
        logits = self.model.batch(mx.array([tokens[s] for s in slots], dtype=mx.int32), [self.caches[s] for s in slots])
        mx.eval(logits, [(c.keys, c.values) for s in slots for c in self.caches[s]])
        out = np.array(logits.astype(mx.float32))
        return {slot: out[row] for row, slot in enumerate(slots)}

    def trim(self, slot: int, length: int) -> None:
        for cache in self.caches[slot]:
            cache.offset = min(cache.offset, length)

    def read_kv(self, slot: int, start: int, end: int) -> np.ndarray:
        """Positions [start, end) of `slot` as stored: [layers, 2, kv_heads, end - start, bytes]."""
        mx = _mx()
        return np.array(mx.stack([c.read(start, end) for c in self.caches[slot]]))

    def write_kv(self, slot: int, start: int, kv: np.ndarray) -> None:
        mx = _mx()
        check_room(0, start + kv.shape[3], self.max_context)
        if self.lengths[slot] < start:
            raise EdgekitError(f"slot {slot} holds {self.lengths[slot]} positions; cannot write from {start}")
        for cache, layer in zip(self.caches[slot], kv, strict=True):
            cache.write(start, mx.array(layer))
        mx.eval(*[c.keys for c in self.caches[slot]], *[c.values for c in self.caches[slot]])
