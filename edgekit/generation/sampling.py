"""Choosing the next token from logits, in numpy.

Order of the processors, as transformers applies them: repetition penalty, temperature, top-k,
top-p, min-p; then one draw from what is left. Temperature 0 is greedy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import EdgekitError


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    min_p: float = 0.0  # 0 = off; relative to the most likely token's probability
    repetition_penalty: float = 1.0  # 1 = off; over every token of the prompt and the answer
    seed: int | None = None

    def __post_init__(self) -> None:
        checks = [
            ("temperature", self.temperature >= 0, ">= 0"),
            ("top_k", self.top_k >= 0, ">= 0"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
            ("min_p", 0 <= self.min_p < 1, "in [0, 1)"),
            ("repetition_penalty", self.repetition_penalty > 0, "> 0"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise EdgekitError(f"sampling: {name}={getattr(self, name)!r} must be {allowed}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def penalize_repeats(logits: np.ndarray, history: Sequence[int], penalty: float) -> np.ndarray:
    """Make every token already seen less likely: positive logits divided, negative multiplied."""
    if penalty == 1.0 or len(history) == 0:
        return logits
    seen = np.unique(np.asarray(history, dtype=np.int64))
    out = logits.copy()
    values = out[seen]
    out[seen] = np.where(values > 0, values / penalty, values * penalty)
    return out


def candidates(logits: np.ndarray, params: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """The token ids that survive temperature, top-k, top-p and min-p, most likely first, with their
    renormalized probabilities."""
    scaled = logits.astype(np.float64) / params.temperature
    vocab = scaled.shape[-1]
    if 0 < params.top_k < vocab:
        ids = np.argpartition(-scaled, params.top_k - 1)[: params.top_k]
    else:
        ids = np.arange(vocab)
    ids = ids[np.argsort(-scaled[ids], kind="stable")]
    probs = np.exp(scaled[ids] - scaled[ids[0]])
    probs /= probs.sum()
    keep = len(ids)
    if params.top_p < 1.0:
        # the smallest head whose mass reaches top_p
        keep = min(keep, int(np.searchsorted(np.cumsum(probs), params.top_p, side="left")) + 1)
    if params.min_p > 0.0:
        keep = min(keep, int(np.count_nonzero(probs >= params.min_p * probs[0])))
    ids, probs = ids[:keep], probs[:keep]
    return ids, probs / probs.sum()


class Sampler:
    """One per generation: holds the random generator, so the same seed gives the same tokens."""

    def __init__(self, params: SamplingParams):
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        logits = penalize_repeats(logits, history, self.params.repetition_penalty)
        if self.params.greedy:
            return int(np.argmax(logits))
        ids, probs = candidates(logits, self.params)
        index = int(np.searchsorted(np.cumsum(probs), self.rng.random(), side="right"))
        return int(ids[min(index, len(ids) - 1)])
