"""ONNX Runtime backend for optimum-style decoder graphs (the generic export path).

Inputs `input_ids`, `attention_mask`, optional `position_ids`, `past_key_values.N.key/value`;
outputs `logits` for every position and `present.N.key/value` = past + the new positions. The
sequence axis of the cache is the one the graph names `past_sequence_length`. Each step feeds the
previous presents back as pasts: simple and architecture-agnostic, at the cost of a cache copy per
token that the native graph's shared buffers avoid."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import EdgekitError
from .base import check_room, prefill_in_chunks
from .onnx import DEFAULT_PREFILL_CHUNK, make_session

_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}


class OptimumRuntime:
    def __init__(
        self,
        model_path: Path,
        max_context: int,
        *,
        providers: Sequence[str | tuple[str, dict]] = ("CPUExecutionProvider",),
        threads: int | None = None,
        prefill_chunk: int | None = None,
        extra_outputs: Sequence[str] = (),
        huge_pages: bool = False,
    ):
        self.session = make_session(model_path, providers, threads, huge_pages)
        self.max_context = max_context
        self.prefill_chunk = prefill_chunk or DEFAULT_PREFILL_CHUNK
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.pasts = sorted((n for n in inputs if n.startswith("past_key_values.")), key=_layer_order)
        if "input_ids" not in inputs or not self.pasts:
            raise EdgekitError(
                f"{model_path}: not an optimum text-generation graph with a KV cache (inputs: {', '.join(inputs)})"
            )
        self.presents = [name.replace("past_key_values.", "present.") for name in self.pasts]
        self.has_positions = "position_ids" in inputs
        self.has_mask = "attention_mask" in inputs
        self.empty = {}
        for name in self.pasts:
            shape = inputs[name].shape
            axis = [i for i, d in enumerate(shape) if isinstance(d, str) and "past" in d]
            if len(axis) != 1 or any(isinstance(d, str) for i, d in enumerate(shape) if i not in (0, axis[0])):
                raise EdgekitError(f"{model_path}: cannot tell the sequence axis of {name} {shape}")
            dims = [1 if i == 0 else (0 if i == axis[0] else d) for i, d in enumerate(shape)]
            self.empty[name] = np.zeros(dims, dtype=_DTYPES.get(inputs[name].type, np.float32))
            self.seq_axis = axis[0]
        self.extra_outputs = list(extra_outputs)
        self.why_no_verify = None
        self.last_extra: dict[str, np.ndarray] = {}
        self.reset()

    def reset(self) -> None:
        self.cache = dict(self.empty)
        self.length = 0

    def trim(self, length: int) -> None:
        if length < self.length:
            index = [slice(None)] * self.seq_axis + [slice(0, length)]
            self.cache = {name: np.ascontiguousarray(v[tuple(index)]) for name, v in self.cache.items()}
            self.length = length

    def _run(self, ids: Sequence[int]) -> np.ndarray:
        """All positions' logits [T, vocab] for ids after the cache; the cache grows by len(ids)."""
        total = check_room(self.length, len(ids), self.max_context)
        feed: dict[str, np.ndarray] = {"input_ids": np.asarray([ids], dtype=np.int64), **self.cache}
        if self.has_mask:
            feed["attention_mask"] = np.ones((1, total), dtype=np.int64)
        if self.has_positions:
            feed["position_ids"] = np.arange(self.length, total, dtype=np.int64)[None]
        names = ["logits", *self.presents, *self.extra_outputs]
        out = self.session.run(names, feed)
        self.cache = dict(zip(self.pasts, out[1 : 1 + len(self.presents)], strict=True))
        self.last_extra = dict(zip(self.extra_outputs, out[1 + len(self.presents) :], strict=True))
        self.length = total
        return out[0][0]

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        return prefill_in_chunks(self, ids, self.prefill_chunk, self._run)

    def decode(self, token: int) -> np.ndarray:
        return self._run([token])[-1]

    def verify(self, ids: Sequence[int]) -> np.ndarray:
        return self._run(ids)

    def logits_all(self, ids: Sequence[int]) -> np.ndarray:
        self.reset()
        chunk = self.prefill_chunk
        return np.concatenate([self._run(ids[s : s + chunk]) for s in range(0, len(ids), chunk)])


def _layer_order(name: str) -> tuple[int, str]:
    parts = name.split(".")
    return (int(parts[1]) if parts[1].isdigit() else 0, parts[-1])
