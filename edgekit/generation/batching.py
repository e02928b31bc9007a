"""Continuous batching: one thread runs a batch runtime for every sequence in flight.

Each sequence is generated in its own thread by the ordinary generation code, over a `SlotRuntime`
(the Runtime protocol for one slot of the batch runtime) whose calls become jobs here and wait for
their result. The batcher's loop gathers the decode steps of all running sequences into one run of
the model, and between those runs prefills new prompts one chunk at a time, so a long prompt does
not stall the streams already running. Sampling, stop strings, constraints and tool calls stay in
each sequence's thread, and overlap with the model's runs.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import numpy as np

from ..errors import EdgekitError

# how long gathered decodes wait for the other running sequences' steps before they run without
# them: this long, or as long as a decode run last took, whichever is longer (the others come back
# after sampling, which a busy CPU slows as much as the runs; a client slow to take its text costs
# the others at most about a run)
GATHER_S = 0.01


class BatchRuntime(Protocol):
    """A backend that holds `slots` sequences and steps many of them in one run."""

    max_context: int
    slots: int
    prefill_chunk: int
    lengths: list[int]  # positions each slot holds
    why_no_verify: str | None
    why_no_prefix_cache: str | None  # None when read_kv and write_kv work

    def prepare(self) -> None:
        """Build what must be built in the thread that runs the model (the batcher's), before any run."""

    def run(self, slot: int, ids: Sequence[int], keep: int = 1) -> np.ndarray:
        """ids after what `slot` holds, in one run; logits of the last `keep` positions [keep, vocab]."""

    def decode(self, tokens: dict[int, int]) -> dict[int, np.ndarray]:
        """One step of each slot in `tokens` (slot -> token), together; logits [vocab] per slot."""

    def trim(self, slot: int, length: int) -> None: ...

    def read_kv(self, slot: int, start: int, end: int) -> np.ndarray:
        """Keys and values of positions [start, end): [layers, 2, kv_heads, end - start, head_dim]."""

    def write_kv(self, slot: int, start: int, kv: np.ndarray) -> None:
        """Keys and values at positions [start, start + n) of `slot`, which then holds start + n."""


class _Job:
    def __init__(self, slot: int):
        self.slot = slot
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()

    def step(self, runtime: BatchRuntime) -> bool:
        """Do (part of) the job; True once it is finished."""
        raise NotImplementedError

    def finish(self, result: Any = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()


class _Run(_Job):
    """Tokens run after a slot's cache: a prompt, `chunk` tokens per step, or a speculative verify
    (every position's logits, one run)."""

    def __init__(self, slot: int, ids: Sequence[int], chunk: int, every_position: bool):
        super().__init__(slot)
        self.ids, self.chunk, self.every_position = list(ids), chunk, every_position
        self.start = 0

    def step(self, runtime: BatchRuntime) -> bool:
        if self.every_position:
            self.result = runtime.run(self.slot, self.ids, keep=len(self.ids))
            return True
        part = self.ids[self.start : self.start + self.chunk]
        self.result = runtime.run(self.slot, part)[-1]
        self.start += len(part)
        return self.start >= len(self.ids)


class _Call(_Job):
    """A function of the runtime run between model runs (reading or writing a slot's cache)."""

    def __init__(self, slot: int, call: Callable[[BatchRuntime], Any]):
        super().__init__(slot)
        self.call = call

    def step(self, runtime: BatchRuntime) -> bool:
        self.result = self.call(runtime)
        return True


class Batcher:
    def __init__(self, runtime: BatchRuntime, gather_s: float = GATHER_S):
        self.runtime = runtime
        self.gather_s = gather_s
        self._cond = threading.Condition()
        self._decodes: dict[int, tuple[int, _Job]] = {}  # slot -> (token, job)
        self._first_decode = 0.0  # when the oldest waiting decode arrived
        self._jobs: deque[_Job] = deque()
        self._running = 0  # sequences in flight: the decodes a step waits for
        self._closed = False
        self._run_s = 0.0  # how long the last decode run took
        self.steps = 0  # batched decode runs, and the sequence steps they made (for stats)
        self.sequence_steps = 0
        self._thread = threading.Thread(target=self._loop, name="edgekit-batcher", daemon=True)
        self._thread.start()
        try:
            self.call(0, lambda runtime: runtime.prepare())
        except BaseException:
            self.close()
            raise

    @property
    def running(self) -> int:
        """Sequences in flight."""
        return self._running

    @contextmanager
    def sequence(self) -> Iterator[None]:
        """Count a sequence in flight while it generates."""
        with self._cond:
            self._running += 1
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()

    def _wait(self, job: _Job) -> Any:
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def submit(self, job: _Job) -> Any:
        with self._cond:
            if self._closed:
                raise EdgekitError("the engine is closed")
            self._jobs.append(job)
            self._cond.notify_all()
        return self._wait(job)

    def decode(self, slot: int, token: int) -> np.ndarray:
        job = _Job(slot)
        with self._cond:
            if self._closed:
                raise EdgekitError("the engine is closed")
            if not self._decodes:
                self._first_decode = time.monotonic()
            self._decodes[slot] = (token, job)
            self._cond.notify_all()
        return self._wait(job)

    def call(self, slot: int, call: Callable[[BatchRuntime], Any]) -> Any:
        return self.submit(_Call(slot, call))

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(5)

    def _decodes_ready(self) -> float | None:
        """0 when the gathered decodes should run now, else how long to wait for the rest (None:
        no decode waits). The rest: the running sequences not waiting on a prompt chunk or a call."""
        if not self._decodes:
            return None
        expected = self._running - len({job.slot for job in self._jobs})
        waited = time.monotonic() - self._first_decode
        patience = max(self.gather_s, self._run_s)
        return 0 if self._closed or len(self._decodes) >= expected or waited >= patience else patience - waited

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closed and (wait := self._decodes_ready()) != 0:
                    self._cond.wait(wait)
                if self._closed:
                    for job in [*self._jobs, *(j for _, j in self._decodes.values())]:
                        job.finish(error=EdgekitError("the engine is closed"))
                    return
                decodes = {}
                if self._decodes_ready() == 0:  # else they wait for the rest while a prompt chunk runs
                    decodes, self._decodes = self._decodes, {}
                job = self._jobs.popleft() if self._jobs else None
            if job is not None:
                self._step(job)
            if decodes:
                self._decode(decodes)

    def _step(self, job: _Job) -> None:
        try:
            finished = job.step(self.runtime)
        except BaseException as exc:  # noqa: BLE001 (handed to the sequence's thread, which raises it)
            job.finish(error=exc)
            return
        if finished:
            job.finish(job.result)
        else:
            with self._cond:  # the next chunk waits for the running sequences' next step
                self._jobs.append(job)

    def _decode(self, decodes: dict[int, tuple[int, _Job]]) -> None:
        start = time.monotonic()
        try:
            logits = self.runtime.decode({slot: token for slot, (token, _) in decodes.items()})
        except BaseException as exc:  # noqa: BLE001
            for _, job in decodes.values():
                job.finish(error=exc)
            return
        self._run_s = time.monotonic() - start
        self.steps += 1
        self.sequence_steps += len(decodes)
        for slot, (_, job) in decodes.items():
            job.finish(logits[slot])


class SlotRuntime:
    """The Runtime protocol for one slot of a batch runtime: the generation code runs on it as on a
    runtime of its own, and its model runs are batched with the other slots'."""

    def __init__(self, batcher: Batcher, slot: int):
        self.batcher = batcher
        self.slot = slot
        self._batch = batcher.runtime

    @property
    def max_context(self) -> int:
        return self._batch.max_context

    @property
    def length(self) -> int:
        return self._batch.lengths[self.slot]

    @property
    def why_no_verify(self) -> str | None:
        return self._batch.why_no_verify

    @property
    def others_running(self) -> int:
        """Sequences in flight besides this one: a verify pass of this slot runs alone while they wait."""
        return max(0, self.batcher.running - 1)

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        return self.batcher.submit(_Run(self.slot, ids, self._batch.prefill_chunk, every_position=False))

    def verify(self, ids: Sequence[int]) -> np.ndarray:
        return self.batcher.submit(_Run(self.slot, ids, len(ids), every_position=True))

    def decode(self, token: int) -> np.ndarray:
        return self.batcher.decode(self.slot, token)

    def logits_all(self, ids: Sequence[int]) -> np.ndarray:
        self.reset()
        try:
            return self.verify(ids)
        finally:
            self.reset()

    def reset(self) -> None:
        self.trim(0)

    def trim(self, length: int) -> None:
        # only the batcher's thread writes a slot's length while the slot's own thread waits on it;
        # a slot left out of a decode step gets a dummy position past its length, which this does not move
        self._batch.trim(self.slot, length)

    def store(self, keep: Callable[[Callable[[int, int], np.ndarray]], Any]) -> Any:
        """keep(read) in the batcher's thread, between model runs (MLX arrays are read in the
        thread that runs them); read(start, end) gives this slot's keys and values."""
        return self.batcher.call(self.slot, lambda runtime: keep(lambda a, b: runtime.read_kv(self.slot, a, b)))

    def restore(self, blocks: Sequence[np.ndarray], start: int) -> None:
        """Write kv blocks from position `start` on; the slot then holds what they end at (in the
        batcher's thread: a step that left this slot out writes a dummy position past its old length)."""

        def write(runtime: BatchRuntime) -> None:
            at = start
            for kv in blocks:
                runtime.write_kv(self.slot, at, kv)
                at += kv.shape[3]

        self.batcher.call(self.slot, write)
