"""An engine that answers several prompts at once: `edgekit.load(artifact, parallel=N)`.

N slots of one batch runtime, each with the ordinary generation code on top (per-request sampling,
stop strings, constraints, tools, speculation); a batcher steps the running ones together. Calls
from N threads run side by side; more wait for a free slot, first come first served. A prefix
cache shared by the slots keeps recent prompts' keys and values, so a prompt that begins like any
of them (another conversation's system prompt, an earlier turn) computes only its new tokens.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from ..device_profiles import DeviceProfile
from .batching import Batcher, SlotRuntime
from .constraints import ConstraintCompiler
from .engine import Chunk, Engine, GenerationConfig, Prompt
from .loader import Loaded
from .prefix_cache import PrefixCache
from .speculative import common_prefix


class SlotEngine(Engine):
    """The engine of one slot: its prompt reuses what the slot holds or, when longer, a prefix from
    the shared cache."""

    runtime: SlotRuntime

    def __init__(self, loaded: Loaded, owner: ParallelEngine):
        super().__init__(loaded, owner.profile, owner.defaults)
        self.owner = owner

    def _compiler(self) -> ConstraintCompiler:
        return self.owner._compiler()

    def _prefill(self, ids: list[int]):
        own = min(common_prefix(self._cached, ids), len(ids) - 1, self.runtime.length)
        reused = own
        cache = self.owner.prefix_cache
        if cache is not None:
            blocks = cache.match(ids[: len(ids) - 1])
            if len(blocks) * cache.block > own:
                first = own // cache.block  # blocks before it are in the slot already
                reused = len(blocks) * cache.block
                self.runtime.restore([b.kv for b in blocks[first:]], first * cache.block)
        self.runtime.trim(reused)
        self._cached = list(ids)
        logits = self.runtime.prefill(ids[reused:])
        self.keep_prefix()
        return logits, reused

    def keep_prefix(self) -> None:
        """Put what the slot holds in the shared prefix cache (its last position stays out: a step
        that leaves a full slot out writes its dummy position there)."""
        cache = self.owner.prefix_cache
        held = min(len(self._cached), self.runtime.length, self.max_context - 1)
        if cache is not None and held >= cache.block:
            ids = self._cached[:held]
            self.runtime.store(lambda read: cache.store(ids, read))


class ParallelEngine(Engine):
    """Up to `slots` generations at once over one batch runtime; the Engine API (generate, stream,
    chat) is unchanged and thread-safe. prefix_cache_bytes: 0 turns the shared prefix cache off."""

    def __init__(
        self,
        loaded: Loaded,
        profile: DeviceProfile | None = None,
        defaults: GenerationConfig | None = None,
        prefix_cache_bytes: int = 0,
    ):
        super().__init__(loaded, profile, defaults)
        batch = loaded.runtime
        self.batch = batch
        self.slots: int = batch.slots
        self.batcher = Batcher(batch)
        keeps = prefix_cache_bytes > 0 and batch.why_no_prefix_cache is None
        self.prefix_cache = PrefixCache(prefix_cache_bytes) if keeps else None
        self._engines = [
            SlotEngine(replace(loaded, runtime=SlotRuntime(self.batcher, n)), self) for n in range(self.slots)
        ]
        self._free = list(range(self.slots))
        self._line: deque[object] = deque()
        self._cond = threading.Condition()
        self._compile_lock = threading.Lock()

    @property
    def max_context(self) -> int:
        return self.batch.max_context

    def _compiler(self) -> ConstraintCompiler:
        with self._compile_lock:
            return super()._compiler()

    def _acquire(self) -> int:
        ticket = object()
        with self._cond:
            self._line.append(ticket)
            try:
                while not self._free or self._line[0] is not ticket:
                    self._cond.wait()
            finally:
                self._line.remove(ticket)
                self._cond.notify_all()
            slot = min(self._free)  # the lowest: fewer holes in the range of slots a step runs
            self._free.remove(slot)
            return slot

    def _release(self, slot: int) -> None:
        with self._cond:
            self._free.append(slot)
            self._cond.notify_all()

    def stream(self, prompt: Prompt, **options: Any) -> Iterator[Chunk]:
        slot = self._acquire()
        engine = self._engines[slot]
        finished = False
        try:
            with self.batcher.sequence():
                for chunk in engine.stream(prompt, **options):
                    finished = chunk.finish_reason is not None
                    yield chunk
        finally:
            if finished:
                engine.keep_prefix()  # the answer too: the next turn of this conversation begins with it
            self._release(slot)

    def reset(self) -> None:
        """Forget every slot's conversation and the prefix cache (waits for running generations)."""
        taken = [self._acquire() for _ in range(self.slots)]
        try:
            for engine in self._engines:
                engine.reset()
            if self.prefix_cache is not None:
                self.prefix_cache.clear()
        finally:
            for slot in taken:
                self._release(slot)

    def close(self) -> None:
        self.batcher.close()
