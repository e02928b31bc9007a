"""Speculative decoding: cheap proposals for the next tokens, checked by the model in one verify
pass (the runtime's `verify`), keeping the longest prefix that the rejection rule accepts.

The rule keeps the output distributed exactly as plain sampling from the target distribution p
(every penalty and filter of the sampler applied): a proposed token x, drawn from a proposal
distribution q, is accepted with probability min(1, p(x)/q(x)); on rejection the token is drawn
from max(0, p - q), renormalized. Prompt lookup proposes a point mass (q(x) = 1), so x is accepted
with probability p(x) and a rejection draws from p without x; a draft model would pass its own q.
Greedy decoding has p a point mass too, so it accepts exactly the tokens plain decoding picks.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import EdgekitError
from .sampling import Sampler

SPECULATION_MODES = ("off", "lookup", "draft")

Distribution = tuple[np.ndarray, np.ndarray]  # token ids, their probabilities

# n-gram lengths prompt lookup matches, longest first; single tokens match too often to pay
LOOKUP_NGRAMS = (3, 2)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading ids a and b share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def check_speculation(mode: str) -> str:
    if mode not in SPECULATION_MODES:
        raise EdgekitError(f"speculation={mode!r} is not a mode; choose one of: {', '.join(SPECULATION_MODES)}")
    return mode


@dataclass(frozen=True)
class Proposal:
    tokens: list[int]
    # per token, the distribution it was drawn from; None: certain tokens (prompt lookup)
    drafts: list[Distribution] | None = None


class PromptLookup:
    """Proposes what followed the latest earlier occurrence of the last n tokens (n = 3, else 2) in
    the prompt and the text so far. An index from each n-gram to the position after its latest
    occurrence grows as tokens arrive, so a proposal costs a few dictionary look-ups."""

    def __init__(self, ngrams: Sequence[int] = LOOKUP_NGRAMS):
        self.ngrams = tuple(ngrams)
        self.tokens: list[int] = []
        self.next_position: dict[tuple[int, ...], int] = {}

    def propose(self, tokens: Sequence[int], most: int) -> list[int]:
        """Up to `most` tokens to follow `tokens`, which extends what this lookup saw before."""
        self._index(tokens)
        known = self.tokens
        for n in self.ngrams:
            start = self.next_position.get(tuple(known[-n:])) if len(known) > n else None
            if start is not None:
                return known[start : start + most]
        return []

    def proposal(self, history: Sequence[int], most: int, sampler: Sampler) -> Proposal:
        return Proposal(self.propose(history, most))

    def _index(self, tokens: Sequence[int]) -> None:
        if len(tokens) < len(self.tokens):  # another text: start over
            self.tokens, self.next_position = [], {}
        seen = len(self.tokens)
        self.tokens.extend(tokens[seen:])
        # the n-gram ending just before position t points at t; the newest n-gram waits for its follower
        for t in range(max(seen, 1), len(self.tokens)):
            for n in self.ngrams:
                if t >= n:
                    self.next_position[tuple(self.tokens[t - n : t])] = t


class DraftModel:
    """A smaller model with the target's tokenizer that proposes the next tokens by sampling from
    its own distribution (greedy: its argmax) with the request's sampler settings. It keeps its
    own KV cache between calls, holding `cached`; each proposal first runs what it has not seen."""

    def __init__(self, runtime, cost: float):
        self.runtime = runtime
        self.cost = cost  # one draft step, in target decode steps (from the weight bytes each reads)
        self.cached: list[int] = []

    def proposal(self, history: Sequence[int], most: int, sampler: Sampler) -> Proposal:
        most = min(most, self.runtime.max_context - len(history))
        if most <= 0:
            return Proposal([])
        reused = min(common_prefix(self.cached, history), len(history) - 1)
        self.runtime.trim(reused)
        logits = self.runtime.prefill(history[reused:])
        tokens: list[int] = []
        drafts: list[Distribution] = []
        seen = (lambda: [*history, *tokens]) if sampler.params.repetition_penalty != 1 else (lambda: ())  # noqa: E731
        while True:
            ids, probs = sampler.distribution(logits, seen())
            token = int(ids[0]) if len(ids) == 1 else sampler.draw(ids, probs)
            tokens.append(token)
            drafts.append((ids, probs))
            if len(tokens) == most:
                break
            logits = self.runtime.decode(token)
        self.cached = [*history, *tokens[:-1]]
        return Proposal(tokens, drafts)

    def reset(self) -> None:
        self.cached = []
        self.runtime.reset()


@dataclass(frozen=True)
class Outcome:
    tokens: list[int]  # the accepted proposals, then one token drawn from the target (always one)
    accepted: int  # how many proposals were accepted


def accept_or_resample(
    sampler: Sampler, target: tuple[np.ndarray, np.ndarray], token: int, draft: tuple[np.ndarray, np.ndarray] | None
) -> tuple[bool, int]:
    """The rejection rule for one proposed token. `target` and `draft` are (token ids,
    probabilities); draft None is a point mass on `token` (prompt lookup). Returns whether the
    token was accepted, and the token that comes out (itself, or a draw from the residual)."""
    ids, p = target
    p_token = float(p[ids == token].sum())
    if draft is None:
        q_ids, q = np.array([token]), np.ones(1)
    else:
        q_ids, q = draft
    q_token = float(q[q_ids == token].sum())
    if q_token <= 0:
        raise EdgekitError(f"proposed token {token} has probability 0 under its own proposal distribution")
    if p_token >= q_token or (p_token > 0 and sampler.rng.random() < p_token / q_token):
        return True, token
    order = np.argsort(q_ids)
    at = np.clip(np.searchsorted(q_ids, ids, sorter=order), 0, len(q_ids) - 1)
    q_on_target = np.where(q_ids[order[at]] == ids, q[order[at]], 0.0)
    residual = np.maximum(p - q_on_target, 0.0)
    keep = residual > 0
    ids, residual = ids[keep], residual[keep]
    if len(ids) == 1:  # greedy: the one token plain decoding picks, no randomness spent
        return False, int(ids[0])
    return False, sampler.draw(ids, residual / residual.sum())


def verify_block(
    sampler: Sampler, rows: np.ndarray, proposed: Sequence[int], history: Sequence[int], drafts=None
) -> Outcome:
    """Walk the verify pass's logits `rows` [len(proposed) + 1, vocab]: row i is the target's
    distribution for the token after proposal i - 1 (row 0: after the last accepted token). Each
    target distribution sees the tokens accepted before it (repetition penalties), as plain
    sampling would. If every proposal is accepted, the last row gives one more token."""
    out: list[int] = []
    seen = (lambda: [*history, *out]) if sampler.params.repetition_penalty != 1 else (lambda: ())  # noqa: E731
    for i, token in enumerate(proposed):
        target = sampler.distribution(rows[i], seen())
        accepted, chosen = accept_or_resample(sampler, target, token, None if drafts is None else drafts[i])
        sampler.count(chosen)
        out.append(chosen)
        if not accepted:
            return Outcome(out, i)
    out.append(sampler(rows[len(proposed)], seen()))
    return Outcome(out, len(proposed))


class BlockSize:
    """How many tokens to propose next, from how the last verify passes went: two more after a
    block accepted whole, one fewer after a rejection. And whether speculating pays at all: a
    verify of 1 + k tokens costs about 1 + COST * k decode steps, so over the last WINDOW passes
    the accepted tokens must exceed COST times the proposed ones; when they do not, speculation
    pauses for `pause` tokens (doubling, up to PAUSE_MOST, each time it fails again)."""

    START, MOST = 4, 8
    COST = 0.4  # a verify pass's extra cost per proposed token, in decode steps (ONNX cpu, SmolLM2: 0.3-0.6)
    WINDOW, JUDGE_AFTER = 8, 4
    PAUSE_FIRST, PAUSE_MOST = 16, 256

    def __init__(self, proposal_cost: float = 0.0) -> None:
        self.cost = self.COST + proposal_cost  # a draft model's step adds to each proposal's cost
        self.k = self.START
        self.recent: deque[tuple[int, int]] = deque(maxlen=self.WINDOW)  # (proposed, accepted)
        self.pause = self.PAUSE_FIRST
        self.paused_for = 0  # tokens left to decode plainly

    def next(self) -> int:
        """The number of tokens to propose now (0: decode plainly this step)."""
        if self.paused_for > 0:
            self.paused_for -= 1
            return 0
        return self.k

    def record(self, proposed: int, accepted: int) -> None:
        self.k = min(self.MOST, self.k + 2) if accepted == proposed else max(1, self.k - 1)
        self.recent.append((proposed, accepted))
        if len(self.recent) < self.JUDGE_AFTER:
            return
        total_proposed = sum(p for p, _ in self.recent)
        total_accepted = sum(a for _, a in self.recent)
        if total_accepted > self.cost * total_proposed:
            self.pause = self.PAUSE_FIRST
            return
        self.paused_for, self.pause = self.pause, min(self.PAUSE_MOST, 2 * self.pause)
        self.recent.clear()
        self.k = self.START


class Speculator:
    """Speculative decoding for one generation: proposals from prompt lookup or a draft model, a
    block size that follows the acceptance rate, and the counts the stats report."""

    def __init__(self, runtime, sampler: Sampler, proposer: PromptLookup | DraftModel | None = None):
        self.runtime = runtime
        self.sampler = sampler
        self.proposer = proposer if proposer is not None else PromptLookup()
        self.size = BlockSize(getattr(self.proposer, "cost", 0.0))
        self.proposed = 0
        self.accepted = 0

    def step(self, history: Sequence[int], room: int) -> list[int] | None:
        """The tokens that follow `history` (whose last token the cache does not hold yet) from
        one verify pass, at most `room` of them; None when there is nothing to propose, and the
        caller decodes one token plainly."""
        most = min(self.size.next(), room - 1)
        proposal = self.proposer.proposal(history, most, self.sampler) if most > 0 else Proposal([])
        proposed = proposal.tokens
        if not proposed:
            return None
        rows = self.runtime.verify([history[-1], *proposed])
        outcome = verify_block(self.sampler, rows, proposed, history, proposal.drafts)
        self.runtime.trim(self.runtime.length - len(proposed) + outcome.accepted)
        self.size.record(len(proposed), outcome.accepted)
        self.proposed += len(proposed)
        self.accepted += outcome.accepted
        return outcome.tokens
