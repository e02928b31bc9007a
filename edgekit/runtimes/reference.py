"""The numpy reference behind the Runtime protocol, so unexported checkpoints run too (slowly)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..reference import ReferenceModel
from .base import check_room, prefill_in_chunks


class ReferenceRuntime:
    def __init__(self, model: ReferenceModel, max_context: int):
        self.model = model
        self.max_context = max_context
        self.prefill_chunk = max_context  # the whole prompt in one run
        self.cache = model.new_cache()
        self.why_no_verify = None

    @property
    def length(self) -> int:
        return self.cache.length

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        return prefill_in_chunks(self, ids, self.prefill_chunk, self._run)

    def _run(self, ids: Sequence[int]) -> np.ndarray:
        return self.model.forward(ids, self.cache, all_logits=False)

    def decode(self, token: int) -> np.ndarray:
        return self._run([token])[-1]

    def verify(self, ids: Sequence[int]) -> np.ndarray:
        check_room(self.length, len(ids), self.max_context)
        return self.model.forward(ids, self.cache)

    def logits_all(self, ids: Sequence[int]) -> np.ndarray:
        self.reset()
        return self.model.forward(ids, self.cache)

    def reset(self) -> None:
        self.cache.reset()

    def trim(self, length: int) -> None:
        self.cache.trim(length)
