"""Choosing the next token from logits, in numpy.

Order of the processors, as transformers applies them: repetition penalty, temperature, top-k,
top-p, min-p; then one draw from what is left. Temperature 0 is greedy. OpenAI's presence and
frequency penalties, over the tokens generated so far, come first.
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
    presence_penalty: float = 0.0  # subtracted once from the logit of every token generated so far
    frequency_penalty: float = 0.0  # subtracted per time a token was generated so far

    def __post_init__(self) -> None:
        checks = [
            ("temperature", self.temperature >= 0, ">= 0"),
            ("top_k", self.top_k >= 0, ">= 0"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
            ("min_p", 0 <= self.min_p < 1, "in [0, 1)"),
            ("repetition_penalty", self.repetition_penalty > 0, "> 0"),
            ("presence_penalty", -2 <= self.presence_penalty <= 2, "in [-2, 2]"),
            ("frequency_penalty", -2 <= self.frequency_penalty <= 2, "in [-2, 2]"),
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


def penalize_generated(logits: np.ndarray, counts: dict[int, int], presence: float, frequency: float) -> np.ndarray:
    """OpenAI's penalties: logit -= count * frequency + presence, for each token generated so far."""
    if not counts or (presence == 0.0 and frequency == 0.0):
        return logits
    ids = np.fromiter(counts, dtype=np.int64, count=len(counts))
    times = np.fromiter(counts.values(), dtype=np.float32, count=len(counts))
    out = np.array(logits, dtype=np.float32)
    out[ids] -= times * np.float32(frequency) + np.float32(presence)
    return out


def _top_p_head(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Indices of the smallest most-likely-first head of `probs` whose mass reaches top_p. Sorts
    only a head that grows until it holds that mass, not the whole vocabulary."""
    n = len(probs)
    k = min(n, 64)
    while True:
        head = np.argpartition(-probs, k - 1)[:k] if k < n else np.arange(n)
        head = head[np.argsort(-probs[head], kind="stable")]
        mass = np.cumsum(probs[head])
        if mass[-1] >= top_p or k == n:
            return head[: int(np.searchsorted(mass, top_p, side="left")) + 1]
        k = min(n, k * 8)


def candidates(logits: np.ndarray, params: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """The token ids that survive temperature, top-k, top-p and min-p, with their renormalized
    probabilities (in no particular order)."""
    scaled = np.asarray(logits, dtype=np.float32) / np.float32(params.temperature)
    vocab = scaled.shape[-1]
    if 0 < params.top_k < vocab:
        ids = np.argpartition(-scaled, params.top_k - 1)[: params.top_k]
        scaled = scaled[ids]
    else:
        ids = np.arange(vocab)
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum(dtype=np.float64)
    if params.top_p < 1.0:
        head = _top_p_head(probs, params.top_p)
        ids, probs = ids[head], probs[head]
    if params.min_p > 0.0:  # relative to the most likely token, which every filter keeps
        keep = probs >= params.min_p * probs.max()
        ids, probs = ids[keep], probs[keep]
    if len(ids) < vocab:
        probs /= probs.sum(dtype=np.float64)
    return ids, probs


class Sampler:
    """One per generation: holds the random generator, so the same seed gives the same tokens, and
    counts the tokens it has chosen, for the presence and frequency penalties."""

    def __init__(self, params: SamplingParams):
        self.params = params
        self.rng = np.random.default_rng(params.seed)
        self.generated: dict[int, int] = {}

    def __call__(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        p = self.params
        if p.greedy:
            token = int(np.argmax(self._penalized(logits, history)))
        else:
            ids, probs = self.distribution(logits, history)
            token = self.draw(ids, probs)
        self.count(token)
        return token

    def distribution(self, logits: np.ndarray, history: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray]:
        """The distribution the next token is drawn from, after every penalty and filter: token ids
        and their probabilities (greedy: the most likely token with probability 1)."""
        logits = self._penalized(logits, history)
        if self.params.greedy:
            return np.array([int(np.argmax(logits))]), np.ones(1)
        return candidates(logits, self.params)

    def draw(self, ids: np.ndarray, probs: np.ndarray) -> int:
        index = int(np.searchsorted(np.cumsum(probs), self.rng.random(), side="right"))
        return int(ids[min(index, len(ids) - 1)])

    def count(self, token: int) -> None:
        """Record a chosen token (the presence and frequency penalties count them)."""
        self.generated[token] = self.generated.get(token, 0) + 1

    def _penalized(self, logits: np.ndarray, history: Sequence[int]) -> np.ndarray:
        p = self.params
        logits = penalize_generated(logits, self.generated, p.presence_penalty, p.frequency_penalty)
        return penalize_repeats(logits, history, p.repetition_penalty)
