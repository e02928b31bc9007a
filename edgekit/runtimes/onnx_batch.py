"""ONNX Runtime over several sequences at once: one decode run steps every running sequence, each
at its own length (GroupQueryAttention takes per-sequence lengths from the attention mask).

Each layer's keys and values live in one buffer [slots, kv_heads, context, head_dim]; a run binds
the contiguous range of slots it steps by raw pointer (the same call for CPU memory and CUDA
memory), past and present on the same memory, so nothing is copied per token. A slot between the
ones stepped (a hole: free, or prefilling) rides along with a dummy token written just past its
length, where nothing reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact import BATCH_METADATA, LOGITS_TO_KEEP
from ..errors import EdgekitError
from ..spec import ModelSpec
from .base import EMPTY_PROMPT, check_room
from .onnx import CACHE_TYPES, DEFAULT_PREFILL_CHUNK, make_session


class SingleSequenceGraph(EdgekitError):
    """A graph exported before batched decoding: it runs one sequence at a time."""


@dataclass
class _Binding:
    binding: Any  # onnxruntime.IOBinding
    logits: np.ndarray  # [count, 1, vocab], the decode runs' output
    value: Any  # the OrtValue over `logits`


class OnnxBatchRuntime:
    """`slots` sequences over one session. Not thread-safe: one thread (the generation layer's
    batcher) calls it."""

    def __init__(
        self,
        model_path: Path,
        spec: ModelSpec,
        max_context: int,
        slots: int,
        *,
        providers: Sequence[str | tuple[str, dict]] = ("CPUExecutionProvider",),
        threads: int | None = None,
        kv_dtype=np.float32,
        prefill_chunk: int | None = None,
        huge_pages: bool = False,
        spinning: bool = True,
    ):
        self.spec = spec
        self.max_context = max_context
        self.slots = slots
        self.prefill_chunk = prefill_chunk or DEFAULT_PREFILL_CHUNK
        self.session = make_session(model_path, providers, threads, huge_pages, spinning=spinning)
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get(BATCH_METADATA) != "1":
            raise SingleSequenceGraph(
                f"{model_path.parent}: its graph decodes one sequence at a time (exported before batched "
                "decoding); re-export it to decode several sequences at once"
            )
        if LOGITS_TO_KEEP not in {i.name for i in self.session.get_inputs()}:
            raise EdgekitError(f"{model_path.parent}: its graph has no {LOGITS_TO_KEEP} input; re-export it")
        cache_type = {i.name: i.type for i in self.session.get_inputs()}.get("past_key_values.0.key")
        kv_dtype = CACHE_TYPES.get(cache_type, kv_dtype)  # an int8 cache is exported so
        names = [p if isinstance(p, str) else p[0] for p in providers]
        self.device = "cuda" if "CUDAExecutionProvider" in names else "cpu"
        self.kv_dtype = np.dtype(kv_dtype)
        self.lengths = [0] * slots  # positions each slot holds
        self.why_no_verify: str | None = None
        shape = (slots, spec.num_kv_heads, max_context, spec.head_dim)
        self._slot_bytes = int(np.prod(shape[1:])) * self.kv_dtype.itemsize
        self.why_no_prefix_cache = None if self.device == "cpu" else "the KV cache is on the GPU"
        if self.device == "cpu":  # numpy memory: the prefix cache reads and writes it directly
            self.cache: list[tuple[np.ndarray, np.ndarray]] | None = [
                (np.zeros(shape, self.kv_dtype), np.zeros(shape, self.kv_dtype)) for _ in range(spec.num_layers)
            ]
            self._pointers = [(k.ctypes.data, v.ctypes.data) for k, v in self.cache]
        else:
            import onnxruntime as ort

            self.cache = None
            self._device_cache = [
                tuple(ort.OrtValue.ortvalue_from_shape_and_type(list(shape), kv_dtype, "cuda") for _ in range(2))
                for _ in range(spec.num_layers)
            ]
            self._pointers = [(k.data_ptr(), v.data_ptr()) for k, v in self._device_cache]
        self._bindings: dict[tuple[int, int], _Binding] = {}
        self._keep = np.ones(1, dtype=np.int64)

    def prepare(self) -> None:
        """Nothing to build: the session is ready (the batch runtime protocol's hook)."""

    @property
    def kv_bytes(self) -> int:
        return self._slot_bytes * 2 * self.spec.num_layers * self.slots

    def _binding(self, first: int, count: int) -> _Binding:
        """The IO binding of slots [first, first + count): their cache views and a logits buffer."""
        key = (first, count)
        if key not in self._bindings:
            import onnxruntime as ort

            binding = self.session.io_binding()
            s = self.spec
            shape = [count, s.num_kv_heads, self.max_context, s.head_dim]
            offset = first * self._slot_bytes
            for n, (k, v) in enumerate(self._pointers):
                for name, pointer in ((f"past_key_values.{n}.key", k), (f"past_key_values.{n}.value", v)):
                    binding.bind_input(name, self.device, 0, self.kv_dtype, shape, pointer + offset)
                for name, pointer in ((f"present.{n}.key", k), (f"present.{n}.value", v)):
                    binding.bind_output(name, self.device, 0, self.kv_dtype, shape, pointer + offset)
            logits = np.zeros((count, 1, s.vocab_size), dtype=np.float32)
            value = ort.OrtValue.ortvalue_from_numpy(logits)
            binding.bind_ortvalue_output("logits", value)
            binding.bind_cpu_input(LOGITS_TO_KEEP, self._keep)
            self._bindings[key] = _Binding(binding, logits, value)
        return self._bindings[key]

    def _run(self, binding, ids: np.ndarray, totals: np.ndarray) -> None:
        """ids [batch, T] after each row's cache; totals [batch]: each row's length after the run."""
        binding.bind_cpu_input("input_ids", ids)
        mask = (np.arange(int(totals.max()))[None, :] < totals[:, None]).astype(np.int64)
        binding.bind_cpu_input("attention_mask", mask)
        self.session.run_with_iobinding(binding)

    def run(self, slot: int, ids: Sequence[int], keep: int = 1) -> np.ndarray:
        """One run of `ids` after what `slot` holds; logits of its last `keep` positions [keep, vocab]."""
        if not len(ids):
            raise EdgekitError(EMPTY_PROMPT)
        total = check_room(self.lengths[slot], len(ids), self.max_context)
        bound = self._binding(slot, 1)
        logits = bound.logits
        if keep != 1:  # a buffer of `keep` positions for this run, then back to the decode buffer
            import onnxruntime as ort

            logits = np.zeros((1, keep, self.spec.vocab_size), dtype=np.float32)
            bound.binding.bind_cpu_input(LOGITS_TO_KEEP, np.array([keep], dtype=np.int64))
            bound.binding.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(logits))
        try:
            self._run(bound.binding, np.asarray(ids, dtype=np.int64).reshape(1, -1), np.array([total]))
        finally:
            if keep != 1:
                bound.binding.bind_cpu_input(LOGITS_TO_KEEP, self._keep)
                bound.binding.bind_ortvalue_output("logits", bound.value)
        self.lengths[slot] = total
        return logits[0].copy()

    def decode(self, tokens: dict[int, int]) -> dict[int, np.ndarray]:
        """One step of every slot in `tokens` (slot -> its next token): logits [vocab] per slot."""
        for slot in tokens:
            check_room(self.lengths[slot], 1, self.max_context)
        first, last = min(tokens), max(tokens)
        count = last - first + 1
        ids = np.zeros((count, 1), dtype=np.int64)
        totals = np.empty(count, dtype=np.int64)
        for row, slot in enumerate(range(first, last + 1)):
            if slot in tokens:
                ids[row, 0] = tokens[slot]
                totals[row] = self.lengths[slot] + 1
            else:  # a hole: its dummy position lands just past what it holds (a full one gives up its last)
                self.lengths[slot] = min(self.lengths[slot], self.max_context - 1)
                totals[row] = self.lengths[slot] + 1
        bound = self._binding(first, count)
        self._run(bound.binding, ids, totals)
        out = {}
        for slot in tokens:
            self.lengths[slot] += 1
            out[slot] = bound.logits[slot - first, 0].copy()
        return out

    def trim(self, slot: int, length: int) -> None:
        self.lengths[slot] = min(self.lengths[slot], length)

    # --- the prefix cache's access to a slot's keys and values (CPU memory) ---

    def read_kv(self, slot: int, start: int, end: int) -> np.ndarray:
        """Keys and values of positions [start, end) of `slot`: [layers, 2, kv_heads, end - start, head_dim]."""
        if self.cache is None:
            raise EdgekitError(f"no prefix cache here: {self.why_no_prefix_cache}")
        return np.stack([np.stack([k[slot, :, start:end], v[slot, :, start:end]]) for k, v in self.cache])

    def write_kv(self, slot: int, start: int, kv: np.ndarray) -> None:
        """Put kv (as read_kv returns) at positions [start, start + its length) of `slot`, which then
        holds that many positions."""
        if self.cache is None:
            raise EdgekitError(f"no prefix cache here: {self.why_no_prefix_cache}")
        end = start + kv.shape[3]
        check_room(0, end, self.max_context)
        for (k, v), layer in zip(self.cache, kv, strict=True):
            k[slot, :, start:end] = layer[0]
            v[slot, :, start:end] = layer[1]
        self.lengths[slot] = end
