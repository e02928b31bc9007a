"""The Runtime protocol: what every backend provides to the generation layer above it."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from ..errors import EdgekitError
from ..spec import ModelSpec


class Runtime(Protocol):
    max_context: int
    length: int  # positions held in the KV cache
    # None when verify() works; else why not (the generation layer then decodes token by token)
    why_no_verify: str | None

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        """Run the prompt (after what the cache holds); logits of its last position [vocab]."""

    def decode(self, token: int) -> np.ndarray:
        """One cached step; logits [vocab]."""

    def verify(self, ids: Sequence[int]) -> np.ndarray:
        """Run ids after the cache in one pass, storing their keys/values; logits of every one of
        them [len(ids), vocab]. Speculative decoding runs the last token and the proposed ones, then
        trims the cache to what it accepts."""

    def logits_all(self, ids: Sequence[int]) -> np.ndarray:
        """Logits for every position of ids [T, vocab], from an empty cache (for evaluation)."""

    def reset(self) -> None: ...

    def trim(self, length: int) -> None:
        """Forget every position from `length` on."""


def check_room(length: int, new: int, max_context: int) -> int:
    """The cache length after `new` more positions; an error when the context cannot hold them."""
    total = length + new
    if total > max_context:
        raise EdgekitError(
            f"the sequence needs {total} positions but the session's context is "
            f"{max_context}; start a new conversation or load with a larger max_context"
        )
    return total


def kv_bytes_per_token(spec: ModelSpec, itemsize: float) -> int:
    """Bytes one position of one sequence takes in a KV cache (keys and values, every layer), with
    itemsize the bytes of one cached channel (scales included)."""
    return math.ceil(spec.num_layers * 2 * spec.num_kv_heads * spec.head_dim * itemsize)


EMPTY_PROMPT = "the prompt is empty: prefill needs at least one token id; pass a prompt of one token or more"


def prefill_in_chunks(
    runtime: Runtime, ids: Sequence[int], chunk: int, run: Callable[[Sequence[int]], np.ndarray]
) -> np.ndarray:
    """The prompt's last position's logits [vocab]: `ids` after what the cache holds, `chunk` tokens
    per call of `run` (the backend's step: it runs the ids it is given after the cache, stores their
    keys/values and returns logits [positions returned, vocab]). Bounded chunks bound the
    activations a long prompt needs at once."""
    if not len(ids):
        raise EdgekitError(EMPTY_PROMPT)
    check_room(runtime.length, len(ids), runtime.max_context)
    for start in range(0, len(ids), chunk):
        logits = run(ids[start : start + chunk])
    return logits[-1]


def prefill_slot(runtime, slot: int, ids: Sequence[int]) -> np.ndarray:
    """A batch runtime's slot prefilled with ids in chunks of its prefill_chunk, alone (the
    generation layer's batcher interleaves the chunks with other slots' steps instead); the last
    position's logits [vocab]."""
    check_room(runtime.lengths[slot], len(ids), runtime.max_context)
    for start in range(0, len(ids), runtime.prefill_chunk):
        logits = runtime.run(slot, ids[start : start + runtime.prefill_chunk])
    return logits[-1]
