"""Keys and values of recent prompts, kept across requests so that a prompt sharing a prefix with
any of them (a system prompt, an earlier turn of any conversation) computes only its new tokens.

Prompts are cut into blocks of `block` tokens; a block is found by the chain of its own tokens and
every block before it (a block's keys and values depend on all earlier tokens), so conversations
that share a system prompt share its blocks. Blocks are dropped least recently used first once
their bytes pass the budget; a match touches its blocks deepest first, so a chain loses its tail
before its head.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_BLOCK = 32

# (the hash of the previous block's key, this block's tokens): a 64-bit hash stands for the prefix
Key = tuple[int, tuple[int, ...]]


@dataclass(frozen=True)
class Block:
    key: Key
    kv: np.ndarray  # [layers, 2, kv_heads, block, head_dim], as the batch runtime's read_kv gives


class PrefixCache:
    def __init__(self, budget_bytes: int, block: int = DEFAULT_BLOCK):
        self.budget_bytes = budget_bytes
        self.block = block
        self.bytes = 0
        self._blocks: OrderedDict[Key, Block] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._blocks)

    def _keys(self, ids: Sequence[int]) -> list[Key]:
        keys, parent = [], 0
        for start in range(0, len(ids) - self.block + 1, self.block):
            key = (parent, tuple(ids[start : start + self.block]))
            keys.append(key)
            parent = hash(key)
        return keys

    def match(self, ids: Sequence[int]) -> list[Block]:
        """The cached blocks that begin `ids`, in order (their tokens: the first len * block of ids)."""
        with self._lock:
            found = []
            for key in self._keys(ids):
                block = self._blocks.get(key)
                if block is None:
                    break
                found.append(block)
            for block in reversed(found):
                self._blocks.move_to_end(block.key)
            return found

    def store(self, ids: Sequence[int], read: Callable[[int, int], np.ndarray]) -> int:
        """Keep the blocks of `ids` not kept yet, as far as the budget holds them beside the chain's
        earlier blocks; read(start, end) gives the keys and values of positions [start, end).
        Returns the number of blocks added."""
        keys = self._keys(ids)
        with self._lock:
            missing = [n for n, key in enumerate(keys) if key not in self._blocks]
        added = 0
        for n in missing:
            with self._lock:
                if n and keys[n - 1] not in self._blocks:  # its chain was cut
                    break
            kv = read(n * self.block, (n + 1) * self.block)
            with self._lock:
                if keys[n] in self._blocks:
                    continue
                self._blocks[keys[n]] = Block(keys[n], kv)
                self.bytes += kv.nbytes
                if not self._evict(protect=set(keys[: n + 1])):
                    del self._blocks[keys[n]]
                    self.bytes -= kv.nbytes
                    break
                added += 1
        with self._lock:  # the chain just stored is the most recent, deepest block first out
            for key in reversed(keys):
                if key in self._blocks:
                    self._blocks.move_to_end(key)
        return added

    def _evict(self, protect: set[Key]) -> bool:
        """Drop the least recently used blocks outside `protect` until the budget holds; False
        when it cannot."""
        for key in [k for k in self._blocks if k not in protect]:
            if self.bytes <= self.budget_bytes:
                break
            self.bytes -= self._blocks.pop(key).kv.nbytes
        return self.bytes <= self.budget_bytes

    def clear(self) -> None:
        with self._lock:
            self._blocks.clear()
            self.bytes = 0
